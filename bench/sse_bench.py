"""SSE fan-out: deliveries/s, publish→receive latency, loss, memory and CPU per delivery.

Starts `cachewire-hub` (memory broker, pinned to core 0 with taskset when there are two
cores or more) and, pinned to the other core, a lean load generator: W reader processes
that hold the SSE connections with raw non-blocking sockets and epoll (no asyncio, no HTTP
library), and this process publishing by HTTP POST over keep-alive sockets.

Scenarios are named SUBSxTOPICS@RATE[/BATCH]: SUBS subscribers spread over TOPICS topics,
POSTs at RATE per second (open loop: each sent when due, on one of 4 keep-alive
connections that has no request in flight, no pipelining) or "max" (4 POSTs in flight,
each sent when the previous one on its socket was answered),
each POST carrying BATCH events (default 1). Each event's data is
"<seq>:<publish time ns>". A reader does not parse frames: per read it counts `\ndata: `
(one per event) and takes the publish time of the read's first event, the oldest: that
latency is charged to every event of the read, so p50/p99 are upper bounds, and include
the reader's own scheduling on a shared core.

Per scenario it prints deliveries/s (from the first publish to the last delivery), latency
p50/p99, lost deliveries (expected minus counted), hub CPU per delivery (utime+stime from
/proc/PID/stat over the publishing phase, divided by deliveries), the share of that phase
the server spent on a CPU ("busy") and runnable but waiting for one (/proc/PID/schedstat:
the machine's other load), the readers' CPU (summed; 100% is the whole load core: the
generator, not the server, is then the bottleneck), and RSS per idle SSE connection
(VmRSS from /proc/PID/status before and after connecting the subscribers).

    .venv/bin/python bench/sse_bench.py                  # every scenario, about 3-4 minutes
    .venv/bin/python bench/sse_bench.py --server nchan   # the same against nginx + nchan
                                  # (apt-get install nginx libnginx-mod-nchan)
    .venv/bin/python bench/sse_bench.py --only 1000x1@100 --readers 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common import LOAD_LIMITS, cpu_model, free_port, http_ok, process

HUB_CORE, LOAD_CORE = 0, 1
PIN = True  # --no-pin: let the scheduler place the hub and the load generator
SERVER = "cachewire"  # --server nchan: the same load against nginx + nchan
SETTLE_TIMEOUT = 60.0  # seconds to wait for the last deliveries after the last publish


@dataclass(frozen=True)
class Scenario:
    name: str
    subscribers: int
    topics: int  # 1: everyone on one topic; = subscribers: one topic each
    events: int
    rate: float | None  # POSTs/s, or None: as fast as the hub acknowledges
    batch: int = 1  # events per POST


SCENARIOS = (
    Scenario("1000x1@100", 1000, 1, 1000, 100.0),
    Scenario("5000x1@20", 5000, 1, 200, 20.0),
    Scenario("100x1@max", 100, 1, 5000, None),
    Scenario("1000x1@max", 1000, 1, 500, None),
    Scenario("5000x1@max", 5000, 1, 100, None),
    Scenario("1000x1000@max", 1000, 1000, 3000, None),
    Scenario("5000x5000@max", 5000, 5000, 5000, None),
    Scenario("1000x1000@max/100", 1000, 1000, 50_000, None, batch=100),
    Scenario("5000x5000@max/100", 5000, 5000, 50_000, None, batch=100),
)
SMOKE = Scenario("smoke", 10, 1, 50, None)  # --smoke: the test suite's run of this script


# --- the hub process ---


def pinned() -> bool:
    return (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


@contextmanager
def hub_process(port: int) -> Iterator[subprocess.Popen[bytes]]:
    exe = str(Path(sys.executable).parent / "cachewire-hub")
    argv = [exe, "--http-port", str(port), "--grpc-port", "off", "--log-level", "warning"]
    argv += LOAD_LIMITS
    if pinned() and PIN:
        argv = ["taskset", "-c", str(HUB_CORE), *argv]
    with process(argv, lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), "cachewire-hub") as proc:
        yield proc


def sse_connections(port: int) -> int:
    if SERVER == "nchan":
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/nchan_status", timeout=10) as r:
            status = r.read().decode()
        return int(status.split("subscribers:")[1].split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics/plasma", timeout=10) as r:
        return int(json.loads(r.read())["connections_sse"])


NCHAN_CONF = """
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
master_process off;
daemon off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 65536; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path %(dir)s;
  server {
    listen 127.0.0.1:%(port)d;
    location = /readyz { return 200 "ok"; }
    location = /nchan_status { nchan_stub_status; }
    location ~ ^/sub/(.+)$ { nchan_subscriber eventsource; nchan_channel_id $1; }
    location ~ ^/pub/(.+)$ { nchan_publisher; nchan_channel_id $1; }
  }
}
"""


@contextmanager
def nchan_process(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """nginx + nchan (Debian: nginx, libnginx-mod-nchan), one process, for comparison."""
    with tempfile.TemporaryDirectory(prefix="sse-bench-nchan-") as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NCHAN_CONF % {"dir": tmp, "port": port})
        argv = ["nginx", "-c", str(conf), "-p", tmp]
        if pinned() and PIN:
            argv = ["taskset", "-c", str(HUB_CORE), *argv]
        proc = subprocess.Popen(argv, cwd=tmp)
        try:
            deadline = time.monotonic() + 30
            while not http_ok(f"http://127.0.0.1:{port}/readyz"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "nginx did not start: " + (Path(tmp) / "error.log").read_text()
                    )
                time.sleep(0.05)
            yield proc
        finally:
            proc.terminate()
            proc.wait(30)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def runqueue_wait(pid: int) -> float:
    """Seconds the process was runnable but waiting for a CPU (/proc/PID/schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- readers: worker processes holding SSE connections ---


def reader_main(pipe: Connection, port: int) -> None:
    """Serve commands: ("connect", [paths]), ("stats",), ("stop",)."""
    if pinned() and PIN:
        os.sched_setaffinity(0, {LOAD_CORE})
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    counts: dict[int, int] = {}
    tails: dict[int, bytes] = {}
    latencies: list[tuple[int, int]] = []  # (ns, events) per read
    last_ns = 0
    closed = 0
    while True:
        if pipe.poll():
            cmd = pipe.recv()
            if cmd[0] == "connect":
                for path in cmd[1]:
                    s = socket.create_connection(("127.0.0.1", port))
                    request = (
                        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
                    )
                    s.sendall(request.encode())
                    s.setblocking(False)
                    socks[s.fileno()] = s
                    counts[s.fileno()] = 0
                    tails[s.fileno()] = b""
                    ep.register(s.fileno(), select.EPOLLIN)
                pipe.send(len(socks))
            elif cmd[0] == "stats":
                pipe.send((sum(counts.values()), last_ns, closed))
            elif cmd[0] == "cpu":
                pipe.send(time.process_time())
            elif cmd[0] == "report":
                pipe.send((sorted(counts.values()), latencies, last_ns, closed))
                latencies = []
            elif cmd[0] == "stop":
                for s in socks.values():
                    s.close()
                pipe.send(True)
                return
        for fd, _ in ep.poll(0.01):
            try:
                data = socks[fd].recv(1 << 18)
            except BlockingIOError:
                continue
            if not data:
                ep.unregister(fd)
                closed += 1
                continue
            now = time.time_ns()
            # A pattern split between two reads is found in tail + data (the 6-byte tail
            # cannot hold the 7-byte pattern, so nothing counts twice).
            joined = tails[fd] + data
            n = joined.count(b"\ndata: ")
            tails[fd] = data[-6:]
            if not n:
                continue
            counts[fd] += n
            last_ns = now
            i = joined.find(b'"data":"')
            if i >= 0:
                j = joined.find(b'"', i + 8)
                seq_ts = joined[i + 8 : j].split(b":")
                if j > 0 and len(seq_ts) == 2:
                    latencies.append((now - int(seq_ts[1]), n))


class Readers:
    def __init__(self, port: int, workers: int) -> None:
        ctx = mp.get_context("fork")
        self.pipes: list[Connection] = []
        self.procs = []
        for _ in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=reader_main, args=(child, port), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def connect(self, paths: Sequence[str]) -> None:
        for i, pipe in enumerate(self.pipes):
            pipe.send(("connect", list(paths[i :: len(self.pipes)])))
        for pipe in self.pipes:
            pipe.recv()

    def ask(self, cmd: str) -> list[Any]:
        for pipe in self.pipes:
            pipe.send((cmd,))
        return [pipe.recv() for pipe in self.pipes]

    def stop(self) -> None:
        self.ask("stop")
        for proc in self.procs:
            proc.join(10)


# --- the publisher: one event per POST, on keep-alive sockets ---


class Publisher:
    def __init__(self, port: int, sockets: int) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(sockets)]

    def send(self, s: socket.socket, scenario: Scenario, first_seq: int) -> int:
        """POST the next `batch` events from first_seq; the next seq."""
        seqs = range(first_seq, min(first_seq + scenario.batch, scenario.events))
        now = time.time_ns()
        if SERVER == "nchan":  # the message is what subscribers get: Plasma's envelope
            [seq] = seqs
            channel = topic(seq % scenario.topics)
            body = b'{"meta":{"type":"%s"},"data":"%d:%d"}' % (channel.encode(), seq, now)
            path = b"/pub/" + channel.encode()
        else:
            events = [
                b'{"type":"%s","data":"%d:%d"}' % (topic(seq % scenario.topics).encode(), seq, now)
                for seq in seqs
            ]
            body = events[0] if scenario.batch == 1 else b"[%s]" % b",".join(events)
            path = b"/v1/publish"
        s.sendall(
            b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body)
        )
        return seqs.stop

    @staticmethod
    def answer(s: socket.socket) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = s.recv(4096)
            if not data:
                raise RuntimeError("the server closed the publishing connection")
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 20"):
            raise RuntimeError(f"publish failed: {buf[:300]!r}")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += s.recv(4096)

    def run(self, scenario: Scenario) -> float:
        """Publish the scenario's events; the time of the first publish."""
        if scenario.rate is not None:
            return self.run_open_loop(scenario, scenario.rate)
        first = time.monotonic()
        seq = 0
        while seq < scenario.events:
            in_flight = []
            for s in self.socks:  # one request in flight per socket
                if seq < scenario.events:
                    seq = self.send(s, scenario, seq)
                    in_flight.append(s)
            for s in in_flight:
                self.answer(s)
        return first

    def run_open_loop(self, scenario: Scenario, rate: float) -> float:
        """Send each POST when it is due, on a connection with no request in flight, as
        independent publishers would (no HTTP pipelining); when all are busy, the next POST
        waits for an answer, so a slow hub shows as `publish_s` above events / rate."""
        free = list(self.socks)
        busy: dict[socket.socket, bytes] = {}

        def read(wait: float) -> None:
            ready = select.select(list(busy), [], [], max(0.0, wait))[0] if busy else []
            if not ready and not busy and wait > 0:
                time.sleep(wait)
            for s in ready:
                data = s.recv(1 << 16)
                if not data:
                    raise RuntimeError("the server closed the publishing connection")
                buf = busy[s] + data
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    busy[s] = buf
                    continue
                head = buf[:end]
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(buf) < end + 4 + length:
                    busy[s] = buf
                    continue
                if not head.startswith(b"HTTP/1.1 20"):
                    raise RuntimeError(f"publish failed: {buf[:300]!r}")
                del busy[s]
                free.append(s)

        first = time.monotonic()
        seq = posts = 0
        while seq < scenario.events:
            due = first + posts / rate
            while (delay := due - time.monotonic()) > 0 or not free:
                read(delay if free else 1.0)
            s = free.pop()
            seq = self.send(s, scenario, seq)
            busy[s] = b""
            posts += 1
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while busy and time.monotonic() < deadline:
            read(1.0)
        if busy:
            raise RuntimeError(f"{len(busy)} POSTs were not answered")
        return first

    def close(self) -> None:
        for s in self.socks:
            s.close()


