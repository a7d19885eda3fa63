"""Publisher → hub → sidecar → memcached, as separate processes: latency and throughput.

Four processes: memcached, the hub (`python -m cachewire.hub`, memory broker), a sidecar
(this script with `--role sidecar`: the `Sidecar` that `cachewire sidecar` runs, with its
real memcached sink, wrapped to note when memcached confirmed each delete), and a publisher
(this script with `--role publish`). Each event carries the publisher's clock at send
(`data: {"ts": <unix ns>}`), and one key; the sidecar notes, for every event, the time
memcached confirmed its delete. Nothing is sampled: every event is counted, and an event
never confirmed is reported as lost.

- `latency`: single-event publishes (HTTP `POST /v1/publish` or gRPC `Publish`), paced at
  --rates events/s for --seconds; percentiles of publisher send → confirmed delete.
- `throughput`: gRPC `Publish` with batches of --batch events, as fast as the hub answers
  (--in-flight calls at once); invalidations/s = events / (last confirm - first send).

The hub runs on CPU 0 (--hub-cpu), the sidecar and the publisher on CPU 1 (--client-cpu):
on a 2-core machine the sidecar and the publisher share a core.

    .venv/bin/python bench/pipeline_bench.py latency --rates 1000 5000 --seconds 5
    .venv/bin/python bench/pipeline_bench.py throughput --events 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from common import ROOT, answers, cpu_model, free_port, http_ok, percentile, process

from cachewire.common import wirejson

TOPIC = "bench"


def taskset(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu] if cpu and os.path.exists("/usr/bin/taskset") else []


# --- the sidecar process ---


class Confirming:
    """Wraps the real memcached sink: after each confirmed batch, notes every event's
    latency (now - the publisher's send time carried in the event)."""

    def __init__(self, inner: Any, expect: int, done: asyncio.Event) -> None:
        self.inner = inner
        self.name = inner.name
        self.latencies: list[float] = []
        self.seen: set[str] = set()
        self.expect = expect
        self.done = done
        self.first_ns = 0
        self.last_ns = 0

    async def start(self) -> None:
        await self.inner.start()

    async def apply(self, batch: Sequence[Any]) -> None:
        await self.inner.apply(batch)
        now = time.time_ns()
        for inv in batch:
            if inv.type.startswith(TOPIC) and inv.keys and inv.keys[0] not in self.seen:
                self.seen.add(inv.keys[0])
                sent = int(wirejson.loads(inv.data_json)["ts"])
                self.first_ns = self.first_ns or sent
                self.latencies.append((now - sent) / 1e6)
        self.last_ns = now
        if len(self.seen) >= self.expect:
            self.done.set()

    async def flush(self, reason: str) -> None:
        await self.inner.flush(reason)

    async def check(self) -> bool:
        return bool(await self.inner.check())

    async def close(self) -> None:
        await self.inner.close()


async def sidecar_role(args: argparse.Namespace) -> None:
    from cachewire.sidecar.server import Sidecar
    from cachewire.sidecar.settings import SidecarSettings
    from cachewire.sidecar.sinks.memcached import MemcachedSink
    from cachewire.sidecar.state import Slot

    done = asyncio.Event()
    sink = Confirming(MemcachedSink(f"127.0.0.1:{args.memcached_port}"), args.expect, done)
    settings = SidecarSettings(
        hub=f"127.0.0.1:{args.grpc_port}",
        topics=(TOPIC,),
        health_port=0,
        max_pending=10_000_000,
        max_staleness=600,
        log_level="warning",
    )
    sidecar = Sidecar(settings, slots=[Slot(sink)])
    await sidecar.start()
    async with asyncio.timeout(30):
        await sidecar.wait_ready()
    print("ready", flush=True)
    try:
        async with asyncio.timeout(args.timeout):
            await done.wait()
    except TimeoutError:
        pass  # report what was confirmed; the rest is lost
    await sidecar.stop(0)
    print(
        json.dumps(
            {
                "confirmed": len(sink.seen),
                "latencies_ms": sink.latencies,
                "first_sent_ns": sink.first_ns,
                "last_confirmed_ns": sink.last_ns,
            }
        ),
        flush=True,
    )


# --- the publisher process ---


async def publish_role(args: argparse.Namespace) -> None:
    import aiohttp
    import grpc

    from cachewire.v1 import hub_pb2, hub_pb2_grpc

    n, batch, errors = args.events, args.batch, 0
    in_flight = asyncio.Semaphore(args.in_flight)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{args.grpc_port}")
    stub = hub_pb2_grpc.HubStub(channel)  # type: ignore[no-untyped-call]
    if args.rate <= 0:  # throughput: requests built before the clock starts (see prebuilt)
        await prebuilt(channel, n, batch, args.in_flight)
        await channel.close()
        return
    url = f"http://127.0.0.1:{args.http_port}/v1/publish"
    connector = aiohttp.TCPConnector(limit=args.in_flight)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def send(first: int) -> None:
            nonlocal errors
            count = min(batch, n - first)
            async with in_flight:
                ts = str(time.time_ns())
                try:
                    if args.transport == "http":
                        body = {"type": TOPIC, "data": {"ts": ts}, "keys": [f"k:{first}"]}
                        async with http.post(url, json=body) as resp:
                            if resp.status != 200:
                                errors += count
                    else:
                        request = hub_pb2.PublishRequest(
                            events=[
                                hub_pb2.EventInput(
                                    type=TOPIC, data=json.dumps({"ts": ts}), keys=[f"k:{i}"]
                                )
                                for i in range(first, first + count)
                            ]
                        )
                        await stub.Publish(request, timeout=60)
                except (aiohttp.ClientError, grpc.aio.AioRpcError):
                    errors += count

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for first in range(0, n, batch):
            if args.rate > 0:
                delay = start + first / args.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await in_flight.acquire()  # closed loop: no more than in_flight calls
                in_flight.release()
            tasks.append(asyncio.create_task(send(first)))
        await asyncio.gather(*tasks)
        seconds = loop.time() - start
    await channel.close()
    print(json.dumps({"sent": n - errors, "errors": errors, "seconds": seconds}), flush=True)


async def prebuilt(channel: Any, n: int, batch: int, in_flight: int) -> None:
    """Throughput publisher: every request serialized in advance, so that the publisher's
    own protobuf work is not what is measured; each event carries the start time."""
    import grpc

    from cachewire.v1 import hub_pb2

    placeholder = "9" * 19  # as long as a time_ns(): replaced in the bytes, lengths unchanged
    requests = [
        hub_pb2.PublishRequest(
            events=[
                hub_pb2.EventInput(type=TOPIC, data=f'{{"ts":"{placeholder}"}}', keys=[f"k:{i}"])
                for i in range(first, min(n, first + batch))
            ]
        ).SerializeToString()
        for first in range(0, n, batch)
    ]
    publish = channel.unary_unary("/cachewire.v1.Hub/Publish", request_serializer=None)
    start = time.time_ns()
    wire = [r.replace(placeholder.encode(), str(start).encode()) for r in requests]
    errors = 0
    queue = iter(wire)

    async def worker() -> None:
        nonlocal errors
        for request in queue:
            try:
                await publish(request, timeout=60)
            except grpc.aio.AioRpcError:
                errors += request.count(b"k:")

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    seconds = (time.time_ns() - start) / 1e9
    print(json.dumps({"sent": n - errors, "errors": errors, "seconds": seconds}), flush=True)


# --- the orchestrator ---


@contextmanager
def stack(args: argparse.Namespace) -> Iterator[tuple[int, int, int]]:
    """memcached and a hub; yields (http port, gRPC port, memcached port)."""
    http, grpc_port, mc = free_port(), free_port(), free_port()
    hub_argv = [
        *taskset(args.hub_cpu),
        sys.executable,
        "-m",
        "cachewire.hub",
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc_port),
        "--log-level",
        "warning",
    ]
    mc_argv = ["memcached", "-p", str(mc), "-l", "127.0.0.1", "-U", "0", "-u", "root", "-m", "256"]
    with (
        process(mc_argv, lambda: answers(mc), "memcached"),
        process(hub_argv, lambda: http_ok(f"http://127.0.0.1:{http}/readyz"), "hub"),
    ):
        yield http, grpc_port, mc


