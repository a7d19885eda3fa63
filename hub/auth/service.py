"""`Auth`: what every transport calls in `--auth protected` (in `off` mode the hub has none,
and no request does any auth work).

    principal = await auth.authenticate(credentials)       # Unauthenticated
    auth.authorize(principal, "subscribe", topics)          # Unauthenticated / Forbidden
    watch = auth.watch(principal, topics, end)              # open streams: expiry, reloads

`check_publish` is the publish paths' one call (HTTP, gRPC, and any streaming publish).
A reload of the API-keys file re-checks every open stream; a stream whose credential
expires or loses its grant is ended through its `end` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import yaml

from cachewire.hub.auth.decide import (
    ANONYMOUS,
    Action,
    Grants,
    Principal,
    authorize,
    patterns,
)
from cachewire.hub.auth.k8s import SA_PREFIX, Policy, TokenReview
from cachewire.hub.auth.tickets import Tickets
from cachewire.hub.auth.verifiers import ApiKeys, JwtConfig, JwtVerifier
from cachewire.hub.errors import ConfigError, Denied, Forbidden, Unauthenticated

if TYPE_CHECKING:
    from cachewire.hub.events import Draft
    from cachewire.hub.settings import HubSettings

log = logging.getLogger("cachewire.hub.auth")

RELOAD_POLL = 1.0  # seconds between checks of the API-keys file for changes


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presented. `malformed`: an Authorization header that is not
    `Bearer <token>` (refused like an invalid token, never ignored)."""

    bearer: str | None = None
    api_key: str | None = None
    ticket: str | None = None
    malformed: bool = False

    @property
    def sent(self) -> bool:
        return self.malformed or any((self.bearer, self.api_key, self.ticket))


def bearer_of(header: str | None) -> tuple[str | None, bool]:
    """An Authorization header → (token, malformed)."""
    if header is None:
        return None, False
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None, True
    return token, False


class Watch:
    """One open stream under a principal: ended at its credential's expiry, or when a
    reload takes away its grant."""

    __slots__ = ("end", "principal", "timer", "types")

    def __init__(
        self, principal: Principal, types: frozenset[str], end: Callable[[Denied], None]
    ) -> None:
        self.principal, self.types, self.end = principal, types, end
        self.timer: asyncio.TimerHandle | None = None


