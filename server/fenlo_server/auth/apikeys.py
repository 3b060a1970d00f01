"""Workspace API keys: ``fk_`` followed by 43 random URL-safe characters.

Only a SHA-256 hash of the key is stored (the key has 256 bits of entropy, so a
plain hash cannot be brute-forced); the caller sees the key once, at creation.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "fk_"
SHOWN_PREFIX_CHARS = 10


def generate() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def looks_like_api_key(token: str) -> bool:
    return token.startswith(PREFIX)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def shown_prefix(key: str) -> str:
    """The part of the key shown in listings to recognise it."""
    return key[:SHOWN_PREFIX_CHARS]
