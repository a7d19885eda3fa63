"""Redis killed and restarted under running `cachewire-hub` processes."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.e2e.test_redis_helpers import GrpcSubscribe, Sse, eventually, get, http, publish
from tests.servers import Proc, free_port, start_redis


async def ready(hub: Proc) -> bool:
    return (await get(hub, "/readyz"))[0] == 200


async def not_ready(hub: Proc) -> bool:
    return (await get(hub, "/readyz"))[0] == 503


def restart_redis(procs: list[Proc], port: int, persist_dir: Path | None = None) -> Proc:
    redis = start_redis(port, persist_dir=persist_dir)
    procs.append(redis)
    return redis


async def test_redis_down_gives_503_and_a_kept_stream_loses_nothing(
    tmp_path: Path, procs: list[Proc], hub_process: Callable[..., Proc]
) -> None:
    """appendonly Redis SIGKILLed and restarted: acknowledged events survive; a replica that
    was away while others published reads on from its last id; resume works."""
    redis = restart_redis(procs, 0, tmp_path)
    url = f"redis://127.0.0.1:{redis.port}/0"
    a = hub_process("--broker", "redis", "--redis-url", url)
    b = hub_process("--broker", "redis", "--redis-url", url)
    async with Sse(a, "x") as sub:
        start = await sub.position()
        e1 = await publish(b, [{"type": "x:1"}])
        assert (await sub.next()).id == e1[0]

        redis.kill()
        await eventually(lambda: not_ready(a), "hub A /readyz 503")
        await eventually(lambda: not_ready(b), "hub B /readyz 503")
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{http(b)}/v1/publish", json={"type": "x:lost"}) as resp,
        ):
            assert resp.status == 503
            body = await resp.json()
            assert body["status"] == 503 and "redis is unavailable" in body["error"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{b.ports['grpc']}") as channel:
            request = hub_pb2.PublishRequest(events=[hub_pb2.EventInput(type="x:lost")])
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await hub_pb2_grpc.HubStub(channel).Publish(request)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "redis is unavailable" in (error.value.details() or "")
        assert (await get(a, "/healthz"))[0] == 200  # alive, keeping its clients
        assert (await get(a, "/hc"))[0] == 503  # Plasma's health check

        a.signal(signal.SIGSTOP)  # A stays away while B publishes after the restart
        try:
            restart_redis(procs, redis.port, tmp_path)
            await eventually(lambda: ready(b), "hub B ready again")
            e2 = await publish(b, [{"type": "x:2"}, {"type": "x:3"}])
        finally:
            a.signal(signal.SIGCONT)
        await eventually(lambda: ready(a), "hub A ready again")
        assert [f.id for f in await sub.events(2)] == e2  # same stream: nothing missed
        e4 = await publish(a, [{"type": "x:4"}])
        assert (await sub.next()).id == e4[0]
    assert e1[0].split("-")[0] == e2[0].split("-")[0] == e4[0].split("-")[0]  # same epoch
    async with Sse(b, "x", last_id=start) as resumed:
        assert [f.id for f in await resumed.events(4)] == [*e1, *e2, *e4]
    assert a.popen.poll() is None and b.popen.poll() is None
    assert a.log().count("redis unavailable") <= 2  # one line per state change, not per try


async def test_redis_restarted_without_persistence_resets_every_subscriber(
    procs: list[Proc], hub_process: Callable[..., Proc]
) -> None:
    """The stream is gone: a new epoch. Live SSE and gRPC subscribers are told
    (epoch_changed, resume from the new epoch's start) and go on with new events;
    heartbeats carry the new head; old ids get a reset."""
    redis = restart_redis(procs, 0)
    hub = hub_process(
        "--broker",
        "redis",
        "--redis-url",
        f"redis://127.0.0.1:{redis.port}/0",
        "--subscribe-heartbeat",
        "0.2",
    )
    async with Sse(hub, "y") as sub, GrpcSubscribe(hub, ["y"]) as stream:
        await sub.position()
        assert (await stream.next()).WhichOneof("message") == "heartbeat"  # live
        old = (await publish(hub, [{"type": "y:1"}]))[0]
        assert (await sub.next()).id == old
        assert [e.id for e in await stream.events(1)] == [old]
        redis.kill()
        await eventually(lambda: not_ready(hub), "/readyz 503")
        restart_redis(procs, redis.port)
        await eventually(lambda: ready(hub), "/readyz 200 again")

        reset = await sub.next()
        assert reset.type == "cachewire:reset"
        assert reset.data["data"]["reason"] == "epoch_changed"
        epoch = reset.id.split("-")[0] if reset.id else ""
        assert epoch and epoch != old.split("-")[0]
        assert reset.id == f"{epoch}-0-0"  # the new epoch's start: everything in it follows
        message = await stream.first_not_heartbeat()
        assert message.reset.reason == hub_pb2.RESET_REASON_EPOCH_CHANGED
        assert message.reset.resume_from == reset.id
        message = await stream.next()
        assert message.heartbeat.high_water_id.startswith(f"{epoch}-")

        new = (await publish(hub, [{"type": "y:2"}]))[0]
        assert new.startswith(f"{epoch}-")
        assert (await sub.next()).id == new
        assert [e.id for e in await stream.events(1)] == [new]
    async with Sse(hub, "y", last_id=old) as resumed:
        reset = await resumed.next()
        assert reset.type == "cachewire:reset"
        assert reset.data["data"]["reason"] == "epoch_changed"
        assert reset.id == new  # delivery continues after the new head
    async with Sse(hub, "y", last_id=f"{epoch}-0-0") as replayed:
        assert (await replayed.next()).id == new  # the reset's id resumes without a gap
    assert "redis stream was lost" in hub.log()


async def grpc_health(hub: Proc) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.ports['grpc']}") as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        return int(answer.status)


async def test_a_hub_started_while_redis_is_down_listens_not_ready_until_it_is_up(
    procs: list[Proc], hub_process: Callable[..., Proc]
) -> None:
    """The hub listens at once (a startup probe is not failed in a loop): not ready, publish
    503, health NOT_SERVING; Redis started later: ready, and subscribers connected
    meanwhile are reset to a real position, then receive events."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    hub = hub_process("--broker", "redis", "--redis-url", url, probe="/healthz")
    status, body = await get(hub, "/readyz")
    assert (status, body["error"]) == (503, "broker unavailable")
    assert (await get(hub, "/hc"))[0] == 503
    assert await grpc_health(hub) == health_pb2.HealthCheckResponse.NOT_SERVING
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{http(hub)}/v1/publish", json={"type": "z:early"}) as resp,
    ):
        assert resp.status == 503
        assert "redis is unavailable" in (await resp.json())["error"]

    async with Sse(hub, "z") as sub:
        assert await sub.position() == ""  # no position is known yet
        restart_redis(procs, port)
        await eventually(lambda: ready(hub), "/readyz 200 once redis is up")
        assert await grpc_health(hub) == health_pb2.HealthCheckResponse.SERVING
        reset = await sub.next()
        assert reset.type == "cachewire:reset"
        assert reset.data["data"]["reason"] == "epoch_changed"
        assert reset.id is not None and reset.id.endswith("-0-0")  # a fresh stream's start
        ids = await publish(hub, [{"type": "z:1"}])
        assert ids[0].split("-")[0] == reset.id.split("-")[0]
        assert (await sub.next()).id == ids[0]
    assert (await get(hub, "/readyz"))[1]["head"] == ids[0]
    assert hub.log().count("redis unavailable") == 1  # one line, not one per attempt
    assert "redis broker connected" in hub.log()
    assert hub.popen.poll() is None
