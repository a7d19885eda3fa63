"""The fan-out core without I/O: matching, de-duplication, resume seam, slow consumers."""

from __future__ import annotations

import asyncio

import pytest

from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.core import Fanout
from cachewire.hub.events import Draft
from tests.unit.hub.fakes import AheadBroker, FakeSink, GatedBroker


async def started(broker: MemoryBroker | None = None, queue_size: int = 100) -> Fanout:
    broker = broker or MemoryBroker(1000, epoch="e")
    fanout = Fanout(broker, queue_size)
    await broker.start(fanout.dispatch)
    return fanout


async def publish(fanout: Fanout, *types: str) -> list[str]:
    events = await fanout.broker.publish([Draft(t) for t in types])
    return [e.id for e in events]


def types(sink: FakeSink) -> list[str]:
    return [e.type for e in sink.replayed + sink.events]


@pytest.mark.parametrize(
    ("topic", "received"),
    [
        ("a", ["a", "a:b", "a:b:c", "a:bcd"]),
        ("a:b", ["a:b", "a:b:c"]),
        ("a:b:c", ["a:b:c"]),
        ("b", ["b"]),
        ("a:bc", []),
    ],
)
async def test_topic_matches_itself_and_deeper_types_only(topic: str, received: list[str]) -> None:
    """Plasma's rule: a topic receives its own type and every type below it, by segment."""
    fanout = await started()
    sink = FakeSink()
    await fanout.subscribe(frozenset([topic]), sink)
    await publish(fanout, "a", "a:b", "a:b:c", "b", "ab", "a:bcd")
    assert types(sink) == received


async def test_overlapping_topics_receive_each_event_once() -> None:
    """A subscriber to a, a:b and a:b:c gets a:b:c once (Plasma sends it three times)."""
    fanout = await started()
    sink = FakeSink()
    await fanout.subscribe(frozenset(["a", "a:b", "a:b:c"]), sink)
    ids = await publish(fanout, "a:b:c", "a:b", "a")
    assert sink.ids() == ids
    assert fanout.deliveries == 3


async def test_every_matching_subscriber_gets_the_same_event_object() -> None:
    """The event is shared, not copied, so its wire encoding is computed once."""
    fanout = await started()
    sinks = [FakeSink() for _ in range(3)]
    for sink, topic in zip(sinks, ["x", "x:y", "x:y:z"], strict=True):
        await fanout.subscribe(frozenset([topic]), sink)
    await publish(fanout, "x:y:z")
    assert sinks[0].events[0] is sinks[1].events[0] is sinks[2].events[0]


async def test_unsubscribe_leaves_no_empty_topic_tables() -> None:
    """Plasma never deletes per-type tables; the index here shrinks back to nothing."""
    fanout = await started()
    subs = [
        await fanout.subscribe(frozenset([f"program:{i}:views", "all"]), FakeSink())
        for i in range(50)
    ]
    assert fanout.topic_count() == 51
    for sub in subs:
        fanout.unsubscribe(sub)
        fanout.unsubscribe(sub)  # twice is harmless
    assert fanout.topic_count() == 0
    assert fanout.count() == 0


async def test_unsubscribed_sink_receives_nothing_more() -> None:
    fanout = await started()
    sink = FakeSink()
    sub = await fanout.subscribe(frozenset(["a"]), sink)
    await publish(fanout, "a")
    fanout.unsubscribe(sub)
    await publish(fanout, "a")
    assert len(sink.events) == 1


async def test_retopic_replaces_the_whole_set() -> None:
    """Plasma's gRPC Request semantics: a later request replaces the subscription."""
    fanout = await started()
    sink = FakeSink()
    sub = await fanout.subscribe(frozenset(["a"]), sink)
    fanout.retopic(sub, frozenset(["b"]))
    await publish(fanout, "a", "b")
    assert types(sink) == ["b"]
    assert fanout.topic_count() == 1


async def test_slow_subscriber_is_reset_and_dropped_alone() -> None:
    """A full queue resets and disconnects that subscriber; the others miss nothing."""
    fanout = await started()
    slow, fast = FakeSink(kind="sse", capacity=2), FakeSink(kind="sse")
    await fanout.subscribe(frozenset(["t"]), slow)
    await fanout.subscribe(frozenset(["t"]), fast)
    ids = await publish(fanout, *["t"] * 5)
    assert fast.ids() == ids
    assert slow.ids() == ids[:2]
    assert [r[0] for r in slow.resets] == ["slow_consumer"]
    assert slow.closed and not fast.closed
    assert fanout.slow_drops["sse"] == 1
    assert fanout.count() == 1


async def test_resume_replays_then_goes_live_without_gap_or_duplicate() -> None:
    fanout = await started()
    ids = await publish(fanout, "t", "other", "t:x", "t")
    sink = FakeSink()
    await fanout.subscribe(frozenset(["t"]), sink, resume_from=ids[0])
    live = await publish(fanout, "t")
    assert [e.id for e in sink.replayed] == [ids[2], ids[3]]
    assert sink.ids() == [ids[2], ids[3], *live]
    assert sink.resets == []


