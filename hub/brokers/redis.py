"""The Redis Streams broker: hub replicas share one stream; ids are "<epoch>-<ms>-<seq>".

Publishing is an XADD (approximate MAXLEN = history) run by a Lua script that first checks
the stream's epoch, so a batch is atomic, its ids are consecutive, and nothing is ever
appended under an epoch that no longer names the stream. Publishing does not dispatch:
every replica, the publishing one included, runs a reader task (XREAD BLOCK from the last
id it saw) that turns entries into events and dispatches them in stream order.

The epoch is a random token in the key "<stream>:epoch". When Redis loses the stream
(restart without persistence, a deleted key), the next client to notice writes a new
epoch; resumes from ids of the old epoch then get an "epoch_changed" reset, and so does
every live subscriber of a replica whose reader moves to the new epoch (`on_reset`): what
was appended but not yet read when the stream was lost is gone. Each entry also records
the epoch it was written under, so a reader labels every event truthfully.

Gaps: each entry carries `n`, its place in its epoch (a counter in "<stream>:seq" bumped
by the same script as the XADD). A reader that finds n not following the last n it read
knows that the entries between were trimmed before it read them (it was paused, cut off,
or slower than the publishers for longer than the history): it resets its live
subscribers ("history_expired") instead of skipping them silently. Entries written
without `n` (before this field existed) are read as before and checked against nothing.

Connections (URLs, Sentinel, backoff, link state) are in redis_link.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from redis.exceptions import RedisError

from hub.brokers.base import Dispatch, OnReset, Replay
from hub.brokers.redis_link import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    COMMAND_TIMEOUT,
    LinkState,
    cancel_and_wait,
    connect,
    follow_master,
    next_delay,
)
from hub.errors import Unavailable
from hub.events import Draft, Event, Position
from hub.settings import HubSettings

log = logging.getLogger("cachewire.hub.redis")

BLOCK_MS = 5_000  # an idle XREAD returns this often (and refreshes the history size)
READ_COUNT = 1_000  # entries per XREAD
REPLAY_WAIT = 5.0  # how long a resume waits for Redis, or for this replica's reader

# KEYS: stream, epoch key, seq key. ARGV: epoch, maxlen, then per event: field count, fields…
# `n` continues the epoch's counter; without the counter key (deleted, or written by an older
# hub) it continues from the stream's last entry when that is of this epoch, else from 0.
# `seq_baseline` in Python mirrors that rule.
PUBLISH_LUA = """
local epoch = redis.call('GET', KEYS[2])
if epoch ~= ARGV[1] or redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, epoch or ''}
end
local seq = redis.call('GET', KEYS[3])
local n = seq and tonumber(seq)
if not n then
  n = 0
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  if last then
    local f, e, m = last[2], nil, nil
    for j = 1, #f - 1, 2 do
      if f[j] == 'epoch' then e = f[j + 1] elseif f[j] == 'n' then m = tonumber(f[j + 1]) end
    end
    if e == ARGV[1] and m then n = m end
  end
end
local ids = {1}
local i = 3
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  n = n + 1
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
                             'epoch', ARGV[1], 'n', n, unpack(ARGV, i + 1, i + count))
  i = i + count + 1
end
redis.call('SET', KEYS[3], n)
return ids
"""

# KEYS: stream, epoch key, seq key. ARGV: a fresh epoch, used when the stream or its epoch
# is gone. An empty stream is created with the epoch (XGROUP … MKSTREAM), so that "the
# stream key is missing" always means "the stream was lost". A new epoch counts from 1.
ENSURE_LUA = """
local epoch = redis.call('GET', KEYS[2])
local exists = redis.call('EXISTS', KEYS[1])
if epoch and exists == 1 then return {epoch, 0} end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
if exists == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], 'cachewire-init', '$', 'MKSTREAM')
  redis.call('XGROUP', 'DESTROY', KEYS[1], 'cachewire-init')
