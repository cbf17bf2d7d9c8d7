"""P1–P6 (SPEC §4.4): every route's success and error texts, ownership, soft and hard delete, pagination."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.posts.models import Post
from app.users.models import User
from tests.conftest import Login, MakeUser
from tests.helpers import bearer

pytestmark = pytest.mark.anyio

POST_READ_KEYS = ["id", "title", "text", "media_url", "created_by_user_id", "created_at"]
NEW_POST = {"title": "Hello", "text": "First post", "media_url": "https://example.com/a.png"}

Client = AsyncTestClient[Litestar]


async def make_posts(db_session: AsyncSession, author: User, count: int, *, deleted: int = 0) -> list[Post]:
    posts = [Post(created_by_user_id=author.id, title=f"Post {i}", text=f"Text {i}") for i in range(count)]
    for post in posts[:deleted]:
        post.mark_deleted()
    db_session.add_all(posts)
    await db_session.commit()
    return posts


# --- P1 create ------------------------------------------------------------------------------------------------


async def test_create_post_returns_the_post(client: Client, ann: User, ann_auth: dict[str, str]) -> None:
    response = await client.post("/api/v1/ann/post", json=NEW_POST, headers=ann_auth)
    assert response.status_code == 201
    body = response.json()
    assert list(body) == POST_READ_KEYS
    assert body["id"] == 1
    assert body["created_by_user_id"] == ann.id
    assert {k: body[k] for k in NEW_POST} == NEW_POST
    assert body["created_at"].endswith("Z")
    assert response.headers["cache-control"] == "no-store"


async def test_create_post_media_url_defaults_to_null(client: Client, ann_auth: dict[str, str]) -> None:
    response = await client.post("/api/v1/ann/post", json={"title": "Hi", "text": "x"}, headers=ann_auth)
    assert response.status_code == 201
    assert response.json()["media_url"] is None


async def test_create_post_needs_a_token(client: Client, ann: User) -> None:
    response = await client.post("/api/v1/ann/post", json=NEW_POST)
    assert response.status_code == 401
    assert response.json() == {"status_code": 401, "detail": "Not authenticated"}


async def test_create_post_for_someone_else_is_forbidden(
    client: Client, make_user: MakeUser, ann_auth: dict[str, str]
) -> None:
    await make_user("bob")
    response = await client.post("/api/v1/bob/post", json=NEW_POST, headers=ann_auth)
    assert response.status_code == 403
    assert response.json()["detail"] == "Request forbidden -- authorization will not help"


async def test_create_post_for_unknown_or_deleted_user_is_404(
    client: Client, make_user: MakeUser, ann_auth: dict[str, str]
) -> None:
    await make_user("gone", deleted=True)
    for username in ("nobody", "gone"):
        response = await client.post(f"/api/v1/{username}/post", json=NEW_POST, headers=ann_auth)
        assert response.status_code == 404
        assert response.json()["detail"] == "User not found"


async def test_superuser_gets_no_owner_rights(client: Client, make_user: MakeUser, ann: User, login: Login) -> None:
    await make_user("root", superuser=True)
    response = await client.post("/api/v1/ann/post", json=NEW_POST, headers=bearer(await login("root")))
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"text": "x"}, "title"),
        ({"title": "H", "text": "x"}, "title"),
        ({"title": "H" * 31, "text": "x"}, "title"),
        ({"title": "Hello", "text": ""}, "text"),
        ({"title": "Hello", "text": "x" * 63207}, "text"),
        ({"title": "Hello", "text": "a\x00b"}, "text"),
        ({"title": "Hello", "text": "x", "media_url": "not a url"}, "media_url"),
        ({"title": "Hello", "text": "x", "media_url": "https://example.com/a\n"}, "media_url"),
        ({"title": "Hello", "text": "x", "media_url": "https://e.com/" + "a" * 2048}, "media_url"),
        ({"title": "Hello", "text": "x", "is_deleted": True}, "is_deleted"),
        ({"title": "Hello", "text": "x", "created_by_user_id": 2}, "created_by_user_id"),
    ],
)
async def test_create_post_rejects_bad_bodies(
    client: Client, ann_auth: dict[str, str], body: dict[str, Any], key: str
) -> None:
    response = await client.post("/api/v1/ann/post", json=body, headers=ann_auth)
    assert response.status_code == 422
    payload = response.json()
    assert payload["detail"] == "Validation failed for POST /api/v1/ann/post"
    assert key in {item["key"] for item in payload["extra"]}


async def test_create_post_accepts_the_longest_text(client: Client, ann_auth: dict[str, str]) -> None:
    response = await client.post("/api/v1/ann/post", json={"title": "Hi", "text": "x" * 63206}, headers=ann_auth)
    assert response.status_code == 201


async def test_create_post_is_rate_limited(
    client: Client, ann_auth: dict[str, str], settings_with: Any, db_session: AsyncSession
) -> None:
    """SPEC §5.2: the default limit applies to a user without a tier; the 422 after the check still counts."""
    limited = create_limited_app(settings_with)
    async with AsyncTestClient(limited, base_url="https://testserver.local") as other:
        token = (await other.post("/api/v1/login", data={"username": "ann", "password": "password1"})).json()
        auth = bearer(token["access_token"])
        first = await other.post("/api/v1/ann/post", json=NEW_POST, headers=auth)
        invalid = await other.post("/api/v1/ann/post", json={}, headers=auth)
        refused = await other.post("/api/v1/ann/post", json=NEW_POST, headers=auth)
    assert first.status_code == 201
    assert first.headers["ratelimit-limit"] == "2"
    assert first.headers["ratelimit-remaining"] == "1"
    assert invalid.status_code == 422
    assert invalid.headers["ratelimit-remaining"] == "0"
    assert refused.status_code == 429
    assert refused.json() == {"status_code": 429, "detail": "Rate limit exceeded."}
    assert refused.headers["retry-after"] == refused.headers["ratelimit-reset"]
    assert len((await db_session.scalars(select(Post))).all()) == 1


def create_limited_app(settings_with: Any) -> Litestar:
    from app.main import create_app  # noqa: PLC0415 - the app of this test only

    return create_app(settings_with(DEFAULT_RATE_LIMIT_LIMIT="2", DEFAULT_RATE_LIMIT_PERIOD="3600"))


# --- P2 list --------------------------------------------------------------------------------------------------


async def test_list_posts_pages_by_id(client: Client, ann: User, db_session: AsyncSession) -> None:
    posts = await make_posts(db_session, ann, 5, deleted=1)
    response = await client.get("/api/v1/ann/posts", params={"page": 2, "items_per_page": 2})
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["data", "total_count", "has_more", "page", "items_per_page"]
    assert [item["id"] for item in body["data"]] == [posts[3].id, posts[4].id]
    assert body["total_count"] == 4
    assert body["has_more"] is False
    assert (body["page"], body["items_per_page"]) == (2, 2)
    assert list(body["data"][0]) == POST_READ_KEYS


async def test_list_posts_defaults_and_page_past_the_end(client: Client, ann: User, db_session: AsyncSession) -> None:
    await make_posts(db_session, ann, 11)
    first = (await client.get("/api/v1/ann/posts")).json()
    assert (len(first["data"]), first["total_count"], first["has_more"], first["page"], first["items_per_page"]) == (
        10,
        11,
        True,
        1,
        10,
    )
    past = (await client.get("/api/v1/ann/posts?page=5")).json()
    assert past["data"] == []
    assert past["total_count"] == 11


async def test_list_posts_shows_only_that_users_posts(
    client: Client, ann: User, make_user: MakeUser, db_session: AsyncSession
) -> None:
    bob = await make_user("bob")
    await make_posts(db_session, bob, 2)
    body = (await client.get("/api/v1/ann/posts")).json()
    assert body["data"] == []
    assert body["total_count"] == 0


async def test_list_posts_of_unknown_or_deleted_user_is_404(client: Client, make_user: MakeUser) -> None:
    await make_user("gone", deleted=True)
    for username in ("nobody", "gone", "a%00b"):
        response = await client.get(f"/api/v1/{username}/posts")
        assert response.status_code == 404
        assert response.json() == {"status_code": 404, "detail": "User not found"}


@pytest.mark.parametrize("query", ["page=0", "items_per_page=0", "items_per_page=101", "page=2147483648", "page=x"])
async def test_list_posts_rejects_bad_pagination(client: Client, ann: User, query: str) -> None:
    response = await client.get(f"/api/v1/ann/posts?{query}")
    assert response.status_code == 422
    assert response.json()["extra"][0]["source"] == "query"


# --- P3 read --------------------------------------------------------------------------------------------------


async def test_read_post(client: Client, ann: User, db_session: AsyncSession) -> None:
    (post,) = await make_posts(db_session, ann, 1)
    response = await client.get(f"/api/v1/ann/post/{post.id}")
    assert response.status_code == 200
    assert response.json() == {
        "id": post.id,
        "title": "Post 0",
        "text": "Text 0",
        "media_url": None,
        "created_by_user_id": ann.id,
        "created_at": response.json()["created_at"],
    }
    assert response.headers["cache-control"].startswith("public, max-age=")


async def test_read_post_errors(client: Client, ann: User, make_user: MakeUser, db_session: AsyncSession) -> None:
    bob = await make_user("bob")
    deleted, _ = await make_posts(db_session, ann, 2, deleted=1)
    (bobs,) = await make_posts(db_session, bob, 1)
    cases = {
        "/api/v1/nobody/post/1": "User not found",
        f"/api/v1/ann/post/{bobs.id}": "Post not found",  # not ann's
        f"/api/v1/ann/post/{deleted.id}": "Post not found",  # soft-deleted
        "/api/v1/ann/post/999": "Post not found",
        "/api/v1/ann/post/2147483648": "Post not found",
        "/api/v1/ann/post/0": "Post not found",
    }
    for path, detail in cases.items():
        response = await client.get(path)
        assert (response.status_code, response.json()["detail"]) == (404, detail), path
    response = await client.get("/api/v1/ann/post/abc")
    assert response.status_code == 422
    assert response.json()["extra"][0]["source"] == "path"


# --- P4 update ------------------------------------------------------------------------------------------------


async def test_update_post(client: Client, ann: User, ann_auth: dict[str, str], db_session: AsyncSession) -> None:
    (post,) = await make_posts(db_session, ann, 1)
    response = await client.patch(
        f"/api/v1/ann/post/{post.id}", json={"title": "New title", "media_url": "ftp://x.org/f"}, headers=ann_auth
    )
    assert response.status_code == 200
    assert response.json() == {"message": "Post updated"}
    await db_session.refresh(post)
    assert (post.title, post.text, post.media_url) == ("New title", "Text 0", "ftp://x.org/f")
    assert post.updated_at is not None
    response = await client.patch(f"/api/v1/ann/post/{post.id}", json={"media_url": None}, headers=ann_auth)
    assert response.status_code == 200
    await db_session.refresh(post)
    assert post.media_url is None


async def test_update_post_rejects_null_title_text_and_unknown_fields(
    client: Client, ann: User, ann_auth: dict[str, str], db_session: AsyncSession
) -> None:
    (post,) = await make_posts(db_session, ann, 1)
    for body in ({"title": None}, {"text": None}, {"extra": 1}, {"title": "x"}):
        response = await client.patch(f"/api/v1/ann/post/{post.id}", json=body, headers=ann_auth)
        assert response.status_code == 422, body


async def test_update_post_order_of_errors(
    client: Client, ann: User, make_user: MakeUser, ann_auth: dict[str, str], db_session: AsyncSession
) -> None:
    bob = await make_user("bob")
    await make_posts(db_session, bob, 1)
    (deleted,) = await make_posts(db_session, ann, 1, deleted=1)
    cases = [
        ("/api/v1/nobody/post/1", 404, "User not found"),
        ("/api/v1/bob/post/999", 403, "Request forbidden -- authorization will not help"),
        ("/api/v1/ann/post/999", 404, "Post not found"),
        (f"/api/v1/ann/post/{deleted.id}", 404, "Post not found"),
    ]
    for path, status, detail in cases:
        response = await client.patch(path, json={"title": "Hacked"}, headers=ann_auth)
        assert (response.status_code, response.json()["detail"]) == (status, detail), path


async def test_update_someone_elses_post_through_your_own_username_is_refused(
    client: Client, ann: User, make_user: MakeUser, ann_auth: dict[str, str], db_session: AsyncSession
) -> None:
    """SPEC §4.4 [Δ]: the original looked the post up by id alone."""
    bob = await make_user("bob")
    (bobs,) = await make_posts(db_session, bob, 1)
    response = await client.patch(f"/api/v1/ann/post/{bobs.id}", json={"title": "Hacked"}, headers=ann_auth)
    assert response.status_code == 404
    assert response.json()["detail"] == "Post not found"
    await db_session.refresh(bobs)
    assert bobs.title == "Post 0"
    response = await client.delete(f"/api/v1/ann/post/{bobs.id}", headers=ann_auth)
    assert response.status_code == 404
    await db_session.refresh(bobs)
    assert bobs.is_deleted is False


# --- P5 soft delete -------------------------------------------------------------------------------------------


async def test_delete_post_is_soft(
    client: Client, ann: User, ann_auth: dict[str, str], db_session: AsyncSession
) -> None:
    (post,) = await make_posts(db_session, ann, 1)
    response = await client.delete(f"/api/v1/ann/post/{post.id}", headers=ann_auth)
    assert response.status_code == 200
    assert response.json() == {"message": "Post deleted"}
    await db_session.refresh(post)
    assert post.is_deleted is True
    assert post.deleted_at is not None
    assert (await client.get(f"/api/v1/ann/post/{post.id}")).status_code == 404
    again = await client.delete(f"/api/v1/ann/post/{post.id}", headers=ann_auth)
    assert (again.status_code, again.json()["detail"]) == (404, "Post not found")


async def test_delete_post_of_another_user_is_forbidden(
    client: Client, ann: User, make_user: MakeUser, ann_auth: dict[str, str], db_session: AsyncSession
) -> None:
    bob = await make_user("bob")
    (bobs,) = await make_posts(db_session, bob, 1)
    response = await client.delete(f"/api/v1/bob/post/{bobs.id}", headers=ann_auth)
    assert response.status_code == 403
    assert (await client.delete(f"/api/v1/bob/post/{bobs.id}")).status_code == 401


# --- P6 hard delete -------------------------------------------------------------------------------------------


async def test_erase_post_removes_the_row_even_when_soft_deleted(
    client: Client, ann: User, make_user: MakeUser, login: Login, db_session: AsyncSession
) -> None:
    await make_user("root", superuser=True)
    root = bearer(await login("root"))
    live, deleted = await make_posts(db_session, ann, 2, deleted=0)
    deleted.mark_deleted()
    await db_session.commit()
    for post in (live, deleted):
        response = await client.delete(f"/api/v1/ann/db_post/{post.id}", headers=root)
        assert response.status_code == 200
        assert response.json() == {"message": "Post deleted from the database"}
    db_session.expunge_all()
    assert (await db_session.scalars(select(Post))).all() == []


async def test_erase_post_of_soft_deleted_user_and_errors(
    client: Client, make_user: MakeUser, login: Login, ann_auth: dict[str, str], db_session: AsyncSession
) -> None:
    await make_user("root", superuser=True)
    root = bearer(await login("root"))
    gone = await make_user("gone", deleted=True)
    bob = await make_user("bob")
    (gones,) = await make_posts(db_session, gone, 1)
    (bobs,) = await make_posts(db_session, bob, 1)
    forbidden = await client.delete(f"/api/v1/gone/db_post/{gones.id}", headers=ann_auth)
    assert (forbidden.status_code, forbidden.json()["detail"]) == (403, "You do not have enough privileges.")
    cases = [
        ("/api/v1/nobody/db_post/1", "User not found"),
        (f"/api/v1/gone/db_post/{bobs.id}", "Post not found"),  # must belong to that user
        ("/api/v1/gone/db_post/2147483648", "Post not found"),
    ]
    for path, detail in cases:
        response = await client.delete(path, headers=root)
        assert (response.status_code, response.json()["detail"]) == (404, detail), path
    response = await client.delete(f"/api/v1/gone/db_post/{gones.id}", headers=root)
    assert response.status_code == 200


async def test_hard_deleted_user_takes_their_posts(
    client: Client, ann: User, make_user: MakeUser, login: Login, db_session: AsyncSession
) -> None:
    await make_user("root", superuser=True)
    await make_posts(db_session, ann, 3)
    response = await client.delete("/api/v1/db_user/ann", headers=bearer(await login("root")))
    assert response.status_code == 200
    db_session.expunge_all()
    assert (await db_session.scalars(select(Post))).all() == []
