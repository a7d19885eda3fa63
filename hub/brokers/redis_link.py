"""The Redis link, shared by the broker and the channel ingest: clients from URLs (plain,
TLS, Unix socket, Sentinel, Cluster), following a Sentinel failover, reconnect backoff, and
the up/down state of a link, logged once per change.

On Redis Cluster every key the broker touches in one script or transaction must live in
one slot: the stream name carries a hash tag (`{cachewire}:events`) and the other keys are
named after it (`{cachewire}:events:epoch`, `…:seq`, `…:ingest`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger("cachewire.hub.redis")

BACKOFF_BASE = 0.1  # seconds; reconnect delays grow from here …
BACKOFF_CAP = 2.0  # … to at most this, with jitter
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0


def next_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Reconnect delay: exponential from `base`, capped, with jitter in its upper half."""
    ceiling = min(cap, base * 2 ** min(attempt, 32))
    return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def has_hash_tag(key: str) -> bool:
    """Whether Redis Cluster hashes only part of `key` (the first non-empty `{…}`)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return start >= 0 and end > start + 1


@dataclass(frozen=True)
class ClusterUrl:
    """redis+cluster://[[user]:password@]host[:port][,host[:port]…] (any nodes of it)"""

    nodes: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None
    ssl: bool = False

    @classmethod
    def parse(cls, url: str) -> ClusterUrl:
        parts = urlsplit(url)
        auth, _, hosts = parts.netloc.rpartition("@")
        user, _, password = auth.partition(":")
        if not hosts or parts.path.strip("/") not in ("", "0"):
            raise ValueError(
                "a cluster URL is redis+cluster://host:port[,host:port] (database 0 only)"
            )
        nodes = []
        for host in hosts.split(","):
            name, _, port = host.partition(":")
            nodes.append((name, int(port or 6379)))
        return cls(
            nodes, unquote(user) or None, unquote(password) or None, url.startswith("rediss+")
        )


@dataclass(frozen=True)
class SentinelUrl:
    """redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service[/db]"""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        parts = urlsplit(url)
        auth, _, hosts = parts.netloc.rpartition("@")
        user, _, password = auth.partition(":")
        path = [p for p in parts.path.split("/") if p]
        if not hosts or not path or len(path) > 2 or not (len(path) == 1 or path[1].isdigit()):
            raise ValueError(
                "a sentinel URL is redis+sentinel://host:port[,host:port]/service[/db]"
            )
        sentinels = []
        for host in hosts.split(","):
            name, _, port = host.partition(":")
            sentinels.append((name, int(port or 26379)))
        query = parse_qs(parts.query)
        return cls(
            sentinels,
            unquote(path[0]),
            int(path[1]) if len(path) == 2 else 0,
            unquote(user) or None,
            unquote(password) or None,
            query["sentinel_password"][0] if "sentinel_password" in query else None,
            url.startswith("rediss+"),
        )


def check_url(url: str) -> str:
    """The URL if redis-py can use it, else ValueError saying why (for --redis-url)."""
    if url.startswith(SENTINEL_SCHEMES):
        SentinelUrl.parse(url)
    elif url.startswith(CLUSTER_SCHEMES):
        ClusterUrl.parse(url)
    elif url.startswith(("redis://", "rediss://", "unix://")):
        parse_url(url)
        db = "" if url.startswith("unix://") else urlsplit(url).path.strip("/")
        if db and not re.fullmatch(r"[0-9]{1,5}", db):
            raise ValueError(f"the database number {db!r} is not a number")
    else:
        raise ValueError(
            "must start with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
        )
    return url


def connect(url: str, *, retries: int, decode: bool = True) -> aioredis.Redis:
    """A client from a redis://, rediss:// or unix:// URL (password, db, TLS options in it),
    or from a redis+sentinel:// URL naming the sentinels and the service.

    No socket_timeout: with one, redis-py sends through asyncio.wait_for, which on Python
    3.11 can swallow a task's cancellation. Callers bound each call with `asyncio.timeout`.
    """
    options: dict[str, Any] = {
        "decode_responses": decode,
        "socket_timeout": None,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        # Retry only failures to reach Redis, never a command that may have been applied.
        "retry": Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,)),
    }
    if url.startswith(CLUSTER_SCHEMES):
        return _cluster(ClusterUrl.parse(url), options)
    if not url.startswith(SENTINEL_SCHEMES):
        return aioredis.from_url(url, **options)
    sentinel = SentinelUrl.parse(url)
    sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT}
    if sentinel.ssl:
        sentinel_kwargs["ssl"] = options["ssl"] = True
    if sentinel.sentinel_password:
        sentinel_kwargs["password"] = sentinel.sentinel_password
    sentinels = Sentinel(sentinel.sentinels, sentinel_kwargs=sentinel_kwargs)
    client: aioredis.Redis = sentinels.master_for(
        sentinel.service,
        db=sentinel.db,
        username=sentinel.username,
        password=sentinel.password,
        **options,
    )
    return client


def _cluster(url: ClusterUrl, options: dict[str, Any]) -> aioredis.Redis:
    """A Redis Cluster client. It is not an `aioredis.Redis`, but it offers every command the
    broker and the ingest use on one key's slot (scripts, XREAD, XRANGE, XINFO, same-slot
    transactions, pub/sub), which is all the rest of the hub relies on."""
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in url.nodes],
        username=url.username,
        password=url.password,
        ssl=url.ssl,
        **options,
    )
    return cast(aioredis.Redis, client)


async def follow_master(client: aioredis.Redis) -> None:
    """With Sentinel, ask where the master is now; if it moved, idle connections to the old
    one are closed. redis-py asks only when it connects, so after a failover a pool would
    keep writing to the demoted master (whose writes Redis then discards) for as long as
    the sentinels take to reconfigure it, ten seconds or more."""
    pool = getattr(client, "connection_pool", None)  # a cluster client has none
    if isinstance(pool, SentinelConnectionPool):
        await pool.get_master_address()  # type: ignore[no-untyped-call]


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel a task and wait for it, cancelling again if a cancellation was swallowed."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError):
        await task


class LinkState:
    """Up/down of a Redis link, logged once per change rather than once per attempt."""

    def __init__(self, what: str, logger: logging.Logger = log) -> None:
        self.what = what
        self._log = logger
        self.up = asyncio.Event()
        self._down_logged = False

    def set_up(self) -> None:
        if not self.up.is_set() and self._down_logged:
            self._log.info(f"{self.what}: redis is reachable again")
        self._down_logged = False
        self.up.set()

    def set_down(self, exc: BaseException) -> None:
        self.up.clear()
        if not self._down_logged:
            self._log.warning(
                f"{self.what}: redis unavailable, retrying with backoff",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
            self._down_logged = True
