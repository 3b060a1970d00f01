"""What the reliability suite did and found, summed over a run.

Each scenario records the faults it injected, the turns it attempted and the
ones the server acknowledged, and what it checked afterwards: rows and events
counted against what clients were told succeeded. ``lost`` is something a
client was told succeeded that is not there; ``duplicated`` an effect applied
twice (the same message stored twice, an event id delivered twice to a consumer
that should have deduplicated it); ``leaks`` resources that did not come back
(memory per stream beyond its bound, streams or tasks left open).

``make reliability`` prints the summary at the end of the run (ending with the
lines ``lost: N``, ``duplicated: N``, ``leaks: N``) and writes it to
``tests/reliability/results/latest.txt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "latest.txt"


@dataclass
class Ledger:
    faults: dict[str, int] = field(default_factory=dict)
    turns_attempted: int = 0
    turns_succeeded: int = 0
    rows_checked: int = 0
    events_checked: int = 0
    lost: int = 0
    duplicated: int = 0
    leaks: int = 0
    notes: list[str] = field(default_factory=list)

    def fault(self, kind: str, count: int = 1) -> None:
        """Record ``count`` injected faults of ``kind`` (e.g. "redis restart")."""
        self.faults[kind] = self.faults.get(kind, 0) + count

    def turns(self, attempted: int, succeeded: int) -> None:
        self.turns_attempted += attempted
        self.turns_succeeded += succeeded

    def checked(self, *, rows: int = 0, events: int = 0) -> None:
        self.rows_checked += rows
        self.events_checked += events

    def found(self, *, lost: int = 0, duplicated: int = 0, leaks: int = 0, why: str = "") -> None:
        """Record problems; ``why`` goes into the summary when any is non-zero."""
        self.lost += lost
        self.duplicated += duplicated
        self.leaks += leaks
        if why and (lost or duplicated or leaks):
            self.notes.append(why)

    def note(self, line: str) -> None:
        """A line for the summary (a measured figure, say)."""
        self.notes.append(line)

    def summary(self) -> str:
        faults = ", ".join(f"{kind} ×{n}" for kind, n in sorted(self.faults.items())) or "none"
        lines = [
            "reliability summary",
            f"faults injected: {sum(self.faults.values())} ({faults})",
            f"turns attempted: {self.turns_attempted}",
            f"turns succeeded: {self.turns_succeeded}",
            f"rows checked: {self.rows_checked}",
            f"events checked: {self.events_checked}",
            *(f"note: {n}" for n in self.notes),
            f"lost: {self.lost}",
            f"duplicated: {self.duplicated}",
            f"leaks: {self.leaks}",
        ]
        return "\n".join(lines)


LEDGER = Ledger()
