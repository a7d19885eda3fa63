"""Rules: type patterns → key and prefix templates (the config file's [[rules]])."""

from __future__ import annotations

import pytest

from cachewire.sidecar.errors import ConfigError
from cachewire.sidecar.rules import Rules, make_rule, parse_rules
from cachewire.sidecar.sinks.base import Invalidation


def rules(*tables: dict[str, object]) -> Rules:
    return Rules(parse_rules(list(tables)))


def test_capture_fills_key_templates() -> None:
    """`user:{id}` on type user:42 → keys user:42 and user:42:profile."""
    r = rules({"type": "user:{id}", "keys": ["user:{id}", "user:{id}:profile"]})
    assert r.derive("user:42") == (("user:42", "user:42:profile"), (), False)


def test_pattern_matches_the_whole_type() -> None:
    """A pattern of two segments matches neither one nor three segments, nor other literals."""
    r = rules({"type": "user:{id}", "keys": ["u{id}"]})
    assert r.derive("user") == ((), (), False)
    assert r.derive("user:42:posts") == ((), (), False)
    assert r.derive("order:42") == ((), (), False)


def test_star_matches_one_segment_without_capturing() -> None:
    r = rules({"type": "*:{id}", "keys": ["any:{id}"]})
    assert r.derive("user:7")[0] == ("any:7",)
    assert r.derive("user:7:x")[0] == ()


def test_rest_capture_takes_remaining_segments() -> None:
    """`{rest...}` as the last segment captures one or more segments joined with `:`."""
    r = rules({"type": "page:{path...}", "keys": ["html:{path}"]})
    assert r.derive("page:a:b:c")[0] == ("html:a:b:c",)
    assert r.derive("page:a")[0] == ("html:a",)
    assert r.derive("page")[0] == ()


def test_type_placeholder_braces_and_prefixes() -> None:
    """{type} is the whole type; {{ and }} are literal braces; prefixes and flush derive too."""
    r = rules(
        {"type": "user:{id}", "keys": ["{{{type}}}"], "prefixes": ["feed:{id}:"]},
        {"type": "config", "flush": True},
    )
    assert r.derive("user:9") == (("{user:9}",), ("feed:9:",), False)
    assert r.derive("config") == ((), (), True)


def test_every_matching_rule_applies_and_event_keys_stay() -> None:
    """Rules add to the event's own keys, deduplicated, in order."""
    r = rules(
        {"type": "user:{id}", "keys": ["user:{id}"]},
        {"type": "user:*", "keys": ["users:list"]},
    )
    inv = Invalidation(id="e-1", type="user:5", keys=("user:5", "x"))
    out = r.expand(inv)
    assert out.keys == ("user:5", "x", "users:list")
    assert r.expand(Invalidation(id="e-2", type="other")) == Invalidation(id="e-2", type="other")


def test_rule_deriving_prefixes_is_reported() -> None:
    """need_prefixes lists the patterns memcached cannot serve (warned at start-up)."""
    r = rules({"type": "a:{x}", "keys": ["k{x}"]}, {"type": "b:{x}", "prefixes": ["p{x}"]})
    assert r.need_prefixes == ["b:{x}"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"keys": ["k"]}, "rules[0]: type is required"),
        (
            {"type": "user:{id}", "keys": ["user:{uid}"]},
            "uses {uid}; the pattern gives {id}, {type}",
        ),
        ({"type": "user::x", "keys": ["k"]}, "empty segment"),
        ({"type": "user:{id}x", "keys": ["k"]}, "a capture is a whole segment"),
        ({"type": "a:{r...}:b", "keys": ["k"]}, "must be the last segment"),
        ({"type": "a:{x}:{x}", "keys": ["k"]}, "captures {x} twice"),
        ({"type": "a:{type}", "keys": ["k"]}, "{type} is reserved"),
        ({"type": "a", "keys": ["k{"]}, "unmatched '{'"),
        ({"type": "a", "keys": "k"}, "keys: must be a list of strings"),
        ({"type": "a", "keys": [""]}, "non-empty"),
        ({"type": "a"}, "needs keys, prefixes or flush = true"),
        ({"type": "a", "keys": ["k"], "flush": "yes"}, "flush: must be true or false"),
        ({"type": "a", "keys": ["k"], "ttl": 3}, "unknown field(s) ttl"),
    ],
)
def test_bad_rules_name_the_rule_and_field(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        parse_rules([table])
    assert message in str(err.value)
    assert str(err.value).startswith("rules[0]")


def test_rules_must_be_an_array_of_tables() -> None:
    with pytest.raises(ConfigError, match=r"array of tables"):
        parse_rules({"type": "a"})
    with pytest.raises(ConfigError, match=r"must be a table"):
        make_rule("user:{id}")
