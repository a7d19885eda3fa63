"""cachewire.common.telemetry: OTEL_* selection, trace context, log fields, lag exemplars."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest
from opentelemetry import trace
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from cachewire.common import telemetry as ct
from cachewire.common.logs import JsonFormatter
from cachewire.sidecar.sinks.base import Invalidation
from tests.otlp import in_memory_tracing

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"


# --- when tracing is on ---


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_SERVICE_NAME": "hub", "OTEL_RESOURCE_ATTRIBUTES": "a=b"},
        {"OTEL_TRACES_SAMPLER": "always_on", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    ],
)
def test_tracing_is_off_unless_an_exporter_or_endpoint_is_configured(env: dict[str, str]) -> None:
    assert not ct.wanted(env)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"},
        {"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp,none"},
    ],
)
def test_an_exporter_or_an_otlp_endpoint_turns_tracing_on(env: dict[str, str]) -> None:
    assert ct.wanted(env)


def test_exporters_and_protocol_come_from_the_standard_variables() -> None:
    assert ct.exporter_names({}) == ["otlp"]
    assert ct.exporter_names({"OTEL_TRACES_EXPORTER": " OTLP , console"}) == ["otlp", "console"]
    assert ct.exporter_names({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert ct.otlp_protocol({}) == "grpc"
    assert ct.otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) == "http/protobuf"
    specific = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert ct.otlp_protocol(specific) == "http/protobuf"


def test_unsupported_exporter_or_protocol_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"OTEL_TRACES_EXPORTER='zipkin' is not supported"):
        ct.exporter_names({"OTEL_TRACES_EXPORTER": "otlp,zipkin"})
    with pytest.raises(ValueError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        ct.otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_service_name_defaults_to_ours_and_the_environment_overrides_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    provider = ct.build_provider("cachewire-hub", {"OTEL_TRACES_EXPORTER": "console"})
    try:
        attrs = provider.resource.attributes
        assert attrs["service.name"] == "cachewire-hub"
        assert attrs["deployment.environment"] == "test"
        assert attrs["service.version"]
        # The console exporter writes each finished span to stdout as JSON.
        provider.get_tracer("t").start_span("hello").end()
        assert provider.force_flush(5000)
        assert '"name": "hello"' in capsys.readouterr().out
    finally:
        provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "hub-eu-1")
    provider = ct.build_provider("cachewire-hub", {"OTEL_TRACES_EXPORTER": "none"})
    assert provider.resource.attributes["service.name"] == "hub-eu-1"
    provider.shutdown()


def test_tracer_is_none_while_nothing_is_installed() -> None:
    assert ct.tracer() is None
    assert ct.flush()
    with in_memory_tracing():
        assert ct.tracer() is not None
    assert ct.tracer() is None


# --- the trace context carried in events ---


def test_a_span_started_under_a_traceparent_is_its_child_and_formats_back() -> None:
    with in_memory_tracing() as exporter:
        tracer = ct.tracer()
        assert tracer is not None
        span = tracer.start_span("x", ct.parent_context(TRACEPARENT, "vendor=abc"))
        tp, ts = ct.traceparent_of(span.get_span_context())
        span.end()
    (finished,) = exporter.get_finished_spans()
    assert finished.parent is not None and finished.parent.span_id == int(SPAN, 16)
    assert tp == f"00-{TRACE}-{finished.context.span_id:016x}-01"
    assert ts == "vendor=abc"  # tracestate is carried on to the child


@pytest.mark.parametrize(
    "bad", ["", "garbage", f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01"]
)
def test_a_missing_or_invalid_traceparent_gives_no_parent(bad: str) -> None:
    assert ct.span_context(bad) is None
    assert ct.parent_context(bad) is None
    assert ct.trace_id_of(bad) == ""


def test_unsampled_context_keeps_its_flag() -> None:
    sc = ct.span_context(f"00-{TRACE}-{SPAN}-00")
    assert sc is not None and not sc.trace_flags.sampled
    assert ct.traceparent_of(sc)[0] == f"00-{TRACE}-{SPAN}-00"


def test_link_to_a_message_carries_its_id() -> None:
    link = ct.link_to(Invalidation("e-1", "user:1", traceparent=TRACEPARENT))
    assert link is not None
    assert link.context.trace_id == int(TRACE, 16) and link.attributes == {
        ct.ATTR_MESSAGE_ID: "e-1"
    }
    assert ct.link_to(Invalidation("e-2", "user:1")) is None


def test_message_attributes_follow_the_messaging_conventions() -> None:
    one = ct.message_attributes(
        [Invalidation("e-1", "user:1", keys=("a", "b"))], "apply", "process"
    )
    assert one == {
        "messaging.system": "cachewire",
        "messaging.operation.name": "apply",
        "messaging.operation.type": "process",
        "messaging.destination.name": "user:1",
        "cachewire.keys.count": 2,
    }
    batch = [
        Invalidation("e-1", "user:1", prefixes=("p",)),
        Invalidation("e-2", "user:2", flush=True),
    ]
    attrs = ct.message_attributes(batch, "apply", "process")
    assert attrs["messaging.batch.message_count"] == 2
    assert "messaging.destination.name" not in attrs  # two destinations: none names the batch
    assert attrs["cachewire.prefixes.count"] == 1 and attrs["cachewire.flush"] is True


# --- logs ---


def _format(logger: logging.Logger) -> list[dict[str, str]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    try:
        logger.warning("outside")
        with in_memory_tracing():
            tracer = ct.tracer()
            assert tracer is not None
            with tracer.start_as_current_span("work"):
                logger.warning("inside", extra={"id": "e-1"})
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_log_lines_carry_trace_and_span_ids_while_a_span_is_active() -> None:
    outside, inside = _format(logging.getLogger("test.telemetry.logs"))
    assert "trace_id" not in outside and "span_id" not in outside
    assert len(inside["trace_id"]) == 32 and len(inside["span_id"]) == 16
    assert inside["id"] == "e-1" and inside["msg"] == "inside"
    assert ct.log_fields() == {}
    assert trace.get_current_span().get_span_context().is_valid is False


# --- lag histogram with exemplars ---


def test_lag_exemplars_carry_the_trace_id_in_openmetrics_only() -> None:
    registry = CollectorRegistry(auto_describe=True)
    lag = ct.LagHistogram("cachewire_test_lag", "lag", registry, labelnames=("sink",))
    lag.observe(0.003, TRACE, sink="memcached")
    lag.observe(0.2, "", sink="memcached")
    lag.observe(0.2, "0" * 32, sink="redis")
    body, content_type = ct.exposition(registry, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    text = body.decode()
    assert f'# {{trace_id="{TRACE}"}} 0.003' in text
    assert text.count("trace_id=") == 1  # no exemplar without a valid trace id
    (family,) = text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
    assert family.name == "cachewire_test_lag_seconds" and family.unit == "seconds"
    exemplars = [s.exemplar for s in family.samples if s.exemplar is not None]
    assert [e.labels for e in exemplars] == [{"trace_id": TRACE}]

    body, content_type = ct.exposition(registry, "text/plain")
    assert content_type.startswith("text/plain")
    assert b"trace_id" not in body and b"cachewire_test_lag_seconds_count" in body


def test_negative_lag_from_clock_skew_counts_as_zero() -> None:
    registry = CollectorRegistry()
    lag = ct.LagHistogram("cachewire_skew_lag", "lag", registry)
    lag.observe(-0.5, TRACE)
    assert registry.get_sample_value("cachewire_skew_lag_seconds_sum") == 0.0
    assert registry.get_sample_value("cachewire_skew_lag_seconds_bucket", {"le": "0.001"}) == 1.0


def test_with_nothing_configured_no_sdk_is_loaded_and_no_provider_is_set() -> None:
    """In a fresh process (configuration is once per process): tracing off costs nothing."""
    code = (
        "import sys, logging; logging.basicConfig(level='INFO')\n"
        "from opentelemetry import trace\n"
        "from cachewire.common import telemetry as ct\n"
        "from cachewire.hub import telemetry\n"
        "telemetry.setup()\n"
        "assert ct.tracer() is None and ct.configure('again') is None\n"
        "assert 'opentelemetry.sdk.trace' not in sys.modules, 'the SDK was imported'\n"
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "tracing off" in done.stderr
