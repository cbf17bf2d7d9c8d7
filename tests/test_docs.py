"""API documentation gated by environment (SPEC §8), its self-hosted files, and the security headers."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from litestar.testing import AsyncTestClient

from app.core.settings import Settings, SettingsError
from app.main import create_app
from tests.conftest import MakeUser
from tests.helpers import PASSWORD, bearer

pytestmark = pytest.mark.anyio

DOCS = ["/docs", "/redoc", "/openapi.json", "/schema", "/docs/assets/swagger-ui.css"]
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "oauth2-redirect.html": "text/html; charset=utf-8",
    "oauth2-redirect.js": "text/javascript; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
}
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\ssrc=)[^>]*>(.*?)</script>", re.DOTALL)
LOADED_URL = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


def directives(policy: str) -> dict[str, list[str]]:
    parsed = (directive.split() for directive in policy.split(";") if directive.strip())
    return {name: sources for name, *sources in parsed}


@pytest.mark.parametrize("path", DOCS)
async def test_staging_docs_are_for_superusers_only(
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
        invalid = await client.get(path, headers=bearer("invalid"))
        normal = await client.get(path, headers=bearer(await token("ann")))
        superuser = await client.get(path, headers=bearer(await token("boss")))

    assert (anonymous.status_code, anonymous.json()["detail"]) == (401, "Not authenticated")
    assert (invalid.status_code, invalid.json()["detail"]) == (401, "User not authenticated.")
    assert (normal.status_code, normal.json()["detail"]) == (403, "You do not have enough privileges.")
    assert superuser.status_code == 200
    for response in (anonymous, invalid, normal, superuser):
        assert response.headers["cache-control"] == "no-store"


async def test_staging_still_serves_the_api_publicly(settings_with: Callable[..., Settings]) -> None:
    async with AsyncTestClient(create_app(settings_with(ENVIRONMENT="staging"))) as client:
        assert (await client.get("/api/v1/health")).status_code == 200
        assert (await client.get("/api/v1/users")).status_code == 200


async def test_openapi_declares_the_password_flow_on_protected_routes(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    document = (await client.get("/openapi.json")).json()
    scheme = document["components"]["securitySchemes"]["OAuth2PasswordBearer"]
    assert scheme["type"] == "oauth2"
    assert scheme["flows"]["password"]["tokenUrl"] == "/api/v1/login"
    paths = document["paths"]
    assert paths["/api/v1/user/me"]["get"]["security"] == [{"OAuth2PasswordBearer": []}]
    assert paths["/api/v1/db_user/{username}"]["delete"]["security"] == [{"OAuth2PasswordBearer": []}]
    assert "security" not in paths["/api/v1/users"]["get"]
    assert "security" not in paths["/api/v1/user"]["post"]
    login_body = paths["/api/v1/login"]["post"]["requestBody"]["content"]
    assert set(login_body) == {"application/x-www-form-urlencoded", "multipart/form-data"}
    tags = {tag for path in paths.values() for operation in path.values() for tag in operation.get("tags", [])}
    assert {"login", "users"} <= tags


@pytest.mark.parametrize(("name", "content_type"), ASSETS.items())
async def test_docs_assets_are_served_by_the_app_with_their_content_type(
    client: AsyncTestClient,  # type: ignore[type-arg]
    name: str,
    content_type: str,
) -> None:
    response = await client.get(f"/docs/assets/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["cache-control"] == "max-age=604800, public"
    assert len(response.content) > 100


@pytest.mark.parametrize("name", ["swagger-ui-bundle.js.map", "LICENSE", "..%2F..%2F__init__.py", "app.py"])
async def test_only_the_listed_docs_assets_exist(
    client: AsyncTestClient,  # type: ignore[type-arg]
    name: str,
) -> None:
    response = await client.get(f"/docs/assets/{name}")
    assert response.status_code == 404
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", ["/docs/assets/swagger-ui-bundle.js", "/docs/assets/redoc.standalone.js"])
async def test_docs_assets_are_absent_in_production(settings_with: Callable[..., Settings], path: str) -> None:
    async with AsyncTestClient(create_app(settings_with(ENVIRONMENT="production"))) as client:
        response = await client.get(path)
    assert response.status_code == 404
    assert response.json() == {"status_code": 404, "detail": "Not Found"}


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_local_docs_load_only_the_apps_own_files(
    client: AsyncTestClient,  # type: ignore[type-arg]
    path: str,
) -> None:
    page = (await client.get(path)).text
    loaded = LOADED_URL.findall(page)
    assert loaded
    assert all(url.startswith("/docs/assets/") for url in loaded), loaded
    assert "fonts.googleapis.com" not in page
    for url in loaded:
        assert (await client.get(url)).status_code == 200, url


@pytest.mark.parametrize(("path", "cdn"), [("/docs", "https://cdn.jsdelivr.net/"), ("/redoc", "https://cdn.redoc.ly/")])
async def test_cdn_mode_loads_the_uis_from_the_cdn_the_policy_allows(
    settings_with: Callable[..., Settings], path: str, cdn: str
) -> None:
    async with AsyncTestClient(create_app(settings_with(DOCS_ASSETS="cdn"))) as client:
        response = await client.get(path)
    loaded = LOADED_URL.findall(response.text)
    assert any(url.startswith(cdn) for url in loaded), loaded
    assert "/docs/assets/" not in response.text
    allowed = {
        source for sources in directives(response.headers["content-security-policy"]).values() for source in sources
    }
    for url in loaded:
        origin = urlsplit(url)
        assert f"{origin.scheme}://{origin.netloc}" in allowed, url


def test_an_unknown_docs_assets_mode_fails_startup(test_env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="DOCS_ASSETS"):
        Settings.from_env({**test_env, "DOCS_ASSETS": "unpkg"}, env_file=None)


@pytest.mark.parametrize(
    ("method", "path", "data", "status"),
    [
        ("GET", "/api/v1/health", None, 200),
        ("GET", "/openapi.json", None, 200),
        ("GET", "/api/v1/does-not-exist", None, 404),
        ("DELETE", "/api/v1/health", None, 405),
        ("POST", "/api/v1/login", {"username": "ann"}, 422),
        ("GET", "/docs/assets/swagger-ui.css", None, 200),
    ],
)
async def test_api_responses_carry_the_security_headers_and_the_strict_policy(
    client: AsyncTestClient,  # type: ignore[type-arg]
    method: str,
    path: str,
    data: dict[str, str] | None,
    status: int,
) -> None:
    response = await client.request(method, path, data=data)
    assert response.status_code == status
    assert SECURITY_HEADERS.items() <= response.headers.items()
    assert response.headers.get_list("content-security-policy") == [API_POLICY]


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_pages_allow_exactly_their_inline_script_by_hash(
    client: AsyncTestClient,  # type: ignore[type-arg]
    path: str,
) -> None:
    response = await client.get(path)
    assert SECURITY_HEADERS.items() <= response.headers.items()
    policies = response.headers.get_list("content-security-policy")
    assert len(policies) == 1  # the page's own policy, not overwritten or doubled by the hook
    policy = directives(policies[0])
    scripts = INLINE_SCRIPT.findall(response.text)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert policy["script-src"] == ["'self'", f"'sha256-{digest}'"]
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["connect-src"] == ["'self'"]
