"""`AsyncPublisher`: batch concurrent publishes into few requests, retry them safely.

Every `publish` call queues one event (encoded once, for the chosen transport) and waits
for its id. One sender task takes what is queued — after a linger of `linger` seconds when
it was idle, at once when requests were queued while it was sending — up to `max_batch`
events or `max_batch_bytes`, and sends it as one request under a fresh idempotency key.
By default only one request is in flight at a time, so events are stored in the order
`publish` was called; while it is in flight, the next batch fills. `max_in_flight` > 1
sends several at once (for long round trips), giving up that order between requests.

A failed attempt (timeout, dropped connection, 5xx, 429, gRPC UNAVAILABLE or
RESOURCE_EXHAUSTED) is retried with the same key, after a capped exponential backoff or
the hub's `Retry-After` when longer, until `retry_for` seconds have passed since the first
attempt: the hub answers a key it already stored with the first ids, so nothing is
published twice. When the hub refuses a batch (bad input), its events are sent again one
by one, so only the bad event fails and the others of the batch are published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachewire.publish.errors import PublishError, Refused, Retry, Unreachable
from cachewire.publish.retry import delay
from cachewire.publish.transport import Transport

log = logging.getLogger("cachewire.publish")


@dataclass(frozen=True, slots=True)
class Options:
    """How a publisher batches and retries (the same for `Publisher` and `AsyncPublisher`)."""

    linger: float = 0.001  # seconds an idle sender waits for more events to join a batch
    max_batch: int = 500  # events in one request
    max_batch_bytes: int = 512 * 1024  # encoded bytes in one request (the hub's --max-body: 1 MiB)
    # Requests in flight at once. 1 keeps events in call order; more lift the rate when
    # round trips are long, but then requests (each all or nothing) may be stored out of order.
    max_in_flight: int = 1
    timeout: float = 5.0  # seconds one attempt may take
    retry_for: float = 30.0  # seconds of retries before Unreachable (0: one attempt)
    backoff_base: float = 0.05  # first retry delay, seconds (doubling, jittered)
    backoff_cap: float = 2.0  # longest retry delay, seconds


def make_transport(url: str, timeout: float, headers: Mapping[str, str] | None) -> Transport:
    """http:// and https:// → the HTTP API; grpc:// (grpcs:// with TLS) → gRPC."""
    scheme, sep, rest = url.partition("://")
    if scheme in ("http", "https") and sep:
        from cachewire.publish.http_transport import HttpTransport

        return HttpTransport(url, timeout=timeout, headers=headers)
    if scheme in ("grpc", "grpcs") and sep:
        from cachewire.publish.grpc_transport import GrpcTransport

        return GrpcTransport(
            rest.rstrip("/"), timeout=timeout, metadata=headers, secure=scheme == "grpcs"
        )
    raise ValueError(f"the hub URL must start with http://, https://, grpc:// or grpcs://: {url!r}")


Item = tuple[Any, int, "asyncio.Future[str]"]  # encoded event, its size, its caller's future


