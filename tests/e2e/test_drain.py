"""Graceful drain on SIGTERM: two hubs share Redis; one is terminated with 100 SSE and 10
gRPC streams open while events keep being published. It turns not ready at once, keeps
serving for --drain-delay, ends its streams spread over --drain-window, exits 0, and every
client resumes on the other hub with no event missing or repeated."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable

import aiohttp
import grpc
import pytest

from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.e2e.test_redis_helpers import get, publish
from tests.hub_http import wait_connections
from tests.servers import Proc, wait_until

SSE_CLIENTS, GRPC_CLIENTS = 100, 10
DELAY, WINDOW, GRACE = 1.5, 2.0, 2.0
WAIT = 30.0


def position(event_id: str) -> tuple[int, ...]:
    """A Redis-broker id's place in the stream: epoch-milliseconds-sequence."""
    return tuple(int(part) for part in event_id.split("-")[1:])


class Client:
    """Follows the stream of `hubs[0]`, and of `hubs[1]` once that one ends it."""

    def __init__(self, hubs: list[Proc]) -> None:
        self.hubs = hubs
        self.ids: list[str] = []  # event ids received, in order
        self.position = ""  # what to resume from
        self.ended_at: float | None = None  # when the first hub ended the stream
        self.live = asyncio.Event()  # subscribed to the first hub
        self.changed = asyncio.Event()
        self.retry_ms: list[int] = []

    def got(self, event_id: str) -> None:
        self.ids.append(event_id)
        self.position = event_id
        self.changed.set()

    async def until(self, event_id: str) -> None:
        while event_id not in self.ids:
            self.changed.clear()
            await self.changed.wait()


class SseClient(Client):
    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
            for hub in self.hubs:
                headers = {"Accept": "text/event-stream"}
                if self.position:
                    headers["Last-Event-ID"] = self.position
                url = f"http://127.0.0.1:{hub.ports['http']}/?eventType=user"
                async with http.get(url, headers=headers) as resp:
                    assert resp.status == 200
                    await self._read(resp)
                if self.ended_at is None:
                    self.ended_at = time.monotonic()

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        event_id, data = None, False
        with contextlib.suppress(aiohttp.ClientPayloadError):
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("data:"):
                    data = True
                elif line.startswith("retry:") and self.live.is_set() and self.ended_at is None:
                    self.retry_ms.append(int(line[6:]))
                elif not line and event_id is not None:
                    if data:
                        self.got(event_id)
                    elif not self.position:  # the id-only frame: live, and a position
                        self.position = event_id
                        self.live.set()
                    event_id, data = None, False


class GrpcClient(Client):
    async def run(self) -> None:
        for hub in self.hubs:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.ports['grpc']}") as channel:
                request = hub_pb2.SubscribeRequest(topics=["user"], resume_from=self.position)
                try:
                    async for message in hub_pb2_grpc.HubStub(channel).Subscribe(request):
                        kind = message.WhichOneof("message")
                        assert kind != "reset", message
                        if kind == "heartbeat" and not self.position:
                            self.position = message.heartbeat.high_water_id
                            self.live.set()
                        for event in message.events.events:
                            self.got(event.id)
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            if self.ended_at is None:
                self.ended_at = time.monotonic()


@pytest.mark.timeout(90)
async def test_sigterm_drains_and_every_client_resumes_on_the_other_hub(
    redis_server: Proc, hub_process: Callable[..., Proc]
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    common = ["--broker", "redis", "--redis-url", url, "--sse-retry", "200"]
    leaving = hub_process(
        *common,
        *["--drain-delay", str(DELAY), "--drain-window", str(WINDOW), "--grace", str(GRACE)],
    )
    staying = hub_process(*common)
    clients: list[Client] = [SseClient([leaving, staying]) for _ in range(SSE_CLIENTS)]
    clients += [GrpcClient([leaving, staying]) for _ in range(GRPC_CLIENTS)]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    published: list[str] = []
    stop_publishing = asyncio.Event()

    async def publisher() -> None:
        n = 0
        while not stop_publishing.is_set():
            n += 1
            published.extend(await publish(staying, [{"type": f"user:{n}"}]))
            await asyncio.sleep(0.02)  # a steady trickle of events through the drain

    try:
        await asyncio.wait_for(asyncio.gather(*(c.live.wait() for c in clients)), WAIT)
        await wait_connections(leaving.ports["http"], SSE_CLIENTS, "sse")
        await wait_connections(leaving.ports["http"], GRPC_CLIENTS, "grpc")
        publishing = asyncio.create_task(publisher())

        terminated = time.monotonic()
        leaving.signal(signal.SIGTERM)

        # Not ready at once, yet still serving: a publish to the leaving hub works.
        async def not_ready() -> bool:
            return (await get(leaving, "/readyz"))[0] == 503

        await wait_until(not_ready, WAIT, "/readyz 503 after SIGTERM")
        published.extend(await publish(leaving, [{"type": "user:during-delay"}]))
        assert all(c.ended_at is None for c in clients)  # no stream ended in the delay

        code = await asyncio.to_thread(leaving.popen.wait, WAIT)
        exited = time.monotonic() - terminated
        assert code == 0, leaving.log()
        assert exited < DELAY + WINDOW + GRACE + 5, exited

        stop_publishing.set()
        await publishing
        last = max(published, key=position)
        await asyncio.wait_for(asyncio.gather(*(c.until(last) for c in clients)), WAIT)
    finally:
        stop_publishing.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Publishes overlap (the trickle and the one during the delay), so their answers may
    # come back out of order: the stream's order is the ids' (epoch-milliseconds-sequence).
    in_order = sorted(published, key=position)
    for client in clients:
        assert client.ids == in_order  # every event, once, in order: no gap on resume
    ends = [c.ended_at for c in clients if c.ended_at is not None]
    assert len(ends) == len(clients)
    # Spread over the window, not all at once (a reconnect storm).
    assert max(ends) - min(ends) > WINDOW / 2, (min(ends), max(ends))
    assert min(ends) - terminated >= DELAY
    retries = [r for c in clients if isinstance(c, SseClient) for r in c.retry_ms]
    assert len(retries) == SSE_CLIENTS and len(set(retries)) > 1  # jittered
    assert all(100 <= r <= 300 for r in retries)
    assert "Traceback" not in leaving.log()


async def test_max_connection_age_ends_a_stream_so_it_reconnects(
    hub_process: Callable[..., Proc],
) -> None:
    """Past --max-connection-age (+ grace) a gRPC stream ends and its client reconnects:
    how sidecars spread over replicas an HPA added."""
    hub = hub_process("--max-connection-age", "0.5", "--max-connection-age-grace", "0.5")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.ports['grpc']}") as channel:
        call = hub_pb2_grpc.HubStub(channel).Subscribe(hub_pb2.SubscribeRequest(topics=["user"]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async with asyncio.timeout(WAIT):
                async for _ in call:
                    pass  # heartbeats, until the connection is closed
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
