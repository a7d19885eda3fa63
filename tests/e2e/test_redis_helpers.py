"""Clients shared by the Redis scale-out and channel-ingest tests (no tests in here).

An SSE reader over aiohttp, a gRPC Subscribe reader, HTTP publish and /metrics helpers.
Every wait has a generous timeout and waits on a fact (an event that arrives).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc

from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.servers import Proc, wait_until

WAIT = 30.0  # seconds: generous, the machine is shared


@dataclass
class Frame:
    """One SSE frame: `data` is the parsed JSON (None for an id-only position frame)."""

    id: str | None
    data: Any

    @property
    def type(self) -> str | None:
        return self.data["meta"]["type"] if isinstance(self.data, dict) else None


def http(proc: Proc) -> str:
    return f"http://127.0.0.1:{proc.ports['http']}"


class Sse:
    """An SSE subscription: `async with Sse(hub, "a,b", last_id=...) as sse: await sse.next()`."""

    def __init__(self, proc: Proc, topics: str, last_id: str | None = None) -> None:
        self.url = f"{http(proc)}/?eventType={topics}"
        self.headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            self.headers["Last-Event-ID"] = last_id
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self._session: aiohttp.ClientSession | None = None
        self._resp: aiohttp.ClientResponse | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Sse:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        self._resp = await self._session.get(self.url, headers=self.headers)
        assert self._resp.status == 200, await self._resp.text()
        self._task = asyncio.create_task(self._pump(self._resp))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._resp is not None:
            self._resp.close()
        if self._session is not None:
            await self._session.close()

    async def _pump(self, resp: aiohttp.ClientResponse) -> None:
        event_id: str | None = None
        data: list[str] = []
        with contextlib.suppress(aiohttp.ClientError):
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line:
                    if event_id is not None or data:
                        body = json.loads("\n".join(data)) if data else None
                        self.frames.put_nowait(Frame(event_id, body))
                    event_id, data = None, []

    async def next(self, within: float = WAIT) -> Frame:
        return await asyncio.wait_for(self.frames.get(), within)

    async def position(self) -> str:
        """The id-only frame a fresh subscription starts with: the subscription is live."""
        frame = await self.next()
        assert frame.data is None and frame.id is not None, frame
        return frame.id

    async def events(self, n: int, within: float = WAIT) -> list[Frame]:
        return [await self.next(within) for _ in range(n)]


class GrpcSubscribe:
    """A cachewire.v1.Hub Subscribe stream, read into a queue of SubscribeResponse."""

    def __init__(self, proc: Proc, topics: Sequence[str], resume_from: str = "") -> None:
        self.target = f"127.0.0.1:{proc.ports['grpc']}"
        self.request = hub_pb2.SubscribeRequest(topics=list(topics), resume_from=resume_from)
        self.messages: asyncio.Queue[hub_pb2.SubscribeResponse] = asyncio.Queue()
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> GrpcSubscribe:
        self._channel = grpc.aio.insecure_channel(self.target)
        call = hub_pb2_grpc.HubStub(self._channel).Subscribe(self.request)
        self._task = asyncio.create_task(self._pump(call))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close()

    async def _pump(self, call: Any) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for message in call:
                self.messages.put_nowait(message)

    async def next(self, within: float = WAIT) -> hub_pb2.SubscribeResponse:
        return await asyncio.wait_for(self.messages.get(), within)

    async def events(self, n: int, within: float = WAIT) -> list[hub_pb2.Event]:
        """The next n events, skipping heartbeats; a reset fails the test."""
        out: list[hub_pb2.Event] = []
        while len(out) < n:
            message = await self.next(within)
            kind = message.WhichOneof("message")
            assert kind != "reset", message
            if kind == "events":
                out.extend(message.events.events)
        return out

    async def first_not_heartbeat(self) -> hub_pb2.SubscribeResponse:
        while True:
            message = await self.next()
            if message.WhichOneof("message") != "heartbeat":
                return message


async def publish(proc: Proc, events: list[dict[str, Any]]) -> list[str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{http(proc)}/v1/publish", json=events) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
        return list(body["ids"])


async def get(proc: Proc, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{http(proc)}{path}") as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def metric(proc: Proc, name: str, labels: str = "") -> float:
    """One sample from /metrics, e.g. metric(hub, "cachewire_hub_ingest_leader")."""
    _, text = await get(proc, "/metrics")
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    assert match is not None, f"{name}{{{labels}}} not in /metrics"
    return float(match[1])


async def eventually(check: Any, what: str, within: float = WAIT) -> None:
    """Poll an async fact (a coroutine function returning bool) until it holds."""
    await wait_until(check, within=within, what=what)
