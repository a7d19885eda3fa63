"""Servers in front of a real hub that fail on purpose, for the publisher's retry tests.

`FaultyProxy` forwards HTTP requests to a hub and, per request, by a script of actions:
"ok" (forward, answer), "503" (answer 503 with Retry-After, forward nothing), "lost"
(forward, so the hub stores, then drop the connection without answering), "slow" (forward,
then hold the answer until the client has sent its next request: a timeout after storing).
`FaultyGrpcHub` is a cachewire.v1.Hub servicer doing the same over gRPC with status codes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Any

import aiohttp
import grpc
from aiohttp import web

from cachewire.v1 import hub_pb2_grpc


class FaultyProxy:
    def __init__(self, hub_port: int, script: Iterable[str]) -> None:
        self.target = f"http://127.0.0.1:{hub_port}/v1/publish"
        self.script = deque(script)
        self.keys: list[str] = []  # the Idempotency-Key of every request received
        self.port = 0
        self._next_request = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> FaultyProxy:
        app = web.Application()
        app.router.add_post("/v1/publish", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None and self._runner is not None
        await self._session.close()
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        skip = ("host", "content-length")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        async with self._session.post(
            self.target, data=await request.read(), headers=headers
        ) as resp:
            return web.Response(
                body=await resp.read(), status=resp.status, content_type=resp.content_type
            )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.keys.append(request.headers.get("Idempotency-Key", ""))
        self._next_request.set()
        action = self.script.popleft() if self.script else "ok"
        if action == "503":
            return web.json_response(
                {"error": "overloaded", "status": 503}, status=503, headers={"Retry-After": "0"}
            )
        answer = await self._forward(request)
        if action == "lost":
            assert request.transport is not None
            request.transport.close()
            return answer
        if action == "slow":
            self._next_request.clear()
            await self._next_request.wait()  # the client gave up on this one and retried
        return answer


class FaultyGrpcHub:
    """cachewire.v1.Hub/Publish: per call, by the script, "ok" forwards to the real hub,
    "exhausted" answers RESOURCE_EXHAUSTED (retry-after 0), "invalid" INVALID_ARGUMENT."""

    def __init__(self, hub_port: int, script: Iterable[str]) -> None:
        self.script = deque(script)
        self.keys: list[str] = []
        self.port = 0
        self._hub_target = f"127.0.0.1:{hub_port}"
        self._server: Any = None
        self._channel: Any = None

    async def __aenter__(self) -> FaultyGrpcHub:
        self._channel = grpc.aio.insecure_channel(self._hub_target)
        upstream = hub_pb2_grpc.HubStub(self._channel)
        outer = self

        class Servicer(hub_pb2_grpc.HubServicer):  # type: ignore[misc]
            async def Publish(self, request: Any, context: Any) -> Any:
                outer.keys.append(request.idempotency_key)
                action = outer.script.popleft() if outer.script else "ok"
                if action == "exhausted":
                    context.set_trailing_metadata((("retry-after", "0"),))
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")
                if action == "invalid":
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "event 0: no")
                return await upstream.Publish(request)

        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        hub_pb2_grpc.add_HubServicer_to_server(Servicer(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.stop(0)
        await self._channel.close()

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"
