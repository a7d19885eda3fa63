"""Publish path side by side with nginx + nchan: the rows of the publishing issue's table.

Rows, each measured for both sides in the same run, targets alternating, medians reported:

1. single-event publishes/s and server CPU per publish: `pubbench -raw`, 16 keep-alive
   clients, one SSE subscriber on each of 16 topics; cachewire `POST /v1/publish` versus
   nchan `POST /pub/<topic>`;
2. events/s through the publisher library (`AsyncPublisher`, batching; HTTP and gRPC) and
   through streaming publish (NDJSON bodies of 50 events, `pubbench`), against nchan's
   single-event rate of row 1;
3. many topics: 2,000 topics with one SSE subscriber each, one event per POST at 500/s
   (`ssebench`): server CPU per delivery.

The server (hub or nginx) runs on CPU 0, the load on CPU 1 (`taskset`). The Go load
generators and the nginx configuration are not part of this repository: `--tools DIR` names
the folder holding `pubbench/`, `ssebench/` (Go sources, built into a temporary folder) and
`peers/nchan/nginx.conf`. Without it, only the library rows run (against the hub alone).

    .venv/bin/python bench/publish_bench.py --tools DIR            # about 6 minutes
    .venv/bin/python bench/publish_bench.py --smoke                # seconds: does it still run?
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import LOAD_LIMITS, ROOT, answers, cpu_model, free_port, http_ok, process

HUB = ROOT / ".venv" / "bin" / "cachewire"
SERVER_CPU, LOAD_CPU = "0", "1"
NDJSON_LINES = 50
CW_BODY = '{"type":"{topic}","data":"ts={ts} seq={seq}"}'


@dataclass
class Sizes:
    rounds: int = 3
    warmup: float = 2.0
    duration: float = 8.0
    drain: float = 2.0
    topics_n: int = 2000
    topics_m: int = 6000  # 12 s at 500/s: enough CPU time for a 10 ms /proc clock
    topics_rate: int = 500


SMOKE = Sizes(rounds=1, warmup=0.2, duration=0.5, drain=0.5, topics_n=20, topics_m=20)


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") else argv


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


# --- the servers ---


@contextlib.contextmanager
def hub() -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    http, grpc = free_port(), free_port()
    argv = [str(HUB), "hub", "--http-port", str(http), "--grpc-port", str(grpc), *LOAD_LIMITS]
    with process(
        pinned(SERVER_CPU, argv), lambda: http_ok(f"http://127.0.0.1:{http}/readyz"), "hub"
    ) as proc:
        yield proc, http, grpc


@contextlib.contextmanager
def nchan(tools: Path, workdir: Path) -> Iterator[tuple[int, int]]:
    """nginx + nchan on a free port, its state in workdir; yields (worker pid, port)."""
    port = free_port()
    state = workdir / "nchan"
    state.mkdir(exist_ok=True)
    conf = (tools / "peers" / "nchan" / "nginx.conf").read_text()
    conf = re.sub(r"/tmp/cachewire-bench/nchan", str(state), conf)
    conf = re.sub(r"listen 127\.0\.0\.1:\d+", f"listen 127.0.0.1:{port}", conf)
    (state / "nginx.conf").write_text(conf)
    argv = ["nginx", "-p", f"{state}/", "-c", str(state / "nginx.conf")]
    with process(pinned(SERVER_CPU, argv), lambda: answers(port), "nginx") as proc:
        yield proc.pid, port


# --- the load ---


def build(tools: Path, name: str, workdir: Path) -> Path:
    binary = workdir / name
    if not binary.exists():
        subprocess.run(["go", "build", "-o", str(binary), "."], cwd=tools / name, check=True)
    return binary


def pubbench(binary: Path, sizes: Sizes, pid: int, args: list[str]) -> dict[str, Any]:
    argv = [
        str(binary),
        "-raw",
        "-topics",
        "16",
        "-c",
        "16",
        "-warmup",
        f"{sizes.warmup}s",
        "-duration",
        f"{sizes.duration}s",
        "-drain",
        f"{sizes.drain}s",
        "-server-pid",
        str(pid),
        *args,
    ]
    out = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, check=True, timeout=120)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def ssebench(binary: Path, sizes: Sizes, pid: int, args: list[str]) -> dict[str, Any]:
    argv = [
        str(binary),
        "-topics",
        "distinct",
        "-n",
        str(sizes.topics_n),
        "-m",
        str(sizes.topics_m),
        "-rate",
        str(sizes.topics_rate),
        "-server-pid",
        str(pid),
        "-max-time",
        "180s",
        "-drain-idle",
        "3s",
        *args,
    ]
    out = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, check=True, timeout=240)
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def library_load(
    url: str, sse_port: int, sizes: Sizes, hub_pid: int, in_flight: int = 1
) -> dict[str, Any]:
    """This script's `library` subcommand on the load CPU: events/s through AsyncPublisher."""
    argv = [
        sys.executable,
        __file__,
        "library",
        "--url",
        url,
        "--sse-port",
        str(sse_port),
        "--warmup",
        str(sizes.warmup),
        "--duration",
        str(sizes.duration),
        "--hub-pid",
        str(hub_pid),
        "--in-flight",
        str(in_flight),
    ]
    out = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, check=True, timeout=120)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def _library(args: argparse.Namespace) -> dict[str, Any]:
    """16 SSE subscribers (one per topic) and 64 concurrent publishers through one
    AsyncPublisher; events/s acknowledged in the window, hub CPU per event."""
    import aiohttp

    from cachewire.publish import AsyncPublisher

    topics = [f"lib{k}" for k in range(16)]
    received = ready = acked_all = 0
    done = False
    all_ready, all_received = asyncio.Event(), asyncio.Event()

    async def subscribe(http: aiohttp.ClientSession, topic: str) -> None:
        nonlocal received, ready
        url = f"http://127.0.0.1:{args.sse_port}/?eventType={topic}"
        async with http.get(url) as resp:
            ready += 1
            if ready == len(topics):
                all_ready.set()
            async for line in resp.content:
                if line.startswith(b"data:"):
                    received += 1
                    if done and received >= acked_all:
                        all_received.set()

    async with (
        aiohttp.ClientSession() as http,
        AsyncPublisher(args.url, max_in_flight=args.in_flight) as publisher,
    ):
        subs = [asyncio.create_task(subscribe(http, t)) for t in topics]
        await all_ready.wait()
        acked = 0
        measuring = done = False
        stop = time.monotonic() + args.warmup + args.duration

        async def worker(n: int) -> None:
            nonlocal acked, acked_all
            seq = 0
            while time.monotonic() < stop:
                seq += 1
                await publisher.publish(topics[n % 16], data=f"w={n} seq={seq}")
                acked_all += 1
                if measuring:
                    acked += 1

        workers = [asyncio.create_task(worker(n)) for n in range(64)]
        await asyncio.sleep(args.warmup)
        measuring, cpu0, t0 = True, cpu_seconds(args.hub_pid), time.monotonic()
        requests0 = publisher.requests
        await asyncio.sleep(args.duration)
        window, cpu = time.monotonic() - t0, cpu_seconds(args.hub_pid) - cpu0
        requests = publisher.requests - requests0
        await asyncio.gather(*workers)
        done = True
        if received < acked_all:  # drain: every event delivered, or 5 s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await all_received.wait()
        total = publisher.requests
        for task in subs:
            task.cancel()
    return {
        "events_per_s": acked / window,
        "server_cpu_us_per_event": cpu / max(acked, 1) * 1e6,
        "events_per_request": acked / max(requests, 1),
        "deliveries_received": received,
        "deliveries_missing": acked_all - received,
        "requests": total,
    }


