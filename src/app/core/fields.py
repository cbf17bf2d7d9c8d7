"""Field types every body, query and path value is declared with, so that no input can reach the database
in a form it cannot store (SPEC §1.7): a malformed value is a 422 (or the route's 404 in a path), never a 500.

- Text never contains NUL (PostgreSQL cannot store it).
- Patterns match the whole value: Python's ``$`` also matches before a trailing newline, so ``whole``
  adds ``(?!\\n)``, which keeps the pattern a plain ``^…$`` for the ECMA-262 regexes of OpenAPI clients.
- Integers that name or fill an ``integer`` column stay within 1 … 2 147 483 647.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

DB_INT_MAX = 2_147_483_647
URL_MAX_LENGTH = 2048


def whole(pattern: str) -> str:
    """``pattern`` anchored to the whole value, under Python's ``re`` and ECMA-262 alike."""
    return rf"^(?:{pattern})$(?!\n)"


NO_NUL = whole(r"[^\x00]*")
URL_PATTERN = whole(r"(https?|ftp)://[^\s/$.?#\x00][^\n\x00][^\s\x00]*")

# An id or other value of an integer column (SPEC §1.7).
DbId = Annotated[int, msgspec.Meta(ge=1, le=DB_INT_MAX)]
DbCount = Annotated[int, msgspec.Meta(ge=0, le=DB_INT_MAX)]
Url = Annotated[
    str, msgspec.Meta(max_length=URL_MAX_LENGTH, pattern=URL_PATTERN, examples=["https://example.com/a.png"])
]


def text(min_length: int, max_length: int, **meta: Any) -> msgspec.Meta:
    """Free text of ``min_length``–``max_length`` characters, never containing NUL: ``Annotated[str, text(2, 30)]``."""
    return msgspec.Meta(min_length=min_length, max_length=max_length, pattern=NO_NUL, **meta)


def matching(pattern: str, *, max_length: int, min_length: int | None = None, **meta: Any) -> msgspec.Meta:
    """Text that matches ``pattern`` as a whole (a pattern that cannot match NUL needs no extra rule)."""
    return msgspec.Meta(min_length=min_length, max_length=max_length, pattern=whole(pattern), **meta)


def storable(value: str) -> bool:
    """Whether a path value can be stored (and so found): a name with NUL is simply not there (SPEC §1.7)."""
    return "\x00" not in value


def is_db_id(value: int) -> bool:
    """Whether a path id can name a row: out of range, it is simply not there (SPEC §1.7)."""
    return 1 <= value <= DB_INT_MAX
