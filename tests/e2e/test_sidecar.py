"""cachewire-sidecar end to end: hub and sidecar processes, real memcached and redis-server.

Everything is started with its documented flags; every wait is on a fact the processes
expose (/readyz, /v1/status, /v1/applied, /metrics, a key gone), bounded by WAIT.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cachetools
import pytest
import redis
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from pymemcache.client.base import Client

from cachewire.sidecar.client import Invalidator
from tests.servers import (
    BIN,
    Proc,
    free_port,
    start_hub,
    start_memcached,
    wait_for,
)

WAIT = 20.0
RULES = """
[[rules]]
type = "user:{id}"
keys = ["user:{id}", "user:{id}:profile"]
"""


def get(proc: Proc, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{proc.ports['health']}{path}", timeout=WAIT
        ) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    text = body.decode()
    return status, json.loads(text) if text.startswith("{") else text


def status(proc: Proc) -> dict[str, Any]:
    return get(proc, "/v1/status")[1]  # type: ignore[no-any-return]


def metric(proc: Proc, name: str, **labels: str) -> float:
    """A sample of the sidecar's /metrics (0 when absent)."""
    for family in text_string_to_metric_families(get(proc, "/metrics")[1]):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def publish(hub: Proc, *events: dict[str, Any]) -> list[str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['http']}/v1/publish",
        data=json.dumps(list(events)).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=WAIT) as resp:
        return list(json.load(resp)["ids"])


def wait_ready(proc: Proc) -> None:
    wait_for(lambda: get(proc, "/readyz")[0] == 200, timeout=WAIT, what="sidecar /readyz")


def applied(proc: Proc, event_id: str) -> int:
    return get(proc, f"/v1/applied?id={event_id}&timeout={WAIT}")[0]


