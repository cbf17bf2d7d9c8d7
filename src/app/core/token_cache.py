"""A bounded per-process cache of verified tokens: RS256 verification and JSON decoding once per token string.

Profiling showed signature verification and decoding at ~10 % of an authenticated read. Only what depends on
nothing but the exact encoded string, the key and the clock is cached (SPEC §3.5 checks 1–3); the type check,
the blacklist (``jti`` and refresh family) and the user checks still run on every request.

- The key is the exact encoded string. A JWT has many valid spellings (e.g. base64 padding on the signature);
  another spelling is another key and is verified in full.
- An entry is only used inside the window in which verification itself would succeed, read from the clock PyJWT
  reads (``time.time`` and ``datetime.now`` are one clock, and time-machine moves both): from ``iat`` on and
  before ``exp``. Outside it the entry is dropped and the token verified again, so a cached token expires exactly
  at ``exp`` — also when the clock is frozen or moved backwards.
- Failures are not cached: a stream of forged tokens then costs what it costs today, and cannot fill the cache.
- At most ``max_entries`` tokens, least recently used first out, so a flood of valid tokens bounds its memory too.

Cached tokens are shared between requests and read-only by convention (nothing mutates an ``AppToken``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")

# A few thousand sessions per worker; one entry (token string and decoded claims) is ~1.5 KiB.
DEFAULT_MAX_ENTRIES = 4096


class VerifiedTokens(Generic[T]):
    """Verified tokens by their exact encoded string, each with the window in which it is valid."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, float, T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, encoded: str) -> T | None:
        entry = self._entries.get(encoded)
        if entry is None:
            return None
        valid_from, valid_until, token = entry
        if not valid_from <= time.time() < valid_until:
            self._entries.pop(encoded, None)
            return None
        self._entries.move_to_end(encoded)
        return token

    def put(self, encoded: str, token: T, *, valid_from: float, valid_until: float) -> None:
        self._entries[encoded] = (valid_from, valid_until, token)
        self._entries.move_to_end(encoded)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
