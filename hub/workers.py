"""`cachewire hub --workers N`: N hub processes sharing the listening ports.

Each worker is a whole hub, a replica like one in another pod: it binds the HTTP and gRPC
ports with SO_REUSEPORT (the kernel spreads new connections across the workers), reads
the Redis stream itself, and serves its own subscribers. Only the Redis broker shares
events between replicas, so the memory broker is refused. This process only supervises:
it forwards SIGTERM/SIGINT to every worker (each drains as a single hub does) and exits
with the first worker's failure, stopping the others, so that the orchestrator restarts
the whole set.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from cachewire.hub.errors import ConfigError
from cachewire.hub.settings import HubSettings

log = logging.getLogger("cachewire.hub.workers")

WORKER_ENV = "CACHEWIRE_WORKER_INDEX"  # set in each worker: it serves, it does not supervise


def is_worker() -> bool:
    return WORKER_ENV in os.environ


def check(settings: HubSettings) -> None:
    """Refuse what N processes cannot share; ConfigError names the setting."""
    if settings.broker != "redis":
        raise ConfigError(
            f"--workers {settings.workers} needs --broker redis: each worker is a replica, "
            "and only the Redis broker shares events between replicas (the memory broker "
            "would give each worker its own history, and subscribers of one worker would "
            "miss what was published to another)"
        )
    if settings.http_port == 0 or settings.grpc_port == 0:
        raise ConfigError(f"--workers {settings.workers} needs fixed ports (not 0) to share")


def supervise(settings: HubSettings, argv: Sequence[str]) -> int:
    """Run `settings.workers` workers with the same flags; the exit status for the process."""
    check(settings)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "cachewire.hub", *argv],
            env={**os.environ, WORKER_ENV: str(i)},
        )
        for i in range(settings.workers)
    ]
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log.info(
        "hub workers started",
        extra={"workers": settings.workers, "pids": [w.pid for w in workers]},
    )
    status = 0
    running = {w.pid: w for w in workers}
    while running:
        pid, wait_status = os.wait()
        worker = running.pop(pid, None)
        if worker is None:
            continue
        code = worker.returncode = os.waitstatus_to_exitcode(wait_status)
        if code != 0 and not stopping:
            log.error(
                "hub worker exited; stopping the others",
                extra={"pid": pid, "exit_code": code},
            )
            status = status or 1
            forward(signal.SIGTERM, None)
        elif code not in (0, -signal.SIGTERM, -signal.SIGINT):  # a worker still starting
            status = status or 1  # dies of the signal itself: that is the stop we asked for
    log.info("hub workers stopped", extra={"exit_code": status})
    return status