def me(role: str, cpu: str, *extra: str) -> list[str]:
    return [*taskset(cpu), sys.executable, __file__, "--role", role, *extra]


def run_once(
    args: argparse.Namespace, transport: str, rate: float, events: int, batch: int
) -> dict[str, Any]:
    """One measured run on a fresh stack: sidecar subscribed, publisher run, results."""
    with stack(args) as (http, grpc_port, mc):
        ports = ["--grpc-port", str(grpc_port), "--memcached-port", str(mc)]
        sidecar = subprocess.Popen(
            me("sidecar", args.client_cpu, *ports, "--expect", str(events)),
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert sidecar.stdout is not None
            if sidecar.stdout.readline().strip() != "ready":
                raise RuntimeError("the sidecar did not start")
            pub = [
                *("--transport", transport, "--rate", str(rate), "--events", str(events)),
                *("--batch", str(batch), "--in-flight", str(args.in_flight)),
                *("--http-port", str(http)),
            ]
            published = subprocess.run(
                me("publish", args.client_cpu, *ports, *pub),
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=args.timeout,
                check=True,
            )
            sent = json.loads(published.stdout.strip().splitlines()[-1])
            out, _ = sidecar.communicate(timeout=args.timeout + 30)
        finally:
            if sidecar.poll() is None:
                sidecar.kill()
                sidecar.wait()
    confirmed = json.loads(out.strip().splitlines()[-1])
    lat = confirmed["latencies_ms"]
    span = (confirmed["last_confirmed_ns"] - confirmed["first_sent_ns"]) / 1e9
    return {
        "sent": sent["sent"],
        "errors": sent["errors"],
        "send_rate": sent["sent"] / sent["seconds"],
        "lost": sent["sent"] - confirmed["confirmed"],
        "p50": percentile(lat, 0.5),
        "p99": percentile(lat, 0.99),
        "max": max(lat) if lat else float("nan"),
        "per_s": confirmed["confirmed"] / span if span > 0 else float("nan"),
    }


def median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("scenario", nargs="?", choices=("latency", "throughput"))
    parser.add_argument("--role", choices=("sidecar", "publish"), help=argparse.SUPPRESS)
    parser.add_argument("--transports", nargs="+", default=["http", "grpc"])
    parser.add_argument("--rates", type=float, nargs="+", default=[1000, 5000])
    parser.add_argument("--seconds", type=float, default=5.0, help="latency: seconds sent")
    parser.add_argument("--events", type=int, default=100_000, help="throughput: events")
    parser.add_argument("--batch", type=int, default=500, help="throughput: events per call")
    parser.add_argument(
        "--in-flight", type=int, default=0, help="publish calls at once (latency 64, else 4)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hub-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument("--timeout", type=float, default=300)
    # role arguments
    parser.add_argument("--grpc-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--http-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--memcached-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--transport", default="grpc", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "sidecar":
        asyncio.run(sidecar_role(args))
        return
    if args.role == "publish":
        asyncio.run(publish_role(args))
        return
    if args.scenario is None:
        parser.error("a scenario is required: latency or throughput")
    args.in_flight = args.in_flight or (64 if args.scenario == "latency" else 4)

    print(f"# pipeline_bench {args.scenario}: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# {os.cpu_count()} CPUs, {cpu_model()}, CPython {platform.python_version()}")
    print(f"# load average before {os.getloadavg()[0]:.2f}")
    with ExitStack():
        if args.scenario == "latency":
            cases = [(t, r) for r in args.rates for t in args.transports]
            rows: dict[tuple[str, float], list[dict[str, Any]]] = {}
            for rnd in range(args.rounds):
                for transport, rate in cases if rnd % 2 == 0 else cases[::-1]:
                    row = run_once(args, transport, rate, int(rate * args.seconds), 1)
                    rows.setdefault((transport, rate), []).append(row)
                    print(f"# round {rnd + 1} {transport} {rate:g}/s: {json.dumps(row)}")
            print(f"# load average after {os.getloadavg()[0]:.2f}\n")
            print("Single-event publishes, publisher send → memcached delete confirmed, medians")
            print("| publish | rate/s | sent/s | events | lost | p50 ms | p99 ms | max ms |")
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for (transport, rate), rs in rows.items():
                print(
                    f"| {transport} | {rate:,.0f} | {median(rs, 'send_rate'):,.0f} "
                    f"| {int(median(rs, 'sent')):,} | {max(r['lost'] for r in rs)} "
                    f"| {median(rs, 'p50'):.1f} | {median(rs, 'p99'):.1f} "
                    f"| {median(rs, 'max'):.1f} |"
                )
        else:
            runs = []
            for rnd in range(args.rounds):
                row = run_once(args, "grpc", 0, args.events, args.batch)
                runs.append(row)
                print(f"# round {rnd + 1}: {json.dumps(row)}")
            print(f"# load average after {os.getloadavg()[0]:.2f}\n")
            print(f"gRPC Publish, batches of {args.batch}, one sidecar, memcached, medians")
            print("| events | invalidations/s | lost | p50 ms | p99 ms |")
            print("| ---: | ---: | ---: | ---: | ---: |")
            print(
                f"| {args.events:,} | {median(runs, 'per_s'):,.0f} "
                f"| {max(r['lost'] for r in runs)} | {median(runs, 'p50'):.1f} "
                f"| {median(runs, 'p99'):.1f} |"
            )


if __name__ == "__main__":
    main()
