"""The hub's lifecycle: `await Hub(settings).start()` … `await hub.stop(grace)`.

start() returns once every listener is bound and exposes the bound ports (bind port 0 in
tests). Signals are handled by __main__, not here, so tests and embedders run it as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING

from aiohttp import web

from cachewire.hub import http_api, sse, telemetry
from cachewire.hub.brokers.base import Broker
from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.connections import GuardedSite, Limits
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
    return MemoryBroker(settings.history, history_bytes=settings.history_bytes)


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
        self.draining = False  # SIGTERM: not ready, still serving (drain())
        self.http_port = 0
        self.grpc_port: int | None = None
        self._runner: web.AppRunner | None = None
        self.connections = Limits(
            self.settings.max_connections,
            self.settings.max_connections_per_client,
            self.settings.header_timeout,
        )
        self._site: web.TCPSite | None = None
        self._grpc: GrpcServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ingest: ChannelIngest | None = None

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body)
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
            self.make_app(),
            handler_cancellation=True,
            shutdown_timeout=s.grace,
            access_log=None,
            keepalive_timeout=s.idle_timeout,
        )
        await self._runner.setup()
        shared = s.workers > 1  # --workers: every worker binds the same ports
        self._site = GuardedSite(
            self._runner, s.host, s.http_port, self.connections, reuse_port=shared
        )
        await self._site.start()
        sockets = getattr(self._site._server, "sockets", None)  # asyncio's Server or uvloop's
        assert sockets
        self.http_port = sockets[0].getsockname()[1]
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

    async def drain(self) -> None:
        """SIGTERM in a cluster: leave the load balancers first, then the clients; stop() after.

        Ending every stream at once would send all their clients to the other replicas in
        one reconnect storm, and a pod that stops serving before its endpoint is removed
        refuses the connections still routed to it. So:
        """
        s = self.settings
        loop = asyncio.get_running_loop()
        # 1. Not ready (/readyz 503, gRPC health NOT_SERVING) but serving as before, for
        #    --drain-delay: endpoints and balancers stop sending new clients meanwhile.
        self.draining = True
        if self._grpc is not None:
            await self._grpc.refresh_health()
        log.info("hub draining", extra={"delay": s.drain_delay, "window": s.drain_window})
        await asyncio.sleep(s.drain_delay)
        # 2. End the streams one by one, spread evenly over --drain-window in random
        #    order; SSE clients get a jittered `retry:` so their reconnects spread further.
        #    Each client resumes elsewhere from its last id (Last-Event-ID, resume_from).
        if s.drain_window <= 0:
            return  # stop() ends them all at once
        subs = list(self.fanout.subscriptions())
        random.shuffle(subs)
        start = loop.time()
        for i, sub in enumerate(subs):
            wait = start + s.drain_window * i / len(subs) - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if sub.closed:
                continue
            self.fanout.unsubscribe(sub)
            if isinstance(sub.sink, sse.SseSink):
                retry = round(s.sse_retry * random.uniform(0.5, 1.5))
                sub.sink.send_frame(f"retry: {retry}\n\n".encode())
            sub.sink.close()
        # 3. Then the caller stop()s: what is left (streams opened meanwhile, requests in
        #    flight) ends as on any stop.

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
