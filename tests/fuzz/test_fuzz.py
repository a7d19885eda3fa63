"""Property-based fuzzing (Hypothesis) of what clients send, over real sockets.

- the publish body, content type, Origin and credential: never a 5xx; a refusal stores
  nothing; what is accepted is exactly what the decision function allows;
- the SSE query and headers (Last-Event-ID, ticket, credential): never a 5xx;
- content that tries to forge SSE frames (newlines, `\\r`, `data:`/`id:`/`event:` lines,
  NUL) in data, keys or types: a subscriber sees exactly one well-formed frame carrying
  exactly what was published, or the publish was refused;
- gRPC Publish and Subscribe requests: only OK / INVALID_ARGUMENT / UNAUTHENTICATED /
  PERMISSION_DENIED, and nothing stored from a refused request.

Bounded by the `ci` profile (tests/fuzz/conftest.py); `make fuzz` runs the `long` one.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.auth_helpers import SECRET, token
from tests.fuzz.threaded_hub import ThreadedHub
from tests.servers import wait_for

TIMEOUT = 20.0
GOOD = token({"publish": ["ok:"], "subscribe": ["ok:"]}, expires_in=3600)
EXPIRED = token({"publish": ["*"]}, expires_in=-60)
CREDENTIALS = {
    "none": {},
    "good": {"Authorization": f"Bearer {GOOD}"},
    "expired": {"Authorization": f"Bearer {EXPIRED}"},
    "junk": {"Authorization": "Bearer x.y.z"},
    "basic": {"Authorization": "Basic Zm9vOmJhcg=="},
}
NASTY = st.sampled_from(
    ["\n", "\r", "\r\n", "\n\n", "data: x", "id: 1", "event: cachewire:reauth", "\x00", ":", " "]
)
TEXT = st.lists(st.one_of(NASTY, st.text(max_size=8)), max_size=5).map("".join)
TYPES = st.one_of(st.sampled_from(["ok", "ok:1", "ok:a:b", "other", "okay", "ok::x", ""]), TEXT)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
EVENT = st.fixed_dictionaries(
    {"type": TYPES},
    optional={
        "data": JSON,
        "keys": st.lists(TEXT, max_size=3),
        "prefixes": st.lists(TEXT, max_size=2),
        "flush": st.booleans(),
    },
)
BODY = st.one_of(
    EVENT.map(json.dumps),
    st.lists(EVENT, max_size=4).map(json.dumps),
    JSON.map(json.dumps),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@pytest.fixture(scope="module")
def protected() -> Iterator[ThreadedHub]:
    hub = ThreadedHub(auth="protected", jwt_key=SECRET, public_types=("pub:",)).start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def open_hub() -> Iterator[ThreadedHub]:
    hub = ThreadedHub().start()
    yield hub
    hub.stop()


def post(port: int, body: str, headers: dict[str, str]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        data = body.encode("utf-8", "surrogatepass")
        conn.request("POST", "/v1/publish", body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def allowed(body: str) -> bool:
    """What the decision function must allow for the GOOD credential (if the body is valid)."""
    try:
        value = json.loads(body)
    except ValueError:
        return False
    events = value if isinstance(value, list) else [value]
    return all(
        isinstance(e, dict)
        and isinstance(e.get("type"), str)
        and (e["type"] == "ok" or e["type"].startswith("ok:"))
        and not e.get("flush")
        for e in events
    )


@given(
    body=BODY,
    ctype=st.sampled_from(["application/json", "text/plain", "application/x-ndjson", ""]),
    origin=st.sampled_from([None, "https://evil.example", "null"]),
    credential=st.sampled_from(sorted(CREDENTIALS)),
)
def test_publish_never_fails_and_a_refusal_stores_nothing(
    protected: ThreadedHub, body: str, ctype: str, origin: str | None, credential: str
) -> None:
    headers = {"Content-Type": ctype, **CREDENTIALS[credential]}
    if origin is not None:
        headers["Origin"] = origin
    head = protected.head()
    status, answer = post(protected.hub.http_port, body, headers)
    assert status < 500, answer
    if status == 200:
        assert credential == "good" and origin is None and allowed(body)
        assert answer["ids"][-1] == protected.head()
    else:
        assert answer == {"error": answer["error"], "status": status}
        assert protected.head() == head  # nothing stored


HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


def raw_get(port: int, target: str, headers: dict[str, str]) -> int:
    """Send one GET as raw bytes; the status of the answer (the stream is then closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "connection closed without an answer"
            head += chunk
        return int(head.split(b" ", 2)[1])


@given(
    topics=st.lists(TYPES, max_size=4),
    last_id=st.none() | HEADER_TEXT,
    ticket=st.none() | HEADER_TEXT,
    credential=st.sampled_from(sorted(CREDENTIALS)),
    cookie=st.none() | HEADER_TEXT,
)
def test_sse_query_and_headers_never_fail(
    protected: ThreadedHub,
    topics: list[str],
    last_id: str | None,
    ticket: str | None,
    credential: str,
    cookie: str | None,
) -> None:
    query = {"eventType": ",".join(topics)}
    if ticket is not None:
        query["ticket"] = ticket
    headers = dict(CREDENTIALS[credential])
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    if cookie is not None:
        headers["Cookie"] = f"cachewire_token={cookie}"
    status = raw_get(protected.hub.http_port, "/?" + urllib.parse.urlencode(query), headers)
    assert status in (200, 400, 401, 403), status


class BlockingSse:
    """A blocking SSE reader: de-chunks, splits frames."""

    def __init__(self, port: int, topic: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.sendall(f"GET /?eventType={topic} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.raw = b""
        self.body = b""
        while b"\r\n\r\n" not in self.raw:
            self.raw += self._recv()
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        assert data, "stream ended"
        return data

    def frame(self) -> bytes:
        while True:
            while b"\r\n" in self.raw:
                size_text, rest = self.raw.split(b"\r\n", 1)
                size = int(size_text, 16)
                if len(rest) < size + 2:
                    break
                self.body += rest[:size]
                self.raw = rest[size + 2 :]
            if b"\n\n" in self.body:
                frame, self.body = self.body.split(b"\n\n", 1)
                return frame + b"\n\n"
            self.raw += self._recv()

    def close(self) -> None:
        self.sock.close()


@given(event=EVENT.map(lambda e: {**e, "type": "f:" + e["type"] if e["type"] else "f"}))
def test_content_never_forges_an_sse_frame(open_hub: ThreadedHub, event: dict[str, Any]) -> None:
    hub = open_hub
    client = BlockingSse(hub.hub.http_port, "f")
    try:
        hub.call(hub.hub.fanout.wait_subscribers(1, "sse"))
        status, answer = post(
            hub.hub.http_port, json.dumps(event), {"Content-Type": "application/json"}
        )
        assert status in (200, 400, 413), answer
        if status != 200:
            return
        [event_id] = answer["ids"]
        while True:  # skip the position frame and heartbeats
            frame = client.frame()
            if b"data: " in frame:
                break
        lines = frame.decode().split("\n")
        assert lines[0] == f"id: {event_id}" and lines[2:] == ["", ""], frame
        assert lines[1].startswith("data: ") and "\r" not in frame.decode()
        got = json.loads(lines[1][len("data: ") :])
        assert got["meta"]["type"] == event["type"]
        assert got["data"] == event.get("data")
        assert got["meta"].get("keys", []) == event.get("keys", [])
    finally:
        client.close()
        wait_for(lambda: hub.hub.fanout.count("sse") == 0, what="the subscriber gone")


@given(
    events=st.lists(
        st.builds(
            hub_pb2.EventInput,
            type=TYPES,
            data=TEXT,
            keys=st.lists(TEXT, max_size=3),
            prefixes=st.lists(TEXT, max_size=2),
            flush=st.booleans(),
        ),
        max_size=3,
    ),
    credential=st.sampled_from(sorted(CREDENTIALS)),
)
def test_grpc_publish_answers_only_known_codes_and_stores_nothing_when_refused(
    protected: ThreadedHub, events: list[hub_pb2.EventInput], credential: str
) -> None:
    metadata = tuple((k.lower(), v) for k, v in CREDENTIALS[credential].items())
    head = protected.head()
    with grpc.insecure_channel(f"127.0.0.1:{protected.hub.grpc_port}") as channel:
        stub = hub_pb2_grpc.HubStub(channel)
        try:
            stub.Publish(hub_pb2.PublishRequest(events=events), metadata=metadata, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            assert exc.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ), exc
            assert protected.head() == head
        else:
            assert credential == "good"
            assert all(e.type == "ok" or e.type.startswith("ok:") for e in events)
            assert not any(e.flush for e in events)


@given(
    topics=st.lists(TYPES, max_size=3),
    resume=st.one_of(st.just(""), TEXT),
    credential=st.sampled_from(sorted(CREDENTIALS)),
)
def test_grpc_subscribe_answers_only_known_codes(
    protected: ThreadedHub, topics: list[str], resume: str, credential: str
) -> None:
    metadata = tuple((k.lower(), v) for k, v in CREDENTIALS[credential].items())
    with grpc.insecure_channel(f"127.0.0.1:{protected.hub.grpc_port}") as channel:
        call = hub_pb2_grpc.HubStub(channel).Subscribe(
            hub_pb2.SubscribeRequest(topics=topics, resume_from=resume),
            metadata=metadata,
            timeout=TIMEOUT,
        )
        try:
            message = next(call)
            assert message.WhichOneof("message") in ("heartbeat", "reset", "events")
        except grpc.RpcError as exc:
            assert exc.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ), exc
        finally:
            call.cancel()


# --- the publish fast lane against the full stack (differential) ---

HEADER_LINES = st.sampled_from(
    [
        "Content-Type: application/json",
        "content-type: Application/JSON; charset=utf-8",
        "Content-Type: application/x-ndjson",
        "Content-Type: text/plain",
        "Content-Type: application/json\r\nContent-Type: application/json",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: identity",
        "Connection: close",
        "Connection: keep-alive",
        "Connection: Keep-Alive",
        "Expect: 100-continue",
        "Origin: https://evil.example",
        "Idempotency-Key: k1",
        "Idempotency-Key: has space",
        "Idempotency-Key: k1\r\nIdempotency-Key: k2",
        "Content-Length: 5",
        "X-Folded: a\r\n b",
        "Bad Header: x",
        "X-Empty:",
        "X-Tab:\tvalue\t",
        "Authorization: Bearer x.y.z",
        "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "traceparent: nonsense",
    ]
)
REQUEST_LINES = st.sampled_from(
    [
        "POST /v1/publish HTTP/1.1",
        "POST /v1/publish HTTP/1.0",
        "POST /v1/publish?x=1 HTTP/1.1",
        "post /v1/publish HTTP/1.1",
        "POST /v1/publish  HTTP/1.1",
        "POST /v1/publis HTTP/1.1",
    ]
)


@pytest.fixture(scope="module")
def two_hubs() -> Iterator[tuple[ThreadedHub, ThreadedHub]]:
    fast = ThreadedHub(fast_publish="on", max_body=4096).start()
    full = ThreadedHub(fast_publish="off", max_body=4096).start()
    yield fast, full
    fast.stop()
    full.stop()


def exchange(port: int, data: bytes) -> list[tuple[int, str]]:
    """Send raw bytes, then a closing GET; every answer until the hub closes, as (status,
    error) pairs (ids left out: the two hubs number alike but their epochs differ)."""
    closing = b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data + closing)
        while chunk := sock.recv(65536):
            received += chunk
    answers = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.lower(): v for k, _, v in (x.partition(": ") for x in lines[1:])}
        size = int(fields.get("content-length", "0"))  # none on a 100 Continue
        status = int(lines[0].split(" ")[1])
        error = json.loads(rest[:size])["error"] if status >= 400 else ""
        answers.append((status, error))
        received = rest[size:]
    return answers


@given(
    requests=st.lists(
        st.tuples(REQUEST_LINES, st.lists(HEADER_LINES, max_size=3), BODY, st.integers(-3, 0)),
        min_size=1,
        max_size=3,
    )
)
def test_the_fast_lane_answers_every_request_as_the_full_stack_does(
    two_hubs: tuple[ThreadedHub, ThreadedHub],
    requests: list[tuple[str, list[str], str, int]],
) -> None:
    """The same bytes (pipelined requests with odd request lines, duplicate or conflicting
    headers, folded lines, short Content-Lengths) to a hub with the fast lane and to one
    without: the same statuses and errors, in the same order."""
    data = b""
    for line, headers, body, short in requests:
        raw = body.encode("utf-8", "surrogatepass")
        length = max(0, len(raw) + short)
        head = "\r\n".join([line, "Host: h", *headers, f"Content-Length: {length}"])
        data += head.encode() + b"\r\n\r\n" + raw
    fast, full = two_hubs
    assert exchange(fast.hub.http_port, data) == exchange(full.hub.http_port, data)
