"""Redis broker versus memory broker: publish throughput and fan-out latency, 1 and 2 hubs.

Starts one redis-server and four `cachewire-hub` processes (free ports, logging at
warning): "memory" (embedded broker), "redis-1" (one hub on stream bench:one) and "redis-2"
(two hubs sharing stream bench:two). This process is the client: per setup S SSE
subscribers (aiohttp) on one topic, spread over the setup's hubs, and HTTP publishers,
also spread over them. The setups are measured in turn, for R rounds, and the medians are
reported: the load of a shared machine drifts, interleaving keeps the comparison fair.

- publish: N events posted by C concurrent publishers, B events per request; acked
  events/s = N / (time from the first request to the last answer); delivered events/s =
  N / (time from the first request until every subscriber has read all N).
- latency: E events posted one per request at R/s to the setup's first hub, each carrying
  the publisher's clock; latency = the subscriber's read time minus that, over every
  (subscriber, event) pair. With two hubs, "remote" counts only the subscribers of the hub
  that did not take the publish.
- the broker alone (no HTTP, no SSE, in this process): sequential `publish` calls, and the
  time from each publish to its dispatch by the broker (the Redis broker's reader task).

    .venv/bin/python bench/redis_bench.py              # about 2 minutes
    .venv/bin/python bench/redis_bench.py --rounds 1 --events 500 --markdown
    PYTHONPATH=/path/to/hiredis .venv/bin/python bench/redis_bench.py   # with hiredis
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from common import answers, cpu_model, free_port, http_ok, percentile, process, redis_argv

TOPIC = "bench"


# --- processes ---


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    argv = [*redis_argv(port, exe), "--dir", str(workdir)]
    with process(argv, lambda: answers(port), "redis-server"):
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def hub(broker_args: list[str]) -> Iterator[int]:
    port = free_port()
    argv = [
        str(Path(sys.executable).parent / "cachewire-hub"),
        "--http-port",
        str(port),
        "--grpc-port",
        "off",
        "--log-level",
        "warning",
        "--queue-size",
        "1000000",
        *broker_args,
    ]
    with process(argv, lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), "cachewire-hub"):
        yield port


# --- the client side ---


@dataclass
class Subscriber:
    port: int
    count: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    live: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, session: aiohttp.ClientSession) -> None:
        url = f"http://127.0.0.1:{self.port}/?eventType={TOPIC}"
        async with session.get(url, headers={"Accept": "text/event-stream"}) as resp:
            async for line in resp.content:
                if line.startswith(b"id: "):
                    self.live.set()  # the first frame: the subscription is registered
                elif line.startswith(b"data: "):
                    if not line.endswith(b',"data":0}\n'):  # a latency probe: parse it
                        sent = json.loads(line[6:])["data"]
                        self.latencies_ns.append(time.time_ns() - sent)
                    self.count += 1
                    self.changed.set()

    async def wait_count(self, n: int) -> None:
        while self.count < n:
            self.changed.clear()
            await self.changed.wait()


async def post(session: aiohttp.ClientSession, port: int, events: list[dict[str, object]]) -> None:
    async with session.post(f"http://127.0.0.1:{port}/v1/publish", json=events) as resp:
        if resp.status != 200:
            raise RuntimeError(f"publish answered {resp.status}: {await resp.text()}")
        await resp.read()


@dataclass
class Figures:
    setup: str
    batch: int
    events: int
    acked_per_s: float
    delivered_per_s: float
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    remote_p50_ms: float = float("nan")
    remote_p99_ms: float = float("nan")


async def measure_all(setups: dict[str, list[int]], args: argparse.Namespace) -> list[Figures]:
    """Every setup, round after round; the median of each figure over the rounds."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        subs = {
            name: [Subscriber(ports[i % len(ports)]) for i in range(args.subscribers)]
            for name, ports in setups.items()
        }
        tasks = [asyncio.create_task(s.run(session)) for group in subs.values() for s in group]
        rounds: dict[tuple[str, int], list[Figures]] = {}
        try:
            await asyncio.wait_for(
                asyncio.gather(*(s.live.wait() for group in subs.values() for s in group)), 60
            )
            for _ in range(args.rounds):
                for name, ports in setups.items():
                    for batch in args.batches:
                        figures = await throughput(name, session, ports, subs[name], batch, args)
                        rounds.setdefault((name, batch), []).append(figures)
                    latency = await pace(session, ports, subs[name], args)
                    first = rounds[(name, args.batches[0])][-1]
                    first.p50_ms, first.p99_ms = latency[0]
                    first.remote_p50_ms, first.remote_p99_ms = latency[1]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return [median_figures(runs) for runs in rounds.values()]


def median_figures(runs: list[Figures]) -> Figures:
    def med(name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in runs))

    names = ("acked_per_s", "delivered_per_s", "p50_ms", "p99_ms", "remote_p50_ms", "remote_p99_ms")
    return Figures(runs[0].setup, runs[0].batch, runs[0].events, *(med(n) for n in names))


