"""--auth protected over real gRPC: cachewire.v1.Hub Publish/Subscribe and Plasma's Events.

The same decisions as over HTTP (one decision function), mapped to UNAUTHENTICATED and
PERMISSION_DENIED; credentials travel as metadata `authorization: Bearer` or `x-api-key`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cachewire.hub.server import Hub
from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.auth_helpers import SECRET, token, write_api_keys
from tests.plasma_stub import stream_pb2
from tests.unit.hub.sse_helpers import HubFactory
from tests.unit.hub.test_grpc_plasma import PlasmaClient

TIMEOUT = 20.0
READER = {"subscribe": ["user:42"]}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return write_api_keys(tmp_path / "keys.toml", {"k-read": {"subscribe": ["user:"]}})


@pytest.fixture
async def hub(hub_factory: HubFactory, keys_file: Path) -> Hub:
    hub: Hub = await hub_factory(
        auth="protected",
        jwt_key=SECRET,
        api_keys_file=str(keys_file),
        public_types=("program:",),
        subscribe_heartbeat=30.0,
    )
    return hub


@pytest.fixture
async def channel(hub: Hub) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        yield channel


def meta(value: str | None = None, api_key: str | None = None) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    if value is not None:
        out.append(("authorization", f"Bearer {value}"))
    if api_key is not None:
        out.append(("x-api-key", api_key))
    return tuple(out)


async def publish(channel: grpc.aio.Channel, metadata: Any, *events: Any) -> Any:
    stub = hub_pb2_grpc.HubStub(channel)
    return await stub.Publish(hub_pb2.PublishRequest(events=list(events)), metadata=metadata)


async def status_of(awaitable: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await asyncio.wait_for(awaitable, TIMEOUT)
    return exc.value.code()  # type: ignore[no-any-return]


async def test_publish_decisions(hub: Hub, channel: grpc.aio.Channel) -> None:
    head = hub.broker.head_id()
    order = hub_pb2.EventInput(type="order:1")
    user = hub_pb2.EventInput(type="user:1", flush=True)
    writer = token({"publish": ["order:", "user:"]})
    assert await status_of(publish(channel, (), order)) == grpc.StatusCode.UNAUTHENTICATED
    assert await status_of(publish(channel, meta("junk"), order)) == grpc.StatusCode.UNAUTHENTICATED
    expired = meta(token({"publish": ["*"]}, expires_in=-5))
    assert await status_of(publish(channel, expired, order)) == grpc.StatusCode.UNAUTHENTICATED
    narrow = meta(token({"publish": ["order:"]}))
    assert await status_of(publish(channel, narrow, order, user)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert await status_of(publish(channel, meta(writer), order, user)) == (
        grpc.StatusCode.PERMISSION_DENIED  # flush without the flush grant
    )
    assert hub.broker.head_id() == head  # nothing stored from a refused request
    flusher = meta(token({"publish": ["order:", "user:"], "flush": True}))
    response = await publish(channel, flusher, order, user)
    assert list(response.ids)[-1] == hub.broker.head_id()


async def subscribe_status(channel: grpc.aio.Channel, metadata: Any, *topics: str) -> Any:
    call = hub_pb2_grpc.HubStub(channel).Subscribe(
        hub_pb2.SubscribeRequest(topics=list(topics)), metadata=metadata
    )
    try:
        message = await asyncio.wait_for(call.read(), TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    call.cancel()
    return message.WhichOneof("message")


async def test_subscribe_decisions(channel: grpc.aio.Channel) -> None:
    denied, unauth = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED
    assert await subscribe_status(channel, (), "program:1") == "heartbeat"
    assert await subscribe_status(channel, (), "user:42") == unauth
    assert await subscribe_status(channel, meta(token(READER)), "user:42") == "heartbeat"
    assert await subscribe_status(channel, meta(token(READER)), "user:42", "user:43") == denied
    assert await subscribe_status(channel, meta(api_key="k-read"), "user:9") == "heartbeat"
    assert await subscribe_status(channel, meta(api_key="k-nope"), "user:9") == unauth


async def test_subscribe_ends_unauthenticated_when_the_token_expires(
    hub: Hub, channel: grpc.aio.Channel
) -> None:
    call = hub_pb2_grpc.HubStub(channel).Subscribe(
        hub_pb2.SubscribeRequest(topics=["user:42"]),
        metadata=meta(token(READER, expires_in=2.0)),
    )
    first = await asyncio.wait_for(call.read(), TIMEOUT)
    assert first.HasField("heartbeat")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        while True:
            message = await asyncio.wait_for(call.read(), TIMEOUT)
            assert message is not grpc.aio.EOF
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert hub.auth is not None and hub.auth.denied["expired"] == 1


async def test_subscribe_of_a_revoked_key_ends_on_reload(
    hub: Hub, channel: grpc.aio.Channel, keys_file: Path
) -> None:
    call = hub_pb2_grpc.HubStub(channel).Subscribe(
        hub_pb2.SubscribeRequest(topics=["user:42"]), metadata=meta(api_key="k-read")
    )
    assert (await asyncio.wait_for(call.read(), TIMEOUT)).HasField("heartbeat")
    write_api_keys(keys_file, {"k-other": {"subscribe": ["user:"]}})
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        while True:
            await asyncio.wait_for(call.read(), TIMEOUT)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_plasma_events_anonymous_get_public_types_only(
    hub: Hub, channel: grpc.aio.Channel
) -> None:
    client = PlasmaClient(channel)
    client.subscribe("program:1")
    await hub.fanout.wait_subscribers(1, "grpc_plasma")
    await publish(channel, meta(token({"publish": ["*"]})), hub_pb2.EventInput(type="program:1"))
    assert (await client.read()).eventType.type == "program:1"
    client.subscribe("user:42")  # a Request that is not granted ends the stream
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        while True:
            await client.read()
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_plasma_events_with_a_bearer_get_their_grants(
    hub: Hub, channel: grpc.aio.Channel
) -> None:
    from tests.plasma_stub import stream_pb2_grpc

    call = stream_pb2_grpc.StreamServiceStub(channel).Events(metadata=meta(token(READER)))
    await call.write(stream_pb2.Request(Events=[stream_pb2.EventType(type="user:42")]))
    await hub.fanout.wait_subscribers(1, "grpc_plasma")
    await publish(channel, meta(token({"publish": ["*"]})), hub_pb2.EventInput(type="user:42"))
    assert (await asyncio.wait_for(call.read(), TIMEOUT)).eventType.type == "user:42"
    await call.write(stream_pb2.Request(Events=[stream_pb2.EventType(type="user:43")]))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        while True:
            await asyncio.wait_for(call.read(), TIMEOUT)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    bad = stream_pb2_grpc.StreamServiceStub(channel).Events(metadata=meta("junk"))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await asyncio.wait_for(bad.read(), TIMEOUT)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_publish_stream_authenticates_once_and_authorizes_every_request(
    hub: Hub, channel: grpc.aio.Channel
) -> None:
    stub = hub_pb2_grpc.HubStub(channel)
    allowed = hub_pb2.PublishRequest(events=[hub_pb2.EventInput(type="order:1")])
    refused = hub_pb2.PublishRequest(events=[hub_pb2.EventInput(type="user:1")])
    call = stub.PublishStream(metadata=meta(token({"publish": ["order:"]})), timeout=TIMEOUT)
    await call.write(allowed)
    first = await call.read()
    assert list(first.ids) == [hub.broker.head_id()]
    head = hub.broker.head_id()
    await call.write(refused)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call.read()
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert hub.broker.head_id() == head
    anonymous = stub.PublishStream(timeout=TIMEOUT)
    await anonymous.write(allowed)
    assert await status_of(anonymous.read()) == grpc.StatusCode.UNAUTHENTICATED
