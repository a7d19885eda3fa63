"""The hub's exceptions, mapped to HTTP and gRPC status codes here and nowhere else.

HubError
├── InvalidInput        bad publish or subscribe input     → 400 / INVALID_ARGUMENT
│   ├── TooLarge        body or batch over a limit          → 413 / INVALID_ARGUMENT
│   ├── KeyReused       idempotency key of another request  → 422 / INVALID_ARGUMENT
│   └── UnsupportedMedia publish body of a type not allowed → 415 / INVALID_ARGUMENT
├── CrossSite           publish/ticket from a foreign Origin → 403 / PERMISSION_DENIED
├── Denied              auth said no (hub/auth); `reason` goes to the log and a counter
│   ├── Unauthenticated no, invalid or expired credential   → 401 / UNAUTHENTICATED
│   └── Forbidden       credential lacks the grant          → 403 / PERMISSION_DENIED
├── Unavailable         broker down (e.g. Redis outage)     → 503 / UNAVAILABLE
├── Overloaded          fan-out behind, publish waited      → 503 + Retry-After / RESOURCE_EXHAUSTED
└── ConfigError         bad setting at start-up             → one-line message, exit 2

A `Denied` tells the client only what RFC 6750 lets it know (its `challenge` becomes the
HTTP `WWW-Authenticate` header); why it was refused is in `reason`, for the operator.
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


class UnsupportedMedia(InvalidInput):
    http_status = 415


class CrossSite(HubError):
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class Denied(HubError):
    """Refused by the decision function. The message is what the client sees; `reason`
    (a short label: missing, invalid, expired, revoked, insufficient_scope) is counted,
    and `detail` (which type, which claim…) logged, never sent."""

    challenge = "Bearer"

    def __init__(self, message: str, reason: str, detail: str) -> None:
        super().__init__(message)
        self.reason, self.detail = reason, detail
        self.noted = False  # counted and logged already (Auth.note)


class Unauthenticated(Denied):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self, reason: str, detail: str = "", *, credential_sent: bool = True) -> None:
        if credential_sent:
            super().__init__("invalid or expired credential", reason, detail)
            self.challenge = 'Bearer error="invalid_token"'
        else:
            super().__init__("a credential is required", reason, detail)


class Forbidden(Denied):
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    challenge = 'Bearer error="insufficient_scope"'

    def __init__(self, detail: str, reason: str = "insufficient_scope") -> None:
        super().__init__("the credential does not grant this", reason, detail)


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
