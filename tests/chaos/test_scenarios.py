"""Chaos scenarios: each runs a deployment under load, injects one fault, and holds every
guarded cache to the staleness bound (0 violations). `make chaos` runs them all with longer
phases; the test suite runs those not marked `full_only`, short."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.chaos.checker import now
from tests.chaos.conftest import record
from tests.chaos.faults import ClockFile, TcpProxy
from tests.chaos.harness import FULL, Deployment, Options, duration
from tests.e2e.test_redis_sentinel import SERVICE, start_sentinel
from tests.e2e.test_sidecar import metric
from tests.servers import Proc, start_redis, wait_for

full_only = pytest.mark.skipif(not FULL, reason="make chaos (CACHEWIRE_CHAOS=full) runs this")
pytestmark = pytest.mark.timeout(300)

Make = Callable[..., Deployment]


def hold(seconds: float) -> None:
    """Keep a fault in place for this long while the load runs (the experiment's pace)."""
    threading.Event().wait(seconds)


def sidecar_flushes(dep: Deployment, reason: str) -> float:
    return sum(
        metric(n.sidecar_proc, "cachewire_sidecar_flushes_total", sink="memcached", reason=reason)
        for n in dep.nodes
    )


# --- hubs ---


def test_hub_kill_9_redis_broker(deployment: Make) -> None:
    """One of two hubs on Redis is killed and restarted; sidecars move to the other."""
    dep = deployment(Options())

    def fault(d: Deployment) -> None:
        d.checker.fault("kill -9 hub0")
        d.hubs[0].restart()

    record(dep.run("hub kill -9 (redis, 2 hubs)", fault))
    assert sidecar_flushes(dep, "reset") == 0  # the other hub resumes them from Redis


@full_only
def test_rolling_restart_of_two_hubs(deployment: Make) -> None:
    """Both hubs restarted in turn (SIGTERM, as a rollout does)."""
    dep = deployment(Options())

    def fault(d: Deployment) -> None:
        for hub in d.hubs:
            d.checker.fault(f"restart {hub.name}")
            hub.restart(kill=False)

    record(dep.run("rolling restart (redis, 2 hubs)", fault))
    assert sidecar_flushes(dep, "reset") == 0


@full_only
def test_hub_kill_9_memory_broker(deployment: Make) -> None:
    """The only hub, on the memory broker, is killed: its history is gone, so the sidecars
    get an epoch reset and flush; publishers retry until it is back."""
    dep = deployment(Options(broker="memory", hubs=1))

    def fault(d: Deployment) -> None:
        d.checker.fault("kill -9 hub0")
        d.hubs[0].restart()

    record(dep.run("hub kill -9 (memory broker)", fault))
    assert sidecar_flushes(dep, "reset") >= len(dep.nodes)


# --- Redis ---


@full_only
@pytest.mark.parametrize("aof", [False, True], ids=["no-aof", "aof"])
def test_redis_restart(deployment: Make, aof: bool) -> None:
    """The broker's Redis is killed and restarted: without AOF the stream is lost (new
    epoch: reset and flush), with AOF (appendfsync always) it resumes without a flush."""
    dep = deployment(Options(aof=aof))

    def fault(d: Deployment) -> None:
        assert d.redis is not None
        d.checker.fault("kill -9 redis")
        d.redis.restart()

    record(dep.run(f"redis restart ({'AOF' if aof else 'no AOF'})", fault))
    if aof:
        assert sidecar_flushes(dep, "reset") == 0


@full_only
def test_sentinel_failover(deployment: Make, procs: list[Proc], tmp_path: Path) -> None:
    """The broker's Redis master is killed; Sentinel promotes the replica and the hubs
    follow it. Publishes the old master acknowledged but had not replicated are lost: the
    hubs see the stream's sequence go back and reset their subscribers (a flush)."""
    dirs = [tmp_path / name for name in ("master", "replica", "sentinel")]
    for path in dirs:
        path.mkdir()
    master = start_redis(extra=["--dir", str(dirs[0])])
    replica = start_redis(
        extra=["--dir", str(dirs[1]), "--replicaof", "127.0.0.1", str(master.port)]
    )
    sentinel = start_sentinel(dirs[2], master.port)
    procs.extend([master, replica, sentinel])
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}/0"
    dep = deployment(Options(redis_url=lambda d: url))
    admin = redis.Redis(port=sentinel.port, decode_responses=True)

    def replica_in_sync() -> bool:
        replicas = admin.execute_command("SENTINEL", "REPLICAS", SERVICE)
        return any(r.get("master-link-status") == "ok" for r in replicas)

    def promoted() -> bool:
        _, port = admin.sentinel_get_master_addr_by_name(SERVICE)
        return int(port) == replica.port

    def fault(d: Deployment) -> None:
        wait_for(replica_in_sync, timeout=30, what="the sentinel to know a synced replica")
        d.checker.fault("kill -9 the redis master")
        master.kill()
        wait_for(promoted, timeout=60, what="the sentinel to promote the replica")

    try:
        record(dep.run("sentinel failover (kill -9 master)", fault))
    finally:
        admin.close()


