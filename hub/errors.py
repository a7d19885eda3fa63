"""The hub's exceptions, mapped to HTTP and gRPC status codes here and nowhere else.

HubError
├── InvalidInput        bad publish or subscribe input     → 400 / INVALID_ARGUMENT
│   ├── TooLarge        body or batch over a limit          → 413 / INVALID_ARGUMENT
│   └── KeyReused       idempotency key of another request  → 422 / INVALID_ARGUMENT
├── Unavailable         broker down (e.g. Redis outage)     → 503 / UNAVAILABLE
├── Overloaded          fan-out behind, publish waited      → 503 + Retry-After / RESOURCE_EXHAUSTED
└── ConfigError         bad setting at start-up             → one-line message, exit 2
"""

from __future__ import annotations

import grpc


class HubError(Exception):
    """Base of every error the hub raises on purpose."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL


class InvalidInput(HubError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class TooLarge(InvalidInput):
    http_status = 413


class KeyReused(InvalidInput):
    http_status = 422


class Unavailable(HubError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class Overloaded(HubError):
    """The hub is behind delivering: the publisher should retry after `retry_after` s."""

    http_status = 503
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after = 1


class ConfigError(HubError):
    """A setting is missing or malformed; the message names it."""
