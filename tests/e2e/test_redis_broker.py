"""RedisBroker in-process against a real redis-server: ids, dispatch, replay, resets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from cachewire.hub.brokers.base import ResetReason
from cachewire.hub.brokers.redis import RedisBroker
from cachewire.hub.core import Fanout
from cachewire.hub.errors import Unavailable
from cachewire.hub.events import Draft, Event
from cachewire.hub.settings import HubSettings
from tests.servers import Proc, free_port, start_redis
from tests.unit.hub.fakes import FakeSink

WAIT = 30.0


class Dispatched:
    """The dispatch and on_reset callbacks: records events (and, in `timeline`, ids and
    resets in the order they came), and lets a test wait for a given id."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.timeline: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, events: Sequence[Event]) -> None:
        self.events.extend(events)
        self.timeline.extend(e.id for e in events)
        self._changed.set()

    def on_reset(self, reason: ResetReason, detail: str) -> None:
        self.timeline.append(f"reset:{reason}")
        self._changed.set()

    async def wait_for(self, item: str) -> None:
        """Wait until an event id (or "reset:<reason>") is in the timeline."""

        async def seen() -> None:
            while item not in self.timeline:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(seen(), WAIT)


BrokerFactory = Callable[..., Any]


@pytest.fixture
async def broker(redis_server: Proc) -> AsyncIterator[BrokerFactory]:
    started: list[RedisBroker] = []

    async def make(**overrides: Any) -> tuple[RedisBroker, Dispatched]:
        settings = HubSettings(
            broker="redis", redis_url=f"redis://127.0.0.1:{redis_server.port}/0", **overrides
        )
        b, seen = RedisBroker(settings, replay_wait=0.5), Dispatched()
        await b.start(seen, seen.on_reset)
        started.append(b)
        return b, seen

    yield make
    for b in started:
        await b.stop()


def drafts(*types: str) -> list[Draft]:
    return [Draft(t, f'"{t}"') for t in types]


async def test_a_batch_gets_consecutive_ids_and_is_dispatched_once_in_order(
    broker: BrokerFactory,
) -> None:
    """Publish does not dispatch itself; the reader dispatches every entry, in order."""
    b, seen = await broker()
    assert b.head_id() == f"{b.epoch}-0-0"
    events = await b.publish(
        [
            Draft(
                "a:b",
                '{"x":1}',
                ("k1",),
                ("p:",),
                True,
                "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
                "v=1",
            ),
            *drafts("a", "c"),
        ]
    )
    ids = [e.id for e in events]
    assert all(i.startswith(b.epoch + "-") for i in ids)
    assert [e.pos for e in events] == sorted(e.pos for e in events)
    assert events[1].pos[0] == events[0].pos[0] or events[1].pos > events[0].pos
    await seen.wait_for(ids[-1])
    assert [e.id for e in seen.events] == ids
    first = seen.events[0]
    assert (first.type, first.data_json, first.keys, first.prefixes, first.flush) == (
        "a:b",
        '{"x":1}',
        ("k1",),
        ("p:",),
        True,
    )
    assert first.traceparent.startswith("00-111") and first.tracestate == "v=1"
    assert first.published_at == events[0].published_at
    assert b.head_id() == ids[-1] and b.position(ids[-1]) == events[-1].pos


async def test_two_brokers_on_one_stream_see_the_same_events(broker: BrokerFactory) -> None:
    a, seen_a = await broker()
    b, seen_b = await broker()
    assert a.epoch == b.epoch
    ids = [e.id for e in await a.publish(drafts("x", "y"))]
    ids += [e.id for e in await b.publish(drafts("z"))]
    await seen_a.wait_for(ids[-1])
    await seen_b.wait_for(ids[-1])
    assert [e.id for e in seen_a.events] == [e.id for e in seen_b.events] == ids


async def test_replay_returns_exactly_the_events_after_the_id(broker: BrokerFactory) -> None:
    b, seen = await broker()
    ids = [e.id for e in await b.publish(drafts("a", "b", "c", "d"))]
    await seen.wait_for(ids[-1])
    replay = await b.replay(ids[1])
    assert replay.reset is None
    assert [e.id for e in replay.events] == ids[2:]
    assert [e.type for e in replay.events] == ["c", "d"]
    assert (await b.replay(ids[-1])).events == []
    start = await b.replay(f"{b.epoch}-0-0")
    assert [e.id for e in start.events] == ids


@pytest.mark.parametrize("bad", ["", "nonsense", "abc-1", "abc-1-x", "e-²-1", "e--1-1"])
async def test_malformed_ids_get_unknown_id(broker: BrokerFactory, bad: str) -> None:
    b, _ = await broker()
    replay = await b.replay(bad)
    assert replay.reset == "unknown_id" and not replay.events
    assert b.position(bad) is None


