"""Webhook signing secrets, encrypted at rest with AES-256-GCM.

The key is derived (HKDF-SHA256) from ``FENLO_WEBHOOK_SECRET_KEY`` or, when that
is unset, from a key generated in the data directory. Each ciphertext is bound to
its webhook's id (as associated data), so a ciphertext copied onto another row
does not decrypt.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = "v1"
_NONCE_BYTES = 12


class SecretBox:
    """Encrypts and decrypts webhook secrets with one key."""

    def __init__(self, key_material: bytes) -> None:
        if len(key_material) < 16:
            raise ValueError("the webhook secret key must be at least 16 bytes long")
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"fenlo webhook secrets v1",
        ).derive(key_material)
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: str, bound_to: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), bound_to.encode())
        return f"{_VERSION}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, ciphertext: str, bound_to: str) -> str:
        version, _, data = ciphertext.partition(":")
        if version != _VERSION:
            raise ValueError(f"unknown webhook secret format {version!r}")
        raw = base64.urlsafe_b64decode(data)
        nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        return self._aead.decrypt(nonce, sealed, bound_to.encode()).decode()
