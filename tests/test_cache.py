"""The server-side response cache (SPEC §6): keys, TTLs, byte identity, no database on a hit, every invalidation
trigger of §6.4 (also across server processes), and a cache Redis that is down (§6.5)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import httpx
import msgspec
import pytest
import redis
from litestar import Litestar, post
from litestar.exceptions import ImproperlyConfiguredException
from litestar.params import FromPath
from litestar.testing import AsyncTestClient
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.cache import (
    _DELETE,
    NAMESPACE,
    SCAN_COUNT,
    SCANS_PER_CALL,
    STORE_NAME,
    FailOpenRedisStore,
    Invalidation,
    ResponseCache,
    cache,
    family_marker,
)
from app.core.redis_clients import fail_fast_client
from app.main import create_app
from app.posts.models import Post
from app.users.models import User
from tests.conftest import REDIS_DB, REDIS_HOST, REDIS_PORT, Login, MakeUser, StartServer
from tests.helpers import PASSWORD, bearer
from tests.servers import free_port
from tests.test_posts import make_posts

pytestmark = pytest.mark.anyio

Client = AsyncTestClient[Litestar]
PAGE_KEY = f"{NAMESPACE}:ann_posts:page_1:items_per_page:10:ann"


@pytest.fixture
def cache_redis() -> Iterator[redis.Redis]:
    with redis.Redis(host=REDIS_HOST, port=int(REDIS_PORT), db=int(REDIS_DB)) as client:
        yield client


def cache_keys(client: redis.Redis) -> set[str]:
    return {key.decode() for key in client.scan_iter(match=f"{NAMESPACE}:*")}


def store_entries(client: redis.Redis, entries: Mapping[str, bytes], *, markers: bool = True) -> None:
    """Entries under their logical keys, as the store writes them: with their family markers (``markers=False``:
    left without, as after a marker was deleted or evicted)."""
    client.mset({f"{NAMESPACE}:{key}": value for key, value in entries.items()})
    if markers:
        client.mset({marker: b"1" for key in entries if (marker := family_marker(key)) is not None})


@pytest.fixture
async def ann_post(ann: User, db_session: AsyncSession) -> Post:
    (post_,) = await make_posts(db_session, ann, 1)
    return post_


async def rename_behind_the_api(db_session: AsyncSession, post_: Post, title: str) -> None:
    """Change the row without the API, so only a cached response can still show the old title."""
    post_.title = title
    await db_session.commit()


# --- keys, TTLs, byte identity ------------------------------------------------------------------------------


async def test_reads_are_cached_under_the_spec_keys_and_ttls(
    client: Client, ann_post: Post, cache_redis: redis.Redis
) -> None:
    assert (await client.get(f"/api/v1/ann/post/{ann_post.id}")).status_code == 200
    assert (await client.get("/api/v1/ann/posts")).status_code == 200
    assert cache_keys(cache_redis) == {f"{NAMESPACE}:ann_post_cache:{ann_post.id}", PAGE_KEY}
    assert 3590 < cache_redis.ttl(f"{NAMESPACE}:ann_post_cache:{ann_post.id}") <= 3600
    assert 50 < cache_redis.ttl(PAGE_KEY) <= 60


async def test_a_hit_is_byte_identical_and_skips_the_database(
    client: Client, app: Litestar, ann_post: Post, db_session: AsyncSession
) -> None:
    engine = app.state.alchemy.get_engine()
    database_use: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: database_use.append(args[2]))
    event.listen(engine.sync_engine.pool, "checkout", lambda *args: database_use.append("checkout"))
    for path in (f"/api/v1/ann/post/{ann_post.id}", "/api/v1/ann/posts"):
        miss = await client.get(path)
        await rename_behind_the_api(db_session, ann_post, f"Changed {path[-5:]}")
        database_use.clear()
        hit = await client.get(path)
        assert database_use == [], path
        assert (hit.status_code, hit.headers["content-type"], hit.content) == (
            miss.status_code,
            miss.headers["content-type"],
            miss.content,
        )
        assert hit.headers["cache-control"] == miss.headers["cache-control"]


async def test_omitted_and_default_query_share_one_key(
    client: Client, ann_post: Post, db_session: AsyncSession
) -> None:
    first = await client.get("/api/v1/ann/posts")
    await rename_behind_the_api(db_session, ann_post, "Changed")
    same = await client.get("/api/v1/ann/posts?page=1&items_per_page=10")
    assert same.content == first.content


async def test_other_spellings_neither_share_nor_poison_the_key(
    client: Client, ann: User, db_session: AsyncSession, cache_redis: redis.Redis
) -> None:
    """``page=01`` or a repeated parameter would store a page under a key other requests read."""
    await make_posts(db_session, ann, 12)
    for query in ("page=01", "page=2&page=1", "page=1&page=2", "items_per_page=+10"):
        response = await client.get(f"/api/v1/ann/posts?{query}")
        assert response.status_code in {200, 422}, query
    assert cache_keys(cache_redis) == set()
    page_one = (await client.get("/api/v1/ann/posts")).json()
    assert [item["title"] for item in page_one["data"]][:1] == ["Post 0"]
    assert (await client.get("/api/v1/ann/post/01")).status_code in {200, 422}
    assert cache_keys(cache_redis) == {PAGE_KEY}


async def test_errors_and_writes_are_never_stored(
    client: Client, ann_post: Post, ann_auth: dict[str, str], cache_redis: redis.Redis
) -> None:
    """Pitfall 9: Litestar's cache wraps the whole path, so the PATCH beside a cached GET must be filtered out."""
    assert (await client.get("/api/v1/ann/post/999")).status_code == 404
    assert (await client.get("/api/v1/nobody/posts")).status_code == 404
    assert (await client.get("/api/v1/ann/posts?page=0")).status_code == 422
    patched = await client.patch(f"/api/v1/ann/post/{ann_post.id}", json={"title": "New"}, headers=ann_auth)
    assert patched.status_code == 200
    assert (
        await client.post("/api/v1/ann/post", json={"title": "Hi", "text": "x"}, headers=ann_auth)
    ).status_code == 201
    assert cache_keys(cache_redis) == set()


