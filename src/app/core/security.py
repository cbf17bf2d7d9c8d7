"""JWT authentication (SPEC §3): RS256 by default, Litestar's ``JWTAuth`` with a bearer-only middleware.

A token is accepted as type *T* when (§3.5) its signature verifies under the one configured algorithm,
``exp`` is in the future, ``sub``, ``uid`` and ``jti`` are present, its type claim equals *T*, neither its
``jti`` nor its refresh family (``fid``) is blacklisted, and its user exists, is not soft-deleted and has
the id ``uid``. The signature and claim checks live here, done once per token string (``token_cache``); the
blacklist and user checks are one query supplied by the auth feature (``load_user``), run on every request.

Every rejection is logged at INFO on ``app.auth`` as ``token rejected`` with a ``reason`` (``missing``, ``expired``,
``bad signature``, ``not yet valid``, ``malformed``, ``wrong type``, ``revoked``, ``unknown user``), never the token,
and counted by kind and reason (``litestar_tokens_rejected_total``: ``revoked`` is a blacklist hit).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Self
from uuid import uuid4

import jwt
import structlog
from litestar.connection import ASGIConnection
from litestar.exceptions import ImproperlyConfiguredException, NotAuthorizedException
from litestar.middleware import DefineMiddleware
from litestar.middleware.authentication import AuthenticationResult
from litestar.openapi.spec import Components, OAuthFlow, OAuthFlows, SecurityRequirement, SecurityScheme
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token

from app.core.errors import NOT_AUTHENTICATED, USER_NOT_AUTHENTICATED
from app.core.fields import is_db_id, storable
from app.core.keys import SigningKeys
from app.core.logging import USER_ID_STATE_KEY
from app.core.metrics import record_token_rejected
from app.core.settings import JWTSettings
from app.core.token_cache import VerifiedTokens

TokenKind = Literal["access", "refresh"]

logger = structlog.get_logger("app.auth")

SECURITY_SCHEME = "OAuth2PasswordBearer"
# Marks user/owner/superuser routes in the OpenAPI document, so Swagger's "Authorize" applies to them.
BEARER: list[SecurityRequirement] = [{SECURITY_SCHEME: []}]
OPENAPI_COMPONENTS = Components(
    security_schemes={
        SECURITY_SCHEME: SecurityScheme(
            type="oauth2",
            description="Log in at /api/v1/login (username or email) and send `Authorization: Bearer <token>`.",
            flows=OAuthFlows(password=OAuthFlow(token_url="/api/v1/login", scopes={})),
        )
    }
)


class TokenRejected(NotAuthorizedException):
    """The 401 of an invalid token (``User not authenticated.``), with the reason that is logged instead of it."""

    def __init__(self, reason: str) -> None:
        super().__init__(USER_NOT_AUTHENTICATED)
        self.reason = reason


def _rejection_reason(error: Exception) -> str:
    """Why PyJWT or a claim check refused a token, in the words of the log (checked on failures only)."""
    if isinstance(error, jwt.ExpiredSignatureError):
        return "expired"
    # A token signed with another algorithm (including "none") is refused like a forged signature.
    if isinstance(error, jwt.InvalidSignatureError | jwt.InvalidAlgorithmError):
        return "bad signature"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "not yet valid"
    # Litestar's Token re-checks `exp` against the clock: a token can expire between the two checks.
    if isinstance(error, ImproperlyConfiguredException) and "exp" in str(error):
        return "expired"
    return "malformed"


@dataclass
class AppToken(Token):
    """``sub``, ``uid``, ``exp``, ``iat``, ``jti``, ``fid`` plus the configurable type claim, all flat.

    ``uid`` binds the token to one user row: a username can be released (rename, hard delete) and
    registered again, and the new owner must not inherit old tokens (SPEC §3.2). ``fid`` names the
    refresh family — every token descending from one login — so a replayed refresh token can revoke
    them all (SPEC §3.7).
    """

    uid: int = 0
    fid: str | None = None

    def encode(self, secret: Any, algorithm: str) -> str:
        claims = {name: value for name, value in asdict(self).items() if value is not None and name != "extras"}
        return jwt.encode(claims | self.extras, key=secret, algorithm=algorithm)

    @classmethod
    def decode(  # type: ignore[override]  # the key may be a parsed key object, and no audience/issuer is used
        cls, encoded_token: str, secret: Any, algorithm: str, **_: Any
    ) -> Self:
        """Checks 1–3 of SPEC §3.5; ``iat`` and ``fid`` are optional on input."""
        return cls.verify(encoded_token, secret, algorithm)[0]

    @classmethod
    def verify(cls, encoded_token: str, secret: Any, algorithm: str) -> tuple[Self, dict[str, Any]]:
        """``decode``, with the verified claims as PyJWT read them."""
        try:
            # The algorithm is pinned: a token signed with any other `alg` (including "none") is rejected.
            claims = jwt.decode(
                encoded_token, key=secret, algorithms=[algorithm], options={"require": ["exp", "sub", "uid", "jti"]}
            )
            payload = dict(claims)
            iat = payload.pop("iat", None)
            token = cls(
                sub=_claim(payload.pop("sub"), str),
                uid=_claim(payload.pop("uid"), int),
                jti=_claim(payload.pop("jti"), str),
                fid=_claim(payload.pop("fid", None), str, optional=True),
                exp=datetime.fromtimestamp(payload.pop("exp"), UTC),
                iat=datetime.fromtimestamp(iat, UTC) if iat is not None else datetime.now(UTC),
                extras=payload,
            )
        except (jwt.InvalidTokenError, ImproperlyConfiguredException, TypeError, ValueError, OverflowError) as exc:
            raise TokenRejected(_rejection_reason(exc)) from None
        return token, claims

    @property
    def revocation_keys(self) -> list[str]:
        """The ``token_blacklist`` values that revoke this token: its own ``jti`` and its family's id."""
        keys = [str(self.jti)]
        return [*keys, self.fid] if self.fid else keys


