"""The hub's tracing: setup at start, flush at stop, and the publish span every path shares.

`publish(broker, drafts)` is what the HTTP (and gRPC) publish handlers call instead of
`broker.publish`. With tracing on it records, following the messaging conventions:

- one event: a `publish` span (PRODUCER, operation type `send`) whose context is the
  event's creation context;
- several: one `create` span (PRODUCER) per event, and a `publish` span (CLIENT) with
  `messaging.batch.message_count` linking to each of them.

The publisher's traceparent (HTTP header, gRPC metadata or field) is the parent of these
spans, or a new trace starts here without one. The traceparent stored in each event, the
one every subscriber receives, is replaced by the event's creation context, so downstream
spans (sidecar receive and apply) continue the trace from the hub. With tracing off the
publisher's traceparent passes through unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from cachewire import telemetry as ct
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer, use_span

from hub.brokers.base import Broker
from hub.events import Draft, Event

SERVICE_NAME = "cachewire-hub"
log = logging.getLogger("cachewire.hub.publish")


def setup() -> None:
    """Configure tracing from OTEL_* (once per process); see cachewire.telemetry."""
    ct.configure(SERVICE_NAME)


async def flush() -> None:
    """Export the spans still buffered (when the hub stops), off the event loop."""
    if ct.tracer() is not None and not await asyncio.to_thread(ct.flush):
        log.warning("tracing: not every span was exported before the flush timeout")


async def publish(broker: Broker, drafts: Sequence[Draft], transport: str = "http") -> list[Event]:
    """`broker.publish(drafts)` inside the publish span(s) when tracing is on."""
    tracer = ct.tracer()
    if tracer is None:
        return _published(await broker.publish(drafts), transport)
    if len(drafts) == 1:
        return await _publish_one(tracer, broker, drafts[0], transport)
    return await _publish_batch(tracer, broker, drafts, transport)


def _published(events: list[Event], transport: str) -> list[Event]:
    """A debug line per publish; inside the span, so it carries the trace and span ids."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("published", extra={"ids": [e.id for e in events], "transport": transport})
    return events


def _attributes(
    drafts: Sequence[Draft], operation: str, operation_type: str, transport: str
) -> dict[str, Any]:
    attrs = ct.message_attributes(drafts, operation, operation_type)
    attrs[ct.ATTR_TRANSPORT] = transport
    return attrs


async def _publish_one(tracer: Tracer, broker: Broker, draft: Draft, transport: str) -> list[Event]:
    span = tracer.start_span(
        "publish",
        ct.parent_context(draft.traceparent, draft.tracestate),
        SpanKind.PRODUCER,
        _attributes([draft], "publish", "send", transport),
    )
    with use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        tp, ts = ct.traceparent_of(span.get_span_context())
        try:
            events = await broker.publish(
                [dataclasses.replace(draft, traceparent=tp, tracestate=ts)]
            )
        except Exception as exc:
            _failed(span, exc)
            raise
        span.set_attribute(ct.ATTR_MESSAGE_ID, events[0].id)
        return _published(events, transport)


async def _publish_batch(
    tracer: Tracer, broker: Broker, drafts: Sequence[Draft], transport: str
) -> list[Event]:
    # One creation context per event, then the publish span that links to all of them.
    creates: list[Span] = []
    stamped: list[Draft] = []
    for draft in drafts:
        span = tracer.start_span(
            "create",
            ct.parent_context(draft.traceparent, draft.tracestate),
            SpanKind.PRODUCER,
            _attributes([draft], "create", "create", transport),
        )
        tp, ts = ct.traceparent_of(span.get_span_context())
        creates.append(span)
        stamped.append(dataclasses.replace(draft, traceparent=tp, tracestate=ts))
    # The publisher's context, when the whole request shares one (HTTP header, gRPC metadata).
    shared = {(d.traceparent, d.tracestate) for d in drafts}
    parent = ct.parent_context(*shared.pop()) if len(shared) == 1 else None
    publish_span = tracer.start_span(
        "publish",
        parent,
        SpanKind.CLIENT,
        _attributes(drafts, "publish", "send", transport),
        links=[Link(s.get_span_context()) for s in creates],
    )
    try:
        with use_span(
            publish_span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            try:
                events = await broker.publish(stamped)
            except Exception as exc:
                for span in (publish_span, *creates):
                    _failed(span, exc)
                raise
            for span, event in zip(creates, events, strict=True):
                span.set_attribute(ct.ATTR_MESSAGE_ID, event.id)
            return _published(events, transport)
    finally:
        for span in creates:
            span.end()


def _failed(span: Span, exc: BaseException) -> None:
    span.set_attribute(ct.ATTR_ERROR_TYPE, type(exc).__qualname__)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc)))
