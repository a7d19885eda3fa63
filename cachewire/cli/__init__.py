"""`cachewire`: one command with a subcommand per component.

Each subcommand owns its flags (and its `--help`, which names every setting's environment
variable); this module only picks the subcommand. `cachewire-hub` and `cachewire-sidecar`
are aliases of `cachewire hub` and `cachewire sidecar`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    help: str
    run: Callable[[Sequence[str], str], int | None]


def _hub(argv: Sequence[str], prog: str) -> None:
    from cachewire.hub.__main__ import main

    main(argv, prog=prog)


def _sidecar(argv: Sequence[str], prog: str) -> None:
    from cachewire.sidecar.__main__ import main

    main(argv, prog=prog)


def _publish(argv: Sequence[str], prog: str) -> int:
    from cachewire.cli.publish import main

    return main(argv, prog=prog)


def _probe(argv: Sequence[str], prog: str) -> int:
    from cachewire.cli.probe import main

    return main(argv, prog=prog)


def _inject(argv: Sequence[str], prog: str) -> int:
    from cachewire.cli.inject import main

    return main(argv, prog=prog)


def _injector(argv: Sequence[str], prog: str) -> int:
    from cachewire.k8s.injector import main

    return main(argv, prog=prog)


def _wait(argv: Sequence[str], prog: str) -> int:
    from cachewire.cli.wait import main

    return main(argv, prog=prog)


def _version(argv: Sequence[str], prog: str) -> None:
    import cachewire

    argparse.ArgumentParser(prog=prog, description="print cachewire's version").parse_args(argv)
    print(cachewire.__version__)


COMMANDS: dict[str, Command] = {
    "hub": Command("run the push hub (SSE, HTTP publish, gRPC)", _hub),
    "sidecar": Command("run the per-pod agent that applies invalidations to caches", _sidecar),
    "publish": Command("publish events to a hub (flags, or NDJSON on stdin); prints ids", _publish),
    "probe": Command("measure how fast invalidations reach caches (canary probes)", _probe),
    "inject": Command("add the sidecar to the workloads of a YAML file (-f FILE|-)", _inject),
    "injector": Command("run the admission webhook that injects sidecars", _injector),
    "wait": Command("return once a URL answers 200 (the classic sidecar's postStart)", _wait),
    "version": Command("print the installed version", _version),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachewire",
        description="cachewire propagates cache invalidations from a hub to every pod's caches.",
        epilog="`cachewire COMMAND --help` lists a command's settings and their variables.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        code = COMMANDS[args[0]].run(args[1:], f"cachewire {args[0]}")
        raise SystemExit(code or 0)
    build_parser().parse_args(args)  # --help, or an error naming the commands
