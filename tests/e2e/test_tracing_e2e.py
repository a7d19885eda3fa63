"""One trace from the publisher, through `cachewire-hub`, to `cachewire-sidecar`'s memcached
delete: processes started with OTEL_* variables export to a real OTLP/gRPC receiver.

The publisher is this test, with the OpenTelemetry SDK exporting to the same receiver: its
span's W3C traceparent goes out as the HTTP header of the publish. The structure asserted
(messaging conventions, push delivery):

    publisher span                       (service "publisher")
    └── publish        PRODUCER          (cachewire-hub; its context travels in the event)
        └── receive    CONSUMER          (cachewire-sidecar; also links to the publish span,
            │                             tagged with the event id)
            └── apply memcached  CLIENT  (the delete)

Every wait is on a fact: a span received, an id applied, a key gone, a process state.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from pymemcache.client.base import Client

from tests.otlp import OtlpGrpcCollector, ReceivedSpan
from tests.servers import Proc, free_port, start_sidecar, wait_for

WAIT = 20.0
HubProcess = Callable[..., Proc]


@pytest.fixture
def collector(procs: list[Proc]) -> Iterator[OtlpGrpcCollector]:
    """An OTLP/gRPC receiver that outlives the test's processes: they are stopped first,
    so that their last spans are flushed to it and their exit does not wait on retries."""
    with OtlpGrpcCollector() as c:
        yield c
        for proc in reversed(procs):
            proc.stop()


@pytest.fixture
def publisher(collector: OtlpGrpcCollector) -> Iterator[Tracer]:
    """The application that publishes: the OpenTelemetry SDK, exporting to the collector."""
    provider = TracerProvider(resource=Resource.create({"service.name": "publisher"}))
    exporter = OTLPSpanExporter(endpoint=collector.endpoint, insecure=True)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("publisher")
    provider.shutdown()


def otel_sidecar(hub: Proc, memcached: Proc, env: dict[str, str], *args: str) -> Proc:
    """`cachewire-sidecar --memcached` with OTEL_* in its environment; once /healthz answers."""
    return start_sidecar("--memcached", f"127.0.0.1:{memcached.port}", *args, hub=hub, env=env)


def get(proc: Proc, path: str, accept: str = "") -> tuple[int, str, str]:
    """(status, Content-Type, body) of a GET on the sidecar's health port."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{proc.ports['health']}{path}", headers={"Accept": accept}
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT + 5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def status(sidecar: Proc) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(get(sidecar, "/v1/status")[2])
    return body


def ready(sidecar: Proc) -> None:
    wait_for(lambda: get(sidecar, "/readyz")[0] == 200, timeout=WAIT, what="sidecar /readyz")


def applied(sidecar: Proc, event_id: str) -> bool:
    return get(sidecar, f"/v1/applied?id={event_id}&timeout={WAIT}")[0] == 200


def publish(hub: Proc, body: Any, headers: dict[str, str] | None = None) -> list[str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['http']}/v1/publish",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=WAIT) as resp:
        return list(json.load(resp)["ids"])


def publish_in_span(tracer: Tracer, hub: Proc, body: Any) -> tuple[list[str], str, str]:
    """Publish from inside a publisher span: (ids, its trace id, its span id)."""
    with tracer.start_as_current_span("update user") as span:
        headers: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(headers, set_span_in_context(span))
        ids = publish(hub, body, headers)
        sc = span.get_span_context()
    return ids, f"{sc.trace_id:032x}", f"{sc.span_id:016x}"


@contextmanager
def memcache(server: Proc) -> Iterator[Client]:
    client = Client(("127.0.0.1", server.port), default_noreply=False)
    try:
        yield client
    finally:
        client.close()


def log_lines(proc: Proc) -> list[dict[str, Any]]:
    return [json.loads(x) for x in proc.log().splitlines() if x.startswith("{")]


