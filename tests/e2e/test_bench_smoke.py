"""Every benchmark script still runs: each with tiny sizes (seconds), checked for exit 0 and
its table. Figures are not checked (speed is measured in benchmarks, not asserted here).

The publish benchmark's side-by-side rows need Go and nginx with nchan and the load
generators' folder (`CACHEWIRE_BENCH_TOOLS`); without them its library rows still run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = os.environ.get("CACHEWIRE_BENCH_TOOLS", "")
SIDE_BY_SIDE = bool(TOOLS) and bool(shutil.which("go")) and bool(shutil.which("nginx"))

SMOKE = {
    "auth_bench.py": ["--rounds", "1", "--requests", "40", "--clients", "2", "--calls", "100",
                      "--markdown"],
    "publish_bench.py": ["--smoke", *(["--tools", TOOLS] if SIDE_BY_SIDE else [])],
    "tracing_bench.py": ["--rounds", "1", "--requests", "20", "--batch", "5",
                         "--subscribers", "1", "--concurrency", "2"],
    "redis_bench.py": ["--rounds", "1", "--events", "50", "--subscribers", "2",
                       "--publishers", "2", "--batches", "1", "--latency-events", "5",
                       "--rate", "50", "--only", "memory", "redis-1", "--markdown"],
    "grpc_bench.py": ["--k", "1", "--deliveries", "200", "--events", "50",
                      "--latency-events", "5", "--rate", "50", "--rounds", "1"],
    "sidecar_bench.py": ["--events", "200", "--hub-events", "100", "--single-events", "50",
                         "--rate", "100", "--seconds", "0.3", "--per-call", "1"],
    "sse_bench.py": ["--smoke", "--readers", "1", "--no-pin"],
    "delivery_bench.py": ["plasma", "--targets", "held", "public", "--k", "2", "--events", "20",
                          "--rate", "50", "--rounds", "1", "--grpcbench", ""],
    "pipeline_bench.py": ["latency", "--transports", "http", "grpc", "--rates", "100",
                          "--seconds", "0.5", "--rounds", "1"],
}  # fmt: skip
# Second modes of scripts that have two.
MORE = {
    "delivery_bench.py": ["burst", "--targets", "held", "--k", "2", "--burst", "50",
                          "--rounds", "1", "--grpcbench", ""],
    "pipeline_bench.py": ["throughput", "--events", "1000", "--rounds", "1"],
}  # fmt: skip


def test_every_bench_script_has_a_smoke_run() -> None:
    assert sorted(SMOKE) == sorted(p.name for p in (ROOT / "bench").glob("*_bench.py"))


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("script", "args"), [*sorted(SMOKE.items()), *sorted(MORE.items())], ids=lambda v: str(v)[:20]
)
def test_bench_script_runs(script: str, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT / "bench",
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| ---" in result.stdout or "---:" in result.stdout, result.stdout[-2000:]
