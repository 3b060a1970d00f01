"""The Step protocol.

A step has a registered ``name``, a ``phase`` and ``async run(ctx)``. Phases run
in order: ``pre`` steps (before the answer), one ``generate`` step (which
streams the answer's text), then ``post`` steps (after the last token). Within a
phase, steps run in the workspace's order. A step that cannot apply to a turn
raises :class:`Skip`; an ``essential`` step's failure fails the turn, any other
step's failure is logged and the turn goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, Protocol, runtime_checkable

from fenlo_server.pipeline.context import MessageContext

Phase = Literal["pre", "generate", "post"]


class Skip(Exception):
    """Raised by a step that does not apply to this turn; the message says why."""


class Step(Protocol):
    name: str
    phase: Phase
    essential: bool

    async def run(self, ctx: MessageContext) -> None: ...


@runtime_checkable
class GeneratingStep(Step, Protocol):
    """The generate-phase step: streams the answer's text."""

    def stream(self, ctx: MessageContext) -> AsyncIterator[str]: ...
