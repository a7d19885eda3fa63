"""gRPC against `cachewire-hub` processes, as users run them."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.hub_http import publish, wait_connections
from tests.plasma_stub import stream_pb2, stream_pb2_grpc
from tests.servers import Proc

TIMEOUT = 20.0


async def requests_from(queue: asyncio.Queue[stream_pb2.Request]) -> AsyncIterator[Any]:
    while True:
        yield await queue.get()


async def test_a_plasma_client_receives_what_is_published_over_http(
    hub_process: Callable[..., Proc],
) -> None:
    proc = hub_process()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.ports['grpc']}") as channel:
        requests: asyncio.Queue[stream_pb2.Request] = asyncio.Queue()
        call = stream_pb2_grpc.StreamServiceStub(channel).Events(requests_from(requests))
        requests.put_nowait(stream_pb2.Request(Events=[stream_pb2.EventType(type="program")]))
        await wait_connections(proc.ports["http"], 1, "grpc")
        await publish(proc.ports["http"], {"type": "program:1234:views", "data": {"n": 1}})
        payload = await asyncio.wait_for(call.read(), TIMEOUT)
        assert payload.eventType.type == "program:1234:views"
        assert json.loads(payload.data) == {"n": 1}
        call.cancel()


async def test_sigterm_ends_open_streams_unavailable_and_the_hub_exits_0(
    hub_process: Callable[..., Proc],
) -> None:
    proc = hub_process("--grace", "10")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.ports['grpc']}") as channel:
        subscribe = hub_pb2_grpc.HubStub(channel).Subscribe(
            hub_pb2.SubscribeRequest(topics=["user"])
        )
        first = await asyncio.wait_for(subscribe.read(), TIMEOUT)
        assert first.HasField("heartbeat")  # live
        requests: asyncio.Queue[stream_pb2.Request] = asyncio.Queue()
        plasma = stream_pb2_grpc.StreamServiceStub(channel).Events(requests_from(requests))
        requests.put_nowait(stream_pb2.Request(Events=[stream_pb2.EventType(type="user")]))
        await wait_connections(proc.ports["http"], 2, "grpc")

        proc.signal(signal.SIGTERM)
        for call in (subscribe, plasma):
            try:
                while True:  # heartbeats may still arrive before the end
                    assert await asyncio.wait_for(call.read(), TIMEOUT) is not grpc.aio.EOF
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                assert "reconnect" in (err.details() or "")
    assert await asyncio.to_thread(proc.popen.wait, TIMEOUT) == 0
    assert "Traceback" not in proc.log()
