"""The refresh cookie of SPEC §3.6, set at login/refresh and expired at logout/account deletion."""

from __future__ import annotations

from litestar.datastructures import Cookie

REFRESH_COOKIE = "refresh_token"


def refresh_cookie(token: str, max_age: int) -> Cookie:
    # Path=/ so both /api/v1/* and /api/auth/* receive it; Secure in every environment (parity).
    return Cookie(
        key=REFRESH_COOKIE, value=token, max_age=max_age, path="/", httponly=True, secure=True, samesite="lax"
    )


def expired_refresh_cookie() -> Cookie:
    return Cookie(key=REFRESH_COOKIE, value="", max_age=0, path="/", httponly=True, secure=True, samesite="lax")
