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

Each entry also carries `n`, its place in its epoch (a counter in "<stream>:seq" bumped by
the same script as the XADD), by which a reader detects entries trimmed before it read them.

The reader (ids, entries → events, gaps, resets) is in redis_reader.py; connections (URLs,
Sentinel, backoff, link state) are in redis_link.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import Metric
from redis.exceptions import RedisError

from cachewire.common import wirejson
from cachewire.hub.brokers.base import Dispatch, OnReset, Replay
from cachewire.hub.brokers.redis_link import COMMAND_TIMEOUT, connect
from cachewire.hub.brokers.redis_reader import (
    StreamReader,
    event_from_entry,
    parse_event_id,
    parse_stream_id,
    stream_id,
)
from cachewire.hub.errors import Unavailable
from cachewire.hub.events import Draft, Event, Position
from cachewire.hub.idempotency import check_count
from cachewire.hub.settings import HubSettings

log = logging.getLogger("cachewire.hub.redis")

REPLAY_WAIT = 5.0  # how long a resume waits for Redis, or for this replica's reader

# KEYS: stream, epoch key, seq key[, idempotency key]. ARGV: epoch, maxlen, window in ms, then
# per event: field count, fields… `n` continues the epoch's counter; without the counter key
# (deleted, or written by an older hub) it continues from the stream's last entry when that
# is of this epoch, else from 0. `seq_baseline` (redis_reader.py) mirrors that rule.
# With an idempotency key: when it is stored, its ids (space-separated) are the answer
# {2, ids} and nothing is appended; else the ids appended are stored under it, in the same
# script, so replicas agree.
PUBLISH_LUA = """
if KEYS[4] then
  local seen = redis.call('GET', KEYS[4])
  if seen then return {2, seen} end
end
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
local i = 4
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  n = n + 1
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
                             'epoch', ARGV[1], 'n', n, unpack(ARGV, i + 1, i + count))
  i = i + count + 1
end
redis.call('SET', KEYS[3], n)
if KEYS[4] then
  local full = {}
  for j = 2, #ids do full[#full + 1] = ARGV[1] .. '-' .. ids[j] end
  redis.call('SET', KEYS[4], table.concat(full, ' '), 'PX', ARGV[3])
end
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


def entry_fields(draft: Draft) -> list[str]:
    """A draft → the field/value pairs of its stream entry (empty optional fields left out)."""
    fields = ["type", draft.type, "data", draft.data_json, "published_at", repr(draft.published_at)]
    if draft.keys:
        fields += ["keys", wirejson.dumps(draft.keys)]
    if draft.prefixes:
        fields += ["prefixes", wirejson.dumps(draft.prefixes)]
    if draft.flush:
        fields += ["flush", "1"]
    if draft.traceparent:
        fields += ["traceparent", draft.traceparent, "tracestate", draft.tracestate]
    return fields


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
        self._replay_wait = replay_wait
        self._write_epoch = ""  # the epoch publishes check against
        self._writer = connect(self._url, retries=1)
        self._publish_script = self._writer.register_script(PUBLISH_LUA)
        self._ensure_script = self._writer.register_script(ENSURE_LUA)
        client = connect(self._url, retries=0)
        self.reader = StreamReader(
            client,
            self.stream,
            self._maxlen,
            self._ensure_epoch,
            follow=(self._writer, client),
            rng=rng or random.Random(),
        )

    @property
    def epoch(self) -> str:
        """The reader's epoch: labels head_id, position, replay; empty until Redis was reached."""
        return self.reader.epoch

    @property
    def gaps(self) -> int:
        return self.reader.gaps

    @property
    def skipped(self) -> int:
        return self.reader.skipped

    # --- lifecycle ---

    async def start(self, dispatch: Dispatch, on_reset: OnReset | None = None) -> None:
        """Tries Redis once, then returns: connected, or not ready (publish 503, /readyz 503)
        while the reader keeps trying with backoff. A hub that waited for Redis before it
        listens would be restarted in a loop by a Kubernetes startup probe."""
        await self.reader.start(dispatch, on_reset)

    async def stop(self) -> None:
        await self.reader.stop()
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

    # --- the Broker protocol ---

    async def publish(self, drafts: Sequence[Draft]) -> list[Event]:
        events, _ = await self._append(drafts)
        return events

    async def publish_once(
        self, drafts: Sequence[Draft], key: str, window: float
    ) -> tuple[list[str], bool]:
        """The key lives in "<stream>:idem:<key>" for `window`, set by the append's script."""
        events, seen = await self._append(drafts, f"{self.stream}:idem:{key}", window)
        if seen is not None:
            return check_count(key, seen, len(drafts)), False
        return [e.id for e in events], True

    async def _append(
        self, drafts: Sequence[Draft], key: str = "", window: float = 0.0
    ) -> tuple[list[Event], list[str] | None]:
        """(events appended, None), or ([], the ids stored under the idempotency key)."""
        if not self.epoch:  # the reader would not know where to start: it would skip these
            raise Unavailable("redis is unavailable, nothing was published: not reached yet")
        keys = [self.stream, self.epoch_key, self.seq_key]
        if key:
            keys.append(key)
        args: list[str | int] = [self._maxlen, max(1, round(window * 1000))]
        for draft in drafts:
            fields = entry_fields(draft)
            args += [len(fields), *fields]
        try:
            for _ in range(3):
                epoch = self._write_epoch
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    reply = await self._publish_script(keys=keys, args=[epoch, *args])
                if reply[0] == 2:
                    return [], str(reply[1]).split(" ")
                if reply[0] == 1:
                    events = [
                        Event.from_draft(d, f"{epoch}-{i}", parse_stream_id(i) or (0, 0))
                        for d, i in zip(drafts, reply[1:], strict=True)
                    ]
                    return events, None
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
                await self.reader.link.up.wait()
        if not self.reader.link.up.is_set():
            return Replay(
                reset="history_expired", detail="redis is unavailable, the history cannot be read"
            )
        epoch, pos = parsed
        if epoch != self.epoch:
            return Replay(
                reset="epoch_changed", detail=f"epoch {epoch[:80]!r} is not {self.epoch!r}"
            )
        try:
            if pos > self.reader.last_pos and not await self._catch_up(pos):
                return Replay(
                    reset="unknown_id", detail=f"event id {after_id[:80]!r} is in the future"
                )
            head = self.reader.last
            async with (
                asyncio.timeout(COMMAND_TIMEOUT),
                self.reader.client.pipeline(transaction=True) as pipe,
            ):
                pipe.xrange(self.stream, "(" + stream_id(pos), head)
                pipe.xinfo_stream(self.stream)
                entries, info = await pipe.execute()
        except (RedisError, OSError, Unavailable) as exc:
            return Replay(reset="history_expired", detail=f"the history cannot be read now: {exc}")
        if epoch != self.epoch:  # the stream was replaced while we waited
            return Replay(
                reset="epoch_changed", detail=f"epoch {epoch[:80]!r} is not {self.epoch!r}"
            )
        if lost_after(pos, info):
            return Replay(
                reset="history_expired", detail=f"event id {after_id[:80]!r} left history"
            )
        events = []
        for entry_id, fields in entries:
            if fields.get("epoch", epoch) == epoch:
                with contextlib.suppress(KeyError, ValueError):
                    events.append(event_from_entry(epoch, entry_id, fields))
        return Replay(events=events)

    async def _catch_up(self, pos: Position) -> bool:
        """An id ahead of this replica's reader: wait for it if Redis has it already."""
        async with asyncio.timeout(COMMAND_TIMEOUT):
            info = await self.reader.client.xinfo_stream(self.stream)
        if pos > (parse_stream_id(str(info["last-generated-id"])) or (0, 0)):
            return False
        deadline = time.monotonic() + self._replay_wait
        while self.reader.last_pos < pos:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable("this replica's reader is behind the stream")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.reader.progress.wait()
        return True

    def position(self, event_id: str) -> Position | None:
        parsed = parse_event_id(event_id)
        if parsed is None or parsed[0] != self.epoch:
            return None
        return parsed[1]

    def head_id(self) -> str:
        """Empty until Redis was reached once: no position is known yet."""
        return self.reader.head_id()

    def history_size(self) -> int:
        return self.reader.length

    def ready(self) -> bool:
        return self.reader.link.up.is_set()

    def metrics(self) -> Iterator[Metric]:
        """The reader's gaps, for hub/metrics.py."""
        return self.reader.metrics()
