"""HTTP calls to a hub (in-process or a `cachewire-hub` process) by port: publish, and wait
on the SSE connections its /metrics/plasma counts."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.servers import wait_until

WAIT = 20.0  # generous: the machine is shared


async def publish(port: int, body: Any) -> list[str]:
    """POST /v1/publish (one event or a list); the ids the hub answers."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}/v1/publish", json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        ids: list[str] = (await resp.json())["ids"]
        return ids


async def plasma_metrics(port: int) -> dict[str, int]:
    """GET /metrics/plasma: the connection counts, as Plasma's endpoint reports them."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics/plasma") as resp,
    ):
        counts: dict[str, int] = await resp.json()
        return counts


async def wait_connections(port: int, n: int, kind: str = "sse", within: float = WAIT) -> None:
    """Wait on the fact that the hub counts at least n `kind` ("sse", "grpc") connections."""

    async def counted() -> bool:
        return (await plasma_metrics(port))[f"connections_{kind}"] >= n

    await wait_until(counted, within, f"{n} {kind} connections at the hub")
