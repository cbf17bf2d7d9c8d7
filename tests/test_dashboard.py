"""SAQ's web dashboard at /saq, gated exactly like the docs (SPEC §8): public in local, superusers only in staging,
absent in production; its page runs under its own CSP from files the app serves itself."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from app.core.queue import DASHBOARD_SCRIPT
from app.core.settings import Settings
from app.main import create_app
from tests.conftest import MakeUser, StartServer
from tests.helpers import PASSWORD, bearer
from tests.test_docs_browser import CHROMIUM, render

pytestmark = pytest.mark.anyio

# The page, its JSON API (queue list and one queue) and one of its files.
DASHBOARD = ["/saq", "/saq/api/queues", "/saq/api/queues/default", "/saq/static/app.js"]
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\ssrc=)[^>]*>(.*?)</script>", re.DOTALL)


async def test_local_dashboard_is_public(settings_with: Callable[..., Settings]) -> None:
    async with AsyncTestClient(create_app(settings_with(ENVIRONMENT="local"))) as client:
        responses = {path: await client.get(path) for path in DASHBOARD}

    assert {path: response.status_code for path, response in responses.items()} == dict.fromkeys(DASHBOARD, 200)
    queues = responses["/saq/api/queues"].json()["queues"]
    assert [queue["name"] for queue in queues] == ["default"]
    page = responses["/saq"]
    # The one inline script is the one the page's policy allows by hash; everything else comes from /saq/static.
    assert INLINE_SCRIPT.findall(page.text) == [DASHBOARD_SCRIPT]
    policy = page.headers["content-security-policy"]
    assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    assert re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) == [
        "/saq/static/pico.min.css.gz",
        "/saq/static/snabbdom.js.gz",
        "/saq/static/app.js",
    ]


@pytest.mark.parametrize("path", DASHBOARD)
async def test_staging_dashboard_is_for_superusers_only(
    settings_with: Callable[..., Settings], make_user: MakeUser, path: str
) -> None:
    await make_user("boss", superuser=True)
    await make_user("ann")
    async with AsyncTestClient(create_app(settings_with(ENVIRONMENT="staging"))) as client:

        async def token(username: str) -> str:
            response = await client.post("/api/v1/login", data={"username": username, "password": PASSWORD})
            access: str = response.json()["access_token"]
            return access

        anonymous = await client.get(path)
        normal = await client.get(path, headers=bearer(await token("ann")))
        superuser = await client.get(path, headers=bearer(await token("boss")))

    assert (anonymous.status_code, anonymous.json()["detail"]) == (401, "Not authenticated")
    assert (normal.status_code, normal.json()["detail"]) == (403, "You do not have enough privileges.")
    assert superuser.status_code == 200
    for response in (anonymous, normal, superuser):
        assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", DASHBOARD)
async def test_production_has_no_dashboard(
    settings_with: Callable[..., Settings], make_user: MakeUser, path: str
) -> None:
    await make_user("boss", superuser=True)
    async with AsyncTestClient(create_app(settings_with(ENVIRONMENT="production"))) as client:
        login = await client.post("/api/v1/login", data={"username": "boss", "password": PASSWORD})
        anonymous = await client.get(path)
        superuser = await client.get(path, headers=bearer(login.json()["access_token"]))

    for response in (anonymous, superuser):
        assert (response.status_code, response.json()["detail"]) == (404, "Not Found")


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
def test_dashboard_renders_its_queue_under_its_csp(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(workers=1)

    # Its client-side router draws the queue list at /saq/ (at /saq it draws its own "404 not found").
    page, violations = render(f"{server.base_url}/saq/", tmp_path / "profile")

    # The page fetched /saq/api/queues and drew the queue's row, linked to the queue's page.
    assert 'href="/saq/queues/default"' in page
    assert violations == []
