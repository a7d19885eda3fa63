"""Sidecar: invalidations/s applied to memcached and Redis, batched vs one at a time; latency.

Starts `cachewire-hub`, memcached and redis-server processes, and runs the `Sidecar` object
(what `cachewire-sidecar` runs) in this process with real sinks, each wrapped to record when
the cache confirmed every invalidation. Nothing else runs in this process during a
measurement except where said.

- throughput, "sidecar applier": N invalidations of one key each (keys that exist in the
  cache) are handed to the sidecar's applier in this process, 1,000 per call as its stream
  client hands them over; the clock runs until the cache confirmed the last. This is what
  one sidecar can apply. "batched" is the default setting (--batch-size 500
  --batch-delay 2 ms); "one at a time" is --batch-size 1 --batch-delay 0, one round trip
  per invalidation.
- throughput, "hub → sidecar": the same, but published to the hub over gRPC (batches of
  500, from this process) and received by a subscribed Sidecar; the hub's ingest rate on
  this machine is the limit here.
- latency: a separate publisher process sends --rate events/s for --seconds, paced, with
  --per-call events per gRPC Publish call (one run per value: 1, then 10); one sidecar
  guards memcached and Redis (default batching); latency = the sink's confirmation time
  minus the event's published_at (the hub receive time, the start of the sidecar's lag
  histogram), for every event and sink.

    .venv/bin/python bench/sidecar_bench.py
    .venv/bin/python bench/sidecar_bench.py --events 5000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
import redis
from common import ROOT, answers, cpu_model, free_port, http_ok, percentile, process, redis_argv
from pymemcache.client.base import Client

from cachewire.v1 import hub_pb2, hub_pb2_grpc

sys.path.insert(0, str(ROOT))

from cachewire.sidecar.applier import Applier
from cachewire.sidecar.server import Sidecar
from cachewire.sidecar.settings import SidecarSettings
from cachewire.sidecar.sinks.base import Invalidation, Sink
from cachewire.sidecar.sinks.memcached import MemcachedSink
from cachewire.sidecar.sinks.redis import RedisSink
from cachewire.sidecar.state import Slot

TOPIC = "bench"
PUBLISH_BATCH = 500
MAX_IN_FLIGHT = 64  # latency publisher: Publish calls awaiting an answer at once


@contextmanager
def servers() -> Iterator[tuple[int, int, int]]:
    """hub (memory broker), memcached and redis-server; yields (grpc, memcached, redis) ports."""
    http, grpc_port, mc, rd = free_port(), free_port(), free_port(), free_port()
    bindir = str(Path(sys.executable).parent)
    hub = shutil.which("cachewire-hub", path=bindir) or "cachewire-hub"
    hub_argv = [
        hub,
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc_port),
        "--queue-size",
        "1000000",
        "--log-level",
        "warning",
    ]
    mc_argv = ["memcached", "-p", str(mc), "-l", "127.0.0.1", "-U", "0", "-u", "root", "-m", "256"]
    rd_argv = redis_argv(rd)
    with (
        process(hub_argv, lambda: http_ok(f"http://127.0.0.1:{http}/readyz"), "hub"),
        process(mc_argv, lambda: answers(mc), "memcached"),
        process(rd_argv, lambda: answers(rd), "redis-server"),
    ):
        yield grpc_port, mc, rd


class Timed:
    """A sink wrapper that records, per confirmed invalidation, now - published_at."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.name = inner.name
        self.lags: list[float] = []
        self.round_trips = 0

    async def start(self) -> None:
        await self.inner.start()

    async def apply(self, batch: Sequence[Invalidation]) -> None:
        await self.inner.apply(batch)
        now = time.time()
        self.round_trips += 1
        self.lags.extend(now - inv.published_at for inv in batch)

    async def flush(self, reason: str) -> None:
        await self.inner.flush(reason)

    async def check(self) -> bool:
        return await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()


async def start_sidecar(grpc_port: int, sinks: list[Timed], **settings: Any) -> Sidecar:
    s = SidecarSettings(
        hub=f"127.0.0.1:{grpc_port}",
        topics=(TOPIC,),
        health_port=0,
        max_pending=10_000_000,
        max_staleness=60,
        log_level="warning",
        **settings,
    )
    sidecar = Sidecar(s, slots=[Slot(sink) for sink in sinks])
    await sidecar.start()
    async with asyncio.timeout(30):
        await sidecar.wait_ready()
    return sidecar


