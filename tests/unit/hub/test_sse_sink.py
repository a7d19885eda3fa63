"""SseSink and Flusher on a recording transport: coalescing, backpressure, overflow."""

from __future__ import annotations

import asyncio
from typing import Any

from cachewire.hub.events import Draft, Event
from cachewire.hub.sse import HEARTBEAT, TRANSPORT_LIMIT, Flusher, SseSink
from tests.servers import wait_until
from tests.unit.hub.fakes import FakeRequest, FakeTransport


def events(n: int, start: int = 1) -> list[Event]:
    return [
        Event.from_draft(Draft("t", f'"{i}"'), f"e-{i}", (i, 0)) for i in range(start, start + n)
    ]


def sink(queue_size: int = 100, chunked: bool = True) -> tuple[SseSink, FakeTransport]:
    request: Any = FakeRequest()
    return SseSink(request, chunked, Flusher(), queue_size), request.transport


async def settle() -> None:
    """Let the flusher's scheduled calls run (a few loop iterations)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_burst_goes_out_as_one_write_of_the_shared_chunks() -> None:
    s, transport = sink()
    burst = events(10)
    assert all(s.send(e) for e in burst)
    await settle()
    assert transport.writes == [b"".join(e.sse_chunk() for e in burst)]


async def test_a_single_event_is_written_as_its_shared_bytes() -> None:
    s, transport = sink()
    [event] = events(1)
    s.send(event)
    await settle()
    assert transport.writes[0] is event.sse_chunk()


async def test_http10_gets_bare_frames() -> None:
    s, transport = sink(chunked=False)
    burst = events(2)
    for e in burst:
        s.send(e)
    s.heartbeat("e-2")
    await settle()
    assert transport.writes == [b"".join(e.sse_frame() for e in burst)]


async def test_heartbeat_is_skipped_while_frames_are_pending() -> None:
    s, transport = sink()
    s.heartbeat("e-0")
    s.heartbeat("e-0")
    await settle()
    assert transport.writes == [b"%x\r\n%b\r\n" % (len(HEARTBEAT), HEARTBEAT)]


async def test_backed_up_transport_keeps_frames_until_it_drains() -> None:
    """Nothing is written past the transport limit; once it drains, all of it is."""
    s, transport = sink()
    transport.buffered = TRANSPORT_LIMIT + 1
    burst = events(3)
    for e in burst:
        s.send(e)
    await settle()
    assert transport.writes == []
    transport.buffered = 0
    await wait_until(lambda: bool(transport.writes), what="the stalled sink retried by itself")
    assert transport.writes == [b"".join(e.sse_chunk() for e in burst)]


async def test_send_says_full_past_the_queue_size() -> None:
    s, transport = sink(queue_size=3)
    transport.buffered = TRANSPORT_LIMIT + 1
    assert [s.send(e) for e in events(4)] == [True, True, True, False]


async def test_slow_consumer_reset_discards_the_backlog_and_carries_no_id() -> None:
    s, transport = sink()
    transport.buffered = TRANSPORT_LIMIT + 1
    for e in events(5):
        s.send(e)
    s.reset("slow_consumer", "fell behind", "e-5")
    s.close()
    [written] = transport.writes
    assert b"e-1" not in written and b"id:" not in written
    assert b'"reason":"slow_consumer"' in written
    assert s.done.done()


async def test_reset_for_a_resume_carries_the_seam_id() -> None:
    s, transport = sink()
    s.reset("epoch_changed", "restarted", "new-7")
    await settle()
    assert b"id: new-7\ndata: " in transport.writes[0]


async def test_a_broken_transport_is_aborted_without_starving_the_others() -> None:
    flusher = Flusher()
    broken_req: Any = FakeRequest(FakeTransport(fail=True))
    good_req: Any = FakeRequest()
    broken = SseSink(broken_req, True, flusher, 100)
    good = SseSink(good_req, True, flusher, 100)
    [event] = events(1)
    broken.send(event)
    good.send(event)
    await settle()
    assert good_req.transport.writes == [event.sse_chunk()]
    assert broken_req.transport.aborted and broken.done.done()


async def test_closed_transport_drops_pending_frames() -> None:
    s, transport = sink()
    transport.closing = True
    for e in events(3):
        s.send(e)
    await settle()
    assert transport.writes == []
    assert s.flush()


def big_events(n: int) -> list[Event]:
    return [
        Event.from_draft(Draft("t", '"%s"' % ("x" * 16_000)), f"e-{i}", (i, 0))
        for i in range(1, n + 1)
    ]


async def test_a_burst_larger_than_the_transport_limit_is_written_in_slices() -> None:
    """At most about the limit is copied into the transport per flush; the rest stays as
    references to the shared bytes and follows, in order, as the transport drains."""
    s, transport = sink(queue_size=1000)
    burst = big_events(100)  # 1.6 MB
    for e in burst:
        s.send(e)
    await settle()
    assert TRANSPORT_LIMIT <= len(transport.writes[0]) < TRANSPORT_LIMIT + 17_000
    total = sum(len(e.sse_chunk()) for e in burst)
    await wait_until(lambda: sum(map(len, transport.writes)) == total, what="every slice written")
    assert b"".join(transport.writes) == b"".join(e.sse_chunk() for e in burst)


async def test_close_writes_everything_pending_at_once() -> None:
    s, transport = sink(queue_size=1000)
    burst = big_events(40)
    for e in burst:
        s.send(e)
    s.close()
    assert transport.writes == [b"".join(e.sse_chunk() for e in burst)]


async def test_a_long_replay_does_not_count_against_the_queue() -> None:
    """A resume's replay is bounded by the history, not the queue: live events that follow
    a replay still being written in slices are not mistaken for a slow consumer."""
    s, transport = sink(queue_size=5)
    replay = big_events(100)  # 1.6 MB: written in slices
    s.send_replay(replay)
    await settle()
    assert len(transport.writes) >= 1 and s._pending
    live = events(5, start=101)
    assert all(s.send(e) for e in live)
    total = sum(len(e.sse_chunk()) for e in [*replay, *live])
    await wait_until(lambda: sum(map(len, transport.writes)) == total, what="replay then live")
    assert b"".join(transport.writes) == b"".join(e.sse_chunk() for e in [*replay, *live])
