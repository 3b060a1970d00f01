"""Circuit breakers for LLM providers.

One breaker per provider. CLOSED: calls go through and their outcomes fill a
sliding time window; once the window holds at least ``minimum_calls`` and the
failure rate reaches ``failure_rate``, the breaker OPENs. OPEN: calls are
refused until the cool-down (at least the provider's ``Retry-After``) has
passed. HALF_OPEN: at most ``half_open_probes`` calls go through at a time;
a probe's success CLOSEs the breaker (with an empty window), its failure
OPENs it again. Outcomes that say nothing about the provider's health (a
refused request, a caller that went away) only release the call's slot.

:class:`LocalBreakers` keeps the state in this process. :class:`RedisBreakers`
shares it between replicas through Redis (one Lua script per transition, so
replicas agree) and falls back to its local breakers while Redis is away.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from fenlo_server import metrics

log = logging.getLogger("fenlo.llm.breaker")


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


STATE_VALUE = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_rate: float = 0.5
    minimum_calls: int = 5
    window_seconds: float = 30.0
    cooldown_seconds: float = 15.0
    half_open_probes: int = 1
    max_cooldown_seconds: float = 300.0  # a Retry-After longer than this is capped
    # A shared probe slot whose holder never reported back (a replica that died,
    # Redis away at the wrong moment) is given back after this long.
    probe_lease_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class Permit:
    """Permission for one call; ``probe`` when it is a half-open probe, ``local``
    when a shared breaker granted it from its local state (Redis was away)."""

    provider: str
    probe: bool
    local: bool = False


class Breakers(Protocol):
    async def acquire(self, provider: str) -> Permit | None: ...

    async def record(self, permit: Permit, ok: bool, retry_after: float | None = None) -> None: ...

    async def release(self, permit: Permit) -> None: ...

    def state(self, provider: str) -> State: ...


def _note_change(provider: str, old: State, new: State, reason: str) -> None:
    if old is new:
        return
    metrics.LLM_BREAKER_STATE.labels(provider).set(STATE_VALUE[new])
    log.warning(
        "llm circuit breaker changed state",
        extra={"provider": provider, "from": old.value, "to": new.value, "reason": reason},
    )


@dataclass
class _Breaker:
    policy: BreakerPolicy
    state: State = State.CLOSED
    open_until: float = 0.0
    probes: int = 0
    calls: deque[tuple[float, bool]] = field(default_factory=deque)

    def _trim(self, now: float) -> None:
        horizon = now - self.policy.window_seconds
        while self.calls and self.calls[0][0] < horizon:
            self.calls.popleft()

    def acquire(self, now: float) -> tuple[bool, bool, str]:
        """(allowed, probe, reason of a state change or "")."""
        changed = ""
        if self.state is State.OPEN and now >= self.open_until:
            self.state, self.probes, changed = State.HALF_OPEN, 0, "cool-down over"
        if self.state is State.CLOSED:
            return True, False, changed
        if self.state is State.HALF_OPEN and self.probes < self.policy.half_open_probes:
            self.probes += 1
            return True, True, changed
        return False, False, changed

    def record(self, now: float, ok: bool, probe: bool, retry_after: float | None) -> str:
        """Record an outcome; return the reason of a state change, or ""."""
        policy = self.policy
        if probe and self.state is State.HALF_OPEN:
            self.probes = max(self.probes - 1, 0)
            if ok:
                self.state = State.CLOSED
                self.calls.clear()
                return "probe succeeded"
            self._open(now, retry_after)
            return "probe failed"
        if self.state is not State.CLOSED:
            return ""  # a call that began before the breaker opened
        self.calls.append((now, ok))
        self._trim(now)
        if ok:
            return ""
        failures = sum(1 for _, good in self.calls if not good)
        if len(self.calls) >= policy.minimum_calls and failures / len(self.calls) >= (
            policy.failure_rate
        ):
            self._open(now, retry_after)
            return f"{failures} failures in {len(self.calls)} calls"
        return ""

    def _open(self, now: float, retry_after: float | None) -> None:
        cooldown = max(self.policy.cooldown_seconds, retry_after or 0.0)
        self.state = State.OPEN
        self.open_until = now + min(cooldown, self.policy.max_cooldown_seconds)
        self.probes = 0

    def release(self, probe: bool) -> None:
        if probe and self.state is State.HALF_OPEN:
            self.probes = max(self.probes - 1, 0)


class LocalBreakers:
    """Breakers whose state lives in this process."""

    def __init__(
        self,
        policy: BreakerPolicy,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, State, State, str], None] = _note_change,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._on_change = on_change
        self._breakers: dict[str, _Breaker] = {}

    def _get(self, provider: str) -> _Breaker:
        breaker = self._breakers.get(provider)
        if breaker is None:
            breaker = self._breakers[provider] = _Breaker(self.policy)
        return breaker

    def acquire_now(self, provider: str) -> Permit | None:
        breaker = self._get(provider)
        old = breaker.state
        allowed, probe, reason = breaker.acquire(self._clock())
        self._on_change(provider, old, breaker.state, reason)
        return Permit(provider, probe) if allowed else None

    def record_now(self, permit: Permit, ok: bool, retry_after: float | None = None) -> None:
        breaker = self._get(permit.provider)
        old = breaker.state
        reason = breaker.record(self._clock(), ok, permit.probe, retry_after)
        self._on_change(permit.provider, old, breaker.state, reason)

    async def acquire(self, provider: str) -> Permit | None:
        return self.acquire_now(provider)

    async def record(self, permit: Permit, ok: bool, retry_after: float | None = None) -> None:
        self.record_now(permit, ok, retry_after)

    async def release(self, permit: Permit) -> None:
        self._get(permit.provider).release(permit.probe)

    def state(self, provider: str) -> State:
        return self._get(provider).state


# Redis keys: {prefix}{provider} is a hash (state, open_until, probes);
# {prefix}{provider}:calls a sorted set of outcomes scored by time.
_ACQUIRE = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local max_probes = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local state = redis.call('HGET', key, 'state') or 'closed'
local changed = ''
if state == 'open' and now >= tonumber(redis.call('HGET', key, 'open_until') or '0') then
  state = 'half_open'
  redis.call('HSET', key, 'state', state, 'probes', 0)
  changed = 'cool-down over'
end
if state == 'closed' then return {1, 0, state, changed} end
if state == 'half_open' then
  local probes = tonumber(redis.call('HGET', key, 'probes') or '0')
  if probes >= max_probes and now >= tonumber(redis.call('HGET', key, 'probe_until') or '0') then
    probes = 0  -- the probes' holders never reported back: their leases are over
  end
  if probes < max_probes then
    redis.call('HSET', key, 'probes', probes + 1, 'probe_until', now + lease)
    return {1, 1, state, changed}
  end
end
return {0, 0, state, changed}
"""

