"""Server-generated ids: 26 lower-case base32 characters, URL-safe and time-ordered.

The first 10 characters encode the millisecond timestamp, the rest 80 random
bits. Within one millisecond the random part is incremented, so ids made by
one process sort in creation order (pagination relies on it).
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower-case
_RANDOM_BITS = 80


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class _IdGenerator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def __call__(self) -> str:
        with self._lock:
            now = time.time_ns() // 1_000_000
            if now <= self._last_ms:
                now = self._last_ms
                self._last_random = (self._last_random + 1) & ((1 << _RANDOM_BITS) - 1)
            else:
                self._last_random = secrets.randbits(_RANDOM_BITS)
            self._last_ms = now
            return _encode(now, 10) + _encode(self._last_random, 16)


new_id = _IdGenerator()
"""Return a new time-ordered id."""
