from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from app.core.settings import Settings
from app.main import create_app

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/health/"])
async def test_health_answers_with_app_info_and_no_store(client: AsyncTestClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.json() == {"name": "Litestar app", "version": "0.1.0", "description": None}
    assert response.headers["cache-control"] == "no-store"


async def test_health_reports_configured_name_version_and_description(
    settings_with: Callable[..., Settings],
) -> None:
    settings = settings_with(APP_NAME="Shop", APP_VERSION="2.1", APP_DESCRIPTION="Shop API")
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/api/v1/health")
    assert response.json() == {"name": "Shop", "version": "2.1", "description": "Shop API"}


async def test_unknown_route_is_404_with_the_error_body(client: AsyncTestClient) -> None:
    response = await client.get("/api/v1/does-not-exist")
    assert response.status_code == 404
    assert response.json() == {"status_code": 404, "detail": "Not Found"}
    assert response.headers["cache-control"] == "no-store"


async def test_wrong_method_is_405_with_the_error_body(client: AsyncTestClient) -> None:
    response = await client.delete("/api/v1/health")
    assert response.status_code == 405
    assert response.json() == {"status_code": 405, "detail": "Method Not Allowed"}


async def test_successful_responses_are_public_unless_a_token_was_sent(client: AsyncTestClient) -> None:
    anonymous = await client.get("/openapi.json")
    assert anonymous.headers["cache-control"] == "public, max-age=30"
    assert "Authorization" in anonymous.headers["vary"]
    with_token = await client.get("/openapi.json", headers={"Authorization": "Bearer whatever"})
    assert with_token.headers["cache-control"] == "private, max-age=30"


async def test_answers_to_writes_are_never_stored(client: AsyncTestClient) -> None:
    """SPEC §7 (amended): a successful non-GET answer, e.g. the 201 of a registration, is ``no-store``."""
    body = {"name": "Ann Smith", "username": "ann", "email": "ann@example.com", "password": "password1"}
    response = await client.post("/api/v1/user", json=body)
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    assert (await client.get("/api/v1/users")).headers["cache-control"] == "public, max-age=30"


async def test_client_cache_max_age_zero(settings_with: Callable[..., Settings]) -> None:
    async with AsyncTestClient(create_app(settings_with(CLIENT_CACHE_MAX_AGE="0"))) as client:
        response = await client.get("/openapi.json")
    assert response.headers["cache-control"] == "public, max-age=0"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
async def test_docs_are_public_in_local(client: AsyncTestClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200


async def test_openapi_document_uses_the_app_settings(settings_with: Callable[..., Settings]) -> None:
    settings = settings_with(
        APP_NAME="Shop",
        APP_VERSION="2.1",
        APP_DESCRIPTION="Shop API",
        CONTACT_NAME="Ann",
        CONTACT_EMAIL="ann@example.com",
        LICENSE="MIT",
    )
    async with AsyncTestClient(create_app(settings)) as client:
        document = (await client.get("/openapi.json")).json()
        swagger = (await client.get("/docs")).text
    assert document["info"] == {
        "title": "Shop",
        "version": "2.1",
        "description": "Shop API",
        "contact": {"name": "Ann", "email": "ann@example.com"},
        "license": {"name": "MIT"},
    }
    assert "/api/v1/health" in document["paths"]
    assert not any(path in document["paths"] for path in ("/docs", "/redoc", "/openapi.json"))
    assert "<title>Shop</title>" in swagger


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/schema", "/schema/openapi.json"])
async def test_docs_are_absent_in_production(settings_with: Callable[..., Settings], path: str) -> None:
    async with AsyncTestClient(create_app(settings_with(ENVIRONMENT="production"))) as client:
        response = await client.get(path)
    assert response.status_code == 404
    assert response.json() == {"status_code": 404, "detail": "Not Found"}


async def test_every_request_is_logged_once_as_json(client: AsyncTestClient, settings: Settings) -> None:
    log_file = settings.log.file_path
    assert isinstance(log_file, Path)
    await client.get("/api/v1/health?probe=access-log")
    await client.get("/api/v1/missing-for-access-log")
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    access = [event for event in events if event.get("logger") == "app.access"]
    health = [event for event in access if event["path"] == "/api/v1/health"]
    missing = [event for event in access if event["path"] == "/api/v1/missing-for-access-log"]
    assert len(missing) == 1
    assert missing[0]["status_code"] == 404
    assert health
    assert {"method", "path", "status_code", "duration_ms", "client", "timestamp", "level"} <= health[-1].keys()
    assert health[-1]["timestamp"].endswith("Z")


async def test_an_unreachable_database_answers_503_quickly(settings_with: Callable[..., Settings]) -> None:
    settings = settings_with(POSTGRES_PORT="1", DB__CONNECT_TIMEOUT="2")
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/api/v1/users")
    assert response.status_code == 503
    assert response.json() == {"status_code": 503, "detail": "Service Unavailable"}
    assert response.headers["retry-after"] == "5"


async def test_oversized_bodies_are_refused_with_413(client: AsyncTestClient) -> None:
    response = await client.post(
        "/api/v1/user", content=b"{" + b" " * (2 * 1024 * 1024) + b"}", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"status_code": 413, "detail": "Request Entity Too Large"}


async def test_requests_recover_after_database_connections_are_killed(
    client: AsyncTestClient, settings: Settings
) -> None:
    assert (await client.get("/api/v1/users")).status_code == 200
    connection = await asyncpg.connect(
        host=settings.db.server, port=settings.db.port, user=settings.db.user, database=settings.db.name
    )
    try:
        killed = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    assert killed >= 1
    first = await client.get("/api/v1/users")  # may land on a dead pooled connection
    assert first.status_code in {200, 503}
    assert (await client.get("/api/v1/users")).status_code == 200
