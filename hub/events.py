"""The event, and validation of what publishers send.

A `Draft` is a validated event without an id; a broker turns drafts into `Event`s by
assigning ids (stream positions) in order. Validation is shared by every publish path
(HTTP, gRPC, Plasma's Redis channels) so that they accept and reject exactly the same input.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from cachewire.common import wirejson
from cachewire.hub.errors import InvalidInput, TooLarge

MAX_TYPE_BYTES = 256
# Bytes of framing per field or list item in protobuf: a tag and a length (≤ 3 bytes
# below 2 MiB).
EVENT_FIELD_OVERHEAD = 4
# An event's fixed fields on the wire: id (≤ 64), published_at, flush and their framing.
EVENT_FIXED_BYTES = 96
RESET_TYPE = "cachewire:reset"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

Position = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Draft:
    """A validated event that has no id yet."""

    type: str
    data_json: str = "null"
    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    flush: bool = False
    traceparent: str = ""
    tracestate: str = ""
    published_at: float = field(default_factory=time.time)


@dataclass(eq=False, slots=True)
class Event:
    """An event in a stream. `pos` orders events within one epoch; `id` is what clients see."""

    id: str
    pos: Position
    type: str
    data_json: str
    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    flush: bool = False
    traceparent: str = ""
    tracestate: str = ""
    published_at: float = 0.0
    _sse: bytes | None = None  # the SSE frame as one HTTP/1.1 chunk, encoded once
    _size: int = 0  # memory_bytes(), computed once

    @classmethod
    def from_draft(cls, draft: Draft, id: str, pos: Position) -> Event:
        return cls(
            id,
            pos,
            draft.type,
            draft.data_json,
            draft.keys,
            draft.prefixes,
            draft.flush,
            draft.traceparent,
            draft.tracestate,
            draft.published_at,
        )

    def memory_bytes(self) -> int:
        """What keeping this event costs, about: its text twice (the data, and the SSE
        frame encoded once for every subscriber) and Python's per-object overhead."""
        size = self._size
        if size == 0:
            text = len(self.data_json) + len(self.type) + sum(map(len, self.keys))
            text += sum(map(len, self.prefixes))
            size = self._size = 2 * text + 64 * (len(self.keys) + len(self.prefixes)) + 400
        return size

    def plasma_json(self) -> str:
        """Plasma's envelope: {"meta":{"type":...},"data":...}; extra fields only in meta."""
        meta: dict[str, Any] = {"type": self.type}
        if self.keys:
            meta["keys"] = list(self.keys)
        if self.prefixes:
            meta["prefixes"] = list(self.prefixes)
        if self.flush:
            meta["flush"] = True
        return f'{{"meta":{_dumps(meta)},"data":{self.data_json}}}'

    def sse_chunk(self) -> bytes:
        """The SSE frame as one HTTP/1.1 chunk: encoded once, the same bytes for every
        subscriber, written as is (the hot path allocates nothing per subscriber)."""
        wire = self._sse
        if wire is None:
            wire = self._sse = as_chunk(f"id: {self.id}\ndata: {self.plasma_json()}\n\n".encode())
        return wire

    def sse_frame(self) -> bytes:
        """The bare SSE frame (for HTTP/1.0 clients, which get no chunked encoding)."""
        return bytes(self.sse_frame_view())

    def sse_frame_view(self) -> memoryview:
        """The bare SSE frame as a view into the shared chunk: what HTTP/1.0 subscribers
        are sent, so that their replays copy nothing per subscriber."""
        wire = self.sse_chunk()
        return memoryview(wire)[wire.index(b"\r\n") + 2 : -2]


def as_chunk(data: bytes) -> bytes:
    """`data` as one chunk of HTTP/1.1 chunked transfer encoding."""
    return b"%x\r\n%b\r\n" % (len(data), data)


_dumps = wirejson.dumps


def parse_json(text: str | bytes, what: str = "the body") -> Any:
    """Strict JSON: no NaN/Infinity, no number beyond a double's range (browsers'
    JSON.parse rejects them), bounded nesting."""
    try:
        return wirejson.loads(text)
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what} is not valid JSON ({exc})") from None


