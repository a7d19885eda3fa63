"""The reading side of the Redis Streams broker: ids, entries → events, and the reader.

Every replica runs one reader task (XREAD BLOCK from the last id it saw) that turns entries
into events and dispatches them in stream order; the broker (redis.py) publishes, replays
and creates epochs, and reads this reader's position to replay up to it.

Epochs: each entry records the epoch it was written under, so the reader labels every event
truthfully. When the reader reconnects to a stream of a new epoch (Redis lost the stream),
every live subscriber gets an "epoch_changed" reset (`on_reset`).

Gaps: each entry carries `n`, its place in its epoch (a counter in "<stream>:seq" bumped
by the same script as the XADD). A reader that finds n not following the last n it read
knows that the entries between were trimmed before it read them (it was paused, cut off,
or slower than the publishers for longer than the history): it resets its live
subscribers ("history_expired") instead of skipping them silently. Entries written
without `n` (before this field existed) are read as before and checked against nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily, Metric
from redis.exceptions import RedisError

from cachewire.common import wirejson
from cachewire.hub.brokers.base import Dispatch, OnReset
from cachewire.hub.brokers.redis_link import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    COMMAND_TIMEOUT,
    LinkState,
    cancel_and_wait,
    follow_master,
    next_delay,
)
from cachewire.hub.events import Event, Position

log = logging.getLogger("cachewire.hub.redis")

BLOCK_MS = 5_000  # an idle XREAD returns this often (and refreshes the history size)
READ_COUNT = 1_000  # entries per XREAD

# --- pure helpers ---

# ASCII digits only ("²".isdigit() is true), and no longer than Redis's 64-bit parts.
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


def parse_stream_id(text: str) -> Position | None:
    """Parse a stream id "<ms>-<seq>" into (ms, seq); None when malformed."""
    match = _STREAM_ID.fullmatch(text)
    return None if match is None else (int(match[1]), int(match[2]))


def parse_event_id(event_id: str) -> tuple[str, Position] | None:
    """Parse an event id "<epoch>-<ms>-<seq>" into (epoch, (ms, seq)); None when malformed."""
    epoch, sep, rest = event_id.partition("-")
    pos = parse_stream_id(rest) if sep and epoch else None
    return None if pos is None else (epoch, pos)


def stream_id(pos: Position) -> str:
    return f"{pos[0]}-{pos[1]}"


_SEQ = re.compile(r"[0-9]{1,20}")


def entry_seq(fields: dict[str, str]) -> int | None:
    """An entry's place `n` in its epoch; None for entries written without one."""
    text = fields.get("n", "")
    return int(text) if _SEQ.fullmatch(text) else None


def seq_baseline(epoch: str, counter: str | None, last_entry: Any) -> int:
    """The `n` of the newest entry of `epoch`, as the publish script will continue it: the
    counter key's value, else the stream's last entry's `n` if it is of `epoch`, else 0."""
    if counter is not None and _SEQ.fullmatch(counter):
        return int(counter)
    if last_entry and last_entry[1].get("epoch") == epoch:
        return entry_seq(last_entry[1]) or 0
    return 0


def skipped_between(last_n: int | None, n: int | None) -> int | None:
    """How many entries were lost between two read one after the other: 0 when `n` follows
    `last_n` or either is unknown; -1 when the counter went back (how many is unknown)."""
    if last_n is None or n is None or n == last_n + 1:
        return 0
    return n - last_n - 1 if n > last_n else -1


def stream_id_before(pos: Position) -> Position:
    """The greatest stream id below `pos` (which is above 0-0): a reset's resume point
    right before the first entry read after a gap."""
    ms, seq = pos
    return (ms, seq - 1) if seq else (ms - 1, 2**64 - 1)


def event_from_entry(epoch: str, entry_id: str, fields: dict[str, str]) -> Event:
    """A stream entry → an Event; ValueError/KeyError when it is not one of ours."""
    pos = parse_stream_id(entry_id)
    if pos is None:
        raise ValueError(f"bad entry id {entry_id!r}")
    epoch = fields.get("epoch", epoch)
    return Event(
        f"{epoch}-{entry_id}",
        pos,
        fields["type"],
        fields.get("data", "null"),
        tuple(wirejson.loads(fields["keys"])) if "keys" in fields else (),
        tuple(wirejson.loads(fields["prefixes"])) if "prefixes" in fields else (),
        fields.get("flush") == "1",
        fields.get("traceparent", ""),
        fields.get("tracestate", ""),
        float(fields.get("published_at", "0")),
    )