def _claim(value: Any, kind: type[int | str], *, optional: bool = False) -> Any:
    """A claim of the expected JSON type (``uid`` an id of the integer range, text without NUL), else reject."""
    if value is None and optional:
        return None
    if kind is int and (type(value) is not int or not is_db_id(value)):
        raise ValueError("uid")
    if kind is str and (type(value) is not str or not value or not storable(value)):
        raise ValueError("claim")
    return value


@dataclass(frozen=True, slots=True)
class IssuedToken:
    encoded: str
    expires_at: datetime


class TokenCodec:
    """Issues and verifies access and refresh tokens with the configured claim names and lifetimes."""

    def __init__(self, settings: JWTSettings, keys: SigningKeys) -> None:
        self.settings = settings
        self.keys = keys
        self.type_claim = settings.token_type_field
        self.type_values: dict[TokenKind, str] = {
            "access": settings.access_token_type,
            "refresh": settings.refresh_token_type,
        }
        self.lifetimes: dict[TokenKind, timedelta] = {
            "access": timedelta(minutes=settings.access_token_expire_minutes),
            "refresh": timedelta(days=settings.refresh_token_expire_days),
        }
        self.verified: VerifiedTokens[AppToken] = VerifiedTokens()

    def issue(self, subject: str, user_id: int, kind: TokenKind, *, family: str) -> IssuedToken:
        token = AppToken(
            sub=subject,
            uid=user_id,
            exp=datetime.now(UTC) + self.lifetimes[kind],
            jti=uuid4().hex,  # SPEC §3.2 [Δ]: every token is unique, even two issued in the same second
            fid=family,
            extras={self.type_claim: self.type_values[kind]},
        )
        return IssuedToken(encoded=token.encode(self.keys.signing, self.settings.algorithm), expires_at=token.exp)

    def verify(self, encoded: str) -> AppToken:
        """Checks 1–3 of SPEC §3.5, verified once per exact token string while it is valid; else ``TokenRejected``."""
        token = self.verified.get(encoded)
        if token is not None:
            return token
        token, claims = AppToken.verify(encoded, self.keys.verification, self.settings.algorithm)
        if "nbf" not in claims:  # our tokens carry none; one that does is simply verified every time
            # The window of the checks just passed: Litestar's `iat <= now` and PyJWT's `int(exp) > now`.
            self.verified.put(encoded, token, valid_from=token.iat.timestamp(), valid_until=int(claims["exp"]))
        return token

    def decode(self, encoded: str, kind: TokenKind) -> AppToken | None:
        """Checks 1–4 of SPEC §3.5; ``None`` when any fails."""
        try:
            token = self.verify(encoded)
        except TokenRejected as rejected:
            log_rejection(rejected.reason, kind=kind)
            return None
        if not self.is_kind(token, kind):
            log_rejection("wrong type", kind=kind, user_id=token.uid)
            return None
        return token

    def is_kind(self, token: AppToken, kind: TokenKind) -> bool:
        return token.extras.get(self.type_claim) == self.type_values[kind]


