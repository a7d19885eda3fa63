"""Delivery under load (issue 16): Plasma `Events` fan-out paced and in bursts.

Each target is a hub process (`python -m cachewire.hub`, memory broker) pinned to CPU 0;
the load generator runs pinned to CPU 1. Targets alternate within every round, so both
sides of a comparison see the same machine; the figures printed are medians over rounds.

- `plasma`: K Plasma `Events` streams on one topic, events published one per HTTP
  `POST /v1/publish` at --rate events/s (paced); hub CPU µs per delivery (from /proc) and
  latency p50/p99 (publisher's clock in the event → generator's read time).
- `burst`: --burst events published as fast as the hub acknowledges (4 publishers, one
  event per request) to K streams that read as fast as they can; deliveries/s, streams
  dropped, publishes that waited (back-pressure) and publish errors.

Targets: `held` (the default, `--grpc-held-writes auto`), `public` (`--grpc-held-writes
off`: public grpcio API only) and `base:REV` (the hub of git revision REV, e.g. `base:main`).

The generator is grpcbench's minimal HTTP/2 client (`--grpcbench PATH`, or
$CACHEWIRE_GRPCBENCH): its cost per message is a fraction of grpc.aio's, so the hub is the
bottleneck. Without one, a grpc.aio generator in this script is used (`aio`), good for a
smoke run only: it saturates near 15-20k messages/s.

    .venv/bin/python bench/delivery_bench.py plasma --grpcbench PATH --targets held public
    .venv/bin/python bench/delivery_bench.py burst --grpcbench PATH --burst 20000 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from common import LOAD_LIMITS, ROOT, cpu_model, free_port, http_ok, percentile, process

TOPIC = "bench"
PLASMA_PROTO = ROOT / "proto" / "cachewire" / "v1" / "plasma.proto"


@dataclass
class Hub:
    label: str
    http_port: int
    grpc_port: int
    pid: int

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else float("nan")


def taskset(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu] if cpu and os.path.exists("/usr/bin/taskset") else []


@contextmanager
def tree_of(target: str) -> Iterator[Path]:
    """The source tree a target's hub runs from: this one, or REV's extracted."""
    if not target.startswith("base:"):
        yield ROOT
        return
    rev = target.split(":", 1)[1]
    with tempfile.TemporaryDirectory(prefix="cachewire-base-") as tmp:
        archive = subprocess.run(
            ["git", "archive", rev], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp)


@contextmanager
def hub(target: str, tree: Path, cpu: str, extra: list[str]) -> Iterator[Hub]:
    http_port, grpc_port = free_port(), free_port()
    argv = [
        *taskset(cpu),
        sys.executable,
        "-m",
        "cachewire.hub",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--log-level",
        "warning",
        *LOAD_LIMITS,
        *extra,
    ]
    if target == "public":
        argv += ["--grpc-held-writes", "off"]
    url = f"http://127.0.0.1:{http_port}/readyz"
    with process(argv, lambda: http_ok(url), f"hub {target}", cwd=tree) as proc:
        yield Hub(target, http_port, grpc_port, proc.pid)


def grpcbench(
    path: str, h: Hub, k: int, events: int, rate: float, cpu: str, timeout: float
) -> dict[str, Any]:
    """One grpcbench run against the hub; its JSON result."""
    argv = [
        *taskset(cpu),
        sys.executable,
        path,
        "--client",
        "h2",
        "--target",
        f"127.0.0.1:{h.grpc_port}",
        "--proto",
        str(PLASMA_PROTO),
        "-k",
        str(k),
        "-m",
        str(events),
        "--rate",
        str(rate),
        "--publisher",
        "http",
        "--pub-url",
        f"http://127.0.0.1:{h.http_port}/v1/publish",
        "--pub-header",
        "Content-Type: application/json",
        "--pub-body",
        '{"type":"{topic}","data":"ts={ts} seq={seq}"}',
        "--server-pid",
        str(h.pid),
        "--max-time",
        str(timeout),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 60)
    if done.returncode != 0:
        raise RuntimeError(f"grpcbench failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def aio_generator(h: Hub, k: int, events: int, rate: float) -> dict[str, Any]:
    """A small grpc.aio stand-in for grpcbench (smoke runs): same fields, this process."""
    import aiohttp
    import grpc

    from cachewire.v1 import plasma_pb2, plasma_pb2_grpc

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        got = [0] * k
        target = f"127.0.0.1:{h.grpc_port}"
        channels = [grpc.aio.insecure_channel(target) for _ in range(k)]
        first = plasma_pb2.Request(events=[plasma_pb2.EventType(type=TOPIC)])

        async def requests() -> Any:
            yield first
            await asyncio.Event().wait()  # keep the stream open

        async def read(i: int) -> None:
            stub = plasma_pb2_grpc.StreamServiceStub(channels[i])  # type: ignore[no-untyped-call]
            call = stub.Events(requests())
            async for payload in call:
                sent = int(payload.data.split("ts=")[1].split()[0])
                latencies.append(time.time_ns() - sent)
                got[i] += 1
                if got[i] == events:
                    call.cancel()
                    return

        readers = [asyncio.create_task(read(i)) for i in range(k)]
        deadline = time.monotonic() + 30
        while h.metric('cachewire_hub_connections{transport="grpc_plasma"}') < k:
            assert time.monotonic() < deadline, "streams did not subscribe"
            await asyncio.sleep(0.05)
        cpu0, t0 = cpu_seconds(h.pid), time.monotonic()
        url = f"http://127.0.0.1:{h.http_port}/v1/publish"
        async with aiohttp.ClientSession() as http:
            for seq in range(events):
                if rate > 0:
                    await asyncio.sleep(max(0.0, t0 + seq / rate - time.monotonic()))
                body = {"type": TOPIC, "data": f"ts={time.time_ns()} seq={seq}"}
                async with http.post(url, json=body) as resp:
                    assert resp.status == 200, await resp.text()
        await asyncio.wait_for(asyncio.gather(*readers), 60)
        seconds, cpu = time.monotonic() - t0, cpu_seconds(h.pid) - cpu0
        for channel in channels:
            await channel.close()
        n = sum(got)
        ms = [x / 1e6 for x in latencies]
        return {
            "deliveries_received": n,
            "deliveries_lost": k * events - n,
            "deliveries_per_s": n / seconds,
            "server_cpu_us_per_delivery": cpu / n * 1e6,
            "latency_ms": {"p50": percentile(ms, 0.5), "p99": percentile(ms, 0.99)},
            "publish_errors": 0,
        }

    return asyncio.run(run())


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def generate(args: argparse.Namespace, h: Hub, k: int, events: int, rate: float) -> dict[str, Any]:
    if args.grpcbench:
        return grpcbench(args.grpcbench, h, k, events, rate, args.gen_cpu, args.max_time)
    return aio_generator(h, k, events, rate)


def run_plasma(args: argparse.Namespace, h: Hub) -> dict[str, float]:
    r = generate(args, h, args.k, args.events, args.rate)
    return {
        "cpu_us": r["server_cpu_us_per_delivery"],
        "p50_ms": r["latency_ms"]["p50"],
        "p99_ms": r["latency_ms"]["p99"],
        "lost": r["deliveries_lost"],
        "per_s": r["deliveries_per_s"],
    }


def run_burst(args: argparse.Namespace, h: Hub, events: int) -> dict[str, float]:
    waits0 = h.metric("cachewire_hub_publish_waits_total")
    r = generate(args, h, args.k, events, 0)
    return {
        "events": events,
        "per_s": r["deliveries_per_s"],
        "cpu_us": r["server_cpu_us_per_delivery"],
        "lost": r["deliveries_lost"],
        "dropped": h.metric('cachewire_hub_slow_consumer_drops_total{transport="grpc_plasma"}'),
        "waits": h.metric("cachewire_hub_publish_waits_total") - waits0,
        "errors": r["publish_errors"],
    }


def median_row(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=("plasma", "burst"))
    parser.add_argument("--targets", nargs="+", default=["held", "public"])
    parser.add_argument("--grpcbench", default=os.environ.get("CACHEWIRE_GRPCBENCH", ""))
    parser.add_argument("--k", type=int, default=100, help="Events streams")
    parser.add_argument("--events", type=int, default=4000, help="plasma: events per run")
    parser.add_argument("--rate", type=float, default=200, help="plasma: events/s")
    parser.add_argument("--burst", type=int, nargs="+", default=[20_000], help="burst sizes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hub-cpu", default="0")
    parser.add_argument("--gen-cpu", default="1")
    parser.add_argument("--max-time", type=float, default=400)
    parser.add_argument("--hub-arg", action="append", default=[], help="extra hub flag")
    args = parser.parse_args(argv)

    print(f"# delivery_bench {args.scenario}: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# {os.cpu_count()} CPUs, {cpu_model()}, {platform.python_implementation()}")
    print(f"# load average {os.getloadavg()[0]:.2f}; generator: {args.grpcbench or 'aio'}")
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    with ExitStack() as stack:
        trees = {t: stack.enter_context(tree_of(t)) for t in args.targets}
        sizes = args.burst if args.scenario == "burst" else [args.events]
        for rnd in range(args.rounds):
            for size in sizes:
                order = args.targets if rnd % 2 == 0 else args.targets[::-1]
                for target in order:
                    with hub(target, trees[target], args.hub_cpu, args.hub_arg) as h:
                        if args.scenario == "plasma":
                            row = run_plasma(args, h)
                        else:
                            row = run_burst(args, h, size)
                    results.setdefault((target, size), []).append(row)
                    print(f"# round {rnd + 1} {target} {size}: {json.dumps(row)}", flush=True)
    print()
    if args.scenario == "plasma":
        print(f"K={args.k} streams, {args.rate:g} events/s, {args.events} events, medians")
        print("| target | hub CPU µs/delivery | p50 ms | p99 ms | lost |")
        print("| --- | --- | --- | --- | --- |")
        for (target, _), rows in results.items():
            m = median_row(rows)
            print(
                f"| {target} | {m['cpu_us']:.1f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} "
                f"| {m['lost']:.0f} |"
            )
    else:
        print(f"K={args.k} streams, events published as fast as acknowledged, medians")
        print(
            "| target | events | deliveries/s | hub CPU µs/delivery | lost | streams dropped "
            "| publishes that waited | publish errors |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for (target, size), rows in results.items():
            m = median_row(rows)
            print(
                f"| {target} | {size} | {m['per_s']:,.0f} | {m['cpu_us']:.1f} | {m['lost']:.0f} "
                f"| {m['dropped']:.0f} | {m['waits']:.0f} | {m['errors']:.0f} |"
            )


if __name__ == "__main__":
    main()
