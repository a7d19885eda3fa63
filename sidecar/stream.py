"""The hub client: cachewire's gRPC `Subscribe`, resumed after every disconnect.

Each subscription sends `resume_from` = the position the applier has accepted (the last
event id, or the high-water id of the last heartbeat, which a stream in id order has
fully delivered). Events arrive in id order; what a resume delivers twice the applier
skips by id. Between attempts: capped exponential backoff with jitter (`next_delay`, a
pure function shared with the app-side client), back to the base once a subscription is
live. A stream silent for `idle_timeout` (no event, no heartbeat) is cancelled and
resubscribed. Each attempt uses a fresh channel so
that our backoff, not gRPC's reconnect backoff (up to 120 s), decides when to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from cachewire.sidecar import telemetry
from cachewire.sidecar._backoff import next_delay
from cachewire.sidecar.sinks.base import Invalidation
from cachewire.v1 import hub_pb2, hub_pb2_grpc

__all__ = ["StreamClient", "next_delay", "to_invalidation"]

log = logging.getLogger("cachewire.sidecar.stream")

RESET_REASONS = {
    hub_pb2.RESET_REASON_HISTORY_EXPIRED: "history_expired",
    hub_pb2.RESET_REASON_EPOCH_CHANGED: "epoch_changed",
    hub_pb2.RESET_REASON_UNKNOWN_ID: "unknown_id",
    hub_pb2.RESET_REASON_SLOW_CONSUMER: "slow_consumer",
}


class Listener(Protocol):
    """What the stream reports to (the applier)."""

    def on_connected(self) -> None: ...
    def on_disconnected(self) -> None: ...
    def on_events(self, invs: list[Invalidation]) -> None: ...
    def on_heartbeat(self, high_water_id: str) -> None: ...
    def on_reset(self, reason: str, detail: str, resume_from: str) -> None: ...
    def resume_id(self) -> str: ...


@dataclass(frozen=True)
class HubAccess:
    """How to reach the hub: TLS (a CA bundle, an expected name) and a bearer token file.

    The token file is read on every (re)connect: Kubernetes rotates projected
    service-account tokens in place, and a hub that ended the stream because the token
    expired is answered by the next attempt with the new one, resuming from the cursor.
    """

    tls_ca: str = ""
    tls_server_name: str = ""
    token_file: str = ""

    def channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        if not self.tls_ca:
            return grpc.aio.insecure_channel(target, options=options)
        creds = grpc.ssl_channel_credentials(root_certificates=Path(self.tls_ca).read_bytes())
        opts = list(options)
        if self.tls_server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return grpc.aio.secure_channel(target, creds, opts)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if not self.token_file:
            return ()
        token = Path(self.token_file).read_text().strip()
        return (("authorization", f"Bearer {token}"),) if token else ()


def to_invalidation(event: hub_pb2.Event) -> Invalidation:
    return Invalidation(
        id=event.id,
        type=event.type,
        keys=tuple(event.keys),
        prefixes=tuple(event.prefixes),
        flush=event.flush,
        data_json=event.data or "null",
        published_at=event.published_at_unix_micros / 1e6,
        traceparent=event.traceparent,
        tracestate=event.tracestate,
    )


class StreamClient:
    def __init__(
        self,
        target: str,
        topics: tuple[str, ...],
        listener: Listener,
        *,
        backoff_base: float,
        backoff_cap: float,
        idle_timeout: float,
        max_message_bytes: int = 4 << 20,
        on_reconnect: Callable[[], None] | None = None,
        rng: random.Random | None = None,
        access: HubAccess | None = None,
    ) -> None:
        self.target = target
        self.access = access or HubAccess()
        self.topics = topics
        self.listener = listener
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.idle_timeout = idle_timeout
        self.options = (("grpc.max_receive_message_length", max_message_bytes),)
        self.on_reconnect = on_reconnect
        self.rng = rng or random.Random()
        self.subscriptions = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hub-stream")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                live = await self._subscribe_once()
            except Exception:  # a bug must not end the stream for good: log, back off, retry
                log.exception("hub stream error; resubscribing", extra={"hub": self.target})
                live = False
            if live:
                attempt = 0
            delay = next_delay(attempt, self.backoff_base, self.backoff_cap, self.rng.random)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    async def _subscribe_once(self) -> bool:
        """One subscription, until it ends; True when it went live."""
        resume = self.listener.resume_id()
        request = hub_pb2.SubscribeRequest(topics=list(self.topics), resume_from=resume)
        live = False
        loop = asyncio.get_running_loop()
        try:
            metadata = self.access.metadata()
            channel = self.access.channel(self.target, self.options)
        except OSError as exc:  # a token or CA file missing: retried after the backoff
            log.error("cannot read the hub credentials", extra={"error": str(exc)})
            return False
        async with channel:
            stub = hub_pb2_grpc.HubStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Subscribe(request, metadata=metadata)
            try:
                async with asyncio.timeout(self.idle_timeout) as idle:
                    async for message in call:
                        idle.reschedule(loop.time() + self.idle_timeout)
                        if not live:
                            live = True
                            self._went_live(resume)
                        self._handle(message)
                log.warning("hub ended the subscription", extra={"hub": self.target})
            except TimeoutError:
                log.warning(
                    "no event or heartbeat from the hub: resubscribing",
                    extra={"hub": self.target, "idle_seconds": self.idle_timeout},
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self._too_large(exc)
                    return live
                log.warning(
                    "hub stream failed",
                    extra={"hub": self.target, "code": exc.code().name, "details": exc.details()},
                )
            finally:
                call.cancel()
                if live:
                    self.listener.on_disconnected()
        return live

    def _too_large(self, exc: grpc.aio.AioRpcError) -> None:
        """A message above our receive limit would come again at every resume from the
        same id (an older hub, or a hub whose --subscribe-batch-bytes exceeds our
        --max-message-bytes): treat it as a gap, so the caches are flushed and the next
        subscription starts from the hub's head instead of getting stuck."""
        log.error(
            "a message from the hub is larger than --max-message-bytes: flushing and "
            "resubscribing from the hub's head (raise --max-message-bytes, or lower the "
            "hub's --subscribe-batch-bytes)",
            extra={"hub": self.target, "details": exc.details()},
        )
        self.listener.on_reset("message_too_large", str(exc.details()), "")

    def _went_live(self, resume: str) -> None:
        self.subscriptions += 1
        if self.subscriptions > 1 and self.on_reconnect is not None:
            self.on_reconnect()
        log.info(
            "subscribed to the hub",
            extra={"hub": self.target, "topics": list(self.topics), "resume_from": resume},
        )
        self.listener.on_connected()

    def _handle(self, message: hub_pb2.SubscribeResponse) -> None:
        kind = message.WhichOneof("message")
        if kind == "events":
            invs = [to_invalidation(e) for e in message.events.events]
            with telemetry.receive_span(invs):  # the applier remembers it as the apply's parent
                self.listener.on_events(invs)
        elif kind == "heartbeat":
            self.listener.on_heartbeat(message.heartbeat.high_water_id)
        elif kind == "reset":
            reset = message.reset
            self.listener.on_reset(
                RESET_REASONS.get(reset.reason, "unspecified"), reset.detail, reset.resume_from
            )