def log_rejection(reason: str, *, kind: TokenKind, **fields: Any) -> None:
    logger.info("token rejected", reason=reason, kind=kind, **fields)
    record_token_rejected(kind, reason)


def bearer_token(authorization: str | None) -> str | None:
    """SPEC §3.4: ``Authorization: Bearer <token>``, scheme case-insensitive; anything else is no token."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


UserLoader = Callable[[ASGIConnection[Any, Any, Any, Any], AppToken], Awaitable[Any]]


class BearerAuthenticationMiddleware(JWTAuthenticationMiddleware):
    """Bearer header only (no cookie fallback), with the fixed 401 texts of SPEC §1.3."""

    def __init__(self, *, codec: TokenCodec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.codec = codec

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        encoded = bearer_token(connection.headers.get("authorization"))
        if encoded is None:
            log_rejection("missing", kind="access", path=connection.scope["path"])
            raise NotAuthorizedException(NOT_AUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
        try:
            return await self.authenticate_token(encoded, connection)
        except TokenRejected as rejected:
            log_rejection(rejected.reason, kind="access", path=connection.scope["path"])
            raise

    async def authenticate_token(
        self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        token = self.codec.verify(encoded_token)
        user = await self.retrieve_user_handler(token, connection)
        if user is None:  # the loader names the reason itself ("revoked", "unknown user"); this is a fallback
            raise TokenRejected("unknown user")
        connection.state[USER_ID_STATE_KEY] = user.id
        return AuthenticationResult(user=user, auth=token)


@dataclass
class BearerJWTAuth(JWTAuth[Any, AppToken]):
    """``JWTAuth`` whose middleware verifies tokens through the codec (and so its cache of verified tokens)."""

    codec: TokenCodec = field(kw_only=True)

    @property
    def middleware(self) -> DefineMiddleware:
        middleware = super().middleware
        middleware.kwargs["codec"] = self.codec
        return middleware


def build_jwt_auth(codec: TokenCodec, load_user: UserLoader) -> JWTAuth[Any, AppToken]:
    """Every route requires a token unless its handler, controller or router sets ``exclude_from_auth=True``."""

    async def retrieve_user(token: AppToken, connection: ASGIConnection[Any, Any, Any, Any]) -> Any:
        if not codec.is_kind(token, "access"):
            raise TokenRejected("wrong type")
        return await load_user(connection, token)

    return BearerJWTAuth(
        codec=codec,
        retrieve_user_handler=retrieve_user,
        token_secret=codec.keys.verification,
        algorithm=codec.settings.algorithm,
        token_cls=AppToken,
        authentication_middleware_class=BearerAuthenticationMiddleware,
        default_token_expiration=codec.lifetimes["access"],
        openapi_security_scheme_name=SECURITY_SCHEME,
        exclude_opt_key="exclude_from_auth",
    )
