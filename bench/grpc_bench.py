"""gRPC fan-out: events/s delivered to K subscribers, and latency, Plasma Events vs Subscribe.

Starts a `cachewire-hub` process (memory broker) and, in this process, K gRPC subscribers
(each on its own channel, so its own TCP connection) plus one publisher using the hub's
gRPC Publish. For each transport and K:

- throughput: N events are published in batches of 500 as fast as the hub acknowledges;
  the clock runs from the first publish to the last event read by the last subscriber;
  events/s delivered = N x K / seconds.
- latency: events are published one per Publish call, paced (not a burst), each carrying
  the publisher's clock; latency = the subscriber's read time minus that, over every
  (subscriber, event) pair; p50 and p99 are reported.

Publisher, subscribers and hub share the machine: on 2 cores the clients' own decoding is
part of what is measured (see bench/RESULTS.md).

    .venv/bin/python bench/grpc_bench.py                 # K = 1, 10, 100
    .venv/bin/python bench/grpc_bench.py --k 1 10 --events 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # not the clients' GOAWAY notices at exit

import grpc
from cachewire.v1 import hub_pb2, hub_pb2_grpc, plasma_pb2, plasma_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def hub_process() -> Iterator[tuple[int, int]]:
    """A cachewire-hub process on free ports; yields (http_port, grpc_port)."""
    http_port, grpc_port = free_port(), free_port()
    exe = shutil.which("cachewire-hub", path=str(Path(sys.executable).parent)) or "cachewire-hub"
    proc = subprocess.Popen(
        [
            exe,
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
        ],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while not http_ok(f"http://127.0.0.1:{http_port}/readyz"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("cachewire-hub did not become ready")
            time.sleep(0.05)
        yield http_port, grpc_port
    finally:
        proc.terminate()
        proc.wait(30)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


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


async def wait_all(counters: list[Counter], events: int) -> None:
    """Return once every subscriber has read `events` events."""

    async def one(counter: Counter) -> None:
        while counter.events < events:
            counter.changed.clear()
            await counter.changed.wait()

    await asyncio.gather(*(one(c) for c in counters))


@dataclass(frozen=True)
class Result:
    transport: str
    k: int
    events: int
    seconds: float
    messages_per_event: float
    p50_ms: float
    p99_ms: float

    @property
    def delivered_per_s(self) -> float:
        return self.events * self.k / self.seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_one(
    ports: tuple[int, int], transport: str, k: int, events: int, latency_events: int, rate: float
) -> Result:
    http_port, grpc_port = ports
    target = f"127.0.0.1:{grpc_port}"
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
            while await asyncio.to_thread(grpc_connections, http_port) < k:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{k} subscribers did not connect")
                await asyncio.sleep(0.05)
            # Throughput: a burst of `events`, in batches, acknowledged one batch at a time.
            batch = [hub_pb2.EventInput(type=f"{TOPIC}:x", data='"payload"')] * PUBLISH_BATCH
            started = time.perf_counter()
            for _ in range(events // PUBLISH_BATCH):
                await api.Publish(hub_pb2.PublishRequest(events=batch))
            async with asyncio.timeout(300):
                await wait_all(counters, events)
            seconds = time.perf_counter() - started
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
    return Result(
        transport,
        k,
        events,
        seconds,
        messages,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.99) * 1000,
    )


def events_for(k: int, deliveries: int, minimum: int) -> int:
    """Events per round so that each K delivers about the same total; whole batches."""
    n = max(minimum, deliveries // k)
    return max(PUBLISH_BATCH, n // PUBLISH_BATCH * PUBLISH_BATCH)


def table(results: list[Result]) -> str:
    rows = [
        "| transport | K | events | delivered events/s | messages/event | "
        "latency p50 ms | latency p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        rows.append(
            f"| {r.transport} | {r.k} | {r.events} | {r.delivered_per_s:,.0f} | "
            f"{r.messages_per_event:.3f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |"
        )
    return "\n".join(rows)


async def main_async(args: argparse.Namespace) -> None:
    results = []
    with hub_process() as ports:
        for k in args.k:
            for transport in TRANSPORTS:
                n = events_for(k, args.deliveries, args.events)
                result = await run_one(ports, transport, k, n, args.latency_events, args.rate)
                print(
                    f"{transport:20} K={k:<4} {result.delivered_per_s:>12,.0f} events/s "
                    f"p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms",
                    flush=True,
                )
                results.append(result)
    print()
    print(
        f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}"
    )
    print(table(results))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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
    args: Any = parser.parse_args(argv)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
