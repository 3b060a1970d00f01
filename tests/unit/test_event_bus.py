"""The in-process event bus: fan-out by type, each event id once, failing subscribers isolated."""

from __future__ import annotations

from fenlo_server.events.bus import EventBus, PublishedEvent, SeenIds


def event(event_id: str, type_: str = "turn.completed", seq: int = 1) -> PublishedEvent:
    return PublishedEvent(id=event_id, workspace_id="w1", seq=seq, type=type_)


async def test_subscribers_get_the_types_they_asked_for_once_per_id() -> None:
    bus = EventBus()
    everything: list[str] = []
    turns: list[str] = []

    async def all_events(e: PublishedEvent) -> None:
        everything.append(e.id)

    async def only_turns(e: PublishedEvent) -> None:
        turns.append(e.id)

    bus.subscribe("all", all_events)
    bus.subscribe("turns", only_turns, types=["turn.completed"])
    assert await bus.publish(event("a"))
    assert await bus.publish(event("b", "lead.qualified", 2))
    assert not await bus.publish(event("a"))  # the relay handed it over again
    assert everything == ["a", "b"]
    assert turns == ["a"]


async def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    bus = EventBus()
    got: list[str] = []

    async def broken(e: PublishedEvent) -> None:
        raise RuntimeError("boom")

    async def fine(e: PublishedEvent) -> None:
        got.append(e.id)

    bus.subscribe("broken", broken)
    bus.subscribe("fine", fine)
    await bus.publish(event("x"))
    assert got == ["x"]


async def test_closed_subscription_gets_nothing() -> None:
    bus = EventBus()
    got: list[str] = []

    async def handler(e: PublishedEvent) -> None:
        got.append(e.id)

    sub = bus.subscribe("h", handler)
    sub.close()
    await bus.publish(event("y"))
    assert got == []
    assert bus.subscribers == 0


def test_seen_ids_forget_the_oldest_beyond_capacity() -> None:
    seen = SeenIds(capacity=2)
    assert seen.add("a") and seen.add("b") and seen.add("c")
    assert "a" not in seen
    assert "b" in seen and "c" in seen
    assert not seen.add("c")