async def test_resume_from_the_head_replays_nothing() -> None:
    fanout = await started()
    ids = await publish(fanout, "t", "t")
    sink = FakeSink()
    await fanout.subscribe(frozenset(["t"]), sink, resume_from=ids[-1])
    live = await publish(fanout, "t")
    assert sink.ids() == live


async def test_publishes_racing_a_resume_arrive_once_in_order() -> None:
    """Events published while the replay is in flight wait, then follow it: no gap, no dup."""
    broker = GatedBroker()
    fanout = await started(broker)
    before = await publish(fanout, "t", "t", "t")
    sink = FakeSink()
    task = asyncio.create_task(fanout.subscribe(frozenset(["t"]), sink, resume_from=before[0]))
    await broker.replay_started.wait()
    during = await publish(fanout, "t", "u", "t")
    assert sink.ids() == []  # held back until the replay is handed over
    broker.release.set()
    await task
    after = await publish(fanout, "t")
    assert sink.ids() == [*before[1:], during[0], during[2], *after]


async def test_replay_ahead_of_dispatch_is_not_delivered_twice() -> None:
    """With a shared broker a replay can see events not yet dispatched here: skip those."""
    broker = AheadBroker()
    fanout = await started(broker)
    first = await publish(fanout, "t")
    broker.deliver_pending()
    ahead = await publish(fanout, "t", "t")  # stored, not dispatched yet
    sink = FakeSink()
    await fanout.subscribe(frozenset(["t"]), sink, resume_from=first[0])
    assert [e.id for e in sink.replayed] == ahead
    later = await publish(fanout, "t")
    broker.deliver_pending()
    assert sink.ids() == [*ahead, *later]


async def test_resume_buffer_overflow_drops_the_subscriber() -> None:
    """Live events held during a replay are bounded by the queue size too."""
    broker = GatedBroker()
    fanout = await started(broker, queue_size=3)
    first = await publish(fanout, "t")
    sink = FakeSink(kind="sse")
    task = asyncio.create_task(fanout.subscribe(frozenset(["t"]), sink, resume_from=first[0]))
    await broker.replay_started.wait()
    await publish(fanout, *["t"] * 5)
    broker.release.set()
    await task
    assert [r[0] for r in sink.resets] == ["slow_consumer"]
    assert sink.closed
    assert fanout.count() == 0


async def test_cancelled_resume_leaves_no_subscription() -> None:
    """A client that leaves during its replay is not left in the index."""
    broker = GatedBroker()
    fanout = await started(broker)
    first = await publish(fanout, "t")
    task = asyncio.create_task(fanout.subscribe(frozenset(["t"]), FakeSink(), first[0]))
    await broker.replay_started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fanout.count() == 0
    assert fanout.topic_count() == 0


@pytest.mark.parametrize(
    ("resume_from", "reason"),
    [
        ("other-1", "epoch_changed"),
        ("42", "unknown_id"),
        ("e-999", "unknown_id"),
    ],
)
async def test_unusable_resume_id_resets_then_goes_live(resume_from: str, reason: str) -> None:
    """The reset carries the head at subscription: live events after it follow."""
    fanout = await started()
    await publish(fanout, "t", "t")
    sink = FakeSink()
    await fanout.subscribe(frozenset(["t"]), sink, resume_from=resume_from)
    live = await publish(fanout, "t")
    assert [(r[0], r[2]) for r in sink.resets] == [(reason, "e-2")]
    assert sink.ids() == live


async def test_resume_older_than_history_resets() -> None:
    fanout = await started(MemoryBroker(3, epoch="e"))
    ids = await publish(fanout, *["t"] * 6)
    sink = FakeSink()
    await fanout.subscribe(frozenset(["t"]), sink, resume_from=ids[1])
    assert [(r[0], r[2]) for r in sink.resets] == [("history_expired", ids[-1])]
    assert sink.replayed == []


async def test_reset_during_replay_keeps_events_published_meanwhile() -> None:
    """Events dispatched while a failing resume was checked follow the reset."""
    broker = GatedBroker()
    fanout = await started(broker)
    await publish(fanout, "t")
    sink = FakeSink()
    task = asyncio.create_task(fanout.subscribe(frozenset(["t"]), sink, resume_from="old-5"))
    await broker.replay_started.wait()
    during = await publish(fanout, "t")
    broker.release.set()
    await task
    assert sink.resets[0][0] == "epoch_changed"
    assert sink.ids() == during


async def test_wait_subscribers_returns_once_registered() -> None:
    fanout = await started()
    waiter = asyncio.create_task(fanout.wait_subscribers(2, kind="fake"))
    await fanout.subscribe(frozenset(["a"]), FakeSink())
    assert not waiter.done()
    await fanout.subscribe(frozenset(["b"]), FakeSink())
    async with asyncio.timeout(10):
        await waiter


