"""gRPC against `cachewire-hub` processes, as users run them."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import grpc
from cachewire.v1 import hub_pb2, hub_pb2_grpc

from tests.plasma_stub import stream_pb2, stream_pb2_grpc
from tests.servers import Proc

TIMEOUT = 20.0


async def requests_from(queue: asyncio.Queue[stream_pb2.Request]) -> AsyncIterator[Any]:
    while True:
        yield await queue.get()


async def plasma_connections(session: aiohttp.ClientSession, proc: Proc, n: int) -> None:
    """Wait until the hub counts n gRPC streams (its /metrics/plasma, as Plasma's has)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        async with session.get(f"http://127.0.0.1:{proc.ports['http']}/metrics/plasma") as r:
            if (await r.json())["connections_grpc"] == n:
                return
        await asyncio.sleep(0.02)  # polls the fact over HTTP
    raise TimeoutError(f"the hub never counted {n} gRPC streams")


async def test_a_plasma_client_receives_what_is_published_over_http(
    hub_process: Callable[..., Proc],
) -> None:
    proc = hub_process()
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{proc.ports['grpc']}") as channel,
        aiohttp.ClientSession() as session,
    ):
        requests: asyncio.Queue[stream_pb2.Request] = asyncio.Queue()
        call = stream_pb2_grpc.StreamServiceStub(channel).Events(requests_from(requests))
        requests.put_nowait(stream_pb2.Request(Events=[stream_pb2.EventType(type="program")]))
        await plasma_connections(session, proc, 1)
        async with session.post(
            f"http://127.0.0.1:{proc.ports['http']}/v1/publish",
            json={"type": "program:1234:views", "data": {"n": 1}},
        ) as r:
            assert r.status == 200, await r.text()
        payload = await asyncio.wait_for(call.read(), TIMEOUT)
        assert payload.eventType.type == "program:1234:views"
        assert json.loads(payload.data) == {"n": 1}
        call.cancel()


async def test_sigterm_ends_open_streams_unavailable_and_the_hub_exits_0(
    hub_process: Callable[..., Proc],
) -> None:
    proc = hub_process("--grace", "10")
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{proc.ports['grpc']}") as channel,
        aiohttp.ClientSession() as session,
    ):
        subscribe = hub_pb2_grpc.HubStub(channel).Subscribe(
            hub_pb2.SubscribeRequest(topics=["user"])
        )
        first = await asyncio.wait_for(subscribe.read(), TIMEOUT)
        assert first.HasField("heartbeat")  # live
        requests: asyncio.Queue[stream_pb2.Request] = asyncio.Queue()
        plasma = stream_pb2_grpc.StreamServiceStub(channel).Events(requests_from(requests))
        requests.put_nowait(stream_pb2.Request(Events=[stream_pb2.EventType(type="user")]))
        await plasma_connections(session, proc, 2)

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
