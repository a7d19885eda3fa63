"""Publish throughput with --auth off versus protected (a JWT, an API key), in one run.

Three `cachewire hub` processes (memory broker, no gRPC) take `POST /v1/publish` requests
of one event from concurrent keep-alive clients. Rounds alternate the targets so that
drift on a shared machine hits all alike; the median requests/s of each is reported, and
its ratio to `off`. Protected mode verifies an HS256 JWT (remembered until its exp after
the first check) or hashes an API key per request, and runs the decision function.

    .venv/bin/python bench/auth_bench.py --rounds 5 --requests 4000 --markdown
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import jwt
from common import ROOT, cpu_model, free_port, http_ok, process

from cachewire.hub.auth.verifiers import hash_key

SECRET = "bench-secret-of-at-least-32-bytes!!"
API_KEY = "bench-api-key"
EVENT = {"type": "user:42", "keys": ["user:42"]}


async def round_rps(port: int, headers: dict[str, str], requests: int, clients: int) -> float:
    url = f"http://127.0.0.1:{port}/v1/publish"
    hdrs = {"Content-Type": "application/json", **headers}
    per_client = requests // clients

    async def client(http: aiohttp.ClientSession) -> None:
        for _ in range(per_client):
            async with http.post(url, json=EVENT, headers=hdrs) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return per_client * clients / (time.perf_counter() - started)


async def decision_cost(keys: Path, token: str, calls: int = 20_000) -> dict[str, float]:
    """Microseconds per `Auth.check_publish` (verify + decide), in this process: what
    protected mode adds to a publish request, without HTTP's noise."""
    from cachewire.hub.auth.service import Auth, Credentials
    from cachewire.hub.events import make_draft
    from cachewire.hub.settings import HubSettings

    auth = Auth(HubSettings(auth="protected", jwt_key=SECRET, api_keys_file=str(keys)))
    drafts = [make_draft(type=EVENT["type"], keys=EVENT["keys"])]
    out = {}
    credentials = {"JWT": Credentials(bearer=token), "API key": Credentials(api_key=API_KEY)}
    for name, creds in credentials.items():
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(calls):
                await auth.check_publish(creds, drafts)
            runs.append((time.perf_counter() - started) / calls * 1e6)
        out[name] = statistics.median(runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    token = jwt.encode(
        {"aud": "cachewire", "exp": time.time() + 3600, "cachewire": {"publish": ["user:"]}},
        SECRET,
    )
    keys = Path(tempfile.mkdtemp(prefix="cachewire-bench-")) / "keys.toml"
    keys.write_text(f'[keys.{hash_key(API_KEY)}]\nname = "bench"\npublish = ["user:"]\n')
    exe = str(Path(sys.executable).parent / "cachewire")
    protected = ["--auth", "protected", "--jwt-key", SECRET, "--api-keys-file", str(keys)]
    targets = {
        "off": ([], {}),
        "protected, JWT": (protected, {"Authorization": f"Bearer {token}"}),
        "protected, API key": (protected, {"X-API-Key": API_KEY}),
    }
    results: dict[str, list[float]] = {name: [] for name in targets}
    with ExitStack() as stack:
        ports = {}
        for name, (flags, _) in targets.items():
            port = free_port()
            argv = [exe, "hub", "--http-port", str(port), "--grpc-port", "off"]
            argv += ["--log-level", "warning", *flags]
            ready = functools.partial(http_ok, f"http://127.0.0.1:{port}/readyz")
            stack.enter_context(process(argv, ready, name))
            ports[name] = port
        for _ in range(args.rounds):
            for name, (_, headers) in targets.items():
                rps = asyncio.run(round_rps(ports[name], headers, args.requests, args.clients))
                results[name].append(rps)

    costs = asyncio.run(decision_cost(keys, token))
    base = statistics.median(results["off"])
    if args.markdown:
        print(
            f"`{' '.join(sys.argv)}` — {datetime.date.today()}, {os.cpu_count()} CPUs, "
            f"{cpu_model()}; {args.rounds} rounds of {args.requests} requests, "
            f"{args.clients} clients\n"
        )
        print("| target | median requests/s | ratio to off | rounds |")
        print("| --- | --- | --- | --- |")
    for name, values in results.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.0f}" for v in values)
        if args.markdown:
            print(f"| {name} | {median:.0f} | {median / base:.2f} | {rounds} |")
        else:
            print(f"{name:20} {median:8.0f} req/s  x{median / base:.2f}  [{rounds}]")
    for name, micros in costs.items():
        print(f"\ndecision cost ({name}): {micros:.1f} µs per publish request (median of 5)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
