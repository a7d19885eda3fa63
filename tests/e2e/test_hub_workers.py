"""`cachewire hub --workers N`: N processes on the same ports, one Redis stream."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.e2e.test_redis_helpers import Sse, publish
from tests.servers import BIN, Proc, free_port, start_hub, wait_for


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


async def test_workers_share_the_ports_and_every_subscriber_gets_every_event(
    redis_server: Proc, procs: list[Proc]
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    hub = start_hub("--broker", "redis", "--redis-url", url, "--workers", "2")
    procs.append(hub)
    wait_for(lambda: len(children(hub.popen.pid)) == 2, what="two workers")
    # New connections are spread by the kernel: with 8 subscribers, both workers serve some
    # (a 1 in 128 chance of all on one, which the delivery check below does not need).
    subs = [Sse(hub, "user") for _ in range(8)]
    try:
        for sub in subs:
            await sub.__aenter__()
            await sub.position()
        ids = []
        for i in range(6):  # each publish lands on either worker
            ids += await publish(hub, [{"type": f"user:{i}", "data": i}])
        for sub in subs:
            assert [f.id for f in await sub.events(6)] == ids
    finally:
        for sub in subs:
            await sub.close()
    workers = children(hub.popen.pid)
    assert hub.stop() == 0
    for pid in workers:  # SIGTERM reached every worker, each stopped and was reaped
        assert not alive(pid)
    assert "hub workers started" in hub.log()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_on_the_memory_broker_are_refused_with_a_clear_message() -> None:
    done = subprocess.run(
        [str(BIN / "cachewire"), "hub", "--workers", "2", "--http-port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--workers 2 needs --broker redis" in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_worker_that_dies_stops_the_set(redis_server: Proc, procs: list[Proc]) -> None:
    """The orchestrator sees the failure (exit 1) and restarts the whole set."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    hub = start_hub("--broker", "redis", "--redis-url", url, "--workers", "2")
    procs.append(hub)
    wait_for(lambda: len(children(hub.popen.pid)) == 2, what="two workers")
    first, _ = children(hub.popen.pid)
    os.kill(first, signal.SIGKILL)
    assert hub.popen.wait(30) == 1
    assert "hub worker exited; stopping the others" in hub.log()
