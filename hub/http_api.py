"""HTTP endpoints other than SSE: publish, tickets, health, metrics; the JSON error mapping.

Cross-site safety, in every auth mode: publish and ticket requests carry a JSON (or NDJSON)
body, so a browser must preflight them (415 otherwise), and a browser's request from an
origin not listed in --cors-origin is refused (403) even when the preflight was skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from cachewire.common import wirejson
from cachewire.common.telemetry import exposition
from cachewire.hub import sse, telemetry
from cachewire.hub.auth.transport import http_credentials
from cachewire.hub.errors import (
    CrossSite,
    Denied,
    HubError,
    InvalidInput,
    Overloaded,
    TooLarge,
    UnsupportedMedia,
)
from cachewire.hub.events import (
    Draft,
    Limits,
    drafts_from_json,
    drafts_from_ndjson,
    idempotency_key,
    parse_json,
    parse_topics,
)

if TYPE_CHECKING:
    from cachewire.hub.server import Hub
    from cachewire.hub.settings import HubSettings

log = logging.getLogger("cachewire.hub.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Bodies a publish (or ticket) request may have: none of them is one a cross-site <form>
# or a "simple" fetch can send without a CORS preflight.
BODY_TYPES = frozenset({"application/json", "application/x-ndjson"})


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


def _rejected(
    request: web.Request, status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
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
    response = error_response(status, message)
    response.headers.update(cors_headers(request))
    if headers:
        response.headers.update(headers)
    return response


def _error(request: web.Request, exc: BaseException) -> web.StreamResponse:
    """Every error leaves as JSON; no traceback ever reaches a client."""
    if isinstance(exc, Denied):
        hub = request.app[sse.HUB]
        if hub.auth is not None:
            hub.auth.note(exc, "http", request.remote)
        headers = {"WWW-Authenticate": exc.challenge}
        return _rejected(request, exc.http_status, str(exc), headers)
    if isinstance(exc, HubError):
        response = _rejected(request, exc.http_status, str(exc))
        if isinstance(exc, Overloaded):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app[sse.HUB].settings.max_body
        return _rejected(request, 413, f"request body is larger than the limit of {limit} bytes")
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return _rejected(request, exc.status, exc.reason)
    if isinstance(exc, ConnectionResetError | TimeoutError):
        raise exc
    log.exception("unhandled error", extra={"path": request.path}, exc_info=exc)
    return error_response(500, "internal error")


def json_errors(handler: Handler) -> Handler:
    """A handler whose errors leave as JSON (a wrapper per route, not a middleware: the
    publish handler maps its own and so pays for neither)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as exc:
            return _error(request, exc)

    return guarded


NDJSON = "application/x-ndjson"


def cors_headers(request: web.Request) -> dict[str, str]:
    """CORS response headers for a browser's request from an origin listed explicitly."""
    origin = request.headers.get("Origin")
    if origin is None or origin not in request.app[sse.HUB].settings.cors_origins:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


def check_cross_site(request: web.Request) -> None:
    """Refuse a body a browser sends cross-site without preflight, and foreign origins."""
    if request.content_type not in BODY_TYPES:
        raise UnsupportedMedia(
            f"Content-Type must be application/json or application/x-ndjson, "
            f"not {request.content_type}"
        )
    origin = request.headers.get("Origin")
    if origin is not None and origin not in request.app[sse.HUB].settings.cors_origins:
        raise CrossSite(f"requests from origin {origin!r} are not allowed (see --cors-origin)")


async def publish(request: web.Request) -> web.StreamResponse:
    """POST /v1/publish: a JSON event or array, or NDJSON (one event a line) → {"ids": [...]}.

    The hot path: no middleware (errors are mapped here), the body decoded once, one broker
    append per request, the answer encoded once.
    """
    try:
        hub = request.app[sse.HUB]
        settings = hub.settings
        check_cross_site(request)
        drafts = await read_drafts(request, settings)
        if hub.auth is not None:  # --auth off: no auth work at all
            await hub.auth.check_publish(http_credentials(request), drafts)
        key = idempotency_key(request.headers.get("Idempotency-Key", ""))
        ids = await accept(hub, drafts, key)
    except Exception as exc:
        return _error(request, exc)
    return web.Response(
        body=ids_body(ids),
        content_type="application/json",
        headers=cors_headers(request) if "Origin" in request.headers else None,
    )