def fill(sink: str, port: int, keys: list[str]) -> None:
    if sink == "memcached":
        client = Client(("127.0.0.1", port), default_noreply=False)
        for i in range(0, len(keys), 1000):
            client.set_many({k: b"v" for k in keys[i : i + 1000]}, noreply=False)
        client.close()
    else:
        r = redis.Redis(port=port)
        for i in range(0, len(keys), 1000):
            r.mset({k: "v" for k in keys[i : i + 1000]})
        r.close()


def make_sink(kind: str, mc: int, rd: int) -> Timed:
    if kind == "memcached":
        return Timed(MemcachedSink(f"127.0.0.1:{mc}"))
    return Timed(RedisSink(f"redis://127.0.0.1:{rd}/0"))


@dataclass
class Throughput:
    path: str
    sink: str
    mode: str
    events: int
    seconds: float
    round_trips: int

    @property
    def per_s(self) -> float:
        return self.events / self.seconds


BATCHING = {
    "batched": {"batch_size": 500, "batch_delay": 2.0},
    "one at a time": {"batch_size": 1, "batch_delay": 0.0},
}


def prepare(kind: str, mode: str, n: int, ports: tuple[int, int, int]) -> list[str]:
    """n keys that exist in the cache."""
    _, mc, rd = ports
    run = f"{kind}-{mode.replace(' ', '-')}-{time.monotonic_ns()}"
    keys = [f"{run}:{i}" for i in range(n)]
    fill(kind, mc if kind == "memcached" else rd, keys)
    return keys


async def through_hub(kind: str, mode: str, n: int, ports: tuple[int, int, int]) -> Throughput:
    """Published to the hub over gRPC (batches of 500) → applied by a subscribed sidecar."""
    grpc_port, mc, rd = ports
    sink = make_sink(kind, mc, rd)
    sidecar = await start_sidecar(grpc_port, [sink], **BATCHING[mode])
    keys = prepare(kind, mode, n, ports)
    sink.round_trips = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = hub_pb2_grpc.HubStub(channel)  # type: ignore[no-untyped-call]
        started = time.perf_counter()
        last = ""
        for i in range(0, n, PUBLISH_BATCH):
            request = hub_pb2.PublishRequest(
                events=[
                    hub_pb2.EventInput(type=f"{TOPIC}:{j}", keys=[keys[j]])
                    for j in range(i, min(n, i + PUBLISH_BATCH))
                ]
            )
            last = (await stub.Publish(request)).ids[-1]
        async with asyncio.timeout(600):
            await sidecar.wait_applied(last)
        seconds = time.perf_counter() - started
    await sidecar.stop(0)
    return Throughput("hub → sidecar", kind, mode, n, seconds, sink.round_trips)


async def applier_only(kind: str, mode: str, n: int, ports: tuple[int, int, int]) -> Throughput:
    """The sidecar's applier fed directly (as its stream feeds it, 1,000 events per call):
    what one sidecar can apply, without the hub's ingest rate as the limit."""
    _, mc, rd = ports
    sink = make_sink(kind, mc, rd)
    s = BATCHING[mode]
    applier = Applier(
        [Slot(sink)],
        batch_size=int(s["batch_size"]),
        batch_delay=s["batch_delay"] / 1000,
        max_pending=10_000_000,
        max_staleness=3600,  # no hub here: no staleness flush in the middle of a run
    )
    applier._gap = None  # no start flush: nothing is subscribed here
    await sink.start()
    applier.start()
    keys = prepare(kind, mode, n, ports)
    invs = [
        Invalidation(id=f"bench-{i + 1}", type=f"{TOPIC}:{i}", keys=(k,), published_at=time.time())
        for i, k in enumerate(keys)
    ]
    started = time.perf_counter()
    for i in range(0, n, 1000):
        applier.on_events(invs[i : i + 1000])
        await asyncio.sleep(0)  # let the workers run between stream messages
    async with asyncio.timeout(600):
        await applier.wait_applied(invs[-1].id)
    seconds = time.perf_counter() - started
    await applier.stop(0)
    await sink.close()
    return Throughput("sidecar applier", kind, mode, n, seconds, sink.round_trips)


