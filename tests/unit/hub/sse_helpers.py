"""Helpers for SSE tests against an in-process hub: start, publish over HTTP, subscribe."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from hub.server import Hub
from tests.sse_wire import SseClient

HubFactory = Callable[..., Any]


async def start(hub_factory: HubFactory, **settings: Any) -> Hub:
    """An in-process hub on a free port, without gRPC (these tests are about HTTP)."""
    hub: Hub = await hub_factory(grpc_port=None, **settings)
    return hub


async def publish(hub: Hub, body: Any) -> list[str]:
    """POST /v1/publish; the ids the hub answers."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{hub.http_port}/v1/publish", json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        ids: list[str] = (await resp.json())["ids"]
        return ids


async def subscribe(hub: Hub, target: str = "/?eventType=a", **kw: Any) -> SseClient:
    """Connect and wait until the hub has registered the subscription."""
    before = hub.fanout.count("sse")
    client = await SseClient.connect(hub.http_port, target, **kw)
    await hub.fanout.wait_subscribers(before + 1, "sse")
    return client


async def eventually(check: Callable[[], bool], what: str, within: float = 20.0) -> None:
    """Poll a fact until it holds (generous bound: the machine is shared)."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - aiohttp's connection list has no event to await
            await asyncio.sleep(0.01)
    assert check(), what


def connected_peers(hub: Hub) -> set[tuple[str, int]]:
    """The client addresses of the hub's open HTTP connections (aiohttp's server)."""
    runner = hub._runner
    assert runner is not None and runner.server is not None
    peers = set()
    for handler in runner.server.connections:
        if handler.transport is not None and not handler.transport.is_closing():
            peers.add(handler.transport.get_extra_info("peername"))
    return peers


async def received_until(client: SseClient, end_id: str) -> list[str]:
    """The ids of the events received before the one with end_id (which every client gets)."""
    got: list[str] = []
    while True:
        event_id, _ = (await client.events(1))[0]
        assert event_id is not None
        if event_id == end_id:
            return got
        got.append(event_id)