# --- the run ---


def cw_args(port: int) -> list[str]:
    return [
        "-sub-url", f"http://127.0.0.1:{port}/?eventType={{topic}}",
        "-pub-url", f"http://127.0.0.1:{port}/v1/publish",
    ]  # fmt: skip


def median(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in results)


def run(tools: Path | None, sizes: Sizes) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {}
    started = time.time()
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="cachewire-publish-bench-") as tmp:
        workdir = Path(tmp)
        pb = build(tools, "pubbench", workdir) if tools else None
        sb = build(tools, "ssebench", workdir) if tools else None
        for rnd in range(sizes.rounds):
            order = ["nchan", "cachewire"] if rnd % 2 == 0 else ["cachewire", "nchan"]
            for target in order:
                if target == "nchan" and tools and pb and sb:
                    with nchan(tools, workdir) as (pid, port):
                        rows.setdefault("single/nchan", []).append(
                            pubbench(pb, sizes, pid, [
                                "-sub-url", f"http://127.0.0.1:{port}/sub/{{topic}}",
                                "-pub-url", f"http://127.0.0.1:{port}/pub/{{topic}}",
                                "-body", "ts={ts} seq={seq}",
                            ])
                        )  # fmt: skip
                    with nchan(tools, workdir) as (pid, port):
                        rows.setdefault("topics/nchan", []).append(
                            ssebench(sb, sizes, pid, [
                                "-url", f"http://127.0.0.1:{port}/sub/{{topic}}",
                                "-pub-url", f"http://127.0.0.1:{port}/pub/{{topic}}",
                            ])
                        )  # fmt: skip
                if target == "cachewire":
                    if pb:
                        with hub() as (proc, http, _):
                            rows.setdefault("single/cachewire", []).append(
                                pubbench(pb, sizes, proc.pid, [
                                    *cw_args(http), "-body", CW_BODY,
                                    "-pub-header", "Content-Type: application/json",
                                ])
                            )  # fmt: skip
                        with hub() as (proc, http, _):
                            body = "\n".join([CW_BODY] * NDJSON_LINES)
                            result = pubbench(pb, sizes, proc.pid, [
                                *cw_args(http), "-body", body,
                                "-pub-header", "Content-Type: application/x-ndjson",
                            ])  # fmt: skip
                            result["events_per_s"] = result["publishes_per_s"] * NDJSON_LINES
                            result["server_cpu_us_per_event"] = (
                                result["server_cpu_us_per_publish"] / NDJSON_LINES
                            )
                            rows.setdefault("ndjson/cachewire", []).append(result)
                    for scheme, in_flight in (("http", 1), ("grpc", 1), ("http", 4)):
                        with hub() as (proc, http, grpc):
                            port = http if scheme == "http" else grpc
                            name = f"library-{scheme}{'' if in_flight == 1 else in_flight}"
                            rows.setdefault(f"{name}/cachewire", []).append(
                                library_load(
                                    f"{scheme}://127.0.0.1:{port}", http, sizes, proc.pid, in_flight
                                )
                            )
                    if sb:
                        with hub() as (proc, http, _):
                            rows.setdefault("topics/cachewire", []).append(
                                ssebench(sb, sizes, proc.pid, [
                                    "-url", f"http://127.0.0.1:{http}/?eventType={{topic}}",
                                    "-pub-url", f"http://127.0.0.1:{http}/v1/publish",
                                    "-pub-body", CW_BODY,
                                    "-pub-header", "Content-Type: application/json",
                                ])
                            )  # fmt: skip
            load.append(os.getloadavg()[0])
    return {"rows": rows, "seconds": time.time() - started, "load": load, "started": started}


