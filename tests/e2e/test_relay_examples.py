"""The examples as a user runs them: examples/app.py (two processes, one database) behind a
`cachewire-sidecar` relay, and `cachewire publish`, against a `cachewire-hub` process."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.test_relay import WAIT
from tests.servers import ROOT, Proc, _spawn, free_port, start_sidecar, wait_for


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def start_apps(n: int, relay_port: int, hub: Proc, db: Path) -> list[Proc]:
    """n processes of examples/app.py; returns once each one's Invalidator is connected."""
    apps = []
    for _ in range(n):  # all start at once; then each is waited for
        port = free_port()
        popen, log_path = _spawn(
            [
                sys.executable,
                str(ROOT / "examples" / "app.py"),
                "--port",
                str(port),
                "--relay",
                f"127.0.0.1:{relay_port}",
                "--hub-url",
                f"http://127.0.0.1:{hub.ports['http']}",
                "--db",
                str(db),
            ]
        )
        apps.append(Proc(popen, {"http": port}, log_path))

    def connected(app: Proc) -> bool:
        if app.popen.poll() is not None:
            raise RuntimeError(f"examples/app.py exited {app.popen.returncode}:\n{app.log()}")
        try:
            return bool(http("GET", f"http://127.0.0.1:{app.port}/stats")[1]["connected"])
        except OSError:
            return False

    wait_for(
        lambda: all(connected(app) for app in apps),
        timeout=WAIT,
        what="examples/app.py connected to the relay",
    )
    return apps


def publisher(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "cachewire"), "publish", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=ROOT,
    )


def test_a_write_through_one_app_invalidates_the_others_cache(
    hub_process: Callable[..., Proc], procs: list[Proc], tmp_path: Path
) -> None:
    hub = hub_process()
    relay_port = free_port()
    procs.append(start_sidecar("--relay-port", str(relay_port), hub=hub, probe="/readyz"))
    apps = start_apps(2, relay_port, hub, tmp_path / "users.db")
    procs += apps
    a, b = apps
    url_a, url_b = (f"http://127.0.0.1:{p.ports['http']}" for p in (a, b))

    assert http("GET", f"{url_b}/users/1") == (404, {"error": "no such user"})  # cached: None
    status, body = http("PUT", f"{url_a}/users/1", {"name": "Ada"})
    assert status == 200 and body["applied"], body
    wait_for(
        lambda: http("GET", f"{url_b}/users/1")[1] == {"id": 1, "name": "Ada"},
        timeout=WAIT,
        what="b sees the new user",
    )
    loads = http("GET", f"{url_b}/stats")[1]["loads"]
    assert http("GET", f"{url_b}/users/1")[1]["name"] == "Ada"
    assert http("GET", f"{url_b}/stats")[1]["loads"] == loads  # a hit

    http("PUT", f"{url_a}/users/1", {"name": "Grace"})
    wait_for(
        lambda: http("GET", f"{url_b}/users/1")[1]["name"] == "Grace",
        timeout=WAIT,
        what="b's entry invalidated",
    )

    # The publisher example invalidates the same way (here: b's cached user 1).
    result = publisher(
        "--hub-url", f"http://127.0.0.1:{hub.ports['http']}", "--type", "user:1", "--keys", "user:1"
    )
    assert result.returncode == 0, result.stderr
    loads = http("GET", f"{url_b}/stats")[1]["loads"]

    def b_reloaded() -> bool:  # a GET that misses reads the database again
        http("GET", f"{url_b}/users/1")
        return bool(http("GET", f"{url_b}/stats")[1]["loads"] > loads)

    wait_for(b_reloaded, timeout=WAIT, what="b reloads user 1")

    # Bad input: a JSON error, and the app keeps serving.
    assert http("PUT", f"{url_a}/users/1", {"nom": "x"})[0] == 400
    assert http("GET", f"{url_a}/users/abc")[0] == 400
    assert http("GET", f"{url_a}/users/1")[0] == 200


def test_cachewire_publish(hub_process: Callable[..., Proc]) -> None:
    hub = hub_process()
    hub_url = f"http://127.0.0.1:{hub.ports['http']}"
    ok = publisher(
        "--hub-url", hub_url, "--type", "program:1234:views", "--every", "0.01", "--count", "3"
    )
    assert ok.returncode == 0, ok.stderr
    ids = ok.stdout.split()
    assert len(ids) == 3 and len(set(ids)) == 3

    plasma = publisher(
        "--hub-url",
        hub_url,
        stdin=(
            '{"meta":{"type":"program:1234:poll"},"data":{"yes":3}}\n'
            '\n{"meta":{"type":"user:1","keys":["user:1"]},"data":null}\n'
        ),
    )
    assert plasma.returncode == 0, plasma.stderr
    assert len(plasma.stdout.split()) == 2

    refused = publisher("--hub-url", hub_url, "--type", "a::b")
    assert refused.returncode == 1
    assert "empty segment" in refused.stderr and "Traceback" not in refused.stderr

    ndjson = publisher("--hub-url", hub_url, stdin='{"type":"x","keys":["x:1"]}\n')
    assert ndjson.returncode == 0 and len(ndjson.stdout.split()) == 1, ndjson.stderr

    not_an_event = publisher("--hub-url", hub_url, stdin='{"type":"x"}\n[1, 2]\n')
    assert not_an_event.returncode == 1 and "line 2" in not_an_event.stderr

    down = publisher(
        "--hub-url", f"http://127.0.0.1:{free_port()}", "--type", "a", "--retry-for", "0.2"
    )
    assert down.returncode == 2 and "cannot reach the hub" in down.stderr

    over_grpc = publisher("--hub-url", f"grpc://127.0.0.1:{hub.ports['grpc']}", "--type", "g")
    assert over_grpc.returncode == 0 and len(over_grpc.stdout.split()) == 1, over_grpc.stderr

    unknown = publisher("--hub-url", hub_url, stdin='{"type":"x","kyes":["x:1"]}\n')
    assert unknown.returncode == 1 and "line 1: unknown field(s): kyes" in unknown.stderr

    bad_data = publisher("--type", "a", "--data", "not json")
    assert bad_data.returncode == 2 and "--data must be JSON" in bad_data.stderr
