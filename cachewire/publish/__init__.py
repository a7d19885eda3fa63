"""The publisher library: how applications emit invalidations.

    from cachewire.publish import Publisher

    publisher = Publisher("http://hub:8080")           # or "grpc://hub:50051"
    event_id = publisher.publish("user:42", keys=["user:42"])

`Publisher` (blocking, thread-safe) and `AsyncPublisher` (asyncio) batch concurrent calls
into one request (a linger of about 1 ms and a size cap), keep the connection alive, and
retry timeouts, 5xx and gRPC UNAVAILABLE / RESOURCE_EXHAUSTED with backoff (honouring
Retry-After) under one idempotency key, so an event is never published twice.
After-commit helpers: `cachewire.publish.sqlalchemy`, `cachewire.publish.django`.
Documentation: docs/publishing.md.
"""

from cachewire.publish.client import AsyncPublisher, Options
from cachewire.publish.errors import PublishError, Refused, Unreachable
from cachewire.publish.sync import Publisher

__all__ = ["AsyncPublisher", "Options", "PublishError", "Publisher", "Refused", "Unreachable"]
