"""API documentation gated by environment (SPEC §8)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from litestar.testing import AsyncTestClient

from app.core.settings import Settings
from app.main import create_app
from tests.conftest import MakeUser
from tests.helpers import PASSWORD, bearer

pytestmark = pytest.mark.anyio

DOCS = ["/docs", "/redoc", "/openapi.json", "/schema"]


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
