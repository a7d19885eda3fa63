"""The README's quickstart, as a newcomer types it: its curl lines run against a hub started
with the documented defaults (ports aside), and the subscriber sees what the README says."""

from __future__ import annotations

import json
import re
import shlex
import urllib.request
from collections.abc import Callable

from tests.servers import ROOT, Proc


def quickstart_curls() -> tuple[list[str], list[str]]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("In another terminal:") :].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.strip()]
    curls = [words for words in lines if words and words[0] == "curl"]
    subscribe = next(c for c in curls if "-XPOST" not in c)
    publish = next(c for c in curls if "-XPOST" in c)
    return subscribe, publish


def request_of(curl: list[str], port: int) -> urllib.request.Request:
    """A curl argv (URL, -H, -d, -XPOST, -N) → the same request to `port`."""
    headers: dict[str, str] = {}
    data: bytes | None = None
    url = ""
    args = iter(curl[1:])
    for arg in args:
        if arg == "-H":
            name, value = next(args).split(":", 1)
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data = next(args).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")  # curl's
        elif not arg.startswith("-"):
            url = arg
    url = re.sub(r"^(http://)?127\.0\.0\.1:8080", f"http://127.0.0.1:{port}", url)
    return urllib.request.Request(url, data=data, headers=headers)


def test_the_quickstart_curl_lines_publish_and_subscribe(hub_process: Callable[..., Proc]) -> None:
    hub = hub_process(grpc=False)
    port = hub.ports["http"]
    subscribe, publish = quickstart_curls()
    with urllib.request.urlopen(request_of(subscribe, port), timeout=10) as stream:
        with urllib.request.urlopen(request_of(publish, port), timeout=10) as answer:
            (event_id,) = json.load(answer)["ids"]
        block: list[bytes] = []
        while not any(line.startswith(b"data:") for line in block):
            block = []
            while (line := stream.readline()) not in (b"\n", b""):
                block.append(line)
    assert block == [
        f"id: {event_id}\n".encode(),
        b'data: {"meta":{"type":"program:1234:views"},"data":"42"}\n',
    ]
