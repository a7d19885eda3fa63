"""Load for a chaos scenario: writers that change the "database" and publish the
invalidation the way an app does, and readers that fill caches from it race-safely.

Writers publish through the hub's HTTP API, its gRPC `Publish`, or a long-running
`cachewire publish` fed NDJSON on stdin; a failed or timed-out attempt is retried (on the
next hub), so an event may be published twice (harmless: a delete is idempotent).
Readers fill memcached with a lease (`add` a placeholder, `gets` its CAS token, read the
database, `cas` the value: a delete in between makes the `cas` fail), and app caches
through `Invalidator.guard.get_or_load` (cachewire.sidecar.client's race-safe fill).
The pace of both is a load rate (a short sleep per operation), not a wait for a fact.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Literal

import grpc
import redis
from pymemcache.client.base import Client

from cachewire.sidecar.client import Invalidator
from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.chaos.checker import CacheLog, Checker, Publication, now
from tests.servers import BIN

Via = Literal["http", "grpc", "cli"]
FILLING = b"~filling"
KEYS = [f"user:{i}" for i in range(60)]


class Writer(threading.Thread):
    """Writes a random key, then publishes its invalidation until a hub accepts it."""

    def __init__(
        self,
        checker: Checker,
        via: Via,
        http: Callable[[], Sequence[int]],
        grpc_ports: Callable[[], Sequence[int]],
        *,
        pace: float = 0.02,
        timeout: float = 1.0,
    ) -> None:
        super().__init__(daemon=True, name=f"writer-{via}")
        self.checker, self.via, self.pace, self.timeout = checker, via, pace, timeout
        self.http, self.grpc_ports = http, grpc_ports
        self.stopping = threading.Event()
        self.errors = 0
        self.rng = random.Random()
        self._turn = 0
        self._cli: subprocess.Popen[str] | None = None
        self._cli_port = 0

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.write_one(self.rng.choice(KEYS))
                time.sleep(self.pace)
        finally:
            self._close_cli()

    def write_one(self, key: str) -> Publication:
        version, written_at = self.checker.db.write(key)
        event = {"type": key, "keys": [key], "data": version}
        attempts = 0
        while True:
            attempts += 1
            if self.via == "cli":
                self._start_cli()  # not part of the attempt: a process start takes a while
            sent_at = now()
            try:
                event_id = self._publish(event)
            except Exception:  # a timeout, a refused connection, a 503: retry on the next hub
                self.errors += 1
                self._turn += 1
                time.sleep(0.05)
                continue
            pub = Publication(key, version, written_at, sent_at, event_id, attempts, self.via)
            self.checker.publications.append(pub)
            return pub

    def burst(self, keys: Sequence[str]) -> None:
        """Write every key, then publish all their invalidations in one HTTP request."""
        written = [(key, *self.checker.db.write(key)) for key in keys]
        events = [{"type": k, "keys": [k], "data": v} for k, v, _ in written]
        while True:
            sent_at = now()
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.http()[self._turn % len(self.http())]}/v1/publish",
                data=json.dumps(events).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    ids = json.load(resp)["ids"]
                break
            except OSError:
                self._turn += 1
        for (key, version, written_at), event_id in zip(written, ids, strict=True):
            pub = Publication(key, version, written_at, sent_at, event_id, 1, "http-burst")
            self.checker.publications.append(pub)

    def _publish(self, event: dict[str, object]) -> str:
        if self.via == "grpc":
            ports = self.grpc_ports()
            port = ports[self._turn % len(ports)]
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = hub_pb2_grpc.HubStub(channel)  # type: ignore[no-untyped-call]
                request = hub_pb2.PublishRequest(
                    events=[hub_pb2.EventInput(type=str(event["type"]), keys=[str(event["type"])])]
                )
                reply = stub.Publish(request, timeout=self.timeout)
                return str(reply.ids[0])
        ports = self.http()
        port = ports[self._turn % len(ports)]
        if self.via == "cli":
            return self._publish_cli(port, event)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/publish",
            data=json.dumps(event).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as resp:
            return str(json.load(resp)["ids"][0])

    def _start_cli(self) -> None:
        """A running `cachewire publish` for the current hub. `--retry-for 0`: it gives up
        at once, and this writer retries (so every attempt it makes is timed)."""
        ports = self.http()
        port = ports[self._turn % len(ports)]
        if self._cli is None or self._cli.poll() is not None or self._cli_port != port:
            self._close_cli()
            argv = [str(BIN / "cachewire"), "publish", "--hub-url", f"http://127.0.0.1:{port}"]
            self._cli = subprocess.Popen(
                [*argv, "--retry-for", "0"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._cli_port = port
            with contextlib.suppress(OSError):  # warm: a first line answered means it runs
                self._publish_cli(port, {"type": "user:warm-up"})

    def _publish_cli(self, port: int, event: dict[str, object]) -> str:
        """One line to the running `cachewire publish` (NDJSON on stdin); its id on stdout."""
        if self._cli is None or self._cli.poll() is not None or self._cli_port != port:
            raise OSError("cachewire publish is not running for this hub")
        assert self._cli.stdin is not None and self._cli.stdout is not None
        self._cli.stdin.write(json.dumps(event) + "\n")
        self._cli.stdin.flush()
        line = self._cli.stdout.readline().strip()
        if not line:
            self._close_cli()
            raise OSError("cachewire publish ended")
        return line

    def _close_cli(self) -> None:
        if self._cli is not None:
            with contextlib.suppress(OSError):
                self._cli.kill()
            self._cli.wait()
            for pipe in (self._cli.stdin, self._cli.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            self._cli = None


class MemcachedReader(threading.Thread):
    """Reads random keys from one memcached, filling misses with a lease."""

    def __init__(self, checker: Checker, name: str, port: Callable[[], int]) -> None:
        super().__init__(daemon=True, name=f"reader-{name}")
        self.checker, self.cache_name, self.port = checker, name, port
        self.stopping = threading.Event()
        self.hits = self.fills = self.errors = 0
        self.rng = random.Random()

    def run(self) -> None:
        client: Client | None = None
        while not self.stopping.is_set():
            try:
                if client is None:
                    client = Client(("127.0.0.1", self.port()), default_noreply=False, timeout=1)
                self.read(client, self.rng.choice(KEYS))
            except Exception:  # memcached restarting: reconnect
                self.errors += 1
                if client is not None:
                    client.close()
                client = None
                time.sleep(0.05)
            time.sleep(0.002)
        if client is not None:
            client.close()

    def read(self, mc: Client, key: str) -> int:
        read_at = now()
        value = mc.get(key)
        if value is not None and value != FILLING:
            self.hits += 1
            self.checker.read(self.cache_name, key, int(value), read_at)
            return int(value)
        if value is None and mc.add(key, FILLING, expire=5, noreply=False):
            current, token = mc.gets(key)
            fresh = self.checker.db.read(key)
            if current == FILLING and token is not None and mc.cas(key, str(fresh), token):
                self.fills += 1
            return fresh
        return self.checker.db.read(key)  # someone else holds the lease: no fill


class AppReader(threading.Thread):
    """An app process's reads through its Invalidator-guarded cache (behind a relay)."""

    def __init__(self, checker: Checker, name: str, app: Invalidator) -> None:
        super().__init__(daemon=True, name=f"reader-{name}")
        self.checker, self.cache_name, self.app = checker, name, app
        self.stopping = threading.Event()
        self.hits = 0
        self.rng = random.Random()

    def run(self) -> None:
        db = self.checker.db
        while not self.stopping.is_set():
            key = self.rng.choice(KEYS)
            read_at = now()
            loaded: list[int] = []

            def load(key: str = key, loaded: list[int] = loaded) -> int:
                loaded.append(db.read(key))
                return loaded[-1]

            value = self.app.guard.get_or_load(key, load)
            if not loaded:
                self.hits += 1
                self.checker.read(self.cache_name, key, value, read_at)
            time.sleep(0.002)


