"""The client-side ``Cache-Control`` rule of SPEC §7, applied to every response just before it is sent."""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.types import BeforeMessageSendHookHandler, Message, Scope

NO_STORE = "no-store"
_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})


def client_cache_headers(max_age: int) -> BeforeMessageSendHookHandler:
    public = f"public, max-age={max_age}"
    private = f"private, max-age={max_age}"

    async def set_cache_control(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        headers = MutableScopeHeaders.from_message(message)
        if "cache-control" in headers:
            return  # set by the handler (auth routes, health, staging docs): kept as set
        # SPEC §7 (amended): errors and the answers to writes (e.g. the 201 of a registration) are never stored.
        if message["status"] >= 400 or scope.get("method") not in _CACHEABLE_METHODS:
            headers["Cache-Control"] = NO_STORE
            return
        has_authorization = any(name == b"authorization" for name, _ in scope["headers"])
        headers["Cache-Control"] = private if has_authorization else public
        # Shared caches must key on the caller: the same URL answers differently per token.
        headers.add("Vary", "Authorization")

    return set_cache_control
