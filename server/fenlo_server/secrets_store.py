"""Secrets generated on first run and kept in the data directory (mode 0600)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_or_create(path: Path, nbytes: int = 32) -> bytes:
    """Read the secret at ``path``, creating it atomically if it does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if not value:
            raise RuntimeError(f"{path} is empty; delete it to generate a new secret") from None
        return value.encode()
    value = secrets.token_urlsafe(nbytes)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value.encode()