# --- links ---


def test_link_cut_longer_than_the_bound(deployment: Make) -> None:
    """One sidecar's link to the hubs is cut for twice max-staleness, then restored."""
    dep = deployment(Options())

    def fault(d: Deployment) -> None:
        d.checker.fault("cut sidecar0's link")
        d.nodes[0].link.cut()
        hold(2 * d.opts.max_staleness)
        d.nodes[0].link.heal()

    record(dep.run("link cut 2x bound", fault))
    assert sidecar_flushes(dep, "stale") >= 1


@full_only
def test_link_stalled(deployment: Make) -> None:
    """Connections stay open but no byte moves: only the silence tells."""
    dep = deployment(Options())

    def fault(d: Deployment) -> None:
        d.checker.fault("stall sidecar0's link")
        d.nodes[0].link.stall()
        hold(2 * d.opts.max_staleness)
        d.nodes[0].link.heal()

    record(dep.run("link stalled 2x bound", fault))


@full_only
def test_link_slow(deployment: Make) -> None:
    """Every 512 bytes of the link arrive 20 ms late, for a while."""
    dep = deployment(Options())

    def fault(d: Deployment) -> None:
        d.checker.fault("slow sidecar0's link")
        d.nodes[0].link.slow(0.02)
        hold(duration(3, 10))
        d.nodes[0].link.heal()

    record(dep.run("link slow (20 ms / 512 B)", fault))


@full_only
def test_slow_consumer(deployment: Make) -> None:
    """A sidecar whose link stalls during a burst falls behind by more than its queue in the
    hub (--queue-size 8): the hub resets it alone as a slow consumer; it resumes from its
    position and the replay covers what it missed."""
    dep = deployment(Options(hub_args=("--queue-size", "8")))

    def fault(d: Deployment) -> None:
        d.checker.fault("stall sidecar0's link + burst")
        d.nodes[0].link.stall()
        for _ in range(4):
            d.writers[0].burst([f"user:{i % 60}" for i in range(500)])
        d.nodes[0].link.heal()

    record(dep.run("slow consumer (burst, queue 8)", fault))
    sidecar0 = dep.nodes[0].sidecar_proc
    assert metric(sidecar0, "cachewire_sidecar_resets_total", reason="slow_consumer") >= 1


# --- caches and sidecars ---


@full_only
def test_memcached_restart(deployment: Make) -> None:
    """A guarded memcached is killed and restarted (empty: that covers everything)."""
    dep = deployment(Options())

    def fault(d: Deployment) -> None:
        d.checker.fault("kill -9 memcached0")
        d.nodes[0].memcached.kill9()
        d.checker.cache("memcached0").flushed("restart", now())
        d.nodes[0].memcached.up()

    record(dep.run("memcached restart", fault))