_RECORD = """
local key, calls = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
local ok = ARGV[2] == '1'
local probe = ARGV[3] == '1'
local retry_after = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local minimum = tonumber(ARGV[6])
local rate = tonumber(ARGV[7])
local cooldown = tonumber(ARGV[8])
local max_cooldown = tonumber(ARGV[9])
local member = ARGV[10]
local ttl = math.ceil(window * 2 + max_cooldown) * 1000
local state = redis.call('HGET', key, 'state') or 'closed'
local function open()
  local wait = math.min(math.max(cooldown, retry_after), max_cooldown)
  redis.call('HSET', key, 'state', 'open', 'open_until', now + wait, 'probes', 0)
  redis.call('PEXPIRE', key, ttl)
end
if probe and state == 'half_open' then
  local probes = tonumber(redis.call('HGET', key, 'probes') or '1')
  redis.call('HSET', key, 'probes', math.max(probes - 1, 0))
  if ok then
    redis.call('HSET', key, 'state', 'closed')
    redis.call('DEL', calls)
    return {'closed', 'probe succeeded'}
  end
  open()
  return {'open', 'probe failed'}
end
if state ~= 'closed' then return {state, ''} end
redis.call('ZADD', calls, now, member .. (ok and ':1' or ':0'))
redis.call('ZREMRANGEBYSCORE', calls, '-inf', now - window)
redis.call('PEXPIRE', calls, ttl)
if ok then return {state, ''} end
local all = redis.call('ZRANGE', calls, 0, -1)
local failures = 0
for _, m in ipairs(all) do
  if string.sub(m, -2) == ':0' then failures = failures + 1 end
end
if #all >= minimum and failures / #all >= rate then
  open()
  return {'open', failures .. ' failures in ' .. #all .. ' calls'}
end
return {state, ''}
"""

_RELEASE = """
local key = KEYS[1]
if redis.call('HGET', key, 'state') == 'half_open' then
  local probes = tonumber(redis.call('HGET', key, 'probes') or '0')
  redis.call('HSET', key, 'probes', math.max(probes - 1, 0))
end
return 1
"""


