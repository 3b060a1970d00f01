"""The pipeline engine: runs a workspace's steps over one turn.

It knows no step by name. ``pre`` steps run in order until one ends generation
early (a fixed reply or silence); then the user message is acknowledged
(stored) and the answer streams, either from the ``generate`` step or from the
fixed reply; then every ``post`` step runs, even after an early end. A turn
interrupted before it is acknowledged ends there, with nothing stored. Each
step's time and outcome (ran, skipped, failed) is recorded on the turn. The
answer is produced by a task feeding a queue, so generation can start while
the user message is still being written, and an interrupt stops it at once;
the queue is bounded, so a caller that reads slowly pauses the generation (and
its upstream LLM request) instead of the answer piling up in memory.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from fenlo_server.pipeline.context import MessageContext, StepTiming
from fenlo_server.pipeline.step import GeneratingStep, Skip, Step

log = logging.getLogger("fenlo.pipeline")
_WORDS = re.compile(r"\s*\S+\s*")


class TurnFailed(Exception):
    """An essential step failed; ``error`` is what the caller should be told."""

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(f"{step}: {error}")
        self.step = step
        self.error = error


# What the engine reports as the turn progresses (the chat session maps these to
# the stream's messages).
@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The user message is stored."""


@dataclass(frozen=True, slots=True)
class Guarded:
    """The pre-generation checks are done (``ctx.guard`` holds the verdict)."""


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Cited:
    """The answer is complete and cites ``ctx.cited``."""


@dataclass(frozen=True, slots=True)
class Analysed:
    """The post-generation steps are done."""


TurnEvent = Acknowledged | Guarded | Text | Cited | Analysed

_END = object()
GENERATION_BUFFER = 64  # pieces of text generated ahead of the caller before generation pauses


class Pipeline:
    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)
        self.pre = [s for s in self.steps if s.phase == "pre"]
        generating = [s for s in self.steps if s.phase == "generate"]
        if len(generating) > 1:
            raise ValueError("a pipeline has at most one generate step")
        self.generate = generating[0] if generating else None
        self.post = [s for s in self.steps if s.phase == "post"]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    async def _run(self, step: Step, ctx: MessageContext) -> None:
        started = time.perf_counter()
        try:
            await step.run(ctx)
        except Skip as skip:
            ctx.timings.append(
                StepTiming(step.name, "skipped", time.perf_counter() - started, str(skip))
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:
            ctx.timings.append(
                StepTiming(step.name, "failed", time.perf_counter() - started, _detail(error))
            )
            if step.essential:
                raise TurnFailed(step.name, error) from error
            log.warning(
                "pipeline step failed; the turn goes on",
                exc_info=True,
                extra={"step": step.name, "turn": ctx.turn_id},
            )
        else:
            ctx.timings.append(StepTiming(step.name, "ran", time.perf_counter() - started))

    async def run_post(self, ctx: MessageContext) -> None:
        """The post steps (analysis, handoff, persistence), once per turn."""
        if ctx.post_done:
            return
        ctx.post_done = True
        for step in self.post:
            await self._run(step, ctx)

    def _skip(self, step: Step, ctx: MessageContext, why: str) -> None:
        ctx.timings.append(StepTiming(step.name, "skipped", 0.0, why))

    async def run(
        self,
        ctx: MessageContext,
        acknowledge: Callable[[MessageContext], Awaitable[None]],
        turn: TurnControl,
    ) -> AsyncIterator[TurnEvent]:
        for step in self.pre:
            if ctx.ended_early:
                self._skip(step, ctx, "generation ended early")
            else:
                await self._run(step, ctx)
        if ctx.interrupted:
            # Stopped before it was acknowledged (the caller went away, or the deadline
            # passed during the pre steps): like a queued turn, nothing of it is
            # stored, and no answer is generated for a caller who is gone.
            return
        generate = self.generate
        if generate is not None and not ctx.ended_early:
            turn.start(generate, ctx)
        try:
            await acknowledge(ctx)
        except BaseException:
            await turn.stop()
            raise
        yield Acknowledged()
        yield Guarded()
        failure: BaseException | None = None
        if turn.running:
            async for item in turn.output():
                if isinstance(item, BaseException):
                    failure = item
                    break
                if ctx.first_token_seconds is None:
                    ctx.first_token_seconds = time.perf_counter() - ctx.started
                ctx.answer_parts.append(item)
                yield Text(item)
            assert generate is not None
            ctx.timings.append(
                StepTiming(
                    generate.name,
                    "failed" if failure else "ran",
                    turn.seconds,
                    _detail(failure) if failure else ("interrupted" if ctx.interrupted else ""),
                )
            )
        else:
            if generate is not None:
                self._skip(generate, ctx, "generation ended early")
            for piece in _WORDS.findall(ctx.reply or ""):
                ctx.answer_parts.append(piece)
                yield Text(piece)
            if ctx.reply is not None and ctx.reply_source:
                ctx.providers.append(ctx.reply_source)
        if failure is not None:
            ctx.interrupted = True
        if ctx.cited and failure is None:
            yield Cited()
        await self.run_post(ctx)
        if failure is not None:
            raise TurnFailed(generate.name if generate else "generate", failure)
        yield Analysed()


class TurnControl:
    """Runs the generate step in a task feeding a queue; ``interrupt`` stops it."""

    def __init__(self, ctx: MessageContext) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        # At most GENERATION_BUFFER pieces of text wait in the queue; the end and a
        # failure are put without waiting, so stopping never blocks on a full queue.
        self._room = asyncio.Semaphore(GENERATION_BUFFER)
        self._task: asyncio.Task[None] | None = None
        self._ctx = ctx
        self._started = 0.0
        self._finished = 0.0

    @property
    def running(self) -> bool:
        return self._task is not None

    @property
    def seconds(self) -> float:
        return (self._finished or time.perf_counter()) - self._started

    def start(self, step: Step, ctx: MessageContext) -> None:
        assert isinstance(step, GeneratingStep)
        self._started = time.perf_counter()
        self._task = asyncio.get_running_loop().create_task(self._produce(step, ctx))

    async def _produce(self, step: GeneratingStep, ctx: MessageContext) -> None:
        try:
            async for text in step.stream(ctx):
                await self._room.acquire()
                self._queue.put_nowait(text)
        except asyncio.CancelledError:
            pass  # interrupted: the stream (and its upstream request) is closed
        except Exception as error:
            self._queue.put_nowait(error)
        finally:
            self._finished = time.perf_counter()
            self._queue.put_nowait(_END)

    async def output(self) -> AsyncIterator[str | BaseException]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            assert isinstance(item, str | BaseException)
            if isinstance(item, str):
                self._room.release()  # room for the next piece
            yield item

    def interrupt(self, delivered: int | None) -> None:
        """Stop generating now; the answer is cut at ``delivered`` code points."""
        self._ctx.interrupted = True
        if delivered is not None:
            self._ctx.delivered = max(0, delivered)
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _detail(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]