class AsyncPublisher:
    """Publish invalidations to a hub from asyncio code::

        async with AsyncPublisher("http://hub:8080") as publisher:
            event_id = await publisher.publish("user:42", keys=["user:42"])

    `url`: http(s)://host:port (the HTTP API) or grpc(s)://host:port. `headers`: sent with
    every request (HTTP headers, or gRPC metadata), e.g. an Authorization token.
    """

    def __init__(
        self,
        url: str,
        *,
        options: Options | None = None,
        headers: Mapping[str, str] | None = None,
        transport: Transport | None = None,
        rng: Callable[[], float] = random.random,
        **option_values: Any,
    ) -> None:
        self.options = options or Options(**option_values)
        self.url = url
        self._transport = transport or make_transport(url, self.options.timeout, headers)
        self._rng = rng
        self._queue: list[Item] = []
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._sender: asyncio.Task[None] | None = None
        self._closed = False
        self.requests = 0  # requests sent (attempts included): how well batching works
        self.retries = 0

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- publishing ---

    async def publish(
        self,
        type: str,
        *,
        keys: Sequence[str] = (),
        prefixes: Sequence[str] = (),
        data: Any = None,
        flush: bool = False,
    ) -> str:
        """Publish one event; its id once it is in the hub's history (for the sidecar's
        `/v1/applied?id=` barrier). Raises Refused or Unreachable."""
        return await self.submit(type, keys=keys, prefixes=prefixes, data=data, flush=flush)

    def submit(
        self,
        type: str,
        *,
        keys: Sequence[str] = (),
        prefixes: Sequence[str] = (),
        data: Any = None,
        flush: bool = False,
    ) -> asyncio.Future[str]:
        """Queue one event now (its place in the order is taken here); a future of its id."""
        if self._closed:
            raise PublishError("the publisher is closed")
        if isinstance(keys, str) or isinstance(prefixes, str):
            raise TypeError("keys and prefixes are lists of strings, not a string")
        encoded, size = self._transport.encode(type, data, keys, prefixes, flush)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append((encoded, size, future))
        if self._sender is None:
            self._wake, self._idle = asyncio.Event(), asyncio.Event()
            self._sender = asyncio.create_task(self._run(), name="cachewire-publisher")
        assert self._wake is not None and self._idle is not None
        self._idle.clear()
        self._wake.set()
        return future

    async def drain(self) -> None:
        """Return once everything queued so far was answered (published or failed)."""
        if self._idle is not None:
            await self._idle.wait()

    async def close(self) -> None:
        """Publish what is queued, then close the connection."""
        self._closed = True
        with contextlib.suppress(PublishError):
            await self.drain()
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        await self._transport.close()

    # --- the sender ---

    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        opts = self.options
        slots = asyncio.Semaphore(opts.max_in_flight)
        in_flight: set[asyncio.Task[None]] = set()
        while True:
            if not self._queue:
                if not in_flight:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                if opts.linger > 0 and len(self._queue) < opts.max_batch:
                    await asyncio.sleep(opts.linger)  # the linger: let concurrent calls join
            if opts.max_in_flight == 1:
                await self._send(self._take())  # one at a time: stored in call order
                continue
            await slots.acquire()
            if not self._queue:  # a retry's wake-up, or taken meanwhile
                slots.release()
                continue
            task = asyncio.create_task(self._send(self._take()))
            in_flight.add(task)
            task.add_done_callback(lambda t: self._sent(t, in_flight, slots))

    def _sent(
        self, task: asyncio.Task[None], in_flight: set[asyncio.Task[None]], slots: asyncio.Semaphore
    ) -> None:
        """A concurrent request ended: free its slot; idle when nothing is left."""
        in_flight.discard(task)
        slots.release()
        assert self._wake is not None and self._idle is not None
        if not in_flight and not self._queue:
            self._idle.set()
        self._wake.set()  # the loop takes the next batch, or notices it is idle

    def _take(self) -> list[Item]:
        """The head of the queue, up to max_batch events and max_batch_bytes (at least one)."""
        opts, queue = self.options, self._queue
        end, size = 0, 0
        while end < len(queue) and end < opts.max_batch:
            if end and size + queue[end][1] > opts.max_batch_bytes:
                break
            size += queue[end][1]
            end += 1
        batch, self._queue = queue[:end], queue[end:]
        return batch

    async def _send(self, batch: list[Item]) -> None:
        try:
            ids = await self._attempts([item[0] for item in batch])
        except Refused as exc:
            if len(batch) == 1:
                _fail(batch, exc)
            else:  # all or nothing at the hub: find the bad event, publish the others
                for item in batch:
                    await self._send([item])
            return
        except PublishError as exc:
            _fail(batch, exc)
            return
        except Exception as exc:  # a bug or an unexpected answer: never leave a caller hanging
            log.exception("publish failed unexpectedly")
            _fail(batch, Unreachable(f"publish failed: {exc!r}"))
            return
        for (_, _, future), event_id in zip(batch, ids, strict=True):
            if not future.done():  # the caller may have given up waiting
                future.set_result(event_id)

    async def _attempts(self, events: list[Any]) -> list[str]:
        """One request, retried under one idempotency key until it is answered."""
        opts = self.options
        key = uuid.uuid4().hex
        deadline = time.monotonic() + opts.retry_for
        attempt = 0
        while True:
            self.requests += 1
            try:
                return await self._transport.send(events, key)
            except Retry as exc:
                wait = delay(attempt, exc.after, opts.backoff_base, opts.backoff_cap, self._rng)
                if time.monotonic() + wait > deadline:
                    raise Unreachable(f"{exc} (gave up after {attempt + 1} attempt(s))") from None
                log.debug("publish retried", extra={"error": str(exc), "attempt": attempt + 1})
                self.retries += 1
                attempt += 1
                await asyncio.sleep(wait)


def _fail(batch: list[Item], exc: PublishError) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(exc)
            future.exception()  # retrieved: a caller that gave up logs no "never retrieved"
