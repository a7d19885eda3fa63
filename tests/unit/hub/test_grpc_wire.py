"""The gRPC sinks and messages at the wire, without a server: encoding, queueing, validation."""

from __future__ import annotations

import json

import pytest

from cachewire.hub.errors import InvalidInput, TooLarge, Unavailable
from cachewire.hub.events import Event
from cachewire.hub.grpc_api import (
    MAX_BATCH,
    EncodeCache,
    Outbox,
    SubscribeSink,
    batch_message,
    drafts_from_request,
    event_message,
)
from cachewire.hub.grpc_plasma import PlasmaSink, payload_message
from cachewire.v1 import hub_pb2, plasma_pb2
from tests.plasma_stub import stream_pb2

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def event(n: int, type: str = "a:b", **kw: object) -> Event:
    return Event(f"e-{n}", (n, 0), type, f'{{"n":{n}}}', **kw)  # type: ignore[arg-type]


def test_batch_bytes_are_protobufs_own_encoding() -> None:
    """Concatenated pre-encoded events are byte-identical to encoding the message whole."""
    events = [
        event(1, keys=("k1", "k2"), flush=True, published_at=1.5),
        event(2, traceparent=TRACEPARENT, tracestate="a=b"),
        event(300, "x" * 200),
    ]
    whole = hub_pb2.SubscribeResponse(
        events=hub_pb2.EventBatch(
            events=[hub_pb2.Event.FromString(event_message(e)) for e in events]
        )
    )
    assert batch_message([event_message(e) for e in events]) == whole.SerializeToString()


def test_event_message_carries_every_field() -> None:
    e = Event(
        "ep-7",
        (7, 0),
        "user:42",
        '{"a":1}',
        ("k",),
        ("p:",),
        True,
        TRACEPARENT,
        "v=1",
        1700000000.123456,
    )
    m = hub_pb2.Event.FromString(event_message(e))
    assert (m.id, m.type, m.data, list(m.keys), list(m.prefixes), m.flush) == (
        "ep-7",
        "user:42",
        '{"a":1}',
        ["k"],
        ["p:"],
        True,
    )
    assert m.published_at_unix_micros == 1700000000123456
    assert (m.traceparent, m.tracestate) == (TRACEPARENT, "v=1")


def test_plasma_payload_reads_with_plasmas_original_contract() -> None:
    """A client generated from Plasma's stream.proto reads type and data; id is extra."""
    raw = payload_message(event(5, "program:1"))
    old = stream_pb2.Payload.FromString(raw)
    assert (old.eventType.type, old.data) == ("program:1", '{"n":5}')
    assert plasma_pb2.Payload.FromString(raw).id == "e-5"


def test_encode_cache_encodes_each_event_once() -> None:
    calls: list[str] = []

    def encode(e: Event) -> bytes:
        calls.append(e.id)
        return e.id.encode()

    cache = EncodeCache(encode, size=2)
    assert [cache(event(1)), cache(event(1)), cache(event(2))] == [b"e-1", b"e-1", b"e-2"]
    assert calls == ["e-1", "e-2"]
    cache(event(3))  # over the size: the cache starts afresh, still correct
    assert cache(event(1)) == b"e-1"


def test_outbox_bounds_events_but_not_control_messages() -> None:
    box = Outbox(limit=2)
    assert box.put(event(1)) and box.put(event(2))
    assert not box.put(event(3))
    box.put_control(b"hb")
    box.put_all([event(4), event(5)])  # a replay is bounded by history, not the queue
    assert box.events == 4 and len(box.items) == 5
    assert [e.id for e in box.take(10)] == ["e-1", "e-2"]  # type: ignore[union-attr]
    assert box.take(10) == b"hb"
    assert [e.id for e in box.take(1)] == ["e-4"]  # type: ignore[union-attr]
    assert box.events == 1


