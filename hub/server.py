"""The hub's lifecycle: `await Hub(settings).start()` … `await hub.stop(grace)`.

start() returns once every listener is bound and exposes the bound ports (bind port 0 in
tests). Signals are handled by __main__, not here, so tests and embedders run it as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
from typing import TYPE_CHECKING

from aiohttp import web

from cachewire.common.loop import bound_port
from cachewire.hub import http_api, sse, telemetry
from cachewire.hub.auth.service import Auth
from cachewire.hub.brokers.base import Broker
from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.connections import GuardedSite, Limits
from cachewire.hub.core import Fanout, Pressure
from cachewire.hub.fastlane import FastLane
from cachewire.hub.metrics import make_registry
from cachewire.hub.settings import HubSettings
from cachewire.hub.tls import RELOAD_POLL, ServerTls

if TYPE_CHECKING:
    from cachewire.hub.grpc_server import GrpcServer
    from cachewire.hub.ingest import ChannelIngest

log = logging.getLogger("cachewire.hub")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" (every interface)


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
        # None in `--auth off`: then no request does any auth work at all.
        self.auth = Auth(self.settings) if self.settings.auth == "protected" else None
        self.stopping = False
        self.draining = False  # SIGTERM: not ready, still serving (drain())
        self.http_port = 0
        self.grpc_port: int | None = None
        self.admin_port: int | None = None
        self._runner: web.AppRunner | None = None
        # --fast-publish: plain publishes skip aiohttp's request cycle (hub/fastlane.py).
        lane = FastLane(self) if s.fast_publish == "on" else None
        self.connections = Limits(
            s.max_connections, s.max_connections_per_client, s.header_timeout, s.idle_timeout, lane
        )
        self._site: web.TCPSite | None = None
        self._admin: web.AppRunner | None = None
        # Certificates are read here: an unreadable one fails before anything listens.
        s = self.settings
        self.tls = ServerTls(s.tls_cert, s.tls_key) if s.tls_cert else None
        self._grpc: GrpcServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ingest: ChannelIngest | None = None

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body)
        app[sse.HUB] = self
        # Protected: the operator's endpoints only on the admin listener, never on the
        # port an ingress routes. Off: on both, as Plasma serves them.
        http_api.add_routes(app, with_metrics=self.auth is None)
        return app

    def make_admin_app(self) -> web.Application:
        app = web.Application()
        app[sse.HUB] = self
        http_api.add_metrics_routes(app)
        return app

    async def start(self) -> None:
        s = self.settings
        telemetry.setup()  # tracing from OTEL_* (once per process; off when unset)
        # 1. The broker first. If its backend (Redis) is down, it returns anyway: the hub
        #    listens not ready (/readyz 503, health NOT_SERVING, publish 503) until it is up.
        await self.broker.start(self.fanout.dispatch, self.fanout.reset_all)
        self.fanout.last_id = self.broker.head_id()
        self.fanout.last_pos = self.broker.position(self.fanout.last_id) or (0, 0)
        if self.auth is not None:  # API keys read and JWKS fetched before the first request
            await self.auth.start()
        # 2. HTTP: SSE, publish, health, metrics.
        self._runner = web.AppRunner(
            self.make_app(),
            handler_cancellation=True,
            shutdown_timeout=s.grace,
            access_log=None,
            keepalive_timeout=s.idle_timeout,
        )
        await self._runner.setup()
        if self.tls is not None:
            self._tasks.append(asyncio.create_task(self._reload_tls(self.tls)))
        self._site = GuardedSite(
            self._runner,
            s.host,
            s.http_port,
            self.connections,
            ssl_context=None if self.tls is None else self.tls.ssl_context,
            reuse_port=s.workers > 1,  # --workers: every worker binds the same ports
        )
        await self._site.start()
        self.http_port = bound_port(self._site)
        if s.admin_port is not None:
            self._admin = web.AppRunner(self.make_admin_app(), access_log=None)
            await self._admin.setup()
            admin_site = web.TCPSite(self._admin, s.admin_host, s.admin_port, reuse_port=False)
            await admin_site.start()
            self.admin_port = bound_port(admin_site)
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
        self._warn_about_exposure()
        log.info(
            "hub started",
            extra={
                "host": s.host,
                "http_port": self.http_port,
                "grpc_port": self.grpc_port,
                "broker": s.broker,
                "auth": s.auth,
                "admin_port": self.admin_port,
            },
        )

    def _warn_about_exposure(self) -> None:
        s = self.settings
        if self.auth is None and not is_loopback(s.host):
            log.warning(
                "auth is off and the hub listens beyond loopback: anyone who reaches its "
                "HTTP or gRPC port may publish, flush every cache and subscribe to every "
                "type (see --auth protected, docs/security.md)",
                extra={"host": s.host},
            )
        if self.auth is not None and self.admin_port is None:
            log.warning(
                "/metrics and /metrics/plasma are not served: with --auth protected they "
                "are on the admin listener only, and --admin-port is off"
            )

    async def _reload_tls(self, tls: ServerTls) -> None:
        while True:
            await asyncio.sleep(RELOAD_POLL)
            tls.reload_if_changed()

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
        if self._admin is not None:
            draining.append(self._admin.cleanup())
        await asyncio.gather(*draining)
        if self.auth is not None:
            await self.auth.stop()
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
