"""Tracing, trace-aware log fields and exemplars shared by the hub and the sidecar.

Tracing is configured by the standard OTEL_* variables only, once per process, and is off
(no SDK loaded, no provider, `tracer()` returns None) unless OTEL_TRACES_EXPORTER names an
exporter or an OTLP endpoint is set. Callers test `tracer() is None` and skip all span work,
so tracing off costs one global read on the hot path.

The W3C trace context travels inside each event as `traceparent`/`tracestate` strings;
`parent_context`, `link_to` and `traceparent_of` convert between those strings and spans.
Span attributes follow OpenTelemetry's messaging semantic conventions (`ATTR_*` below).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    Tracer,
    TraceState,
)
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("cachewire.common.telemetry")

# OpenTelemetry messaging semantic conventions (messaging-spans.md), and cachewire's own.
ATTR_SYSTEM = "messaging.system"
ATTR_OPERATION_NAME = "messaging.operation.name"
ATTR_OPERATION_TYPE = "messaging.operation.type"
ATTR_DESTINATION = "messaging.destination.name"
ATTR_MESSAGE_ID = "messaging.message.id"
ATTR_BATCH_COUNT = "messaging.batch.message_count"
ATTR_ERROR_TYPE = "error.type"
ATTR_KEYS = "cachewire.keys.count"
ATTR_PREFIXES = "cachewire.prefixes.count"
ATTR_FLUSH = "cachewire.flush"
ATTR_SINK = "cachewire.sink.name"
ATTR_TRANSPORT = "cachewire.transport"
SYSTEM = "cachewire"

EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class Invalidates(Protocol):
    """What span attributes are read from: a hub Draft or Event, a sidecar Invalidation,
    a hub_pb2.Event (in the app-side client library)."""

    @property
    def type(self) -> str: ...
    @property
    def keys(self) -> Sequence[str]: ...
    @property
    def prefixes(self) -> Sequence[str]: ...
    @property
    def flush(self) -> bool: ...


class Message(Invalidates, Protocol):
    """An event with its id and the trace context it carries."""

    @property
    def id(self) -> str: ...
    @property
    def traceparent(self) -> str: ...
    @property
    def tracestate(self) -> str: ...


# --- configuration from the environment ---


def wanted(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for tracing: an exporter other than none, or an endpoint."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip():
        return exporter_names(env) != []
    return any(
        env.get(name, "").strip()
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """OTEL_TRACES_EXPORTER as a list ("none" dropped); otlp when unset. ValueError if unknown."""
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    names = [n for n in names if n] or ["otlp"]
    for name in names:
        if name not in EXPORTERS:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported "
                f"(one or more of {', '.join(EXPORTERS)})"
            )
    return [n for n in names if n != "none"]


def otlp_protocol(env: Mapping[str, str]) -> str:
    """The OTLP transport: the traces-specific variable, then the general one, then grpc."""
    raw = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
        or "grpc"
    ).lower()
    if raw not in PROTOCOLS:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={raw!r} is not supported (one of {', '.join(PROTOCOLS)})"
        )
    return raw


_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_configured = False


def configure(service_name: str, env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Set up tracing from OTEL_* once per process; None when off or misconfigured.

    A bad value is logged as an error and tracing stays off: a typo in the observability
    settings must not stop invalidations.
    """
    global _configured
    if _configured:
        return _provider
    _configured = True
    env = os.environ if env is None else env
    try:
        if not wanted(env):
            log.info("tracing off: neither OTEL_TRACES_EXPORTER nor an OTLP endpoint is set")
            return None
        provider = build_provider(service_name, env)
    except (ValueError, ImportError) as exc:
        log.error("tracing off: %s", exc)
        return None
    trace.set_tracer_provider(provider)
    install(provider)
    attrs = provider.resource.attributes
    log.info(
        "tracing on",
        extra={
            "exporters": exporter_names(env),
            "service": attrs.get("service.name"),
            "otlp_protocol": otlp_protocol(env) if "otlp" in exporter_names(env) else None,
        },
    )
    return provider


def build_provider(service_name: str, env: Mapping[str, str]) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    names = exporter_names(env)
    protocol = otlp_protocol(env)
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; ours fill gaps.
    resource = Resource.create()
    defaults: dict[str, str] = {}
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        defaults["service.name"] = service_name
    if "service.version" not in resource.attributes:
        defaults["service.version"] = _version()
    # The sampler comes from OTEL_TRACES_SAMPLER(_ARG); parentbased_always_on by default.
    provider = TracerProvider(resource=resource.merge(Resource(defaults)))
    for name in names:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
        elif protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            provider.add_span_processor(BatchSpanProcessor(HttpExporter()))
    return provider


def _version() -> str:
    try:
        return metadata.version("cachewire")
    except metadata.PackageNotFoundError:
        return "unknown"


def install(provider: TracerProvider | None) -> None:
    """Use this provider for cachewire's spans (None: tracing off). For tests and embedders."""
    global _provider, _tracer
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("cachewire", _version())


