"""gRPC fan-out: events/s delivered to K subscribers, and latency, Plasma Events vs Subscribe.

Starts a hub process (`python -m cachewire.hub`, memory broker) and, in this process, K gRPC
subscribers (each on its own channel, so its own TCP connection) plus one publisher using
the hub's gRPC Publish. For each transport and K:

- throughput: N events are published in batches of 500 as fast as the hub acknowledges;
  the clock runs from the first publish to the last event read by the last subscriber;
  events/s delivered = N x K / seconds.
- latency: events are published one per Publish call, paced (not a burst), each carrying
  the publisher's clock; latency = the subscriber's read time minus that, over every
  (subscriber, event) pair; p50 and p99 are reported.
- CPU: the hub process's and this process's CPU time during the throughput phase, per
  delivered event (the steadiest figure on a shared machine).

Publisher, subscribers and hub share the machine: on 2 cores the clients' own decoding is
part of what is measured (see bench/RESULTS.md). `--baseline REV` also starts the hub of
another git revision (or directory) and alternates the two in every round, so that a
before/after comparison sees the same load; `--rounds N` reports medians.

    .venv/bin/python bench/grpc_bench.py                 # K = 1, 10, 100
    .venv/bin/python bench/grpc_bench.py --k 1 10 --events 5000
    .venv/bin/python bench/grpc_bench.py --transports plasma --baseline HEAD~1 --rounds 3
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
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # not the clients' GOAWAY notices at exit

import grpc
from common import ROOT, cpu_model, free_port, http_ok, percentile, process

from cachewire.v1 import hub_pb2, hub_pb2_grpc, plasma_pb2, plasma_pb2_grpc

TOPIC = "bench"
PUBLISH_BATCH = 500
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)  # one connection per subscriber


@dataclass
class Counter:
    """What one subscriber has read: events, messages, and latencies of marked events."""

    events: int = 0
    messages: int = 0
    latencies: list[float] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, data: str) -> None:
        self.events += 1
        if data.startswith('{"t":'):
            self.latencies.append(time.perf_counter() - json.loads(data)["t"])
        self.changed.set()


@dataclass(frozen=True)
class HubProc:
    label: str
    http_port: int
    grpc_port: int
    pid: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def hub_process(label: str, tree: Path = ROOT) -> Iterator[HubProc]:
    """A hub process on free ports, running the hub package found in `tree`.

    `python -m cachewire.hub` from `tree` imports that tree's package ahead of the installed
    one; a tree from before the `cachewire` namespace has a top-level `hub` instead.
    """
    http_port, grpc_port = free_port(), free_port()
    module = "cachewire.hub" if (tree / "cachewire" / "hub").exists() else "hub"
    argv = [
        sys.executable,
        "-m",
        module,
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--queue-size",
        "1000000",
        "--subscribe-heartbeat",
        "60",
        "--log-level",
        "warning",
    ]
    url = f"http://127.0.0.1:{http_port}/readyz"
    with process(argv, lambda: http_ok(url), "cachewire-hub", cwd=tree, quiet=False) as proc:
        yield HubProc(label, http_port, grpc_port, proc.pid)


def grpc_connections(http_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics/plasma", timeout=5) as r:
        return int(json.load(r)["connections_grpc"])


async def subscribe_cachewire(channel: grpc.aio.Channel, counter: Counter) -> None:
    call = hub_pb2_grpc.HubStub(channel).Subscribe(  # type: ignore[no-untyped-call]
        hub_pb2.SubscribeRequest(topics=[TOPIC])
    )
    async for response in call:
        if response.HasField("events"):
            counter.messages += 1
            for event in response.events.events:
                counter.add(event.data)


async def plasma_requests() -> AsyncIterator[plasma_pb2.Request]:
    yield plasma_pb2.Request(events=[plasma_pb2.EventType(type=TOPIC)])
    await asyncio.Event().wait()  # keep the request side open, as Plasma clients do


async def subscribe_plasma(channel: grpc.aio.Channel, counter: Counter) -> None:
    stub = plasma_pb2_grpc.StreamServiceStub(channel)  # type: ignore[no-untyped-call]
    call = stub.Events(plasma_requests())
    async for payload in call:
        counter.messages += 1
        counter.add(payload.data)


Subscriber = Callable[[grpc.aio.Channel, Counter], Coroutine[Any, Any, None]]
TRANSPORTS: dict[str, Subscriber] = {
    "Plasma Events": subscribe_plasma,
    "cachewire Subscribe": subscribe_cachewire,
}
TRANSPORT_NAMES = {"Plasma Events": "plasma", "cachewire Subscribe": "subscribe"}


async def wait_all(counters: list[Counter], events: int) -> None:
    """Return once every subscriber has read `events` events."""

    async def one(counter: Counter) -> None:
        while counter.events < events:
            counter.changed.clear()
            await counter.changed.wait()

    await asyncio.gather(*(one(c) for c in counters))


@dataclass(frozen=True)
class Result:
    hub: str
    transport: str
    k: int
    events: int
    seconds: float
    messages_per_event: float
    hub_cpu_us: float  # hub process CPU time per delivered event, throughput phase
    client_cpu_us: float  # this (client) process's CPU time per delivered event
    p50_ms: float
    p99_ms: float

    @property
    def delivered_per_s(self) -> float:
        return self.events * self.k / self.seconds


async def run_one(
    hub: HubProc, transport: str, k: int, events: int, latency_events: int, rate: float
) -> Result:
    target = f"127.0.0.1:{hub.grpc_port}"
    channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(k)]
    counters = [Counter() for _ in range(k)]
    tasks = [
        asyncio.create_task(TRANSPORTS[transport](ch, c))
        for ch, c in zip(channels, counters, strict=True)
    ]
    async with grpc.aio.insecure_channel(target) as pub_channel:
        api = hub_pb2_grpc.HubStub(pub_channel)  # type: ignore[no-untyped-call]
        try:
            deadline = time.monotonic() + 60
            while await asyncio.to_thread(grpc_connections, hub.http_port) < k:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{k} subscribers did not connect")
                await asyncio.sleep(0.05)
            # Throughput: a burst of `events`, in batches, acknowledged one batch at a time.
            batch = [hub_pb2.EventInput(type=f"{TOPIC}:x", data='"payload"')] * PUBLISH_BATCH
            hub_cpu, client_cpu = cpu_seconds(hub.pid), time.process_time()
            started = time.perf_counter()
            for _ in range(events // PUBLISH_BATCH):
                await api.Publish(hub_pb2.PublishRequest(events=batch))
            async with asyncio.timeout(300):
                await wait_all(counters, events)
            seconds = time.perf_counter() - started
            hub_cpu, client_cpu = cpu_seconds(hub.pid) - hub_cpu, time.process_time() - client_cpu
            messages = sum(c.messages for c in counters) / (events * k)
            # Latency: paced single events, each carrying the publisher's clock.
            for _ in range(latency_events):
                data = json.dumps({"t": time.perf_counter()})
                await api.Publish(
                    hub_pb2.PublishRequest(
                        events=[hub_pb2.EventInput(type=f"{TOPIC}:t", data=data)]
                    )
                )
                await asyncio.sleep(1 / rate)
            async with asyncio.timeout(120):
                await wait_all(counters, events + latency_events)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel in channels:
                await channel.close()
    latencies = [x for c in counters for x in c.latencies]
    deliveries = events * k
    return Result(
        hub.label,
        transport,
        k,
        events,
        seconds,
        messages,
        hub_cpu / deliveries * 1e6,
        client_cpu / deliveries * 1e6,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.99) * 1000,
    )


def events_for(k: int, deliveries: int, minimum: int) -> int:
    """Events per round so that each K delivers about the same total; whole batches."""
    n = max(minimum, deliveries // k)
    return max(PUBLISH_BATCH, n // PUBLISH_BATCH * PUBLISH_BATCH)


def median_of(rounds: list[Result]) -> Result:
    """One row per (hub, transport, K): the median of each figure over the rounds."""
    first = rounds[0]
    return Result(
        first.hub,
        first.transport,
        first.k,
        first.events,
        statistics.median(r.seconds for r in rounds),
        statistics.median(r.messages_per_event for r in rounds),
        statistics.median(r.hub_cpu_us for r in rounds),
        statistics.median(r.client_cpu_us for r in rounds),
        statistics.median(r.p50_ms for r in rounds),
        statistics.median(r.p99_ms for r in rounds),
    )


def table(results: list[Result]) -> str:
    rows = [
        "| hub | transport | K | events | delivered events/s | messages/event | "
        "hub CPU µs/delivery | client CPU µs/delivery | latency p50 ms | latency p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        rows.append(
            f"| {r.hub} | {r.transport} | {r.k} | {r.events} | {r.delivered_per_s:,.0f} | "
            f"{r.messages_per_event:.3f} | {r.hub_cpu_us:.1f} | {r.client_cpu_us:.1f} | "
            f"{r.p50_ms:.2f} | {r.p99_ms:.2f} |"
        )
    return "\n".join(rows)


@contextmanager
def baseline_tree(rev: str) -> Iterator[Path]:
    """A directory holding a `hub` package: `rev` itself if it is one, else the hub's
    sources at git revision `rev`, extracted to a temporary directory."""
    if (Path(rev) / "hub" / "__main__.py").is_file():
        yield Path(rev)
        return
    with tempfile.TemporaryDirectory(prefix="cachewire-baseline-") as tmp:
        archive = subprocess.run(
            ["git", "archive", rev, "hub"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp)


async def main_async(args: argparse.Namespace) -> None:
    transports = [t for t in TRANSPORTS if TRANSPORT_NAMES[t] in args.transports]
    load_before = os.getloadavg()[0]
    rounds: dict[tuple[str, str, int], list[Result]] = {}
    with ExitStack() as stack:
        hubs = []
        if args.baseline:
            tree = stack.enter_context(baseline_tree(args.baseline))
            hubs.append(stack.enter_context(hub_process(f"baseline {args.baseline}", tree)))
        hubs.append(stack.enter_context(hub_process("working tree" if args.baseline else "")))
        for r in range(args.rounds):
            for k in args.k:
                for transport in transports:
                    # Variants side by side, so that they share the load; which goes first
                    # alternates, so that neither always meets a warmer or colder machine.
                    for hub in hubs if r % 2 == 0 else hubs[::-1]:
                        n = events_for(k, args.deliveries, args.events)
                        res = await run_one(hub, transport, k, n, args.latency_events, args.rate)
                        print(
                            f"round {r + 1} {hub.label or 'hub':>16} {transport:20} K={k:<4} "
                            f"{res.delivered_per_s:>10,.0f} events/s  "
                            f"hub {res.hub_cpu_us:6.1f} µs/delivery  "
                            f"p50 {res.p50_ms:.2f} ms  p99 {res.p99_ms:.2f} ms",
                            flush=True,
                        )
                        rounds.setdefault((hub.label, transport, k), []).append(res)
    print()
    print(
        f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}, load average before/after "
        f"{load_before:.1f}/{os.getloadavg()[0]:.1f}, median of {args.rounds} round(s)"
    )
    print(table([median_of(v) for v in rounds.values()]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--k",
        type=int,
        nargs="+",
        default=[1, 10, 100],
        help="subscriber counts (default: 1 10 100)",
    )
    parser.add_argument(
        "--deliveries",
        type=int,
        default=50_000,
        help="target events x subscribers per throughput round",
    )
    parser.add_argument(
        "--events", type=int, default=1_000, help="fewest events per throughput round"
    )
    parser.add_argument(
        "--latency-events", type=int, default=100, help="paced events for the latency measurement"
    )
    parser.add_argument("--rate", type=float, default=20.0, help="events/s while measuring latency")
    parser.add_argument(
        "--transports",
        nargs="+",
        choices=sorted(TRANSPORT_NAMES.values()),
        default=sorted(TRANSPORT_NAMES.values()),
        help="which streams to measure (default: both)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the hub of this git revision (or of this directory holding a `hub` "
        "package), side by side with the working tree's",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds per figure; the median is reported"
    )
    args: Any = parser.parse_args(argv)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
