"""`Publisher`: the blocking face of `AsyncPublisher`, for threaded code (Django, Flask,
SQLAlchemy sessions, scripts). One background thread runs the event loop; calls from every
thread share its batches and its connection."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from cachewire.publish.client import AsyncPublisher, Options
from cachewire.publish.errors import PublishError

log = logging.getLogger("cachewire.publish")


class Publisher:
    """Publish invalidations from blocking code::

        publisher = Publisher("http://hub:8080")        # once per process
        event_id = publisher.publish("user:42", keys=["user:42"])
        publisher.close()                                # or `with Publisher(...) as p:`

    Same options as `AsyncPublisher`. Thread-safe.
    """

    def __init__(
        self,
        url: str,
        *,
        options: Options | None = None,
        headers: Mapping[str, str] | None = None,
        **option_values: Any,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="cachewire-publisher", daemon=True
        )
        self._thread.start()
        self._async = AsyncPublisher(url, options=options, headers=headers, **option_values)
        self.options = self._async.options
        self._closed = False

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(
        self,
        type: str,
        *,
        keys: Sequence[str] = (),
        prefixes: Sequence[str] = (),
        data: Any = None,
        flush: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Publish one event and wait for its id (Refused, Unreachable; TimeoutError after
        `timeout` seconds of waiting, when given: the event may still be published)."""
        future = self.submit(type, keys=keys, prefixes=prefixes, data=data, flush=flush)
        return future.result(timeout)

    def submit(
        self,
        type: str,
        *,
        keys: Sequence[str] = (),
        prefixes: Sequence[str] = (),
        data: Any = None,
        flush: bool = False,
    ) -> concurrent.futures.Future[str]:
        """Queue one event without waiting; a future of its id. Events are stored in the
        order they were submitted (from one thread; across threads, in arrival order)."""
        return asyncio.run_coroutine_threadsafe(
            self._async.publish(type, keys=keys, prefixes=prefixes, data=data, flush=flush),
            self._loop,
        )

    def drain(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far was answered."""
        asyncio.run_coroutine_threadsafe(self._async.drain(), self._loop).result(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Publish what is queued, close the connection, stop the thread."""
        if self._closed:
            return
        self._closed = True
        asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop.close()


def log_failure(future: concurrent.futures.Future[str]) -> None:
    """A done-callback for a submitted event nobody waits for: log it when it failed."""
    exc = future.exception()
    if isinstance(exc, PublishError):
        log.error("publish failed", extra={"error": str(exc)})
