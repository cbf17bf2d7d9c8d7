"""Scale-out on one machine, for real (issue 11, SPEC §14.4): two app servers behind nginx, one worker, one database.

The stack is started once for the module: instances A and B (each ``python -m app`` with 2 Granian workers), a SAQ
worker (``litestar workers run``) and nginx running the committed ``deploy/nginx/default.conf`` with A and B as its
upstream (tests/nginx.py). All share the test run's PostgreSQL database and Redis db; the tables and Redis are
emptied before every test (conftest ``clean_state``), so each test arranges its own users, tiers and posts.

Clients are real and parallel: threads, each on its own connection, released together by a barrier. nginx's access
log names the upstream that served each request, which is how a test shows both instances took part.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
import redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.cache import NAMESPACE
from app.posts.models import Post
from app.users.models import User
from tests.conftest import REDIS_DB, REDIS_HOST, REDIS_PORT, MakeUser
from tests.helpers import PASSWORD, bearer
from tests.nginx import Nginx, require_nginx, running_nginx
from tests.servers import PROJECT_ROOT, REQUEST_TIMEOUT, LiveServer, Send, live_server, simultaneously
from tests.test_rate_limit import make_tier, wait_for_fresh_window
from tests.test_tasks import WORKER_STARTUP_TIMEOUT, WorkerProcess

pytestmark = pytest.mark.anyio

STACK_ENV = {
    # Also the default: nginx reaches the instances from 127.0.0.1, so they trust its X-Forwarded-For (SPEC §5.3).
    "FORWARDED_ALLOW_IPS": "127.0.0.1",
    # Anonymous callers (K1): one request per hour, so a second request on the same key is a 429.
    "DEFAULT_RATE_LIMIT_LIMIT": "1",
    "DEFAULT_RATE_LIMIT_PERIOD": "3600",
    # Each server's log is its output file (LiveServer.log), not one file shared by every process; no access lines.
    "LOG_FILE_PATH": "",
    "LOG_LEVEL": "WARNING",
}
POST_PATH = "api_v1_{username}_post"  # the route template of P1, so one rule covers every user


# --- the stack ------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    env: dict[str, str]
    log_dir: Path
    processes: ExitStack
    instances: list[LiveServer] = field(default_factory=list)
    killed: list[LiveServer] = field(default_factory=list)
    nginx: Nginx | None = None
    worker: WorkerProcess | None = None

    @property
    def proxy(self) -> Nginx:
        assert self.nginx is not None
        return self.nginx

    def start_instances(self, count: int) -> list[LiveServer]:
        """``count`` servers started side by side (each start takes seconds), all stopped with the stack."""
        managers = [live_server(self.env, self.log_dir, workers=2) for _ in range(count)]
        with ThreadPoolExecutor(max_workers=count) as pool:
            futures = [pool.submit(manager.__enter__) for manager in managers]
        started = []
        for manager, future in zip(managers, futures, strict=True):
            if future.exception() is None:
                started.append(future.result())
                self.processes.push(manager)
        if len(started) < count:
            raise next(error for future in futures if (error := future.exception()) is not None)
        return started

    def start_worker(self) -> WorkerProcess:
        log_file = self.log_dir / "worker.log"
        with log_file.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "litestar", "--app", "app.main:create_app", "workers", "run"],
                cwd=PROJECT_ROOT / "src",
                env={**os.environ, **self.env, "LOG_LEVEL": "INFO"},  # INFO: its "Worker Started" line
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.processes.callback(_kill, process)
        return WorkerProcess(process, log_file)

    def heal(self) -> None:
        """A test that killed an instance leaves the next one two live instances again (nginx reloaded)."""
        if not self.killed:
            return
        self.instances = [server for server in self.instances if server not in self.killed]
        self.instances += self.start_instances(2 - len(self.instances))
        self.killed.clear()
        self.proxy.reload([port_of(server) for server in self.instances])


@pytest.fixture(scope="module")
def scale_out_stack(test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_nginx()
    log_dir = tmp_path_factory.mktemp("scale-out")
    with ExitStack() as processes:
        stack = Stack({**test_env, **STACK_ENV}, log_dir, processes)
        worker = stack.start_worker()
        stack.instances = stack.start_instances(2)
        stack.nginx = processes.enter_context(
            running_nginx([port_of(server) for server in stack.instances], log_dir / "nginx")
        )
        worker.wait_for_log("Worker Started", WORKER_STARTUP_TIMEOUT)
        stack.worker = worker
        yield stack


@pytest.fixture
def stack(scale_out_stack: Stack) -> Stack:
    scale_out_stack.heal()
    return scale_out_stack


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def port_of(server: LiveServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def served_by(nginx: Nginx, request_line: str, *, since: int = 0, count: int = 1) -> list[tuple[str, str]]:
    """(upstream addresses, upstream statuses) of each request logged from line ``since`` on whose request line starts
    with ``request_line``; waits a moment for ``count`` of them (nginx logs a request just after answering it)."""
    deadline = time.monotonic() + 2
    while True:
        found = [(entry[3], entry[4]) for entry in nginx.access_log()[since:] if entry[1].startswith(request_line)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def ports_in(served: list[tuple[str, str]]) -> set[int]:
    """Every instance port that was tried for these requests."""
    return {
        int(address.rsplit(":", 1)[1]) for upstreams, _ in served for address in upstreams.split(", ") if ":" in address
    }


def answered_by(served: list[tuple[str, str]]) -> list[tuple[int, int]]:
    """(port, status) of the instance that gave each proxied request its answer (the last one nginx tried)."""
    return [
        (int(upstreams.split(", ")[-1].rsplit(":", 1)[1]), int(statuses.split(", ")[-1]))
        for upstreams, statuses in served
        if upstreams != "-"
    ]


# --- clients --------------------------------------------------------------------------------------------------


def client(base_url: str, *, source: str | None = None) -> httpx.AsyncClient:
    """An HTTP client; ``source`` is the local address to connect from (any 127.x.y.z is this machine)."""
    transport = httpx.AsyncHTTPTransport(local_address=source) if source else None
    return httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT, transport=transport)


async def log_in(base_url: str, username: str) -> tuple[dict[str, str], str]:
    """The bearer header and the refresh cookie's value of a login through ``base_url``."""
    async with client(base_url) as http:
        response = await http.post("/api/v1/login", data={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    return bearer(response.json()["access_token"]), cookie["refresh_token"].value


def raw_request(nginx: Nginx, head: str) -> tuple[int, dict[str, list[str]], str]:
    """A request exactly as written (no client normalises its path): status, headers, body.

    Read up to the end of the body (Content-Length), not until nginx closes: after a 413 it waits for the unsent
    body before closing (``lingering_timeout``, 5 s).
    """
    host, port = nginx.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT) as sock:
        sock.sendall(head.encode() + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        header_block, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = header_block.decode().split("\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        length = int(headers["content-length"][0]) if "content-length" in headers else None
        while (length is None or len(body) < length) and (chunk := sock.recv(65536)):
            body += chunk
    return int(status_line.split()[1]), headers, body.decode(errors="replace")


async def make_writer(db_session: AsyncSession, make_user: MakeUser, username: str, limit: int = 10_000) -> User:
    """A user whose tier allows ``limit`` posts per hour (without a tier, the default allows one)."""
    tier = await make_tier(db_session, f"{username}-tier", **{POST_PATH: (limit, 3600)})
    return await make_user(username, tier_id=tier.id)


def assert_no_server_error(stack: Stack) -> None:
    for server in stack.instances:
        log = server.log()
        assert "Traceback" not in log, log
        assert '"status_code":500' not in log.replace(" ", ""), log


# --- rate limit (SPEC §5.5) -----------------------------------------------------------------------------------


async def test_the_rate_limit_is_exact_across_both_instances(
    stack: Stack, db_session: AsyncSession, make_user: MakeUser
) -> None:
    limit = 10
    await make_writer(db_session, make_user, "ann", limit=limit)
    auth, _ = await log_in(stack.proxy.base_url, "ann")
    wait_for_fresh_window(3600, margin=5)

    def write(n: int) -> Send:
        return lambda http: http.post("/api/v1/ann/post", json={"title": f"Burst {n}", "text": "x"}, headers=auth)

    start = len(stack.proxy.access_log())
    responses = await simultaneously(stack.proxy.base_url, [write(n) for n in range(3 * limit)])

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * limit + [429] * (2 * limit), [r.text for r in responses]
    assert len((await db_session.scalars(select(Post.id))).all()) == limit
    # Both instances took part, so the limit held across them: separate counters would have admitted more.
    served = served_by(stack.proxy, "POST /api/v1/ann/post", since=start, count=3 * limit)
    assert {port for port, _ in answered_by(served)} == {port_of(server) for server in stack.instances}, served
    assert_no_server_error(stack)


# --- response cache (SPEC §6) ---------------------------------------------------------------------------------


async def test_a_post_written_through_one_instance_is_never_served_stale_by_the_other(
    stack: Stack, db_session: AsyncSession, make_user: MakeUser
) -> None:
    a, b = stack.instances
    await make_writer(db_session, make_user, "ann")
    auth, _ = await log_in(a.base_url, "ann")
    start = len(stack.proxy.access_log())
    async with client(a.base_url) as via_a, client(b.base_url) as via_b, client(stack.proxy.base_url) as via_nginx:
        created = await via_a.post("/api/v1/ann/post", json={"title": "Old", "text": "x"}, headers=auth)
        assert created.status_code == 201, created.text
        post_id = created.json()["id"]
        # B caches the post and the page.
        assert (await via_b.get(f"/api/v1/ann/post/{post_id}")).json()["title"] == "Old"
        assert [p["title"] for p in (await via_b.get("/api/v1/ann/posts")).json()["data"]] == ["Old"]
        with redis.Redis(host=REDIS_HOST, port=int(REDIS_PORT), db=int(REDIS_DB)) as cache:
            assert cache.exists(f"{NAMESPACE}:ann_post_cache:{post_id}")

        patched = await via_a.patch(f"/api/v1/ann/post/{post_id}", json={"title": "New"}, headers=auth)
        assert patched.status_code == 200, patched.text
        assert (await via_b.get(f"/api/v1/ann/post/{post_id}")).json()["title"] == "New"
        assert [p["title"] for p in (await via_b.get("/api/v1/ann/posts")).json()["data"]] == ["New"]

        second = await via_a.post("/api/v1/ann/post", json={"title": "Second", "text": "x"}, headers=auth)
        assert second.status_code == 201, second.text
        assert (await via_b.get("/api/v1/ann/posts")).json()["total_count"] == 2
        # Through nginx, whichever instance answers (several reads reach both).
        reads = [await via_nginx.get(f"/api/v1/ann/post/{post_id}") for _ in range(6)]
        pages = [await via_nginx.get("/api/v1/ann/posts") for _ in range(6)]
    assert {read.json()["title"] for read in reads} == {"New"}
    assert {page.json()["total_count"] for page in pages} == {2}
    served = served_by(stack.proxy, "GET /api/v1/ann/post", since=start, count=12)
    assert ports_in(served) == {port_of(server) for server in stack.instances}


# --- logout (SPEC §3.7) ---------------------------------------------------------------------------------------


async def test_a_logout_on_one_instance_is_honoured_by_the_other(stack: Stack, make_user: MakeUser) -> None:
    a, b = stack.instances
    await make_user("ann")
    auth, refresh = await log_in(a.base_url, "ann")
    async with client(a.base_url) as via_a, client(b.base_url) as via_b, client(stack.proxy.base_url) as via_nginx:
        assert (await via_b.get("/api/v1/user/me", headers=auth)).status_code == 200
        logout = await via_a.post("/api/v1/logout", headers=auth | {"Cookie": f"refresh_token={refresh}"})
        assert logout.status_code == 200, logout.text

        refused = await via_b.get("/api/v1/user/me", headers=auth)
        refresh_refused = await via_b.post("/api/v1/refresh", headers={"Cookie": f"refresh_token={refresh}"})
        through_nginx = [await via_nginx.get("/api/v1/user/me", headers=auth) for _ in range(4)]
    assert refused.status_code == 401, refused.text
    assert refresh_refused.status_code == 401, refresh_refused.text
    assert [response.status_code for response in through_nginx] == [401] * 4


async def test_a_page_served_through_nginx_on_any_port_logs_in_from_its_own_origin(
    stack: Stack, make_user: MakeUser
) -> None:
    """The auth routes accept the API's own origin (app.core.cors): nginx forwards the host as the browser wrote it,
    port included (``X-Forwarded-Host $http_host``; ``$host`` drops the port, and nginx published on 8080 refused
    its own pages' logins with 403). Here nginx listens on a free port, never 80."""
    await make_user("ann")
    form = {"username": "ann", "password": PASSWORD}
    async with client(stack.proxy.base_url) as via_nginx:
        own = await via_nginx.post("/api/v1/login", data=form, headers={"Origin": stack.proxy.base_url})
        foreign = await via_nginx.post("/api/v1/login", data=form, headers={"Origin": "https://evil.example"})
    assert own.status_code == 200, own.text
    assert foreign.status_code == 403


# --- client address (SPEC §5.3) -------------------------------------------------------------------------------


def rate_limit_subjects(path: str) -> list[str]:
    """The subjects of the counters on ``path`` (key ``ratelimit:<subject>:<path>:<window start>``)."""
    with redis.Redis(host=REDIS_HOST, port=int(REDIS_PORT), db=int(REDIS_DB)) as client_:
        keys = [key.decode() for key in client_.scan_iter(match=f"ratelimit:*:{path}:*")]
    return sorted(key.split(":")[1] for key in keys)


async def test_nginx_keys_anonymous_clients_by_their_address_not_a_forged_header(stack: Stack) -> None:
    a, _ = stack.instances
    task = "/api/v1/tasks/task?message=hi"
    wait_for_fresh_window(3600, margin=5)
    # Two clients of nginx, from 127.0.0.2 and 127.0.0.3; each claims to be someone else.
    async with (
        client(stack.proxy.base_url, source="127.0.0.2") as two,
        client(stack.proxy.base_url, source="127.0.0.3") as three,
    ):
        first = await two.post(task, headers={"X-Forwarded-For": "203.0.113.1"})
        forged = await two.post(task, headers={"X-Forwarded-For": "203.0.113.2", "X-Real-IP": "203.0.113.3"})
        other_client = await three.post(task, headers={"X-Forwarded-For": "203.0.113.1"})
    assert [first.status_code, forged.status_code, other_client.status_code] == [201, 429, 201]
    assert rate_limit_subjects("api_v1_tasks_task") == ["127.0.0.2", "127.0.0.3"]

    # The instances do trust 127.0.0.1's header: only nginx's overwrite keeps a client from choosing its key.
    async with client(a.base_url) as direct:
        assert (await direct.post(task, headers={"X-Forwarded-For": "203.0.113.9"})).status_code == 201
    assert rate_limit_subjects("api_v1_tasks_task") == ["127.0.0.2", "127.0.0.3", "203.0.113.9"]


# --- jobs (SPEC §4.7, §10) ------------------------------------------------------------------------------------


async def test_a_job_enqueued_through_nginx_completes_and_is_visible_from_either_instance(stack: Stack) -> None:
    async with client(stack.proxy.base_url) as via_nginx:
        created = await via_nginx.post("/api/v1/tasks/task?message=scaled")
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]

    deadline = time.monotonic() + 20
    bodies: dict[str, dict[str, Any]] = {}
    a, b = stack.instances
    async with client(a.base_url) as via_a, client(b.base_url) as via_b, client(stack.proxy.base_url) as via_nginx:
        while time.monotonic() < deadline:
            for name, http in (("A", via_a), ("B", via_b), ("nginx", via_nginx)):
                response = await http.get(f"/api/v1/tasks/task/{task_id}")
                assert response.status_code == 200, (name, response.text)
                bodies[name] = response.json()
            if all(body["status"] == "complete" for body in bodies.values()):
                break
            await anyio.sleep(0.2)
    complete = ("complete", "Task scaled is complete!")
    assert {name: (body["status"], body["result"]) for name, body in bodies.items()} == dict.fromkeys(
        ("A", "B", "nginx"), complete
    )
    assert stack.worker is not None
    assert "Traceback" not in stack.worker.log(), stack.worker.log()


# --- what nginx refuses itself (SPEC §14.4) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/metrics",
        "/metrics/",
        "/metrics?format=openmetrics",
        "/metrics/anything",
        "//metrics",
        "/%6Detrics",
        "/api/v1/../../metrics",
    ],
)
def test_metrics_is_refused_by_nginx_and_never_proxied(stack: Stack, path: str) -> None:
    start = len(stack.proxy.access_log())
    status, headers, body = raw_request(stack.proxy, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
    assert status == 404
    assert "<center>nginx</center>" in body  # nginx's own page, not the app's JSON 404
    assert headers["x-frame-options"] == ["DENY"]  # security headers on nginx's own pages too
    assert served_by(stack.proxy, f"GET {path} ", since=start) == [("-", "-")]  # no upstream was asked


def test_an_unknown_path_is_proxied_to_the_app(stack: Stack) -> None:
    """The contrast to the /metrics test: the app's 404 is JSON and came from an instance."""
    start = len(stack.proxy.access_log())
    status, headers, _ = raw_request(stack.proxy, "GET /metricsx HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
    assert (status, headers["content-type"]) == (404, ["application/json"])
    assert [code for _, code in answered_by(served_by(stack.proxy, "GET /metricsx ", since=start))] == [404]


def test_a_body_over_one_mebibyte_gets_413_from_nginx(stack: Stack) -> None:
    limit = 1024 * 1024
    start = len(stack.proxy.access_log())
    head = "POST /api/v1/user HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
    status, headers, body = raw_request(stack.proxy, f"{head}Content-Length: {limit + 1}\r\n")
    assert status == 413
    assert "<center>nginx</center>" in body
    assert headers["x-content-type-options"] == ["nosniff"]
    assert served_by(stack.proxy, "POST /api/v1/user ", since=start) == [("-", "-")]

    # Exactly the limit passes nginx; the app answers (a JSON error for this junk body, not nginx's 413).
    at_limit = httpx.post(f"{stack.proxy.base_url}/api/v1/user", content=b"x" * limit, timeout=REQUEST_TIMEOUT)
    assert at_limit.status_code != 413
    assert at_limit.headers["content-type"] == "application/json"
    assert len(answered_by(served_by(stack.proxy, "POST /api/v1/user ", since=start, count=2))) == 1


def test_proxied_responses_carry_each_security_header_once_and_no_nginx_version(stack: Stack) -> None:
    response = httpx.get(f"{stack.proxy.base_url}/api/v1/health", timeout=REQUEST_TIMEOUT)
    assert response.status_code == 200
    for name, value in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ]:
        assert response.headers.get_list(name) == [value], name
    assert response.headers["server"] == "nginx"


# --- failover (last: it kills an instance; ``heal`` replaces it for any test after it) -------------------------


def kill_instance(stack: Stack, server: LiveServer) -> None:
    """SIGKILL the supervisor and every worker at once: a crash, nothing shuts down cleanly."""
    os.killpg(server.pid, signal.SIGKILL)
    stack.killed.append(server)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port_of(server)), timeout=1).close()
        except OSError:
            return
        assert time.monotonic() < deadline, "the killed instance still accepts connections"
        time.sleep(0.05)


