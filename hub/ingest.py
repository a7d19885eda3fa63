"""Plasma's publishers: ingest Redis pub/sub channels as events (at-most-once).

Plasma publishers `PUBLISH` `{"meta":{"type":…},"data":…}` to Redis channels. The hub
SUBSCRIBEs to `--redis-channels` and publishes each message through its broker, with the
validation every publish path shares, so it gets an id and a place in history.

With the Redis broker the replicas share one stream, so exactly one replica may ingest,
or each message would become N events: it holds a lease (SET NX PX on "<stream>:ingest",
renewed every third of its duration, released on a clean stop); another replica takes over
within about one lease duration when the holder dies. With the memory broker each hub has
its own history, so every hub ingests (as every Plasma node does).

Pub/sub is fire-and-forget: a message published while no replica is subscribed (Redis
down, the lease being taken over) is lost without a trace. POST /v1/publish is the
durable path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from cachewire.common import wirejson
from cachewire.hub import telemetry
from cachewire.hub.brokers.redis_link import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    COMMAND_TIMEOUT,
    LinkState,
    cancel_and_wait,
    connect,
    follow_master,
    next_delay,
)
from cachewire.hub.errors import InvalidInput, TooLarge
from cachewire.hub.events import Draft, make_draft, parse_json

if TYPE_CHECKING:
    from cachewire.hub.server import Hub

log = logging.getLogger("cachewire.hub.ingest")

BATCH = 500  # messages already received are published together, in order

# Take the lease if free, or extend it if ours. KEYS: lease; ARGV: token, milliseconds.
ACQUIRE_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def draft_from_message(
    raw: bytes | str, *, max_keys: int, max_bytes: int, max_prefixes: int | None = None
) -> Draft:
    """A Plasma channel message → a draft, or InvalidInput saying what is wrong with it.

    `meta` may also carry cachewire's `keys`, `prefixes` and `flush` (what the hub itself
    puts in meta on the wire); other `meta` fields are ignored, as Plasma does.
    """
    if len(raw) > max_bytes:
        raise TooLarge(f"message is larger than the limit of {max_bytes} bytes")
    body = parse_json(raw, "message")
    if not isinstance(body, dict) or not isinstance(body.get("meta"), dict):
        raise InvalidInput('message must be {"meta":{"type":...},"data":...}')
    meta = body["meta"]
    if "type" not in meta:
        raise InvalidInput("meta.type is required")
    try:
        data_json = wirejson.dumps(body.get("data"))
    except RecursionError:
        raise InvalidInput("data is nested too deeply") from None
    except ValueError as exc:  # parse_json lets no non-finite number through; be sure
        raise InvalidInput(f"data is not JSON ({exc})") from None
    return make_draft(
        type=meta["type"],
        data_json=data_json,
        keys=meta.get("keys"),
        prefixes=meta.get("prefixes"),
        flush=meta.get("flush", False),
        max_keys=max_keys,
        max_bytes=max_bytes,
        max_prefixes=max_prefixes,
    )


class ChannelIngest:
    def __init__(self, hub: Hub) -> None:
        s = hub.settings
        self._hub = hub
        self.channels = s.redis_channels
        self.exclusive = s.broker == "redis"
        self.lease_key = f"{s.redis_stream}:ingest"
        self.lease_ms = int(s.ingest_lease * 1000)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.leader = False  # subscribed to the channels
        self._valid_until = 0.0  # monotonic time when the lease we hold expires, 0: none
        self.counts = {"ingested": 0, "malformed": 0, "failed": 0}
        self._client = connect(s.redis_url, retries=0, decode=False)
        self._acquire = self._client.register_script(ACQUIRE_LUA)
        self._release = self._client.register_script(RELEASE_LUA)
        self._link = LinkState("channel ingest", log)
        self._rng = random.Random()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="channel-ingest")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self.exclusive and self._valid_until:
            with contextlib.suppress(RedisError, OSError):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self._release(keys=[self.lease_key], args=[self.token])
                log.info("channel ingest lease released", extra={"lease": self.lease_key})
        self.leader, self._valid_until = False, 0.0
        await self._client.aclose()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                if self.exclusive:
                    await self._wait_for_lease()
                await self._consume()
                attempt = 0
            except (RedisError, OSError) as exc:
                self.leader = False
                self._link.set_down(exc)  # the lease stays ours if Redis kept it
                await asyncio.sleep(next_delay(attempt, BACKOFF_BASE, BACKOFF_CAP, self._rng))
                attempt += 1

    async def _take_lease(self) -> bool:
        """Take the lease or extend ours; it is valid for a lease from before we asked."""
        asked = time.monotonic()
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await follow_master(self._client)
            held = await self._acquire(keys=[self.lease_key], args=[self.token, self.lease_ms])
        self._valid_until = asked + self.lease_ms / 1000 if held else 0.0
        return bool(held)

    async def _wait_for_lease(self) -> None:
        while not await self._take_lease():
            self._link.set_up()
            await asyncio.sleep(self.lease_ms / 3000)

    async def _consume(self) -> None:
        """Subscribe and ingest until the lease is lost (or forever, without a lease)."""
        renew_every = self.lease_ms / 3000
        next_renew = time.monotonic() + renew_every
        pubsub: PubSub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await pubsub.subscribe(*self.channels)
            self._link.set_up()
            self.leader = True
            log.info(
                "ingesting redis channels",
                extra={
                    "channels": list(self.channels),
                    "lease": self.lease_key if self.exclusive else None,
                },
            )
            while True:
                timeout = max(0.0, next_renew - time.monotonic()) if self.exclusive else 5.0
                message = await pubsub.get_message(timeout=timeout)
                now = time.monotonic()
                if self.exclusive and (now >= next_renew or (message and now >= self._valid_until)):
                    # A message that came after the lease could have expired is published
                    # only if the lease is still ours: another replica may have it.
                    if not await self._take_lease():
                        log.warning(
                            "channel ingest lease lost to another replica",
                            extra={"lease": self.lease_key},
                        )
                        return
                    next_renew = now + renew_every
                if message is not None:
                    batch = [message]
                    while len(batch) < BATCH and (more := await pubsub.get_message(timeout=0)):
                        batch.append(more)
                    await self._ingest(batch)
        finally:
            self.leader = False
            with contextlib.suppress(RedisError, OSError):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await pubsub.aclose()

    async def _ingest(self, messages: list[dict[str, Any]]) -> None:
        s = self._hub.settings
        drafts = []
        for message in messages:
            try:
                drafts.append(
                    draft_from_message(
                        message["data"],
                        max_keys=s.max_keys,
                        max_bytes=s.max_body,
                        max_prefixes=s.max_prefixes,
                    )
                )
            except InvalidInput as exc:
                self.counts["malformed"] += 1
                log.warning(
                    "malformed channel message ignored",
                    extra={
                        "channel": _text(message.get("channel")),
                        "error": str(exc),
                        "bytes": len(message["data"]),
                    },
                )
                log.debug(
                    "malformed channel message", extra={"payload": _text(message["data"])[:200]}
                )
        if not drafts:
            return
        try:
            await telemetry.publish(self._hub.broker, drafts, "redis")
        except Exception as exc:  # Unavailable, or a bug: log it, never stop ingesting
            self.counts["failed"] += len(drafts)
            log.error(
                "channel messages lost: the broker did not take them",
                extra={
                    "count": len(drafts),
                    "types": sorted({d.type for d in drafts})[:10],
                    "error": str(exc),
                },
            )
            return
        self.counts["ingested"] += len(drafts)

    def metrics(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "cachewire_hub_ingest_messages", "Redis channel messages, by result", labels=["result"]
        )
        for result, count in self.counts.items():
            family.add_metric([result], count)
        yield family
        yield GaugeMetricFamily(
            "cachewire_hub_ingest_leader",
            "1 while this replica is subscribed to the Plasma channels",
            value=int(self.leader),
        )


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
