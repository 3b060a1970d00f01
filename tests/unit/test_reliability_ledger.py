"""The reliability summary's shape: what `make reliability` ends with."""

from __future__ import annotations

from tests.reliability.ledger import Ledger


def test_the_summary_counts_and_ends_with_lost_duplicated_leaks() -> None:
    ledger = Ledger()
    ledger.fault("redis restart")
    ledger.fault("redis restart")
    ledger.fault("server SIGKILL")
    ledger.turns(10, 9)
    ledger.checked(rows=40, events=30)
    ledger.found(lost=1, why="a message the client was told was stored is missing")
    ledger.found(duplicated=0, why="not shown: nothing found")
    text = ledger.summary().splitlines()
    assert text[1] == "faults injected: 3 (redis restart ×2, server SIGKILL ×1)"
    assert "turns attempted: 10" in text and "turns succeeded: 9" in text
    assert "note: a message the client was told was stored is missing" in text
    assert not any("not shown" in line for line in text)
    assert text[-3:] == ["lost: 1", "duplicated: 0", "leaks: 0"]