def topic(i: int) -> str:
    return f"bench_{i}" if SERVER == "nchan" else f"bench:{i}"


def subscribe_path(i: int) -> str:
    return f"/sub/{topic(i)}" if SERVER == "nchan" else f"/?eventType={topic(i)}"


# --- one scenario ---


def percentile(samples: list[tuple[int, int]], q: float) -> float:
    """Weighted percentile of (value ns, weight) samples, in milliseconds."""
    if not samples:
        return float("nan")
    samples.sort()
    total = sum(w for _, w in samples)
    target, seen = q * total, 0
    for value, weight in samples:
        seen += weight
        if seen >= target:
            return value / 1e6
    return samples[-1][0] / 1e6


def run(scenario: Scenario, readers_n: int, publishers: int) -> dict[str, Any]:
    port = free_port()
    with (nchan_process if SERVER == "nchan" else hub_process)(port) as hub:
        readers = Readers(port, readers_n)
        try:
            rss_before = rss_kib(hub.pid)
            paths = [subscribe_path(i % scenario.topics) for i in range(scenario.subscribers)]
            readers.connect(paths)
            deadline = time.monotonic() + 120
            while sse_connections(port) < scenario.subscribers:
                if time.monotonic() > deadline:
                    raise RuntimeError("subscribers did not all connect")
                time.sleep(0.1)
            time.sleep(1.0)  # let the connections' first frames flush before measuring RSS
            rss_after = rss_kib(hub.pid)

            publisher = Publisher(port, publishers)
            cpu0, wait0 = cpu_seconds(hub.pid), runqueue_wait(hub.pid)
            load0 = sum(readers.ask("cpu"))
            first = publisher.run(scenario)
            published_at = time.monotonic()
            expected = scenario.events * scenario.subscribers // scenario.topics
            settle = time.monotonic() + SETTLE_TIMEOUT
            got, last_progress = 0, time.monotonic()
            while got < expected and time.monotonic() < settle:
                now_got = sum(r[0] for r in readers.ask("stats"))
                if now_got > got:
                    got, last_progress = now_got, time.monotonic()
                elif time.monotonic() - last_progress > 10:
                    break  # no progress for 10 s: count the rest as lost
                time.sleep(0.05)
            cpu1, wait1 = cpu_seconds(hub.pid), runqueue_wait(hub.pid)
            load1 = sum(readers.ask("cpu"))
            publisher.close()
            reports = readers.ask("report")
        finally:
            readers.stop()
    counts = [c for r in reports for c in r[0]]
    latencies = [s for r in reports for s in r[1]]
    last_ns = max(r[2] for r in reports)
    delivered = sum(counts)
    # Wall clock of the last delivery, mapped from time_ns to monotonic via "now".
    elapsed = max(1e-9, (last_ns / 1e9 - time.time()) + time.monotonic() - first)
    return {
        "scenario": scenario.name,
        "subscribers": scenario.subscribers,
        "topics": scenario.topics,
        "events": scenario.events,
        "rate": scenario.rate,
        "publish_s": published_at - first,
        "elapsed_s": elapsed,
        "deliveries": delivered,
        "lost": expected - delivered,
        "deliveries_per_s": delivered / elapsed,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "cpu_us_per_delivery": (cpu1 - cpu0) / max(1, delivered) * 1e6,
        "hub_cpu_s": cpu1 - cpu0,
        "hub_busy": (cpu1 - cpu0) / elapsed,
        "hub_waiting": (wait1 - wait0) / elapsed,
        "readers_busy": (load1 - load0) / elapsed,
        "rss_kib_per_conn": (rss_after - rss_before) / scenario.subscribers,
    }