async def test_writer_batches_consecutive_events_and_keeps_order_with_controls() -> None:
    sink = SubscribeSink(queue_size=10_000, encode=event_message)
    sink.go_live("e-0")
    for n in range(1, MAX_BATCH + 3):
        assert sink.send(event(n))
    sink.heartbeat("e-1002")
    sink.send(event(1003))
    sink.close()
    messages = await drain_until_end(sink)
    kinds = [m.WhichOneof("message") for m in messages]
    assert kinds == ["heartbeat", "events", "events", "heartbeat", "events"]
    assert len(messages[1].events.events) == MAX_BATCH
    ids = [e.id for m in messages if m.HasField("events") for e in m.events.events]
    assert ids == [f"e-{n}" for n in range(1, 1004)]
    assert messages[3].heartbeat.high_water_id == "e-1002"


async def drain_until_end(sink: SubscribeSink) -> list[hub_pb2.SubscribeResponse]:
    """Every message the sink's writer produces until close() ends the stream."""
    out: list[hub_pb2.SubscribeResponse] = []
    with pytest.raises(Unavailable, match="shutting down"):
        async for raw in sink.messages():
            out.append(hub_pb2.SubscribeResponse.FromString(raw))
    return out


async def test_no_heartbeat_before_the_subscription_is_live() -> None:
    """While a resume's replay is fetched, a heartbeat would overtake the replayed events."""
    sink = SubscribeSink(queue_size=10, encode=event_message)
    sink.heartbeat("e-5")  # the hub's timer fires during the replay
    sink.send_replay([event(4), event(5)])
    sink.go_live("e-5")
    sink.close()
    messages = await drain_until_end(sink)
    assert [m.WhichOneof("message") for m in messages] == ["events", "heartbeat"]


async def test_unread_heartbeats_are_replaced_not_piled_up() -> None:
    sink = SubscribeSink(queue_size=10, encode=event_message)
    sink.go_live("e-1")
    sink.heartbeat("e-2")
    sink.send(event(3))
    sink.heartbeat("e-3")
    sink.close()
    messages = await drain_until_end(sink)
    assert [m.WhichOneof("message") for m in messages] == ["heartbeat", "events", "heartbeat"]
    assert messages[0].heartbeat.high_water_id == "e-2"
    assert messages[0].heartbeat.sent_at_unix_micros > 0


@pytest.mark.parametrize(
    ("reason", "wire"),
    [
        ("history_expired", hub_pb2.RESET_REASON_HISTORY_EXPIRED),
        ("epoch_changed", hub_pb2.RESET_REASON_EPOCH_CHANGED),
        ("unknown_id", hub_pb2.RESET_REASON_UNKNOWN_ID),
    ],
)
async def test_resume_resets_map_to_the_enum_and_delivery_continues(reason: str, wire: int) -> None:
    sink = SubscribeSink(queue_size=10, encode=event_message)
    sink.reset(reason, "why", "e-9")  # type: ignore[arg-type]
    sink.send(event(10))
    sink.close()
    messages = await drain_until_end(sink)
    assert messages[0].reset == hub_pb2.Reset(reason=wire, detail="why", resume_from="e-9")
    assert messages[1].events.events[0].id == "e-10"


async def test_slow_consumer_discards_the_queue_sends_reset_and_ends_unavailable() -> None:
    sink = SubscribeSink(queue_size=2, encode=event_message)
    assert sink.send(event(1)) and sink.send(event(2))
    assert not sink.send(event(3))
    sink.reset("slow_consumer", "fell behind", "e-3")  # what Fanout.drop_slow does
    sink.close()
    out = []
    with pytest.raises(Unavailable, match="fell behind its queue of 2 events"):
        async for raw in sink.messages():
            out.append(hub_pb2.SubscribeResponse.FromString(raw))
    assert [m.reset.reason for m in out] == [hub_pb2.RESET_REASON_SLOW_CONSUMER]


