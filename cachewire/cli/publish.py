"""`cachewire publish`: publish events to a hub over its HTTP API and print their ids.

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

Each published event's id is printed. A publish is acknowledged once the event is in the
hub's history. A refused event prints the hub's error and exits 1; an unreachable hub, 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any


class PublishError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def publish(hub_url: str, events: list[dict[str, Any]], timeout: float = 10.0) -> list[str]:
    """POST events (one request, in order); return their ids."""
    request = urllib.request.Request(
        hub_url.rstrip("/") + "/v1/publish",
        data=json.dumps(events).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            ids: list[str] = json.load(response)["ids"]
            return ids
    except urllib.error.HTTPError as exc:
        try:
            detail = json.load(exc).get("error", exc.reason)
        except ValueError:
            detail = exc.reason
        raise PublishError(f"the hub refused the event ({exc.code}): {detail}", 1) from None
    except (urllib.error.URLError, OSError) as exc:
        raise PublishError(f"cannot reach the hub at {hub_url}: {exc}", 2) from None


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
                yield message  # the hub validates it
                continue
            event: dict[str, Any] = {"type": message["meta"]["type"], "data": message.get("data")}
        except (ValueError, KeyError, TypeError):
            raise PublishError(f"line {number}: not {shape}", 1) from None
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
        help="the hub's HTTP URL [env: CACHEWIRE_HUB_URL]",
    )
    parser.add_argument("--type", help="the event type (topic), e.g. user:42")
    parser.add_argument("--data", help="JSON data, e.g. '{\"views\": 1}'")
    parser.add_argument("--keys", help="comma list of cache keys to invalidate")
    parser.add_argument("--prefixes", help="comma list of cache key prefixes to invalidate")
    parser.add_argument("--flush", action="store_true", help="invalidate everything")
    parser.add_argument("--every", type=float, default=0.0, help="seconds between events")
    parser.add_argument("--count", type=int, default=1, help="events to send (0: forever)")
    args = parser.parse_args(argv)
    if args.data is not None:
        try:
            json.loads(args.data)
        except ValueError:
            parser.error("--data must be JSON (a string needs quotes: '\"text\"')")
    if args.count < 0 or args.every < 0:
        parser.error("--count and --every must not be negative")
    return args


def main(argv: Sequence[str] | None = None, prog: str = "cachewire publish") -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, prog)
    events = from_flags(args) if args.type else from_lines(iter(sys.stdin))
    try:
        for event in events:
            for event_id in publish(args.hub_url, [event]):
                print(event_id, flush=True)
    except PublishError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    return 0