class Auth:
    def __init__(self, settings: HubSettings) -> None:
        try:
            self.public = patterns(list(settings.public_types))
        except ValueError as exc:
            raise ConfigError(f"--public-types: {exc}") from None
        jwt_config = JwtConfig(
            settings.jwt_key, settings.jwt_jwks_url, settings.jwt_audience, settings.jwt_issuer
        )
        self.jwt = JwtVerifier(jwt_config) if settings.jwt_key or settings.jwt_jwks_url else None
        self.api_keys = ApiKeys(settings.api_keys_file) if settings.api_keys_file else None
        if self.api_keys is not None:  # read now: a bad file fails before anything listens
            try:
                self.api_keys.load()
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--api-keys-file={self.api_keys.path}: {exc}") from None
        self.policy = Policy(settings.policy_file) if settings.policy_file else None
        if self.policy is not None:
            try:
                self.policy.load()
            except (OSError, ValueError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"--policy-file={self.policy.path}: {exc}") from None
        self.token_review = (
            TokenReview(settings.k8s_token_review, settings.k8s_serviceaccount_dir, self.policy)
            if settings.k8s_token_review != "off"
            else None
        )
        self.tickets = Tickets()
        self.denied: Counter[str] = Counter()  # reason → refusals
        self._watches: set[Watch] = set()
        self._poll: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.api_keys is not None or self.policy is not None:
            self._poll = asyncio.create_task(self._poll_reload())
        if self.jwt is not None and self.jwt.jwks is not None:
            try:
                await self.jwt.jwks.fetch()
            except Exception as exc:  # retried when a token needs it
                log.warning("jwks fetch failed at start", extra={"error": str(exc)})
        if self.jwt is None and self.api_keys is None and self.token_review is None:
            log.warning(
                "auth is protected but no credential can be verified (no --jwt-key, "
                "--jwt-jwks-url, --api-keys-file or --k8s-token-review): only "
                "--public-types can be subscribed to"
            )

    async def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        for watch in tuple(self._watches):
            self.unwatch(watch)
        if self.token_review is not None:
            await self.token_review.close()

    # --- authentication ---

    async def authenticate(self, credentials: Credentials) -> Principal:
        """The principal these credentials prove; ANONYMOUS when none was sent."""
        c = credentials
        if c.malformed:
            raise Unauthenticated("invalid", "authorization header is not 'Bearer <token>'")
        if c.bearer is not None:
            return await self._bearer(c.bearer)
        if c.api_key is not None:
            if self.api_keys is None:
                raise Unauthenticated("invalid", "api key sent; no --api-keys-file configured")
            return self.api_keys.verify(c.api_key)
        if c.ticket is not None:
            return await self._redeem(c.ticket)
        return ANONYMOUS

    async def _bearer(self, token: str) -> Principal:
        """A JWT of ours; else (with --k8s-token-review) a service-account token."""
        if self.jwt is not None:
            try:
                principal = await self.jwt.verify(token)
            except Unauthenticated as exc:
                if self.token_review is None or exc.reason != "invalid":
                    raise
            else:
                return self._service_account(principal)
        if self.token_review is not None:
            return await self.token_review.verify(token)
        raise Unauthenticated("invalid", "bearer token sent; no JWT key or token review set")

    def _service_account(self, principal: Principal) -> Principal:
        """A service-account JWT verified offline (the API server's JWKS) takes its grants
        from the policy, as a TokenReview answer would."""
        sub = principal.name.removeprefix("jwt:")
        if self.policy is None or not sub.startswith(SA_PREFIX):
            return principal
        return Principal(sub, self.policy.grants(sub), "k8s", principal.expires_at, sub)

    async def _redeem(self, value: str) -> Principal:
        ticket = self.tickets.take(value)
        if ticket is None:
            raise Unauthenticated("invalid", "ticket unknown, used or expired")
        assert isinstance(ticket.credentials, Credentials)
        issuer = await self.authenticate(ticket.credentials)  # revalidated at redeem
        authorize(issuer, "subscribe", ticket.types, self.public)
        return Principal(
            issuer.name,
            Grants(subscribe=ticket.types),
            "ticket",
            issuer.expires_at,
            issuer.ref,
        )

    # --- the decisions ---

    def authorize(self, principal: Principal, action: Action, types: Iterable[str]) -> None:
        authorize(principal, action, types, self.public)

    async def check_publish(self, credentials: Credentials, drafts: Sequence[Draft]) -> Principal:
        """May these credentials publish every one of these drafts (flush included)? The
        one call of a publish request (HTTP, gRPC Publish)."""
        principal = await self.authenticate(credentials)
        self.authorize_publish(principal, drafts)
        return principal

    def authorize_publish(self, principal: Principal, drafts: Sequence[Draft]) -> None:
        """The publish decision for an already authenticated principal: what a stream of
        publish requests (gRPC PublishStream) calls per request, after `authenticate` once.
        A credential that expired since then is refused."""
        if principal.expires_at is not None and principal.expires_at <= time.time():
            raise Unauthenticated("expired", f"{principal.name}: expired")
        self.authorize(principal, "publish", {d.type for d in drafts})
        if any(d.flush for d in drafts):
            self.authorize(principal, "flush", ())

    async def check_subscribe(self, credentials: Credentials, topics: frozenset[str]) -> Principal:
        principal = await self.authenticate(credentials)
        self.authorize(principal, "subscribe", topics)
        return principal

    async def issue_ticket(self, credentials: Credentials, types: frozenset[str]) -> str:
        """A ticket for an EventSource; needs a real credential (never another ticket)."""
        if credentials.ticket is not None or not credentials.sent:
            raise Unauthenticated(
                "missing", "a ticket needs a bearer token or API key", credential_sent=False
            )
        principal = await self.authenticate(credentials)
        self.authorize(principal, "subscribe", types)
        return self.tickets.issue(credentials, types)

    def note(self, exc: Denied, transport: str, peer: object) -> None:
        """Count and log a refusal (the transports call this where they map it), once."""
        if exc.noted:
            return
        exc.noted = True
        self.denied[exc.reason] += 1
        log.info(
            "auth denied",
            extra={
                "transport": transport,
                "reason": exc.reason,
                "detail": exc.detail,
                "peer": str(peer),
            },
        )

    # --- open streams ---

    def watch(
        self, principal: Principal, types: frozenset[str], end: Callable[[Denied], None]
    ) -> Watch:
        watch = Watch(principal, types, end)
        self._watches.add(watch)
        if principal.expires_at is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, principal.expires_at - time.time())
            watch.timer = loop.call_later(
                delay, self._end, watch, Unauthenticated("expired", f"{principal.name}: expired")
            )
        return watch

    def unwatch(self, watch: Watch) -> None:
        self._watches.discard(watch)
        if watch.timer is not None:
            watch.timer.cancel()
            watch.timer = None

    def _end(self, watch: Watch, exc: Denied) -> None:
        self.unwatch(watch)
        self.note(exc, "stream", watch.principal.name)
        watch.end(exc)

    def _current(self, p: Principal) -> Principal | None:
        """The principal as the reloaded files now define it (None: it is gone)."""
        if p.ref.startswith("system:") and self.policy is not None:  # a service account
            return Principal(p.name, self.policy.grants(p.ref), "k8s", p.expires_at, p.ref)
        if self.api_keys is not None:
            return self.api_keys.keys.get(p.ref)
        return None

    def recheck(self) -> None:
        """After a reload: end every stream whose principal lost the grant it streams on."""
        for watch in tuple(self._watches):
            p = watch.principal
            if not p.ref:
                continue  # a JWT carries its own grants: nothing reloaded changes them
            current = self._current(p)
            if current is None:
                self._end(watch, Unauthenticated("revoked", f"{p.name}: key removed"))
                continue
            try:
                authorize(current, "subscribe", watch.types, self.public)
                if p.kind == "ticket":
                    authorize(p, "subscribe", watch.types, self.public)
            except Denied as exc:
                self._end(watch, Forbidden(exc.detail, "revoked"))

    async def _poll_reload(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_POLL)
            changed = [f.reload_if_changed() for f in (self.api_keys, self.policy) if f]
            if any(changed):
                self.recheck()
