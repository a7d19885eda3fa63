"""Publishing over gRPC: `cachewire.v1.Hub/Publish` with the request's idempotency key, on one
long-lived channel (HTTP/2: every request shares one connection)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from cachewire.common import wirejson
from cachewire.publish.errors import Refused, Retry
from cachewire.publish.retry import retry_after
from cachewire.v1 import hub_pb2, hub_pb2_grpc

# Worth another attempt with the same key: the hub was down or overloaded, or the call
# timed out (it may have been stored: the key makes the retry safe). INTERNAL and UNKNOWN
# are the gRPC forms of HTTP 500.
RETRY = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
)


class GrpcTransport:
    def __init__(
        self,
        target: str,
        *,
        timeout: float = 5.0,
        metadata: Mapping[str, str] | None = None,
        secure: bool = False,
    ) -> None:
        self.target = target
        self._timeout = timeout
        self._metadata = tuple((k.lower(), v) for k, v in (metadata or {}).items())
        self._secure = secure
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    def encode(
        self, type: str, data: Any, keys: Sequence[str], prefixes: Sequence[str], flush: bool
    ) -> tuple[hub_pb2.EventInput, int]:
        message = hub_pb2.EventInput(
            type=type,
            data="" if data is None else wirejson.dumps(data),
            keys=keys,
            prefixes=prefixes,
            flush=flush,
        )
        return message, message.ByteSize() + 3

    async def send(self, events: Sequence[hub_pb2.EventInput], key: str) -> list[str]:
        if self._stub is None:  # made here: a channel belongs to the running loop
            if self._secure:
                credentials = grpc.ssl_channel_credentials()
                self._channel = grpc.aio.secure_channel(self.target, credentials)
            else:
                self._channel = grpc.aio.insecure_channel(self.target)
            self._stub = hub_pb2_grpc.HubStub(self._channel)  # type: ignore[no-untyped-call]
        request = hub_pb2.PublishRequest(events=events, idempotency_key=key)
        try:
            response = await self._stub.Publish(
                request, timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code in RETRY:
                hint = _metadata_value(exc.trailing_metadata(), "retry-after")
                raise Retry(f"the hub answered {code.name}: {details}", retry_after(hint)) from None
            raise Refused(
                f"the hub refused the event ({code.name}): {details}", code.name
            ) from None
        return list(response.ids)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None


def _metadata_value(metadata: Any, name: str) -> str | None:
    for key, value in metadata or ():
        if key == name and isinstance(value, str):
            return value
    return None
