"""`--state-file`: a sidecar killed with SIGKILL resumes from its saved position without a
flush while the hub's history covers the gap, and flushes when the hub answers a reset."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.e2e.test_sidecar import WAIT, applied, memcache, metric, publish, wait_ready
from tests.servers import Proc, free_port, start_hub, wait_for


def saved_id(path: Path) -> str:
    try:
        return str(json.loads(path.read_text())["applied_id"])
    except (OSError, ValueError):
        return ""


def test_sidecar_kill_9_resumes_without_flush(
    hub_process: Callable[..., Proc],
    sidecar_process: Callable[..., Proc],
    memcached_server: Proc,
    tmp_path: Path,
) -> None:
    """Invalidations published while the sidecar is dead are applied after its restart;
    an unrelated cached key survives (no flush at all)."""
    hub = hub_process("--subscribe-heartbeat", "0.1")
    state = tmp_path / "sidecar.state"
    args = ("--memcached", f"127.0.0.1:{memcached_server.port}", "--state-file", str(state))
    args += ("--state-interval", "20", "--max-staleness", "60")
    sc = sidecar_process(*args, hub=hub)
    wait_ready(sc)
    assert metric(sc, "cachewire_sidecar_flushes_total", sink="memcached", reason="start") == 1
    [first] = publish(hub, {"type": "user:1", "keys": ["k1"]})
    assert applied(sc, first) == 200
    wait_for(lambda: saved_id(state) == first, timeout=WAIT, what="the state file")
    sc.kill()  # SIGKILL: no shutdown path runs
    with memcache(memcached_server.port) as mc:
        mc.set_many({"unrelated": b"v", "k2": b"old", "k3": b"old"})
        ids = publish(hub, {"type": "user:2", "keys": ["k2"]}, {"type": "user:3", "keys": ["k3"]})
        sc2 = sidecar_process(*args, hub=hub)
        assert applied(sc2, ids[-1]) == 200
        assert mc.get_many(["k2", "k3", "unrelated"]) == {"unrelated": b"v"}
    wait_ready(sc2)
    assert metric(sc2, "cachewire_sidecar_flushes_total", sink="memcached", reason="start") == 0
    assert metric(sc2, "cachewire_sidecar_flushes_total", sink="memcached", reason="reset") == 0
    assert "resuming from the state file" in sc2.log()


def test_state_file_resume_after_hub_restart_flushes_on_reset(
    procs: list[Proc],
    sidecar_process: Callable[..., Proc],
    memcached_server: Proc,
    tmp_path: Path,
) -> None:
    """A memory-broker hub restarted while the sidecar was down is a new epoch: the saved
    position cannot be resumed, the hub says so, and the sidecar flushes."""
    http_port, grpc_port = free_port(), free_port()
    hub = start_hub("--subscribe-heartbeat", "0.1", http_port=http_port, grpc_port=grpc_port)
    procs.append(hub)
    state = tmp_path / "sidecar.state"
    args = ("--memcached", f"127.0.0.1:{memcached_server.port}", "--state-file", str(state))
    sc = sidecar_process(*args, "--max-staleness", "60", hub=hub)
    wait_ready(sc)
    [first] = publish(hub, {"type": "user:1", "keys": ["k1"]})
    assert applied(sc, first) == 200
    sc.stop()  # SIGTERM: the final position is written at shutdown
    assert saved_id(state) == first
    hub.stop()
    hub2 = start_hub("--subscribe-heartbeat", "0.1", http_port=http_port, grpc_port=grpc_port)
    procs.append(hub2)
    with memcache(memcached_server.port) as mc:
        mc.set("cached", b"v")
        sc2 = sidecar_process(*args, "--max-staleness", "60", hub=hub2)
        wait_ready(sc2)
        assert mc.get("cached") is None
    assert metric(sc2, "cachewire_sidecar_resets_total", reason="epoch_changed") == 1
    assert metric(sc2, "cachewire_sidecar_flushes_total", sink="memcached", reason="reset") == 1
    assert metric(sc2, "cachewire_sidecar_flushes_total", sink="memcached", reason="start") == 0


def test_state_file_for_other_topics_is_ignored(
    hub_process: Callable[..., Proc],
    sidecar_process: Callable[..., Proc],
    memcached_server: Proc,
    tmp_path: Path,
) -> None:
    """A state file written for other topics does not cover this sidecar's caches: flush."""
    hub = hub_process("--subscribe-heartbeat", "0.1")
    state = tmp_path / "sidecar.state"
    args = ("--memcached", f"127.0.0.1:{memcached_server.port}", "--state-file", str(state))
    sc = sidecar_process(*args, hub=hub, topics="user")
    wait_ready(sc)
    [first] = publish(hub, {"type": "user:1"})
    assert applied(sc, first) == 200
    sc.stop()
    assert saved_id(state) == first
    sc2 = sidecar_process(*args, hub=hub, topics="user,product")
    wait_ready(sc2)
    assert metric(sc2, "cachewire_sidecar_flushes_total", sink="memcached", reason="start") == 1
    assert "other topics or sinks" in sc2.log()
