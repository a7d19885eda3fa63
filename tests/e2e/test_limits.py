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

import redis

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
    """A body under --max-body whose one event would not fit in it encoded (`1e5` is
    written back as `100000.0`): 413, JSON, nothing published."""
    hub = hub_process("--max-body", "20000")
    body = b'{"type":"a","data":[' + b",".join([b"1e5"] * 3000) + b"]}"
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


def test_the_sidecar_touches_only_the_allowed_prefixes(
    hub_process: Callable[..., Proc],
    sidecar_process: Callable[..., Proc],
    memcached_server: Proc,
    redis_server: Proc,
) -> None:
    """Keys and prefixes outside --allow-prefixes are skipped and counted; a flush deletes
    the allowed prefixes from Redis (SCAN + UNLINK), not the whole database."""
    hub = hub_process()
    sc = sidecar_process(
        "--memcached",
        f"127.0.0.1:{memcached_server.port}",
        "--redis-url",
        f"redis://127.0.0.1:{redis_server.port}/0",
        "--memcached-prefixes",
        "ignore",  # memcached cannot enumerate a prefix: else it would flush_all
        "--allow-prefixes",
        "app:",
        "--max-staleness",
        "60",
        hub=hub,
        topics="app",
    )
    wait_ready(sc)
    r = redis.Redis(port=redis_server.port)
    r.mset({k: "v" for k in ("app:1", "app:list:1", "app:2", "session:alice", "billing:x")})
    with memcache(memcached_server.port) as mc:
        mc.set("app:1", "v")
        mc.set("session:alice", "v")
        [event] = publish(
            hub,
            {
                "type": "app:1",
                "keys": ["app:1", "session:alice"],
                "prefixes": ["app:list:", "billing:"],
            },
        )
        assert applied(sc, event) == 200
        assert sorted(r.keys()) == [b"app:2", b"billing:x", b"session:alice"]
        assert mc.get("app:1") is None and mc.get("session:alice") == b"v"
        [flush] = publish(hub, {"type": "app:all", "flush": True})
        assert applied(sc, flush) == 200
        assert sorted(r.keys()) == [b"billing:x", b"session:alice"]
    r.close()
    for sink in ("redis", "memcached"):
        assert metric(sc, "cachewire_sidecar_refused_total", sink=sink, reason="key_outside") == 1
    assert metric(sc, "cachewire_sidecar_refused_total", sink="redis", reason="prefix_outside") == 1
    assert "outside --allow-prefixes not applied" in sc.log()
