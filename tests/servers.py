"""Real servers and processes for tests: redis-server, memcached, cachewire-hub, …

Every start waits on a fact (a port that answers, a line or endpoint that says ready),
never on a sleep; every process is stopped by the fixture that started it.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()


def free_port() -> int:
    """A port that binds now, chosen below the kernel's ephemeral range.

    A port the kernel hands out for `bind(0)` comes from the ephemeral range, where the
    source port of any outgoing connection made before the server binds can take it;
    picking below that range leaves only another test's pick as a rival.
    """
    low = max(1024, _EPHEMERAL_LOW - 12_000)
    for _ in range(200):
        port = random.randrange(low, _EPHEMERAL_LOW)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found below the ephemeral range")


def wait_for(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a fact until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5, context=context) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class Proc:
    """A started process and what it listens on."""

    popen: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)
    log_path: Path | None = None

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def _spawn(
    argv: Sequence[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    fd, log_name = tempfile.mkstemp(prefix="cachewire-test-", suffix=".log")
    popen = subprocess.Popen(
        list(argv), stdout=fd, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT
    )
    os.close(fd)
    return popen, Path(log_name)


def start_redis(
    port: int | None = None, *, persist_dir: Path | None = None, extra: Sequence[str] = ()
) -> Proc:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (make system-deps)")
    port = port or free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    if persist_dir is not None:
        args += ["--dir", str(persist_dir), "--appendonly", "yes", "--appendfsync", "always"]
    else:
        # Its own directory: nothing it might write (a replica's sync) lands in the repo.
        args += ["--dir", tempfile.mkdtemp(prefix="cachewire-redis-")]
    popen, log_path = _spawn([*args, *extra])
    proc = Proc(popen, {"redis": port}, log_path)
    wait_for(lambda: port_answers(port), what=f"redis-server on {port}")
    return proc


def start_memcached(port: int | None = None) -> Proc:
    exe = shutil.which("memcached")
    if exe is None:
        raise RuntimeError("memcached is not installed (make system-deps)")
    port = port or free_port()
    popen, log_path = _spawn([exe, "-p", str(port), "-l", "127.0.0.1", "-U", "0", "-u", "root"])
    proc = Proc(popen, {"memcached": port}, log_path)
    wait_for(lambda: port_answers(port), what=f"memcached on {port}")
    return proc


def start_hub(
    *args: str,
    env: dict[str, str] | None = None,
    grpc: bool = True,
    http_port: int | None = None,
    grpc_port: int | None = None,
    probe: str = "/readyz",
    exe: Path = BIN / "cachewire",
    tls_ca: ssl.SSLContext | None = None,
) -> Proc:
    """`cachewire hub` as a user runs it, on free ports; returns once `probe` answers 200.

    `exe` is the `cachewire` command to run (another install's, for the wheel test);
    `tls_ca`, a client context trusting its certificate: the probe goes over HTTPS."""
    http_port = http_port or free_port()
    argv = [str(exe), "hub", "--http-port", str(http_port)]
    if "--drain-delay" not in args and "CACHEWIRE_DRAIN_DELAY" not in (env or {}):
        argv += ["--drain-delay", "0", "--drain-window", "0"]  # SIGTERM stops at once
    ports = {"http": http_port}
    if grpc:
        grpc_port = grpc_port or free_port()
        argv += ["--grpc-port", str(grpc_port)]
        ports["grpc"] = grpc_port
    else:
        argv += ["--grpc-port", "off"]
    popen, log_path = _spawn([*argv, *args], env)
    proc = Proc(popen, ports, log_path)

    def ready() -> bool:
        if popen.poll() is not None:
            raise RuntimeError(f"cachewire-hub exited {popen.returncode}:\n{proc.log()}")
        scheme = "http" if tls_ca is None else "https"
        return http_ok(f"{scheme}://127.0.0.1:{http_port}{probe}", tls_ca) and (
            not grpc or port_answers(ports["grpc"])
        )

    try:
        wait_for(ready, timeout=20, what=f"cachewire-hub {probe}")
    except BaseException:
        proc.kill()  # not left running when it did not get ready
        raise
    return proc


def start_sidecar(
    *args: str,
    hub: Proc | None = None,
    topics: str | None = "user",
    env: dict[str, str] | None = None,
    fast_backoff: bool = True,
    probe: str = "/healthz",
    timeout: float = 20.0,
) -> Proc:
    """`cachewire sidecar` as a user runs it, on a free health port; returns once `probe`
    answers 200 and fails with the log if the process exits first.

    With `hub`, it subscribes to that hub's gRPC port for `topics` (`None`: pass them in
    `args`); `fast_backoff` reconnects within half a second, so a test never waits long.
    """
    health = free_port()
    argv = [str(BIN / "cachewire"), "sidecar", "--health-host", "127.0.0.1"]
    argv += ["--health-port", str(health)]
    if hub is not None:
        argv += ["--hub", f"127.0.0.1:{hub.ports['grpc']}"]
    if hub is not None and topics is not None:
        argv += ["--topics", topics]
    if fast_backoff:
        argv += ["--backoff-base", "0.05", "--backoff-cap", "0.5"]
    popen, log_path = _spawn([*argv, *args], env)
    proc = Proc(popen, {"health": health}, log_path)

    def ready() -> bool:
        if popen.poll() is not None:
            raise RuntimeError(f"cachewire-sidecar exited {popen.returncode}:\n{proc.log()}")
        return http_ok(f"http://127.0.0.1:{health}{probe}")

    try:
        wait_for(ready, timeout=timeout, what=f"cachewire-sidecar {probe}")
    except BaseException:
        proc.kill()  # not left running when it did not get ready
        raise
    return proc


async def wait_until(
    check: Callable[[], bool | Awaitable[bool]], within: float = 20.0, what: str = "condition"
) -> None:
    """The async `wait_for`: poll a fact (a plain or async predicate) without blocking the
    loop, for facts that have no event to await; fail with `what` after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if loop.time() >= deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


@contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


def start_redis_cluster(tmp: Path, primaries: int = 3) -> list[Proc]:
    """`primaries` redis-servers with --cluster-enabled yes, joined by `redis-cli --cluster
    create` (no replicas); returns once every node reports cluster_state:ok."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-cli is not installed (make system-deps)")
    nodes: list[Proc] = []
    try:
        for i in range(primaries):
            work = tmp / f"cluster-{i}"
            work.mkdir(parents=True, exist_ok=True)
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", str(work / "nodes.conf")]
            # The bus port explicitly: port + 10000, the default, may be taken.
            extra += ["--cluster-port", str(free_port()), "--dir", str(work)]
            nodes.append(start_redis(extra=extra))
        addrs = [f"127.0.0.1:{n.port}" for n in nodes]
        created = subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}")

        def ok(port: int) -> bool:
            out = subprocess.run(
                [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True
            ).stdout
            return "cluster_state:ok" in out

        for node in nodes:
            wait_for(lambda n=node: ok(n.port), timeout=30, what=f"cluster_state:ok on {node.port}")
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes
