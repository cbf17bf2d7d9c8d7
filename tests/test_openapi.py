"""The OpenAPI document describes every error a route answers (SPEC §1.3), derived from the route handlers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from app.core.guards import requires_superuser

pytestmark = pytest.mark.anyio

ERROR_KEYS = {"status_code", "detail"}


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in {"get", "put", "post", "delete", "options", "head", "patch", "trace"}:
                yield method.upper(), path, operation


def superuser_operations(app: Litestar) -> set[tuple[str, str]]:
    found = set()
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for method, (handler, _) in route.route_handler_map.items():
            if handler.resolve_include_in_schema() and any(
                requires_superuser in (layer.guards or []) for layer in handler.ownership_layers
            ):
                found.add((method, route.path_format))
    return found


def error_schema(operation: dict[str, Any], status: str) -> dict[str, Any]:
    schema: dict[str, Any] = operation["responses"][status]["content"]["application/json"]["schema"]
    return schema


@pytest.fixture
async def document(client: AsyncTestClient[Litestar]) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_schema_routes_serve_the_same_document(
    client: AsyncTestClient[Litestar], document: dict[str, Any]
) -> None:
    assert (await client.get("/schema/openapi.json")).json() == document
    assert not [path for path in document["paths"] if path.startswith("/schema")]


async def test_no_operation_documents_400(document: dict[str, Any]) -> None:
    assert [(method, path) for method, path, operation in operations(document) if "400" in operation["responses"]] == []


async def test_operations_with_input_document_422_with_extra(document: dict[str, Any]) -> None:
    with_input = [(m, p, op) for m, p, op in operations(document) if op.get("parameters") or op.get("requestBody")]
    assert with_input
    for method, path, operation in with_input:
        assert "422" in operation["responses"], (method, path)
        schema = error_schema(operation, "422")
        assert set(schema["required"]) >= ERROR_KEYS, (method, path)
        item = schema["properties"]["extra"]["items"]
        assert set(item["required"]) == {"message", "key", "source"}, (method, path)


async def test_non_public_operations_document_401(app: Litestar, document: dict[str, Any]) -> None:
    protected = [(m, p, op) for m, p, op in operations(document) if op.get("security")]
    assert protected
    for method, path, operation in protected:
        assert "401" in operation["responses"], (method, path)
        assert "extra" not in error_schema(operation, "401")["properties"]
    # The auth routes check tokens themselves (SPEC §4.2) and document their 401 too.
    for path in ("/api/v1/login", "/api/v1/refresh", "/api/v1/logout", "/api/auth/refresh"):
        assert "401" in document["paths"][path]["post"]["responses"], path


async def test_superuser_operations_document_403(app: Litestar, document: dict[str, Any]) -> None:
    expected = superuser_operations(app)
    assert ("DELETE", "/api/v1/db_user/{username}") in expected
    for method, path in expected:
        assert "403" in document["paths"][path][method.lower()]["responses"], (method, path)


async def test_owner_operations_document_403(document: dict[str, Any]) -> None:
    for method in ("patch", "delete"):
        assert "403" in document["paths"]["/api/v1/user/{username}"][method]["responses"], method
    assert "403" not in document["paths"]["/api/v1/user/{username}"]["get"]["responses"]


async def test_error_bodies_follow_the_uniform_shape(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        for status in operation["responses"]:
            if int(status) >= 400:
                schema = error_schema(operation, status)
                assert set(schema["required"]) == ERROR_KEYS, (method, path, status)
                assert schema["additionalProperties"] is False, (method, path, status)


async def test_lookups_document_404_and_bodies_413(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        responses = operation["responses"]
        if "{" in path:
            assert "404" in responses, (method, path)
        if "requestBody" in operation:
            assert "413" in responses, (method, path)


async def test_delete_answers_200_with_a_body(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        if method == "DELETE":
            assert "204" not in operation["responses"], path
            assert "application/json" in operation["responses"]["200"]["content"], path


async def test_bodies_that_refuse_unknown_fields_document_additional_properties_false(
    document: dict[str, Any],
) -> None:
    """A body that answers 422 to an unknown field says so (``additionalProperties: false``); one that ignores unknown
    fields (SPEC: T1, T2, R3, U8) says nothing."""
    schemas = document["components"]["schemas"]
    strict = {name for name, schema in schemas.items() if schema.get("additionalProperties") is False}
    assert strict == {"UserCreate", "UserUpdate", "PostCreate", "PostUpdate", "RateLimitCreate"}
    for lenient in ("TierCreate", "TierUpdate", "RateLimitUpdate", "UserTierUpdate"):
        assert "additionalProperties" not in schemas[lenient]
        assert schemas[lenient]["type"] == "object"