def machine() -> str:
    python = sys.version.split()[0]
    return f"{os.cpu_count()} cores ({cpu_model()}), Linux {platform.release()}, Python {python}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--readers", type=int, default=2, help="reader processes")
    parser.add_argument("--publishers", type=int, default=4, help="POSTs in flight at max rate")
    parser.add_argument("--no-pin", action="store_true", help="do not pin hub and load to cores")
    parser.add_argument("--smoke", action="store_true", help="one tiny scenario (a smoke run)")
    parser.add_argument(
        "--server",
        choices=("cachewire", "nchan"),
        default="cachewire",
        help="nchan: the same load against nginx + nchan (Debian packages), for comparison",
    )
    args = parser.parse_args(argv)
    global PIN, SERVER
    PIN, SERVER = not args.no_pin, args.server
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 5,000 sockets and more
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    if args.smoke:
        scenarios = [SMOKE]
    if SERVER == "nchan":  # nchan publishes one message per POST
        scenarios = [s for s in scenarios if s.batch == 1]
    when = time.strftime("%Y-%m-%d %H:%M")
    print(f"# {SERVER}; {machine()}; server pinned: {pinned() and PIN}; {when}")
    print(
        "| scenario | subs | topics | events | POSTs/s | events/POST | deliveries/s | p50 ms "
        "| p99 ms | lost | server CPU µs/delivery | server CPU busy | server waiting for CPU "
        "| readers' CPU | server RSS KiB/idle conn |"
    )
    print("| --- " * 15 + "|")
    for scenario in scenarios:
        r = run(scenario, args.readers, args.publishers)
        rate = f"{scenario.rate:g}" if scenario.rate else "max"
        print(
            f"| {r['scenario']} | {r['subscribers']} | {r['topics']} | {r['events']} | {rate} "
            f"| {scenario.batch} | {r['deliveries_per_s']:,.0f} | {r['p50_ms']:.1f} "
            f"| {r['p99_ms']:.1f} | {r['lost']} | {r['cpu_us_per_delivery']:.2f} "
            f"| {r['hub_busy']:.0%} | {r['hub_waiting']:.0%} | {r['readers_busy']:.0%} "
            f"| {r['rss_kib_per_conn']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
