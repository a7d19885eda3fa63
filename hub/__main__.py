"""`cachewire hub` (alias `cachewire-hub`): parse settings, run the hub until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Sequence

from cachewire.common import logs
from cachewire.hub import workers
from cachewire.hub.errors import ConfigError
from cachewire.hub.server import Hub
from cachewire.hub.settings import HubSettings, parse


async def serve(settings: HubSettings) -> None:
    # The handlers come first: a SIGTERM during start-up still ends in an orderly stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hub = Hub(settings)
    await hub.start()
    # What start-up created lives as long as the process: keep it out of the collector's
    # full passes, which otherwise pause the loop (measured: 110 ms -> 75 ms at 60k events).
    gc.freeze()
    await stop.wait()
    await hub.stop()


def main(argv: Sequence[str] | None = None, prog: str = "cachewire-hub") -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = parse(HubSettings, argv, prog=prog)
        if settings.workers > 1:
            workers.check(settings)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.setup(settings.log_level)
    if settings.workers > 1 and not workers.is_worker():
        raise SystemExit(workers.supervise(settings, argv))
    try:
        asyncio.run(serve(settings))
    except OSError as exc:  # e.g. the port is taken
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
