"""The event loop a process runs on: uvloop where installed (the default), else asyncio's.

uvloop runs the loop, the sockets and the transports in C (libuv); on the hub's publish
path it removes about a third of the CPU per request (bench/RESULTS.md). `kind="asyncio"`
forces the standard loop (to compare, or to rule uvloop out when debugging).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

LoopKind = Literal["auto", "uvloop", "asyncio"]
T = TypeVar("T")


def loop_factory(kind: LoopKind = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's; "uvloop" fails when it is missing."""
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: LoopKind = "auto") -> T:
    """`asyncio.run(main)` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)


def running_kind() -> str:
    """ "uvloop" or "asyncio": what the running loop is (for the start-up log line)."""
    return (
        "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    )


def bound_port(site: Any) -> int:
    """The port an aiohttp `TCPSite` listens on (port 0 binds a free one); its server is
    asyncio's or uvloop's, which share `sockets` but no base class."""
    sockets = getattr(site._server, "sockets", None)
    assert sockets, "the site is not started"
    return int(sockets[0].getsockname()[1])