def _encodable(text: str, what: str) -> None:
    """JSON admits lone surrogates ("\\ud800"); UTF-8, and so every wire, does not."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode (lone surrogate)") from None


def type_prefixes(event_type: str) -> Iterator[str]:
    """ "a:b:c" → "a", "a:b", "a:b:c": the topics that receive an event of this type."""
    start = 0
    while True:
        i = event_type.find(":", start)
        if i < 0:
            yield event_type
            return
        yield event_type[:i]
        start = i + 1


def matches(topics: frozenset[str], event_type: str) -> bool:
    return any(p in topics for p in type_prefixes(event_type))


def validate_topic(topic: Any, what: str = "type") -> str:
    """A topic or event type: non-empty `:`-separated segments, ≤ 256 bytes, no controls."""
    if not isinstance(topic, str):
        raise InvalidInput(f"{what} must be a string")
    if not topic:
        raise InvalidInput(f"{what} must not be empty")
    if len(topic) > MAX_TYPE_BYTES // 4 or not topic.isascii():  # else: ASCII and short
        _encodable(topic, what)
        if len(topic.encode()) > MAX_TYPE_BYTES:
            raise InvalidInput(f"{what} is longer than {MAX_TYPE_BYTES} bytes")
    if _CONTROL.search(topic):
        raise InvalidInput(f"{what} contains a control character")
    if topic[0] == ":" or topic[-1] == ":" or "::" in topic:
        raise InvalidInput(f"{what} {topic!r} has an empty segment")
    return topic


def event_bytes(
    type: str, data_bytes: int, keys: tuple[str, ...], prefixes: tuple[str, ...]
) -> int:
    """An upper bound of one event's size in a protobuf message."""
    return EVENT_FIXED_BYTES + len(type) + data_bytes + _list_bytes(keys) + _list_bytes(prefixes)


def parse_topics(
    raw: Sequence[Any], what: str = "topic", limit: int | None = None
) -> frozenset[str]:
    if not raw:
        raise InvalidInput(f"at least one {what} is required")
    if limit is not None and len(raw) > limit:
        raise TooLarge(
            f"{len(raw)} {what}s in one subscription, more than the limit of {limit} (--max-topics)"
        )
    return frozenset(validate_topic(t, what) for t in raw)


def _string_list(value: Any, name: str, limit: int) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{name} must be a list of strings")
    if len(value) > limit:
        raise TooLarge(f"{name} has {len(value)} entries, more than the limit of {limit}")
    if not all(value):
        raise InvalidInput(f"{name} must not contain an empty string")
    joined = "".join(value)
    if not joined.isascii():
        _encodable(joined, name)
    return tuple(value)


def _list_bytes(values: tuple[str, ...]) -> int:
    """UTF-8 bytes of a list on the wire: each item with its framing."""
    if not values:
        return 0
    joined = "".join(values)
    text = len(joined) if joined.isascii() else len(joined.encode("utf-8", "surrogatepass"))
    return text + EVENT_FIELD_OVERHEAD * len(values)


def make_draft(
    *,
    type: Any,
    data_json: str = "null",
    keys: Any = None,
    prefixes: Any = None,
    flush: Any = False,
    traceparent: str = "",
    tracestate: str = "",
    max_keys: int = 10_000,
    max_bytes: int | None = None,
    max_prefixes: int | None = None,
) -> Draft:
    """Validate one event's fields; raise InvalidInput naming the first problem.

    With `max_bytes`, an event whose encoding may exceed it is refused (TooLarge): every
    event must fit in one gRPC message on its own, however the hub batches it."""
    validate_topic(type)
    keys_t = _string_list(keys, "keys", max_keys)
    prefixes_t = _string_list(prefixes, "prefixes", min(max_keys, max_prefixes or max_keys))
    if len(keys_t) + len(prefixes_t) > max_keys:
        raise TooLarge(f"keys and prefixes together exceed the limit of {max_keys}")
    if not isinstance(flush, bool):
        raise InvalidInput("flush must be a boolean")
    if data_json.isascii():
        data_bytes = len(data_json)
    else:
        _encodable(data_json, "data")
        data_bytes = len(data_json.encode())
    if max_bytes is not None:
        size = event_bytes(type, data_bytes, keys_t, prefixes_t)
        size += len(traceparent) + min(len(tracestate), 512)
        if size > max_bytes:
            raise TooLarge(
                f"the event is {size} bytes encoded, more than the limit of {max_bytes} "
                "(--max-body)"
            )
    if traceparent and not _TRACEPARENT.match(traceparent):
        traceparent, tracestate = "", ""  # a malformed context is dropped, as W3C says
    return Draft(type, data_json, keys_t, prefixes_t, flush, traceparent, tracestate[:512])


_FIELDS = frozenset(("type", "data", "keys", "prefixes", "flush"))


