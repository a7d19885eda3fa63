"""The sidecar's tracing and lag metric, following the messaging semantic conventions.

For each batch the hub pushes, the stream client opens `receive_span(batch)` (CONSUMER,
operation type `process`: the hub pushes, the sidecar does not poll). It links to each
event's creation context (the hub's publish or create span, carried in `traceparent`), and
is that context's child when every event of the batch belongs to one trace, so that a
single invalidation reads as one trace from publisher to cache. Within it, each sink's
work is an `apply_span(sink_name, batch)` (CLIENT: a call to memcached, Redis, the relay or
a webhook), a child of the receive span. The app-side client library wraps its cachetools
deletes in `client_apply_span`, which continues the event's trace in the app process.

Every helper returns a reusable no-op context manager when tracing is off.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer, use_span
from prometheus_client import CollectorRegistry

from cachewire.common import telemetry as ct

SERVICE_NAME = "cachewire-sidecar"
_OFF: AbstractContextManager[None] = nullcontext()


def setup() -> None:
    """Configure tracing from OTEL_* (once per process); see cachewire.common.telemetry."""
    ct.configure(SERVICE_NAME)


def flush() -> bool:
    """Export the spans still buffered; call when the sidecar stops."""
    return ct.flush()


def receive_span(
    batch: Sequence[ct.Message], tracer: Tracer | None = None
) -> AbstractContextManager[Span | None]:
    """The span of one batch received from the hub; current while the sinks apply it."""
    tracer = tracer or ct.tracer()
    if tracer is None or not batch:
        return _OFF
    attrs = ct.message_attributes(batch, "receive", "process")
    if len(batch) == 1:
        attrs[ct.ATTR_MESSAGE_ID] = batch[0].id
    return _span(tracer, "receive", SpanKind.CONSUMER, attrs, _parent(batch), _links(batch))


def apply_span(
    sink_name: str, batch: Sequence[ct.Message], tracer: Tracer | None = None
) -> AbstractContextManager[Span | None]:
    """One sink applying a batch; a child of the current (receive) span."""
    tracer = tracer or ct.tracer()
    if tracer is None:
        return _OFF
    attrs = ct.message_attributes(batch, "apply", "process")
    attrs[ct.ATTR_SINK] = sink_name
    if len(batch) == 1:
        attrs[ct.ATTR_MESSAGE_ID] = batch[0].id
    return _span(tracer, f"apply {sink_name}", SpanKind.CLIENT, attrs, None, [])


def flush_span(
    sink_name: str, reason: str, tracer: Tracer | None = None
) -> AbstractContextManager[Span | None]:
    """A sink flushing everything it guards (after a gap, or an event asking for it)."""
    tracer = tracer or ct.tracer()
    if tracer is None:
        return _OFF
    attrs = {ct.ATTR_SINK: sink_name, ct.ATTR_FLUSH: True, "cachewire.flush.reason": reason}
    return _span(tracer, f"flush {sink_name}", SpanKind.CLIENT, attrs, None, [])


def client_apply_span(
    cache_name: str, batch: Sequence[ct.Message], tracer: Tracer | None = None
) -> AbstractContextManager[Span | None]:
    """The app process deleting keys from its cachetools cache, continuing the event's trace."""
    tracer = tracer or ct.tracer()
    if tracer is None or not batch:
        return _OFF
    attrs = ct.message_attributes(batch, "apply", "process")
    attrs[ct.ATTR_SINK] = cache_name
    if len(batch) == 1:
        attrs[ct.ATTR_MESSAGE_ID] = batch[0].id
    return _span(
        tracer, f"apply {cache_name}", SpanKind.CONSUMER, attrs, _parent(batch), _links(batch)
    )


def _parent(batch: Sequence[ct.Message]) -> Context | None:
    """The first event's context when all events share its trace; else the current context."""
    first = ct.trace_id_of(batch[0].traceparent)
    if first and all(ct.trace_id_of(m.traceparent) == first for m in batch[1:]):
        return ct.parent_context(batch[0].traceparent, batch[0].tracestate)
    return None


def _links(batch: Sequence[ct.Message]) -> list[Link]:
    return [link for link in map(ct.link_to, batch) if link is not None]


@contextlib.contextmanager
def _span(
    tracer: Tracer,
    name: str,
    kind: SpanKind,
    attrs: dict[str, Any],
    parent: Context | None,
    links: list[Link],
) -> Iterator[Span]:
    span = tracer.start_span(name, parent, kind, attrs, links)
    with use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        try:
            yield span
        except Exception as exc:
            span.set_attribute(ct.ATTR_ERROR_TYPE, type(exc).__qualname__)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise


class Published(Protocol):
    """An event with the hub's receive time (Invalidation has both fields)."""

    @property
    def published_at(self) -> float: ...
    @property
    def traceparent(self) -> str: ...


class ApplyLag:
    """`cachewire_sidecar_apply_lag_seconds{sink}`: hub receive → applied, with trace exemplars."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._histogram = ct.LagHistogram(
            "cachewire_sidecar_apply_lag",
            "Seconds from the hub receiving an event to a sink confirming its invalidation",
            registry,
            labelnames=("sink",),
        )

    def observe(self, sink_name: str, batch: Sequence[Published], now: float | None = None) -> None:
        """Record each event's lag; its trace id (from traceparent) is the exemplar."""
        now = time.time() if now is None else now
        self._histogram.observe_many(
            (
                (now - message.published_at, ct.trace_id_of(message.traceparent))
                for message in batch
                if message.published_at > 0
            ),
            sink=sink_name,
        )
