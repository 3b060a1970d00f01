"""Opaque, tamper-proof page tokens (AIP-158).

A token is the cursor of the last item returned, signed with HMAC-SHA256 and
bound to the caller's scope (its workspace, or the platform) and to a digest of
the query (method, parent and filters). A token that was altered, that belongs
to another workspace or query, or that is older than a day is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from fenlo_server.errors import FieldViolation, InvalidArgument, Reason, invalid

TOKEN_LIFETIME_SECONDS = 24 * 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _query_digest(query: Mapping[str, Any]) -> str:
    canonical = json.dumps(query, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class PageTokens:
    """Issues and checks page tokens with one server secret."""

    def __init__(self, secret: bytes, *, now: Any = time.time) -> None:
        self._secret = secret
        self._now = now

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:20]

    def encode(self, scope: str, query: Mapping[str, Any], cursor: Mapping[str, Any]) -> str:
        payload = {"s": scope, "q": _query_digest(query), "c": dict(cursor), "t": int(self._now())}
        body = json.dumps(payload, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._sign(body))}"

    def decode(self, token: str, scope: str, query: Mapping[str, Any]) -> dict[str, Any]:
        """Return the cursor of ``token``; raise INVALID_ARGUMENT if it is not valid here."""
        try:
            body_text, signature_text = token.split(".", 1)
            body = _unb64(body_text)
            signature = _unb64(signature_text)
        except ValueError:
            raise _bad_token("is malformed") from None
        if _b64(body) != body_text or _b64(signature) != signature_text:
            raise _bad_token("is malformed")  # only the canonical encoding is accepted
        if not hmac.compare_digest(signature, self._sign(body)):
            raise _bad_token("was not issued by this server or was altered")
        payload = json.loads(body)
        if payload.get("s") != scope:
            raise _bad_token("belongs to another workspace")
        if payload.get("q") != _query_digest(query):
            raise _bad_token("belongs to a different query; keep every parameter but page_token")
        if self._now() - payload.get("t", 0) > TOKEN_LIFETIME_SECONDS:
            raise _bad_token("has expired; start again from the first page")
        cursor = payload.get("c")
        if not isinstance(cursor, dict):
            raise _bad_token("is malformed")
        return cursor


def _bad_token(description: str) -> InvalidArgument:
    return InvalidArgument(
        Reason.ERROR_REASON_PAGE_TOKEN_INVALID,
        f"invalid page_token: it {description}",
        violations=[FieldViolation("page_token", f"it {description}")],
    )


def page_size(requested: int, default: int, maximum: int) -> int:
    """The page size to use: the default for 0, at most ``maximum``; negative is invalid."""
    if requested < 0:
        raise invalid("page_size", "must not be negative")
    if requested == 0:
        return default
    return min(requested, maximum)