def draft_from_item(
    item: Any,
    *,
    max_keys: int,
    traceparent: str = "",
    tracestate: str = "",
    max_bytes: int | None = None,
    max_prefixes: int | None = None,
) -> Draft:
    """One event object of a publish body (JSON or NDJSON) → a draft, or InvalidInput."""
    if not isinstance(item, dict):
        raise InvalidInput("an event must be a JSON object")
    if not item.keys() <= _FIELDS:
        unknown = set(item) - _FIELDS
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    if "type" not in item:
        raise InvalidInput("type is required")
    try:
        data_json = _dumps(item.get("data"))
    except RecursionError:
        raise InvalidInput("data is nested too deeply") from None
    except ValueError as exc:  # a non-finite number, should one get this far
        raise InvalidInput(f"data is not JSON ({exc})") from None
    return make_draft(
        type=item["type"],
        data_json=data_json,
        keys=item.get("keys"),
        prefixes=item.get("prefixes"),
        flush=item.get("flush", False),
        traceparent=traceparent,
        tracestate=tracestate,
        max_keys=max_keys,
        max_bytes=max_bytes,
        max_prefixes=max_prefixes,
    )


class Limits(TypedDict):
    """The keyword arguments `drafts_from_json` and `drafts_from_ndjson` share."""

    max_keys: int
    traceparent: str
    tracestate: str
    max_bytes: int | None
    max_prefixes: int | None
    max_events: int | None


def drafts_from_json(
    body: Any,
    *,
    max_keys: int,
    traceparent: str = "",
    tracestate: str = "",
    max_bytes: int | None = None,
    max_prefixes: int | None = None,
    max_events: int | None = None,
) -> list[Draft]:
    """An HTTP publish body (one object or an array of them) → drafts, or InvalidInput."""

    def one(item: Any) -> Draft:
        return draft_from_item(
            item,
            max_keys=max_keys,
            traceparent=traceparent,
            tracestate=tracestate,
            max_bytes=max_bytes,
            max_prefixes=max_prefixes,
        )

    if not isinstance(body, list):  # the common case: one event, no error prefix
        return [one(body)]
    if not body:
        raise InvalidInput("the event array is empty")
    check_count(len(body), max_events)
    drafts = []
    for i, item in enumerate(body):
        try:
            drafts.append(one(item))
        except InvalidInput as exc:
            raise type(exc)(f"event {i}: {exc}") from None
    return drafts


def drafts_from_ndjson(
    body: bytes,
    *,
    max_keys: int,
    traceparent: str = "",
    tracestate: str = "",
    max_bytes: int | None = None,
    max_prefixes: int | None = None,
    max_events: int | None = None,
) -> list[Draft]:
    """An NDJSON publish body (one event object a line; blank lines skipped) → drafts.

    All or nothing, like an array: InvalidInput names the first bad line (counted from 1).
    """
    drafts = []
    for number, line in enumerate(body.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            item = parse_json(line, "the line")
            drafts.append(
                draft_from_item(
                    item,
                    max_keys=max_keys,
                    traceparent=traceparent,
                    tracestate=tracestate,
                    max_bytes=max_bytes,
                    max_prefixes=max_prefixes,
                )
            )
        except InvalidInput as exc:
            raise type(exc)(f"line {number}: {exc}") from None
        check_count(len(drafts), max_events)
    if not drafts:
        raise InvalidInput("the NDJSON body has no event")
    return drafts


def check_count(events: int, max_events: int | None) -> None:
    """One request publishes at most `max_events` (its validation and fan-out hold the loop)."""
    if max_events is not None and events > max_events:
        raise TooLarge(
            f"the request has {events} events, more than the limit of {max_events} (--max-events)"
        )


MAX_IDEMPOTENCY_KEY = 255


def idempotency_key(raw: str) -> str:
    """A publish's idempotency key: 1 to 255 visible ASCII characters ("" when none)."""
    if raw and (
        len(raw) > MAX_IDEMPOTENCY_KEY or not raw.isascii() or not raw.isprintable() or " " in raw
    ):
        raise InvalidInput(
            f"the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )
    return raw


def data_json_from_text(text: str) -> str:
    """gRPC publishers send data as JSON text; empty means null."""
    if not text:
        return "null"
    try:
        value = wirejson.loads(text)
        return _dumps(value)
    except RecursionError:
        raise InvalidInput("data is nested too deeply") from None
    except ValueError:
        raise InvalidInput("data must be JSON text (a JSON string needs quotes)") from None