def tracer() -> Tracer | None:
    """cachewire's tracer, or None when tracing is off (callers then skip span work)."""
    return _tracer


def flush(timeout_millis: int = 5000) -> bool:
    """Export every finished span now (at shutdown); True when done or tracing is off."""
    return True if _provider is None else _provider.force_flush(timeout_millis)


# --- the W3C trace context carried in events ---


def span_context(traceparent: str, tracestate: str = "") -> SpanContext | None:
    """The remote span context a W3C traceparent names, or None when absent or invalid.

    Parsed here rather than by the SDK's propagator, which costs several times more on
    the publish path; the rules are the same (version ff and all-zero ids are invalid).
    """
    m = _TRACEPARENT.match(traceparent)
    if m is None:
        return None
    version, trace_hex, span_hex, flags = m.groups()
    if version == "ff" or trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN:
        return None
    return SpanContext(
        int(trace_hex, 16),
        int(span_hex, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(flags, 16)),
        trace_state=TraceState.from_header([tracestate]) if tracestate else None,
    )


def parent_context(traceparent: str, tracestate: str = "") -> Context | None:
    """A context whose parent is the traceparent's span; None (use the current one) if none."""
    sc = span_context(traceparent, tracestate)
    return None if sc is None else trace.set_span_in_context(NonRecordingSpan(sc))


def link_to(message: Message) -> Link | None:
    """A span link to a message's creation context, tagged with its id; None without one."""
    sc = span_context(message.traceparent, message.tracestate)
    return None if sc is None else Link(sc, {ATTR_MESSAGE_ID: message.id})


def traceparent_of(sc: SpanContext) -> tuple[str, str]:
    """A span context as (traceparent, tracestate) header values."""
    return (
        f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}",
        sc.trace_state.to_header(),
    )


def trace_id_of(traceparent: str) -> str:
    """The trace id (32 hex digits) in a traceparent, or "" when absent or invalid."""
    m = _TRACEPARENT.match(traceparent)
    if m is None or m.group(2) == _ZERO_TRACE or m.group(3) == _ZERO_SPAN:
        return ""
    return m.group(2)


def message_attributes(
    messages: Sequence[Invalidates], operation: str, operation_type: str
) -> dict[str, Any]:
    """Messaging attributes for an operation on messages, and invalidation counts.

    The destination is set when every message has the same type, the batch size only for
    more than one message (as the conventions ask); the caller adds the message id. The
    prefix count and the flush flag appear only when non-zero / true.
    """
    attrs: dict[str, Any] = {
        ATTR_SYSTEM: SYSTEM,
        ATTR_OPERATION_NAME: operation,
        ATTR_OPERATION_TYPE: operation_type,
    }
    types = {m.type for m in messages}
    if len(types) == 1:
        attrs[ATTR_DESTINATION] = next(iter(types))
    if len(messages) != 1:
        attrs[ATTR_BATCH_COUNT] = len(messages)
    attrs[ATTR_KEYS] = sum(len(m.keys) for m in messages)
    prefixes = sum(len(m.prefixes) for m in messages)
    if prefixes:  # absent means none: fewer attributes, cheaper spans
        attrs[ATTR_PREFIXES] = prefixes
    if any(m.flush for m in messages):
        attrs[ATTR_FLUSH] = True
    return attrs


# --- logs ---


def log_fields() -> dict[str, str]:
    """{"trace_id", "span_id"} of the active span, or {} when no span is active."""
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return {}
    return {"trace_id": f"{sc.trace_id:032x}", "span_id": f"{sc.span_id:016x}"}


# --- Prometheus exemplars ---

LAG_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class LagHistogram:
    """The publish→applied lag histogram, seconds; observations carry trace ids as exemplars.

    Exemplars appear only in the OpenMetrics exposition (see `exposition`); the classic text
    format has no place for them and leaves them out.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        registry: CollectorRegistry,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LAG_BUCKETS,
    ) -> None:
        self._labelnames = tuple(labelnames)
        self.histogram = Histogram(
            name,
            documentation,
            self._labelnames,
            registry=registry,
            buckets=buckets,
            unit="seconds",
        )

    def observe(self, seconds: float, trace_id: str = "", **labels: str) -> None:
        """Record one lag; `trace_id` (32 hex digits) becomes the bucket's exemplar."""
        self.observe_many(((seconds, trace_id),), **labels)

    def observe_many(self, lags: Iterable[tuple[float, str]], **labels: str) -> None:
        """Record (seconds, trace_id) pairs under one label set, looked up once."""
        target = self.histogram.labels(**labels) if self._labelnames else self.histogram
        for seconds, trace_id in lags:
            exemplar = {"trace_id": trace_id} if trace_id and trace_id != _ZERO_TRACE else None
            target.observe(max(0.0, seconds), exemplar)


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """(body, Content-Type) for a scrape: OpenMetrics with exemplars when the scraper asks."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
