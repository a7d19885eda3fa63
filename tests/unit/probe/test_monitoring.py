"""k8s/monitoring: the alert rules and the dashboard name only metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from cachewire.probe.core import Outcome, ProbeMetrics
from cachewire.sidecar.metrics import Metrics

MONITORING = Path(__file__).resolve().parents[3] / "k8s" / "monitoring"


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    metrics = ProbeMetrics(registry, bound=5.0)
    metrics.record(Outcome("memcached", "gone", 0.1))
    metrics.record(Outcome("memcached", "violation", 5.0))
    metrics.errors.labels("publish").inc()
    sidecar = Metrics()
    sidecar.flushes.labels("memcached", "stale").inc()
    families = [*registry.collect(), *sidecar.registry.collect()]
    samples = {s.name for family in families for s in family.samples}
    return samples | {family.name for family in families}


def test_rules_and_dashboard_use_exported_metrics() -> None:
    known = exported_names()
    rule = (MONITORING / "prometheusrule.yaml").read_text()
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set(re.findall(r"cachewire_[a-z_]+", rule + "\n".join(exprs)))
    assert used, "no metric found"
    assert used <= known, used - known
    parsed = yaml.safe_load(rule)
    assert parsed["kind"] == "PrometheusRule"
    alerts = {r["alert"]: r for g in parsed["spec"]["groups"] for r in g["rules"]}
    assert "cachewire_probe_violations_total" in alerts["CachewireStalenessBoundViolated"]["expr"]
