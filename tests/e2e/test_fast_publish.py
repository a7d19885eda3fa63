"""The publish fast lane (`--fast-publish`, hub/fastlane.py) over raw sockets against a
`cachewire hub` process: plain publishes answered like aiohttp answers them, in order;
everything else handed to aiohttp with the bytes after it; framing never decided twice."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.auth_helpers import SECRET, write_api_keys
from tests.servers import Proc, free_port

WAIT = 10.0
HEAD = "POST /v1/publish HTTP/1.1\r\nHost: hub\r\n{extra}Content-Length: {n}\r\n\r\n"
JSON = "Content-Type: application/json\r\n"


def request(body: str, extra: str = JSON) -> bytes:
    return HEAD.format(extra=extra, n=len(body.encode())).encode() + body.encode()


def responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """`count` HTTP responses (Content-Length framed) read from a keep-alive connection."""
    data, out = b"", []
    while len(out) < count:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:])
            size = int(headers["Content-Length"])
            if len(rest) >= size:
                out.append((int(lines[0].split(" ")[1]), headers, rest[:size]))
                data = rest[size:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(out)} of {count} responses"
        data += chunk
    assert not data
    return out


def metrics(hub: Proc, admin: bool = False) -> str:
    port = admin_port(hub) if admin else hub.ports["http"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as resp:
        return str(resp.read().decode())


def admin_port(hub: Proc) -> int:
    argv = [str(a) for a in hub.popen.args]  # type: ignore[union-attr]
    return int(argv[argv.index("--admin-port") + 1])


def metric(hub: Proc, name: str) -> float:
    text = metrics(hub)
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


def connect(hub: Proc) -> socket.socket:
    return socket.create_connection(("127.0.0.1", hub.ports["http"]), timeout=WAIT)


@pytest.fixture
def hub(hub_process: Callable[..., Proc]) -> Proc:
    return hub_process(grpc=False)


def test_plain_publishes_are_answered_like_aiohttp_answers_them(
    hub_process: Callable[..., Proc],
) -> None:
    """The same requests to a hub with the fast lane and one without: the same statuses,
    headers (but Date) and bodies (ids differ only by the hub's epoch)."""
    answers = []
    for mode in ("on", "off"):
        hub = hub_process("--fast-publish", mode, grpc=False)
        with connect(hub) as sock:
            sock.sendall(request('{"type":"user:1","keys":["user:1"]}'))
            sock.sendall(
                request('{"type":"a"}\n{"type":"b"}\n', "Content-Type: application/x-ndjson\r\n")
            )
            got = responses(sock, 2)
        answers.append(
            [(s, {k: v for k, v in h.items() if k != "Date"}, json.loads(b)) for s, h, b in got]
        )
        assert metric(hub, "cachewire_hub_fast_publishes_total") == (2 if mode == "on" else 0)
    fast, slow = answers
    for (fs, fh, fb), (ss, sh, sb) in zip(fast, slow, strict=True):
        assert (fs, fh) == (ss, sh) == (200, sh)
        assert [i.split("-")[1] for i in fb["ids"]] == [i.split("-")[1] for i in sb["ids"]]
    assert fast[0][1]["Content-Type"] == "application/json"


def test_pipelined_requests_are_answered_in_order_across_the_hand_over(hub: Proc) -> None:
    """Plain, plain, a bad one (aiohttp's 400 from then on), plain: four answers in order,
    in one write; the bad one stored nothing, the last one is stored by aiohttp."""
    with connect(hub) as sock:
        sock.sendall(
            request('{"type":"a"}')
            + request('{"type":"b"}')
            + request('{"type":1}')
            + request('{"type":"c"}')
        )
        got = responses(sock, 4)
    assert [status for status, _, _ in got] == [200, 200, 400, 200]
    assert json.loads(got[2][2]) == {"error": "type must be a string", "status": 400}
    seqs = [int(json.loads(got[i][2])["ids"][0].split("-")[1]) for i in (0, 1, 3)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert metric(hub, "cachewire_hub_fast_publishes_total") == 2
    assert metric(hub, "cachewire_hub_fast_lane_deferred_total") == 1


def test_a_request_in_single_bytes_is_answered(hub: Proc) -> None:
    data = request('{"type":"user:42","keys":["user:42"]}')
    with connect(hub) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
        [(status, _, body)] = responses(sock, 1)
    assert status == 200 and len(json.loads(body)["ids"]) == 1
    assert metric(hub, "cachewire_hub_fast_publishes_total") == 1


def test_many_pipelined_publishes_are_all_answered_in_order(hub: Proc) -> None:
    """A backlog larger than the lane buffers before pausing the reads."""
    n = 2000
    with connect(hub) as sock:
        sock.sendall(b"".join(request(f'{{"type":"t","data":{i}}}') for i in range(n)))
        got = responses(sock, n)
    seqs = [int(json.loads(body)["ids"][0].split("-")[1]) for _, _, body in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == n


# Requests the fast lane must leave to aiohttp, and what aiohttp answers.
NOT_PLAIN = [
    # chunked bodies, and both framings at once (a smuggling attempt): aiohttp decides
    (
        "POST /v1/publish HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        'Transfer-Encoding: chunked\r\n\r\nc\r\n{"type":"a"}\r\n0\r\n\r\n',
        200,
    ),
    (
        "POST /v1/publish HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        'Content-Length: 12\r\nTransfer-Encoding: chunked\r\n\r\nc\r\n{"type":"a"}\r\n0\r\n\r\n',
        400,
    ),
    # two Content-Length headers
    (
        "POST /v1/publish HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        'Content-Length: 12\r\nContent-Length: 13\r\n\r\n{"type":"a"}',
        400,
    ),
    # a form body (cross-site without preflight): 415 from the full stack
    (request('{"type":"a"}', "Content-Type: application/x-www-form-urlencoded\r\n").decode(), 415),
    # a foreign origin
    (request('{"type":"a"}', JSON + "Origin: https://evil.example\r\n").decode(), 403),
    # over --max-body (1 KiB here)
    (request('{"type":"a","data":"' + "x" * 2000 + '"}').decode(), 413),
    # HTTP/1.0, and a query string
    (request('{"type":"a"}').decode().replace("HTTP/1.1", "HTTP/1.0", 1), 200),
    (request('{"type":"a"}').decode().replace("/v1/publish", "/v1/publish?x=1", 1), 200),
]


@pytest.mark.parametrize(("raw", "status"), NOT_PLAIN)
def test_requests_that_are_not_plain_go_to_aiohttp(
    hub_process: Callable[..., Proc], raw: str, status: int
) -> None:
    hub = hub_process("--max-body", "1024", grpc=False)
    with connect(hub) as sock:
        sock.sendall(raw.encode())
        [(got, _, body)] = responses(sock, 1)
    assert got == status, body
    if status >= 400:
        assert json.loads(body)["status"] == status
    assert metric(hub, "cachewire_hub_fast_publishes_total") == 0
    assert metric(hub, "cachewire_hub_fast_lane_deferred_total") == 1


def test_an_idle_fast_lane_connection_is_closed_after_the_idle_timeout(
    hub_process: Callable[..., Proc],
) -> None:
    hub = hub_process("--idle-timeout", "1", grpc=False)
    with connect(hub) as sock:
        sock.sendall(request('{"type":"a"}'))
        [(status, _, _)] = responses(sock, 1)
        assert status == 200
        assert sock.recv(1) == b""  # closed by the hub once idle (recv times out otherwise)


def test_with_auth_on_the_fast_lane_checks_and_refuses_like_the_full_stack(
    hub_process: Callable[..., Proc], tmp_path: Path
) -> None:
    """--auth protected: no credential (401 and its challenge), a key whose grants do not
    cover the type (403), a bearer token that is malformed (401), and a key that may
    publish (200): the same answers with the fast lane on and off, and the refusals
    counted alike; with it on, the lane answered all four."""
    keys = write_api_keys(tmp_path / "keys.toml", {"k1": {"name": "o", "publish": ["order:"]}})
    cases = [
        ("", 401),
        ("X-API-Key: k1\r\n", 403),
        ("Authorization: Bearer a b\r\n", 401),
        ("X-API-Key: k1\r\n", 200),
    ]
    bodies = ['{"type":"a"}', '{"type":"user:1"}', '{"type":"order:1"}', '{"type":"order:2"}']
    answers = []
    for mode in ("on", "off"):
        hub = hub_process(
            *("--auth", "protected", "--api-keys-file", str(keys), "--jwt-key", SECRET),
            *("--admin-port", str(free_port()), "--fast-publish", mode),
            grpc=False,
        )
        got = []
        for (extra, _), body in zip(cases, bodies, strict=True):
            with connect(hub) as sock:  # a refusal does not end a keep-alive connection
                sock.sendall(request(body, JSON + extra))
                [(status, headers, raw)] = responses(sock, 1)
            got.append((status, headers.get("WWW-Authenticate"), json.loads(raw).get("error")))
        answers.append(got)
        admin = metrics(hub, admin=True)
        assert re.search(r'^cachewire_auth_denied_total\{reason="missing"\} 1\.0$', admin, re.M)
        fast = re.search(r"^cachewire_hub_fast_publishes_total (\S+)$", admin, re.M)
        assert (fast is not None and float(fast[1]) == 4) == (mode == "on")
    assert answers[0] == answers[1]
    assert [status for status, _, _ in answers[0]] == [status for _, status in cases]
    assert answers[0][0][1] == "Bearer"
