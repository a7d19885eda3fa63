"""`cachewire sidecar` (alias `cachewire-sidecar`): parse settings, run until SIGTERM or SIGINT.

A bad flag, variable or config file ends the start with one line naming it (exit 2). On
SIGTERM the sidecar stops reading the hub, finishes the batch in flight (and what else is
pending, within --grace), and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from cachewire.common import logs
from cachewire.sidecar import telemetry
from cachewire.sidecar.errors import ConfigError
from cachewire.sidecar.settings import SidecarSettings, parse
from cachewire.sidecar.sinks.base import SinkError


async def serve(settings: SidecarSettings) -> None:
    from cachewire.sidecar.server import Sidecar  # after parsing: a bad flag is reported at once

    sidecar = Sidecar(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sidecar.start()
        await stop.wait()
    finally:
        await sidecar.stop()


def main(argv: Sequence[str] | None = None, prog: str = "cachewire-sidecar") -> None:
    try:
        settings = parse(sys.argv[1:] if argv is None else argv, prog=prog)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.setup(settings.log_level)
    telemetry.setup()  # tracing from OTEL_* (off unless configured)
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (OSError, SinkError) as exc:  # e.g. the health or relay port is taken
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        telemetry.flush()  # the spans still buffered


if __name__ == "__main__":
    main()
