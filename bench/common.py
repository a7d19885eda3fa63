"""What every benchmark script needs: free ports, readiness checks, a process that is
waited for and stopped, a nearest-rank percentile and the CPU's name.

The scripts run as `.venv/bin/python bench/<name>.py`, so this module is imported as
`common` (the script's folder is first on sys.path).
"""

from __future__ import annotations

import platform
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(port: int) -> bool:
    """Whether something accepts TCP connections on the port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


# Every connection of a load generator comes from one address (127.0.0.1): lift the hub's
# connection caps (--max-connections 10,000, --max-connections-per-client 1,000), which
# would otherwise refuse a benchmark's 2,000+ subscribers.
LOAD_LIMITS = ["--max-connections", "1000000", "--max-connections-per-client", "1000000"]


def redis_argv(port: int, exe: str = "redis-server") -> list[str]:
    """redis-server on 127.0.0.1:port, nothing persisted."""
    return [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


@contextmanager
def process(
    argv: Sequence[str],
    ready: Callable[[], bool],
    what: str,
    *,
    cwd: Path = ROOT,
    timeout: float = 60.0,
    quiet: bool = True,
) -> Iterator[subprocess.Popen[bytes]]:
    """A process that is ready (`ready()` holds) when the block starts and stopped after it.

    With `quiet`, its output goes to a temporary file, shown only if it fails to start;
    otherwise it shares this process's stdout and stderr.
    """
    with tempfile.TemporaryFile() as log:
        stdout, stderr = (log, subprocess.STDOUT) if quiet else (None, None)
        proc = subprocess.Popen(list(argv), stdout=stdout, stderr=stderr, cwd=cwd)
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"{what} did not start:\n{log.read().decode()}")
                time.sleep(0.05)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
