"""The invariant checker: did every guarded cache drop every invalidated entry in time?

It records, independently of the sidecar's own bookkeeping:
- the database writes (`Database`: a key's versions and when each was written), and per
  write the publication of its invalidation (`Publication`: when the attempt that the hub
  accepted started, and the event id);
- per guarded cache (`CacheLog`), when each key left it and when it was flushed, as the
  cache itself saw it: memcached's replies to the sidecar's deletes/`flush_all` (read by a
  tap on the link), the app cache's own `__delitem__`/`clear`, and a restart of the cache
  (an empty cache covers everything);
- what readers read (`StaleRead`: a hit on a version older than the database's).

The verdict (`Checker.verdict`) holds each invalidation against each cache: it is covered
by the first delete of its key, or flush, after the write; its latency is that time minus
the publication. A violation is an invalidation never covered, or covered later than the
bound, or a read of a value stale for longer than the bound.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cachetools


def now() -> float:
    return time.monotonic()


class Database:
    """The source of truth: key → version (1, 2, …), and when each version was written."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.versions: dict[str, int] = defaultdict(int)
        self.written: dict[tuple[str, int], float] = {}

    def write(self, key: str) -> tuple[int, float]:
        with self._lock:
            self.versions[key] += 1
            version, at = self.versions[key], now()
            self.written[(key, version)] = at
            return version, at

    def read(self, key: str) -> int:
        with self._lock:
            return self.versions[key]


@dataclass(frozen=True, slots=True)
class Publication:
    key: str
    version: int
    written_at: float
    sent_at: float  # start of the attempt the hub accepted
    event_id: str
    attempts: int
    via: str


@dataclass
class CacheLog:
    """When keys left one cache, and when it was flushed (or restarted: empty)."""

    name: str
    deletes: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    flushes: list[tuple[float, str]] = field(default_factory=list)

    def deleted(self, key: str, at: float | None = None) -> None:
        self.deletes[key].append(now() if at is None else at)

    def flushed(self, cause: str, at: float | None = None) -> None:
        self.flushes.append((now() if at is None else at, cause))

    def covered_at(self, key: str, after: float) -> tuple[float, str] | None:
        """The first delete of `key` or flush at or after `after`: (time, "delete"|"flush")."""
        best: tuple[float, str] | None = None
        times = sorted(self.deletes.get(key, ()))
        i = bisect.bisect_left(times, after)
        if i < len(times):
            best = (times[i], "delete")
        flush_times = sorted(t for t, _ in self.flushes)
        j = bisect.bisect_left(flush_times, after)
        if j < len(flush_times) and (best is None or flush_times[j] < best[0]):
            best = (flush_times[j], "flush")
        return best


class RecordingCache(cachetools.Cache[str, int]):
    """An app's in-process cache that logs every invalidation and clear into a CacheLog.

    The guard invalidates a key with `pop(key, default)`, present or not: that call is the
    moment the key is known to be gone."""

    def __init__(self, log: CacheLog) -> None:
        super().__init__(maxsize=1_000_000)
        self.log = log
        self._clearing = False

    def pop(self, key: str, default: Any = None) -> Any:
        value = super().pop(key, default)
        if not self._clearing:
            self.log.deleted(key)
        return value

    def clear(self) -> None:
        self._clearing = True
        try:
            super().clear()
        finally:
            self._clearing = False
        self.log.flushed("app-clear")


CONFIRMS = {"delete": (b"DELETED", b"NOT_FOUND"), "md": (b"HD", b"NF")}  # the key is gone


class MemcachedTap:
    """Reads one sidecar↔memcached connection: a delete or `flush_all` counts when memcached
    answers it, in order. Classic `delete` gets one reply line (DELETED/NOT_FOUND); the
    sidecar's quiet meta deletes (`md <key> q` … `mn`) are confirmed together by `MN`,
    each answered only when the key was not there (`NF`, gone too) or on an error, which
    fails the whole batch (the sidecar retries it): then none of them counts."""

    def __init__(self, log: CacheLog) -> None:
        self.log = log
        self._out = b""
        self._in = b""
        self._sent: list[tuple[str, str]] = []
        self._quiet_failed = False  # an error reply came for the quiet batch being read

    def to_server(self, data: bytes) -> None:
        self._out += data
        *lines, self._out = self._out.split(b"\r\n")
        for line in lines:
            parts = line.split()
            if parts[:1] == [b"delete"] and len(parts) >= 2:
                self._sent.append(("delete", parts[1].decode(errors="replace")))
            elif parts[:1] == [b"md"] and len(parts) >= 2 and b"q" in parts[2:]:
                self._sent.append(("quiet", parts[1].decode(errors="replace")))
            elif parts[:1] == [b"md"] and len(parts) >= 2:
                self._sent.append(("md", parts[1].decode(errors="replace")))
            elif parts[:1] == [b"mn"]:
                self._sent.append(("mn", ""))
            elif parts[:1] == [b"flush_all"]:
                self._sent.append(("flush", ""))
            elif parts:
                self._sent.append(("other", ""))

    def to_client(self, data: bytes) -> None:
        self._in += data
        *lines, self._in = self._in.split(b"\r\n")
        for line in lines:
            if self._sent and self._sent[0][0] == "quiet":
                self._quiet_reply(line)
                continue
            if not self._sent:
                continue
            kind, key = self._sent.pop(0)
            if line in CONFIRMS.get(kind, ()):
                self.log.deleted(key)
            elif kind == "flush" and line == b"OK":
                self.log.flushed("flush_all")

    def _quiet_reply(self, line: bytes) -> None:
        if line == b"NF":
            return  # a key that was not there: gone, confirmed with the rest by MN
        if line != b"MN":
            self._quiet_failed = True  # an error: the sidecar fails and retries the batch
            return
        failed, self._quiet_failed = self._quiet_failed, False
        while self._sent:
            kind, key = self._sent.pop(0)
            if kind == "mn":
                return
            if kind == "quiet" and not failed:
                self.log.deleted(key)


