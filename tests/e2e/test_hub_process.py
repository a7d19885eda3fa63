"""`cachewire-hub` as a user runs it: documented flags and variables, SSE, publish, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.hub_http import publish, wait_connections
from tests.servers import BIN, ROOT, Proc, free_port, http_ok, wait_for
from tests.sse_wire import SseClient, parse_frame

HubProcess = Callable[..., Proc]
EXIT_WAIT = 30.0  # generous bound on a SIGTERM exit; the grace period itself is shorter


def log_lines(proc: Proc) -> list[dict[str, object]]:
    return [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]


def run_hub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `cachewire-hub` to completion (for start-up failures)."""
    return subprocess.run(
        [str(BIN / "cachewire-hub"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--history", "0"], {}, "--history='0'"),
        ([], {"PLASMA_PORT": "eighty"}, "PLASMA_PORT='eighty'"),
    ],
)
def test_bad_setting_stops_the_start_with_one_line(
    args: list[str], env: dict[str, str], named: str
) -> None:
    done = run_hub(*args, env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"cachewire-hub: {named}: ")
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [["-m", "cachewire", "hub"], ["-m", "cachewire.hub"]],
    ids=["python -m cachewire hub", "python -m cachewire.hub"],
)
def test_python_dash_m_is_the_same_command(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, *argv, "--history", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert (done.returncode, done.stderr.count("\n")) == (2, 1)


def test_taken_port_is_a_one_line_error_exit_1(hub_process: HubProcess) -> None:
    hub = hub_process(grpc=False)
    done = run_hub("--http-port", str(hub.ports["http"]), "--grpc-port", "off")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith("cachewire-hub: ")
    assert "address already in use" in done.stderr
    assert "Traceback" not in done.stderr


async def test_subscribe_publish_then_sigterm_ends_the_stream_cleanly(
    hub_process: HubProcess,
) -> None:
    """The issue's newcomer flow, then SIGTERM: the stream gets its terminating chunk,
    the process logs each connection and exits 0."""
    hub = hub_process(
        "--heartbeat",
        "30",
        "--history",
        "1000",
        "--sse-retry",
        "1500",
        "--cors-origin",
        "https://app.example",
        "--max-body",
        "65536",
        "--queue-size",
        "500",
        "--grace",
        "5",
    )
    port = hub.ports["http"]
    async with await SseClient.connect(port, "/?eventType=program:1234") as client:
        assert client.headers["access-control-allow-origin"] == "https://app.example"
        assert await client.frame() == b"retry: 1500\n\n"
        await wait_connections(port, 1)
        [event_id] = await publish(port, {"type": "program:1234:views", "data": "42"})
        assert await client.events(1) == [
            (event_id, {"meta": {"type": "program:1234:views"}, "data": "42"})
        ]
        hub.signal(signal.SIGTERM)
        assert await client.until_end() == b""
        assert client.ended_cleanly
    assert hub.popen.wait(EXIT_WAIT) == 0
    lines = log_lines(hub)
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    messages = [line["msg"] for line in lines]
    assert messages.count("sse connection opened") == 1
    assert messages.count("sse connection closed") == 1
    assert messages[-1] == "hub stopped"


async def test_sigterm_with_a_stalled_client_still_exits_0(hub_process: HubProcess) -> None:
    """A client that never reads cannot hold the shutdown past the grace period."""
    hub = hub_process("--grace", "1", grpc=False)
    port = hub.ports["http"]
    stalled = await SseClient.connect(port, "/?eventType=t", rcvbuf=4096)
    try:
        await wait_connections(port, 1)
        for _ in range(40):  # ~5 MiB: more than the socket buffers hold
            await publish(port, [{"type": "t", "data": "x" * 16_384}] * 8)
        hub.signal(signal.SIGTERM)
        assert hub.popen.wait(EXIT_WAIT) == 0
    finally:
        stalled.close()


@pytest.fixture
def plasma_hub() -> Iterator[tuple[Proc, int]]:
    """A hub configured only through Plasma's variables."""
    port = free_port()
    env = {
        **os.environ,
        "PLASMA_PORT": str(port),
        "PLASMA_ORIGIN": "http://plasma.example",
        "PLASMA_SSE_RETRY": "700",
        "PLASMA_SSE_EVENTQUERY": "topics",
        "PLASMA_SUBSCRIBER_TYPE": "mock",
        "CACHEWIRE_GRPC_PORT": "off",
    }
    popen = subprocess.Popen(
        [str(BIN / "cachewire-hub")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc = Proc(popen, {"http": port})

    def ready() -> bool:
        assert popen.poll() is None, "cachewire-hub exited"
        return http_ok(f"http://127.0.0.1:{port}/readyz")

    try:
        wait_for(ready, timeout=30, what="cachewire-hub on PLASMA_PORT")
        yield proc, port
    finally:
        assert proc.stop(EXIT_WAIT) == 0


async def test_plasma_environment_configures_the_hub(plasma_hub: tuple[Proc, int]) -> None:
    """A Plasma deployment's variables work unchanged; the mock source emits nothing."""
    _, port = plasma_hub
    async with await SseClient.connect(port, "/?topics=a") as client:
        assert client.headers["access-control-allow-origin"] == "http://plasma.example"
        assert await client.frame() == b"retry: 700\n\n"
        head_id, _ = parse_frame(await client.frame())
        assert head_id is not None and head_id.endswith("-0")  # no fake events
        await wait_connections(port, 1)
        [event_id] = await publish(port, {"type": "a:b"})
        assert (await client.events(1))[0][0] == event_id


async def test_restart_on_the_same_port_resets_resuming_clients(hub_process: HubProcess) -> None:
    """The memory broker starts a new epoch: a resume from before the restart gets a
    cachewire:reset event, then the live events of the new hub."""
    port = free_port()
    first = hub_process(http_port=port, grpc=False)
    [old_id] = await publish(port, {"type": "a"})
    assert first.stop(EXIT_WAIT) == 0
    hub_process(http_port=port, grpc=False)
    async with await SseClient.connect(
        port, "/?eventType=a", headers=[("Last-Event-ID", old_id)]
    ) as client:
        await client.frame()  # retry
        reset_id, reset = parse_frame(await client.frame())
        assert reset["meta"] == {"type": "cachewire:reset", "reason": "epoch_changed"}
        assert reset_id is not None and reset_id.split("-")[0] != old_id.split("-")[0]
        await wait_connections(port, 1)
        [new_id] = await publish(port, {"type": "a"})
        assert (await client.events(1))[0][0] == new_id
