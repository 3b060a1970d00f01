"""The pipeline engine and the step registry, with steps written here (outside the
package), as a workspace's own steps would be."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from fenlo_server.pipeline.context import ConversationMemory, MessageContext
from fenlo_server.pipeline.engine import (
    GENERATION_BUFFER,
    Acknowledged,
    Analysed,
    Guarded,
    Pipeline,
    Text,
    TurnControl,
    TurnFailed,
)
from fenlo_server.pipeline.registry import DEFAULT_PIPELINE, StepRegistry
from fenlo_server.pipeline.step import Skip
from fenlo_server.pipeline.steps import register_builtin


class Recorder:
    """A step that records that it ran, and can skip, fail or end generation."""

    def __init__(
        self, name: str, phase: str = "pre", *, essential: bool = False, action: str = ""
    ) -> None:
        self.name = name
        self.phase = phase
        self.essential = essential
        self.action = action

    async def run(self, ctx: MessageContext) -> None:
        ctx.events.append(self.name)  # type: ignore[arg-type]
        if self.action == "skip":
            raise Skip("does not apply")
        if self.action == "fail":
            raise RuntimeError("boom")
        if self.action == "reply":
            ctx.reply = "A fixed reply."
            ctx.reply_source = self.name


class Words:
    name = "words"
    phase = "generate"
    essential = True

    def __init__(self, words: list[str], delay: float = 0.0, fail_after: int | None = None):
        self.words = words
        self.delay = delay
        self.fail_after = fail_after
        self.closed = False

    async def run(self, ctx: MessageContext) -> None:
        async for _ in self.stream(ctx):
            pass

    async def stream(self, ctx: MessageContext) -> AsyncIterator[str]:
        try:
            for i, word in enumerate(self.words):
                if self.fail_after is not None and i == self.fail_after:
                    raise ConnectionError("provider gone")
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield word
        finally:
            self.closed = True


def context() -> MessageContext:
    return MessageContext(
        workspace_id="w",
        conversation_id="c",
        turn_id="t",
        text="hello",
        services=None,  # type: ignore[arg-type]
        memory=ConversationMemory(),
    )


async def run(
    pipeline: Pipeline, ctx: MessageContext, control: TurnControl | None = None
) -> list[Any]:
    acknowledged: list[bool] = []

    async def acknowledge(c: MessageContext) -> None:
        acknowledged.append(True)
        c.user_message_id = "m1"

    out = []
    async for event in pipeline.run(ctx, acknowledge, control or TurnControl(ctx)):
        out.append(event)
    assert acknowledged == [True]
    return out


def outcomes(ctx: MessageContext) -> list[tuple[str, str]]:
    return [(t.step, t.outcome) for t in ctx.timings]


async def test_phases_run_in_order_and_every_step_is_timed() -> None:
    words = Words(["Hello ", "there."])
    pipeline = Pipeline(
        [
            Recorder("a"),
            words,
            Recorder("z", "post"),
            Recorder("b"),  # a pre step after the generator still runs before it
        ]
    )
    ctx = context()
    events = await run(pipeline, ctx)
    assert ctx.events == ["a", "b", "z"]
    assert [type(e) for e in events] == [Acknowledged, Guarded, Text, Text, Analysed]
    assert ctx.answer == "Hello there."
    assert outcomes(ctx) == [("a", "ran"), ("b", "ran"), ("words", "ran"), ("z", "ran")]
    assert all(t.seconds >= 0 for t in ctx.timings)


async def test_an_early_reply_skips_the_rest_but_not_the_post_steps() -> None:
    words = Words(["never"])
    pipeline = Pipeline(
        [Recorder("guard", action="reply"), Recorder("rag"), words, Recorder("store", "post")]
    )
    ctx = context()
    events = await run(pipeline, ctx)
    assert ctx.answer == "A fixed reply."
    assert [e.text for e in events if isinstance(e, Text)] == ["A ", "fixed ", "reply."]
    assert ctx.providers == ["guard"]
    assert outcomes(ctx) == [
        ("guard", "ran"),
        ("rag", "skipped"),
        ("words", "skipped"),
        ("store", "ran"),
    ]
    assert not words.closed  # the generator never started


async def test_failures_of_optional_steps_are_recorded_and_the_turn_goes_on() -> None:
    pipeline = Pipeline(
        [
            Recorder("optional", action="fail"),
            Recorder("not-for-me", action="skip"),
            Words(["ok"]),
            Recorder("analysis", "post", action="fail"),
            Recorder("store", "post", essential=True),
        ]
    )
    ctx = context()
    await run(pipeline, ctx)
    assert outcomes(ctx) == [
        ("optional", "failed"),
        ("not-for-me", "skipped"),
        ("words", "ran"),
        ("analysis", "failed"),
        ("store", "ran"),
    ]
    failed = {t.step: t.detail for t in ctx.timings if t.outcome != "ran"}
    assert failed["optional"] == "RuntimeError: boom"
    assert failed["not-for-me"] == "does not apply"


async def test_an_essential_step_failing_fails_the_turn() -> None:
    pipeline = Pipeline([Recorder("context", essential=True, action="fail"), Words(["x"])])
    ctx = context()
    with pytest.raises(TurnFailed) as caught:
        await run_events(pipeline, ctx)
    assert caught.value.step == "context"
    assert ctx.user_message_id == ""  # never acknowledged


async def run_events_acknowledge(c: MessageContext) -> None:
    c.user_message_id = "m1"


async def run_events(pipeline: Pipeline, ctx: MessageContext) -> None:
    async for _ in pipeline.run(ctx, run_events_acknowledge, TurnControl(ctx)):
        pass


async def test_a_generation_failure_fails_the_turn_after_storing_what_was_said() -> None:
    pipeline = Pipeline([Words(["one ", "two ", "three"], fail_after=2), Recorder("store", "post")])
    ctx = context()
    with pytest.raises(TurnFailed) as caught:
        await run_events(pipeline, ctx)
    assert isinstance(caught.value.error, ConnectionError)
    assert ctx.answer == "one two "
    assert ctx.interrupted
    assert ctx.events == ["store"]
    assert outcomes(ctx)[0][:2] == ("words", "failed")


async def test_an_interrupt_stops_generation_at_once_and_cuts_the_answer() -> None:
    words = Words([f"w{i} " for i in range(1000)], delay=0.01)
    pipeline = Pipeline([words, Recorder("store", "post")])
    ctx = context()
    control = TurnControl(ctx)
    seen: list[str] = []

    async def acknowledge(c: MessageContext) -> None:
        c.user_message_id = "m1"

    async for event in pipeline.run(ctx, acknowledge, control):
        if isinstance(event, Text):
            seen.append(event.text)
            if len(seen) == 3:
                control.interrupt(5)  # the user heard "w0 w1"
    await asyncio.sleep(0.05)
    assert words.closed
    assert len(seen) < 10
    assert ctx.interrupted
    assert ctx.answer == "w0 w1"
    assert ctx.events == ["store"]
    assert outcomes(ctx)[0] == ("words", "ran")
    assert ctx.timings[0].detail == "interrupted"


async def test_a_slow_reader_pauses_generation() -> None:
    produced = 0

    class Counting(Words):
        async def stream(self, ctx: MessageContext) -> AsyncIterator[str]:
            nonlocal produced
            async for word in super().stream(ctx):
                produced += 1
                yield word

    pipeline = Pipeline([Counting([f"w{i} " for i in range(10 * GENERATION_BUFFER)])])
    ctx = context()
    events = aiter(pipeline.run(ctx, run_events_acknowledge, TurnControl(ctx)))
    while not isinstance(await anext(events), Text):  # the reader takes one piece...
        pass
    for _ in range(1000):  # ...then reads no more for a while
        await asyncio.sleep(0)
    assert produced <= GENERATION_BUFFER + 2  # the piece read, the one waiting for room
    rest = [e.text async for e in events if isinstance(e, Text)]
    assert len(rest) == 10 * GENERATION_BUFFER - 1  # reading again resumes it; nothing lost
    assert ctx.answer == "".join(f"w{i} " for i in range(10 * GENERATION_BUFFER))


async def test_a_turn_interrupted_before_it_is_acknowledged_ends_there() -> None:
    words = Words(["never"])
    ctx = context()
    control = TurnControl(ctx)

    class CallerLeaves(Recorder):
        async def run(self, ctx: MessageContext) -> None:
            await super().run(ctx)
            control.interrupt(0)  # the caller went away during the pre steps

    pipeline = Pipeline([CallerLeaves("guard"), words, Recorder("store", "post")])
    acknowledged: list[str] = []

    async def acknowledge(c: MessageContext) -> None:
        acknowledged.append(c.turn_id)

    events = [e async for e in pipeline.run(ctx, acknowledge, control)]
    assert events == []
    assert acknowledged == []  # nothing stored
    assert not words.closed  # nothing generated
    assert ctx.events == ["guard"]  # no post steps either: there is nothing to analyse


def test_at_most_one_generate_step() -> None:
    with pytest.raises(ValueError, match="at most one generate step"):
        Pipeline([Words(["a"]), Words(["b"])])


# Registry


def make_shout(params: Mapping[str, Any]) -> Recorder:
    if not isinstance(params.get("volume", 1), int):
        raise ValueError("volume must be an integer")
    return Recorder("shout", "post")


def test_builtin_steps_cover_the_default_pipeline() -> None:
    registry = StepRegistry()
    register_builtin(registry)
    assert set(DEFAULT_PIPELINE) <= set(registry.names())
    pipeline = registry.build(None)
    assert pipeline.names == list(DEFAULT_PIPELINE)
    assert registry.build([]) is not None


def test_a_step_registered_from_outside_runs_with_its_parameters() -> None:
    registry = StepRegistry()
    register_builtin(registry)
    registry.register("shout", make_shout)
    config = [{"name": "llm_stream"}, {"name": "shout", "params": {"volume": 11}}]
    pipeline = registry.build(config)
    assert pipeline.names == ["llm_stream", "shout"]
    assert registry.build(config) is pipeline  # cached by content
    assert registry.check([{"name": "shout", "params": {"volume": "loud"}}]) == [
        (0, "params", "volume must be an integer")
    ]
    problems = registry.check([{"name": "nope"}])
    assert problems[0][0] == 0
    assert problems[0][1] == "name"
    assert "unknown pipeline step 'nope'" in problems[0][2]
    with pytest.raises(ValueError, match="already registered"):
        registry.register("shout", make_shout)


def test_steps_from_entry_points(tmp_path: Path) -> None:
    """A package declaring a `fenlo.pipeline_steps` entry point is picked up."""
    (tmp_path / "acme_steps.py").write_text(
        textwrap.dedent(
            """
            class Stamp:
                name = "acme_stamp"
                phase = "post"
                essential = False

                async def run(self, ctx):
                    ctx.events.append("stamped")


            def create(params):
                return Stamp()
            """
        )
    )
    dist = tmp_path / "acme_steps-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-steps\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[fenlo.pipeline_steps]\nacme_stamp = acme_steps:create\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        registry = StepRegistry()
        assert registry.load_entry_points() == ["acme_stamp"]
        pipeline = registry.build([{"name": "acme_stamp"}])
        ctx = context()
        asyncio.run(run_events(pipeline, ctx))
        assert ctx.events == ["stamped"]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("acme_steps", None)
