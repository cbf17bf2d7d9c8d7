"""The uniform error body of SPEC §1.3: ``{"status_code", "detail"}`` plus ``extra`` on validation errors."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import msgspec
import structlog
from advanced_alchemy.exceptions import IntegrityError as RepositoryIntegrityError
from advanced_alchemy.exceptions import NotFoundError, RepositoryError
from litestar import MediaType, Request, Response
from litestar.exceptions import ClientException, HTTPException, ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_404_NOT_FOUND,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.utils.scope.state import ScopeState
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app.core.db import caused_by
from app.core.metrics import record_pool_timeout

logger = structlog.get_logger("app.errors")
_FIELD_IN_MESSAGE = re.compile(r"field `([^`]+)`")
# Litestar names a missing query, header or cookie parameter in its message only (with the request's URL).
_MISSING_PARAMETER = re.compile(r"Missing required (query|header|cookie|path) parameter '([^']+)' for path ")

# Fixed texts shared by many routes (SPEC §1.3).
NOT_AUTHENTICATED = "Not authenticated"
USER_NOT_AUTHENTICATED = "User not authenticated."
USER_NOT_FOUND = "User not found"  # every route that names a user, P1 included (SPEC §4.3, §4.4)
NOT_ENOUGH_PRIVILEGES = "You do not have enough privileges."
FORBIDDEN = "Request forbidden -- authorization will not help"
RATE_LIMIT_EXCEEDED = "Rate limit exceeded."
NOT_FOUND = "Not Found"
UNPROCESSABLE = "Unprocessable Entity"
INTERNAL_SERVER_ERROR = "Internal Server Error"
SERVICE_UNAVAILABLE = "Service Unavailable"

# A dependency that does not answer is an outage (503), not a bug (500). They are matched anywhere in the cause
# chain: advanced-alchemy re-raises driver errors as its own types (a connection killed under a query has come
# back as its IntegrityError), so the driver's own error is often only visible there.
UNAVAILABLE_ERRORS = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    ConnectionError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # e.g. the server closed the connection (ConnectionDoesNotExistError)
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # "cannot switch to state …": a connection broken mid-operation
    # SQLSTATE class 53: the server refuses the work, e.g. too many connections (max_connections, a role's limit).
    asyncpg.exceptions.InsufficientResourcesError,
    # Class 57: the server is shutting down or starting (admin_shutdown, cannot_connect_now), or cancelled a statement.
    asyncpg.exceptions.OperatorInterventionError,
)


def error_response(
    status_code: int, detail: str, *, extra: Any = None, headers: dict[str, str] | None = None
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"status_code": status_code, "detail": detail}
    if extra is not None:
        body["extra"] = extra
    return Response(body, status_code=status_code, headers=headers, media_type=MediaType.JSON)


def validation_failed(request: Request[Any, Any, Any], extra: list[dict[str, Any]]) -> ValidationException:
    return ValidationException(f"Validation failed for {request.method} {request.url.path}", extra=extra)


def field_named_in(message: str) -> str | None:
    """The field of msgspec's "missing required field `x`" / "unknown field `x`" messages."""
    named = _FIELD_IN_MESSAGE.search(message)
    return named.group(1) if named else None


def _name_body_fields(extra: Any) -> Any:
    """msgspec reports a missing or unknown body field under the key ``data``; name the field instead."""
    if isinstance(extra, list):
        for item in extra:
            if isinstance(item, dict) and item.get("key") == "data":
                item["key"] = field_named_in(str(item.get("message", ""))) or "body"
    return extra


def _with_every_body_field(request: Request[Any, Any, Any], extra: Any) -> Any:
    """msgspec stops at the first invalid field of a body; list every invalid field of a JSON body Struct instead."""
    if not isinstance(extra, list) or not any(
        isinstance(item, dict) and item.get("source") == "body" for item in extra
    ):
        return extra
    data = request.route_handler.parsed_fn_signature.parameters.get("data")
    body = ScopeState.from_scope(request.scope).json  # the body as decoded for the handler, if it was JSON
    if data is None or not data.is_subclass_of(msgspec.Struct) or not isinstance(body, dict):
        return extra
    errors = body_field_errors(data.annotation, body)
    others = [item for item in extra if not _is_body_error(item)]
    return [*others, *errors] if errors else extra


