"""The Redis broker's and channel ingest's pure parts: ids, backoff, entries, messages."""

from __future__ import annotations

import random
from typing import Any

import pytest

from cachewire.hub.brokers.redis import entry_fields, lost_after
from cachewire.hub.brokers.redis_link import SentinelUrl, check_url, next_delay
from cachewire.hub.brokers.redis_reader import (
    event_from_entry,
    parse_event_id,
    parse_stream_id,
    stream_id,
)
from cachewire.hub.errors import InvalidInput, TooLarge
from cachewire.hub.events import Draft
from cachewire.hub.ingest import draft_from_message

# --- ids ---


def test_an_event_id_is_epoch_then_stream_id() -> None:
    assert parse_event_id("a1b2c3d4-1700000000000-7") == ("a1b2c3d4", (1700000000000, 7))
    assert parse_event_id("e-0-0") == ("e", (0, 0))
    assert stream_id((1700000000000, 7)) == "1700000000000-7"
    assert parse_stream_id("5-6") == (5, 6)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "e",
        "e-1",
        "-1-2",
        "e-1-",
        "e--1",
        "e-1-2-3",
        "e-x-1",
        "e-1-x",
        "e-²-1",
        "e-1-٣",
        "e-1 -2",
        "e-" + "9" * 21 + "-0",
    ],
)
def test_malformed_event_ids_do_not_parse(bad: str) -> None:
    assert parse_event_id(bad) is None


def test_positions_order_like_stream_ids() -> None:
    ids = ["e-1-0", "e-1-1", "e-1-10", "e-2-0", "e-10-0"]
    positions = [parsed[1] for i in ids if (parsed := parse_event_id(i))]
    assert positions == sorted(positions) and len(set(positions)) == 5


# --- backoff ---


def test_backoff_grows_exponentially_within_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    for attempt in range(40):
        ceiling = min(2.0, 0.1 * 2**attempt)
        delay = next_delay(attempt, 0.1, 2.0, rng)
        assert ceiling / 2 <= delay <= ceiling
    assert next_delay(10**6, 0.1, 2.0, rng) <= 2.0  # no overflow on a long outage


def test_backoff_never_spins_and_is_jittered() -> None:
    rng = random.Random(7)
    first = [next_delay(0, 0.1, 2.0, rng) for _ in range(50)]
    assert min(first) >= 0.05  # no busy loop even on the first retry
    assert len(set(first)) > 40  # replicas do not retry in lockstep


def test_backoff_is_deterministic_for_a_seeded_rng() -> None:
    a = [next_delay(n, 0.1, 2.0, random.Random(3)) for n in range(5)]
    b = [next_delay(n, 0.1, 2.0, random.Random(3)) for n in range(5)]
    assert a == b


# --- stream entries ---


def test_an_entry_round_trips_every_event_field() -> None:
    draft = Draft(
        "user:42",
        '{"name":"é"}',
        ("k1", "k 2"),
        ("p:",),
        True,
        "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "vendor=1",
        1700000000.25,
    )
    fields = entry_fields(draft)
    as_dict = dict(zip(fields[::2], fields[1::2], strict=True))
    event = event_from_entry("ep", "1700000000000-3", {"epoch": "ep2", **as_dict})
    assert event.id == "ep2-1700000000000-3"  # the epoch the entry was written under
    assert event.pos == (1700000000000, 3)
    assert (event.type, event.data_json, event.keys, event.prefixes, event.flush) == (
        "user:42",
        '{"name":"é"}',
        ("k1", "k 2"),
        ("p:",),
        True,
    )
    assert (event.traceparent, event.tracestate, event.published_at) == (
        draft.traceparent,
        "vendor=1",
        1700000000.25,
    )


def test_a_minimal_entry_leaves_optional_fields_out() -> None:
    fields = entry_fields(Draft("a", "null", published_at=1.5))
    assert fields == ["type", "a", "data", "null", "published_at", "1.5"]
    event = event_from_entry("ep", "1-0", dict(zip(fields[::2], fields[1::2], strict=True)))
    assert (event.id, event.keys, event.flush, event.traceparent) == ("ep-1-0", (), False, "")


def test_an_entry_that_is_not_an_event_is_rejected() -> None:
    with pytest.raises(KeyError):
        event_from_entry("ep", "1-0", {"data": "1"})
    with pytest.raises(ValueError):
        event_from_entry("ep", "bogus", {"type": "a"})


# --- what history lost (XINFO STREAM) ---


def info(
    length: int, added: int, first: str | None, last: str, deleted: str = "0-0"
) -> dict[str, Any]:
    return {
        "length": length,
        "entries-added": added,
        "last-generated-id": last,
        "max-deleted-entry-id": deleted,
        "first-entry": (first, {}) if first else None,
    }


