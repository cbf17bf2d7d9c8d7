"""Races against a real Granian server (SPEC §1.3 unique-constraint races, §4.2 A2/A3, §4.3 U1).

Litestar's ``AsyncTestClient`` serves one request at a time, so it can never race. Here every request has its
own thread and its own connection, opened beforehand; a barrier then releases all requests at once into a
server with two worker processes.
"""

from __future__ import annotations

from http.cookies import SimpleCookie

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.users.models import User
from tests.conftest import MakeUser, StartServer
from tests.helpers import PASSWORD, bearer
from tests.servers import REQUEST_TIMEOUT, LiveServer, Send, simultaneously

pytestmark = pytest.mark.anyio

PARALLEL = 10
# Every wait is bounded: a request, the barrier, the whole batch.


def log_in(server: LiveServer, username: str) -> tuple[str, str]:
    """The access token and the refresh cookie's value of a login through the API."""
    response = httpx.post(
        f"{server.base_url}/api/v1/login",
        data={"username": username, "password": PASSWORD},
        timeout=REQUEST_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    return response.json()["access_token"], cookie["refresh_token"].value


def statuses(responses: list[httpx.Response]) -> list[int]:
    return sorted(response.status_code for response in responses)


def assert_no_server_error(server: LiveServer) -> None:
    log = server.log()
    assert "Traceback" not in log, log
    assert '"status_code":500' not in log.replace(" ", ""), log


async def count_users(db_session: AsyncSession) -> int:
    return int(await db_session.scalar(select(func.count()).select_from(User)) or 0)


def register(username: str, email: str) -> Send:
    body = {"name": "Racer", "username": username, "email": email, "password": PASSWORD}
    return lambda client: client.post("/api/v1/user", json=body)


# --- U1 register (SPEC §1.3, §4.3) --------------------------------------------------------------------------


async def test_parallel_registrations_with_one_email_give_one_201_and_the_pre_check_422_for_the_rest(
    start_server: StartServer, db_session: AsyncSession
) -> None:
    server = start_server(workers=2)
    # Password hashing runs between the uniqueness pre-check and the insert, so the requests overlap there.
    responses = await simultaneously(
        server.base_url, [register(f"racer{n}", "same@example.com") for n in range(PARALLEL)]
    )

    assert statuses(responses) == [201] + [422] * (PARALLEL - 1), [r.text for r in responses]
    rejected = [response.json() for response in responses if response.status_code == 422]
    assert rejected == [{"status_code": 422, "detail": "Email is already registered"}] * (PARALLEL - 1)
    assert await count_users(db_session) == 1
    assert_no_server_error(server)


async def test_parallel_registrations_with_one_username_give_one_201_and_the_pre_check_422_for_the_rest(
    start_server: StartServer, db_session: AsyncSession
) -> None:
    server = start_server(workers=2)
    responses = await simultaneously(
        server.base_url, [register("same", f"racer{n}@example.com") for n in range(PARALLEL)]
    )

    assert statuses(responses) == [201] + [422] * (PARALLEL - 1), [r.text for r in responses]
    rejected = [response.json() for response in responses if response.status_code == 422]
    assert rejected == [{"status_code": 422, "detail": "Username not available"}] * (PARALLEL - 1)
    assert await count_users(db_session) == 1
    assert_no_server_error(server)


# --- A2 refresh, A3 logout (SPEC §4.2, §3.7) ----------------------------------------------------------------


async def test_one_refresh_token_presented_in_parallel_is_rotated_exactly_once(
    start_server: StartServer, make_user: MakeUser
) -> None:
    server = start_server(workers=2)
    await make_user("ann")
    _, refresh = log_in(server, "ann")

    # The cookie is Secure, so over plain HTTP it is sent as a header.
    cookie = {"Cookie": f"refresh_token={refresh}"}
    responses = await simultaneously(
        server.base_url, [lambda client: client.post("/api/v1/refresh", headers=cookie) for _ in range(PARALLEL)]
    )

    assert statuses(responses) == [200] + [401] * (PARALLEL - 1), [r.text for r in responses]
    rejected = [response.json() for response in responses if response.status_code == 401]
    assert rejected == [{"status_code": 401, "detail": "Invalid refresh token."}] * (PARALLEL - 1)
    assert_no_server_error(server)


async def test_a_double_logout_in_parallel_succeeds_once_and_rejects_the_other(
    start_server: StartServer, make_user: MakeUser
) -> None:
    server = start_server(workers=2)
    await make_user("ann")
    access, refresh = log_in(server, "ann")

    headers = bearer(access) | {"Cookie": f"refresh_token={refresh}"}
    responses = await simultaneously(
        server.base_url, [lambda client: client.post("/api/v1/logout", headers=headers) for _ in range(2)]
    )

    assert statuses(responses) == [200, 401], [r.text for r in responses]
    rejected = [response.json() for response in responses if response.status_code == 401]
    assert rejected == [{"status_code": 401, "detail": "Invalid token."}]
    assert_no_server_error(server)
