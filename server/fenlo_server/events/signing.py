"""The signature of a webhook request (documented in docs/webhooks.md).

``Fenlo-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>`` where
``timestamp`` is the ``Fenlo-Timestamp`` header (Unix seconds) and ``body`` the
exact request body.
"""

from __future__ import annotations

import hashlib
import hmac

SCHEME = "v1"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Fenlo-Signature`` header value for one request."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"
