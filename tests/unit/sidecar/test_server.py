"""The Sidecar lifecycle object: sinks built from settings, start-up warnings, stop."""

from __future__ import annotations

import logging
import socket

import pytest

from cachewire.sidecar.rules import parse_rules
from cachewire.sidecar.server import Sidecar, make_slots
from cachewire.sidecar.settings import SidecarSettings
from cachewire.sidecar.state import Slot
from tests.servers import free_port
from tests.unit.sidecar.fakes import MemorySink


def settings(**kw: object) -> SidecarSettings:
    values: dict[str, object] = {
        "hub": f"127.0.0.1:{free_port()}",
        "topics": ("user",),
        "health_port": 0,
        "backoff_base": 0.05,
        "backoff_cap": 0.1,
        **kw,
    }
    return SidecarSettings(**values)  # type: ignore[arg-type]


def test_sinks_follow_the_settings_with_their_flush_policy() -> None:
    s = settings(
        memcached="127.0.0.1:11211",
        memcached_flush=False,
        redis_url="redis://127.0.0.1:6379/0",
        webhook="http://127.0.0.1:9/x",
        relay_port=0,
    )
    sc = Sidecar(s)
    slots = [(slot.name, slot.flush_enabled) for slot in sc.slots]
    assert slots == [("memcached", False), ("redis", True), ("webhook", True), ("relay", True)]
    assert len(make_slots(settings(redis_url="redis://h/0"), sc.metrics)) == 1


async def test_start_warns_when_rules_need_prefixes_memcached_cannot_list(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules = parse_rules([{"type": "user:{id}", "prefixes": ["feed:{id}:"]}])
    sink = MemorySink("memcached")
    sc = Sidecar(settings(rules=rules), slots=[Slot(sink)])
    with caplog.at_level(logging.WARNING, logger="cachewire.sidecar"):
        await sc.start()
    await sc.stop(0)
    [record] = [r for r in caplog.records if "memcached cannot enumerate" in r.getMessage()]
    assert "flush_all memcached" in record.getMessage()
    assert record.__dict__["rules"] == ["user:{id}"]
    assert sink.started and sink.closed


async def test_relay_is_served_on_its_port() -> None:
    """--relay-port wires the local relay in as a sink; port 0 binds an ephemeral port."""
    sc = Sidecar(settings(relay_port=0))
    await sc.start()
    try:
        assert sc.relay_port is not None and sc.relay_port > 0
        assert sc.health_port > 0
    finally:
        await sc.stop(0)


async def test_a_taken_port_fails_start_and_stop_still_works() -> None:
    """__main__ turns the OSError into one line and exit status 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sink = MemorySink()
        sc = Sidecar(settings(health_port=taken.getsockname()[1]), slots=[Slot(sink)])
        with pytest.raises(OSError):
            await sc.start()
        await sc.stop(0)
    assert sink.closed
