"""The OpenAPI document (SPEC §8): gated by environment, and describing every error a route can answer (§1.3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import MediaType, Router
from litestar._openapi.schema_generation import SchemaCreator
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar._openapi.utils import default_operation_id_creator
from litestar.datastructures import CacheControlHeader
from litestar.enums import HttpMethod, ParamType
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    Contact,
    License,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    Schema,
)
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
)
from litestar.types import Guard, Method
from litestar.types.internal_types import PathParameterDefinition
from litestar.typing import FieldDefinition

from app.core.errors import FORBIDDEN, NOT_ENOUGH_PRIVILEGES
from app.core.guards import requires_superuser
from app.core.rate_limit import rate_limit
from app.core.settings import Settings

EXCLUDE_FROM_AUTH = "exclude_from_auth"


@dataclass(frozen=True, slots=True)
class DocsAccess:
    """Who may read the docs: everyone (local) or superusers (staging); production has no docs at all."""

    guards: Sequence[Guard]
    opt: dict[str, Any]
    cache_control: CacheControlHeader | None


def docs_gate(settings: Settings) -> DocsAccess | None:
    if settings.is_production:
        return None
    if settings.app.environment == "staging":
        # SPEC §8: a superuser's bearer token; every docs response is `no-store`.
        return DocsAccess(guards=[requires_superuser], opt={}, cache_control=CacheControlHeader(no_store=True))
    return DocsAccess(guards=[], opt={EXCLUDE_FROM_AUTH: True}, cache_control=None)


def openapi_config(settings: Settings, access: DocsAccess | None, *, components: Components) -> OpenAPIConfig | None:
    """``None`` in production: no schema and no docs routes at all, so they answer 404."""
    if access is None:
        return None
    app = settings.app
    return OpenAPIConfig(
        title=app.name,
        version=app.version,
        description=app.description,
        contact=Contact(name=app.contact_name, email=app.contact_email)
        if app.contact_name or app.contact_email
        else None,
        license=License(name=app.license_name) if app.license_name else None,
        components=components,
        use_handler_docstrings=True,
        operation_id_creator=operation_id,
        # Litestar's own /schema routes (allowed by SPEC §8) follow the same gate as /docs.
        openapi_router=Router(
            "/schema",
            route_handlers=[],
            include_in_schema=False,  # SPEC §8: the docs routes are not in the document
            guards=list(access.guards),
            opt=access.opt,
            cache_control=access.cache_control,
        ),
        render_plugins=[JsonRenderPlugin(), SwaggerRenderPlugin(), RedocRenderPlugin()],
    )


# SPEC §1.3: the uniform error body; `extra` only on validation errors (and business-rule 422s omit it).
_ERROR_FIELDS: dict[str, Schema | Reference] = {
    "status_code": Schema(type=OpenAPIType.INTEGER),
    "detail": Schema(type=OpenAPIType.STRING),
}
ERROR_BODY = Schema(
    type=OpenAPIType.OBJECT, required=["status_code", "detail"], properties=_ERROR_FIELDS, additional_properties=False
)
VALIDATION_ERROR_BODY = Schema(
    type=OpenAPIType.OBJECT,
    required=["status_code", "detail"],
    properties={
        **_ERROR_FIELDS,
        "extra": Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(
                type=OpenAPIType.OBJECT,
                required=["message", "key", "source"],
                properties={
                    "message": Schema(type=OpenAPIType.STRING),
                    "key": Schema(type=OpenAPIType.STRING),
                    "source": Schema(type=OpenAPIType.STRING, enum=["body", "query", "path", "header", "cookie"]),
                },
            ),
        ),
    },
    additional_properties=False,
)
_HEADER = Schema(type=OpenAPIType.STRING)
# The headers each error status carries (SPEC §1.3, §5.6); documented, not required, as the spec says MAY for some.
_ERROR_HEADERS: dict[int, dict[str, OpenAPIHeader | Reference]] = {
    HTTP_401_UNAUTHORIZED: {"WWW-Authenticate": OpenAPIHeader(schema=_HEADER, description="`Bearer`")},
    HTTP_429_TOO_MANY_REQUESTS: {
        name: OpenAPIHeader(schema=_HEADER)
        for name in ("Retry-After", "RateLimit-Policy", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
    },
}
_ERROR_DESCRIPTIONS = {
    HTTP_401_UNAUTHORIZED: "Missing, invalid or revoked token",
    HTTP_403_FORBIDDEN: "Not allowed for this caller",
    HTTP_404_NOT_FOUND: "Not found",
    HTTP_413_REQUEST_ENTITY_TOO_LARGE: "Request body too large",
    HTTP_422_UNPROCESSABLE_ENTITY: "Validation failed, or a business rule rejected the request",
    HTTP_429_TOO_MANY_REQUESTS: "Rate limit exceeded",
}
OWNER_PATH_PARAMETER = "username"
RATE_LIMITED_OPT = "rate_limited"
"""``opt`` key that documents a 429 for a route; a route with the ``rate_limit`` guard is documented without it."""


def error_statuses(handler: HTTPRouteHandler, operation: Operation) -> set[int]:
    """What a route can answer besides its success, derived from how it is declared (SPEC §1.3, §4.1).

    A handler adds a status of its own with Litestar's ``raises=[SomeHTTPException]`` (e.g. an owner check's 403).
    """
    parameters = [p for p in operation.parameters or [] if isinstance(p, Parameter)]
    # Any status a handler `raises` (e.g. the tasks routes' 503), but 500: no route documents that one.
    statuses = {exc.status_code for exc in handler.raises or [] if exc.status_code != HTTP_500_INTERNAL_SERVER_ERROR}
    if not handler.opt.get(EXCLUDE_FROM_AUTH):
        statuses.add(HTTP_401_UNAUTHORIZED)
    if forbidden_details(handler, operation):
        statuses.add(HTTP_403_FORBIDDEN)
    if any(p.param_in == ParamType.PATH for p in parameters):
        statuses.add(HTTP_404_NOT_FOUND)
    if operation.request_body is not None:
        statuses.add(HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if parameters or operation.request_body is not None:
        statuses.add(HTTP_422_UNPROCESSABLE_ENTITY)
    if handler.opt.get(RATE_LIMITED_OPT) or any(
        rate_limit in (layer.guards or []) for layer in handler.ownership_layers
    ):
        statuses.add(HTTP_429_TOO_MANY_REQUESTS)
    # Litestar documents validation failures as 400; this app answers them with 422 (core/errors.py).
    statuses.discard(HTTP_400_BAD_REQUEST)
    return statuses


def forbidden_details(handler: HTTPRouteHandler, operation: Operation) -> list[str]:
    """The ``detail`` of each 403 the route's authorisation level implies (SPEC §1.2, §1.3), so that clients and
    tests can tell a superuser route from an owner route by the document alone.

    The levels exclude each other: a superuser route grants no owner rights, so it has no owner check either.
    """
    # `resolve_guards()` wraps each guard; the layers hold them as declared.
    if any(requires_superuser in (layer.guards or []) for layer in handler.ownership_layers):
        return [NOT_ENOUGH_PRIVILEGES]
    authenticated = not handler.opt.get(EXCLUDE_FROM_AUTH)
    parameters = [p for p in operation.parameters or [] if isinstance(p, Parameter)]
    path_parameters = {p.name for p in parameters if p.param_in == ParamType.PATH}
    # SPEC §1.2: an authenticated route on someone's `{username}` is an owner route.
    if authenticated and OWNER_PATH_PARAMETER in path_parameters:
        return [FORBIDDEN]
    return []


def error_response(status: int, details: Sequence[str] = ()) -> OpenAPIResponse:
    """``details``: the only ``detail`` values this response can carry, when the route's declaration fixes them."""
    body = VALIDATION_ERROR_BODY if status == HTTP_422_UNPROCESSABLE_ENTITY else ERROR_BODY
    description = _ERROR_DESCRIPTIONS.get(status) or HTTPStatus(status).phrase
    if details:
        body = Schema(
            type=OpenAPIType.OBJECT,
            required=body.required,
            properties={**_ERROR_FIELDS, "detail": Schema(type=OpenAPIType.STRING, enum=list(details))},
            additional_properties=False,
        )
        description = f"{description}: " + " or ".join(f"`{detail}`" for detail in details)
    return OpenAPIResponse(
        description=description,
        content={MediaType.JSON: OpenAPIMediaType(schema=body)},
        headers=_ERROR_HEADERS.get(status),
    )