end
return {ARGV[1], 1}
"""


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


def lost_after(pos: Position, info: dict[str, Any]) -> bool:
    """Whether entries after `pos` were trimmed or deleted, from XINFO STREAM (Redis ≥ 7).

    Trimming does not move max-deleted-entry-id; it removes the oldest entries. When some
    were removed and `pos` is older than the first entry left, what followed `pos` may be
    gone: say so (needlessly only when `pos` was exactly the last entry trimmed).
    """

    def sid(value: Any) -> Position:
        return (parse_stream_id(str(value)) if value else None) or (0, 0)

    if sid(info.get("max-deleted-entry-id")) > pos:
        return True
    removed = int(info.get("entries-added", 0)) > int(info["length"])
    first = info.get("first-entry")
    if not removed or pos >= sid(info["last-generated-id"]):
        return False
    return first is None or pos < sid(first[0])


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


def entry_fields(draft: Draft) -> list[str]:
    """A draft → the field/value pairs of its stream entry (empty optional fields left out)."""
    fields = ["type", draft.type, "data", draft.data_json, "published_at", repr(draft.published_at)]
    if draft.keys:
        fields += ["keys", json.dumps(draft.keys, ensure_ascii=False)]
    if draft.prefixes:
        fields += ["prefixes", json.dumps(draft.prefixes, ensure_ascii=False)]
    if draft.flush:
        fields += ["flush", "1"]
    if draft.traceparent:
        fields += ["traceparent", draft.traceparent, "tracestate", draft.tracestate]
    return fields


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
        tuple(json.loads(fields["keys"])) if "keys" in fields else (),
        tuple(json.loads(fields["prefixes"])) if "prefixes" in fields else (),
        fields.get("flush") == "1",
        fields.get("traceparent", ""),
        fields.get("tracestate", ""),
        float(fields.get("published_at", "0")),
    )


# --- the broker ---


class RedisBroker:
    def __init__(
        self,
        settings: HubSettings,
        rng: random.Random | None = None,
        replay_wait: float = REPLAY_WAIT,
    ) -> None:
        self.stream = settings.redis_stream
        self.epoch_key = f"{settings.redis_stream}:epoch"
        self.seq_key = f"{settings.redis_stream}:seq"
        self._url = settings.redis_url
        self._maxlen = settings.history
        self._rng = rng or random.Random()
        self._replay_wait = replay_wait
        self.epoch = ""  # the reader's epoch: labels head_id, position, replay
        self._write_epoch = ""  # the epoch publishes check against
        self._last = "0-0"  # the newest entry id this replica's reader dispatched
        self._last_pos: Position = (0, 0)
        self._last_n: int | None = None  # `n` of the newest entry read; None: unknown
        self.gaps = 0  # times the reader found entries trimmed before it read them
        self.skipped = 0  # entries so lost (as far as `n` tells)
        self._dead: set[str] = set()  # epochs replaced while this replica ran
        self._suspect: str | None = None  # an entry's unknown epoch: ask Redis which is current
        self._length = 0
        self._refreshed_at = 0.0
        self._progress = asyncio.Event()
        self._link = LinkState("redis broker")
        self._dispatch: Dispatch | None = None
        self._on_reset: OnReset | None = None
        self._task: asyncio.Task[None] | None = None
        self._writer = connect(self._url, retries=1)
        self._reader = connect(self._url, retries=0)
        self._publish_script = self._writer.register_script(PUBLISH_LUA)
        self._ensure_script = self._writer.register_script(ENSURE_LUA)

    # --- lifecycle ---

    async def start(self, dispatch: Dispatch, on_reset: OnReset | None = None) -> None:
        """Tries Redis once, then returns: connected, or not ready (publish 503, /readyz 503)
        while the reader keeps trying with backoff. A hub that waited for Redis before it
        listens would be restarted in a loop by a Kubernetes startup probe."""
        self._dispatch, self._on_reset = dispatch, on_reset
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await self._sync()
        except (RedisError, OSError) as exc:
            self._link.set_down(exc)
        else:
            self._link.set_up()
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
        self._link.up.clear()
        await self._reader.aclose()
        await self._writer.aclose()

    async def _ensure_epoch(self) -> str:
        reply = await self._ensure_script(
            keys=[self.stream, self.epoch_key, self.seq_key], args=[secrets.token_hex(4)]
        )
        epoch, created = str(reply[0]), bool(reply[1])
        if created:
            log.info(
                "redis stream epoch created",
                extra={"stream": self.stream, "epoch": epoch, "previous": self.epoch or None},
            )
        self._write_epoch = epoch
        return epoch

    async def _sync(self) -> None:
        """(Re)connect: learn the epoch; a new one means the stream was replaced."""
        epoch = await self._ensure_epoch()
        if not self.epoch:  # first connection: start after the newest entry
            async with self._reader.pipeline(transaction=True) as pipe:
                pipe.xinfo_stream(self.stream)
                pipe.get(self.seq_key)
                info, counter = await pipe.execute()
            self._last = str(info["last-generated-id"])
            self._last_pos = parse_stream_id(self._last) or (0, 0)
            self._last_n = seq_baseline(epoch, counter, info.get("last-entry"))
            self._length = int(info["length"])
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
            self._last, self._last_pos, self._last_n = "0-0", (0, 0), 0
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

    # --- the reader ---

    async def _read_loop(self) -> None:
        attempt = 0
        while True:
            try:
                if not self._link.up.is_set() or self._suspect is not None:
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
                    self._link.set_up()
                    attempt = 0
                async with asyncio.timeout(BLOCK_MS / 1000 + COMMAND_TIMEOUT):
                    reply: Any = await self._reader.xread(
                        {self.stream: self._last}, count=READ_COUNT, block=BLOCK_MS
                    )
                if reply:
                    self._handle(reply[0][1])
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self._refresh()
            except (RedisError, OSError) as exc:
                self._link.set_down(exc)
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
            self._last = entry_id
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
        self._progress.set()
        self._progress = asyncio.Event()

    def _flush(self, events: list[Event]) -> None:
        self._last_pos = parse_stream_id(self._last) or self._last_pos
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
                "after": f"{self.epoch}-{self._last}",
                "next": f"{self.epoch}-{entry_id}",
                "history": self._maxlen,
            },
        )
        pos = parse_stream_id(entry_id)
        if pos is not None and pos > self._last_pos:
            self._last_pos = stream_id_before(pos)
            self._last = stream_id(self._last_pos)
        if self._on_reset is not None:
            self._on_reset("history_expired", detail)

    async def _refresh(self) -> None:
        """At most once a second: the history size, and where the master is (Sentinel)."""
        now = time.monotonic()
        if now - self._refreshed_at >= 1.0:
            self._refreshed_at = now
            self._length = int(await self._reader.xlen(self.stream))
            await follow_master(self._writer)
            await follow_master(self._reader)

    # --- the Broker protocol ---

    async def publish(self, drafts: Sequence[Draft]) -> list[Event]:
        if not self.epoch:  # the reader would not know where to start: it would skip these
            raise Unavailable("redis is unavailable, nothing was published: not reached yet")
        args: list[str | int] = [self._maxlen]
        for draft in drafts:
            fields = entry_fields(draft)
            args += [len(fields), *fields]
        try:
            for _ in range(3):
                epoch = self._write_epoch
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    reply = await self._publish_script(
                        keys=[self.stream, self.epoch_key, self.seq_key],
                        args=[epoch, *args],
                    )
                if reply[0] == 1:
                    return [
                        Event.from_draft(d, f"{epoch}-{i}", parse_stream_id(i) or (0, 0))
                        for d, i in zip(drafts, reply[1:], strict=True)
                    ]
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self._ensure_epoch()  # the stream was lost or replaced: adopt it
        except (RedisError, OSError) as exc:
            log.debug("publish failed", extra={"error": repr(exc)})
            raise Unavailable(f"redis is unavailable, nothing was published: {exc}") from None
        raise Unavailable("the redis stream keeps changing epochs; nothing was published")

    async def replay(self, after_id: str) -> Replay:
        parsed = parse_event_id(after_id)
        if parsed is None:
            return Replay(reset="unknown_id", detail=f"malformed event id {after_id[:80]!r}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._replay_wait):  # not wait_for: see connect()
                await self._link.up.wait()
        if not self._link.up.is_set():
            return Replay(
                reset="history_expired", detail="redis is unavailable, the history cannot be read"
            )
        epoch, pos = parsed
        if epoch != self.epoch:
            return Replay(reset="epoch_changed", detail=f"epoch {epoch!r} is not {self.epoch!r}")
        try:
            if pos > self._last_pos and not await self._catch_up(pos):
                return Replay(reset="unknown_id", detail=f"event id {after_id!r} is in the future")
            head = self._last
            async with (
                asyncio.timeout(COMMAND_TIMEOUT),
                self._reader.pipeline(transaction=True) as pipe,
            ):
                pipe.xrange(self.stream, "(" + stream_id(pos), head)
                pipe.xinfo_stream(self.stream)
                entries, info = await pipe.execute()
        except (RedisError, OSError, Unavailable) as exc:
            return Replay(reset="history_expired", detail=f"the history cannot be read now: {exc}")
        if epoch != self.epoch:  # the stream was replaced while we waited
            return Replay(reset="epoch_changed", detail=f"epoch {epoch!r} is not {self.epoch!r}")
        if lost_after(pos, info):
            return Replay(reset="history_expired", detail=f"event id {after_id!r} left history")
        events = []
        for entry_id, fields in entries:
            if fields.get("epoch", epoch) == epoch:
                with contextlib.suppress(KeyError, ValueError):
                    events.append(event_from_entry(epoch, entry_id, fields))
        return Replay(events=events)

    async def _catch_up(self, pos: Position) -> bool:
        """An id ahead of this replica's reader: wait for it if Redis has it already."""
        async with asyncio.timeout(COMMAND_TIMEOUT):
            info = await self._reader.xinfo_stream(self.stream)
        if pos > (parse_stream_id(str(info["last-generated-id"])) or (0, 0)):
            return False
        deadline = time.monotonic() + self._replay_wait
        while self._last_pos < pos:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable("this replica's reader is behind the stream")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._progress.wait()
        return True

    def position(self, event_id: str) -> Position | None:
        parsed = parse_event_id(event_id)
        if parsed is None or parsed[0] != self.epoch:
            return None
        return parsed[1]

    def head_id(self) -> str:
        """Empty until Redis was reached once: no position is known yet."""
        return f"{self.epoch}-{self._last}" if self.epoch else ""

    def history_size(self) -> int:
        return self._length

    def ready(self) -> bool:
        return self._link.up.is_set()

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