@pytest.mark.parametrize(
    "state_file", [True, pytest.param(False, marks=full_only)], ids=["state-file", "no-state-file"]
)
def test_sidecar_kill_9(deployment: Make, state_file: bool) -> None:
    """A sidecar is killed and restarted. With --state-file it resumes without flushing
    memcached (the hub's history covers the gap); without, it flushes at start. The bound
    includes the measured downtime (nothing applies invalidations while it is dead)."""
    dep = deployment(Options(state_file=state_file))

    def fault(d: Deployment) -> None:
        d.checker.fault("kill -9 sidecar0")
        d.nodes[0].sidecar.restart()

    name = "sidecar kill -9 " + ("(state file)" if state_file else "(no state file)")
    fig = dep.run(name, fault)
    record(fig)
    restarted = dep.nodes[0].sidecar_proc
    start_flushes = metric(restarted, "cachewire_sidecar_flushes_total", reason="start")
    flushes = dep.checker.cache("memcached0").flushes
    flushed_memcached = [t for t, _ in flushes if t >= dep.checker.started_at]
    if state_file:
        # memcached saw no flush_all; the app behind the restarted relay was reset (by design)
        assert start_flushes == 0 and not flushed_memcached
    else:
        assert start_flushes >= 1 and flushed_memcached


@full_only
def test_publisher_retries_after_a_timeout(deployment: Make, tmp_path: Path) -> None:
    """Replies from a hub stall after it stored the event: the writer times out and
    publishes again on the next hub. Nothing is lost; the duplicates are harmless."""
    dep = deployment(Options(writers=("http",)))
    front = TcpProxy(dep.loop, [dep.hubs[0].proc.ports["http"]])  # type: ignore[union-attr]
    dep.proxies.append(front)
    ports = [front.port, dep.hubs[1].proc.ports["http"]]  # type: ignore[union-attr]

    def fault(d: Deployment) -> None:
        d.checker.fault("stall replies of hub0")
        d.writers[0].http = lambda: ports
        front.stall()
        hold(duration(2, 6))
        front.heal()

    fig = dep.run("publisher retry after timeout", fault)
    record(fig)
    assert fig.retries >= 1


@full_only
def test_clock_jumps_in_the_sidecar(deployment: Make, tmp_path: Path) -> None:
    """The sidecars' wall clock jumps an hour forward and back (libfaketime): staleness is
    measured on the monotonic clock, so nothing is flushed and nothing goes stale."""
    if not ClockFile.available():
        pytest.skip("libfaketime is not installed (make system-deps)")
    clock = ClockFile(tmp_path / "faketime")
    # A wider bound than elsewhere: libfaketime slows the sidecars, and a stall of a loaded
    # machine must not pass for the effect of a jump. A wall-clock +1 h would still flush.
    dep = deployment(Options(max_staleness=5.0), clock=clock)

    def fault(d: Deployment) -> None:
        d.checker.fault("wall clock +1 h")
        clock.jump(3600)
        hold(duration(2, 5))
        d.checker.fault("wall clock -2 h")
        clock.jump(-7200)
        hold(duration(2, 5))

    record(dep.run("clock jumps +1 h / -2 h", fault))
    assert sidecar_flushes(dep, "stale") == 0


# --- the checker can fail ---


def test_checker_catches_a_broken_promise(deployment: Make) -> None:
    """Control: with memcached's flush turned off, a link cut longer than the bound leaves
    entries stale in memcached, and the checker must say so."""
    dep = deployment(Options(sidecar_args=("--no-memcached-flush",)))

    def fault(d: Deployment) -> None:
        d.nodes[0].link.cut()
        hold(2 * d.opts.max_staleness + 1)
        d.nodes[0].link.heal()

    fig = dep.run("control: flush off + cut", fault)
    assert fig.violations > 0
    violations = [d for d in fig.details if not d.startswith("faults:")]
    assert all("memcached0" in d for d in violations), violations[:5]
