"""HTTP endpoints other than SSE: publish, health, metrics; and the JSON error mapping."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from cachewire.common.telemetry import exposition
from cachewire.hub import sse, telemetry
from cachewire.hub.errors import HubError, Overloaded, TooLarge
from cachewire.hub.events import drafts_from_json, parse_json

if TYPE_CHECKING:
    from cachewire.hub.server import Hub

log = logging.getLogger("cachewire.hub.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


def _rejected(request: web.Request, status: int, message: str) -> web.Response:
    """A 4xx/5xx the client caused or must retry: one log line, a JSON body."""
    log.info(
        "request rejected",
        extra={
            "method": request.method,
            "path": request.path,
            "status": status,
            "error": message,
            "peer": request.remote,
        },
    )
    return error_response(status, message)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON; no traceback ever reaches a client."""
    try:
        return await handler(request)
    except HubError as exc:
        response = _rejected(request, exc.http_status, str(exc))
        if isinstance(exc, Overloaded):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[sse.HUB].settings.max_body
        return _rejected(request, 413, f"request body is larger than the limit of {limit} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _rejected(request, exc.status, exc.reason)
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(500, "internal error")


async def publish(request: web.Request) -> web.Response:
    hub = request.app[sse.HUB]
    settings, broker = hub.settings, hub.broker
    if request.content_length is not None and request.content_length > settings.max_body:
        raise TooLarge(f"request body is larger than the limit of {settings.max_body} bytes")
    body = parse_json(await request.read())
    drafts = drafts_from_json(
        body,
        max_keys=settings.max_keys,
        traceparent=request.headers.get("traceparent", ""),
        tracestate=request.headers.get("tracestate", ""),
    )
    await hub.fanout.pressure.admit()  # the hub is behind: wait, or 503 Retry-After
    events = await telemetry.publish(broker, drafts)
    return web.json_response({"ids": [e.id for e in events]})


async def health(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP."""
    return web.json_response({"status": "ok"})


async def plasma_hc(request: web.Request) -> web.Response:
    """Plasma's /hc: 200 while the broker works (Plasma pings Redis here)."""
    if not request.app[sse.HUB].broker.ready():
        return error_response(503, "broker unavailable")
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    hub: Hub = request.app[sse.HUB]
    broker = hub.broker
    if hub.stopping:
        return error_response(503, "shutting down")
    if not broker.ready():
        return error_response(503, "broker unavailable")
    return web.json_response({"status": "ready", "head": broker.head_id()})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text, or OpenMetrics (which carries exemplars) when the scraper asks."""
    registry = request.app[sse.HUB].registry
    body, content_type = exposition(registry, request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def plasma_metrics(request: web.Request) -> web.Response:
    fanout = request.app[sse.HUB].fanout
    sse_count = fanout.count("sse")
    grpc_count = fanout.count("grpc_plasma") + fanout.count("grpc")
    return web.json_response(
        {
            "connections": sse_count + grpc_count,
            "connections_sse": sse_count,
            "connections_grpc": grpc_count,
        }
    )


async def any_path(request: web.Request) -> web.StreamResponse:
    """Plasma serves SSE on any path when the client accepts text/event-stream."""
    if request.path == "/v1/publish":  # one of ours, POST only: never a subscription
        raise web.HTTPMethodNotAllowed(request.method, ["POST"])
    if "text/event-stream" in request.headers.get("Accept", ""):
        return await sse.handle(request)
    raise web.HTTPNotFound(reason=f"no endpoint at {request.path}")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", sse.handle)
    app.router.add_get("/events", sse.handle)
    app.router.add_post("/v1/publish", publish)
    app.router.add_get("/hc", plasma_hc)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/metrics/plasma", plasma_metrics)
    app.router.add_get("/{tail:.*}", any_path)
