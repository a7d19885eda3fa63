"""examples/sse.html in a real headless Chromium, driven over the DevTools protocol, against
a `cachewire-hub` process: replayed and live events show up; an id of another epoch
brings `cachewire:reset`, and the page drops its state and says so."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.e2e.test_relay import WAIT, publish
from tests.servers import ROOT, Proc, wait_for

pytestmark = pytest.mark.browser
PAGE = (ROOT / "examples" / "sse.html").as_uri()


class Page:
    """One Chromium tab, over its DevTools websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._next = 0
        self._events: list[str] = []  # names of the events received so far

    async def _receive(self) -> dict[str, Any]:
        message: dict[str, Any] = await self.ws.receive_json()
        if "method" in message:
            self._events.append(message["method"])
        return message

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        await self.ws.send_json({"id": self._next, "method": method, "params": params})
        async with asyncio.timeout(WAIT):
            while (message := await self._receive()).get("id") != self._next:
                pass
        if "error" in message:
            raise RuntimeError(f"{method}: {message['error']}")
        result: dict[str, Any] = message["result"]
        return result

    async def until(self, condition: str, value: str = "true") -> Any:
        """Wait, inside the page, until a JS condition holds; return a JS value then."""
        expression = (
            "new Promise(resolve => { const check = () => "
            f"({condition}) ? resolve({value}) : setTimeout(check, 20); check(); }})"
        )
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{condition}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def open(self, **query: str) -> None:
        """Navigate, and return once the page's load event fired."""
        self._events.clear()
        await self.call("Page.enable")
        await self.call("Page.navigate", url=f"{PAGE}?{urlencode(query)}")
        async with asyncio.timeout(WAIT):
            while "Page.loadEventFired" not in self._events:
                await self._receive()


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (make system-deps)")
    profile = tmp_path / "profile"
    browser = await asyncio.create_subprocess_exec(
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        active = profile / "DevToolsActivePort"
        await asyncio.to_thread(wait_for, active.exists, WAIT, "chromium's DevTools port")
        port = active.read_text().split()[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json(content_type=None)
            ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with session.ws_connect(ws_url, max_msg_size=0) as ws:
                yield Page(ws)
    finally:
        browser.terminate()
        try:
            async with asyncio.timeout(WAIT):
                await browser.wait()
        except TimeoutError:
            browser.kill()
            await browser.wait()


def text(element_id: str) -> str:
    return f"document.getElementById({json.dumps(element_id)}).textContent"


async def test_the_sse_page_shows_events_and_reacts_to_reset(
    hub_process: Callable[..., Proc], page: Page
) -> None:
    hub = hub_process("--cors-origin", "*", grpc=False)
    hub_url = f"http://127.0.0.1:{hub.ports['http']}"
    first = await asyncio.to_thread(
        publish, hub, {"type": "program:1234:views", "data": {"views": 10}}
    )
    await asyncio.to_thread(publish, hub, {"type": "other", "data": 1})  # not our topic
    epoch = first.split("-")[0]

    # Resume from before the first event: the hub replays it; then a live one arrives.
    await page.open(hub=hub_url, topics="program:1234", lastEventId=f"{epoch}-0")
    assert await page.until(f"{text('count')} === '1'", text("last-id")) == first
    assert await page.until(f"{text('status')} === 'open'")
    live = await asyncio.to_thread(
        publish, hub, {"type": "program:1234:poll", "keys": ["poll:1234"], "data": {"yes": 3}}
    )
    assert await page.until(f"{text('count')} === '2'", text("last-id")) == live
    state = await page.until("true", text("state"))
    assert "program:1234:views" in state and '{"views":10}' in state
    assert "program:1234:poll" in state and '{"yes":3}' in state
    assert "poll:1234" in await page.until("true", text("events"))
    assert await page.until("true", text("resets")) == "0"

    # An id of another epoch: the hub sends cachewire:reset; the page clears its state.
    await page.open(hub=hub_url, topics="program:1234", lastEventId="deadbeef-1")
    banner = await page.until(f"{text('resets')} === '1'", text("reset"))
    assert "epoch_changed" in banner and "cached state cleared" in banner
    assert "nothing yet" in await page.until("true", text("state"))
    after = await asyncio.to_thread(publish, hub, {"type": "program:1234:views", "data": 11})
    assert await page.until(f"{text('count')} === '1'", text("last-id")) == after
