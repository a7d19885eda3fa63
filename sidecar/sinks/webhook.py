"""Webhook: POST each batch as JSON to an app endpoint; only a 2xx answer confirms it.

Body of a batch (Content-Type: application/json):

    {"flush": false, "reason": "",
     "invalidations": [{"id": "3f2a9c1e-42", "type": "user:42", "keys": ["user:42"],
                        "prefixes": [], "flush": false, "data": null,
                        "published_at": 1767225600.123}]}

and of a flush: {"flush": true, "reason": "reset: epoch_changed: …", "invalidations": []}.
A connection failure, a timeout or a non-2xx status raises SinkError: the applier keeps
the batch and POSTs it again with backoff, so the endpoint must be idempotent (ids help).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from cachewire.common.redact import redact
from cachewire.sidecar.sinks.base import Invalidation, SinkError


def _data(data_json: str) -> Any:
    try:
        return json.loads(data_json)
    except ValueError:
        return data_json


def batch_body(batch: Sequence[Invalidation]) -> dict[str, Any]:
    return {
        "flush": False,
        "reason": "",
        "invalidations": [
            {
                "id": inv.id,
                "type": inv.type,
                "keys": list(inv.keys),
                "prefixes": list(inv.prefixes),
                "flush": inv.flush,
                "data": _data(inv.data_json),
                "published_at": inv.published_at,
            }
            for inv in batch
        ],
    }


class WebhookSink:
    name = "webhook"

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": "cachewire-sidecar"},
        )

    async def _post(self, body: dict[str, Any]) -> None:
        assert self._session is not None, "start() first"
        try:
            async with self._session.post(self.url, json=body) as resp:
                if not 200 <= resp.status < 300:
                    text = (await resp.text(errors="replace"))[:200]
                    raise SinkError(redact(f"webhook {self.url} answered {resp.status}: {text}"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SinkError(redact(f"webhook {self.url}: {type(exc).__name__}: {exc}")) from exc

    async def apply(self, batch: Sequence[Invalidation]) -> None:
        await self._post(batch_body(batch))

    async def flush(self, reason: str) -> None:
        await self._post({"flush": True, "reason": reason, "invalidations": []})

    async def check(self) -> bool:
        """Reachable: a TCP connection to the endpoint's host and port opens."""
        try:
            async with asyncio.timeout(min(self.timeout, 1.0)):
                _, writer = await asyncio.open_connection(self._host, self._port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        await writer.wait_closed()
        return True

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
