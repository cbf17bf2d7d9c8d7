"""Security headers on every response (API, errors, router 404/405, docs), added just before it is sent."""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

CONTENT_SECURITY_POLICY = "Content-Security-Policy"
# JSON is never rendered as a page: it may load nothing and be framed by nobody.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"

# Raw ASGI tuples, encoded once: this runs on every response.
_DEFAULTS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (CONTENT_SECURITY_POLICY.lower().encode(), API_POLICY.encode()),
)


async def add_security_headers(message: Message, scope: Scope) -> None:
    """Add each header the response does not set itself (the docs pages bring their own policy)."""
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message).headers
    present = {name.lower() for name, _ in headers}
    headers.extend(header for header in _DEFAULTS if header[0] not in present)
