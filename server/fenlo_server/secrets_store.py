"""Secrets generated on first run and kept in the data directory (mode 0600)."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path


def load_or_create(path: Path, nbytes: int = 32) -> bytes:
    """Read the secret at ``path``, creating it if it does not exist.

    The secret is written to a temporary file first and then linked into place,
    so a second process starting at the same moment reads either nothing (and
    links its own, losing the race cleanly) or the complete secret, never an
    empty file; a crash leaves no half-written secret behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(nbytes) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process won the race
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    value = path.read_text().strip()
    if not value:
        raise RuntimeError(f"{path} is empty; delete it to generate a new secret")
    return value.encode()