@dataclass
class Write:
    title: str
    status: int | None = None
    post_id: int | None = None
    after_kill: bool = False


def _write_load(stack: Stack, auth: dict[str, str], threads: int, kill: Callable[[], None]) -> list[Write]:
    """``threads`` writers through nginx; ``kill`` runs once a first batch of writes was acknowledged."""
    writes: list[Write] = []
    stop, killed = threading.Event(), threading.Event()
    lock = threading.Lock()

    def writer(n: int) -> None:
        give_up = time.monotonic() + 2 * REQUEST_TIMEOUT  # never a runaway load, whatever the main thread does
        with httpx.Client(base_url=stack.proxy.base_url, timeout=REQUEST_TIMEOUT) as http:
            i = 0
            while not stop.is_set() and time.monotonic() < give_up:
                write = Write(title=f"W{n}-{i}", after_kill=killed.is_set())
                with lock:
                    writes.append(write)
                i += 1
                try:
                    response = http.post("/api/v1/ann/post", json={"title": write.title, "text": "x"}, headers=auth)
                except httpx.TransportError:
                    continue
                write.status = response.status_code
                if response.status_code == 201:
                    write.post_id = response.json()["id"]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(writer, n) for n in range(threads)]
        try:
            deadline = time.monotonic() + REQUEST_TIMEOUT
            while sum(write.status == 201 for write in writes) < 40 and time.monotonic() < deadline:
                time.sleep(0.01)
            kill()
            killed.set()
            time.sleep(1.5)
        finally:
            stop.set()
        for future in futures:
            future.result(timeout=REQUEST_TIMEOUT)
    return writes


