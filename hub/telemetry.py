"""The hub's tracing: setup at start, flush at stop, and the publish span every path shares.

`publish(broker, drafts, transport)` is what every publish path calls instead of
`broker.publish`: HTTP `POST /v1/publish`, gRPC `Publish` and Plasma channel ingest. With
tracing on it records ONE `publish` span per request (PRODUCER, operation type `send`,
following the messaging conventions), whatever the number of events:

- its parent is the publisher's context (HTTP `traceparent` header, gRPC metadata or
  `EventInput.traceparent`); without one, a new trace starts here;
- every event of the request carries the publish span's context as its creation context
  (the `traceparent` stored in the event, the one every subscriber and every replay
  receives), so downstream spans (sidecar receive and apply) continue the trace from it;
- when the events of one request brought different contexts (gRPC
  `EventInput.traceparent` per event), the parent is the request's own (gRPC metadata) or
  none, and the span links to each other context (`request_context`).

A batch thus costs one span, not one per event: per event there is only a copy of its
draft with the new traceparent. With tracing off the publisher's traceparent passes
through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    use_span,
)

from cachewire.common import telemetry as ct
from cachewire.hub.brokers.base import Broker
from cachewire.hub.events import Draft, Event

SERVICE_NAME = "cachewire-hub"
log = logging.getLogger("cachewire.hub.publish")


def setup() -> None:
    """Configure tracing from OTEL_* (once per process); see cachewire.common.telemetry."""
    ct.configure(SERVICE_NAME)


async def flush() -> None:
    """Export the spans still buffered (when the hub stops), off the event loop."""
    if ct.tracer() is not None and not await asyncio.to_thread(ct.flush):
        log.warning("tracing: not every span was exported before the flush timeout")


async def publish(
    broker: Broker,
    drafts: Sequence[Draft],
    transport: str = "http",
    carrier: Mapping[str, str] | None = None,
) -> list[Event]:
    """`broker.publish(drafts)` inside the request's publish span when tracing is on.

    `carrier` holds the request's own `traceparent`/`tracestate` (gRPC metadata): the
    parent when the events brought different contexts.
    """
    if ct.tracer() is None:
        return _published(await broker.publish(drafts), transport)
    with _publish_span(drafts, transport, carrier) as (span, tp, ts):
        events = await broker.publish([_stamped(d, tp, ts) for d in drafts])
        if len(events) == 1:
            span.set_attribute(ct.ATTR_MESSAGE_ID, events[0].id)
        return _published(events, transport)


async def publish_ids(
    broker: Broker,
    drafts: Sequence[Draft],
    transport: str = "http",
    carrier: Mapping[str, str] | None = None,
    key: str = "",
    window: float = 0.0,
) -> list[str]:
    """`publish`, answering ids; with an idempotency key (and a window), `publish_once`: a
    retried key gets its first ids back, and the span says `cachewire.publish.duplicate`."""
    if not key or window <= 0:
        return [e.id for e in await publish(broker, drafts, transport, carrier)]
    if ct.tracer() is None:
        ids, stored = await broker.publish_once(drafts, key, window)
        return _published_ids(ids, transport, stored)
    with _publish_span(drafts, transport, carrier) as (span, tp, ts):
        stamped = [_stamped(d, tp, ts) for d in drafts]
        ids, stored = await broker.publish_once(stamped, key, window)
        span.set_attribute(ATTR_DUPLICATE, not stored)
        if len(ids) == 1:
            span.set_attribute(ct.ATTR_MESSAGE_ID, ids[0])
        return _published_ids(ids, transport, stored)


ATTR_DUPLICATE = "cachewire.publish.duplicate"


@contextmanager
def _publish_span(
    drafts: Sequence[Draft], transport: str, carrier: Mapping[str, str] | None
) -> Iterator[tuple[Span, str, str]]:
    """The request's publish span, current inside the block: (span, traceparent, tracestate)
    of its context, which every event of the request carries. An error fails the span."""
    tracer = ct.tracer()
    assert tracer is not None
    parent, links = request_context(drafts, carrier)
    attrs = ct.message_attributes(drafts, "publish", "send")
    attrs[ct.ATTR_TRANSPORT] = transport
    span = tracer.start_span(
        "publish",
        None if parent is None else trace.set_span_in_context(NonRecordingSpan(parent)),
        SpanKind.PRODUCER,  # its context is every event's creation context
        attrs,
        links,
    )
    with use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        tp, ts = ct.traceparent_of(span.get_span_context())
        try:
            yield span, tp, ts
        except Exception as exc:
            _failed(span, exc)
            raise


def request_context(
    drafts: Sequence[Draft], carrier: Mapping[str, str] | None = None
) -> tuple[SpanContext | None, list[Link]]:
    """The publish span's parent, and links to the other contexts the events brought.

    When every event carries the same context (always over HTTP: the request's headers),
    it is the parent. When they differ (gRPC `EventInput.traceparent` per event), the
    parent is the carrier's context (gRPC metadata), or none (a new trace), and each
    distinct event context other than the parent is linked once.
    """
    if not drafts:
        return None, []
    first = drafts[0]
    if all(d.traceparent == first.traceparent for d in drafts):
        return ct.span_context(first.traceparent, first.tracestate), []
    parent = None
    if carrier is not None:
        parent = ct.span_context(carrier.get("traceparent", ""), carrier.get("tracestate", ""))
    links: list[Link] = []
    seen: set[str] = set()
    for d in drafts:
        if d.traceparent and d.traceparent not in seen:
            seen.add(d.traceparent)
            sc = ct.span_context(d.traceparent, d.tracestate)
            if sc is not None and (parent is None or _ids(sc) != _ids(parent)):
                links.append(Link(sc))
    return parent, links


def _ids(sc: SpanContext) -> tuple[int, int]:
    return sc.trace_id, sc.span_id


def _stamped(draft: Draft, traceparent: str, tracestate: str) -> Draft:
    """The draft carrying the publish span's context (a direct copy: cheaper than
    dataclasses.replace, and this runs once per event)."""
    return Draft(
        draft.type,
        draft.data_json,
        draft.keys,
        draft.prefixes,
        draft.flush,
        traceparent,
        tracestate,
        draft.published_at,
    )


def _published(events: list[Event], transport: str) -> list[Event]:
    """A debug line per publish; inside the span, so it carries the trace and span ids."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("published", extra={"ids": [e.id for e in events], "transport": transport})
    return events


def _published_ids(ids: list[str], transport: str, stored: bool) -> list[str]:
    if log.isEnabledFor(logging.DEBUG):
        what = "published" if stored else "publish retried: answered the stored ids"
        log.debug(what, extra={"ids": ids, "transport": transport})
    return ids


def _failed(span: Span, exc: BaseException) -> None:
    span.set_attribute(ct.ATTR_ERROR_TYPE, type(exc).__qualname__)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc)))