class RedisBreakers:
    """Breakers shared by every replica through Redis, local while Redis is away.

    A CLOSED state read from Redis is trusted for ``sync_seconds`` without asking
    again, so the common path costs no round trip; any other state is asked for.
    Every outcome is also kept in local breakers, which take over (with that
    history) when Redis does not answer; Redis is tried again after a back-off.
    """

    def __init__(
        self,
        redis: Any,
        policy: BreakerPolicy,
        *,
        prefix: str = "fenlo:llm:breaker:",
        sync_seconds: float = 0.5,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self.policy = policy
        self._prefix = prefix
        self._sync = sync_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._down_until = 0.0
        self._backoff = 0.5
        # The local breakers shadow every outcome; their state changes are news
        # only while they are the ones deciding (Redis away).
        self.local = LocalBreakers(policy, clock=monotonic, on_change=self._local_change)
        self._seen: dict[str, tuple[State, float]] = {}
        # The state last reported (metric and log) per provider: Redis's while it
        # answers, the local breakers' while it is away.
        self._shown: dict[str, State] = {}
        self._acquire = redis.register_script(_ACQUIRE)
        self._record = redis.register_script(_RECORD)
        self._release = redis.register_script(_RELEASE)

    def _local_change(self, provider: str, old: State, new: State, reason: str) -> None:
        if not self.redis_available:
            # The local breakers decide: report their state (which may differ from
            # the one last seen in Redis even when this call did not change it).
            self._show(provider, new, f"{reason or 'local state'} (local: redis away)")

    def _show(self, provider: str, state: State, reason: str) -> None:
        old = self._shown.get(provider, State.CLOSED)
        self._shown[provider] = state
        _note_change(provider, old, state, reason)

    @property
    def redis_available(self) -> bool:
        return self._monotonic() >= self._down_until

    def _failed(self, error: Exception) -> None:
        if self.redis_available:
            log.warning(
                "redis unavailable for circuit breakers; using local state",
                extra={"error": repr(error), "retry_in_seconds": self._backoff},
            )
            metrics.REDIS_AVAILABLE.set(0)
        self._down_until = self._monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 10.0)

    def _succeeded(self) -> None:
        if self._backoff != 0.5:
            log.info("redis is back for circuit breakers")
            metrics.REDIS_AVAILABLE.set(1)
        self._backoff = 0.5

    def _remember(self, provider: str, state: State, reason: str) -> None:
        self._seen[provider] = (state, self._monotonic())
        self._show(provider, state, reason or "seen in redis")

    async def acquire(self, provider: str) -> Permit | None:
        seen = self._seen.get(provider)
        if (
            seen is not None
            and seen[0] is State.CLOSED
            and (self._monotonic() - seen[1] < self._sync)
        ):
            return Permit(provider, False)
        if self.redis_available:
            try:
                allowed, probe, state, reason = await self._acquire(
                    keys=[self._prefix + provider],
                    args=[
                        self._clock(),
                        self.policy.half_open_probes,
                        self.policy.probe_lease_seconds,
                    ],
                )
            except Exception as error:  # any Redis trouble: fall back, never fail the call
                self._failed(error)
            else:
                self._succeeded()
                self._remember(provider, State(_text(state)), _text(reason))
                return Permit(provider, bool(probe)) if allowed else None
        permit = self.local.acquire_now(provider)
        return replace(permit, local=True) if permit is not None else None

    async def record(self, permit: Permit, ok: bool, retry_after: float | None = None) -> None:
        self.local.record_now(permit, ok, retry_after)
        if permit.local or not self.redis_available:
            return
        policy = self.policy
        try:
            state, reason = await self._record(
                keys=[self._prefix + permit.provider, self._prefix + permit.provider + ":calls"],
                args=[
                    self._clock(),
                    "1" if ok else "0",
                    "1" if permit.probe else "0",
                    retry_after or 0,
                    policy.window_seconds,
                    policy.minimum_calls,
                    policy.failure_rate,
                    policy.cooldown_seconds,
                    policy.max_cooldown_seconds,
                    uuid.uuid4().hex,
                ],
            )
        except Exception as error:
            self._failed(error)
        else:
            self._succeeded()
            self._remember(permit.provider, State(_text(state)), _text(reason))

    async def release(self, permit: Permit) -> None:
        if permit.local:
            await self.local.release(permit)
            return
        if permit.probe and self.redis_available:
            try:
                await self._release(keys=[self._prefix + permit.provider], args=[])
            except Exception as error:
                self._failed(error)

    def state(self, provider: str) -> State:
        if not self.redis_available:
            return self.local.state(provider)
        seen = self._seen.get(provider)
        return seen[0] if seen else State.CLOSED


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