async def test_other_epoch_and_future_ids_get_a_reset(broker: BrokerFactory) -> None:
    b, seen = await broker()
    ids = [e.id for e in await b.publish(drafts("a"))]
    await seen.wait_for(ids[0])
    assert (await b.replay("deadbeef-1-0")).reset == "epoch_changed"
    assert b.position("deadbeef-1-0") is None
    future = await b.replay(f"{b.epoch}-99999999999999-0")
    assert future.reset == "unknown_id" and "future" in future.detail


async def test_trimmed_history_gives_history_expired(broker: BrokerFactory) -> None:
    """MAXLEN ~ trims whole macro nodes (100 entries): publish well past it."""
    b, seen = await broker(history=10)
    ids = [e.id for e in await b.publish(drafts(*(f"t:{i}" for i in range(300))))]
    await seen.wait_for(ids[-1])
    assert (await b.replay(ids[0])).reset == "history_expired"
    kept = await b.replay(ids[-3])
    assert kept.reset is None and [e.id for e in kept.events] == ids[-2:]
    assert b.history_size() <= 300


async def test_a_lost_stream_gets_a_new_epoch(broker: BrokerFactory, redis_server: Proc) -> None:
    """FLUSHALL while connected: the next publish writes a new epoch; old ids reset."""
    b, seen = await broker()
    old = (await b.publish(drafts("a")))[0].id
    await seen.wait_for(old)
    client = aioredis.from_url(f"redis://127.0.0.1:{redis_server.port}/0")
    await client.flushall()
    await client.aclose()
    new = (await b.publish(drafts("b")))[0].id
    await seen.wait_for(new)
    assert new.split("-")[0] != old.split("-")[0]
    assert b.head_id() == new
    assert (await b.replay(old)).reset == "epoch_changed"
    assert seen.timeline == [old, "reset:epoch_changed", new]


async def test_a_replaced_epoch_resets_once_and_skips_entries_of_other_epochs(
    broker: BrokerFactory, redis_server: Proc
) -> None:
    """The epoch key deleted, the stream kept: the reader moves to the new epoch once, and
    reading it from the start skips entries of the old epoch and of one it never knew."""
    client = aioredis.from_url(f"redis://127.0.0.1:{redis_server.port}/0")
    stream = HubSettings().redis_stream
    await client.xadd(stream, {"epoch": "zombie", "type": "z", "data": "null"})
    await client.set(f"{stream}:epoch", "first")
    b, seen = await broker()
    old = (await b.publish(drafts("a")))[0].id
    await seen.wait_for(old)
    await client.delete(f"{stream}:epoch")
    await client.aclose()
    new = (await b.publish(drafts("b")))[0].id
    await seen.wait_for(new)
    assert old.startswith("first-") and new.split("-")[0] not in ("first", "zombie")
    assert seen.timeline == [old, "reset:epoch_changed", new]
    assert b.head_id() == new


async def test_publish_while_redis_is_down_raises_unavailable(
    broker: BrokerFactory, redis_server: Proc
) -> None:
    b, _ = await broker()
    redis_server.kill()
    with pytest.raises(Unavailable, match="redis is unavailable"):
        await b.publish(drafts("a"))
    replay = await b.replay(b.head_id())
    assert replay.reset == "history_expired" and "redis" in replay.detail
    assert not b.ready()


async def test_a_broker_started_while_redis_is_down_returns_and_connects_later(
    procs: list[Proc],
) -> None:
    """start() returns not ready (no position, publish refused, resume reset); once Redis
    answers the reader connects, tells on_reset, and events flow."""
    port = free_port()
    settings = HubSettings(broker="redis", redis_url=f"redis://127.0.0.1:{port}/0")
    b, seen = RedisBroker(settings, replay_wait=0.2), Dispatched()
    await b.start(seen, seen.on_reset)
    try:
        assert not b.ready() and b.head_id() == ""
        with pytest.raises(Unavailable, match="redis is unavailable"):
            await b.publish(drafts("a"))
        assert (await b.replay("e-1-0")).reset == "history_expired"
        procs.append(start_redis(port))
        await seen.wait_for("reset:epoch_changed")
        assert b.ready() and seen.timeline == ["reset:epoch_changed"]
        assert b.head_id() == f"{b.epoch}-0-0"
        event = (await b.publish(drafts("b")))[0]
        await seen.wait_for(event.id)
        assert seen.timeline == ["reset:epoch_changed", event.id]
    finally:
        await b.stop()