def report(result: dict[str, Any], sizes: Sizes, argv: list[str]) -> str:
    rows = result["rows"]
    when = datetime.datetime.fromtimestamp(result["started"], datetime.UTC)
    loads = ", ".join(f"{x:.1f}" for x in result["load"])
    lines = [
        f"### {when:%Y-%m-%d %H:%M} UTC: {os.cpu_count()} CPUs, {cpu_model()}, "
        f"CPython {sys.version.split()[0]}; load average per round {loads}",
        "",
        "```sh",
        " ".join(["python", "bench/publish_bench.py", *argv]),
        "```",
        "",
        f"{sizes.rounds} rounds, targets alternating; medians. Server on CPU {SERVER_CPU}, "
        f"load on CPU {LOAD_CPU}. Total {result['seconds']:.0f} s.",
        "",
        "| row | cachewire | nchan | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]

    def get(name: str, key: str) -> float | None:
        return median(rows[name], key) if rows.get(name) else None

    def fmt(v: float | None, unit: str = "") -> str:
        return "—" if v is None else f"{v:,.0f}{unit}" if v >= 100 else f"{v:,.1f}{unit}"

    def ratio(a: float | None, b: float | None) -> str:
        return "—" if a is None or b is None or not b else f"{a / b:.2f}x"

    cw, nc = get("single/cachewire", "publishes_per_s"), get("single/nchan", "publishes_per_s")
    cw_cpu = get("single/cachewire", "server_cpu_us_per_publish")
    nc_cpu = get("single/nchan", "server_cpu_us_per_publish")
    lines.append(
        f"| single-event publishes/s (16 keep-alive clients, 16 topics x 1 SSE sub) | "
        f"{fmt(cw)}/s | {fmt(nc)}/s | {ratio(cw, nc)} | ≥ 0.5x |"
    )
    lines.append(
        f"| … server CPU per publish | {fmt(cw_cpu, ' µs')} | {fmt(nc_cpu, ' µs')} | "
        f"{ratio(cw_cpu, nc_cpu)} | ≤ 50 µs |"
    )
    for name, what in (
        ("library-http/cachewire", "events/s, publisher library over HTTP (64 concurrent calls)"),
        ("library-grpc/cachewire", "events/s, publisher library over gRPC (64 concurrent calls)"),
        (
            "library-http4/cachewire",
            "events/s, publisher library over HTTP, max_in_flight=4 (order not kept)",
        ),
        ("ndjson/cachewire", f"events/s, NDJSON bodies of {NDJSON_LINES} events (pubbench)"),
    ):
        ev = get(name, "events_per_s")
        cpu = get(name, "server_cpu_us_per_event")
        lines.append(
            f"| {what}; hub CPU per event {fmt(cpu, ' µs')} | {fmt(ev)}/s | {fmt(nc)}/s "
            f"(single-event) | {ratio(ev, nc)} | ≥ 1.0x |"
        )
    per_delivery = {}
    for side in ("cachewire", "nchan"):
        got = rows.get(f"topics/{side}")
        if got:
            per_delivery[side] = statistics.median(
                r["server_cpu_s"] / max(r["deliveries_received"], 1) * 1e6 for r in got
            )
    lost = sum(r.get("deliveries_lost", 0) for k, v in rows.items() if "topics" in k for r in v)
    lines.append(
        f"| many topics ({sizes.topics_n:,} x 1 sub, {sizes.topics_m:,} events at "
        f"{sizes.topics_rate}/s): server CPU per delivery | "
        f"{fmt(per_delivery.get('cachewire'), ' µs')} | {fmt(per_delivery.get('nchan'), ' µs')} | "
        f"{ratio(per_delivery.get('cachewire'), per_delivery.get('nchan'))} | ≤ 2x |"
    )
    lines += ["", f"Deliveries lost in the many-topics runs: {lost}.", "", "Every round:", ""]
    for name, results in rows.items():
        keys = ("publishes_per_s", "events_per_s", "server_cpu_us_per_publish",
                "server_cpu_us_per_event", "events_per_request", "server_cpu_s",
                "deliveries_received")  # fmt: skip
        shown = [
            ", ".join(f"{k}={r[k]:,.1f}" for k in keys if isinstance(r.get(k), int | float))
            for r in results
        ]
        lines.append(f"- {name}: " + " | ".join(shown))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    lib = sub.add_parser("library", help="(internal) the library load generator")
    lib.add_argument("--url", required=True)
    lib.add_argument("--sse-port", type=int, required=True)
    lib.add_argument("--warmup", type=float, default=2.0)
    lib.add_argument("--duration", type=float, default=8.0)
    lib.add_argument("--hub-pid", type=int, required=True)
    lib.add_argument("--in-flight", type=int, default=1)
    parser.add_argument("--tools", type=Path, help="folder of pubbench/, ssebench/, peers/nchan/")
    parser.add_argument("--rounds", type=int, default=Sizes.rounds)
    parser.add_argument("--duration", type=float, default=Sizes.duration)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    args = parser.parse_args()
    if args.command == "library":
        print(json.dumps(asyncio.run(_library(args))))
        return
    sizes = SMOKE if args.smoke else Sizes(rounds=args.rounds, duration=args.duration)
    tools = args.tools.resolve() if args.tools else None
    if tools and not (shutil.which("go") and shutil.which("nginx")):
        parser.error("--tools needs go and nginx (with libnginx-mod-nchan) installed")
    result = run(tools, sizes)
    print(report(result, sizes, sys.argv[1:]))


if __name__ == "__main__":
    main()