async def test_heartbeat_reaches_only_the_given_transports() -> None:
    fanout = await started()
    sse, grpc = FakeSink(kind="sse"), FakeSink(kind="grpc")
    await fanout.subscribe(frozenset(["a"]), sse)
    await fanout.subscribe(frozenset(["a"]), grpc)
    ids = await publish(fanout, "z")
    fanout.heartbeat(["sse"])
    assert sse.heartbeats == ids
    assert grpc.heartbeats == []


async def test_close_all_closes_every_sink() -> None:
    fanout = await started()
    sinks = [FakeSink() for _ in range(3)]
    for sink in sinks:
        await fanout.subscribe(frozenset(["a"]), sink)
    fanout.close_all()
    assert all(s.closed for s in sinks)
    assert fanout.count() == 0


# --- a new epoch while subscribers are connected (Fanout.reset_all) ---


def lose_history(broker: MemoryBroker, epoch: str) -> None:
    """What a broker whose history was lost does before it calls on_reset."""
    broker.epoch, broker._head = epoch, 0


async def test_a_new_epoch_resets_live_subscribers_who_then_go_on() -> None:
    """Each subscriber is reset to the new epoch's start; live events follow; heartbeats and
    the seam of later subscribers carry the new head at once."""
    broker = MemoryBroker(1000, epoch="e")
    fanout = await started(broker)
    old = await publish(fanout, "t")
    sinks = [FakeSink(), FakeSink()]
    for sink in sinks:
        await fanout.subscribe(frozenset(["t"]), sink)
    lose_history(broker, "f")
    fanout.reset_all("epoch_changed", "lost")
    assert fanout.last_id == "f-0" and fanout.last_pos == (0, 0)
    fanout.heartbeat(["fake"])
    new = await publish(fanout, "t", "t")
    for sink in sinks:
        assert sink.resets == [("epoch_changed", "lost", "f-0")]
        assert sink.heartbeats == ["f-0"]
        assert sink.ids() == new
        assert not sink.closed
    assert old[0].startswith("e-") and fanout.count() == 2


async def test_a_new_epoch_during_a_replay_replaces_the_replay_with_a_reset() -> None:
    """A resume replaying the old epoch when it ends gets the reset instead of the replay,
    then the new epoch's events published meanwhile, in order."""
    broker = GatedBroker()
    fanout = await started(broker)
    before = await publish(fanout, "t", "t")
    sink = FakeSink()
    task = asyncio.create_task(fanout.subscribe(frozenset(["t"]), sink, resume_from=before[0]))
    await broker.replay_started.wait()
    await publish(fanout, "t")  # old epoch, held for the replay: void now
    lose_history(broker, "f")
    fanout.reset_all("epoch_changed", "lost")
    during = await publish(fanout, "t")
    broker.release.set()
    await task
    after = await publish(fanout, "t")
    assert sink.resets == [("epoch_changed", "lost", "f-0")]
    assert sink.replayed == []
    assert sink.ids() == [*during, *after] == ["f-1", "f-2"]


async def test_a_new_epoch_while_skipping_a_replay_ahead_goes_live_at_once() -> None:
    """A subscriber waiting for dispatch to catch up with its replay stops waiting."""
    broker = AheadBroker()
    fanout = await started(broker)
    first = await publish(fanout, "t")
    broker.deliver_pending()
    await publish(fanout, "t")  # replayed, never dispatched (the history was lost)
    sink = FakeSink()
    await fanout.subscribe(frozenset(["t"]), sink, resume_from=first[0])
    lose_history(broker, "f")
    broker._held.clear()
    fanout.reset_all("epoch_changed", "lost")
    new = await publish(fanout, "t")
    broker.deliver_pending()
    assert [r[2] for r in sink.resets] == ["f-0"]
    assert [e.id for e in sink.events] == new == ["f-1"]


async def test_a_resume_begun_before_any_position_was_known_replays_after_it() -> None:
    """A broker that had not reached its backend (head "") gets there during a resume: the
    replay, read against the now known head, is delivered; nothing is reset."""
    broker = GatedBroker()
    fanout = await started(broker)
    before = await publish(fanout, "t", "t")
    fanout.last_id = ""  # as a Redis broker reports it before Redis answered
    sink, waiting = FakeSink(), FakeSink()
    await fanout.subscribe(frozenset(["t"]), waiting)
    task = asyncio.create_task(fanout.subscribe(frozenset(["t"]), sink, resume_from=before[0]))
    await broker.replay_started.wait()
    fanout.reset_all("epoch_changed", "reached")
    during = await publish(fanout, "t")
    broker.release.set()
    await task
    assert sink.resets == []
    assert sink.ids() == [before[1], *during]
    assert waiting.resets == [("epoch_changed", "reached", before[1])]  # it had no position
    assert waiting.ids() == during
