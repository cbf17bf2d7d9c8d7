from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

from app.core.errors import field_named_in, validation_failed


class LoginForm(msgspec.Struct):
    """OAuth2 password-grant form (SPEC §4.2 A1); ``username`` may be a username or an email."""

    username: str
    password: str
    grant_type: Literal["password"] | None = None
    scope: str = ""
    client_id: str | None = None
    client_secret: str | None = None


class AccessToken(msgspec.Struct):
    access_token: str
    token_type: str = "bearer"


_FORM_ENCODINGS = frozenset({RequestEncodingType.URL_ENCODED, RequestEncodingType.MULTI_PART})


async def read_login_form(request: Request[Any, Any, Any]) -> LoginForm:
    """SPEC §4.2 A1 accepts both form encodings; Litestar's body parameters bind only one, so parse it here."""
    if request.content_type[0] not in _FORM_ENCODINGS:
        # A JSON body would otherwise read as an empty form: "username is missing" would mislead.
        message = "Send the login as a form (application/x-www-form-urlencoded or multipart/form-data)"
        raise validation_failed(request, [{"message": message, "key": "body", "source": "body"}])
    form = await request.form()
    try:
        return msgspec.convert(dict(form.items()), LoginForm, strict=False)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$.")
        key = path.rstrip("`") or field_named_in(message) or "body"
        raise validation_failed(request, [{"message": message, "key": key, "source": "body"}]) from None


_FORM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["username", "password"],
    properties={
        "username": Schema(type=OpenAPIType.STRING, description="A username or an email."),
        "password": Schema(type=OpenAPIType.STRING),
        "grant_type": Schema(type=OpenAPIType.STRING, enum=["password"]),
        "scope": Schema(type=OpenAPIType.STRING),
        "client_id": Schema(type=OpenAPIType.STRING),
        "client_secret": Schema(type=OpenAPIType.STRING),
    },
)


@dataclass
class LoginOperation(Operation):
    """Documents the form body that ``read_login_form`` parses."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            content={
                RequestEncodingType.URL_ENCODED: OpenAPIMediaType(schema=_FORM_SCHEMA),
                RequestEncodingType.MULTI_PART: OpenAPIMediaType(schema=_FORM_SCHEMA),
            },
        )
