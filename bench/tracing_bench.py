"""Hub publish and fan-out throughput with tracing off versus on, in one run.

An in-process hub (memory broker) serves SSE subscribers that are real aiohttp clients;
publishers POST /v1/publish concurrently. Each round is timed from the first publish to
the last event read by every subscriber. Rounds alternate off / on so that drift on a
shared machine hits both alike; the median of each is reported.

Tracing on means what a deployment runs: the SDK with a BatchSpanProcessor and the OTLP/gRPC
exporter, sending to a receiver in another process (`python -m tests.otlp`), or with
`--exporter console`, the console exporter writing to /dev/null.

    .venv/bin/python bench/tracing_bench.py            # defaults below
    .venv/bin/python bench/tracing_bench.py --rounds 5 --subscribers 20 --markdown
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from cachewire.common import telemetry as ct
from cachewire.hub import telemetry
from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.events import Draft
from cachewire.hub.server import Hub
from cachewire.hub.settings import HubSettings

ROOT = Path(__file__).resolve().parent.parent
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass(frozen=True)
class Scenario:
    name: str
    requests: int
    batch: int  # events per request

    @property
    def events(self) -> int:
        return self.requests * self.batch


@dataclass(frozen=True)
class Round:
    seconds: float
    delivered: int

    def rate(self, events: int) -> float:
        return events / self.seconds


async def subscriber(port: int, expected: int, done: asyncio.Event) -> int:
    """An SSE client that counts event frames until it has `expected` of them."""
    got = 0
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{port}/?eventType=bench",
            headers={"Accept": "text/event-stream"},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
        ) as resp,
    ):
        tail = b""
        async for chunk in resp.content.iter_any():
            buf = tail + chunk
            got += buf.count(b"\ndata:")  # cheap: the client must not be the bottleneck
            tail = buf[-5:]  # shorter than the pattern: a match is never counted twice
            if got >= expected:
                break
    done.set()
    return got


async def run_round(hub: Hub, scenario: Scenario, subscribers: int, concurrency: int) -> Round:
    dones = [asyncio.Event() for _ in range(subscribers)]
    subs = [asyncio.create_task(subscriber(hub.http_port, scenario.events, d)) for d in dones]
    async with asyncio.timeout(60):
        await hub.fanout.wait_subscribers(subscribers, "sse")
    body = [{"type": f"bench:{i}", "keys": [f"k:{i}"]} for i in range(scenario.batch)]
    url = f"http://127.0.0.1:{hub.http_port}/v1/publish"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(scenario.requests):
        queue.put_nowait(i)

    async def publisher(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            queue.get_nowait()
            async with session.post(url, json=body, headers={"traceparent": TRACEPARENT}) as r:
                if r.status != 200:
                    raise RuntimeError(f"publish answered {r.status}: {await r.text()}")

    start = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(publisher(session) for _ in range(concurrency)))
    async with asyncio.timeout(120):
        delivered = sum(await asyncio.gather(*subs))
    return Round(time.perf_counter() - start, delivered)


@contextmanager
def tracing_provider(exporter_kind: str) -> Iterator[tuple[TracerProvider, subprocess.Popen[str]]]:
    """A provider as `configure` builds one, exporting to a receiver in another process."""
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tests.otlp"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout is not None and receiver.stdin is not None
    port = int(receiver.stdout.readline().split()[1])  # waits for "port N"
    exporter: SpanExporter
    if exporter_kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True)
    else:
        exporter = ConsoleSpanExporter(out=open(os.devnull, "w"))  # noqa: SIM115 (lives with the provider)
    provider = TracerProvider(resource=Resource.create({"service.name": "tracing-bench"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    try:
        yield provider, receiver
    finally:
        provider.shutdown()
        receiver.stdin.close()
        receiver.wait(30)


async def bench(args: argparse.Namespace) -> list[tuple[Scenario, list[Round], list[Round]]]:
    scenarios = [
        Scenario("1 event/request", args.requests, 1),
        Scenario(
            f"{args.batch} events/request", max(1, args.requests // args.batch * 2), args.batch
        ),
    ]
    hub = Hub(HubSettings(http_port=0, grpc_port=None, queue_size=1_000_000, history=100_000))
    await hub.start()
    results = []
    try:
        with tracing_provider(args.exporter) as (provider, receiver):
            for scenario in scenarios:
                off: list[Round] = []
                on: list[Round] = []
                for _ in range(args.rounds):
                    for traced, into in ((False, off), (True, on)):
                        ct.install(provider if traced else None)
                        into.append(
                            await run_round(hub, scenario, args.subscribers, args.concurrency)
                        )
                        ct.install(None)
                        await asyncio.to_thread(provider.force_flush, 30_000)
                results.append((scenario, off, on))
            spans_expected = sum(args.rounds * s.requests for s in scenarios)  # 1 per request
    finally:
        await hub.stop(grace=0.5)
    if args.exporter == "otlp":
        assert receiver.stdout is not None
        received = int(receiver.stdout.readline().split()[1])
        print(f"OTLP receiver got {received} spans (expected {spans_expected})")
    return results


async def off_overhead(n: int = 50_000, rounds: int = 7) -> tuple[float, float]:
    """µs per single-event publish on a memory broker: `broker.publish` vs the traced path off."""
    broker = MemoryBroker()
    await broker.start(lambda events: None)
    drafts = [Draft("bench:1", traceparent=TRACEPARENT)]
    direct: list[float] = []
    wrapped: list[float] = []
    ct.install(None)
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            await broker.publish(drafts)
        direct.append((time.perf_counter() - start) / n * 1e6)
        start = time.perf_counter()
        for _ in range(n):
            await telemetry.publish(broker, drafts)
        wrapped.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(direct), statistics.median(wrapped)


def report(
    results: list[tuple[Scenario, list[Round], list[Round]]], args: argparse.Namespace
) -> str:
    rows = [
        f"{args.subscribers} SSE subscribers, {args.concurrency} concurrent publishers, "
        f"median of {args.rounds} rounds, exporter {args.exporter}",
        "",
        "| scenario | events | off: events/s | on: events/s | on/off | off: deliveries/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for scenario, off, on in results:
        off_rate = statistics.median(r.rate(scenario.events) for r in off)
        on_rate = statistics.median(r.rate(scenario.events) for r in on)
        deliveries = off_rate * args.subscribers
        rows.append(
            f"| {scenario.name} | {scenario.events} | {off_rate:,.0f} | {on_rate:,.0f} | "
            f"{on_rate / off_rate:.2f} | {deliveries:,.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="requests, single-event case")
    parser.add_argument("--batch", type=int, default=100, help="events per batch request")
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--exporter", choices=("otlp", "console"), default="otlp")
    parser.add_argument("--markdown", action="store_true", help="print a RESULTS.md section")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results = asyncio.run(bench(args))
    direct, wrapped = asyncio.run(off_overhead())
    table = report(results, args) + (
        f"\n\nTracing off, publish path alone (memory broker, no HTTP): `broker.publish` "
        f"{direct:.2f} µs, `hub.telemetry.publish` {wrapped:.2f} µs per single-event publish "
        "(median of 7 rounds of 50,000)."
    )
    if args.markdown:
        argv = " ".join(sys.argv[1:])
        print(
            f"\n### {time.strftime('%Y-%m-%d')}, {platform.node() or 'host'}: "
            f"{os.cpu_count()} cores, {platform.python_implementation()} "
            f"{platform.python_version()}, load average before/after "
            f"{load_before:.1f}/{os.getloadavg()[0]:.1f} (a machine shared with other test runs)"
            f"\n\n`.venv/bin/python bench/tracing_bench.py {argv}`\n"
        )
    print(table)


if __name__ == "__main__":
    main()
