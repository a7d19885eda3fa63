"""SSE tickets: `POST /v1/tickets` → `?ticket=`, for a cross-origin EventSource (which
cannot send headers). A ticket is random, single use, valid TICKET_TTL seconds and bound
to the types it was issued for; it keeps the credential that asked for it, which is
verified again when the ticket is redeemed. Tickets live in this process: behind several
replicas, redeem at the replica that issued (docs/security.md).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

TICKET_TTL = 60
MAX_TICKETS = 100_000  # outstanding at once; expired ones are dropped as new ones come


@dataclass(frozen=True, slots=True)
class Ticket:
    credentials: object  # the Credentials that asked for it (verified again at redeem)
    types: frozenset[str]
    expires: float  # monotonic


class Tickets:
    def __init__(self, ttl: float = TICKET_TTL) -> None:
        self.ttl = ttl
        self._tickets: dict[str, Ticket] = {}

    def issue(self, credentials: object, types: frozenset[str]) -> str:
        now = time.monotonic()
        if len(self._tickets) >= MAX_TICKETS:
            self._tickets = {k: t for k, t in self._tickets.items() if t.expires > now}
            while len(self._tickets) >= MAX_TICKETS:  # all live: the oldest goes
                del self._tickets[next(iter(self._tickets))]
        value = secrets.token_urlsafe(32)
        self._tickets[value] = Ticket(credentials, types, now + self.ttl)
        return value

    def take(self, value: str) -> Ticket | None:
        """The ticket, removed (single use); None when unknown, used or expired."""
        ticket = self._tickets.pop(value, None)
        if ticket is None or ticket.expires <= time.monotonic():
            return None
        return ticket