@contextmanager
def memcache(port: int) -> Iterator[Client]:
    client = Client(("127.0.0.1", port), default_noreply=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def config(tmp_path: Path) -> Callable[[str], str]:
    def write(text: str) -> str:
        path = tmp_path / "sidecar.toml"
        path.write_text(text)
        return str(path)

    return write


def test_publish_invalidates_memcached_redis_and_app_cache(
    hub_process: Callable[..., Proc],
    sidecar_process: Callable[..., Proc],
    memcached_server: Proc,
    redis_server: Proc,
    config: Callable[[str], str],
) -> None:
    """Rule-derived and explicit keys leave memcached, Redis and an app's cachetools cache
    (through the local relay); the /v1/applied barrier answers once they are gone."""
    hub = hub_process("--subscribe-heartbeat", "0.1")
    relay_port = free_port()
    sc = sidecar_process(
        "--config",
        config(RULES),
        "--memcached",
        f"127.0.0.1:{memcached_server.port}",
        "--redis-url",
        f"redis://127.0.0.1:{redis_server.port}/0",
        "--redis-flush",
        "db",
        "--relay-port",
        str(relay_port),
        hub=hub,
    )
    wait_ready(sc)
    keys = ["user:42", "user:42:profile", "extra", "user:7"]
    app_cache: cachetools.LRUCache[str, str] = cachetools.LRUCache(maxsize=100)
    app_cache.update({k: "v" for k in keys})
    r = redis.Redis(port=redis_server.port)
    with (
        memcache(memcached_server.port) as mc,
        Invalidator(
            f"127.0.0.1:{relay_port}",
            topics=["user"],
            cache=app_cache,
            backoff_base=0.05,
            backoff_cap=0.5,
        ) as app,
    ):
        assert app.wait_connected(WAIT)
        mc.set_many({k: b"v" for k in keys})
        r.mset({k: "v" for k in keys})
        [event_id] = publish(hub, {"type": "user:42", "keys": ["extra"]})
        assert applied(sc, event_id) == 200
        assert mc.get_many(keys) == {"user:7": b"v"}
        assert sorted(r.keys()) == [b"user:7"]
        assert app.wait_applied(event_id, WAIT)
        assert dict(app_cache) == {"user:7": "v"}
    r.close()
    assert metric(sc, "cachewire_sidecar_applied_total", sink="memcached") >= 1
    assert metric(sc, "cachewire_sidecar_apply_lag_seconds_count", sink="redis") >= 1
    body = status(sc)
    assert body["connected"] is True and body["last_event_id"] == event_id
    assert set(body["sinks"]) == {"memcached", "redis", "relay"}


def test_hub_restart_new_epoch_resets_and_flushes(
    procs: list[Proc],
    sidecar_process: Callable[..., Proc],
    memcached_server: Proc,
    redis_server: Proc,
) -> None:
    """A restarted memory-broker hub is a new epoch: the resume gets a reset → flush."""
    http_port, grpc_port = free_port(), free_port()
    hub = start_hub("--subscribe-heartbeat", "0.1", http_port=http_port, grpc_port=grpc_port)
    procs.append(hub)
    sc = sidecar_process(
        "--memcached",
        f"127.0.0.1:{memcached_server.port}",
        "--redis-url",
        f"redis://127.0.0.1:{redis_server.port}/0",
        "--redis-flush",
        "db",
        "--max-staleness",
        "60",
        hub=hub,
    )
    wait_ready(sc)
    [first] = publish(hub, {"type": "user:1", "keys": ["gone"]})
    assert applied(sc, first) == 200
    r = redis.Redis(port=redis_server.port)
    with memcache(memcached_server.port) as mc:
        mc.set("cached", b"v")
        r.set("cached", "v")
        hub.stop()
        hub2 = start_hub("--subscribe-heartbeat", "0.1", http_port=http_port, grpc_port=grpc_port)
        procs.append(hub2)
        wait_for(
            lambda: metric(sc, "cachewire_sidecar_resets_total", reason="epoch_changed") == 1,
            timeout=WAIT,
            what="reset",
        )
        wait_ready(sc)
        assert mc.get("cached") is None
        assert r.get("cached") is None
        [second] = publish(hub2, {"type": "user:2", "keys": ["k2"]})
        assert second.split("-")[0] != first.split("-")[0]
        assert applied(sc, second) == 200
    r.close()
    for sink in ("memcached", "redis"):
        assert metric(sc, "cachewire_sidecar_flushes_total", sink=sink, reason="reset") == 1
        assert metric(sc, "cachewire_sidecar_flushes_total", sink=sink, reason="stale") == 0


def test_hub_stopped_flushes_after_max_staleness_not_before(
    hub_process: Callable[..., Proc],
    sidecar_process: Callable[..., Proc],
    memcached_server: Proc,
) -> None:
    hub = hub_process("--subscribe-heartbeat", "0.1")
    sc = sidecar_process(
        "--memcached", f"127.0.0.1:{memcached_server.port}", "--max-staleness", "3", hub=hub
    )
    wait_ready(sc)
    with memcache(memcached_server.port) as mc:
        mc.set("cached", b"v")
        hub.stop()
        wait_for(lambda: status(sc)["connected"] is False, timeout=WAIT, what="disconnect")
        body = status(sc)
        # Just disconnected, silent for far less than the bound: nothing flushed yet (only a
        # machine stalled for 3 s could be past the bound here, and then a flush is right).
        if body["seconds_since_contact"] < 3:
            assert mc.get("cached") == b"v"
            assert metric(sc, "cachewire_sidecar_flushes_total", reason="stale") == 0
        assert get(sc, "/readyz")[0] == 503
        wait_for(lambda: mc.get("cached") is None, timeout=WAIT, what="the stale flush")
    body = status(sc)
    assert body["state"] == "stale"
    # Both are wall-clock readings derived from the monotonic clock: allow for their drift.
    assert body["last_flush_at"] - body["last_contact_at"] >= 3 - 0.01
    assert metric(sc, "cachewire_sidecar_flushes_total", sink="memcached", reason="stale") >= 1


def test_memcached_restarted_gets_its_pending_invalidations(
    hub_process: Callable[..., Proc],
    sidecar_process: Callable[..., Proc],
    procs: list[Proc],
) -> None:
    """While memcached is down, invalidations wait (counted as errors, not ready); once it
    is back they are applied; past --max-pending the sink is flushed instead."""
    port = free_port()
    memcached = start_memcached(port)
    procs.append(memcached)
    hub = hub_process("--subscribe-heartbeat", "0.1")
    sc = sidecar_process("--memcached", f"127.0.0.1:{port}", "--max-pending", "3", hub=hub)
    wait_ready(sc)
    memcached.kill()
    [kept] = publish(hub, {"type": "user:1", "keys": ["a"]})
    wait_for(
        lambda: status(sc)["sinks"]["memcached"]["state"] == "failing",
        timeout=WAIT,
        what="memcached failing",
    )
    assert status(sc)["sinks"]["memcached"]["pending"] == 1
    assert get(sc, "/readyz")[0] == 503
    procs.append(start_memcached(port))
    assert applied(sc, kept) == 200
    assert metric(sc, "cachewire_sidecar_sink_errors_total", sink="memcached") >= 1
    assert metric(sc, "cachewire_sidecar_flushes_total", sink="memcached", reason="overflow") == 0
    wait_ready(sc)

    procs[-1].kill()
    ids = publish(hub, *({"type": f"user:{n}", "keys": [f"k{n}"]} for n in range(5)))
    wait_for(
        lambda: status(sc)["sinks"]["memcached"]["state"] == "flushing",
        timeout=WAIT,
        what="overflow → flush pending",
    )
    procs.append(start_memcached(port))
    assert applied(sc, ids[-1]) == 200
    assert metric(sc, "cachewire_sidecar_flushes_total", sink="memcached", reason="overflow") == 1


def test_webhook_failing_then_recovering(
    hub_process: Callable[..., Proc], sidecar_process: Callable[..., Proc], webhook: Hook
) -> None:
    """Non-2xx answers are retried with backoff until a 2xx: nothing is dropped, in order
    (the start flush first, then the batch)."""
    hub = hub_process("--subscribe-heartbeat", "0.1")
    sc = sidecar_process("--webhook", webhook.url, hub=hub)
    wait_for(lambda: len(webhook.bodies) >= 2, timeout=WAIT, what="two failed POSTs")
    [event_id] = publish(hub, {"type": "user:1", "keys": ["a"], "data": {"n": 1}})
    wait_for(lambda: status(sc)["last_event_id"] == event_id, timeout=WAIT, what="event")
    assert status(sc)["sinks"]["webhook"]["state"] == "flushing"
    assert get(sc, f"/v1/applied?id={event_id}&timeout=0")[0] == 408
    assert get(sc, "/readyz")[0] == 503
    webhook.healthy = True
    assert applied(sc, event_id) == 200
    assert all(b["flush"] and b["reason"].startswith("start") for b in webhook.bodies[:2])
    [delivered] = webhook.posts_of(event_id)
    assert delivered["keys"] == ["a"] and delivered["data"] == {"n": 1}
    assert metric(sc, "cachewire_sidecar_sink_errors_total", sink="webhook") >= 2
    wait_ready(sc)


def test_sigterm_exits_zero(
    hub_process: Callable[..., Proc], sidecar_process: Callable[..., Proc], redis_server: Proc
) -> None:
    hub = hub_process("--subscribe-heartbeat", "0.1")
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    sc = sidecar_process("--redis-url", url, "--allow-prefixes", "a", hub=hub)
    wait_ready(sc)
    [event_id] = publish(hub, {"type": "user:1", "keys": ["a"]})
    assert applied(sc, event_id) == 200
    sc.signal(signal.SIGTERM)
    assert sc.popen.wait(WAIT) == 0
    assert '"sidecar stopped"' in sc.log()


USER_MC = ["--topics", "user", "--memcached", "h:1"]


@pytest.mark.parametrize(
    ("args", "toml", "message"),
    [
        ([*USER_MC, "--max-staleness", "-1"], None, "--max-staleness='-1'"),
        (["--topics", "user", "--colour"], None, "unrecognized arguments: --colour"),
        (
            USER_MC,
            "[[rules]]\ntype = 'user:{id}'\nkeys = ['{x}']",
            "rules[0] (user:{id}).keys: template '{x}' uses {x}",
        ),
    ],
)
def test_bad_flag_or_config_exits_2_with_one_line(
    args: list[str], toml: str | None, message: str, config: Callable[[str], str]
) -> None:
    argv = [str(BIN / "cachewire-sidecar"), *args]
    if toml is not None:
        argv += ["--config", config(toml)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cachewire-sidecar: ")
    assert message in lines[0]


def test_python_dash_m_sidecar_help() -> None:
    result = subprocess.run(
        [str(BIN / "python"), "-m", "cachewire.sidecar", "--help"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert result.returncode == 0
    assert "--max-staleness" in result.stdout and "CACHEWIRE_SIDECAR_HUB" in result.stdout


class Hook:
    """A webhook endpoint (aiohttp) on its own thread and loop: 500 until `healthy`."""

    def __init__(self) -> None:
        self.healthy = False
        self.bodies: list[dict[str, Any]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.json_response({}, status=200 if self.healthy else 500)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(WAIT)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(WAIT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)
        self._loop.close()

    def posts_of(self, event_id: str) -> list[dict[str, Any]]:
        return [i for b in list(self.bodies) for i in b["invalidations"] if i["id"] == event_id]


@pytest.fixture
def webhook() -> Iterator[Hook]:
    hook = Hook()
    hook.start()
    yield hook
    hook.stop()
