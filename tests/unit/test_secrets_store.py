from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fenlo_server.secrets_store import load_or_create


def test_created_once_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "data" / "s.secret"
    first = load_or_create(path)
    assert len(first) >= 40
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create(path) == first
    assert [p.name for p in path.parent.iterdir()] == ["s.secret"]  # no temporary left


def test_concurrent_first_starts_agree(tmp_path: Path) -> None:
    path = tmp_path / "s.secret"
    with ThreadPoolExecutor(8) as pool:
        values = list(pool.map(lambda _: load_or_create(path), range(32)))
    assert len(set(values)) == 1
    assert values[0] == path.read_text().strip().encode()
