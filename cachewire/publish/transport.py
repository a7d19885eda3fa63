"""What a transport does for the publisher: encode one event once, send a batch of encoded
events as one request under an idempotency key, and answer the ids in order.

Errors: `Retry` for what another attempt may fix, `Refused` for what it cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Transport(Protocol):
    def encode(
        self,
        type: str,
        data: Any,
        keys: Sequence[str],
        prefixes: Sequence[str],
        flush: bool,
    ) -> tuple[Any, int]:
        """One event in this transport's wire form, and its size in bytes."""
        ...

    async def send(self, events: Sequence[Any], key: str) -> list[str]:
        """Publish encoded events as one request; their ids in order."""
        ...

    async def close(self) -> None: ...
