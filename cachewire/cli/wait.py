"""`cachewire wait URL`: return once URL answers 200, or fail after --timeout seconds.

The injected sidecar's postStart hook in classic mode (`cachewire.io/native-sidecar:
"false"`): the kubelet starts a pod's next container only once this returns, so the app
starts after the sidecar is up. It needs no shell or curl in the image.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from cachewire.common.config import seconds


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def main(argv: Sequence[str], prog: str = "cachewire wait") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("url", help="http:// URL that answers 200 when ready")
    parser.add_argument("--timeout", type=seconds, default=60.0, help="seconds (default 60)")
    parser.add_argument("--interval", type=seconds, default=0.2, help="seconds between tries")
    args = parser.parse_args(list(argv))
    deadline = time.monotonic() + args.timeout
    while not answers(args.url):
        if time.monotonic() >= deadline:
            print(f"{prog}: {args.url} not ready after {args.timeout:g}s", file=sys.stderr)
            return 1
        time.sleep(args.interval)  # polling a URL that is not up yet: nothing to wait on
    return 0
