"""The consistency prober end to end: in the sidecar (`--probe-interval`) and on its own
(`cachewire probe`), with real hub, sidecar, memcached and redis-server processes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from tests.e2e.test_sidecar import WAIT, get, metric, wait_ready
from tests.servers import BIN, Proc, free_port, start_hub, wait_for


def test_sidecar_probe_metrics_show_every_canary_within_the_bound(
    hub_process: Callable[..., Proc],
    sidecar_process: Callable[..., Proc],
    memcached_server: Proc,
    redis_server: Proc,
) -> None:
    hub = hub_process("--subscribe-heartbeat", "0.2")
    sc = sidecar_process(
        "--memcached",
        f"127.0.0.1:{memcached_server.port}",
        "--redis-url",
        f"redis://127.0.0.1:{redis_server.port}/0",
        "--redis-flush",
        "db",
        "--probe-interval",
        "0.1",
        "--max-staleness",
        "2",
        hub=hub,
    )
    wait_ready(sc)
    for cache in ("memcached", "redis"):
        wait_for(
            lambda c=cache: metric(sc, "cachewire_probe_probes_total", cache=c) >= 3,
            timeout=WAIT,
            what=f"three {cache} probes",
        )
    text = get(sc, "/metrics")[1]
    assert 'cachewire_probe_invalidation_seconds_bucket{cache="memcached",le="1.0"}' in text
    for cache in ("memcached", "redis"):
        assert metric(sc, "cachewire_probe_within_bound_ratio", cache=cache, within="bound") == 1
        assert metric(sc, "cachewire_probe_violations_total", cache=cache) == 0
        assert metric(sc, "cachewire_probe_invalidation_seconds_count", cache=cache) >= 3


def test_hub_stopped_longer_than_the_bound_is_a_violation(
    procs: list[Proc], sidecar_process: Callable[..., Proc], memcached_server: Proc
) -> None:
    """A memcached shared by many pods has its flush off, so a hub outage longer than the
    bound leaves the canary in place: the ratio falls, the violation is counted and logged;
    once the hub is back, canaries go through again."""
    http_port, grpc_port = free_port(), free_port()
    hub = start_hub("--subscribe-heartbeat", "0.2", http_port=http_port, grpc_port=grpc_port)
    procs.append(hub)
    sc = sidecar_process(
        "--memcached",
        f"127.0.0.1:{memcached_server.port}",
        "--no-memcached-flush",
        "--probe-interval",
        "0.1",
        "--max-staleness",
        "1",
        hub=hub,
    )
    wait_ready(sc)
    probes = lambda: metric(sc, "cachewire_probe_probes_total", cache="memcached")  # noqa: E731
    wait_for(lambda: probes() >= 3, timeout=WAIT, what="probes before the outage")
    assert metric(sc, "cachewire_probe_within_bound_ratio", cache="memcached", within="bound") == 1
    hub.stop()
    wait_for(
        lambda: metric(sc, "cachewire_probe_violations_total", cache="memcached") >= 1,
        timeout=WAIT,
        what="a violation",
    )
    assert metric(sc, "cachewire_probe_within_bound_ratio", cache="memcached", within="bound") < 1
    assert "probe: canary outlived the staleness bound" in sc.log()
    hub2 = start_hub("--subscribe-heartbeat", "0.2", http_port=http_port, grpc_port=grpc_port)
    procs.append(hub2)
    count = lambda: metric(sc, "cachewire_probe_invalidation_seconds_count", cache="memcached")  # noqa: E731
    after = count()
    wait_for(lambda: count() >= after + 3, timeout=WAIT, what="canaries through the new hub")


def test_probe_command_once(
    hub_process: Callable[..., Proc],
    sidecar_process: Callable[..., Proc],
    memcached_server: Proc,
) -> None:
    """`cachewire probe --once` against a sidecar subscribed to cachewire:probe: exit 0 and
    one JSON line per cache; without a sidecar applying it, exit 1 (a violation)."""
    hub = hub_process("--subscribe-heartbeat", "0.2")
    sc = sidecar_process(
        "--memcached", f"127.0.0.1:{memcached_server.port}", hub=hub, topics="user,cachewire:probe"
    )
    wait_ready(sc)
    argv = [str(BIN / "cachewire"), "probe", "--once", "--hub", f"127.0.0.1:{hub.ports['grpc']}"]
    argv += ["--memcached", f"127.0.0.1:{memcached_server.port}", "--bound", "2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    outcome = json.loads(line)
    assert outcome["cache"] == "memcached" and outcome["result"] == "gone"
    assert 0 <= outcome["seconds"] < 2
    sc.stop()
    missed = subprocess.run([*argv[:-1], "0.5"], capture_output=True, text=True, timeout=WAIT)
    assert missed.returncode == 1
    assert json.loads(missed.stdout)["result"] == "violation"
    assert "canary outlived the staleness bound" in missed.stderr
