"""SSE resume over real HTTP: Last-Event-ID and ?lastEventId=, the seam, and resets."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from cachewire.hub.server import Hub
from tests.sse_wire import SseClient, parse_frame
from tests.unit.hub.sse_helpers import HubFactory, publish, received_until, start, subscribe


def last_event_id(value: str) -> dict[str, Any]:
    return {"headers": [("Last-Event-ID", value)]}


async def test_resume_with_last_event_id_header(hub_factory: HubFactory) -> None:
    """The replay comes right after `retry:` (no head frame), then live events follow."""
    hub = await start(hub_factory)
    ids = await publish(hub, [{"type": "a", "data": i} for i in range(5)])
    async with await subscribe(hub, **last_event_id(ids[1])) as client:
        assert await client.frame() == b"retry: 2000\n\n"
        [live] = await publish(hub, {"type": "a", "data": 5})
        got = [parse_frame(await client.frame()) for _ in range(4)]
        assert got == [
            (i, {"meta": {"type": "a"}, "data": n}) for n, i in enumerate([*ids, live]) if n >= 2
        ]


async def test_resume_with_plasma_query_parameter(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    ids = await publish(hub, [{"type": "a"}] * 3)
    async with await subscribe(hub, f"/?eventType=a&lastEventId={ids[0]}") as client:
        assert [i for i, _ in await client.events(2)] == ids[1:]


async def test_header_wins_over_query_parameter(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    ids = await publish(hub, [{"type": "a"}] * 3)
    async with await subscribe(
        hub, f"/?eventType=a&lastEventId={ids[0]}", **last_event_id(ids[1])
    ) as client:
        assert [i for i, _ in await client.events(1)] == ids[2:]


async def test_resume_replays_only_matching_types(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    first = await publish(hub, {"type": "a"})
    ids = await publish(hub, [{"type": t} for t in ["b", "a:x", "ab", "a"]])
    [end] = await publish(hub, {"type": "end"})
    async with await subscribe(hub, "/?eventType=a,end", **last_event_id(first[0])) as client:
        assert await received_until(client, end) == [ids[1], ids[3]]


async def test_resume_at_the_head_sends_nothing_until_live(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    ids = await publish(hub, [{"type": "a"}] * 2)
    async with await subscribe(hub, **last_event_id(ids[-1])) as client:
        assert await client.frame() == b"retry: 2000\n\n"
        [live] = await publish(hub, {"type": "a"})
        assert parse_frame(await client.frame())[0] == live


async def test_reconnecting_clients_see_every_event_once_while_publishes_race(
    hub_factory: HubFactory,
) -> None:
    """Clients drop and resume from their last id while a publisher keeps going: together
    their streams hold every event exactly once, in order (no gap, no duplicate)."""
    hub = await start(hub_factory)
    total = 300
    [first] = await publish(hub, {"type": "a", "data": -1})

    async def publisher() -> list[str]:
        out: list[str] = []
        for n in range(total):
            out += await publish(hub, {"type": "a:x" if n % 2 else "a", "data": n})
        return out

    async def reconnecting_reader(seed: int) -> list[str]:
        rng = random.Random(seed)
        got: list[str] = []
        last = first
        while len(got) < total:
            async with await SseClient.connect(
                hub.http_port, "/?eventType=a", **last_event_id(last)
            ) as client:
                for _ in range(rng.randint(1, 40)):
                    if len(got) == total:
                        break
                    event_id = (await client.events(1))[0][0]
                    assert event_id is not None
                    got.append(event_id)
                    last = event_id
        return got

    published, *streams = await asyncio.gather(
        publisher(), *(reconnecting_reader(seed) for seed in range(4))
    )
    for got in streams:
        assert got == published


async def test_new_epoch_resets_with_the_new_head_then_goes_live(hub_factory: HubFactory) -> None:
    """An id from another epoch (the hub restarted) gets one cachewire:reset event first."""
    old = await start(hub_factory)
    [old_id] = await publish(old, {"type": "a"})
    hub = await start(hub_factory)
    await publish(hub, {"type": "a"})
    async with await subscribe(hub, **last_event_id(old_id)) as client:
        assert await client.frame() == b"retry: 2000\n\n"
        reset_id, reset = parse_frame(await client.frame())
        assert reset_id == hub.broker.head_id()
        assert reset["meta"] == {"type": "cachewire:reset", "reason": "epoch_changed"}
        assert reset["data"]["reason"] == "epoch_changed"
        [live] = await publish(hub, {"type": "a"})
        assert (await client.events(1))[0][0] == live


async def reset_of(hub: Hub, resume_from: str) -> tuple[str | None, Any]:
    async with await subscribe(hub, **last_event_id(resume_from)) as client:
        await client.frame()  # retry
        return parse_frame(await client.frame())


async def test_history_expired_resets(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory, history=3)
    ids = await publish(hub, [{"type": "a"}] * 10)
    reset_id, reset = await reset_of(hub, ids[2])
    assert reset_id == ids[-1]
    assert reset["meta"] == {"type": "cachewire:reset", "reason": "history_expired"}


@pytest.mark.parametrize("bad_id", ["42", "0", "garbage", "x-y-z", "é-1"])
async def test_malformed_or_plasma_numeric_ids_reset(hub_factory: HubFactory, bad_id: str) -> None:
    """Plasma's ids are per-connection counters ("42"): they cannot resume, so reset."""
    hub = await start(hub_factory)
    ids = await publish(hub, [{"type": "a"}] * 2)
    reset_id, reset = await reset_of(hub, bad_id)
    assert reset_id == ids[-1]
    assert reset["meta"]["reason"] in ("unknown_id", "epoch_changed")


async def test_future_id_of_this_epoch_resets(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    await publish(hub, {"type": "a"})
    _, reset = await reset_of(hub, f"{hub.broker.head_id()[:-1]}99")
    assert reset["meta"]["reason"] == "unknown_id"


async def test_resuming_from_a_reset_id_works(hub_factory: HubFactory) -> None:
    """The id a reset carries is a valid resume point: events after it are replayed."""
    hub = await start(hub_factory)
    reset_id, _ = await reset_of(hub, "42")
    assert reset_id is not None
    ids = await publish(hub, [{"type": "a"}] * 2)
    async with await subscribe(hub, **last_event_id(reset_id)) as client:
        assert [i for i, _ in await client.events(2)] == ids


async def test_a_replay_longer_than_the_queue_and_the_socket_buffers_arrives_whole(
    hub_factory: HubFactory,
) -> None:
    """The replay is bounded by the history, not by --queue-size: a client catching up on
    megabytes of history, with live events behind it, is not taken for a slow consumer."""
    hub = await start(hub_factory, queue_size=10)
    [first] = await publish(hub, {"type": "a"})
    ids: list[str] = []
    for _ in range(10):
        ids += await publish(hub, [{"type": "a", "data": "x" * 8_000}] * 50)  # 4 MB in all
    async with await subscribe(hub, **last_event_id(first)) as client:
        live = await publish(hub, [{"type": "a"}] * 5)
        got = [event_id for event_id, _ in await client.events(len(ids) + 5)]
    assert got == ids + live
    assert hub.fanout.slow_drops["sse"] == 0
