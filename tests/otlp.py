"""A real OTLP trace receiver for tests: what a collector would see from our processes.

`OtlpGrpcCollector` serves opentelemetry-proto's TraceService over gRPC, `OtlpHttpCollector`
accepts `POST /v1/traces` (OTLP/HTTP, binary protobuf); both run in a background thread on
a free port, decode every ExportTraceServiceRequest into `ReceivedSpan`s, and let a test
wait on a fact: `collector.wait_for_spans(lambda s: s.name == "publish")`.

    with OtlpGrpcCollector() as collector:
        proc = start_hub(env=collector.env())
"""

from __future__ import annotations

import gzip
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cachewire.common import telemetry

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUSES = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass(frozen=True)
class ReceivedLink:
    trace_id: str
    span_id: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, ids as lowercase hex ("" for no parent)."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    links: tuple[ReceivedLink, ...]
    resource: dict[str, Any]
    status: str
    events: tuple[str, ...] = ()

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))


def decode_value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [decode_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return bytes(value.bytes_value)
    return getattr(value, which)


def decode_attributes(attributes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in attributes:
        assert isinstance(kv, KeyValue)
        out[kv.key] = decode_value(kv.value)
    return out


def decode_request(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = decode_attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(_decode_span(span, resource))
    return spans


def _decode_span(span: trace_pb2.Span, resource: dict[str, Any]) -> ReceivedSpan:
    return ReceivedSpan(
        name=span.name,
        kind=KINDS.get(span.kind, str(span.kind)),
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        attributes=decode_attributes(span.attributes),
        links=tuple(
            ReceivedLink(
                link.trace_id.hex(), link.span_id.hex(), decode_attributes(link.attributes)
            )
            for link in span.links
        ),
        resource=resource,
        status=STATUSES.get(span.status.code, str(span.status.code)),
        events=tuple(e.name for e in span.events),
    )


class Collector:
    """Spans received so far, and a way to wait for the ones a test expects."""

    endpoint = ""
    protocol = ""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._cond = threading.Condition()
        self.requests = 0

    def receive(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        spans = decode_request(request)
        with self._cond:
            self.requests += 1
            self._spans.extend(spans)
            self._cond.notify_all()

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._cond:
            return list(self._spans)

    def wait_for_spans(
        self, predicate: Callable[[ReceivedSpan], bool], timeout: float = 20.0, count: int = 1
    ) -> list[ReceivedSpan]:
        """Block until at least `count` received spans satisfy `predicate`; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [s for s in self._spans if predicate(s)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(s.name, s.kind, s.trace_id, s.span_id) for s in self._spans]
                    raise TimeoutError(
                        f"timed out after {timeout}s waiting for {count} span(s); received {seen}"
                    )
                self._cond.wait(left)

    def env(self, **extra: str) -> dict[str, str]:
        """OTEL_* variables that send a process's spans here, quickly (100 ms batches)."""
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": self.protocol,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            **extra,
        }

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._collector.receive(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpGrpcCollector(Collector):
    """OTLP/gRPC: opentelemetry-proto's TraceService on a grpc server of its own threads."""

    protocol = "grpc"

    def __init__(self) -> None:
        super().__init__()
        self._server: grpc.Server | None = None
        self.port = 0

    def start(self) -> None:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)]
        )
        add_servicer = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        add_servicer(_TraceService(self), server)  # type: ignore[no-untyped-call]
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None


class OtlpHttpCollector(Collector):
    """OTLP/HTTP with binary protobuf: `POST /v1/traces`, as the SDK's http exporter sends."""

    protocol = "http/protobuf"

    def __init__(self) -> None:
        super().__init__()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> None:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.receive(request)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name="otlp-http", daemon=True)
        self._thread.start()
        self._server = server
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


@contextmanager
def in_memory_tracing() -> Iterator[InMemorySpanExporter]:
    """cachewire's spans go to an in-memory exporter (synchronously) for the block's duration."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.install(provider)
    try:
        yield exporter
    finally:
        telemetry.install(None)
        provider.shutdown()


def main() -> None:
    """`python -m tests.otlp`: an OTLP/gRPC receiver in its own process (for benchmarks).

    Prints `port N` once listening, counts spans, and on stdin's end prints `spans N`.
    """
    with OtlpGrpcCollector() as collector:
        print(f"port {collector.port}", flush=True)
        sys.stdin.read()
        print(f"spans {len(collector.spans)}", flush=True)


if __name__ == "__main__":
    main()
