"""The health port: /healthz, /readyz, /metrics, /v1/status and the /v1/applied barrier.

/readyz is 200 only while the sidecar is subscribed, has applied everything up to the
high-water id of the hub's latest heartbeat, and reaches every sink. Wiring it to the
pod's readiness keeps traffic away from a pod whose caches may be stale (after a hub
outage or a reset, until the flush and replay are done); the price is that a hub outage
longer than the probe's failureThreshold makes *every* pod unready at once. docs/sidecar.md
discusses when to wire it to readiness and when only to alert on it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from cachewire.common.loop import bound_port
from cachewire.common.telemetry import exposition
from cachewire.sidecar.errors import InvalidInput, SidecarError

if TYPE_CHECKING:
    from cachewire.sidecar.server import Sidecar

log = logging.getLogger("cachewire.sidecar.health")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_WAIT = 60.0
CHECK_TIMEOUT = 1.0
SIDECAR: web.AppKey[Sidecar] = web.AppKey("sidecar")


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON; no traceback ever reaches a client."""
    try:
        return await handler(request)
    except SidecarError as exc:
        return error_response(exc.http_status, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(500, "internal error")


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    applier = sidecar.applier

    async def reachable(check: Callable[[], Awaitable[bool]]) -> bool:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                return await check()
        except Exception:
            return False

    checks = await asyncio.gather(*(reachable(s.sink.check) for s in applier.slots))
    sinks = {s.name: ok for s, ok in zip(applier.slots, checks, strict=True)}
    body = {
        "ready": applier.caught_up() and all(checks),
        "connected": applier.connected,
        "caught_up": applier.caught_up(),
        "state": applier.state(),
        "sinks": sinks,
    }
    return web.json_response(body, status=200 if body["ready"] else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text, or OpenMetrics (with the lag's trace exemplars) when asked for."""
    registry = request.app[SIDECAR].metrics.registry
    body, content_type = exposition(registry, request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIDECAR].status())


def _timeout(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"timeout {raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_WAIT:
        raise InvalidInput(f"timeout must be 0..{MAX_WAIT:g} seconds")
    return value


async def applied(request: web.Request) -> web.Response:
    """200 once the id is applied to every sink; 408 when `timeout` (seconds) passes first."""
    event_id = request.query.get("id", "")
    if not event_id:
        raise InvalidInput("query parameter 'id' is required (an event id from a publish)")
    timeout = _timeout(request.query.get("timeout", "5"))
    try:
        async with asyncio.timeout(timeout):
            await request.app[SIDECAR].wait_applied(event_id)
    except TimeoutError:
        return error_response(408, f"{event_id} not applied to every sink within {timeout:g}s")
    return web.json_response({"id": event_id, "applied": True})


def make_app(sidecar: Sidecar) -> web.Application:
    app = web.Application(middlewares=[errors_middleware])
    app[SIDECAR] = sidecar
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/applied", applied)
    return app


class HealthServer:
    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(
            make_app(self._sidecar),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=False)
        await site.start()
        self.port = bound_port(site)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
