"""A smoke run of every benchmark script, so that none of them rots: each runs its real
processes on tiny sizes and must exit 0 and print its table. (The figures mean nothing at
these sizes; the benchmarks themselves run with `make bench`, not in CI.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.servers import ROOT

RUNS = {
    "grpc_bench": [
        *("--k", "1", "--transports", "subscribe", "--deliveries", "200", "--events", "200"),
        *("--latency-events", "5", "--rate", "50"),
    ],
    "redis_bench": [
        *("--subscribers", "1", "--publishers", "1", "--events", "50", "--rounds", "1"),
        *("--batches", "10", "--latency-events", "5", "--rate", "50", "--markdown"),
    ],
    "sse_bench": ["--smoke", "--readers", "1", "--publishers", "1"],
    "sidecar_bench": [
        *("--events", "200", "--hub-events", "200", "--single-events", "20"),
        *("--rate", "50", "--seconds", "0.5", "--per-call", "1"),
    ],
    "tracing_bench": [
        *("--rounds", "1", "--requests", "20", "--batch", "5", "--subscribers", "1"),
        *("--concurrency", "2", "--exporter", "console"),
    ],
    "delivery_bench plasma": [
        *("plasma", "--targets", "held", "public", "--k", "2", "--events", "20"),
        *("--rate", "50", "--rounds", "1", "--grpcbench", ""),
    ],
    "delivery_bench burst": [
        *("burst", "--targets", "held", "--k", "2", "--burst", "50", "--rounds", "1"),
        *("--grpcbench", ""),
    ],
    "pipeline_bench latency": [
        *("latency", "--transports", "http", "--rates", "100", "--seconds", "0.5"),
        *("--rounds", "1"),
    ],
    "pipeline_bench throughput": ["throughput", "--events", "1000", "--rounds", "1"],
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(RUNS))
def test_benchmark_script_runs(name: str) -> None:
    script = ROOT / "bench" / f"{name.split()[0]}.py"
    done = subprocess.run(
        [sys.executable, str(script), *RUNS[name]],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| --- " in done.stdout or "| ---:" in done.stdout, done.stdout[-2000:]