async def test_plasma_sink_reset_is_a_cachewire_reset_payload() -> None:
    sink = PlasmaSink(queue_size=10, encode=payload_message)
    sink.reset("epoch_changed", "new epoch", "e-4")
    sink.heartbeat("e-4")  # Plasma's Payload has no heartbeat: nothing is queued
    item = sink.outbox.take(10)
    assert isinstance(item, bytes)
    payload = plasma_pb2.Payload.FromString(item)
    assert payload.eventType.type == "cachewire:reset" and payload.id == "e-4"
    assert json.loads(payload.data) == {"reason": "epoch_changed", "detail": "new epoch"}
    assert not sink.outbox.items
    sink.reset("slow_consumer", "fell behind", "e-5")
    slow = plasma_pb2.Payload.FromString(sink.outbox.take(10))  # type: ignore[arg-type]
    assert slow.id == ""  # no id: the client resumes from the last event it really got


def publish_request(*events: hub_pb2.EventInput) -> hub_pb2.PublishRequest:
    return hub_pb2.PublishRequest(events=events)


def test_publish_input_becomes_drafts_like_http() -> None:
    drafts = drafts_from_request(
        publish_request(
            hub_pb2.EventInput(
                type="user:42", data='{"a": [1, 2]}', keys=["k"], prefixes=["p"], flush=True
            ),
            hub_pb2.EventInput(type="user:43"),
        ),
        {},
        max_keys=10,
    )
    assert drafts[0].data_json == '{"a":[1,2]}'  # normalised as HTTP publish does
    assert (drafts[0].keys, drafts[0].prefixes, drafts[0].flush) == (("k",), ("p",), True)
    assert drafts[1].data_json == "null"


def test_publish_trace_context_from_field_else_metadata() -> None:
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    md = {"traceparent": other, "tracestate": "md=1"}
    from_field, from_md = drafts_from_request(
        publish_request(
            hub_pb2.EventInput(type="a", traceparent=TRACEPARENT, tracestate="f=1"),
            hub_pb2.EventInput(type="a"),
        ),
        md,
        max_keys=10,
    )
    assert (from_field.traceparent, from_field.tracestate) == (TRACEPARENT, "f=1")
    assert (from_md.traceparent, from_md.tracestate) == (other, "md=1")


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ((), "at least one event is required"),
        ((hub_pb2.EventInput(type=""),), "event 0: type must not be empty"),
        (
            (hub_pb2.EventInput(type="a"), hub_pb2.EventInput(type="a::b")),
            "event 1: type 'a::b' has an empty segment",
        ),
        ((hub_pb2.EventInput(type="a", data="not json"),), "event 0: data must be JSON text"),
        (
            (hub_pb2.EventInput(type="a", keys=["ok", ""]),),
            "event 0: keys must not contain an empty string",
        ),
        ((hub_pb2.EventInput(type="a\nb"),), "event 0: type contains a control character"),
    ],
)
def test_bad_publish_input_names_the_event_and_problem(
    events: tuple[hub_pb2.EventInput, ...], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        drafts_from_request(publish_request(*events), {}, max_keys=10)


def test_too_many_keys_is_too_large() -> None:
    with pytest.raises(TooLarge, match="event 0: keys has 3 entries"):
        drafts_from_request(
            publish_request(hub_pb2.EventInput(type="a", keys=["1", "2", "3"])), {}, max_keys=2
        )


async def test_a_slow_plasma_client_gets_the_reset_then_unavailable() -> None:
    sink = PlasmaSink(queue_size=1, encode=payload_message)
    assert sink.send(event(1))
    assert not sink.send(event(2))
    sink.reset("slow_consumer", "fell behind", "e-2")
    sink.close()
    out = []
    with pytest.raises(Unavailable, match="fell behind its queue of 1 events; reconnect"):
        async for batch in sink.batches():
            out += [plasma_pb2.Payload.FromString(raw) for raw in batch]
    assert [p.eventType.type for p in out] == ["cachewire:reset"]
