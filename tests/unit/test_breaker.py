"""The circuit breaker's state machine, on LocalBreakers with a fake clock.

The scenarios are plain coroutines over a :class:`Run`, so
tests/integration/test_breaker_redis.py plays the same ones against RedisBreakers.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from fenlo_server.llm.breaker import BreakerPolicy, Breakers, LocalBreakers, Permit, State
from fenlo_server.metrics import REGISTRY

POLICY = BreakerPolicy(
    failure_rate=0.5,
    minimum_calls=4,
    window_seconds=10.0,
    cooldown_seconds=5.0,
    half_open_probes=2,
    max_cooldown_seconds=60.0,
)
CHANGE_MESSAGE = "llm circuit breaker changed state"


class FakeClock:
    """Time that moves only when told. Tests move it by halves of a second, exact in
    binary, so no boundary depends on rounding (Redis stores times as text)."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def unique_provider(stem: str = "prov") -> str:
    """A provider name no other test uses (the state metric is per process)."""
    return f"{stem}-{uuid.uuid4().hex[:10]}"


def breaker_metric(provider: str) -> float | None:
    return REGISTRY.get_sample_value("fenlo_llm_breaker_state", {"provider": provider})


def state_changes(caplog: pytest.LogCaptureFixture, provider: str) -> list[tuple[str, str]]:
    """(from, to) of every state change logged for ``provider``."""
    return [
        (r.__dict__["from"], r.__dict__["to"])
        for r in caplog.records
        if r.getMessage() == CHANGE_MESSAGE and getattr(r, "provider", None) == provider
    ]


@dataclass
class Run:
    """One breaker under test: its fake clock and a provider of its own."""

    breakers: Breakers
    clock: FakeClock
    provider: str
    caplog: pytest.LogCaptureFixture

    async def permit(self) -> Permit:
        permit = await self.breakers.acquire(self.provider)
        assert permit is not None, f"refused while {self.state().value}"
        return permit

    async def refused(self) -> bool:
        return await self.breakers.acquire(self.provider) is None

    async def calls(self, *outcomes: bool, retry_after: float | None = None) -> None:
        """Make ordinary (non-probe) calls with these outcomes."""
        for ok in outcomes:
            permit = await self.permit()
            assert not permit.probe
            await self.breakers.record(permit, ok=ok, retry_after=retry_after)

    async def fail(self, count: int, retry_after: float | None = None) -> None:
        await self.calls(*[False] * count, retry_after=retry_after)

    async def open(self, retry_after: float | None = None) -> None:
        await self.fail(POLICY.minimum_calls, retry_after)
        assert self.state() is State.OPEN

    async def half_open(self) -> None:
        """Open the breaker, wait out the cool-down; the next acquire is a probe."""
        await self.open()
        self.clock.advance(POLICY.cooldown_seconds)

    def state(self) -> State:
        return self.breakers.state(self.provider)

    def metric(self) -> float | None:
        return breaker_metric(self.provider)

    def changes(self) -> list[tuple[str, str]]:
        return state_changes(self.caplog, self.provider)


Scenario = Callable[[Run], Awaitable[None]]
SCENARIOS: list[Scenario] = []


def scenario(function: Scenario) -> Scenario:
    SCENARIOS.append(function)
    return function


@scenario
async def stays_closed_below_minimum_calls(run: Run) -> None:
    await run.fail(POLICY.minimum_calls - 1)  # 100% failures, but too few calls to judge
    assert run.state() is State.CLOSED
    assert not await run.refused()
    assert run.changes() == []


@scenario
async def opens_at_the_failure_rate_once_minimum_calls_is_reached(run: Run) -> None:
    await run.calls(True, True, False)  # 1 of 3 failed: too few calls
    assert run.state() is State.CLOSED
    await run.calls(False)  # 2 of 4: exactly the rate
    assert run.state() is State.OPEN


@scenario
async def refuses_while_open(run: Run) -> None:
    await run.open()
    for _ in range(3):
        assert await run.refused()
    run.clock.advance(POLICY.cooldown_seconds - 0.5)
    assert await run.refused()
    assert run.state() is State.OPEN


@scenario
async def retry_after_longer_than_the_cooldown_extends_it(run: Run) -> None:
    await run.open(retry_after=20.0)
    run.clock.advance(19.5)
    assert await run.refused()
    run.clock.advance(0.5)
    assert (await run.permit()).probe


@scenario
async def retry_after_shorter_than_the_cooldown_does_not_shorten_it(run: Run) -> None:
    await run.open(retry_after=1.0)
    run.clock.advance(POLICY.cooldown_seconds - 0.5)
    assert await run.refused()
    run.clock.advance(0.5)
    assert (await run.permit()).probe


@scenario
async def retry_after_is_capped_at_max_cooldown(run: Run) -> None:
    await run.open(retry_after=3600.0)
    run.clock.advance(POLICY.max_cooldown_seconds - 0.5)
    assert await run.refused()
    run.clock.advance(0.5)
    assert (await run.permit()).probe


@scenario
async def half_open_lets_exactly_the_probes_through_at_once(run: Run) -> None:
    await run.half_open()
    probes = [await run.permit() for _ in range(POLICY.half_open_probes)]
    assert all(p.probe for p in probes)
    assert run.state() is State.HALF_OPEN
    assert await run.refused()
    assert await run.refused()
    assert run.state() is State.HALF_OPEN