# --- invalidation (SPEC §6.4) ---------------------------------------------------------------------------------


async def fill(client: Client, post_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
    one = await client.get(f"/api/v1/ann/post/{post_id}")
    page = await client.get("/api/v1/ann/posts")
    assert one.status_code == page.status_code == 200
    return one.json(), page.json()


async def test_patch_makes_the_post_and_its_pages_fresh(
    client: Client, ann_post: Post, ann_auth: dict[str, str]
) -> None:
    await fill(client, ann_post.id)
    await client.patch(f"/api/v1/ann/post/{ann_post.id}", json={"title": "Fresh"}, headers=ann_auth)
    one, page = await fill(client, ann_post.id)
    assert one["title"] == "Fresh"
    assert page["data"][0]["title"] == "Fresh"


async def test_create_makes_the_pages_fresh(client: Client, ann_post: Post, ann_auth: dict[str, str]) -> None:
    await fill(client, ann_post.id)
    assert (await client.get("/api/v1/ann/posts?page=1&items_per_page=5")).json()["total_count"] == 1
    await client.post("/api/v1/ann/post", json={"title": "Second", "text": "x"}, headers=ann_auth)
    assert (await client.get("/api/v1/ann/posts")).json()["total_count"] == 2
    assert (await client.get("/api/v1/ann/posts?page=1&items_per_page=5")).json()["total_count"] == 2


async def test_soft_delete_makes_the_post_and_pages_fresh(
    client: Client, ann_post: Post, ann_auth: dict[str, str]
) -> None:
    await fill(client, ann_post.id)
    await client.delete(f"/api/v1/ann/post/{ann_post.id}", headers=ann_auth)
    assert (await client.get(f"/api/v1/ann/post/{ann_post.id}")).status_code == 404
    assert (await client.get("/api/v1/ann/posts")).json()["data"] == []


async def test_hard_delete_makes_the_post_and_pages_fresh(
    client: Client, ann_post: Post, make_user: MakeUser, login: Login
) -> None:
    await make_user("root", superuser=True)
    await fill(client, ann_post.id)
    await client.delete(f"/api/v1/ann/db_post/{ann_post.id}", headers=bearer(await login("root")))
    assert (await client.get(f"/api/v1/ann/post/{ann_post.id}")).status_code == 404
    assert (await client.get("/api/v1/ann/posts")).json()["data"] == []


async def test_user_delete_and_hard_delete_make_their_posts_unreachable(
    client: Client,
    ann_post: Post,
    ann_auth: dict[str, str],
    make_user: MakeUser,
    login: Login,
    db_session: AsyncSession,
) -> None:
    await fill(client, ann_post.id)
    assert (await client.delete("/api/v1/user/ann", headers=ann_auth)).status_code == 200
    assert (await client.get(f"/api/v1/ann/post/{ann_post.id}")).status_code == 404
    assert (await client.get("/api/v1/ann/posts")).status_code == 404

    bob = await make_user("bob")
    (bobs,) = await make_posts(db_session, bob, 1)
    await make_user("root", superuser=True)
    await client.get(f"/api/v1/bob/post/{bobs.id}")
    await client.get("/api/v1/bob/posts")
    assert (await client.delete("/api/v1/db_user/bob", headers=bearer(await login("root")))).status_code == 200
    assert (await client.get(f"/api/v1/bob/post/{bobs.id}")).status_code == 404
    assert (await client.get("/api/v1/bob/posts")).status_code == 404


async def test_rename_frees_the_old_username_of_its_cache(
    client: Client, ann_post: Post, ann_auth: dict[str, str], make_user: MakeUser, cache_redis: redis.Redis
) -> None:
    await fill(client, ann_post.id)
    other = await make_user("annie")
    await client.get("/api/v1/annie/posts")  # `ann_posts:*` must not reach annie's keys
    assert (await client.patch("/api/v1/user/ann", json={"username": "anna"}, headers=ann_auth)).status_code == 200
    assert (await client.get("/api/v1/ann/posts")).status_code == 404
    assert (await client.get(f"/api/v1/ann/post/{ann_post.id}")).status_code == 404
    assert (await client.get(f"/api/v1/anna/post/{ann_post.id}")).status_code == 200
    assert f"{NAMESPACE}:annie_posts:page_1:items_per_page:10:{other.username}" in cache_keys(cache_redis)


async def test_a_failed_write_invalidates_nothing(
    client: Client, ann_post: Post, ann_auth: dict[str, str], cache_redis: redis.Redis
) -> None:
    await fill(client, ann_post.id)
    before = cache_keys(cache_redis)
    response = await client.patch(f"/api/v1/ann/post/{ann_post.id}", json={"title": None}, headers=ann_auth)
    assert response.status_code == 422
    assert cache_keys(cache_redis) == before


async def test_a_write_on_one_server_is_seen_fresh_on_another(
    start_server: StartServer, ann_post: Post, login: Login
) -> None:
    """Two server processes share the cache: invalidation is in Redis, not per process."""
    writer, reader = start_server(workers=1), start_server(workers=1)
    async with (
        httpx.AsyncClient(base_url=reader.base_url) as read,
        httpx.AsyncClient(base_url=writer.base_url) as write,
    ):
        assert (await read.get(f"/api/v1/ann/post/{ann_post.id}")).json()["title"] == "Post 0"
        assert (await read.get("/api/v1/ann/posts")).json()["total_count"] == 1
        login_response = await write.post("/api/v1/login", data={"username": "ann", "password": PASSWORD})
        auth = bearer(login_response.json()["access_token"])
        patched = await write.patch(f"/api/v1/ann/post/{ann_post.id}", json={"title": "Fresh"}, headers=auth)
        assert patched.status_code == 200
        assert (await read.get(f"/api/v1/ann/post/{ann_post.id}")).json()["title"] == "Fresh"
        created = await write.post("/api/v1/ann/post", json={"title": "Two", "text": "x"}, headers=auth)
        assert created.status_code == 201
        assert (await read.get("/api/v1/ann/posts")).json()["total_count"] == 2


# --- the helper (SPEC §6.2) -----------------------------------------------------------------------------------


def test_invalidation_extras_on_a_get_fail_at_startup() -> None:
    from litestar import get  # noqa: PLC0415

    async def read() -> None: ...

    with pytest.raises(ImproperlyConfiguredException, match="GET"):
        cache(key_prefix="x", resource_id_name="id", pattern_to_invalidate_extra=["x:*"])(get("/x/{id:int}")(read))


class Thing(msgspec.Struct):
    name: str


@cache(
    key_prefix="{name}_thing",
    resource_id_name="name",
    to_invalidate_extra={"{name}_owner": "{name}"},
    pattern_to_invalidate_extra=["{name}_list:*"],
)
@post("/things/{name:str}", exclude_from_auth=True)
async def touch_thing(name: FromPath[str]) -> Thing:
    return Thing(name)


async def test_a_write_route_deletes_its_key_extras_and_patterns(settings: Any, cache_redis: redis.Redis) -> None:
    app = create_app(settings)
    app.register(touch_thing)
    store_entries(
        cache_redis,
        dict.fromkeys(("x_thing:x", "x_owner:x", "x_list:1", "x_list:2", "y_list:1", "x*_list:1"), b"stale"),
    )
    async with AsyncTestClient(app) as client:
        assert (await client.post("/things/x")).status_code == 201
    assert cache_keys(cache_redis) == {f"{NAMESPACE}:y_list:1", f"{NAMESPACE}:x*_list:1"}


async def test_a_pattern_walks_a_large_keyspace_in_few_round_trips(settings: Any, cache_redis: redis.Redis) -> None:
    """SPEC §6.4's SCAN … COUNT 100 + DEL, SCANS_PER_CALL SCANs per script call: every matching key of a keyspace
    several calls long goes, nothing else does, and the round trips are the calls, not the SCANs."""
    per_call = SCANS_PER_CALL * SCAN_COUNT
    filler = {f"bob_post_cache:{number}": b"x" for number in range(2 * per_call + per_call // 2)}
    doomed = {f"ann_posts:page_{page}:items_per_page:10:ann": b"x" for page in range(1, 6)}
    store_entries(cache_redis, {**filler, **doomed, "ann_post_cache:1": b"x"})
    client = fail_fast_client(settings.redis_cache.url)
    counting = CountingRedis(connection_pool=client.connection_pool)
    counting.sent = []
    try:
        await ResponseCache._invalidate_redis(
            counting.register_script(_DELETE), Invalidation({"ann_post_cache:1"}, {"ann_posts:*"})
        )
    finally:
        await client.aclose()
    assert cache_keys(cache_redis) == {f"{NAMESPACE}:{key}" for key in filler}
    calls = len(counting.sent)
    assert 3 <= calls <= 4, counting.sent  # 2.5 calls' worth of keys; SCAN may return a cursor early
    assert set(counting.sent) <= {"EVALSHA", "SCRIPT LOAD", "EVAL"}


async def _invalidate(settings: Any, invalidation: Invalidation) -> list[str]:
    """``invalidation`` as a write's commit runs it; the commands it sent."""
    client = fail_fast_client(settings.redis_cache.url)
    counting = CountingRedis(connection_pool=client.connection_pool)
    counting.sent = []
    try:
        await ResponseCache._invalidate_redis(counting.register_script(_DELETE), invalidation)
    finally:
        await client.aclose()
    return counting.sent


async def test_a_family_with_nothing_stored_is_not_walked(settings: Any, cache_redis: redis.Redis) -> None:
    # Left without a marker, these entries are unreadable (see below), so the walk may skip them: that they are
    # still there shows it did. A pattern whose family part is not literal is walked all the same.
    store_entries(cache_redis, {"ann_posts:page_1": b"x", "ann_posts:page_2": b"x"}, markers=False)
    assert len(await _invalidate(settings, Invalidation(patterns={"ann_posts:*"}))) == 1
    assert cache_keys(cache_redis) == {f"{NAMESPACE}:ann_posts:page_1", f"{NAMESPACE}:ann_posts:page_2"}
    await _invalidate(settings, Invalidation(patterns={"[a]nn_posts:page_1"}))
    assert cache_keys(cache_redis) == {f"{NAMESPACE}:ann_posts:page_2"}


async def test_a_walk_of_the_whole_family_takes_its_marker_a_narrower_one_keeps_it(
    settings: Any, cache_redis: redis.Redis
) -> None:
    marker = family_marker("ann_posts:page_1")
    assert marker is not None
    store_entries(cache_redis, {"ann_posts:page_1": b"x", "ann_posts:page_2": b"x", "bob_posts:page_1": b"x"})
    await _invalidate(settings, Invalidation(patterns={"ann_posts:page_1*"}))
    assert cache_keys(cache_redis) == {f"{NAMESPACE}:ann_posts:page_2", f"{NAMESPACE}:bob_posts:page_1"}
    assert cache_redis.exists(marker)
    await _invalidate(settings, Invalidation(patterns={"ann_posts:*"}))
    assert cache_keys(cache_redis) == {f"{NAMESPACE}:bob_posts:page_1"}
    assert not cache_redis.exists(marker)
    assert cache_redis.exists(family_marker("bob_posts:page_1") or "")


# --- the store: reads of one loop turn share one MGET ----------------------------------------------------------


class CountingRedis(redis.asyncio.Redis):
    """The real client, counting the commands it sends."""

    sent: list[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return await super().execute_command(*args, **options)


@pytest.fixture
async def store(settings: Any) -> Any:
    client = fail_fast_client(settings.redis_cache.url)
    counting = CountingRedis(connection_pool=client.connection_pool)
    counting.sent = []
    yield FailOpenRedisStore(counting, namespace=NAMESPACE), counting.sent
    await client.aclose()


async def test_concurrent_reads_share_one_mget_and_each_gets_its_value(store: Any) -> None:
    cache_store, sent = store
    await cache_store.set("a", b"1")
    await cache_store.set("b", b"2")
    sent.clear()
    assert await asyncio.gather(cache_store.get("a"), cache_store.get("b"), cache_store.get("none")) == [
        b"1",
        b"2",
        None,
    ]
    assert sent == ["MGET"]
    assert await cache_store.get("b") == b"2"  # a later read is a batch of its own
    assert sent == ["MGET", "MGET"]


async def test_an_entry_is_stored_with_a_family_marker_that_outlives_it(store: Any, cache_redis: redis.Redis) -> None:
    cache_store, _ = store
    marker = family_marker("ann_posts:page_1")
    assert marker is not None
    await cache_store.set("ann_posts:page_1", b"1", 60)
    entry = f"{NAMESPACE}:ann_posts:page_1"
    assert 59_000 < cache_redis.pttl(entry) <= 60_000
    # Compared as absolute expiry times: two PTTL reads are a millisecond apart, and the later one reads less.
    assert cache_redis.pexpiretime(entry) <= cache_redis.pexpiretime(marker)
    await cache_store.set("ann_posts:page_2", b"2", 10)  # a shorter entry leaves the marker's lifetime as it is
    assert cache_redis.pttl(marker) > 10_000
    await cache_store.set("ann_posts:page_3", b"3", timedelta(hours=1))
    assert cache_redis.pttl(marker) > 3_599_000
    await cache_store.set("ann_posts:page_4", b"4")  # no expiry: neither has the marker
    assert cache_redis.pttl(marker) == -1
    await cache_store.set("ann_posts:page_5", b"5", 10)
    assert cache_redis.pttl(marker) == -1


async def test_an_entry_whose_family_marker_is_gone_is_a_miss(store: Any, cache_redis: redis.Redis) -> None:
    cache_store, _ = store
    await cache_store.set("ann_post_cache:1", b"1", 60)
    await cache_store.set("bob_post_cache:1", b"2", 60)
    assert await cache_store.get("ann_post_cache:1") == b"1"
    cache_redis.delete(family_marker("ann_post_cache:1") or "")  # evicted, say
    assert await asyncio.gather(cache_store.get("ann_post_cache:1"), cache_store.get("bob_post_cache:1")) == [
        None,
        b"2",
    ]


async def test_a_miss_stores_its_response_only_if_no_invalidation_touched_its_family_meanwhile(
    store: Any, settings: Any, cache_redis: redis.Redis
) -> None:
    cache_store, _ = store
    assert await cache_store.get("ann_post_cache:1") is None
    await cache_store.set("ann_post_cache:1", b"read and stored, nothing in between", 60)
    assert await cache_store.get("ann_post_cache:1") == b"read and stored, nothing in between"
    for invalidation in (Invalidation(keys={"ann_post_cache:2"}), Invalidation(patterns={"ann_post_cache:*"})):
        assert await cache_store.get("ann_post_cache:3") is None
        await _invalidate(settings, invalidation)  # a write committed after the miss read the database
        await cache_store.set("ann_post_cache:3", b"older than the write", 60)
        assert cache_keys(cache_redis) & {f"{NAMESPACE}:ann_post_cache:3"} == set(), invalidation
    assert await cache_store.get("bob_post_cache:1") is None
    await _invalidate(settings, Invalidation(keys={"ann_post_cache:1"}))  # another family: no effect on this miss
    await cache_store.set("bob_post_cache:1", b"bob's", 60)
    assert await cache_store.get("bob_post_cache:1") == b"bob's"


@pytest.mark.parametrize("path", ["/api/v1/ann/post/{id}", "/api/v1/ann/posts"])
async def test_a_write_between_a_miss_and_its_store_is_not_overwritten_by_the_older_response(
    client: Client,
    app: Litestar,
    ann_post: Post,
    db_session: AsyncSession,
    settings: Any,
    cache_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    # The race of a cache miss against a PATCH: the miss read the row, the PATCH committed and invalidated, then
    # the miss stored what it had read. Without the family epoch that older response was served for up to an hour.
    path = path.format(id=ann_post.id)
    cache_store = app.stores.get(STORE_NAME)
    store_response = cache_store.set
    raced: list[str] = []

    async def patched_in_between(key: str, value: bytes, expires_in: Any = None) -> None:
        if not raced:
            raced.append(key)
            await rename_behind_the_api(db_session, ann_post, "Fresh")
            # What P4's commit invalidates (SPEC §6.4); the pages' family has nothing stored yet: no walk there.
            await _invalidate(settings, Invalidation(keys={f"ann_post_cache:{ann_post.id}"}, patterns={"ann_posts:*"}))
        await store_response(key, value, expires_in)

    monkeypatch.setattr(cache_store, "set", patched_in_between)
    older = await client.get(path)
    assert older.status_code == 200
    assert "Fresh" not in older.text  # read before the write
    assert raced
    assert cache_keys(cache_redis) == set()
    assert "Fresh" in (await client.get(path)).text
    assert len(cache_keys(cache_redis)) == 1  # the next miss is stored as usual


async def test_a_cancelled_read_leaves_the_others_of_its_batch_answered(store: Any) -> None:
    cache_store, _ = store
    await cache_store.set("a", b"1")
    cancelled = asyncio.ensure_future(cache_store.get("a"))
    kept = asyncio.ensure_future(cache_store.get("a"))
    await asyncio.sleep(0)  # both joined the batch
    cancelled.cancel()
    async with asyncio.timeout(2):
        assert await kept == b"1"
    assert cancelled.cancelled()


# --- cache Redis down (SPEC §6.5) -----------------------------------------------------------------------------


async def test_cache_redis_down_reads_fall_through_and_writes_succeed(
    settings_with: Any, ann_post: Post, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings_with(REDIS_CACHE_HOST="127.0.0.1", REDIS_CACHE_PORT=str(free_port())))
    async with AsyncTestClient(app, base_url="https://testserver.local") as client:
        token = (await client.post("/api/v1/login", data={"username": "ann", "password": PASSWORD})).json()
        auth = bearer(token["access_token"])
        with caplog.at_level(logging.ERROR):
            for _ in range(2):
                assert (await client.get(f"/api/v1/ann/post/{ann_post.id}")).json()["title"] == "Post 0"
                assert (await client.get("/api/v1/ann/posts")).status_code == 200
            patched = await client.patch(f"/api/v1/ann/post/{ann_post.id}", json={"title": "New"}, headers=auth)
            assert patched.status_code == 200
            assert (await client.get(f"/api/v1/ann/post/{ann_post.id}")).json()["title"] == "New"
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert any("response cache invalidation failed" in message for message in messages)
    assert any("response cache unavailable" in message for message in messages)