async def read_drafts(request: web.Request, settings: HubSettings) -> list[Draft]:
    """The request's body → validated drafts (JSON, or NDJSON by its Content-Type), within
    --max-body, --max-events, --max-keys and --max-prefixes."""
    max_body = settings.max_body
    if request.content_length is not None and request.content_length > max_body:
        raise TooLarge(f"request body is larger than the limit of {max_body} bytes")
    raw = await request.read()
    headers = request.headers
    return drafts_of(
        raw,
        request.content_type == NDJSON,
        headers.get("traceparent", ""),
        headers.get("tracestate", ""),
        settings,
    )


def drafts_of(
    raw: bytes, ndjson: bool, traceparent: str, tracestate: str, settings: HubSettings
) -> list[Draft]:
    """A publish body → validated drafts, within --max-events, --max-keys, --max-prefixes."""
    limits: Limits = {
        "max_keys": settings.max_keys,
        "traceparent": traceparent,
        "tracestate": tracestate,
        "max_bytes": settings.max_body,
        "max_prefixes": settings.max_prefixes,
        "max_events": settings.max_events,
    }
    if ndjson:
        return drafts_from_ndjson(raw, **limits)
    return drafts_from_json(parse_json(raw), **limits)


async def accept(hub: Hub, drafts: list[Draft], key: str) -> list[str]:
    """Store checked drafts (once per idempotency key): their ids. While the hub is behind
    delivering, this waits, or raises Overloaded (503 Retry-After)."""
    await hub.fanout.pressure.admit()
    return await telemetry.publish_ids(
        hub.broker, drafts, "http", None, key, hub.settings.idempotency_window
    )


def ids_body(ids: list[str]) -> bytes:
    return b'{"ids":%b}' % wirejson.dumpb(ids)


async def ticket(request: web.Request) -> web.Response:
    """POST /v1/tickets {"types": [...]} → {"ticket": "...", "expires_in": 60}."""
    hub = request.app[sse.HUB]
    check_cross_site(request)
    if hub.auth is None:
        raise web.HTTPNotFound(reason="tickets exist only with --auth protected")
    body = parse_json(await request.read())
    if not isinstance(body, dict) or not isinstance(body.get("types"), list):
        raise InvalidInput('the body must be {"types": ["type", ...]}')
    types = parse_topics(body["types"], "type")
    value = await hub.auth.issue_ticket(http_credentials(request), types)
    return web.json_response(
        {"ticket": value, "expires_in": round(hub.auth.tickets.ttl)},
        headers={"Cache-Control": "no-store", **cors_headers(request)},
    )


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight of publish and tickets: allowed for origins listed in --cors-origin."""
    headers = cors_headers(request)
    if not headers:
        raise CrossSite(
            f"requests from origin {request.headers.get('Origin')!r} are not allowed "
            "(see --cors-origin)"
        )
    headers |= {
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": (
            "Authorization, Content-Type, X-API-Key, Idempotency-Key, traceparent"
        ),
        "Access-Control-Max-Age": "600",
    }
    return web.Response(status=204, headers=headers)


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
    if hub.stopping or hub.draining:
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
    if request.path in ("/v1/publish", "/v1/tickets"):  # ours, POST only: no subscription
        raise web.HTTPMethodNotAllowed(request.method, ["POST"])
    if "text/event-stream" in request.headers.get("Accept", ""):
        return await sse.handle(request)
    raise web.HTTPNotFound(reason=f"no endpoint at {request.path}")


async def other_method(request: web.Request) -> web.StreamResponse:
    """What no route takes: every path serves GET (SSE on any path, as Plasma does)."""
    raise web.HTTPMethodNotAllowed(request.method, ["GET"])


def add_routes(app: web.Application, *, with_metrics: bool = True) -> None:
    """Every route; each maps its errors to JSON (no middleware: see `publish`). The last,
    for any method on any path, leaves the router no request to answer by itself.
    `with_metrics` False when only the admin listener serves them (--auth protected)."""
    app.router.add_post("/v1/publish", publish)
    app.router.add_post("/v1/tickets", json_errors(ticket))
    app.router.add_route("OPTIONS", "/v1/publish", json_errors(preflight))
    app.router.add_route("OPTIONS", "/v1/tickets", json_errors(preflight))
    if with_metrics:
        add_metrics_routes(app)
    for path, handler in (
        ("/", sse.handle),
        ("/events", sse.handle),
        ("/hc", plasma_hc),
        ("/healthz", health),
        ("/readyz", ready),
        ("/{tail:.*}", any_path),
    ):
        app.router.add_get(path, json_errors(handler))
    app.router.add_route("*", "/{tail:.*}", json_errors(other_method))


def add_metrics_routes(app: web.Application) -> None:
    """The operator's endpoints (also all the admin listener serves)."""
    app.router.add_get("/metrics", json_errors(metrics))
    app.router.add_get("/metrics/plasma", json_errors(plasma_metrics))