@scenario
async def probe_success_closes_with_an_empty_window(run: Run) -> None:
    await run.half_open()
    probe = await run.permit()
    await run.breakers.record(probe, ok=True)
    assert run.state() is State.CLOSED
    # The failures that opened it are forgotten: it takes minimum_calls new ones.
    await run.fail(POLICY.minimum_calls - 1)
    assert run.state() is State.CLOSED
    await run.fail(1)
    assert run.state() is State.OPEN


@scenario
async def probe_failure_reopens(run: Run) -> None:
    await run.half_open()
    probe = await run.permit()
    await run.breakers.record(probe, ok=False)
    assert run.state() is State.OPEN
    assert await run.refused()
    run.clock.advance(POLICY.cooldown_seconds - 0.5)  # a full cool-down from the failure
    assert await run.refused()
    run.clock.advance(0.5)
    assert (await run.permit()).probe


@scenario
async def probe_failure_with_retry_after_reopens_for_longer(run: Run) -> None:
    await run.half_open()
    probe = await run.permit()
    await run.breakers.record(probe, ok=False, retry_after=30.0)
    run.clock.advance(29.5)
    assert await run.refused()
    run.clock.advance(0.5)
    assert (await run.permit()).probe


@scenario
async def releasing_a_probe_frees_its_slot_without_changing_state(run: Run) -> None:
    await run.half_open()
    first, second = await run.permit(), await run.permit()
    assert await run.refused()
    await run.breakers.release(first)
    assert run.state() is State.HALF_OPEN
    third = await run.permit()
    assert third.probe
    assert await run.refused()
    await run.breakers.release(second)
    await run.breakers.release(third)
    assert run.state() is State.HALF_OPEN
    assert run.changes()[-1] == ("open", "half_open")


@scenario
async def successes_in_the_window_dilute_the_failure_rate(run: Run) -> None:
    await run.calls(*[True] * 6)
    for failures in range(1, 6):
        await run.calls(False)  # at most 5 of 11 failed: below half
        assert run.state() is State.CLOSED, f"{failures} failures"
    await run.calls(False)  # 6 of 12
    assert run.state() is State.OPEN


@scenario
async def old_outcomes_slide_out_of_the_window(run: Run) -> None:
    await run.fail(POLICY.minimum_calls - 1)
    run.clock.advance(POLICY.window_seconds + 0.5)
    await run.fail(POLICY.minimum_calls - 1)  # the first ones no longer count
    assert run.state() is State.CLOSED
    await run.fail(1)
    assert run.state() is State.OPEN


@scenario
async def outcomes_of_calls_begun_before_it_opened_do_not_reopen_or_extend_it(run: Run) -> None:
    early = [await run.permit() for _ in range(3)]  # calls in flight while it opens
    await run.open()
    run.clock.advance(1.0)
    await run.breakers.record(early[0], ok=False, retry_after=3600.0)
    await run.breakers.record(early[1], ok=True)
    assert run.state() is State.OPEN
    run.clock.advance(POLICY.cooldown_seconds - 1.0)  # the cool-down from the opening
    probe = await run.permit()
    assert probe.probe
    # Half-open: an old call's failure neither reopens it nor takes a probe's place...
    await run.breakers.record(early[2], ok=False, retry_after=3600.0)
    assert run.state() is State.HALF_OPEN
    assert (await run.permit()).probe
    assert await run.refused()
    # ...and only a probe closes it.
    await run.breakers.record(probe, ok=True)
    assert run.state() is State.CLOSED


@scenario
async def every_state_change_sets_the_metric_and_logs_a_warning(run: Run) -> None:
    await run.calls(True, False, False)
    assert run.changes() == []
    await run.calls(False)
    assert run.state() is State.OPEN
    assert run.metric() == 2
    run.clock.advance(POLICY.cooldown_seconds)
    probe = await run.permit()
    assert run.metric() == 1
    await run.breakers.record(probe, ok=False)
    assert run.metric() == 2
    run.clock.advance(POLICY.cooldown_seconds)
    probe = await run.permit()
    assert run.metric() == 1
    await run.breakers.record(probe, ok=True)
    assert run.metric() == 0
    assert run.changes() == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    warnings = [r for r in run.caplog.records if r.getMessage() == CHANGE_MESSAGE]
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert all(getattr(r, "reason", "") for r in warnings)


def scenario_id(function: Scenario) -> str:
    return getattr(function, "__name__", "scenario")


@pytest.mark.parametrize("play", SCENARIOS, ids=scenario_id)
async def test_local_breaker(play: Scenario, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fenlo.llm.breaker")
    clock = FakeClock()
    await play(Run(LocalBreakers(POLICY, clock=clock), clock, unique_provider(), caplog))


async def test_providers_have_separate_breakers(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breakers = LocalBreakers(POLICY, clock=clock)
    sick = Run(breakers, clock, unique_provider("sick"), caplog)
    well = Run(breakers, clock, unique_provider("well"), caplog)
    await sick.open()
    assert await sick.refused()
    assert well.state() is State.CLOSED
    assert not await well.refused()