class Trace:
    """The spans of one event's journey, found by what they say about the event."""

    def __init__(self, collector: OtlpGrpcCollector, event_id: str) -> None:
        def is_hub_publish(s: ReceivedSpan) -> bool:
            return s.name == "publish" and s.attributes.get("messaging.message.id") == event_id

        def about(s: ReceivedSpan) -> bool:
            return s.attributes.get("messaging.message.id") == event_id

        (self.publish,) = collector.wait_for_spans(is_hub_publish, timeout=WAIT)
        (self.receive,) = collector.wait_for_spans(
            lambda s: s.name == "receive" and about(s), timeout=WAIT
        )
        (self.apply,) = collector.wait_for_spans(
            lambda s: s.name == "apply memcached" and about(s), timeout=WAIT
        )
        self.event_id = event_id

    def assert_hub_to_memcached(self) -> None:
        """publish → receive (child, and a link tagged with the id) → apply memcached."""
        hub, receive, apply = self.publish, self.receive, self.apply
        assert (hub.service, hub.kind, hub.status) == ("cachewire-hub", "PRODUCER", "UNSET")
        assert hub.attributes["messaging.operation.type"] == "send"
        assert hub.attributes["messaging.destination.name"] == "user:42"
        assert (receive.service, receive.kind) == ("cachewire-sidecar", "CONSUMER")
        assert (receive.trace_id, receive.parent_span_id) == (hub.trace_id, hub.span_id)
        assert [(x.trace_id, x.span_id, x.attributes) for x in receive.links] == [
            (hub.trace_id, hub.span_id, {"messaging.message.id": self.event_id})
        ]
        assert receive.attributes["messaging.operation.type"] == "process"
        assert (apply.service, apply.kind, apply.status) == ("cachewire-sidecar", "CLIENT", "UNSET")
        assert (apply.trace_id, apply.parent_span_id) == (hub.trace_id, receive.span_id)
        assert apply.attributes["cachewire.sink.name"] == "memcached"


def in_trace(collector: OtlpGrpcCollector, trace_id: str) -> set[tuple[str, str]]:
    return {(s.service, s.name) for s in collector.spans if s.trace_id == trace_id}


def test_one_trace_connects_the_publisher_the_hub_and_the_sidecars_memcached_delete(
    hub_process: HubProcess,
    memcached_server: Proc,
    procs: list[Proc],
    collector: OtlpGrpcCollector,
    publisher: Tracer,
) -> None:
    """The sidecar logs at --log-level warning (CACHEWIRE_SIDECAR_LOG_LEVEL): its warning
    about a key memcached cannot hold is written inside the apply span, with its ids."""
    hub = hub_process("--subscribe-heartbeat", "0.1", env=collector.env())
    env = collector.env(CACHEWIRE_SIDECAR_LOG_LEVEL="warning")
    sidecar = otel_sidecar(hub, memcached_server, env)
    procs.append(sidecar)
    ready(sidecar)
    with memcache(memcached_server) as mc:
        mc.set_many({"user:42": b"v", "user:7": b"v"})
        body = {"type": "user:42", "keys": ["user:42", "no spaces allowed"]}
        ([event_id], trace_id, publisher_span) = publish_in_span(publisher, hub, body)
        assert applied(sidecar, event_id)
        assert mc.get_many(["user:42", "user:7"]) == {"user:7": b"v"}

    trace = Trace(collector, event_id)
    (origin,) = collector.wait_for_spans(lambda s: s.service == "publisher", timeout=WAIT)
    assert (origin.trace_id, origin.span_id, origin.parent_span_id) == (
        trace_id,
        publisher_span,
        "",
    )
    assert (trace.publish.trace_id, trace.publish.parent_span_id) == (trace_id, publisher_span)
    trace.assert_hub_to_memcached()
    assert trace.apply.attributes["cachewire.keys.count"] == 2
    assert in_trace(collector, trace_id) == {
        ("publisher", "update user"),
        ("cachewire-hub", "publish"),
        ("cachewire-sidecar", "receive"),
        ("cachewire-sidecar", "apply memcached"),
    }

    # Logs: the warning carries the apply span's ids; info lines are not written at all.
    (skipped,) = [x for x in log_lines(sidecar) if x["msg"].startswith("memcached cannot apply")]
    assert (skipped["trace_id"], skipped["span_id"]) == (trace_id, trace.apply.span_id)
    assert {x["level"] for x in log_lines(sidecar)} <= {"warning", "error"}

    # Metrics: the lag histogram's bucket carries the trace id as an OpenMetrics exemplar.
    status, content_type, text = get(sidecar, "/metrics", "application/openmetrics-text")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    (family,) = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "cachewire_sidecar_apply_lag_seconds"
    ]
    exemplars = [
        s.exemplar.labels["trace_id"]
        for s in family.samples
        if s.name.endswith("_bucket") and s.labels["sink"] == "memcached" and s.exemplar
    ]
    assert trace_id in exemplars
    _, content_type, text = get(sidecar, "/metrics")
    assert content_type.startswith("text/plain") and "cachewire_sidecar_apply_lag" in text
    assert trace_id not in text  # the classic format has no exemplars


