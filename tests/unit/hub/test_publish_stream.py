"""Streaming publish: NDJSON bodies on POST /v1/publish, and gRPC Hub/PublishStream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import grpc
import pytest

from cachewire.hub.server import Hub
from cachewire.v1 import hub_pb2, hub_pb2_grpc

TIMEOUT = 20.0
NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> Hub:
    return await hub_factory(max_keys=3, idempotency_window=60.0)


async def post(hub: Hub, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{hub.http_port}/v1/publish", data=body, headers=headers
        ) as resp,
    ):
        assert resp.content_type == "application/json"
        return resp.status, json.loads(await resp.text())


async def test_ndjson_body_is_one_event_a_line_answered_in_order(hub: Hub) -> None:
    before = hub.broker.head_id()
    body = b'{"type":"a:1","data":1}\n\n{"type":"a:2","keys":["k"]}\r\n{"type":"a:3"}'
    status, answer = await post(hub, body, NDJSON)
    assert status == 200
    replay = await hub.broker.replay(before)
    assert answer == {"ids": [e.id for e in replay.events]}
    assert [(e.type, e.data_json, e.keys) for e in replay.events] == [
        ("a:1", "1", ()),
        ("a:2", "null", ("k",)),
        ("a:3", "null", ()),
    ]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"type":"a"}\n{"type":', 400, "line 2: the line is not valid JSON"),
        (b'{"type":"a"}\n[{"type":"b"}]', 400, "line 2: an event must be a JSON object"),
        (b'{"type":"a"}\n\n{"data":1}', 400, "line 3: type is required"),
        (b'{"type":"a","keys":["1","2","3","4"]}', 413, "line 1: keys has 4 entries"),
        (b"\n \n", 400, "the NDJSON body has no event"),
    ],
)
async def test_a_bad_ndjson_line_is_named_and_nothing_is_published(
    hub: Hub, body: bytes, status: int, message: str
) -> None:
    got, answer = await post(hub, body, NDJSON)
    assert got == status
    assert answer["error"].startswith(message)
    assert hub.broker.history_size() == 0


async def test_ndjson_with_an_idempotency_key_is_stored_once(hub: Hub) -> None:
    headers = {**NDJSON, "Idempotency-Key": "batch-7"}
    _, first = await post(hub, b'{"type":"a"}\n{"type":"b"}\n', headers)
    _, again = await post(hub, b'{"type":"a"}\n{"type":"b"}\n', headers)
    assert again == first
    assert hub.broker.history_size() == 2


@pytest.fixture
async def api(hub: Hub) -> AsyncIterator[hub_pb2_grpc.HubStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        yield hub_pb2_grpc.HubStub(channel)


def request(*types: str, key: str = "") -> hub_pb2.PublishRequest:
    return hub_pb2.PublishRequest(
        events=[hub_pb2.EventInput(type=t) for t in types], idempotency_key=key
    )


async def test_publish_stream_acks_each_request_in_order(
    hub: Hub, api: hub_pb2_grpc.HubStub
) -> None:
    before = hub.broker.head_id()
    call = api.PublishStream(timeout=TIMEOUT)
    acks = []
    for i in range(20):
        await call.write(request(f"s:{i}", f"s:{i}:x"))
        acks.append(list((await call.read()).ids))
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    replay = await hub.broker.replay(before)
    assert [i for ids in acks for i in ids] == [e.id for e in replay.events]
    assert [e.type for e in replay.events][:4] == ["s:0", "s:0:x", "s:1", "s:1:x"]


async def test_publish_stream_pipelined_requests_are_answered_in_order(
    hub: Hub, api: hub_pb2_grpc.HubStub
) -> None:
    before = hub.broker.head_id()
    answers = [
        list(r.ids)
        async for r in api.PublishStream(
            iter([request(f"p:{i}") for i in range(200)]), timeout=TIMEOUT
        )
    ]
    replay = await hub.broker.replay(before)
    assert [ids[0] for ids in answers] == [e.id for e in replay.events]
    assert [e.type for e in replay.events] == [f"p:{i}" for i in range(200)]


async def test_publish_stream_ends_at_the_first_bad_request_naming_it(
    hub: Hub, api: hub_pb2_grpc.HubStub
) -> None:
    requests = [request("ok:0"), request("ok:1"), request("bad::type"), request("never")]
    call = api.PublishStream(iter(requests), timeout=TIMEOUT)
    answers = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for r in call:
            answers.append(list(r.ids))
    assert len(answers) == 2
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "request 2: event 0: type 'bad::type' has an empty segment"
    assert hub.broker.history_size() == 2


async def test_publish_stream_honours_idempotency_keys(hub: Hub, api: hub_pb2_grpc.HubStub) -> None:
    answers = [
        list(r.ids)
        async for r in api.PublishStream(
            iter([request("a", key="k1"), request("a", key="k1"), request("b")]),
            timeout=TIMEOUT,
        )
    ]
    assert answers[0] == answers[1] != answers[2]
    assert hub.broker.history_size() == 2