def test_nothing_is_lost_while_nothing_was_trimmed() -> None:
    assert not lost_after((0, 0), info(3, 3, "5-0", "5-2"))
    assert not lost_after((5, 1), info(3, 3, "5-0", "5-2"))


def test_ids_older_than_the_first_entry_left_after_trimming_are_lost() -> None:
    trimmed = info(100, 300, "9-200", "9-299")
    assert lost_after((9, 0), trimmed)
    assert lost_after((0, 0), trimmed)
    assert not lost_after((9, 200), trimmed)
    assert not lost_after((9, 250), trimmed)


def test_an_empty_stream_after_trimming_lost_everything_before_its_last_id() -> None:
    assert lost_after((1, 0), info(0, 5, None, "1-4"))
    assert not lost_after((1, 4), info(0, 5, None, "1-4"))


def test_a_deleted_entry_after_the_id_is_a_loss() -> None:
    assert lost_after((5, 0), info(2, 3, "5-0", "5-2", deleted="5-1"))
    assert not lost_after((5, 1), info(2, 3, "5-0", "5-2", deleted="5-1"))


# --- Plasma channel messages ---


def parse(raw: bytes | str) -> Draft:
    return draft_from_message(raw, max_keys=10, max_bytes=1000)


def test_a_plasma_message_becomes_a_draft() -> None:
    draft = parse(b'{"meta":{"type":"program:1234:views"},"data":{"views":1}}')
    assert (draft.type, draft.data_json) == ("program:1234:views", '{"views":1}')
    assert parse('{"meta":{"type":"a"}}').data_json == "null"
    assert parse('{"meta":{"type":"a","other":1},"data":"x"}').data_json == '"x"'


def test_cachewire_fields_in_meta_are_honoured() -> None:
    draft = parse('{"meta":{"type":"a","keys":["k"],"prefixes":["p"],"flush":true}}')
    assert (draft.keys, draft.prefixes, draft.flush) == (("k",), ("p",), True)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe", "message"),
        ("not json", "not valid JSON"),
        ("[1]", "meta"),
        ('{"data":1}', "meta"),
        ('{"meta":[]}', "meta"),
        ('{"meta":{}}', "meta.type"),
        ('{"meta":{"type":""}}', "empty"),
        ('{"meta":{"type":7}}', "string"),
        ('{"meta":{"type":"a"},"data":NaN}', "JSON"),
        ('{"meta":{"type":"a","flush":1}}', "flush"),
        ('{"meta":{"type":"a"},"data":"\\ud800"}', "Unicode"),
    ],
)
def test_malformed_messages_say_what_is_wrong(raw: bytes | str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse(raw)


def test_limits_apply_to_channel_messages() -> None:
    with pytest.raises(TooLarge):
        parse('{"meta":{"type":"a"},"data":"' + "x" * 1000 + '"}')
    with pytest.raises(TooLarge):
        parse(
            '{"meta":{"type":"a","keys":'
            + str([f"k{i}" for i in range(11)]).replace("'", '"')
            + "}}"
        )
    with pytest.raises(InvalidInput, match="deep"):
        draft_from_message("[" * 100_000 + "]" * 100_000, max_keys=10, max_bytes=10**6)


# --- URLs ---


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db() -> None:
    url = SentinelUrl.parse("redis+sentinel://u:p%40ss@s1:26380,s2/mymaster/3?sentinel_password=x")
    assert url.sentinels == [("s1", 26380), ("s2", 26379)]
    assert (url.service, url.db, url.username, url.password) == ("mymaster", 3, "u", "p@ss")
    assert (url.sentinel_password, url.ssl) == ("x", False)
    plain = SentinelUrl.parse("rediss+sentinel://s1/cw")
    assert (plain.db, plain.password, plain.ssl) == (0, None, True)


@pytest.mark.parametrize(
    "bad",
    [
        "http://h",
        "redis://h:port/0",
        "redis://h/abc",
        "redis://h/٣",
        "redis+sentinel://s1",
        "redis+sentinel://s1/cw/x",
        "redis+sentinel:///cw",
        "redis+sentinel://s1:x/cw",
    ],
)
def test_urls_redis_py_cannot_use_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        check_url(bad)


@pytest.mark.parametrize(
    "good",
    ["redis://h", "redis://:pw@h:6380/2", "rediss://h/0?ssl_cert_reqs=none", "unix:///r.sock"],
)
def test_usual_urls_are_accepted(good: str) -> None:
    assert check_url(good) == good
