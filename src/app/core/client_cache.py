"""The client-side ``Cache-Control`` rule of SPEC §7, applied to every response just before it is sent."""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.types import BeforeMessageSendHookHandler, Message, Scope

NO_STORE = "no-store"
_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
# Shared caches must key on the caller: the same URL answers differently per token.
_VARY = (b"vary", b"Authorization")


def client_cache_headers(max_age: int) -> BeforeMessageSendHookHandler:
    # Raw ASGI pairs, encoded once: this runs on every response.
    no_store = [(b"cache-control", NO_STORE.encode())]
    public = [(b"cache-control", f"public, max-age={max_age}".encode()), _VARY]
    private = [(b"cache-control", f"private, max-age={max_age}".encode()), _VARY]

    async def set_cache_control(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        headers = MutableScopeHeaders.from_message(message).headers
        if any(name.lower() == b"cache-control" for name, _ in headers):
            return  # set by the handler (auth routes, health, staging docs): kept as set
        # SPEC §7 (amended): errors and the answers to writes (e.g. the 201 of a registration) are never stored.
        if message["status"] >= 400 or scope.get("method") not in _CACHEABLE_METHODS:
            headers.extend(no_store)
            return
        has_authorization = any(name == b"authorization" for name, _ in scope["headers"])
        headers.extend(private if has_authorization else public)

    return set_cache_control
