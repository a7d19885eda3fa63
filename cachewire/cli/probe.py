"""`cachewire probe`: the consistency prober on its own, for caches guarded by sidecars.

The sidecars guarding the probed caches must subscribe to `cachewire:probe` (add it to
their --topics) so that they apply the canaries' invalidations. Metrics on
--metrics-port (`cachewire_probe_*`); with --once, one round, its outcomes as JSON lines
on stdout, and exit status 1 if a canary outlived the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, start_http_server

from cachewire.common import logs
from cachewire.probe.caches import CanaryCache, MemcachedCanary, RedisCanary
from cachewire.probe.core import ProbeMetrics
from cachewire.probe.prober import GrpcPublisher, Prober


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Probe how fast invalidations reach caches: write a canary, publish its "
        "invalidation to the hub, time its disappearance.",
    )
    parser.add_argument("--hub", default="127.0.0.1:50051", help="the hub's gRPC HOST:PORT")
    parser.add_argument(
        "--memcached", action="append", default=[], help="memcached HOST:PORT (repeatable)"
    )
    parser.add_argument("--redis-url", action="append", default=[], help="Redis URL (repeatable)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between probes")
    parser.add_argument(
        "--bound", type=float, default=5.0, help="the staleness bound (the sidecars' max-staleness)"
    )
    parser.add_argument("--instance", default="", help="this prober's name (default: random)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics")
    parser.add_argument("--metrics-port", type=int, default=9465, help="port of /metrics (0: off)")
    parser.add_argument(
        "--once", action="store_true", help="one round; JSON lines; exit 1 if any violation"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    args = parser.parse_args(argv)
    if not args.memcached and not args.redis_url:
        parser.error("give at least one cache: --memcached HOST:PORT or --redis-url URL")
    if args.interval <= 0 or args.bound <= 0:
        parser.error("--interval and --bound must be positive")
    return args


async def run(args: argparse.Namespace) -> int:
    from cachewire.sidecar.probe import instance_name

    caches: list[CanaryCache] = [MemcachedCanary(a) for a in args.memcached]
    caches += [RedisCanary(u) for u in args.redis_url]
    for i, cache in enumerate(caches):  # distinct labels when several of a kind
        if sum(c.name == cache.name for c in caches) > 1:
            cache.name = f"{cache.name}-{i}"
    registry = CollectorRegistry()
    if args.metrics_port and not args.once:
        start_http_server(args.metrics_port, args.metrics_host, registry)
    publisher = GrpcPublisher(args.hub)
    prober = Prober(
        caches,
        publisher,
        ProbeMetrics(registry, bound=args.bound),
        instance=args.instance or instance_name(),
        interval=args.interval,
        bound=args.bound,
    )
    try:
        if args.once:
            outcomes = await prober.probe_once()
            for o in outcomes:
                print(
                    json.dumps(
                        {"cache": o.cache, "result": o.result, "seconds": round(o.seconds, 4)}
                    )
                )
            return 1 if not outcomes or any(o.result != "gone" for o in outcomes) else 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        prober.start()
        await stop.wait()
        return 0
    finally:
        await prober.stop()
        await publisher.close()


def main(argv: Sequence[str] | None = None, prog: str = "cachewire probe") -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, prog)
    logs.setup(args.log_level)
    return asyncio.run(run(args))