async def test_a_resume_while_redis_is_not_reached_yet_replays_once_it_is(
    procs: list[Proc], tmp_path: Path
) -> None:
    """A hub started while a persistent Redis is down: a subscriber resuming meanwhile is
    replayed from its id when Redis answers, not reset."""
    redis = start_redis(persist_dir=tmp_path)
    procs.append(redis)
    settings = HubSettings(broker="redis", redis_url=f"redis://127.0.0.1:{redis.port}/0")
    first, seen = RedisBroker(settings), Dispatched()
    await first.start(seen)
    ids = [e.id for e in await first.publish(drafts("t:1", "t:2"))]
    await first.stop()
    redis.stop()

    b = RedisBroker(settings, replay_wait=WAIT)
    fanout = Fanout(b)
    await b.start(fanout.dispatch, fanout.reset_all)
    try:
        assert not b.ready()
        sink = FakeSink()
        resume = asyncio.create_task(fanout.subscribe(frozenset(["t"]), sink, ids[0]))
        await asyncio.sleep(0)  # the subscription registers, then waits for Redis
        assert fanout.count() == 1 and not resume.done()
        procs.append(start_redis(redis.port, persist_dir=tmp_path))
        await asyncio.wait_for(resume, WAIT)
        assert sink.resets == [] and [e.id for e in sink.replayed] == ids[1:]
        assert fanout.last_id == ids[1]
    finally:
        await b.stop()


# --- n: each entry's place in its epoch, for the reader's gap detection ---


async def places(client: aioredis.Redis) -> list[tuple[str, str | None]]:
    """(epoch, n) of every entry in the stream, oldest first."""
    entries = await client.xrange(HubSettings().redis_stream)
    return [(f.get("epoch", ""), f.get("n")) for _, f in entries]


async def test_entries_count_their_place_in_the_epoch_across_batches_and_brokers(
    broker: BrokerFactory, redis_server: Proc
) -> None:
    a, seen_a = await broker()
    b, seen_b = await broker()
    await a.publish(drafts("x", "y"))
    last = (await b.publish(drafts("z")))[0].id
    last = (await a.publish(drafts("w", "v")))[-1].id
    await seen_a.wait_for(last)
    await seen_b.wait_for(last)
    client = aioredis.from_url(f"redis://127.0.0.1:{redis_server.port}/0", decode_responses=True)
    try:
        assert await places(client) == [(a.epoch, str(n)) for n in range(1, 6)]
        assert await client.get(a.seq_key) == "5"
    finally:
        await client.aclose()
    assert "reset:history_expired" not in seen_a.timeline + seen_b.timeline
    assert a.gaps == b.gaps == 0


async def test_a_lost_counter_continues_and_a_new_epoch_counts_from_one(
    broker: BrokerFactory, redis_server: Proc
) -> None:
    """The counter key deleted: n continues from the last entry. The epoch key deleted (a
    new epoch, the stream kept) or everything lost: the new epoch counts from 1, and its
    readers reset for the new epoch only (no history_expired)."""
    b, seen = await broker()
    client = aioredis.from_url(f"redis://127.0.0.1:{redis_server.port}/0", decode_responses=True)
    try:
        await b.publish(drafts("a", "b"))
        await client.delete(b.seq_key)
        await b.publish(drafts("c"))
        first = b.epoch
        assert await places(client) == [(first, "1"), (first, "2"), (first, "3")]
        await client.delete(b.epoch_key)
        new = (await b.publish(drafts("d", "e")))[-1].id
        await seen.wait_for(new)
        assert (await places(client))[3:] == [(b.epoch, "1"), (b.epoch, "2")]
        await client.flushall()
        newer = (await b.publish(drafts("f")))[-1].id
        await seen.wait_for(newer)
        assert await places(client) == [(b.epoch, "1")]
    finally:
        await client.aclose()
    assert seen.timeline.count("reset:epoch_changed") == 2
    assert "reset:history_expired" not in seen.timeline and b.gaps == 0


async def test_entries_of_an_older_hub_without_n_break_nothing(
    broker: BrokerFactory, redis_server: Proc
) -> None:
    """A stream written by a hub from before `n` (and one still writing, mid-upgrade): the
    broker counts from 1 and its reader resets nobody."""
    client = aioredis.from_url(f"redis://127.0.0.1:{redis_server.port}/0", decode_responses=True)
    stream = HubSettings().redis_stream
    try:
        await client.xadd(stream, {"epoch": "old1", "type": "a", "data": "null"})
        await client.set(f"{stream}:epoch", "old1")
        b, seen = await broker()
        await b.publish(drafts("a"))
        legacy = await client.xadd(stream, {"epoch": "old1", "type": "a", "data": "1"})
        last = (await b.publish(drafts("b")))[0].id
        await seen.wait_for(last)
        assert await places(client) == [
            ("old1", None),
            ("old1", "1"),
            ("old1", None),
            ("old1", "2"),
        ]
    finally:
        await client.aclose()
    assert seen.timeline[1] == f"old1-{legacy}" and "reset:history_expired" not in seen.timeline