async def latency(
    rate: float, seconds: float, per_call: int, ports: tuple[int, int, int]
) -> dict[str, Any]:
    grpc_port, mc, rd = ports
    sinks = [make_sink("memcached", mc, rd), make_sink("redis", mc, rd)]
    sidecar = await start_sidecar(grpc_port, sinks)
    for sink in sinks:
        sink.lags.clear()
        sink.round_trips = 0
    publisher = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--publish",
        str(grpc_port),
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        "--per-call",
        str(per_call),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await publisher.communicate()
    last_id, sent_rate = out.decode().split()
    async with asyncio.timeout(60):
        await sidecar.wait_applied(last_id)
    await sidecar.stop(0)
    return {
        "rate": float(sent_rate),
        "sinks": {
            s.name: (
                len(s.lags),
                percentile(s.lags, 0.5),
                percentile(s.lags, 0.99),
                max(s.lags),
                len(s.lags) / max(1, s.round_trips),
            )
            for s in sinks
        },
    }


async def publish_paced(grpc_port: int, rate: float, seconds: float, per_call: int) -> None:
    """The latency publisher (a separate process): `per_call` events per Publish, paced."""
    calls = int(rate * seconds / per_call)
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = hub_pb2_grpc.HubStub(channel)  # type: ignore[no-untyped-call]

        async def one(i: int) -> str:
            request = hub_pb2.PublishRequest(
                events=[
                    hub_pb2.EventInput(type=f"{TOPIC}:{i}", keys=[f"lat:{i}:{j}"])
                    for j in range(per_call)
                ]
            )
            try:
                return str((await stub.Publish(request)).ids[-1])
            except grpc.aio.AioRpcError as exc:
                print(f"publish failed: {exc.code().name}", file=sys.stderr)
                return ""

        in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def paced(i: int) -> str:
            async with in_flight:
                return await one(i)

        start = loop.time()
        tasks = []
        for i in range(calls):
            delay = start + i * per_call / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(paced(i)))
        ids = await asyncio.gather(*tasks)
        elapsed = loop.time() - start
    sent = [i for i in ids if i]
    last = max(sent, key=lambda x: int(x.rsplit("-", 1)[1]))
    print(last, len(sent) * per_call / elapsed)


async def main_async(args: Any) -> None:
    load = os.getloadavg()[0]
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, {cpu_model()}, "
        f"CPython {platform.python_version()}, load average {load:.1f}",
        flush=True,
    )
    results: list[Throughput] = []
    with servers() as ports:
        for kind in ("memcached", "redis"):
            for mode, n in (("batched", args.events), ("one at a time", args.single_events)):
                result = await applier_only(kind, mode, n, ports)
                print(f"  applier {kind} {mode}: {result.per_s:,.0f}/s", flush=True)
                results.append(result)
        for kind in ("memcached", "redis"):
            result = await through_hub(kind, "batched", args.hub_events, ports)
            print(f"  hub → sidecar {kind}: {result.per_s:,.0f}/s", flush=True)
            results.append(result)
        lats = [await latency(args.rate, args.seconds, pc, ports) for pc in args.per_call]
    print(f"load average after: {os.getloadavg()[0]:.1f}\n")
    print("| path | sink | mode | invalidations | seconds | invalidations/s | per round trip |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r.path} | {r.sink} | {r.mode} | {r.events:,} | {r.seconds:.2f} | {r.per_s:,.0f} | "
            f"{r.events / max(1, r.round_trips):.1f} |"
        )
    print(
        f"\nLatency, publish (hub receive) to confirmed by the cache, {args.rate:,.0f} events/s "
        f"for {args.seconds:g} s, one sidecar guarding both:\n"
    )
    print(
        "| events per Publish call | sent events/s | sink | events | p50 ms | p99 ms | max ms "
        "| per round trip |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for pc, lat in zip(args.per_call, lats, strict=True):
        for name, (count, p50, p99, worst, per) in lat["sinks"].items():
            print(
                f"| {pc} | {lat['rate']:,.0f} | {name} | {count:,} | {p50 * 1000:.1f} | "
                f"{p99 * 1000:.1f} | {worst * 1000:.1f} | {per:.1f} |"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per batched run")
    parser.add_argument(
        "--hub-events", type=int, default=20_000, help="events per run through the hub"
    )
    parser.add_argument(
        "--single-events", type=int, default=5_000, help="events per one-at-a-time run"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="latency: events/s sent")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency: seconds sent")
    parser.add_argument(
        "--per-call",
        type=int,
        nargs="+",
        default=[1, 10],
        help="latency: events per Publish call, one run each (default: 1 10)",
    )
    parser.add_argument("--publish", type=int, default=0, help=argparse.SUPPRESS)
    args: Any = parser.parse_args(argv)
    if args.publish:
        asyncio.run(publish_paced(args.publish, args.rate, args.seconds, args.per_call[0]))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
