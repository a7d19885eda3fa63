"""Grants, principals and the one decision: may this principal do this action on these types.

A grant is a list of type patterns on the colon hierarchy, matched exactly like
subscriptions: the pattern `user:` (or `user`, or `user:*`) covers `user` and `user:…` but
not `username`; `*` covers every type. Every transport (HTTP publish, SSE, tickets, both
gRPC services) calls `authorize`, so a rule is written and tested once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from cachewire.hub.errors import Forbidden, InvalidInput, Unauthenticated
from cachewire.hub.events import matches, validate_topic

Action = Literal["publish", "subscribe", "flush"]
ANY = "*"


def pattern(raw: Any) -> str:
    """A grant pattern in its matcher form: `user:`, `user:*` and `user` all become `user`."""
    if raw == ANY:
        return ANY
    if not isinstance(raw, str):
        raise ValueError("a type pattern must be a string")
    text = raw.removesuffix(":*").removesuffix(":")
    try:
        return validate_topic(text, f"type pattern {raw!r}")
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None


def patterns(raw: Any) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list | tuple):
        raise ValueError("type patterns must be a list of strings")
    return frozenset(pattern(p) for p in raw)


def covers(granted: frozenset[str], event_type: str) -> bool:
    """True when the patterns cover this type (or topic): the subscription matcher."""
    return ANY in granted or matches(granted, event_type)


@dataclass(frozen=True, slots=True)
class Grants:
    publish: frozenset[str] = frozenset()
    subscribe: frozenset[str] = frozenset()
    flush: bool = False

    @classmethod
    def from_claim(cls, claim: Any) -> Grants:
        """`{"publish": [...], "subscribe": [...], "flush": true}` → Grants; ValueError if bad."""
        if claim is None:
            return cls()
        if not isinstance(claim, dict):
            raise ValueError("grants must be an object")
        unknown = set(claim) - {"publish", "subscribe", "flush"}
        if unknown:
            raise ValueError(f"unknown grant field(s): {', '.join(sorted(unknown))}")
        flush = claim.get("flush", False)
        if not isinstance(flush, bool):
            raise ValueError("flush must be a boolean")
        return cls(patterns(claim.get("publish")), patterns(claim.get("subscribe")), flush)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for. `kind` says how it was authenticated; `ref` names what a
    reload re-reads (an API key's hash, a service account); `expires_at` is Unix time."""

    name: str
    grants: Grants = field(default_factory=Grants)
    kind: Literal["anonymous", "jwt", "api_key", "k8s", "ticket"] = "anonymous"
    expires_at: float | None = None
    ref: str = ""

    @property
    def anonymous(self) -> bool:
        return self.kind == "anonymous"


ANONYMOUS = Principal("anonymous")


def authorize(
    principal: Principal,
    action: Action,
    types: Iterable[str],
    public: frozenset[str] = frozenset(),
) -> None:
    """Return if `principal` may do `action` on every one of `types`; else raise.

    publish: every type is covered by the publish grants. flush: the grant says
    `flush: true` (the caller also checks publish). subscribe: every type is covered by
    the subscribe grants or is public. Anonymous refusals are 401 (a credential is
    needed), an authenticated principal's are 403.
    """
    if action == "flush":
        if not principal.grants.flush:
            _refuse(principal, "flush not granted")
        return
    granted = principal.grants.publish if action == "publish" else principal.grants.subscribe
    for event_type in types:
        if covers(granted, event_type):
            continue
        if action == "subscribe" and covers(public, event_type):
            continue
        _refuse(principal, f"{action} not granted on {event_type!r}")


def _refuse(principal: Principal, detail: str) -> None:
    if principal.anonymous:
        raise Unauthenticated("missing", f"anonymous: {detail}", credential_sent=False)
    raise Forbidden(f"{principal.name}: {detail}")
