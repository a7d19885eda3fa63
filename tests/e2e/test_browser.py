"""A real headless Chromium subscribes with EventSource, as a web page would.

The test serves a page that opens an EventSource to the hub (another origin: CORS), and
reads the page's state over the DevTools protocol. It checks that a published event arrives
in Plasma's envelope through `onmessage`, and that after the hub restarts (a new epoch on
the same port) the browser reconnects by itself with Last-Event-ID and receives the
`cachewire:reset` event, then live events again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.hub_http import publish, wait_connections
from tests.servers import Proc, free_port, wait_for

CHROMIUM = Path("/usr/bin/chromium")
WAIT = 40.0  # seconds: generous, a browser starts slowly on a shared machine

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make system-deps)"),
]

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>cachewire EventSource</title>
<script>
window.state = {opens: 0, errors: 0, messages: []};
const source = new EventSource("%(hub)s/?eventType=program:1234");
source.onopen = () => { window.state.opens += 1; };
source.onerror = () => { window.state.errors += 1; };
source.onmessage = (e) => {
  window.state.messages.push({id: e.lastEventId, data: JSON.parse(e.data)});
};
</script>
"""


class Page:
    """One page target of a running Chromium, driven over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def evaluate(self, expression: str) -> Any:
        call_id = next(self._ids)
        await self._ws.send_json(
            {
                "id": call_id,
                "method": "Runtime.evaluate",
                "params": {"expression": expression, "returnByValue": True},
            }
        )
        while True:
            reply = await self._ws.receive_json()
            if reply.get("id") == call_id:
                return reply["result"]["result"].get("value")

    async def state(self) -> dict[str, Any]:
        raw = await self.evaluate("JSON.stringify(window.state || null)")
        state = json.loads(raw) if raw else None
        return state or {"opens": 0, "errors": 0, "messages": []}  # before the script ran

    async def wait_until(self, fact: Callable[[dict[str, Any]], bool], what: str) -> None:
        """Poll the page's state until `fact` holds (each poll is a protocol round trip)."""
        state: dict[str, Any] = {}
        try:
            async with asyncio.timeout(WAIT):
                while not fact(state := await self.state()):
                    pass
        except TimeoutError:
            raise AssertionError(f"page never reached: {what}; state: {state}") from None


@pytest.fixture
async def page_server() -> AsyncIterator[Callable[[str], str]]:
    """Serves the page for a hub URL; gives the page's URL."""
    pages: dict[str, str] = {}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=pages[request.match_info["name"]], content_type="text/html")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()

    def make(hub_url: str) -> str:
        pages["index.html"] = PAGE % {"hub": hub_url}
        return f"http://127.0.0.1:{port}/index.html"

    yield make
    await runner.cleanup()


def launch_chromium(url: str, profile: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start a headless Chromium on `url`; its DevTools port (read from the profile)."""
    proc = subprocess.Popen(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    active = profile / "DevToolsActivePort"

    def written() -> bool:
        assert proc.poll() is None, f"chromium exited {proc.returncode}"
        return active.exists() and "\n" in active.read_text()

    try:
        wait_for(written, timeout=WAIT, what="chromium's DevToolsActivePort")
    except BaseException:
        stop_chromium(proc)
        raise
    return proc, int(active.read_text().splitlines()[0])


def stop_chromium(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def open_page(url: str, devtools_port: int) -> AsyncIterator[Page]:
    """The DevTools connection to the page target showing `url`."""
    async with aiohttp.ClientSession() as http:
        ws_url = None
        async with asyncio.timeout(WAIT):
            while ws_url is None:
                async with http.get(f"http://127.0.0.1:{devtools_port}/json/list") as resp:
                    targets = await resp.json()
                ws_url = next(
                    (t["webSocketDebuggerUrl"] for t in targets if t.get("url") == url), None
                )
        async with http.ws_connect(ws_url, max_msg_size=0) as ws:
            yield Page(ws)


def messages_of(state: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    return [m for m in state["messages"] if m["data"]["meta"]["type"] == type_]


async def test_browser_event_source_receives_events_and_a_reset_after_restart(
    hub_process: Callable[..., Proc], page_server: Callable[[str], str]
) -> None:
    hub_port = free_port()
    url = page_server(f"http://127.0.0.1:{hub_port}")
    origin = url.rsplit("/", 1)[0]
    flags = ("--cors-origin", origin, "--sse-retry", "200")
    first = hub_process(*flags, http_port=hub_port, grpc=False)
    with tempfile.TemporaryDirectory(prefix="cachewire-chromium-") as profile:
        browser, devtools_port = launch_chromium(url, Path(profile))
        pages = open_page(url, devtools_port)
        try:
            page = await anext(pages)
            await page.wait_until(lambda s: s["opens"] >= 1, "EventSource open")
            await wait_connections(hub_port, 1)
            [event_id] = await publish(hub_port, {"type": "program:1234:views", "data": "42"})
            await page.wait_until(
                lambda s: any(m["id"] == event_id for m in s["messages"]), "the event"
            )
            state = await page.state()
            assert state["messages"] == [
                {"id": event_id, "data": {"meta": {"type": "program:1234:views"}, "data": "42"}}
            ]

            # Restart: a new epoch on the same port. The browser reconnects by itself.
            assert first.stop() == 0
            hub_process(*flags, http_port=hub_port, grpc=False)
            await page.wait_until(lambda s: messages_of(s, "cachewire:reset"), "the reset")
            [reset] = messages_of(await page.state(), "cachewire:reset")
            assert reset["data"]["meta"] == {"type": "cachewire:reset", "reason": "epoch_changed"}
            assert reset["id"].split("-")[0] != event_id.split("-")[0]

            [live_id] = await publish(hub_port, {"type": "program:1234", "data": {"n": 1}})
            await page.wait_until(
                lambda s: any(m["id"] == live_id for m in s["messages"]), "a live event"
            )
            assert (await page.state())["opens"] >= 2
        finally:
            await pages.aclose()
            stop_chromium(browser)
