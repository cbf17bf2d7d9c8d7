"""Property-based fuzzing of the whole OpenAPI document against a real server (SPEC §1.3, §1.7).

Every operation of ``/openapi.json`` is fuzzed three times, as an anonymous caller, a user and a superuser, so a
new route is covered without editing this file. A response must not be a 5xx and must match the document: its
status code, content type, body schema and headers. A failure prints the ``curl`` line that reproduces it.

``task test`` runs a short deterministic pass; ``task fuzz`` a long randomized one (``FUZZ_MAX_EXAMPLES``,
``FUZZ_RANDOM``).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import PG_HOST, PG_PASSWORD, PG_PORT, PG_USER
from tests.helpers import PASSWORD, bearer
from tests.servers import LiveServer, live_server

# Hypothesis caches constants and Unicode data under ./.hypothesis (from collection on) unless told otherwise.
set_hypothesis_home_dir(os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY") or Path(tempfile.gettempdir()) / "hypothesis")

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "15"))
RANDOM = os.environ.get("FUZZ_RANDOM", "") not in {"", "0"}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# The username of the OpenAPI examples, so generated bodies and paths meet a real account.
SEEDED_USER = "userson"
SUPERUSER = "fuzzadmin"
# Path parameters sometimes take these values instead of random ones, to reach past the lookups.
KNOWN_PATH_VALUES: list[Any] = [SEEDED_USER, SUPERUSER, 1]


@dataclass
class Account:
    """A role's account, recreated whenever fuzzing deleted, renamed or logged it out."""

    username: str
    superuser: bool
    token: str = field(default="", repr=False)


# Methods that change nothing on the server: after a case with one of these, the accounts are as they were.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class FuzzTarget:
    server: LiveServer
    env: dict[str, str]
    http: httpx.Client
    # Whether a case since the last check may have deleted, renamed or logged out an account.
    accounts_changed: bool = True

    def execute(self, statement: str, *args: Any) -> None:
        async def run() -> None:
            connection = await asyncpg.connect(
                host=PG_HOST, port=int(PG_PORT), user=PG_USER, password=PG_PASSWORD, database=self.env["POSTGRES_DB"]
            )
            try:
                await connection.execute(statement, *args)
            finally:
                await connection.close()

        asyncio.run(run())

    def ensure_user(self, username: str, *, superuser: bool = False) -> None:
        """``username`` exists, is active and has its known email and password."""
        if self.http.get(f"/api/v1/user/{username}").status_code == 200:
            return
        email = f"{username}@example.com"
        # Gone, soft-deleted or renamed away: clear whatever still holds the name or the email, then register again.
        self.execute('DELETE FROM "user" WHERE username = $1 OR email = $2', username, email)
        body = {"name": username.title(), "username": username, "email": email, "password": PASSWORD}
        created = self.http.post("/api/v1/user", json=body)
        assert created.status_code == 201, created.text
        if superuser:
            self.execute('UPDATE "user" SET is_superuser = true WHERE username = $1', username)

    def headers_for(self, account: Account | None) -> dict[str, str]:
        """The role's headers; its account (and the seeded user) checked again only after a case that wrote."""
        changed, self.accounts_changed = self.accounts_changed, False
        if changed:
            self.ensure_user(SEEDED_USER)
        if account is None:
            return {}
        if not account.token or (
            changed and self.http.get("/api/v1/user/me", headers=bearer(account.token)).status_code != 200
        ):
            self.ensure_user(account.username, superuser=account.superuser)
            login = self.http.post("/api/v1/login", data={"username": account.username, "password": PASSWORD})
            assert login.status_code == 200, login.text
            account.token = login.json()["access_token"]
        return bearer(account.token)


@pytest.fixture(scope="module")
def fuzz_target(test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    with (
        # Login throttling off: the fuzzer's failed logins (all from 127.0.0.1) would pass the per-address limit and
        # lock out the roles' own logins in headers_for(); tests/test_login_throttle.py covers throttling.
        live_server(
            {**test_env, "LOGIN_THROTTLE_ENABLED": "false"}, tmp_path_factory.mktemp("fuzz"), workers=2
        ) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as http,
    ):
        yield FuzzTarget(server=server, env=test_env, http=http)


@pytest.fixture(scope="module")
def api_schema(fuzz_target: FuzzTarget) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "generation": {"database": "none", "deterministic": not RANDOM, "max-examples": MAX_EXAMPLES},
            "phases": {"stateful": {"enabled": False}},
        }
    )
    schema = schemathesis.openapi.from_url(f"{fuzz_target.server.base_url}/openapi.json", config=config)

    @schema.hook("flatmap_path_parameters")
    def known_path_values(_: schemathesis.HookContext, path_parameters: dict[str, Any]) -> st.SearchStrategy[Any]:
        def variants(value: Any) -> st.SearchStrategy[Any]:
            known = [known for known in KNOWN_PATH_VALUES if type(known) is type(value)]
            return st.sampled_from([value, *known])

        return st.fixed_dictionaries({name: variants(value) for name, value in (path_parameters or {}).items()})

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32 relabels the test per operation through ``node._nodeid``, which pytest 9 no longer has."""
    request.node._nodeid = request.node.nodeid


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=not RANDOM,
    database=None,  # no .hypothesis/ directory in the repository
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


def _call_and_validate(target: FuzzTarget, case: schemathesis.Case, account: Account | None) -> None:
    headers = target.headers_for(account)
    if case.method.upper() not in SAFE_METHODS:
        target.accounts_changed = True
    case.call_and_validate(base_url=target.server.base_url, headers=headers, checks=CHECKS)


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzz_anonymous(case: schemathesis.Case, fuzz_target: FuzzTarget) -> None:
    _call_and_validate(fuzz_target, case, None)


@pytest.fixture
def user() -> Account:
    return Account(SEEDED_USER, superuser=False)


@pytest.fixture
def superuser() -> Account:
    """Its own account: fuzzing may delete or rename it, which must not disturb the other roles."""
    return Account(SUPERUSER, superuser=True)


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzz_user(case: schemathesis.Case, fuzz_target: FuzzTarget, user: Account) -> None:
    _call_and_validate(fuzz_target, case, user)


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzz_superuser(case: schemathesis.Case, fuzz_target: FuzzTarget, superuser: Account) -> None:
    _call_and_validate(fuzz_target, case, superuser)
