"""The decision function and grant patterns, pure: every rule written and tested once."""

from __future__ import annotations

import pytest

from cachewire.hub.auth.decide import ANONYMOUS, Grants, Principal, authorize, covers, patterns
from cachewire.hub.errors import Forbidden, Unauthenticated


def who(**grants: object) -> Principal:
    return Principal("p", Grants.from_claim(grants), "jwt")


@pytest.mark.parametrize(
    ("granted", "event_type", "covered"),
    [
        (["user:"], "user", True),
        (["user:"], "user:42", True),
        (["user:"], "user:42:email", True),
        (["user:"], "username", False),
        (["user"], "user:42", True),
        (["user:*"], "user:42", True),
        (["user:42"], "user", False),
        (["user:42"], "user:43", False),
        (["*"], "anything:at:all", True),
        ([], "user", False),
    ],
)
def test_patterns_are_segment_aware_like_subscriptions(
    granted: list[str], event_type: str, covered: bool
) -> None:
    assert covers(patterns(granted), event_type) is covered


@pytest.mark.parametrize("bad", [[""], ["a::b"], [1], "user:", ["a\nb"]])
def test_bad_patterns_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        patterns(bad)


def test_publish_needs_every_type_covered() -> None:
    p = who(publish=["order:"])
    authorize(p, "publish", ["order:1", "order"])
    with pytest.raises(Forbidden) as exc:
        authorize(p, "publish", ["order:1", "user:1"])
    assert exc.value.reason == "insufficient_scope" and "user:1" in exc.value.detail
    assert "user" not in str(exc.value)  # the client is not told which


def test_flush_needs_the_flush_grant() -> None:
    with pytest.raises(Forbidden):
        authorize(who(publish=["*"]), "flush", [])
    authorize(who(publish=["*"], flush=True), "flush", [])


def test_subscribe_allows_granted_and_public_types_only() -> None:
    p = who(subscribe=["user:42"])
    public = patterns(["program:"])
    authorize(p, "subscribe", ["user:42", "program:1"], public)
    with pytest.raises(Forbidden):
        authorize(p, "subscribe", ["user:42", "user:43"], public)
    with pytest.raises(Forbidden):  # publish grants do not give subscribe
        authorize(who(publish=["*"]), "subscribe", ["user"], public)


def test_anonymous_is_refused_with_401_and_no_error_attribute() -> None:
    authorize(ANONYMOUS, "subscribe", ["program:1"], patterns(["program"]))
    with pytest.raises(Unauthenticated) as exc:
        authorize(ANONYMOUS, "publish", ["program:1"], patterns(["program"]))
    assert exc.value.challenge == "Bearer" and exc.value.reason == "missing"


@pytest.mark.parametrize(
    "claim", [[], {"publish": "user"}, {"flush": "yes"}, {"admin": True}, {"subscribe": [""]}]
)
def test_malformed_grant_claims_are_refused(claim: object) -> None:
    with pytest.raises(ValueError):
        Grants.from_claim(claim)