def body_field_errors(schema: type[msgspec.Struct], body: dict[str, Any]) -> list[dict[str, str]]:
    """Each field of ``body`` validated on its own against ``schema``: missing, invalid and unknown fields."""
    errors = []
    fields = msgspec.structs.fields(schema)
    for field in fields:
        if field.encode_name not in body:
            if field.required:
                errors.append(_body_error(f"Object missing required field `{field.encode_name}`", field.encode_name))
            continue
        try:
            msgspec.convert(body[field.encode_name], field.type, strict=False)
        except msgspec.ValidationError as invalid:
            errors.append(_body_error(str(invalid).split(" - ", maxsplit=1)[0], field.encode_name))
    if schema.__struct_config__.forbid_unknown_fields:
        known = {field.encode_name for field in fields}
        errors.extend(_body_error(f"Object contains unknown field `{key}`", key) for key in body if key not in known)
    return errors


def _is_body_error(item: Any) -> bool:
    return isinstance(item, dict) and item.get("source") == "body"


def _body_error(message: str, key: str) -> dict[str, str]:
    return {"message": message, "key": key, "source": "body"}


def exception_to_response(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """The single exception handler of the app: every error leaves through here, never with a traceback."""
    if isinstance(exc, ServerError):
        logger.error("server error", detail=exc.detail, path=request.url.path, method=request.method)
        return error_response(HTTP_500_INTERNAL_SERVER_ERROR, exc.detail)
    if isinstance(exc, HTTPException) and exc.status_code != HTTP_500_INTERNAL_SERVER_ERROR:
        return _http_error_response(request, exc)
    if caused_by(exc, UNAVAILABLE_ERRORS):
        logger.error("dependency unavailable", error=type(exc).__name__, path=request.url.path)
        if caused_by(exc, PoolTimeoutError):
            record_pool_timeout()
        return error_response(HTTP_503_SERVICE_UNAVAILABLE, SERVICE_UNAVAILABLE, headers={"Retry-After": "5"})
    if isinstance(exc, RepositoryError) and (response := _repository_error_response(exc)) is not None:
        return response
    logger.error("unhandled error", exc_info=exc, path=request.url.path, method=request.method)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, INTERNAL_SERVER_ERROR)


def _http_error_response(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    if isinstance(exc, ValidationException):
        # SPEC §1.3: validation errors are 422 (Litestar's default is 400) and keep the per-field list in `extra`.
        exc = _missing_parameter(request, exc) or exc
        extra = _with_every_body_field(request, _name_body_fields(exc.extra or []))
        return error_response(HTTP_422_UNPROCESSABLE_ENTITY, exc.detail, extra=extra, headers=exc.headers)
    if exc.status_code == HTTP_400_BAD_REQUEST:
        # Litestar's other 400s are unparseable requests (malformed JSON, broken multipart): validation errors too.
        extra = [{"message": exc.detail, "key": "body", "source": "body"}]
        return _http_error_response(request, validation_failed(request, extra))
    headers = dict(exc.headers or {})
    if exc.status_code == HTTP_401_UNAUTHORIZED:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return error_response(exc.status_code, exc.detail, headers=headers)


def _missing_parameter(request: Request[Any, Any, Any], exc: ValidationException) -> ValidationException | None:
    """A required parameter that is absent, as SPEC §1.3 reports it: the uniform detail and the field in ``extra``."""
    missing = _MISSING_PARAMETER.match(exc.detail)
    if missing is None or exc.extra:
        return None
    source, key = missing.groups()
    extra = [{"message": f"Missing required {source} parameter", "key": key, "source": source}]
    return validation_failed(request, extra)


def _repository_error_response(exc: RepositoryError) -> Response[dict[str, Any]] | None:
    """advanced-alchemy's own errors: a missing row is the route's 404 and a conflict its 422.

    Their texts come from each repository's ``error_messages`` (e.g. ``{"not_found": "User not found"}``),
    so ``service.get(id)`` on a missing row can never answer 500.
    """
    if isinstance(exc, NotFoundError):
        return error_response(HTTP_404_NOT_FOUND, exc.detail or NOT_FOUND)
    if isinstance(exc, RepositoryIntegrityError):  # DuplicateKeyError and ForeignKeyError included
        return error_response(HTTP_422_UNPROCESSABLE_ENTITY, exc.detail or UNPROCESSABLE)
    return None


class AppRequest(Request[Any, Any, Any]):
    """The app's request class: a JSON body nested deeper than the decoder allows is a 422 like any other
    undecodable body (SPEC §1.7), not a ``RecursionError`` 500."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise ClientException("JSON body is nested too deeply") from None


class ServerError(HTTPException):
    """A 500 whose ``detail`` the spec fixes (K1's ``Failed to create task``); any other 500 is only
    ``Internal Server Error``, since its text may describe internals."""

    status_code = HTTP_500_INTERNAL_SERVER_ERROR


class UnprocessableError(ClientException):
    """A 422 raised by a business rule (duplicate email, taken name…): no ``extra`` key, unlike validation errors."""

    status_code = HTTP_422_UNPROCESSABLE_ENTITY
