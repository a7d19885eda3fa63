"""The hub and the sidecar stay under a documented memory bound at their defaults
(docs/limits.md), under the issue's reproductions; RSS is read from /proc.

Hub: 80 events of 1 MB published, eight HTTP/1.0 SSE clients replaying all of it and
never reading. Sidecar: ~5 KB events (300 keys each) with the local relay keeping history
and a memcached that is down, so invalidations pile up pending.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from tests.e2e.test_limits import post
from tests.e2e.test_sidecar import get, metric
from tests.servers import Proc, free_port, wait_for

MB = 1_000_000
CLIENTS = 8
MIB = 1 << 20
HUB_RSS_BOUND = 320 * MIB  # docs/limits.md: the hub at its defaults
SIDECAR_RSS_BOUND = 128 * MIB  # docs/limits.md: the sidecar at its defaults (its k8s limit)


def rss(proc: Proc) -> int:
    with open(f"/proc/{proc.popen.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextmanager
def http10_replay(hub: Proc, topic: str, last_event_id: str) -> Iterator[socket.socket]:
    """An HTTP/1.0 SSE client resuming from `last_event_id` that never reads."""
    sock = socket.create_connection(("127.0.0.1", hub.ports["http"]))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        f"GET /?eventType={topic} HTTP/1.0\r\nAccept: text/event-stream\r\n"
        f"Last-Event-ID: {last_event_id}\r\n\r\n".encode()
    )
    try:
        yield sock
    finally:
        sock.close()


def sse_count(hub: Proc) -> int:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{hub.ports['http']}/metrics/plasma", timeout=10
    ) as resp:
        return int(json.load(resp)["connections_sse"])


def test_hub_memory_stays_bounded_at_the_defaults(hub_process: Callable[..., Proc]) -> None:
    """History over --history-bytes is evicted; HTTP/1.0 replays share the stored bytes."""
    hub = hub_process()
    ids = []
    for _ in range(80):
        status, answer = post(hub, json.dumps({"type": "big", "data": "x" * MB}).encode())
        assert status == 200
        ids += answer["ids"]
    epoch = ids[0].split("-")[0]
    with ExitStack() as stack:
        for _ in range(CLIENTS):
            stack.enter_context(http10_replay(hub, "big", f"{epoch}-0"))
        wait_for(lambda: sse_count(hub) == CLIENTS, 20, "the SSE replays")
        # Each replay has written what its socket takes; the rest stays pending.
        used = rss(hub)
        print(f"hub RSS {used / MIB:.0f} MiB")
        assert used < HUB_RSS_BOUND, f"hub RSS {used / MIB:.0f} MiB"


def test_hub_refuses_too_many_topics_in_one_subscription(
    hub_process: Callable[..., Proc],
) -> None:
    """--max-topics: SSE answers 413 JSON (gRPC gets INVALID_ARGUMENT, tested in unit)."""
    hub = hub_process("--max-topics", "3")
    url = f"http://127.0.0.1:{hub.ports['http']}/?eventType=a,b,c,d"
    request = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("4 topics were accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 413
        assert "more than the limit of 3 (--max-topics)" in json.loads(exc.read())["error"]


def test_sidecar_memory_stays_under_its_limit_at_the_defaults(
    hub_process: Callable[..., Proc], sidecar_process: Callable[..., Proc]
) -> None:
    """~5 KB events into the relay's history and a failing memcached's pending queue."""
    hub = hub_process()
    down = free_port()  # nothing listens: memcached is down, invalidations stay pending
    sc = sidecar_process(
        "--memcached",
        f"127.0.0.1:{down}",
        "--no-memcached-flush",  # no flush to clear them: the byte cap must hold them
        "--relay-port",
        str(free_port()),
        "--max-staleness",
        "60",
        hub=hub,
        topics="user",
        probe="/healthz",
    )
    wait_for(lambda: get(sc, "/v1/status")[1]["connected"] is True, 20, "subscribed")
    keys = [f"user:{i:04d}:field" for i in range(300)]  # ~5 KB per event
    event = {"type": "user:1", "keys": keys, "data": "d" * 500}
    per_request = 150
    last = ""
    for _ in range(100):  # 15,000 events, 75 MB of invalidations
        status, answer = post(hub, json.dumps([event] * per_request).encode())
        assert status == 200
        last = answer["ids"][-1]
    wait_for(lambda: get(sc, "/v1/status")[1]["last_event_id"] == last, 60, "all received")
    assert metric(sc, "cachewire_sidecar_dropped_total", sink="memcached") > 0
    used = rss(sc)
    assert used < SIDECAR_RSS_BOUND, f"sidecar RSS {used / MIB:.0f} MiB"
