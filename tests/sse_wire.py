"""A raw-socket HTTP/1.x SSE client for wire-level tests: it sees the exact bytes.

It de-chunks the body but parses nothing else, so tests assert the SSE framing byte for
byte, whether the stream ended with HTTP's terminating chunk, and can stop reading at will
(a slow consumer is a client that does not call `frame()`).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterable
from typing import Any

TIMEOUT = 20.0  # generous: the machine is shared; nothing here waits on time otherwise


class StreamEnded(Exception):
    """The server closed the connection."""


class SseClient:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunked = False
        self.ended_cleanly = False  # the terminating chunk arrived
        self.eof = False
        self._raw = bytearray()  # received, not yet de-chunked
        self._body = bytearray()  # de-chunked, not yet consumed as frames

    @classmethod
    async def connect(
        cls,
        port: int,
        target: str = "/?eventType=a",
        *,
        headers: Iterable[tuple[str, str]] = (),
        method: str = "GET",
        version: str = "1.1",
        rcvbuf: int | None = None,
        read_head: bool = True,
    ) -> SseClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so that the window is negotiated small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        lines = [
            f"{method} {target} HTTP/{version}",
            f"Host: 127.0.0.1:{port}",
            *(f"{k}: {v}" for k, v in headers),
        ]
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        client = cls(sock)
        if read_head:
            await client.read_head()
        return client

    def close(self) -> None:
        self.sock.close()

    async def __aenter__(self) -> SseClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def _recv(self) -> None:
        if self.eof:
            raise StreamEnded("the server closed the connection")
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(TIMEOUT):
            data = await loop.sock_recv(self.sock, 1 << 16)
        if not data:
            self.eof = True
            raise StreamEnded("the server closed the connection")
        self._raw += data

    async def read_head(self) -> None:
        while b"\r\n\r\n" not in self._raw:
            await self._recv()
        head, _, rest = bytes(self._raw).partition(b"\r\n\r\n")
        self._raw = bytearray(rest)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"

    def _dechunk(self) -> None:
        if not self.chunked:
            self._body += self._raw
            self._raw.clear()
            return
        while not self.ended_cleanly:
            end = self._raw.find(b"\r\n")
            if end < 0:
                return
            size = int(self._raw[:end], 16)
            if size == 0:
                if len(self._raw) < end + 4:
                    return
                assert self._raw[end : end + 4] == b"\r\n\r\n", bytes(self._raw[:40])
                self.ended_cleanly = True
                del self._raw[: end + 4]
                return
            if len(self._raw) < end + 2 + size + 2:
                return
            assert self._raw[end + 2 + size : end + 4 + size] == b"\r\n", "bad chunk framing"
            self._body += self._raw[end + 2 : end + 2 + size]
            del self._raw[: end + 4 + size]

    async def body(self, n: int) -> bytes:
        """At least n de-chunked body bytes (for non-SSE answers use `json_body`)."""
        while True:
            self._dechunk()
            if len(self._body) >= n:
                return bytes(self._body)
            await self._recv()

    async def json_body(self) -> Any:
        length = int(self.headers["content-length"])
        return json.loads((await self.body(length))[:length])

    async def frame(self) -> bytes:
        """The next SSE frame, with its terminating blank line."""
        while True:
            self._dechunk()
            end = self._body.find(b"\n\n")
            if end >= 0:
                frame = bytes(self._body[: end + 2])
                del self._body[: end + 2]
                return frame
            if self.ended_cleanly:
                raise StreamEnded(f"stream ended; left over: {bytes(self._body)!r}")
            await self._recv()

    async def data_frame(self) -> bytes:
        """The next frame that carries data (skips heartbeats and id-only frames)."""
        while True:
            frame = await self.frame()
            if b"\ndata: " in frame or frame.startswith(b"data: "):
                return frame

    async def events(self, n: int) -> list[tuple[str | None, Any]]:
        """The next n data frames as (id, parsed data)."""
        return [parse_frame(await self.data_frame()) for _ in range(n)]

    async def until_end(self) -> bytes:
        """Read to the end of the stream; return the body bytes left unconsumed."""
        try:
            while not self.ended_cleanly:
                self._dechunk()
                if self.ended_cleanly:
                    break
                await self._recv()
            while True:  # after the last chunk the server closes the connection
                await self._recv()
        except StreamEnded:
            pass
        self._dechunk()
        rest = bytes(self._body)
        self._body.clear()
        return rest


def parse_frame(frame: bytes) -> tuple[str | None, Any]:
    """An event frame → (its id or None, its parsed data)."""
    event_id, data = None, None
    for line in frame.decode().split("\n"):
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
    return event_id, data
