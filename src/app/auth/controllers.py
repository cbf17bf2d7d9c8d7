"""A1–A3 (SPEC §4.2), mounted under both /api/v1 and /api/auth on the same handlers."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, TooManyRequestsException
from litestar.params import FromCookie

from app.auth.cookies import REFRESH_COOKIE, expired_refresh_cookie, refresh_cookie
from app.auth.schemas import AccessToken, LoginOperation, read_login_form
from app.auth.services import AuthService, TokenPair, provide_auth_service
from app.auth.throttle import LoginThrottle, provide_login_throttle
from app.core.cors import same_origin_or_allowed
from app.core.errors import NOT_AUTHENTICATED
from app.core.schemas import Message
from app.core.security import TokenCodec, bearer_token

WRONG_CREDENTIALS = "Wrong username, email or password."
REFRESH_TOKEN_MISSING = "Refresh token missing."
INVALID_REFRESH_TOKEN = "Invalid refresh token."
REFRESH_TOKEN_NOT_FOUND = "Refresh token not found"
INVALID_TOKEN = "Invalid token."


def _token_response(tokens: TokenPair, codec: TokenCodec) -> Response[AccessToken]:
    max_age = int(codec.lifetimes["refresh"].total_seconds())
    return Response(
        AccessToken(access_token=tokens.access.encoded),
        status_code=200,
        cookies=[refresh_cookie(tokens.refresh.encoded, max_age)],
    )


class AuthController(Controller):
    """A browser's cross-site request must not drive the cookie routes, nor log the user into another account
    (login CSRF): each route's ``same_origin_or_allowed`` guard refuses a foreign ``Origin`` before anything else.
    It is on the handlers, not here, so the OPTIONS answer Litestar adds to each path is left alone."""

    tags = ["login"]
    # These routes do their own token checks; tokens must never be cached anywhere (SPEC §4.2, §7).
    opt = {"exclude_from_auth": True}
    cache_control = CacheControlHeader(no_store=True)
    dependencies = {
        "auth_service": Provide(provide_auth_service),
        "login_throttle": Provide(provide_login_throttle, sync_to_thread=False),
    }

    @post(
        "/login",
        status_code=200,
        operation_class=LoginOperation,
        guards=[same_origin_or_allowed],
        raises=[NotAuthorizedException, PermissionDeniedException, TooManyRequestsException],
    )
    async def login(
        self,
        request: Request[Any, Any, Any],
        auth_service: NamedDependency[AuthService],
        login_throttle: NamedDependency[LoginThrottle],
        token_codec: NamedDependency[TokenCodec],
    ) -> Response[AccessToken]:
        """Log in with a username or an email; returns an access token and sets the refresh cookie.

        Past too many failed attempts (per account and address, or per address) it answers 429 without checking
        the password.
        """
        data = await read_login_form(request)
        attempt = await login_throttle.admit(request, data.username)
        tokens = await auth_service.login(data.username, data.password)
        if tokens is None:
            await login_throttle.failed(request, attempt)
            raise NotAuthorizedException(WRONG_CREDENTIALS)
        await login_throttle.succeeded(request, attempt)
        return _token_response(tokens, token_codec)

    @post(
        "/refresh",
        status_code=200,
        guards=[same_origin_or_allowed],
        raises=[NotAuthorizedException, PermissionDeniedException],
    )
    async def refresh(
        self,
        auth_service: NamedDependency[AuthService],
        token_codec: NamedDependency[TokenCodec],
        refresh_token: FromCookie[str | None] = None,
    ) -> Response[AccessToken]:
        """Exchange the refresh cookie for a new access token; the refresh token is rotated."""
        if not refresh_token:
            raise NotAuthorizedException(REFRESH_TOKEN_MISSING)
        tokens = await auth_service.refresh(refresh_token)
        if tokens is None:
            raise NotAuthorizedException(INVALID_REFRESH_TOKEN)
        return _token_response(tokens, token_codec)

    @post(
        "/logout",
        status_code=200,
        guards=[same_origin_or_allowed],
        raises=[NotAuthorizedException, PermissionDeniedException],
    )
    async def logout(
        self,
        request: Request[Any, Any, Any],
        auth_service: NamedDependency[AuthService],
        refresh_token: FromCookie[str | None] = None,
    ) -> Response[Message]:
        """Blacklist the bearer access token and the refresh cookie, and expire the cookie."""
        access_token = bearer_token(request.headers.get("authorization"))
        if access_token is None:
            raise NotAuthorizedException(NOT_AUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
        if not refresh_token:
            raise NotAuthorizedException(REFRESH_TOKEN_NOT_FOUND)
        if not await auth_service.logout(access_token, refresh_token):
            raise NotAuthorizedException(INVALID_TOKEN)
        return Response(Message("Logged out successfully"), cookies=[expired_refresh_cookie()])


__all__ = ["REFRESH_COOKIE", "AuthController"]