@dataclass(frozen=True, slots=True)
class StaleRead:
    cache: str
    key: str
    version: int
    read_at: float


@dataclass
class Figures:
    """One scenario's row of the figures table."""

    scenario: str
    published: int = 0
    checks: int = 0  # invalidations times guarded caches
    deleted: int = 0
    flushed: int = 0
    violations: int = 0
    p50: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    faults: int = 0
    flushes: int = 0
    retries: int = 0
    stale_reads: int = 0  # hits on an older version, all within the bound
    bound: float = 0.0
    details: list[str] = field(default_factory=list)

    HEADER = (
        "| scenario | published | checks | deleted | covered by a flush | violations "
        "| p50 ms | p99 ms | max ms | faults | flushes | flushes/fault | bound s |"
    )

    def row(self) -> str:
        per_fault = f"{self.flushes / self.faults:.1f}" if self.faults else "—"
        return (
            f"| {self.scenario} | {self.published} | {self.checks} | {self.deleted} "
            f"| {self.flushed} | {self.violations} | {self.p50 * 1000:.0f} "
            f"| {self.p99 * 1000:.0f} | {self.max * 1000:.0f} | {self.faults} | {self.flushes} "
            f"| {per_fault} | {self.bound:.1f} |"
        )


def table(rows: Iterable[Figures]) -> str:
    lines = [Figures.HEADER, "| " + " | ".join(["---"] * 13) + " |"]
    return "\n".join([*lines, *(r.row() for r in rows)])


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Checker:
    def __init__(self) -> None:
        self.db = Database()
        self.caches: dict[str, CacheLog] = {}
        self.publications: list[Publication] = []
        self.stale_reads: list[StaleRead] = []
        self.faults: list[tuple[float, str]] = []
        self.started_at = now()

    def cache(self, name: str) -> CacheLog:
        return self.caches.setdefault(name, CacheLog(name))

    def fault(self, what: str) -> None:
        self.faults.append((now(), what))

    def read(self, cache: str, key: str, version: int, read_at: float) -> None:
        """A reader's hit: remembered when older than the database at the time of the read."""
        if version < self.db.read(key):
            self.stale_reads.append(StaleRead(cache, key, version, read_at))

    def verdict(self, scenario: str, bound: float) -> Figures:
        fig = Figures(scenario, published=len(self.publications), bound=bound)
        fig.faults = len(self.faults)
        fig.retries = sum(1 for p in self.publications if p.attempts > 1)
        by_version = {(p.key, p.version): p for p in self.publications}
        latencies: list[float] = []
        for log in self.caches.values():
            fig.flushes += sum(
                1 for t, cause in log.flushes if t >= self.started_at and cause != "restart"
            )
            for pub in self.publications:
                fig.checks += 1
                cover = log.covered_at(pub.key, pub.written_at)
                if cover is None:
                    fig.violations += 1
                    fig.details.append(f"{log.name}: {pub} never covered")
                    continue
                at, how = cover
                latency = max(0.0, at - pub.sent_at)
                latencies.append(latency)
                if how == "delete":
                    fig.deleted += 1
                else:
                    fig.flushed += 1
                if latency > bound:
                    fig.violations += 1
                    fig.details.append(f"{log.name}: {pub} covered by a {how} after {latency:.3f}s")
        for stale in self.stale_reads:
            newer = by_version.get((stale.key, stale.version + 1))
            if newer is None or stale.read_at <= newer.sent_at:
                continue  # its invalidation was not yet published: not stale by the promise
            fig.stale_reads += 1
            age = stale.read_at - newer.sent_at
            if age > bound:
                fig.violations += 1
                fig.details.append(f"{stale}: read {age:.3f}s after {newer}")
        if fig.violations:  # when the faults were, to read the violations against
            fig.details.insert(0, f"faults: {[(round(t, 3), what) for t, what in self.faults]}")
        fig.p50, fig.p99 = quantile(latencies, 0.5), quantile(latencies, 0.99)
        fig.max = max(latencies, default=0.0)
        return fig
