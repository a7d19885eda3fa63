"""The hub's gRPC server: Plasma's StreamService, cachewire.v1.Hub, health, reflection.

`GrpcServer(hub)` is owned by `Hub`: `start(host, port)` returns the bound port, and
`stop(grace)` ends open streams with UNAVAILABLE (clients reconnect, to another replica)
within the grace period. `HubError`s raised by the services become gRPC statuses here,
in `_abort`, and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from cachewire.hub.errors import Denied, HubError, Overloaded, Unavailable
from cachewire.hub.grpc_api import SHUTTING_DOWN, HubService, Outbox
from cachewire.hub.grpc_plasma import StreamService
from cachewire.v1 import hub_pb2, plasma_pb2

if TYPE_CHECKING:
    from cachewire.hub.server import Hub

log = logging.getLogger("cachewire.hub.grpc")

HUB_SERVICE = hub_pb2.DESCRIPTOR.services_by_name["Hub"].full_name
PLASMA_SERVICE = plasma_pb2.DESCRIPTOR.services_by_name["StreamService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# How often health Watch streams learn that the broker went down or came back.
HEALTH_POLL = 1.0
# Keepalive (gRPC core's doc/keepalive.md): ping idle connections to find dead peers of
# idle streams (Plasma relied on TCP alone), with no cap on pings while no data flows; and
# accept client pings as often as every 10 s, also on connections without calls; a client
# that pings more often is sent GOAWAY after two strikes (enforcement).
SERVER_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
)

F = TypeVar("F", bound=Callable[..., Any])


def connection_age(age: float | None, grace: float) -> tuple[tuple[str, int], ...]:
    """Connections are asked to go away (GOAWAY) after `age`, which gRPC core jitters by
    ±10 % per connection, and closed `grace` later: long-lived streams then reconnect,
    through the Service, so they spread over replicas added since (an HPA scale-out)."""
    if age is None:
        return ()
    return (
        ("grpc.max_connection_age_ms", round(age * 1000)),
        ("grpc.max_connection_age_grace_ms", round(grace * 1000)),
    )


async def _abort(context: Any, exc: Exception, hub: Hub | None = None) -> None:
    """The one place where exceptions become gRPC statuses; clients never see a trace."""
    if isinstance(exc, Overloaded):  # gRPC's retry policy honours the pushback trailer
        pushback = (("grpc-retry-pushback-ms", str(exc.retry_after * 1000)),)
        await context.abort(exc.grpc_code, str(exc), pushback)
    if isinstance(exc, Denied) and hub is not None and hub.auth is not None:
        hub.auth.note(exc, "grpc", context.peer())
    if isinstance(exc, HubError):
        await context.abort(exc.grpc_code, str(exc))
    log.error("unhandled error in a gRPC method", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class Calls:
    """Wraps servicer methods: maps their errors, and counts the calls in progress."""

    def __init__(self, hub: Hub | None = None) -> None:
        self._hub = hub
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def guard(self, method: F) -> F:
        @functools.wraps(method)
        async def guarded(request: Any, context: Any) -> Any:
            self.active += 1
            self._idle.clear()
            try:
                return await method(request, context)
            except Exception as exc:
                await _abort(context, exc, self._hub)
            finally:
                self.active -= 1
                if not self.active:
                    self._idle.set()

        return guarded  # type: ignore[return-value]

    async def idle(self) -> None:
        """Return once no call is in progress."""
        await self._idle.wait()


class Health(HealthServicer):  # type: ignore[misc]  # grpc_health ships no type hints
    """grpc.health.v1: SERVING while the broker is ready and the hub is not stopping."""

    def __init__(self, serving: Callable[[], bool]) -> None:
        super().__init__()
        self._serving = serving

    async def refresh(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self._serving()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", HUB_SERVICE, PLASMA_SERVICE):
            if self._server_status.get(service) != status:
                await self.set(service, status)

    async def Check(self, request: Any, context: Any) -> Any:
        await self.refresh()
        return await super().Check(request, context)


class GrpcServer:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._streams: set[Outbox] = set()
        self._calls = Calls(hub)
        self._health = Health(lambda: hub.broker.ready() and not (hub.stopping or hub.draining))
        self._server: Any = None
        self._poll: asyncio.Task[None] | None = None

    def _handlers(self) -> dict[str, dict[str, Any]]:
        """Method handlers; streamed responses are pre-encoded bytes (no serializer)."""
        guard = self._calls.guard
        api = HubService(self._hub, self._streams)
        plasma = StreamService(self._hub, self._streams)
        return {
            HUB_SERVICE: {
                "Publish": grpc.unary_unary_rpc_method_handler(
                    guard(api.Publish),
                    request_deserializer=hub_pb2.PublishRequest.FromString,
                    response_serializer=hub_pb2.PublishResponse.SerializeToString,
                ),
                "PublishStream": grpc.stream_stream_rpc_method_handler(
                    guard(api.PublishStream),
                    request_deserializer=hub_pb2.PublishRequest.FromString,
                ),
                "Subscribe": grpc.unary_stream_rpc_method_handler(
                    guard(api.Subscribe),
                    request_deserializer=hub_pb2.SubscribeRequest.FromString,
                ),
            },
            PLASMA_SERVICE: {
                "Events": grpc.stream_stream_rpc_method_handler(
                    guard(plasma.Events),
                    request_deserializer=plasma_pb2.Request.FromString,
                ),
            },
        }

    async def start(self, host: str, port: int) -> int:
        """Bind and serve; return the bound port (port 0 picks a free one)."""
        s = self._hub.settings
        server = grpc.aio.server(
            options=(
                *SERVER_OPTIONS,
                ("grpc.max_receive_message_length", s.max_body),
                # Off (a second hub on the port is an error), except --workers share it.
                ("grpc.so_reuseport", int(s.workers > 1)),
                ("grpc.max_concurrent_streams", s.max_streams),
                ("grpc.server_handshake_timeout_ms", int(s.header_timeout * 1000)),
                ("grpc.max_connection_idle_ms", int(s.idle_timeout * 1000)),
                *connection_age(s.max_connection_age, s.max_connection_age_grace),
            )
        )
        for service, methods in self._handlers().items():
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, methods),)
            )
            server.add_registered_method_handlers(service, methods)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (HUB_SERVICE, PLASMA_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        tls = self._hub.tls
        try:
            if tls is None:
                bound = int(server.add_insecure_port(address))
            else:
                bound = int(server.add_secure_port(address, tls.grpc_credentials()))
        except RuntimeError as exc:  # grpc's "failed to bind"; __main__ reports OSErrors
            raise OSError(f"gRPC cannot listen on {address}: {exc}") from None
        await server.start()
        self._server = server
        await self._health.refresh()
        self._poll = asyncio.create_task(self._poll_health())
        return bound

    async def refresh_health(self) -> None:
        await self._health.refresh()

    async def _poll_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_POLL)
            await self._health.refresh()

    async def stop(self, grace: float) -> None:
        # 1. Health says NOT_SERVING for good: probes and balancers stop sending clients.
        await self._health.enter_graceful_shutdown()
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        # 2. End every open stream (fanout.close_all did those with a subscription):
        #    each drains what is queued, then ends with UNAVAILABLE.
        for outbox in tuple(self._streams):
            outbox.finish(Unavailable(SHUTTING_DOWN))
        if self._server is None:
            return
        # 3. Refuse new calls; let ours (streams ending, publishes storing) finish within
        #    the grace, then cancel what is left: calls past the grace, health Watch and
        #    reflection streams (which would otherwise hold the process for the full grace).
        stopping = asyncio.create_task(self._server.stop(grace))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._calls.idle()
        await self._server.stop(0)
        await stopping