async def throughput(
    setup: str,
    session: aiohttp.ClientSession,
    ports: list[int],
    subs: list[Subscriber],
    batch: int,
    args: argparse.Namespace,
) -> Figures:
    n = args.events - args.events % batch
    requests = [[{"type": f"{TOPIC}:t", "data": 0}] * batch for _ in range(n // batch)]
    base = [s.count for s in subs]
    queue: asyncio.Queue[list[dict[str, object]]] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)

    async def publisher(port: int) -> None:
        while not queue.empty():
            await post(session, port, queue.get_nowait())

    started = time.monotonic()
    await asyncio.gather(*(publisher(ports[i % len(ports)]) for i in range(args.publishers)))
    acked = time.monotonic() - started
    await asyncio.wait_for(
        asyncio.gather(*(s.wait_count(b + n) for s, b in zip(subs, base, strict=True))), 120
    )
    delivered = time.monotonic() - started
    return Figures(setup, batch, n, n / acked, n / delivered)


async def pace(
    session: aiohttp.ClientSession,
    ports: list[int],
    subs: list[Subscriber],
    args: argparse.Namespace,
) -> tuple[tuple[float, float], tuple[float, float]]:
    for s in subs:
        s.latencies_ns.clear()
    base = [s.count for s in subs]
    for _ in range(args.latency_events):
        await post(session, ports[0], [{"type": f"{TOPIC}:l", "data": time.time_ns()}])
        await asyncio.sleep(1 / args.rate)
    await asyncio.wait_for(
        asyncio.gather(
            *(s.wait_count(b + args.latency_events) for s, b in zip(subs, base, strict=True))
        ),
        60,
    )
    every = [ns / 1e6 for s in subs for ns in s.latencies_ns]
    remote = [ns / 1e6 for s in subs if s.port != ports[0] for ns in s.latencies_ns]
    return (
        (percentile(every, 0.5), percentile(every, 0.99)),
        (percentile(remote, 0.5), percentile(remote, 0.99)),
    )


# --- the broker alone, in this process (no HTTP, no SSE) ---


async def broker_alone(url: str | None, events: int, batch: int) -> tuple[float, float, float]:
    """Sequential publishes: (events/s, publish→dispatch p50 ms, p99 ms)."""
    from cachewire.hub.brokers.memory import MemoryBroker
    from cachewire.hub.brokers.redis import RedisBroker
    from cachewire.hub.events import Draft, Event
    from cachewire.hub.settings import HubSettings

    latencies: list[float] = []
    done = asyncio.Event()

    def dispatch(batch_events: Sequence[Event]) -> None:
        now = time.perf_counter_ns()
        for event in batch_events:
            latencies.append((now - int(event.data_json)) / 1e6)
        if len(latencies) >= events:
            done.set()

    broker = RedisBroker(HubSettings(broker="redis", redis_url=url)) if url else MemoryBroker()
    await broker.start(dispatch)
    try:
        started = time.perf_counter()
        for _ in range(events // batch):
            stamp = str(time.perf_counter_ns())
            await broker.publish([Draft(f"{TOPIC}:b", stamp) for _ in range(batch)])
        elapsed = time.perf_counter() - started
        await asyncio.wait_for(done.wait(), 60)
    finally:
        await broker.stop()
    return (
        (events // batch * batch) / elapsed,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
    )


def run_broker_alone(url: str, args: argparse.Namespace) -> list[tuple[str, ...]]:
    runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for _ in range(args.rounds):
        for name, target in (("memory", None), ("redis", url)):
            for batch in args.batches:
                one = asyncio.run(broker_alone(target, args.events, batch))
                runs.setdefault((name, batch), []).append(one)
    rows: list[tuple[str, ...]] = []
    for (name, batch), every in runs.items():
        rate, p50, p99 = (statistics.median(f[i] for f in every) for i in range(3))
        rows.append((name, str(batch), f"{rate:,.0f}", f"{p50:.3f}", f"{p99:.3f}"))
    return rows


# --- setups and report ---


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Figures], list[tuple[str, ...]]]:
    with ExitStack() as stack:
        url = stack.enter_context(redis_server(workdir))
        setups: dict[str, list[int]] = {}
        for name in args.only:
            if name == "memory":
                setups[name] = [stack.enter_context(hub([]))]
            else:
                stream = [
                    "--broker",
                    "redis",
                    "--redis-url",
                    url,
                    "--redis-stream",
                    f"bench:{name}",
                ]
                setups[name] = [stack.enter_context(hub(stream)) for _ in range(int(name[-1]))]
        results = asyncio.run(measure_all(setups, args))
        alone = run_broker_alone(url, args)
    return results, alone


def machine() -> str:
    load = os.getloadavg()[0]
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, nproc {os.cpu_count()}, "
        f'"{cpu_model()}", CPython {platform.python_version()}, load average {load:.1f}'
    )


def report(results: list[Figures], markdown: bool) -> None:
    head = (
        "setup",
        "events/request",
        "events",
        "acked events/s",
        "delivered events/s",
        "latency p50 ms",
        "latency p99 ms",
        "remote p50 ms",
        "remote p99 ms",
    )
    rows = []
    for r in results:
        lat = [
            f"{v:.2f}" if v == v else ""
            for v in (r.p50_ms, r.p99_ms, r.remote_p50_ms, r.remote_p99_ms)
        ]
        rows.append(
            (
                r.setup,
                str(r.batch),
                str(r.events),
                f"{r.acked_per_s:,.0f}",
                f"{r.delivered_per_s:,.0f}",
                *lat,
            )
        )
    table(head, rows, markdown)


def table(head: tuple[str, ...], rows: list[tuple[str, ...]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("| --- |" + " ---: |" * (len(head) - 1))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        for row in (head, *rows):
            print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        nargs="*",
        default=["memory", "redis-1", "redis-2"],
        choices=["memory", "redis-1", "redis-2"],
    )
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--latency-events", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    print(machine())
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir:
        results, alone = run(args, Path(workdir))
    print(
        f"median of {args.rounds} rounds; {args.subscribers} SSE subscribers per setup, "
        f"{args.publishers} concurrent publishers"
    )
    report(results, args.markdown)
    print()
    head = ("broker", "events/publish", "events/s", "publish→dispatch p50 ms", "p99 ms")
    table(head, alone, args.markdown)
    print(f"({time.monotonic() - started:.0f} s; load average after {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
