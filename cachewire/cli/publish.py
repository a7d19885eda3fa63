"""`cachewire publish`: publish events to a hub and print their ids (cachewire.publish).

One event from flags::

    cachewire publish --type user:42 --keys user:42,user:42:profile
    cachewire publish --type program:1234:views --data '{"views": 1}'
    cachewire publish --type catalog --prefixes product: --flush

A counter every second, like Plasma's demo publisher (`--count 0`: until Ctrl-C)::

    cachewire publish --type program:1234:views --every 1 --count 10

NDJSON on stdin, one event a line: either the hub's own event object
(`{"type": ..., "keys": [...]}`) or Plasma's envelope, exactly what a Plasma publisher sends
to its Redis channel (`{"meta": {"type": ...}, "data": ...}`)::

    echo '{"type":"user:42","keys":["user:42"]}' | cachewire publish
    echo '{"meta":{"type":"program:1234:poll"},"data":{"yes":3}}' | cachewire publish

Each published event's id is printed, in order, once the event is in the hub's history.
Events read together share a request; a failing hub is retried for `--retry-for` seconds
(idempotently: nothing is published twice). A refused event prints the hub's error and
exits 1; a hub still unreachable after the retries, 2.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cachewire.publish import Publisher, PublishError, Refused

FIELDS = ("type", "data", "keys", "prefixes", "flush")


class LineError(Exception):
    """A stdin line that is not an event: exit 1, naming the line."""


def from_flags(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The event the flags describe; with --every, once per period with a counter."""
    counts = itertools.count(1) if args.count == 0 else range(1, args.count + 1)
    for n in counts:
        if n > 1:
            time.sleep(args.every)
        event: dict[str, Any] = {"type": args.type}
        if args.data is not None:
            event["data"] = json.loads(args.data)
        elif args.every:
            event["data"] = {"count": n}
        if args.keys:
            event["keys"] = args.keys.split(",")
        if args.prefixes:
            event["prefixes"] = args.prefixes.split(",")
        if args.flush:
            event["flush"] = True
        yield event


def from_lines(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """NDJSON → the hub's publish body: an event object as is, Plasma's envelope converted."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        shape = '{"type":...} or {"meta":{"type":...},"data":...}'
        try:
            message = json.loads(line)
            if isinstance(message, dict) and "meta" not in message and "type" in message:
                unknown = sorted(set(message) - set(FIELDS))
                if unknown:
                    raise LineError(f"line {number}: unknown field(s): {', '.join(unknown)}")
                yield message  # the hub validates the values
                continue
            event: dict[str, Any] = {"type": message["meta"]["type"], "data": message.get("data")}
        except (ValueError, KeyError, TypeError):
            raise LineError(f"line {number}: not {shape}") from None
        for extra in ("keys", "prefixes", "flush"):  # cachewire's additions to meta
            if extra in message["meta"]:
                event[extra] = message["meta"][extra]
        yield event


def parse_args(argv: Sequence[str], prog: str = "cachewire publish") -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Publish events to a cachewire hub over HTTP (no --type: NDJSON on stdin).",
    )
    parser.add_argument(
        "--hub-url",
        default=os.environ.get("CACHEWIRE_HUB_URL", "http://127.0.0.1:8080"),
        help="the hub: http(s)://HOST:PORT, or grpc://HOST:PORT [env: CACHEWIRE_HUB_URL]",
    )
    parser.add_argument("--type", help="the event type (topic), e.g. user:42")
    parser.add_argument("--data", help="JSON data, e.g. '{\"views\": 1}'")
    parser.add_argument("--keys", help="comma list of cache keys to invalidate")
    parser.add_argument("--prefixes", help="comma list of cache key prefixes to invalidate")
    parser.add_argument("--flush", action="store_true", help="invalidate everything")
    parser.add_argument("--every", type=float, default=0.0, help="seconds between events")
    parser.add_argument("--count", type=int, default=1, help="events to send (0: forever)")
    parser.add_argument(
        "--token-file",
        default=os.environ.get("CACHEWIRE_TOKEN_FILE"),
        help="a hub with --auth protected: file holding the bearer token (JWT) to send; "
        "or the token itself in CACHEWIRE_TOKEN, or an API key in CACHEWIRE_API_KEY "
        "(never on the command line) [env: CACHEWIRE_TOKEN_FILE]",
    )
    parser.add_argument(
        "--retry-for",
        type=float,
        default=10.0,
        help="seconds to retry an unreachable or failing hub before giving up (default 10)",
    )
    args = parser.parse_args(argv)
    if args.data is not None:
        try:
            json.loads(args.data)
        except ValueError:
            parser.error("--data must be JSON (a string needs quotes: '\"text\"')")
    if args.count < 0 or args.every < 0 or args.retry_for < 0:
        parser.error("--count, --every and --retry-for must not be negative")
    return args


def credentials(token_file: str | None, env: Mapping[str, str]) -> dict[str, str]:
    """Headers (gRPC metadata too: lower case) carrying the publisher's credential."""
    token = env.get("CACHEWIRE_TOKEN", "")
    if token_file:
        with open(token_file) as f:
            token = f.read().strip()
    if token:
        return {"authorization": f"Bearer {token}"}
    if env.get("CACHEWIRE_API_KEY"):
        return {"x-api-key": env["CACHEWIRE_API_KEY"]}
    return {}


def _printer(
    futures: queue.Queue[concurrent.futures.Future[str] | None], failed: list[PublishError]
) -> None:
    """Print each id as soon as it is stored, in order; stop at the first failure."""
    while (future := futures.get()) is not None:
        if failed:
            continue
        try:
            print(future.result(), flush=True)
        except PublishError as exc:
            failed.append(exc)


def main(argv: Sequence[str] | None = None, prog: str = "cachewire publish") -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, prog)
    events = from_flags(args) if args.type else from_lines(iter(sys.stdin))
    try:
        headers = credentials(args.token_file, os.environ)
    except OSError as exc:
        print(f"{prog}: --token-file: {exc}", file=sys.stderr)
        return 2
    try:
        publisher = Publisher(args.hub_url, retry_for=args.retry_for, timeout=10.0, headers=headers)
    except ValueError as exc:
        print(f"{prog}: --hub-url: {exc}", file=sys.stderr)
        return 2
    futures: queue.Queue[concurrent.futures.Future[str] | None] = queue.Queue()
    failed: list[PublishError] = []
    printer = threading.Thread(target=_printer, args=(futures, failed), daemon=True)
    printer.start()
    code = 0
    try:
        for event in events:  # submitted as read: lines that come together share a request
            if failed:
                break
            futures.put(publisher.submit(**{k: event[k] for k in FIELDS if k in event}))
    except LineError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        pass
    futures.put(None)
    printer.join()
    publisher.close()
    if failed:
        error = failed[0]
        if isinstance(error, Refused):
            print(f"{prog}: {error}", file=sys.stderr)
            return 1
        print(f"{prog}: cannot reach the hub at {args.hub_url}: {error}", file=sys.stderr)
        return 2
    return code
