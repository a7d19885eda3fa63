"""Helpers for SSE tests against an in-process hub: start, publish over HTTP, subscribe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cachewire.hub.server import Hub
from tests.hub_http import publish as publish_to
from tests.sse_wire import SseClient

HubFactory = Callable[..., Any]


async def start(hub_factory: HubFactory, **settings: Any) -> Hub:
    """An in-process hub on a free port, without gRPC (these tests are about HTTP)."""
    hub: Hub = await hub_factory(grpc_port=None, **settings)
    return hub


async def publish(hub: Hub, body: Any) -> list[str]:
    """POST /v1/publish; the ids the hub answers."""
    return await publish_to(hub.http_port, body)


async def subscribe(hub: Hub, target: str = "/?eventType=a", **kw: Any) -> SseClient:
    """Connect and wait until the hub has registered the subscription."""
    before = hub.fanout.count("sse")
    client = await SseClient.connect(hub.http_port, target, **kw)
    await hub.fanout.wait_subscribers(before + 1, "sse")
    return client


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
