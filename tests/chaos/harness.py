"""A whole deployment on loopback, with load, for one chaos scenario.

    redis-server (Redis broker) ─ hub0, hub1 ◀─ writers (HTTP, gRPC, `cachewire publish`)
                                     ▲
              sidecar i ── link proxy ┘ (a Service in front of the hubs; faults go here)
                 ├─ memcached proxy (tap: records deletes/flushes) ─ memcached i ◀─ reader
                 └─ relay ─ app i: Invalidator + recording cache ◀─ reader

`Deployment.run(fault)` starts the load, calls the scenario's fault function, stops the
load, heals every link, publishes a marker and waits until every sidecar and app applied
it, then returns the checker's verdict. Every process is started with its documented
command and flags (tests.servers) and stopped by `close()`.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cachewire.sidecar.client import Invalidator
from tests.chaos.checker import Checker, Figures, MemcachedTap, RecordingCache
from tests.chaos.faults import ClockFile, LoopThread, Service, TcpProxy
from tests.chaos.workload import (
    AppReader,
    MemcachedReader,
    RedisMonitor,
    RedisReader,
    Via,
    Writer,
)
from tests.e2e.test_sidecar import get
from tests.servers import (
    Proc,
    free_port,
    start_hub,
    start_memcached,
    start_redis,
    start_sidecar,
    wait_for,
)

FULL = os.environ.get("CACHEWIRE_CHAOS") == "full"
SLACK = 1.0  # seconds beyond max-staleness: a heartbeat, a batch, a flush on a busy machine
WAIT = 30.0


def duration(short: float, full: float) -> float:
    """How long a phase lasts: short in the test suite, longer under `make chaos`."""
    return full if FULL else short


@dataclass
class Options:
    broker: Literal["memory", "redis"] = "redis"
    hubs: int = 2
    sidecars: int = 2
    max_staleness: float = 2.0
    heartbeat: float = 0.2
    aof: bool = False
    state_file: bool = True
    writers: tuple[Via, ...] = ("http", "grpc", "cli")
    hub_args: tuple[str, ...] = ()
    sidecar_args: tuple[str, ...] = ()
    redis_url: Callable[[Deployment], str] | None = None  # default: the deployment's redis
    redis_cache: bool = True  # sidecar0 also guards a Redis of its own


class Node:
    """One pod: a sidecar, its memcached (behind a recording proxy), its app."""

    def __init__(self, index: int, memcached: Service, link: TcpProxy, relay_port: int) -> None:
        self.index = index
        self.memcached = memcached
        self.link = link  # sidecar → hubs
        self.relay_port = relay_port
        self.mc_proxy: TcpProxy | None = None  # sidecar → memcached, set once memcached runs
        self.redis_cache: Service | None = None  # a guarded Redis (node 0)
        self.sidecar = Service(f"sidecar{index}", self._no_start)
        self.app: Invalidator | None = None

    @staticmethod
    def _no_start() -> Proc:
        raise RuntimeError("the sidecar's start is set by the deployment")

    @property
    def sidecar_proc(self) -> Proc:
        assert self.sidecar.proc is not None
        return self.sidecar.proc


@dataclass
class Deployment:
    opts: Options
    tmp: Path
    checker: Checker = field(default_factory=Checker)
    clock: ClockFile | None = None
    loop: LoopThread = field(default_factory=LoopThread)
    redis: Service | None = None
    hubs: list[Service] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    proxies: list[TcpProxy] = field(default_factory=list)
    readers: list[MemcachedReader | AppReader | RedisReader] = field(default_factory=list)
    monitors: list[RedisMonitor] = field(default_factory=list)
    writers: list[Writer] = field(default_factory=list)

    # --- start ---

    def start(self) -> Deployment:
        o = self.opts
        with ThreadPoolExecutor(8) as pool:  # processes start in parallel
            self._start_processes(pool)
        for node in self.nodes:
            cache = RecordingCache(self.checker.cache(f"app{node.index}"))
            node.app = Invalidator(
                f"127.0.0.1:{node.relay_port}",
                topics=["user"],
                cache=cache,
                max_staleness=o.max_staleness,
                backoff_base=0.05,
                backoff_cap=0.5,
            ).start()
        self.wait_ready()
        return self

    def _start_processes(self, pool: ThreadPoolExecutor) -> None:
        o = self.opts
        if o.broker == "redis" and o.redis_url is None:
            port = free_port()
            aof = self.tmp / "redis" if o.aof else None
            if aof is not None:
                aof.mkdir(exist_ok=True)
            self.redis = Service("redis", lambda: start_redis(port, persist_dir=aof)).up()
        self.hubs = [self._hub(i) for i in range(o.hubs)]
        list(pool.map(Service.up, self.hubs))
        self.nodes = [self._node(i) for i in range(o.sidecars)]
        list(pool.map(lambda n: n.memcached.up(), self.nodes))
        if o.redis_cache:
            cache_port = free_port()
            self.nodes[0].redis_cache = Service(
                "redis-cache0", lambda: start_redis(cache_port)
            ).up()
        for node in self.nodes:
            tap_log = self.checker.cache(f"memcached{node.index}")
            node.mc_proxy = self._proxy(
                [node.memcached.port], lambda log=tap_log: MemcachedTap(log)
            )
        list(pool.map(lambda n: n.sidecar.up(), self.nodes))

    def _hub(self, i: int) -> Service:
        o = self.opts
        http, grpc = free_port(), free_port()
        args = ["--subscribe-heartbeat", str(o.heartbeat), *o.hub_args]
        if o.broker == "redis":
            args += ["--broker", "redis", "--redis-url", self.redis_url()]
        return Service(
            f"hub{i}", lambda: start_hub(*args, http_port=http, grpc_port=grpc, probe="/readyz")
        )

    def redis_url(self) -> str:
        if self.opts.redis_url is not None:
            return self.opts.redis_url(self)
        assert self.redis is not None
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def _proxy(
        self, upstreams: list[int], tap: Callable[[], MemcachedTap] | None = None
    ) -> TcpProxy:
        proxy = TcpProxy(self.loop, upstreams, tap=tap)
        self.proxies.append(proxy)
        return proxy

    def _node(self, i: int) -> Node:
        o = self.opts
        mc_port, relay = free_port(), free_port()
        memcached = Service(f"memcached{i}", lambda: start_memcached(mc_port))
        link = self._proxy([h.proc.ports["grpc"] for h in self.hubs if h.proc])
        node = Node(i, memcached, link, relay)
        env = self.clock.env() if self.clock is not None else None

        def sidecar() -> Proc:
            assert node.mc_proxy is not None
            args = ["--hub", f"127.0.0.1:{link.port}", "--topics", "user"]
            args += ["--memcached", f"127.0.0.1:{node.mc_proxy.port}", "--relay-port", str(relay)]
            args += ["--max-staleness", str(o.max_staleness), "--batch-delay", "1"]
            if node.redis_cache is not None:
                url = f"redis://127.0.0.1:{node.redis_cache.port}/0"
                args += ["--redis-url", url, "--redis-flush", "db"]
            if o.state_file:
                args += ["--state-file", str(self.tmp / f"sidecar{i}.state")]
            return start_sidecar(*args, *o.sidecar_args, topics=None, env=env)

        node.sidecar = Service(f"sidecar{i}", sidecar)
        return node

    def wait_ready(self) -> None:
        for node in self.nodes:
            wait_for(
                lambda n=node: get(n.sidecar_proc, "/readyz")[0] == 200,
                timeout=WAIT,
                what=f"sidecar{node.index} /readyz",
            )
            assert node.app is not None and node.app.wait_connected(WAIT)

    # --- load ---

    def http_ports(self) -> list[int]:
        return [h.proc.ports["http"] for h in self.hubs if h.proc]

    def grpc_ports(self) -> list[int]:
        return [h.proc.ports["grpc"] for h in self.hubs if h.proc]

    def start_load(self) -> None:
        for node in self.nodes:
            assert node.app is not None
            self.readers.append(
                MemcachedReader(
                    self.checker, f"memcached{node.index}", lambda n=node: n.memcached.port
                )
            )
            self.readers.append(AppReader(self.checker, f"app{node.index}", node.app))
            if node.redis_cache is not None:
                name = f"redis{node.index}"
                port = node.redis_cache.port
                self.monitors.append(RedisMonitor(self.checker.cache(name), port))
                self.readers.append(RedisReader(self.checker, name, port))
        self.writers = [
            Writer(self.checker, via, self.http_ports, self.grpc_ports) for via in self.opts.writers
        ]
        self.checker.started_at = time.monotonic()
        for thread in [*self.monitors, *self.readers, *self.writers]:
            thread.start()

    def run(self, name: str, fault: Callable[[Deployment], None], *, warm: float = 1.0) -> Figures:
        """Load, the fault, then quiesce and judge."""
        self.start_load()
        time.sleep(duration(warm, warm * 3))  # load runs: the pace of the experiment
        fault(self)
        time.sleep(duration(warm, warm * 3))
        for writer in self.writers:
            writer.stopping.set()
        for writer in self.writers:
            writer.join(WAIT)
        for proxy in self.proxies:
            proxy.heal()
        self.quiesce()
        for reader in self.readers:
            reader.stopping.set()
        for reader in self.readers:
            reader.join(WAIT)
        for monitor in self.monitors:
            monitor.close()
        downtime = max((d for n in self.nodes for d in n.sidecar.downtime), default=0.0)
        return self.checker.verdict(name, self.opts.max_staleness + SLACK + downtime)

    def quiesce(self) -> None:
        """Publish a marker after everything else; wait until every sidecar and app has it."""
        marker = ""

        def published() -> bool:
            nonlocal marker
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{self.http_ports()[0]}/v1/publish",
                    data=json.dumps({"type": "user:marker"}).encode(),
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                with urllib.request.urlopen(request, timeout=2) as resp:
                    marker = json.load(resp)["ids"][0]
                    return True
            except OSError:
                return False

        wait_for(published, timeout=WAIT, what="the marker published")
        for node in self.nodes:
            status = get(node.sidecar_proc, f"/v1/applied?id={marker}&timeout={WAIT}")[0]
            assert status == 200, f"sidecar{node.index} did not apply {marker}"
            assert node.app is not None and node.app.wait_applied(marker, WAIT)

    # --- stop ---

    def close(self) -> None:
        for thread in [*self.writers, *self.readers]:
            thread.stopping.set()
        for monitor in self.monitors:
            monitor.close()
        for node in self.nodes:
            if node.app is not None:
                node.app.stop()
        for node in self.nodes:
            if node.sidecar.proc:
                node.sidecar.proc.stop()
            if node.memcached.proc:
                node.memcached.proc.stop()
            if node.redis_cache is not None and node.redis_cache.proc:
                node.redis_cache.proc.stop()
        for service in self.hubs:
            if service.proc:
                service.proc.stop()
        if self.redis is not None and self.redis.proc:
            self.redis.proc.stop()
        for proxy in self.proxies:
            proxy.close()
        self.loop.close()
