"""Timeouts and connection caps of `cachewire hub`, over raw sockets: a Slowloris client,
silent connections, idle keep-alive, too many connections (in all and per address)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

from tests.servers import Proc

WAIT = 10.0


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (fails after WAIT seconds)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def json_error(data: bytes) -> tuple[int, str]:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body)["error"]


def test_a_slowloris_client_is_cut_at_the_header_timeout(
    hub_process: Callable[..., Proc],
) -> None:
    """One header byte now and then never completes a request: 408 JSON, closed."""
    hub = hub_process("--header-timeout", "1")
    with connect(hub.ports["http"]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        sock.sendall(b"X")  # a trickle, which must not extend the deadline
        data = read_until_closed(sock)
        assert time.monotonic() - started < WAIT
    assert json_error(data) == (408, "no complete request header in time (--header-timeout)")
    assert "no complete request header in time" in hub.log()


def test_a_silent_connection_is_closed_and_a_complete_request_is_served(
    hub_process: Callable[..., Proc],
) -> None:
    hub = hub_process("--header-timeout", "1")
    with connect(hub.ports["http"]) as silent, connect(hub.ports["http"]) as ok:
        ok.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert b" 200 " in read_until_closed(ok).split(b"\r\n")[0]
        assert json_error(read_until_closed(silent))[0] == 408


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    hub_process: Callable[..., Proc],
) -> None:
    hub = hub_process("--idle-timeout", "1")
    with connect(hub.ports["http"]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until_closed(sock)  # the answer, then the close once idle
    assert data.startswith(b"HTTP/1.1 200")


def test_connections_past_the_caps_get_503_json(hub_process: Callable[..., Proc]) -> None:
    """--max-connections-per-client, then --max-connections: refused at once, logged."""
    hub = hub_process("--max-connections-per-client", "3", "--max-connections", "5")
    port = hub.ports["http"]
    held = [connect(port) for _ in range(3)]
    try:
        with connect(port) as fourth:
            # Three idle connections are open: a fourth from 127.0.0.1 is one too many.
            status, error = json_error(read_until_closed(fourth))
        assert status == 503 and "(--max-connections-per-client)" in error
        assert "connection refused: too many open connections" in hub.log()
    finally:
        for sock in held:
            sock.close()


def test_a_grpc_connection_without_a_handshake_is_closed(
    hub_process: Callable[..., Proc],
) -> None:
    hub = hub_process("--header-timeout", "1")
    with connect(hub.ports["grpc"]) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n")  # the preface, never finished
        started = time.monotonic()
        read_until_closed(sock)
        assert time.monotonic() - started < WAIT


def test_oversized_request_lines_and_headers_answer_json(
    hub_process: Callable[..., Proc],
) -> None:
    """414 for a URL over aiohttp's line limit, 431 for a long header or too many."""
    hub = hub_process(grpc=False)
    cases = [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431),
    ]
    for request, status in cases:
        with connect(hub.ports["http"]) as sock:
            sock.sendall(request)
            data = read_until_closed(sock)
        assert b"application/json" in data
        assert json_error(data)[0] == status, data[:200]
    assert "Traceback" not in hub.log()
