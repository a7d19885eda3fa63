"""App-side library: keep an in-process cachetools cache invalidated by cachewire.

An `Invalidator` subscribes to the pod's sidecar relay (or to the hub directly: same
`cachewire.v1.Hub/Subscribe` protocol) and applies every invalidation to a cache under the
cache's lock, from a background thread (sync apps) or an asyncio task (async apps)::

    cache = cachetools.TTLCache(maxsize=10_000, ttl=3600)
    inv = Invalidator("127.0.0.1:7070", topics=["user"], cache=cache).start()  # a thread

    @inv.cached(key=lambda user_id: f"user:{user_id}")
    def load_user(user_id: int) -> dict[str, str]: ...

    # asyncio: `async with Invalidator(...) as inv:` runs it as a task of the running loop.

When its stream drops, resets, or stays silent longer than `max_staleness`, the cache is
cleared and `cached` stops storing until the stream is back; it then resumes after the
last id it applied, with capped exponential backoff.

The cache itself is held by a `CacheGuard` (sidecar.guard, re-exported here): it applies
the events under the cache's lock and keeps fills from outliving invalidations, the race
`cachetools.cached()` leaves open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import grpc

from cachewire.sidecar import telemetry
from cachewire.sidecar._backoff import next_delay
from cachewire.sidecar.guard import CacheGuard, EventLike
from cachewire.v1 import hub_pb2, hub_pb2_grpc

__all__ = [
    "MAX_TOPIC_BYTES",
    "CacheGuard",
    "ClientStats",
    "EventLike",
    "Invalidator",
    "matches",
    "parse_topics",
]

log = logging.getLogger("cachewire.client")

P = ParamSpec("P")
R = TypeVar("R")
MAX_TOPIC_BYTES = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 64 << 20),)


# --- topics (Plasma's rule: topic "a" receives "a", "a:b", "a:b:c") ---


def parse_topics(raw: Iterable[str]) -> frozenset[str]:
    """Validate topics as the hub does; raise ValueError naming the first bad one."""
    topics = frozenset(raw)
    if not topics:
        raise ValueError("at least one topic is required")
    for topic in topics:
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic {topic!r} must be a non-empty string")
        if len(topic.encode()) > MAX_TOPIC_BYTES or _CONTROL.search(topic):
            raise ValueError(f"topic {topic!r} is too long or contains a control character")
        if "" in topic.split(":"):
            raise ValueError(f"topic {topic!r} has an empty segment")
    return topics


def matches(topics: frozenset[str], event_type: str) -> bool:
    """Whether an event of this type reaches a subscriber of these topics."""
    parts = event_type.split(":")
    return any(":".join(parts[:i]) in topics for i in range(1, len(parts) + 1))


# --- waiting points, for sync and async callers alike ---


class _Signal:
    """A state change that threads (Condition) and event loops (futures) can wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()
            futures, self._futures = self._futures, []
        for loop, future in futures:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_resolve, future)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    async def wait_async(self, predicate: Callable[[], bool]) -> None:
        """Wait until the predicate holds; bound it with `asyncio.timeout`."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if predicate():
                    return
                future = loop.create_future()
                self._futures.append((loop, future))
            await future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# --- the subscriber ---


@dataclass
class ClientStats:
    connects: int = 0  # streams that delivered their first message
    drops: int = 0  # streams that ended, failed or went silent
    resets: int = 0  # Reset messages received
    applied: int = 0  # events applied


class Invalidator:
    """Subscribes to `target` and keeps `cache` invalidated; see the module docstring."""

    def __init__(
        self,
        target: str,
        topics: Iterable[str],
        cache: MutableMapping[Any, Any],
        lock: Any = None,
        key_fn: Callable[[str], Hashable] | None = None,
        *,
        max_staleness: float = 5.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
    ) -> None:
        if not target:
            raise ValueError("target must be HOST:PORT of the sidecar relay or the hub")
        if max_staleness <= 0:
            raise ValueError("max_staleness must be positive")
        self.target = target
        self.topics = parse_topics(topics)
        self.guard = CacheGuard(cache, lock, key_fn)
        self.guard.storing = False  # until the stream is up
        self.max_staleness = max_staleness
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.position = ""  # the id to resume after
        self.connected = False
        self.stats = ClientStats()
        self._seen: dict[str, None] = {}  # recent applied ids, for wait_applied
        self._signal = _Signal()
        self._cleared_at = -float("inf")
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def cache(self) -> MutableMapping[Any, Any]:
        return self.guard.cache

    @property
    def lock(self) -> Any:
        """The lock that guards the cache: hold it when touching the cache directly."""
        return self.guard.lock

    def cached(self, *, key: Callable[P, Hashable]) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Race-safe caching decorator on this cache; see CacheGuard.cached."""
        return self.guard.cached(key=key)

    # --- the stream loop (runs in the thread's own loop, or as a task) ---

    async def run(self) -> None:
        """Keep the cache invalidated until cancelled; never raises otherwise."""
        attempt = 0
        try:
            while True:
                reason = await self._stream_once()
                if self.connected:
                    attempt = 0
                self._dropped(reason)
                delay = next_delay(attempt, self.backoff_base, self.backoff_cap)
                # Wake up in time to clear again if the outage outlasts max_staleness.
                due = self._cleared_at + self.max_staleness - time.monotonic()
                await asyncio.sleep(max(0.0, min(delay, due)))
                attempt += 1
        finally:
            self.connected = False
            self.guard.storing = False
            self.guard.clear()  # nobody invalidates this cache any more
            self._signal.notify()

    async def _stream_once(self) -> str:
        """Subscribe, apply until the stream ends; return why it ended."""
        request = hub_pb2.SubscribeRequest(topics=sorted(self.topics), resume_from=self.position)
        loop = asyncio.get_running_loop()
        try:
            async with grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS) as ch:
                stub = hub_pb2_grpc.HubStub(ch)  # type: ignore[no-untyped-call]
                call = stub.Subscribe(request)
                async with asyncio.timeout(self.max_staleness) as deadline:
                    async for message in call:
                        deadline.reschedule(loop.time() + self.max_staleness)
                        self._on_message(message)
            return "the stream ended"
        except TimeoutError:
            return f"no message for {self.max_staleness}s"
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        except Exception as exc:  # never let the app's background worker die
            log.exception("cachewire subscriber error", extra={"target": self.target})
            return f"error: {exc!r}"

    def _on_message(self, message: hub_pb2.SubscribeResponse) -> None:
        kind = message.WhichOneof("message")
        if kind == "events":
            events = message.events.events
            with telemetry.client_apply_span("cachetools", events):  # no-op with tracing off
                self.guard.apply(events)
            self.stats.applied += len(events)
            for event in events:
                self._remember(event.id)
            if events:
                self.position = events[-1].id
        elif kind == "heartbeat":
            hw = message.heartbeat.high_water_id
            if not self.position:  # a fresh stream: everything up to hw was delivered
                self.position = hw
            self._remember(hw)
        elif kind == "reset":
            reset = message.reset
            self.guard.clear()
            self.stats.resets += 1
            log.warning(
                "cachewire reset: cache cleared",
                extra={
                    "target": self.target,
                    "reason": hub_pb2.ResetReason.Name(reset.reason),
                    "detail": reset.detail,
                },
            )
            if reset.reason != hub_pb2.RESET_REASON_SLOW_CONSUMER and reset.resume_from:
                self.position = reset.resume_from
        if not self.connected:
            self.connected = True
            self.guard.storing = True
            self.stats.connects += 1
            log.info(
                "cachewire stream up", extra={"target": self.target, "resume_from": self.position}
            )
        self._signal.notify()

    def _remember(self, event_id: str) -> None:
        if event_id:
            self._seen[event_id] = None
            if len(self._seen) > 10_000:
                del self._seen[next(iter(self._seen))]

    def _dropped(self, reason: str) -> None:
        """Invalidations may be missed from now on: clear, and stop storing fills."""
        was_connected, self.connected = self.connected, False
        self.stats.drops += 1
        self.guard.storing = False
        now = time.monotonic()
        clear = was_connected or now - self._cleared_at >= self.max_staleness
        if clear:
            self.guard.clear()
            self._cleared_at = now
        (log.warning if was_connected else log.info)(
            "cachewire stream down, reconnecting",
            extra={
                "target": self.target,
                "reason": reason,
                "resume_from": self.position,
                "cache_cleared": clear,
            },
        )
        self._signal.notify()

    # --- thread mode (sync apps) ---

    def start(self) -> Invalidator:
        """Run in a background daemon thread with its own event loop and gRPC channel."""
        if self._thread is not None or self._task is not None:
            raise RuntimeError("this Invalidator is already started")
        ready = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self.run()

        self._thread = threading.Thread(
            target=asyncio.run,
            args=(main(),),
            daemon=True,
            name=f"cachewire-invalidator-{self.target}",
        )
        self._thread.start()
        ready.wait()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; the cache is cleared (nothing invalidates it any more)."""
        if self._thread is None or self._loop is None or self._task is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout)

    def __enter__(self) -> Invalidator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- task mode (asyncio apps) ---

    def start_task(self) -> asyncio.Task[None]:
        """Run as a task of the running event loop."""
        if self._thread is not None or self._task is not None:
            raise RuntimeError("this Invalidator is already started")
        self._task = asyncio.get_running_loop().create_task(
            self.run(), name=f"cachewire-invalidator-{self.target}"
        )
        return self._task

    async def aclose(self) -> None:
        if self._task is not None and self._thread is None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def __aenter__(self) -> Invalidator:
        self.start_task()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- waiting points: the sync ones block (call them from threads); the async ones
    # --- wait on the caller's loop and are bounded with `asyncio.timeout`.

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        return self._signal.wait(predicate, timeout)

    async def wait_until_async(self, predicate: Callable[[], bool]) -> None:
        await self._signal.wait_async(predicate)

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.wait_until(lambda: self.connected, timeout)

    async def wait_connected_async(self) -> None:
        await self.wait_until_async(lambda: self.connected)

    def wait_applied(self, event_id: str, timeout: float = 10.0) -> bool:
        """True once the event with this id (of our topics) has been applied to the cache,
        or the stream reported it as its high-water mark."""
        return self.wait_until(lambda: event_id in self._seen, timeout)

    async def wait_applied_async(self, event_id: str) -> None:
        await self.wait_until_async(lambda: event_id in self._seen)
