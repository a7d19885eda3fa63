"""The embedded broker: ids, a bounded history, replay and its resets."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.events import Draft, Event


async def filled(n: int, history: int = 100) -> tuple[MemoryBroker, list[Event]]:
    broker = MemoryBroker(history, epoch="ep")
    events = await broker.publish([Draft(f"t:{i}") for i in range(n)])
    return broker, events


async def test_ids_are_epoch_and_strictly_increasing_sequence() -> None:
    broker, events = await filled(3)
    assert [e.id for e in events] == ["ep-1", "ep-2", "ep-3"]
    assert [e.pos for e in events] == [(1, 0), (2, 0), (3, 0)]
    assert broker.head_id() == "ep-3"


async def test_each_broker_draws_a_new_epoch() -> None:
    assert MemoryBroker().epoch != MemoryBroker().epoch
    assert MemoryBroker().head_id().endswith("-0")


async def test_dispatch_gets_new_events_in_order_after_storing_them() -> None:
    broker = MemoryBroker(10, epoch="ep")
    seen: list[tuple[str, int]] = []

    def dispatch(events: Sequence[Event]) -> None:
        seen.extend((e.id, broker.history_size()) for e in events)

    await broker.start(dispatch)
    await broker.publish([Draft("a"), Draft("b")])
    await broker.publish([Draft("c")])
    assert seen == [("ep-1", 2), ("ep-2", 2), ("ep-3", 3)]
    await broker.stop()
    await broker.publish([Draft("d")])
    assert len(seen) == 3


async def test_history_is_bounded() -> None:
    broker, _ = await filled(25, history=10)
    assert broker.history_size() == 10
    replay = await broker.replay("ep-15")
    assert [e.id for e in replay.events] == [f"ep-{i}" for i in range(16, 26)]


async def test_replay_returns_everything_after_the_id() -> None:
    broker, events = await filled(5)
    replay = await broker.replay("ep-2")
    assert replay.reset is None
    assert list(replay.events) == events[2:]


async def test_replay_from_before_the_first_event() -> None:
    broker, events = await filled(3)
    assert list((await broker.replay("ep-0")).events) == events


async def test_replay_at_the_head_is_empty() -> None:
    broker, _ = await filled(3)
    replay = await broker.replay("ep-3")
    assert replay.reset is None and list(replay.events) == []


async def test_replay_just_inside_and_just_outside_history() -> None:
    broker, _ = await filled(20, history=10)  # oldest kept: ep-11
    inside = await broker.replay("ep-10")
    assert inside.events[0].id == "ep-11" and len(inside.events) == 10
    outside = await broker.replay("ep-9")
    assert outside.reset == "history_expired" and not outside.events


@pytest.mark.parametrize(
    ("event_id", "reason"),
    [
        ("other-2", "epoch_changed"),
        ("ep-99", "unknown_id"),
        ("42", "unknown_id"),  # Plasma's per-connection counter
        ("0", "unknown_id"),
        ("ep-", "unknown_id"),
        ("-5", "unknown_id"),
        ("ep-x", "unknown_id"),
        ("ep-²", "unknown_id"),  # a Unicode digit int() refuses
        ("ep-" + "9" * 5000, "unknown_id"),
        ("ep-1.5", "unknown_id"),
    ],
)
async def test_unusable_ids_reset_with_a_reason(event_id: str, reason: str) -> None:
    broker, _ = await filled(3)
    replay = await broker.replay(event_id)
    assert replay.reset == reason
    assert replay.detail
    assert len(replay.detail) < 200


@pytest.mark.parametrize(
    ("event_id", "pos"),
    [
        ("ep-3", (3, 0)),
        ("ep-0", (0, 0)),
        ("other-3", None),
        ("42", None),
        ("ep-²", None),
        ("ep-" + "1" * 100, None),
    ],
)
async def test_position_of_ids(event_id: str, pos: tuple[int, int] | None) -> None:
    broker, _ = await filled(3)
    assert broker.position(event_id) == pos


def test_history_must_hold_an_event() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        MemoryBroker(0)


async def test_always_ready() -> None:
    assert MemoryBroker().ready()


async def test_history_is_bounded_by_bytes_too_the_newest_always_kept() -> None:
    """--history-bytes: the oldest events leave once their bytes exceed it."""
    broker = MemoryBroker(history=1000, history_bytes=50_000)
    big = Draft("a", '"' + "x" * 10_000 + '"')
    events = await broker.publish([big] * 10)
    assert broker.bytes <= 50_000
    assert 1 <= broker.history_size() < 10
    expired = await broker.replay(events[0].id)
    assert expired.reset == "history_expired"
    kept = await broker.replay(events[-broker.history_size() - 1].id)
    assert [e.id for e in kept.events] == [e.id for e in events[-broker.history_size() :]]
    huge = await broker.publish([Draft("a", '"' + "y" * 100_000 + '"')])
    assert broker.history_size() == 1 and (await broker.replay(events[-1].id)).events == huge


async def test_reset_details_truncate_a_long_epoch_or_id() -> None:
    broker = MemoryBroker(10)
    for bad in ("e" * 8000 + "-1", broker.epoch + "-" + "9" * 18):
        detail = (await broker.replay(bad)).detail
        assert len(detail) < 200, detail
