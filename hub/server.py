"""The hub's lifecycle: `await Hub(settings).start()` … `await hub.stop(grace)`.

start() returns once every listener is bound and exposes the bound ports (bind port 0 in
tests). Signals are handled by __main__, not here, so tests and embedders run it as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from cachewire.hub import http_api, sse, telemetry
from cachewire.hub.brokers.base import Broker
from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.core import Fanout, Pressure
from cachewire.hub.metrics import make_registry
from cachewire.hub.settings import HubSettings

if TYPE_CHECKING:
    from cachewire.hub.grpc_server import GrpcServer
    from cachewire.hub.ingest import ChannelIngest

log = logging.getLogger("cachewire.hub")


def make_broker(settings: HubSettings) -> Broker:
    if settings.broker == "redis":
        from cachewire.hub.brokers.redis import RedisBroker

        return RedisBroker(settings)
    return MemoryBroker(settings.history)


class Hub:
    def __init__(self, settings: HubSettings | None = None, broker: Broker | None = None) -> None:
        self.settings = settings or HubSettings()
        self.broker = broker or make_broker(self.settings)
        s = self.settings
        pressure = Pressure(min(s.lag_threshold, max(1, s.queue_size // 2)), s.publish_wait)
        self.fanout = Fanout(self.broker, s.queue_size, pressure)
        self.registry = make_registry(self)
        self.flusher = sse.Flusher()
        self.stopping = False
        self.http_port = 0
        self.grpc_port: int | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._grpc: GrpcServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ingest: ChannelIngest | None = None

    def make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[http_api.errors_middleware],
            client_max_size=self.settings.max_body,
        )
        app[sse.HUB] = self
        http_api.add_routes(app)
        return app

    async def start(self) -> None:
        s = self.settings
        telemetry.setup()  # tracing from OTEL_* (once per process; off when unset)
        # 1. The broker first. If its backend (Redis) is down, it returns anyway: the hub
        #    listens not ready (/readyz 503, health NOT_SERVING, publish 503) until it is up.
        await self.broker.start(self.fanout.dispatch, self.fanout.reset_all)
        self.fanout.last_id = self.broker.head_id()
        self.fanout.last_pos = self.broker.position(self.fanout.last_id) or (0, 0)
        # 2. HTTP: SSE, publish, health, metrics.
        self._runner = web.AppRunner(
            self.make_app(), handler_cancellation=True, shutdown_timeout=s.grace, access_log=None
        )
        await self._runner.setup()
        shared = s.workers > 1  # --workers: every worker binds the same ports
        self._site = web.TCPSite(self._runner, s.host, s.http_port, reuse_port=shared)
        await self._site.start()
        server = self._site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.http_port = server.sockets[0].getsockname()[1]
        # 3. gRPC: Plasma's StreamService and cachewire's Hub service.
        if s.grpc_port is not None:
            from cachewire.hub.grpc_server import GrpcServer

            self._grpc = GrpcServer(self)
            self.grpc_port = await self._grpc.start(s.host, s.grpc_port)
        # 4. Plasma's publishers: ingest Redis pub/sub channels (one replica at a time).
        if s.redis_channels:
            from cachewire.hub.ingest import ChannelIngest

            self._ingest = ChannelIngest(self)
            await self._ingest.start()
        # 5. Heartbeats.
        self._tasks.append(asyncio.create_task(self._beat(s.heartbeat, ("sse",))))
        self._tasks.append(asyncio.create_task(self._beat(s.subscribe_heartbeat, ("grpc",))))
        log.info(
            "hub started",
            extra={
                "host": s.host,
                "http_port": self.http_port,
                "grpc_port": self.grpc_port,
                "broker": s.broker,
            },
        )

    async def _beat(self, interval: float, kinds: tuple[str, ...]) -> None:
        while True:
            await asyncio.sleep(interval)
            self.fanout.heartbeat(kinds)

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.grace if grace is None else grace
        if self.stopping:  # stopped already, or stopping: once is enough
            return
        self.stopping = True
        log.info("hub stopping", extra={"grace": grace})
        # 1. Stop accepting connections, so clients reconnect to another replica.
        if self._site is not None:
            await self._site.stop()
        # 2. End every stream cleanly: SSE gets its last chunk, gRPC an UNAVAILABLE status.
        self.fanout.close_all()
        # 3. Let in-flight requests and the streams' last bytes finish, within the grace
        #    period: gRPC and HTTP drain side by side, so the wait is one grace, not two.
        draining = []
        if self._grpc is not None:
            draining.append(self._grpc.stop(grace))
        if self._runner is not None:
            draining.append(self._runner.cleanup())
        await asyncio.gather(*draining)
        # 4. Channel ingest, heartbeats, then the broker.
        if self._ingest is not None:
            await self._ingest.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.broker.stop()
        await telemetry.flush()  # export the spans still buffered
        log.info("hub stopped")
