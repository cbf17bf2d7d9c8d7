"""Cross-origin access (issue 13; notes §C6): CORS from an explicit allow-list, and the Origin check of the auth
routes, which a browser would otherwise let any site drive with the user's refresh cookie.

CORS is off unless ``CORS_ALLOW_ORIGINS`` lists origins: no ``Access-Control-*`` header is ever sent, and browsers
keep other sites from reading any response. When on, Litestar's ``CORSConfig`` answers for exactly the listed
origins, with credentials (the refresh cookie); an unlisted origin is never reflected and ``*`` is never sent.
"""

from __future__ import annotations

from collections.abc import Container
from functools import cache
from typing import Any, Literal
from urllib.parse import urlsplit

from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.exceptions import PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.types import Method

from app.core.rate_limit import LIMIT_HEADER, POLICY_HEADER, REMAINING_HEADER, RESET_HEADER
from app.core.settings import Settings, SettingsError

ORIGIN_NOT_ALLOWED = "Origin not allowed."
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Every method and request header the API uses; Accept and Content-Type are always allowed by Litestar.
_METHODS: list[Literal["*"] | Method] = ["GET", "POST", "PATCH", "DELETE"]
_HEADERS = ["Authorization", "Content-Type"]
# A browser script may read only these beyond the safelisted ones: the limiter's headers (SPEC §5.6).
_EXPOSED = [POLICY_HEADER, LIMIT_HEADER, REMAINING_HEADER, RESET_HEADER, "Retry-After"]


def build_cors_config(settings: Settings) -> CORSConfig | None:
    """``None`` (CORS off) without ``CORS_ALLOW_ORIGINS``."""
    origins = allowed_origins(settings.security.allowed_origins)
    if not origins:
        return None
    return CORSConfig(
        allow_origins=sorted(origins),
        allow_methods=_METHODS,
        allow_headers=_HEADERS,
        allow_credentials=True,
        expose_headers=_EXPOSED,
    )


@cache
def allowed_origins(configured: tuple[str, ...]) -> frozenset[str]:
    """The configured origins as browsers write them (lowercase, no default port), so both comparisons are exact."""
    origins = set()
    for origin in configured:
        # Litestar reads `*` inside an origin as a wildcard (`https://*.example.com`): only exact origins are allowed.
        normalized = normalize_origin(origin) if "*" not in origin else None
        if normalized is None:
            raise SettingsError(f"Invalid value for CORS_ALLOW_ORIGINS: {origin!r} is not an exact origin")
        origins.add(normalized)
    return frozenset(origins)


def normalize_origin(value: str) -> str | None:
    """``scheme://host[:port]``, lowercase and without the scheme's default port; ``None`` if ``value`` is not an
    http(s) origin (``null``, a path, garbage)."""
    value = value.strip()
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:  # a port that is not a number, a broken IPv6 literal
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    # Exactly scheme://host[:port]: no path (not even `/`), query, fragment or credentials.
    if (
        scheme not in _DEFAULT_PORTS
        or not host
        or "@" in parts.netloc
        or value.lower() != f"{scheme}://{parts.netloc.lower()}"
    ):
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


def own_origin(connection: ASGIConnection[Any, Any, Any, Any], trusted: Container[str] | None) -> str | None:
    """The API's origin as the browser sees it: from a trusted proxy (SPEC §5.3's rule) its ``X-Forwarded-Proto``
    and ``X-Forwarded-Host``, else the request's own scheme and ``Host``."""
    headers = connection.headers
    scheme, host = connection.scope["scheme"], headers.get("host", "")
    client = connection.scope.get("client")
    if client and (trusted is None or str(client[0]) in trusted):
        scheme = headers.get("x-forwarded-proto", "").split(",")[0].strip() or scheme
        host = headers.get("x-forwarded-host", "").split(",")[0].strip() or host
    return normalize_origin(f"{scheme}://{host}") if host else None


async def same_origin_or_allowed(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of the auth routes: a request whose ``Origin`` is present and is neither the API's own nor allowed is
    refused with 403 before the cookie is read. No ``Origin`` (curl, mobile apps, servers) is not a browser's
    cross-site request and passes; ``Origin: null`` (sandboxed frames, some redirects) is refused."""
    origin = connection.headers.get("origin")
    if origin is None:
        return
    settings: Settings = connection.app.state["settings"]
    normalized = normalize_origin(origin)
    if normalized is not None and (
        normalized in allowed_origins(settings.security.allowed_origins)
        or normalized == own_origin(connection, settings.app.trusted_proxies)
    ):
        return
    raise PermissionDeniedException(ORIGIN_NOT_ALLOWED)
