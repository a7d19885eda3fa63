"""What publishing can raise.

PublishError
├── Refused       the hub refused the event (bad input, not allowed): retrying cannot help
└── Unreachable   no answer within the retry window (hub down, overloaded, timing out)

Transports also raise `Retry` (not a PublishError: it never reaches the caller) for what
is worth another attempt with the same idempotency key: a timeout, a refused or dropped
connection, an HTTP 5xx or 429, gRPC UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED.
"""

from __future__ import annotations


class PublishError(Exception):
    """Base of the errors `publish` raises."""


class Refused(PublishError):
    """The hub answered "no" (HTTP 4xx, gRPC INVALID_ARGUMENT, PERMISSION_DENIED, …)."""

    def __init__(self, message: str, status: int | str) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(PublishError):
    """The hub did not store the event within the retry window; the last problem is named."""


class Retry(Exception):
    """A transport's "try again": `after` is the hub's hint (Retry-After), in seconds."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after
