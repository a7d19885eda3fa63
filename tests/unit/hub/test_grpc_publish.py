"""cachewire.v1.Hub/Publish against an in-process hub, over a real gRPC channel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import pytest

from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.errors import Unavailable
from cachewire.hub.events import Draft, Event
from cachewire.hub.server import Hub
from cachewire.v1 import hub_pb2, hub_pb2_grpc

TIMEOUT = 20.0
Input = hub_pb2.EventInput


class DownBroker(MemoryBroker):
    """A broker whose store is unreachable (as the Redis broker is in a Redis outage)."""

    async def publish(self, drafts: Sequence[Draft]) -> list[Event]:
        raise Unavailable("broker unavailable: redis is down")


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> Hub:
    return await hub_factory(max_keys=3, max_body=64 * 1024)


@pytest.fixture
async def api(hub: Hub) -> AsyncIterator[hub_pb2_grpc.HubStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        yield hub_pb2_grpc.HubStub(channel)


async def test_publish_answers_ids_in_order_once_they_are_in_history(
    hub: Hub, api: hub_pb2_grpc.HubStub
) -> None:
    before = hub.broker.head_id()
    response = await api.Publish(
        hub_pb2.PublishRequest(
            events=[Input(type="a:1", data='{"x": 1}'), Input(type="a:2", keys=["k"])]
        ),
        timeout=TIMEOUT,
    )
    replay = await hub.broker.replay(before)
    assert [e.id for e in replay.events] == list(response.ids)
    assert [(e.type, e.data_json, e.keys) for e in replay.events] == [
        ("a:1", '{"x":1}', ()),
        ("a:2", "null", ("k",)),
    ]


async def test_trace_context_comes_from_metadata_when_the_event_has_none(
    hub: Hub, api: hub_pb2_grpc.HubStub
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    before = hub.broker.head_id()
    await api.Publish(
        hub_pb2.PublishRequest(events=[Input(type="a")]),
        metadata=(("traceparent", traceparent), ("tracestate", "k=v")),
    )
    [event] = (await hub.broker.replay(before)).events
    assert (event.traceparent, event.tracestate) == (traceparent, "k=v")


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        ([], "at least one event is required"),
        ([Input(type="ok"), Input(type="a::b")], "event 1: type 'a::b' has an empty segment"),
        ([Input(type="")], "event 0: type must not be empty"),
        ([Input(type="a", data="{not json")], "event 0: data must be JSON text"),
        ([Input(type="a", data="plain text")], "event 0: data must be JSON text"),
        ([Input(type="a", data="1e999")], "event 0: data must be JSON text"),
        ([Input(type="a", keys=[""])], "event 0: keys must not contain an empty string"),
        ([Input(type="a", prefixes=["p", ""])], "event 0: prefixes must not contain an empty"),
        (
            [Input(type="a"), Input(type="b", keys=["1", "2", "3", "4"])],
            "event 1: keys has 4 entries, more than the limit of 3",
        ),
        (
            [Input(type="a", keys=["1", "2"], prefixes=["3", "4"])],
            "event 0: keys and prefixes together exceed the limit of 3",
        ),
    ],
)
async def test_bad_input_is_invalid_argument_and_publishes_nothing(
    hub: Hub, api: hub_pb2_grpc.HubStub, events: list[hub_pb2.EventInput], problem: str
) -> None:
    head = hub.broker.head_id()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.Publish(hub_pb2.PublishRequest(events=events), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(problem)
    assert hub.broker.head_id() == head


async def test_a_request_over_the_body_limit_is_refused(
    hub: Hub, api: hub_pb2_grpc.HubStub
) -> None:
    head = hub.broker.head_id()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.Publish(
            hub_pb2.PublishRequest(events=[Input(type="a", data='"' + "x" * 70_000 + '"')]),
            timeout=TIMEOUT,
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert hub.broker.head_id() == head


async def test_a_broker_outage_is_unavailable(hub_factory: Callable[..., Any]) -> None:
    hub = await hub_factory(broker=DownBroker())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await hub_pb2_grpc.HubStub(channel).Publish(
                hub_pb2.PublishRequest(events=[Input(type="a")]), timeout=TIMEOUT
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "broker unavailable: redis is down"
