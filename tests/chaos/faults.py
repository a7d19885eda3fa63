"""The fault library: things a chaos scenario does to a running deployment.

- `Service`: a process that can be killed (SIGKILL), stopped and restarted on the same
  ports (hub, sidecar, redis-server, memcached): `kill9()`, `restart()`.
- `TcpProxy`: a loopback TCP proxy in front of a service that can `cut()` the link (close
  every connection and refuse new ones), `stall()` it (keep connections, move no bytes),
  `slow()` it (delay and fragment every chunk) and `heal()` it. With several upstreams it
  connects to the first that answers, like a Kubernetes Service in front of replicas. A
  `tap` sees every chunk, which is how the memcached recorder watches the sidecar's
  deletes.
- `ClockFile`: a libfaketime timestamp file; writing to it jumps the wall clock of the
  processes started with `faketime_env()` (their monotonic clock is left alone).

Proxies run on one asyncio loop in a background thread (`LoopThread`), so a scenario's
main thread may block (starting processes) without stalling the links.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from tests.servers import Proc, free_port

T = TypeVar("T")
Mode = Literal["pass", "stall", "slow", "cut"]
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


class LoopThread:
    """An asyncio loop in a daemon thread; `run(coro)` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Service:
    """A restartable process; `start` starts it on fixed ports and returns once it serves."""

    name: str
    start: Callable[[], Proc]
    proc: Proc | None = None
    restarts: int = 0
    downtime: list[float] = field(default_factory=list)  # seconds from kill to serving again
    _down_at: float | None = None

    def up(self) -> Service:
        self.proc = self.start()
        if self._down_at is not None:
            self.downtime.append(time.monotonic() - self._down_at)
            self._down_at = None
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self._down_at = time.monotonic()
        self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self._down_at = time.monotonic()
            self.proc.stop()

    def restart(self, *, kill: bool = True) -> None:
        self.kill9() if kill else self.stop()
        self.restarts += 1
        self.up()

    @property
    def port(self) -> int:
        assert self.proc is not None
        return self.proc.port

    def log(self) -> str:
        return self.proc.log() if self.proc else ""


class Tap(Protocol):
    """Sees the bytes of one proxied connection (called on the proxy's loop)."""

    def to_server(self, data: bytes) -> None: ...
    def to_client(self, data: bytes) -> None: ...


class TcpProxy:
    """127.0.0.1:port → the first of `upstreams` that accepts; faults on demand."""

    def __init__(
        self,
        loop: LoopThread,
        upstreams: Sequence[int],
        *,
        tap: Callable[[], Tap] | None = None,
        name: str = "proxy",
    ) -> None:
        self.loop = loop
        self.upstreams = list(upstreams)
        self.tap = tap
        self.name = name
        self.port = free_port()
        self.mode: Mode = "pass"
        self.slow_delay = 0.0
        self.connections = 0
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._next = 0
        loop.run(self._start())

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    # --- faults (called from any thread) ---

    def cut(self) -> None:
        """Close every connection; refuse new ones until healed."""
        self.loop.run(self._set("cut"))

    def stall(self) -> None:
        """Keep connections open but move no bytes until healed."""
        self.loop.run(self._set("stall"))

    def slow(self, delay: float) -> None:
        """Deliver every chunk `delay` seconds late, in small pieces."""
        self.slow_delay = delay
        self.loop.run(self._set("slow"))

    def heal(self) -> None:
        self.loop.run(self._set("pass"))

    def close(self) -> None:
        self.loop.run(self._close())

    async def _set(self, mode: Mode) -> None:
        assert self._flowing is not None
        self.mode = mode
        if mode == "stall":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == "cut":
            for writer in list(self._writers):
                writer.transport.abort()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    # --- plumbing ---

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        last: OSError | None = None
        for i in range(len(self.upstreams)):
            port = self.upstreams[(self._next + i) % len(self.upstreams)]
            try:
                conn = await asyncio.open_connection("127.0.0.1", port)
            except OSError as exc:
                last = exc
                continue
            self._next = (self._next + i + 1) % len(self.upstreams)
            return conn
        raise last or OSError("no upstream")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await self._connect_upstream()
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        tap = self.tap() if self.tap else None
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, tap.to_server if tap else None)),
            asyncio.create_task(self._pump(up_reader, writer, tap.to_client if tap else None)),
        ]
        with contextlib.suppress(Exception):
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        seen: Callable[[bytes], None] | None,
    ) -> None:
        assert self._flowing is not None
        while data := await src.read(65536):
            await self._flowing.wait()
            if self.mode == "slow":
                for i in range(0, len(data), 512):
                    await asyncio.sleep(self.slow_delay)
                    dst.write(data[i : i + 512])
                    await dst.drain()
            else:
                dst.write(data)
                await dst.drain()
            if seen is not None:
                seen(data)
        if dst.can_write_eof():
            dst.write_eof()


class ClockFile:
    """Jumps the wall clock of processes started with `env()` (libfaketime)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.path.write_text("+0\n")

    @staticmethod
    def available() -> bool:
        return FAKETIME_LIB.exists()

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(FAKETIME_LIB),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_CACHE_DURATION": "1",  # re-read the file every second, not every call
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def jump(self, seconds: int) -> None:
        self.offset += seconds
        self.path.write_text(f"{self.offset:+d}\n")
