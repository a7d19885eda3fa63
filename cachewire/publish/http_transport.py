"""Publishing over the hub's HTTP API: `POST /v1/publish` with an NDJSON body (each event
encoded once, when it is submitted) and an `Idempotency-Key`, on a keep-alive connection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from cachewire.common import wirejson
from cachewire.publish.errors import Refused, Retry
from cachewire.publish.retry import retry_after

NDJSON = "application/x-ndjson"


class HttpTransport:
    def __init__(
        self, url: str, *, timeout: float = 5.0, headers: Mapping[str, str] | None = None
    ) -> None:
        self.url = url.rstrip("/") + "/v1/publish"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {**(headers or {}), "Content-Type": NDJSON}
        self._session: aiohttp.ClientSession | None = None

    def encode(
        self, type: str, data: Any, keys: Sequence[str], prefixes: Sequence[str], flush: bool
    ) -> tuple[bytes, int]:
        event: dict[str, Any] = {"type": type}
        if data is not None:
            event["data"] = data
        if keys:
            event["keys"] = list(keys)
        if prefixes:
            event["prefixes"] = list(prefixes)
        if flush:
            event["flush"] = True
        line = wirejson.dumpb(event)
        return line, len(line) + 1

    async def send(self, events: Sequence[bytes], key: str) -> list[str]:
        if self._session is None:  # made here: a session belongs to the running loop
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {**self._headers, "Idempotency-Key": key}
        try:
            async with self._session.post(
                self.url, data=b"\n".join(events), headers=headers
            ) as resp:
                body = await resp.read()
                status = resp.status
                hint = retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Retry(f"cannot reach the hub at {self.url}: {exc!r}") from None
        if status == 200:
            ids: list[str] = wirejson.loads(body)["ids"]
            return ids
        message = _error_message(body, status)
        if status >= 500 or status == 429:
            raise Retry(f"the hub answered {status}: {message}", hint)
        raise Refused(f"the hub refused the event ({status}): {message}", status)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _error_message(body: bytes, status: int) -> str:
    """The hub's JSON error text, or the start of whatever came (a proxy's page)."""
    try:
        return str(wirejson.loads(body)["error"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return body[:200].decode(errors="replace") or f"HTTP {status}"
