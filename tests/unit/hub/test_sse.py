"""SSE over real HTTP, byte for byte: headers, retry, framing, matching, heartbeat, endings."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tests.sse_wire import SseClient, StreamEnded, parse_frame
from tests.unit.hub.sse_helpers import HubFactory, publish, received_until, start, subscribe


async def test_stream_opens_at_once_with_headers_retry_and_head_id(hub_factory: HubFactory) -> None:
    """Before any event: 200, the SSE headers, `retry:`, then an id-only frame at the head."""
    hub = await start(hub_factory)
    async with await subscribe(hub) as client:
        assert client.status == 200
        assert client.headers["content-type"] == "text/event-stream"
        assert client.headers["cache-control"] == "no-cache"
        assert client.headers["x-accel-buffering"] == "no"
        assert "access-control-allow-origin" not in client.headers
        assert await client.frame() == b"retry: 2000\n\n"
        assert await client.frame() == f"id: {hub.broker.head_id()}\n\n".encode()


async def test_head_id_frame_carries_the_current_head(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory, sse_retry=1234)
    ids = await publish(hub, [{"type": "x"}, {"type": "y"}])
    async with await subscribe(hub) as client:
        assert await client.frame() == b"retry: 1234\n\n"
        assert await client.frame() == f"id: {ids[-1]}\n\n".encode()


async def test_cors_origin_comes_from_settings(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory, cors_origin="https://app.example")
    async with await subscribe(hub) as client:
        assert client.headers["access-control-allow-origin"] == "https://app.example"


async def test_event_frame_is_plasma_envelope_exactly(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    async with await subscribe(hub, "/?eventType=program:1234") as client:
        [event_id] = await publish(hub, {"type": "program:1234:views", "data": "42"})
        envelope = b'{"meta":{"type":"program:1234:views"},"data":"42"}'
        assert await client.data_frame() == b"id: %s\ndata: %s\n\n" % (event_id.encode(), envelope)


async def test_invalidation_fields_ride_inside_meta(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    async with await subscribe(hub) as client:
        await publish(
            hub, {"type": "a", "data": {"n": 1}, "keys": ["k"], "prefixes": ["p:"], "flush": True}
        )
        _, data = (await client.events(1))[0]
        assert data == {
            "meta": {"type": "a", "keys": ["k"], "prefixes": ["p:"], "flush": True},
            "data": {"n": 1},
        }


TRICKY = [
    "two\nlines",
    "crlf\r\nand cr\r",
    "\n\ndata: forged\n\nid: 9\n\n",
    "é 日本 🎉",
    "\u2028\u2029\x85",
    {"k": "v\n"},
    None,
    3.5,
    ["\n"],
    "",
]


async def test_data_with_newlines_and_unicode_never_breaks_framing(hub_factory: HubFactory) -> None:
    """Each event stays one id line and one data line; the data round-trips exactly."""
    hub = await start(hub_factory)
    async with await subscribe(hub) as client:
        ids = await publish(hub, [{"type": "a", "data": d} for d in TRICKY])
        got = []
        for _ in TRICKY:
            frame = await client.data_frame()
            assert frame.count(b"\n") == 3 and b"\r" not in frame
            got.append(parse_frame(frame))
        assert got == [
            (i, {"meta": {"type": "a"}, "data": d}) for i, d in zip(ids, TRICKY, strict=True)
        ]


async def test_heartbeat_is_an_sse_comment(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory, heartbeat=0.05)
    async with await subscribe(hub) as client:
        await client.frame()  # retry
        await client.frame()  # head id
        assert await client.frame() == b": heartbeat\n\n"
        assert await client.frame() == b": heartbeat\n\n"


async def test_topic_matching_and_overlap_over_http(hub_factory: HubFactory) -> None:
    """a gets a, a:b, a:b:c; a:b gets a:b, a:b:c; `a,a:b,a:b:c` gets each once; not ab."""
    hub = await start(hub_factory)
    topics = ["a", "a:b", "a,a:b,a:b:c", "b", "a:bc"]
    clients = [await subscribe(hub, f"/?eventType={t},end") for t in topics]
    try:
        ids = await publish(hub, [{"type": t} for t in ["ab", "a", "a:b", "a:b:c", "b", "a:bcd"]])
        [end] = await publish(hub, {"type": "end"})
        expected = [
            [ids[1], ids[2], ids[3], ids[5]],
            [ids[2], ids[3]],
            [ids[1], ids[2], ids[3], ids[5]],
            [ids[4]],
            [],
        ]
        for client, want in zip(clients, expected, strict=True):
            assert await received_until(client, end) == want
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/events?eventType=a", []),
        ("/anything/here?eventType=a", [("Accept", "text/event-stream")]),
        ("/?eventType=a", [("Accept", "text/event-stream")]),
    ],
)
async def test_subscribe_paths(
    hub_factory: HubFactory, target: str, headers: list[tuple[str, str]]
) -> None:
    """/ and /events subscribe; any other path does when the client accepts SSE (Plasma)."""
    hub = await start(hub_factory)
    async with await subscribe(hub, target, headers=headers) as client:
        [event_id] = await publish(hub, {"type": "a", "data": 1})
        assert (await client.events(1))[0][0] == event_id


async def test_event_query_name_is_configurable(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory, sse_event_query="topics")
    async with await subscribe(hub, "/?topics=a") as client:
        assert client.status == 200
    async with await SseClient.connect(hub.http_port, "/?eventType=a") as client:
        assert client.status == 400
        assert "'topics' is required" in (await client.json_body())["error"]


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("/", "'eventType' is required"),
        ("/?eventType=", "'eventType' is required"),
        ("/?eventType=a,,b", "must not be empty"),
        ("/?eventType=a::b", "empty segment"),
        ("/?eventType=" + "x" * 300, "longer than 256 bytes"),
        ("/?eventType=a%0Ab", "control character"),
        ("/events", "'eventType' is required"),
    ],
)
async def test_bad_subscriptions_answer_400_json(
    hub_factory: HubFactory, target: str, problem: str
) -> None:
    hub = await start(hub_factory)
    async with await SseClient.connect(hub.http_port, target) as client:
        assert client.status == 400
        assert client.headers["content-type"].startswith("application/json")
        body = await client.json_body()
        assert body["status"] == 400 and problem in body["error"]
    assert hub.fanout.count() == 0


async def test_head_request_gets_headers_and_no_stream(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    async with await SseClient.connect(hub.http_port, "/?eventType=a", method="HEAD") as client:
        assert client.status == 200
        assert client.headers["content-type"] == "text/event-stream"
    assert hub.fanout.count() == 0


async def test_http10_client_gets_an_unchunked_stream(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    async with await subscribe(hub, version="1.0") as client:
        assert not client.chunked
        assert await client.frame() == b"retry: 2000\n\n"
        [event_id] = await publish(hub, {"type": "a"})
        assert (await client.events(1))[0][0] == event_id


async def test_shutdown_ends_the_stream_with_the_terminating_chunk(hub_factory: HubFactory) -> None:
    """Stopping the hub ends each stream cleanly, so clients reconnect (elsewhere)."""
    hub = await start(hub_factory)
    async with await subscribe(hub) as client:
        [event_id] = await publish(hub, {"type": "a"})
        assert (await client.events(1))[0][0] == event_id
        await hub.stop(grace=5)
        assert await client.until_end() == b""
        assert client.ended_cleanly
        with pytest.raises(StreamEnded):
            await client.frame()


async def test_client_leaving_unsubscribes_and_logs(
    hub_factory: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "cachewire.hub.sse")
    hub = await start(hub_factory)
    client = await subscribe(hub, "/?eventType=a,b")
    await client.frame()
    client.close()
    async with asyncio.timeout(20):
        while hub.fanout.count() or "sse connection closed" not in caplog.messages:
            await publish(hub, {"type": "a"})  # writing to a closed socket notices it
    opened = [r for r in caplog.records if r.getMessage() == "sse connection opened"]
    assert [json.dumps(getattr(r, "topics", None)) for r in opened] == ['["a", "b"]']
    assert hub.fanout.topic_count() == 0