def test_an_event_published_without_context_starts_its_trace_at_the_hub(
    hub_process: HubProcess,
    memcached_server: Proc,
    procs: list[Proc],
    collector: OtlpGrpcCollector,
) -> None:
    hub = hub_process("--subscribe-heartbeat", "0.1", env=collector.env())
    sidecar = otel_sidecar(hub, memcached_server, collector.env())
    procs.append(sidecar)
    ready(sidecar)
    with memcache(memcached_server) as mc:
        mc.set("user:42", b"v")
        [event_id] = publish(hub, {"type": "user:42", "keys": ["user:42"]})
        assert applied(sidecar, event_id)
        assert mc.get("user:42") is None
    trace = Trace(collector, event_id)
    assert trace.publish.parent_span_id == ""  # the root
    trace.assert_hub_to_memcached()
    assert in_trace(collector, trace.publish.trace_id) == {
        ("cachewire-hub", "publish"),
        ("cachewire-sidecar", "receive"),
        ("cachewire-sidecar", "apply memcached"),
    }


def test_an_event_replayed_on_resume_still_carries_its_publish_context(
    hub_process: HubProcess,
    memcached_server: Proc,
    redis_server: Proc,
    procs: list[Proc],
    collector: OtlpGrpcCollector,
    publisher: Tracer,
) -> None:
    """Two hub replicas share a Redis broker. The sidecar's hub stops; an event is published
    through the other replica while the sidecar is disconnected; once its hub is back, the
    sidecar resumes after its last id and the replayed event continues the publisher's
    trace (the context was stored in the Redis stream with the event)."""
    redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
    args = ("--broker", "redis", "--redis-url", redis_url, "--subscribe-heartbeat", "0.1")
    http_port, grpc_port = free_port(), free_port()
    hub = hub_process(*args, env=collector.env(), http_port=http_port, grpc_port=grpc_port)
    other = hub_process(*args, grpc=False, env=collector.env())
    sidecar = otel_sidecar(hub, memcached_server, collector.env(), "--max-staleness", "60")
    procs.append(sidecar)
    ready(sidecar)
    ([first], _, _) = publish_in_span(publisher, hub, {"type": "user:1", "keys": ["user:1"]})
    assert applied(sidecar, first)

    assert hub.stop() == 0
    wait_for(lambda: not status(sidecar)["connected"], timeout=WAIT, what="a disconnected sidecar")
    with memcache(memcached_server) as mc:
        mc.set("user:42", b"v")
        body = {"type": "user:42", "keys": ["user:42"]}
        ([missed], trace_id, publisher_span) = publish_in_span(publisher, other, body)
        back = hub_process(*args, env=collector.env(), http_port=http_port, grpc_port=grpc_port)
        assert applied(sidecar, missed)
        assert mc.get("user:42") is None

    # It came by replay: the first subscription to the restarted hub resumed after `first`.
    opened = [x for x in log_lines(back) if x["msg"] == "grpc subscribe opened"]
    assert opened[0]["resume_from"] == first
    trace = Trace(collector, missed)
    assert (trace.publish.trace_id, trace.publish.parent_span_id) == (trace_id, publisher_span)
    trace.assert_hub_to_memcached()