# --- the reader ---

EnsureEpoch = Callable[[], Awaitable[str]]


class StreamReader:
    """This replica's reader of the stream: its position (`epoch`, `last`, `last_pos`), the
    link's up/down state, and the task that reads, dispatches and resets.

    `ensure_epoch` (the broker's) returns the stream's current epoch, creating one when the
    stream is gone; `follow` are the clients moved to a new master after a Sentinel failover.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        stream: str,
        history: int,
        ensure_epoch: EnsureEpoch,
        follow: Sequence[aioredis.Redis],
        rng: random.Random,
    ) -> None:
        self.client = client
        self.stream = stream
        self.seq_key = f"{stream}:seq"
        self._history = history
        self._ensure_epoch = ensure_epoch
        self._follow = follow
        self._rng = rng
        self.epoch = ""  # the reader's epoch: labels head_id, position, replay
        self.last = "0-0"  # the newest entry id this replica's reader dispatched
        self.last_pos: Position = (0, 0)
        self._last_n: int | None = None  # `n` of the newest entry read; None: unknown
        self.gaps = 0  # times the reader found entries trimmed before it read them
        self.skipped = 0  # entries so lost (as far as `n` tells)
        self._dead: set[str] = set()  # epochs replaced while this replica ran
        self._suspect: str | None = None  # an entry's unknown epoch: ask Redis which is current
        self.length = 0
        self._refreshed_at = 0.0
        self.progress = asyncio.Event()  # set (and replaced) after each read is dispatched
        self.link = LinkState("redis broker")
        self._dispatch: Dispatch | None = None
        self._on_reset: OnReset | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---

    async def start(self, dispatch: Dispatch, on_reset: OnReset | None = None) -> None:
        """Tries Redis once, then returns: connected, or down while the reader keeps trying."""
        self._dispatch, self._on_reset = dispatch, on_reset
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await self._sync()
        except (RedisError, OSError) as exc:
            self.link.set_down(exc)
        else:
            self.link.set_up()
            self._connected()
        self._task = asyncio.create_task(self._read_loop(), name="redis-reader")

    def _connected(self) -> None:
        log.info(
            "redis broker connected",
            extra={"stream": self.stream, "epoch": self.epoch, "head": self.head_id()},
        )

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        self._dispatch = self._on_reset = None
        self.link.up.clear()
        await self.client.aclose()

    def head_id(self) -> str:
        """Empty until Redis was reached once: no position is known yet."""
        return f"{self.epoch}-{self.last}" if self.epoch else ""

    async def _sync(self) -> None:
        """(Re)connect: learn the epoch; a new one means the stream was replaced."""
        epoch = await self._ensure_epoch()
        if not self.epoch:  # first connection: start after the newest entry
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xinfo_stream(self.stream)
                pipe.get(self.seq_key)
                info, counter = await pipe.execute()
            self.last = str(info["last-generated-id"])
            self.last_pos = parse_stream_id(self.last) or (0, 0)
            self._last_n = seq_baseline(epoch, counter, info.get("last-entry"))
            self.length = int(info["length"])
        elif epoch != self.epoch:
            # The stream we read was lost: read the new one from its start, skipping any
            # entries left from epochs already replaced; subscribers start over with it.
            log.warning(
                "redis stream was lost: events after the last one read may be missing; "
                "live subscribers and resumes from older ids get an epoch_changed reset",
                extra={"stream": self.stream, "old_epoch": self.epoch, "epoch": epoch},
            )
            self._dead.add(self.epoch)
            old, self.epoch = self.epoch, epoch
            self.last, self.last_pos, self._last_n = "0-0", (0, 0), 0
            if self._on_reset is not None:
                self._on_reset(
                    "epoch_changed",
                    f"the redis stream was lost (epoch {old!r} is now {epoch!r}): "
                    "events may be missing",
                )
        elif self._suspect is not None:  # an entry of an epoch replaced before we started
            self._dead.add(self._suspect)
        self._suspect = None
        self.epoch = epoch

    # --- reading ---

    async def _read_loop(self) -> None:
        attempt = 0
        while True:
            try:
                if not self.link.up.is_set() or self._suspect is not None:
                    first = not self.epoch
                    async with asyncio.timeout(COMMAND_TIMEOUT):
                        await self._sync()
                    if first:  # the hub started while Redis was down: reached it now
                        self._connected()
                        if self._on_reset is not None:
                            self._on_reset(
                                "epoch_changed",
                                "the hub reached redis only after this subscription began: "
                                "events may be missing",
                            )
                    self.link.set_up()
                    attempt = 0
                async with asyncio.timeout(BLOCK_MS / 1000 + COMMAND_TIMEOUT):
                    reply: Any = await self.client.xread(
                        {self.stream: self.last}, count=READ_COUNT, block=BLOCK_MS
                    )
                if reply:
                    self._handle(reply[0][1])
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self._refresh()
            except (RedisError, OSError) as exc:
                self.link.set_down(exc)
                await asyncio.sleep(next_delay(attempt, BACKOFF_BASE, BACKOFF_CAP, self._rng))
                attempt += 1
            except Exception:  # a bug: log it and read on, never end the reader silently
                log.exception("redis reader failed; reading on")
                await asyncio.sleep(next_delay(attempt, BACKOFF_BASE, BACKOFF_CAP, self._rng))
                attempt += 1

    def _handle(self, entries: Sequence[tuple[str, dict[str, str]]]) -> None:
        events: list[Event] = []
        for entry_id, fields in entries:
            epoch = fields.get("epoch", self.epoch)
            if epoch != self.epoch and epoch not in self._dead:
                # The stream was replaced under the reader (a deleted key): before reading
                # on, _sync asks Redis which epoch is current and moves to it.
                self._suspect = epoch
                break
            if epoch not in self._dead:
                n = entry_seq(fields)
                skipped = skipped_between(self._last_n, n)
                if skipped:
                    self._flush(events)
                    events = []
                    self._gap(skipped, entry_id)
                if n is not None:
                    self._last_n = n
            self.last = entry_id
            if epoch in self._dead:
                continue
            try:
                event = event_from_entry(epoch, entry_id, fields)
            except (KeyError, ValueError) as exc:
                log.error(
                    "skipped a stream entry that is not a cachewire event",
                    extra={"stream": self.stream, "entry": entry_id, "error": repr(exc)},
                )
                continue
            events.append(event)
        self._flush(events)
        self.progress.set()
        self.progress = asyncio.Event()

    def _flush(self, events: list[Event]) -> None:
        self.last_pos = parse_stream_id(self.last) or self.last_pos
        if events and self._dispatch is not None:
            self._dispatch(events)

    def _gap(self, skipped: int, entry_id: str) -> None:
        """Entries before `entry_id` were lost before this reader read them (skipped < 0:
        `n` went back, the history it read was rewritten, e.g. writes a failed master took
        with it): reset the live subscribers, who continue from right before `entry_id`."""
        self.gaps += 1
        self.skipped += max(skipped, 0)
        if skipped > 0:
            msg = "redis reader fell behind the stream's trimming: events were skipped"
            detail = (
                f"{skipped} events were trimmed from the redis stream before this hub replica "
                "read them (it fell behind by more than the history)"
            )
        else:
            msg = "redis reader found the stream's sequence going back: events may be missing"
            detail = (
                "the redis stream's history changed under this hub replica's reader (its "
                "sequence went back, e.g. writes lost in a failover): events may be missing"
            )
        log.warning(
            f"{msg}; live subscribers get a history_expired reset",
            extra={
                "stream": self.stream,
                "skipped": skipped if skipped > 0 else None,
                "after": f"{self.epoch}-{self.last}",
                "next": f"{self.epoch}-{entry_id}",
                "history": self._history,
            },
        )
        pos = parse_stream_id(entry_id)
        if pos is not None and pos > self.last_pos:
            self.last_pos = stream_id_before(pos)
            self.last = stream_id(self.last_pos)
        if self._on_reset is not None:
            self._on_reset("history_expired", detail)

    async def _refresh(self) -> None:
        """At most once a second: the history size, and where the master is (Sentinel)."""
        now = time.monotonic()
        if now - self._refreshed_at >= 1.0:
            self._refreshed_at = now
            self.length = int(await self.client.xlen(self.stream))
            for client in self._follow:
                await follow_master(client)

    def metrics(self) -> Iterator[Metric]:
        """The reader's gaps, for hub/metrics.py."""
        yield CounterMetricFamily(
            "cachewire_hub_redis_reader_gaps",
            "Times this replica's reader found stream entries trimmed before it read them "
            "(its live subscribers were reset)",
            value=self.gaps,
        )
        yield CounterMetricFamily(
            "cachewire_hub_redis_reader_skipped_events",
            "Stream entries trimmed before this replica's reader read them",
            value=self.skipped,
        )
