"""A real headless Chromium on a protected hub, through examples/browser/cachewire-events.js.

The page (another origin, listed in --cors-origin) gets short-lived JWTs from its own
backend (the page server's /token), exchanges them for tickets (POST /v1/tickets) and
subscribes with `?ticket=`. It receives what it is granted, is refused a type it has no
grant for, and when its token expires (`cachewire:reauth`) gets a fresh ticket and resumes
from its last id without losing or repeating an event.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.auth_helpers import SECRET, bearer, token
from tests.e2e.test_browser import CHROMIUM, launch_chromium, open_page, stop_chromium
from tests.hub_http import wait_connections
from tests.servers import ROOT, Proc, free_port

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make system-deps)"),
]
MODULE = ROOT / "examples" / "browser" / "cachewire-events.js"
TOKEN_TTL = 3.0  # seconds: each stream's token expires soon, so the page re-authenticates

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>cachewire protected</title>
<script type="module">
import { subscribe } from "./cachewire-events.js";
window.state = {events: [], resets: 0, errors: []};
const headers = async () => {
  const token = await (await fetch("/token")).text();
  return { Authorization: `Bearer ${token}` };
};
const onError = (e) => window.state.errors.push({status: e.status || 0, message: String(e)});
subscribe({
  hub: "%(hub)s", types: ["program:1234"], headers, onError, retryMs: 100,
  onEvent: (event, id) => window.state.events.push({id, type: event.meta.type}),
  onReset: () => { window.state.resets += 1; },
});
subscribe({ hub: "%(hub)s", types: ["user:42"], headers, onError });
</script>
"""


@pytest.fixture
async def page_site() -> AsyncIterator[tuple[Callable[[str], str], dict[str, int]]]:
    """The app's origin: the page, the JS module, and /token (the app's backend)."""
    pages: dict[str, str] = {}
    issued = {"tokens": 0}

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=pages["index.html"], content_type="text/html")

    async def module(request: web.Request) -> web.Response:
        return web.Response(text=MODULE.read_text(), content_type="text/javascript")

    async def issue(request: web.Request) -> web.Response:
        issued["tokens"] += 1
        return web.Response(text=token({"subscribe": ["program:1234"]}, expires_in=TOKEN_TTL))

    app = web.Application()
    app.router.add_get("/index.html", page)
    app.router.add_get("/cachewire-events.js", module)
    app.router.add_get("/token", issue)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    def make(hub_url: str) -> str:
        pages["index.html"] = PAGE % {"hub": hub_url}
        return f"http://127.0.0.1:{port}/index.html"

    yield make, issued
    await runner.cleanup()


async def publish(port: int, event: dict[str, Any]) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port}/v1/publish",
            json=event,
            headers=bearer(token({"publish": ["*"]})),
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        ids: list[str] = (await resp.json())["ids"]
        return ids[0]


def resumed_streams(hub: Proc) -> int:
    """SSE connections the hub opened with a position to resume from (lastEventId)."""
    records = [json.loads(line) for line in hub.log().splitlines() if line.startswith("{")]
    return sum(1 for r in records if r["msg"] == "sse connection opened" and r.get("last_event_id"))


async def test_browser_subscribes_with_tickets_is_refused_ungranted_and_resumes_after_expiry(
    hub_process: Callable[..., Proc],
    page_site: tuple[Callable[[str], str], dict[str, int]],
) -> None:
    make_page, issued = page_site
    hub_port, admin_port = free_port(), free_port()
    url = make_page(f"http://127.0.0.1:{hub_port}")
    origin = url.rsplit("/", 1)[0]
    hub = hub_process(
        "--auth", "protected", "--jwt-key", SECRET, "--cors-origin", origin,
        "--admin-port", str(admin_port), "--sse-retry", "200",
        http_port=hub_port, grpc=False,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cachewire-chromium-") as profile:
        browser, devtools_port = launch_chromium(url, Path(profile))
        pages = open_page(url, devtools_port)
        try:
            page = await anext(pages)
            await wait_connections(admin_port, 1)
            first = await publish(hub_port, {"type": "program:1234:views", "data": 1})
            await page.wait_until(
                lambda s: any(e["id"] == first for e in s.get("events", [])), "the first event"
            )
            await page.wait_until(
                lambda s: any(e["status"] == 403 for e in s.get("errors", [])), "user:42 refused"
            )

            await page.wait_until(lambda s: resumed_streams(hub) >= 1, "a resume after reauth")
            second = await publish(hub_port, {"type": "program:1234", "data": 2})
            await page.wait_until(
                lambda s: any(e["id"] == second for e in s.get("events", [])), "a later event"
            )
            state = await page.state()
            assert [e["id"] for e in state["events"]] == [first, second]  # none lost or twice
            assert state["resets"] == 0
            assert issued["tokens"] >= 3  # both subscriptions' first, and one after reauth
        finally:
            await pages.aclose()
            stop_chromium(browser)
