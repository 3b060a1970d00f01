"""The reliability suite's shared ledger and its summary at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest

from tests.reliability.ledger import LEDGER, RESULTS, Ledger


@pytest.fixture
def ledger() -> Ledger:
    return LEDGER


def pytest_terminal_summary(terminalreporter: Any) -> None:
    ran = [
        r
        for key in ("passed", "failed", "error")
        for r in terminalreporter.stats.get(key, [])
        if "tests/reliability/" in getattr(r, "nodeid", "")
    ]
    if not ran:
        return
    text = LEDGER.summary()
    failed = len(terminalreporter.stats.get("failed", []))
    if failed:
        text = text.replace("reliability summary", f"reliability summary ({failed} failed)", 1)
    terminalreporter.write_sep("=", "reliability summary")
    terminalreporter.write_line(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")