class _DocumentsErrors:
    """Marks an operation class already extended by ``_documenting``."""


def _documenting(handler: HTTPRouteHandler) -> type[Operation]:
    """The handler's operation class, building its error responses from the finished operation.

    It runs after the class's own ``__post_init__`` so a custom operation (the login form) is seen complete.
    """
    base = handler.operation_class

    @dataclass
    class DocumentedOperation(base, _DocumentsErrors):  # type: ignore[misc,valid-type]
        def __post_init__(self) -> None:
            if hasattr(base, "__post_init__"):
                base.__post_init__(self)
            document_errors(handler, self)

    return DocumentedOperation


def document_errors(handler: HTTPRouteHandler, operation: Operation) -> None:
    """Litestar's own error responses (its 400, ``raises=``) are rebuilt with the app's body; a handler's explicit
    ``responses=`` entry is kept as written."""
    explicit = {str(code) for code in handler.responses or {}}
    responses = {
        code: response
        for code, response in (operation.responses or {}).items()
        if int(code) < HTTP_400_BAD_REQUEST or code in explicit
    }
    # A 403 a handler `raises` itself may carry another detail; then the 403's detail is left open.
    raises_403 = any(exc.status_code == HTTP_403_FORBIDDEN for exc in handler.raises or [])
    forbidden = [] if raises_403 else forbidden_details(handler, operation)
    for status in sorted(error_statuses(handler, operation)):
        responses.setdefault(str(status), error_response(status, forbidden if status == HTTP_403_FORBIDDEN else ()))
    operation.responses = responses


def operation_id(
    handler: HTTPRouteHandler, method: Method | HttpMethod, path: list[str | PathParameterDefinition]
) -> str:
    """Litestar's operation id, and the hook that documents each operation's errors.

    ``operation_id_creator`` is the only per-operation hook of ``OpenAPIConfig`` that sees the handler, and it runs
    just before Litestar builds the operation, so a new route is documented without any boilerplate.
    """
    if not issubclass(handler.operation_class, _DocumentsErrors):
        handler.operation_class = _documenting(handler)
    return default_operation_id_creator(handler, method, path)


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """msgspec Structs documented as Litestar documents them, plus ``additionalProperties: false`` for the bodies
    that refuse unknown fields (``forbid_unknown_fields=True``: 422, SPEC §1.3), so the document and the clients
    generated from it say what the API does. Registered as an app plugin, it comes before Litestar's own (which it
    extends; Litestar exports it from a private module only)."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        struct: type[msgspec.Struct] = field_definition.type_
        if struct.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        return schema
