"""Events: validation shared by every publish path, Plasma's envelope, the SSE frame."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cachewire.hub.errors import InvalidInput, TooLarge
from cachewire.hub.events import (
    Event,
    data_json_from_text,
    drafts_from_json,
    make_draft,
    matches,
    parse_json,
    parse_topics,
    type_prefixes,
    validate_topic,
)


def event(type: str = "a:b", data: Any = None, **fields: Any) -> Event:
    draft = make_draft(type=type, data_json=json.dumps(data, ensure_ascii=False), **fields)
    return Event.from_draft(draft, "ep-7", (7, 0))


def test_type_prefixes_are_every_segment_boundary() -> None:
    assert list(type_prefixes("a:b:c")) == ["a", "a:b", "a:b:c"]
    assert list(type_prefixes("program")) == ["program"]


def test_matches_by_segment_not_by_string_prefix() -> None:
    assert matches(frozenset(["program:12"]), "program:12:views")
    assert not matches(frozenset(["program:12"]), "program:1234")
    assert not matches(frozenset(["program:12"]), "program")


def test_plasma_envelope_is_exact() -> None:
    assert event("program:1234:views", "42").plasma_json() == (
        '{"meta":{"type":"program:1234:views"},"data":"42"}'
    )


def test_extra_fields_go_inside_meta_only() -> None:
    body = json.loads(event("t", {"x": 1}, keys=["k1"], prefixes=["p:"], flush=True).plasma_json())
    assert set(body) == {"meta", "data"}
    assert body == {
        "meta": {"type": "t", "keys": ["k1"], "prefixes": ["p:"], "flush": True},
        "data": {"x": 1},
    }


def test_sse_frame_is_id_then_data_then_blank_line() -> None:
    assert event("a", "x").sse_frame() == (b'id: ep-7\ndata: {"meta":{"type":"a"},"data":"x"}\n\n')


@pytest.mark.parametrize(
    "data",
    [
        "line1\nline2\r\nline3\rend",
        "\n\n\n",
        "data: fake\n\nid: 999\n\n",
        "é — 日本語 — 🎉",
        "sep\u2028para\u2029end",
        {"nested": ["a\nb", {"c": "\r"}]},
    ],
)
def test_data_never_breaks_the_frame(data: Any) -> None:
    """Whatever the data, the frame is exactly two lines and a blank one, and round-trips."""
    frame = event("a", data).sse_frame()
    lines = frame.split(b"\n")
    assert len(lines) == 4 and lines[2:] == [b"", b""]
    assert b"\r" not in frame
    assert lines[0] == b"id: ep-7"
    assert lines[1].startswith(b"data: ")
    assert json.loads(lines[1][6:].decode()) == {"meta": {"type": "a"}, "data": data}


def test_unicode_is_sent_as_utf8_not_escaped() -> None:
    assert "日本".encode() in event("a", "日本").sse_frame()


def test_sse_chunk_is_encoded_once_and_wraps_the_frame() -> None:
    """Every subscriber is written the same bytes object: one HTTP/1.1 chunk per event."""
    ev = event("a", "x")
    assert ev.sse_chunk() is ev.sse_chunk()
    frame = ev.sse_frame()
    assert ev.sse_chunk() == b"%x\r\n%b\r\n" % (len(frame), frame)


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("", "must not be empty"),
        (":a", "empty segment"),
        ("a:", "empty segment"),
        ("a::b", "empty segment"),
        ("a\nb", "control character"),
        ("a\x00", "control character"),
        ("a\x7f", "control character"),
        ("x" * 257, "longer than 256 bytes"),
        ("é" * 129, "longer than 256 bytes"),
        ("a\ud800", "not valid Unicode"),
        (42, "must be a string"),
        (None, "must be a string"),
        (["a"], "must be a string"),
    ],
)
def test_bad_topics_are_rejected_with_the_reason(topic: Any, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        validate_topic(topic)


def test_a_topic_of_exactly_256_bytes_is_fine() -> None:
    assert validate_topic("x" * 256) == "x" * 256


def test_parse_topics_needs_one() -> None:
    with pytest.raises(InvalidInput, match="at least one"):
        parse_topics([])
    assert parse_topics(["a", "a", "b:c"]) == frozenset(["a", "b:c"])


def test_publish_body_object_or_array() -> None:
    one = drafts_from_json({"type": "a", "data": "x"}, max_keys=10)
    many = drafts_from_json(
        [{"type": "a"}, {"type": "b", "keys": ["k"], "flush": True}], max_keys=10
    )
    assert [(d.type, d.data_json) for d in one] == [("a", '"x"')]
    assert [(d.type, d.data_json, d.keys, d.flush) for d in many] == [
        ("a", "null", (), False),
        ("b", "null", ("k",), True),
    ]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "array is empty"),
        ("a string", "must be a JSON object"),
        (42, "must be a JSON object"),
        (None, "must be a JSON object"),
        ([{"type": "a"}, "x"], "event 1: an event must be a JSON object"),
        ([[{"type": "a"}]], "event 0: an event must be a JSON object"),
        ({"data": "x"}, "type is required"),
        ({"type": ""}, "must not be empty"),
        ({"type": None}, "must be a string"),
        ({"type": 5}, "must be a string"),
        ({"type": "a::b"}, "empty segment"),
        ({"type": "a\tb"}, "control character"),
        ({"type": "t" * 300}, "longer than 256 bytes"),
        ({"type": "a", "extra": 1}, "unknown field"),
        ({"type": "a", "keys": "k"}, "keys must be a list of strings"),
        ({"type": "a", "keys": [1]}, "keys must be a list of strings"),
        ({"type": "a", "keys": [""]}, "must not contain an empty string"),
        ({"type": "a", "keys": ["\ud800"]}, "not valid Unicode"),
        ({"type": "a", "prefixes": {"p": 1}}, "prefixes must be a list of strings"),
        ({"type": "a", "flush": "yes"}, "flush must be a boolean"),
        ({"type": "a", "flush": 1}, "flush must be a boolean"),
        ({"type": "a", "data": "\udc00"}, "not valid Unicode"),
    ],
)
def test_bad_publish_bodies_name_the_problem(body: Any, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        drafts_from_json(body, max_keys=10)


def test_too_many_keys_is_too_large() -> None:
    with pytest.raises(TooLarge, match="more than the limit of 3"):
        drafts_from_json({"type": "a", "keys": ["1", "2", "3", "4"]}, max_keys=3)
    with pytest.raises(TooLarge, match="together exceed"):
        drafts_from_json({"type": "a", "keys": ["1", "2"], "prefixes": ["3", "4"]}, max_keys=3)
    assert drafts_from_json({"type": "a", "keys": ["1", "2", "3"]}, max_keys=3)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"{", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"type":"a","data":NaN}', "NaN is not JSON"),
        (b'{"type":"a","data":-Infinity}', "Infinity is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_parse_json_is_strict(text: bytes, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        parse_json(text)


def test_deeply_nested_data_is_invalid_not_a_crash() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidInput, match="nested too deeply"):
        drafts_from_json({"type": "a", "data": deep}, max_keys=10)


def test_trace_context_is_kept_when_valid_and_dropped_when_not() -> None:
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    kept = make_draft(type="a", traceparent=good, tracestate="k=v")
    dropped = make_draft(type="a", traceparent="garbage", tracestate="k=v")
    assert (kept.traceparent, kept.tracestate) == (good, "k=v")
    assert (dropped.traceparent, dropped.tracestate) == ("", "")


@pytest.mark.parametrize(
    ("text", "data_json"),
    [("", "null"), ('"x"', '"x"'), ('{"a": [1, 2]}', '{"a":[1,2]}'), ('"日"', '"日"')],
)
def test_grpc_data_text_is_normalised_json(text: str, data_json: str) -> None:
    assert data_json_from_text(text) == data_json


@pytest.mark.parametrize("text", ["x", "NaN", "[1,", "{" * 100_000])
def test_grpc_data_text_must_be_json(text: str) -> None:
    with pytest.raises(InvalidInput):
        data_json_from_text(text)