# Store the value only if the placeholder this fill set is still there (a delete voids it).
FILL_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false
"""


class RedisReader(threading.Thread):
    """Reads random keys from a guarded Redis; a miss fills with a placeholder token
    (`SET NX`) and a compare-and-set script, so a delete in between voids the fill."""

    def __init__(self, checker: Checker, name: str, port: int) -> None:
        super().__init__(daemon=True, name=f"reader-{name}")
        self.checker, self.cache_name, self.port = checker, name, port
        self.stopping = threading.Event()
        self.hits = self.fills = self.errors = 0
        self.rng = random.Random()

    def run(self) -> None:
        client = redis.Redis(port=self.port, socket_timeout=2)
        fill = client.register_script(FILL_LUA)
        while not self.stopping.is_set():
            key = self.rng.choice(KEYS)
            try:
                read_at = now()
                value = client.get(key)
                if value is not None and not value.startswith(FILLING):
                    self.hits += 1
                    self.checker.read(self.cache_name, key, int(value), read_at)
                elif value is None:
                    token = FILLING + str(self.rng.random()).encode()
                    if client.set(key, token, nx=True, px=5000):
                        fresh = self.checker.db.read(key)
                        if fill(keys=[key], args=[token, str(fresh), 60_000]):
                            self.fills += 1
            except redis.RedisError:
                self.errors += 1
                time.sleep(0.05)
            time.sleep(0.002)
        client.close()


class RedisMonitor(threading.Thread):
    """Records the sidecar's UNLINK/DEL and FLUSHDB on a guarded Redis (MONITOR), at the
    moment they are seen: at or after Redis ran them, so latencies err on the long side."""

    def __init__(self, log: CacheLog, port: int) -> None:
        super().__init__(daemon=True, name=f"monitor-{log.name}")
        self.log = log
        self.client = redis.Redis(port=port, decode_responses=True)
        self.monitor = self.client.monitor()
        self.monitor.__enter__()  # MONITOR is on once this returns
        self.stopping = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError, ValueError, AttributeError):
            while not self.stopping.is_set():
                command = self.monitor.next_command()["command"].split(" ")
                verb = command[0].upper()
                if verb in ("UNLINK", "DEL"):
                    for key in command[1:]:
                        self.log.deleted(key.strip('"'))
                elif verb in ("FLUSHDB", "FLUSHALL"):
                    self.log.flushed(verb.lower())

    def close(self) -> None:
        self.stopping.set()
        with contextlib.suppress(redis.RedisError, OSError):
            self.monitor.connection.disconnect()  # ends next_command() in the thread
        self.join(10)
        self.client.close()