async def test_killing_an_instance_mid_load_loses_no_acknowledged_write_and_nginx_fails_over(
    stack: Stack, db_session: AsyncSession, make_user: MakeUser
) -> None:
    threads = 8
    a, b = stack.instances
    await make_writer(db_session, make_user, "ann")
    auth, _ = await log_in(stack.proxy.base_url, "ann")

    start = len(stack.proxy.access_log())
    writes = await anyio.to_thread.run_sync(_write_load, stack, auth, threads, lambda: kill_instance(stack, b))

    answers = answered_by(served_by(stack.proxy, "POST /api/v1/ann/post", since=start, count=len(writes)))
    assert (port_of(b), 201) in answers, "B acknowledged no write: the kill would prove nothing"
    acknowledged = {write.post_id: write.title for write in writes if write.status == 201}
    rows = dict((await db_session.execute(select(Post.id, Post.title))).tuples().all())
    # Every 201 is a row with its title.
    assert {post_id: rows.get(post_id) for post_id in acknowledged} == acknowledged
    # The only failures are the writes in flight on B when it died (at most one per writer): 502 from nginx.
    failed = [write for write in writes if write.status != 201]
    assert {write.status for write in failed} <= {502}, [(w.title, w.status) for w in failed]
    assert len(failed) <= threads, [(w.title, w.status) for w in failed]
    # No write was replayed on A after B had taken it (that could write twice) …
    assert len(set(rows.values())) == len(rows)
    # … and a row nobody acknowledged can only be one of those (committed on B, answer lost).
    assert set(rows.values()) - set(acknowledged.values()) <= {write.title for write in failed}
    # The load went on after the kill, on A.
    after_kill = [write for write in writes if write.after_kill and write.status == 201]
    assert len(after_kill) >= 10, len(after_kill)

    # A dead instance in the upstream is skipped, even by an nginx that does not know it died yet: reloaded, nginx
    # forgets which servers failed (as a restarted nginx would), tries B again, is refused and retries on A.
    stack.proxy.reload([port_of(a), port_of(b)])
    start = len(stack.proxy.access_log())
    async with client(stack.proxy.base_url) as via_nginx:
        responses = [
            await via_nginx.post("/api/v1/ann/post", json={"title": f"After {n}", "text": "x"}, headers=auth)
            for n in range(10)
        ]
        responses += [await via_nginx.get("/api/v1/ann/posts") for _ in range(10)]
    assert [r.status_code for r in responses] == [201] * 10 + [200] * 10
    served = served_by(stack.proxy, "", since=start, count=20)
    assert answered_by(served) == [(port_of(a), 201)] * 10 + [(port_of(a), 200)] * 10
    assert port_of(b) in ports_in(served), "nginx never tried the dead instance: no failover was needed"
    assert_no_server_error_on(a)


def assert_no_server_error_on(server: LiveServer) -> None:
    log = server.log()
    assert "Traceback" not in log, log
    assert '"status_code":500' not in log.replace(" ", ""), log
