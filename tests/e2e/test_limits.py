"""Limits that keep the hub and the sidecar from getting stuck or growing without bound.

Hub and sidecar processes started with their documented flags, real memcached and
redis-server, the sidecar's hub link through a TCP proxy that a test can cut.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.e2e.test_sidecar import applied, get, memcache, metric, publish, wait_ready
from tests.servers import BIN, Proc, wait_for
from tests.tcp_proxy import tcp_proxy

WAIT = 30.0
MB = 1_000_000


def post(hub: Proc, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['http']}/v1/publish",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def big_event(i: int) -> dict[str, Any]:
    return {"type": "user:big", "data": "x" * MB, "keys": [f"user:big:{i}"]}


def test_sidecar_catches_up_after_a_burst_larger_than_a_grpc_message(
    hub_process: Callable[..., Proc],
    sidecar_process: Callable[..., Proc],
    memcached_server: Proc,
) -> None:
    """Six 1 MB events published while the sidecar's link is cut: on its resume the hub
    sends them in messages the sidecar accepts, and what follows is applied, with no
    flush in between."""
    hub = hub_process()
    with tcp_proxy(hub.ports["grpc"]) as proxy, memcache(memcached_server.port) as mc:
        sc = sidecar_process(
            "--hub",
            f"127.0.0.1:{proxy.port}",
            "--topics",
            "user",
            "--memcached",
            f"127.0.0.1:{memcached_server.port}",
            "--max-staleness",
            "60",
        )
        wait_ready(sc)
        proxy.cut()
        wait_for(lambda: get(sc, "/v1/status")[1]["connected"] is False, WAIT, "disconnect")
        big_ids = [publish(hub, big_event(i))[0] for i in range(6)]
        proxy.restore()
        mc.set("user:1", "cached")
        [after] = publish(hub, {"type": "user:1", "keys": ["user:1"]})
        assert applied(sc, big_ids[-1]) == 200
        assert applied(sc, after) == 200
        assert mc.get("user:1") is None
        assert metric(sc, "cachewire_sidecar_resets_total", reason="message_too_large") == 0
        assert "larger than max" not in sc.log()


def test_sidecar_unsticks_itself_from_a_message_above_its_limit(
    hub_process: Callable[..., Proc],
    sidecar_process: Callable[..., Proc],
    memcached_server: Proc,
) -> None:
    """A hub that batches more than the sidecar's --max-message-bytes: the sidecar treats
    the refused message as a gap (flush, counted reset) and goes on from the hub's head."""
    hub = hub_process("--subscribe-batch-bytes", str(3 * MB))
    with tcp_proxy(hub.ports["grpc"]) as proxy, memcache(memcached_server.port) as mc:
        sc = sidecar_process(
            "--hub",
            f"127.0.0.1:{proxy.port}",
            "--topics",
            "user",
            "--memcached",
            f"127.0.0.1:{memcached_server.port}",
            "--max-message-bytes",
            str(2 * MB),
            "--max-staleness",
            "60",
        )
        wait_ready(sc)
        proxy.cut()
        wait_for(lambda: get(sc, "/v1/status")[1]["connected"] is False, WAIT, "disconnect")
        for i in range(3):
            publish(hub, big_event(i))
        proxy.restore()
        wait_for(
            lambda: metric(sc, "cachewire_sidecar_resets_total", reason="message_too_large") >= 1,
            WAIT,
            "the message_too_large reset",
        )
        wait_ready(sc)
        mc.set("user:1", "cached")
        [after] = publish(hub, {"type": "user:1", "keys": ["user:1"]})
        assert applied(sc, after) == 200
        assert mc.get("user:1") is None
        assert "larger than --max-message-bytes" in sc.log()


def test_an_event_larger_than_max_body_encoded_is_refused(
    hub_process: Callable[..., Proc],
) -> None:
    """A body under --max-body whose one event would not fit in it encoded: 413, JSON."""
    hub = hub_process("--max-body", "20000")
    event = {"type": "a", "data": "x" * 18_000, "keys": [f"k{i}" for i in range(200)]}
    body = json.dumps(event).encode()
    assert len(body) < 20_000
    status, answer = post(hub, body)
    assert status == 413
    assert "more than the limit of 20000" in answer["error"]


def test_max_body_above_the_grpc_message_limit_fails_at_start() -> None:
    """--max-body must leave every event inside one default-sized gRPC message."""
    done = subprocess.run(
        [str(BIN / "cachewire"), "hub", "--max-body", str(5 * MB), "--http-port", "0"],
        capture_output=True,
        timeout=WAIT,
        text=True,
    )
    assert done.returncode == 2
    assert "--max-body=5000000 is above" in done.stderr


def test_events_per_request_and_prefixes_per_event_are_capped(
    hub_process: Callable[..., Proc],
) -> None:
    """--max-events bounds one request (its validation and fan-out hold the loop);
    --max-prefixes bounds one event (each prefix costs every sidecar a keyspace scan)."""
    hub = hub_process("--max-events", "3", "--max-prefixes", "2")
    status, answer = post(hub, json.dumps([{"type": "a"}] * 4).encode())
    assert status == 413
    assert "4 events, more than the limit of 3 (--max-events)" in answer["error"]
    status, answer = post(hub, json.dumps({"type": "a", "prefixes": ["p:", "q:", "r:"]}).encode())
    assert status == 413
    assert "prefixes has 3 entries, more than the limit of 2" in answer["error"]
    status, answer = post(hub, json.dumps([{"type": "a", "prefixes": ["p:", "q:"]}] * 3).encode())
    assert status == 200 and len(answer["ids"]) == 3
