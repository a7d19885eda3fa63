"""`--redis-url redis+sentinel://…`: the hub finds the master through Redis Sentinel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.e2e.test_redis_helpers import Sse, eventually, http, publish
from tests.servers import Proc, free_port, port_answers, start_redis, wait_for

SERVICE = "cw"


def start_sentinel(workdir: Path, master_port: int) -> Proc:
    """A one-sentinel deployment watching the master (quorum 1)."""
    port = free_port()
    conf = workdir / f"sentinel-{port}.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds {SERVICE} 2000\n"
        f"sentinel failover-timeout {SERVICE} 10000\n"
    )
    exe = shutil.which("redis-server")
    assert exe is not None
    fd, log_name = tempfile.mkstemp(prefix="cachewire-test-sentinel-", suffix=".log")
    popen = subprocess.Popen([exe, str(conf), "--sentinel"], stdout=fd, stderr=subprocess.STDOUT)
    os.close(fd)
    proc = Proc(popen, {"sentinel": port}, Path(log_name))
    wait_for(lambda: port_answers(port), what=f"redis sentinel on {port}")
    return proc


@pytest.fixture
def sentinel_setup(procs: list[Proc], tmp_path: Path) -> tuple[Proc, Proc, Proc]:
    """(master, replica, sentinel), stopped by `procs`. Each works in its own directory: a
    replica writes the RDB it receives there (not in the repository, where every
    redis-server the tests start would load it)."""
    dirs = [tmp_path / name for name in ("master", "replica", "sentinel")]
    for path in dirs:
        path.mkdir()
    master = start_redis(extra=["--dir", str(dirs[0])])
    procs.append(master)
    replica = start_redis(
        extra=["--dir", str(dirs[1]), "--replicaof", "127.0.0.1", str(master.port)]
    )
    procs.append(replica)
    sentinel = start_sentinel(dirs[2], master.port)
    procs.append(sentinel)
    return master, replica, sentinel


async def master_port(sentinel: Proc) -> int:
    client = aioredis.from_url(f"redis://127.0.0.1:{sentinel.port}", decode_responses=True)
    try:
        _, port = await client.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)
    finally:
        await client.aclose()


async def test_the_hub_follows_the_master_through_a_sentinel_failover(
    sentinel_setup: tuple[Proc, Proc, Proc], hub_process: Callable[..., Proc]
) -> None:
    """Publish, channel ingest and delivery work through Sentinel; after the replica is
    promoted, publishing goes to the new master and the stream (and epoch) carry on."""
    master, replica, sentinel = sentinel_setup
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}/0"
    hub = hub_process("--broker", "redis", "--redis-url", url, "--redis-channels", "plasma")
    old = aioredis.from_url(f"redis://127.0.0.1:{master.port}")
    new = aioredis.from_url(f"redis://127.0.0.1:{replica.port}")
    try:
        async with Sse(hub, "s") as sub:
            await sub.position()
            before = await publish(hub, [{"type": "s:1"}])
            assert (await sub.next()).id == before[0]

            async def ingesting() -> bool:
                return bool((await old.pubsub_numsub("plasma"))[0][1] == 1)

            await eventually(ingesting, "the hub subscribed to the channel on the master")
            await old.publish("plasma", json.dumps({"meta": {"type": "s:2"}, "data": 2}))
            assert (await sub.next()).data == {"meta": {"type": "s:2"}, "data": 2}
            assert await old.xlen("{cachewire}:events") == 2  # both went to the master

            assert await old.execute_command("WAIT", 1, 10_000) == 1  # replicated
            admin = aioredis.from_url(f"redis://127.0.0.1:{sentinel.port}", decode_responses=True)
            try:

                async def sentinel_sees_a_good_replica() -> bool:
                    replicas = await admin.execute_command("SENTINEL", "REPLICAS", SERVICE)
                    return any(r.get("master-link-status") == "ok" for r in replicas)

                await eventually(sentinel_sees_a_good_replica, "the sentinel to know the replica")
                await admin.execute_command("SENTINEL", "FAILOVER", SERVICE)
            finally:
                await admin.aclose()

            async def promoted() -> bool:
                return await master_port(sentinel) == replica.port

            await eventually(promoted, "the sentinel to promote the replica")

            async def lands_on_new_master() -> bool:
                # Until the hub notices the failover (within a second or so) a publish may
                # still reach the old master, whose writes Redis discards when it demotes it.
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(f"{http(hub)}/v1/publish", json={"type": "s:3"}) as resp,
                ):
                    if resp.status != 200:
                        return False
                    (event_id,) = (await resp.json())["ids"]
                landed.append(event_id)
                stream_id = event_id.split("-", 1)[1]
                return bool(await new.xrange("{cachewire}:events", stream_id, stream_id))

            landed: list[str] = []
            await eventually(lands_on_new_master, "a publish stored by the new master")
            assert landed[-1].split("-")[0] == before[0].split("-")[0]  # same stream and epoch
            while (frame := await sub.next()).id != landed[-1]:
                # An s:3 the old master took and lost was delivered: the new master's
                # sequence then goes back, and the hub says events may be missing.
                if frame.type == "cachewire:reset":
                    assert frame.data["meta"]["reason"] == "history_expired"
                else:
                    assert frame.type == "s:3"
    finally:
        await old.aclose()
        await new.aclose()
