"""The HTTP API over real HTTP: publish, every bad input, errors as JSON, health, metrics."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import aiohttp
import pytest

from cachewire.hub.server import Hub
from tests.sse_wire import SseClient
from tests.unit.hub.sse_helpers import HubFactory, publish, start, subscribe


async def request(
    hub: Hub,
    method: str,
    path: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> tuple[int, str, str]:
    """(status, content type, body text) of one real HTTP request."""
    url = f"http://127.0.0.1:{hub.http_port}{path}"
    if data is not None:  # publish takes JSON bodies only (415 otherwise: cross-site safety)
        headers = {"Content-Type": "application/json", **(headers or {})}
    body: Any = data
    if chunked and data is not None:
        payload = data

        async def stream() -> Any:
            for i in range(0, len(payload), 65_536):
                yield payload[i : i + 65_536]

        body = stream()
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, data=body, headers=headers) as resp,
    ):
        return resp.status, resp.content_type, await resp.text()


async def post(hub: Hub, body: bytes, **kw: Any) -> tuple[int, Any]:
    status, ctype, text = await request(hub, "POST", "/v1/publish", data=body, **kw)
    assert ctype == "application/json"
    assert "Traceback" not in text
    return status, json.loads(text)


def history(hub: Hub) -> tuple[str, int]:
    return hub.broker.head_id(), hub.broker.history_size()


async def test_publish_one_event_answers_its_id_once_it_is_in_history(
    hub_factory: HubFactory,
) -> None:
    hub = await start(hub_factory)
    status, body = await post(hub, b'{"type":"program:1234:views","data":"42"}')
    assert status == 200
    assert body == {"ids": [hub.broker.head_id()]}
    replay = await hub.broker.replay(hub.broker.head_id().split("-")[0] + "-0")
    assert [(e.id, e.type, e.data_json) for e in replay.events] == [
        (body["ids"][0], "program:1234:views", '"42"')
    ]


async def test_publish_an_array_answers_ids_in_request_order(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    events = [{"type": f"t:{i}", "data": {"n": i}, "keys": [f"k{i}"]} for i in range(5)]
    status, body = await post(hub, json.dumps(events).encode())
    assert status == 200
    replay = await hub.broker.replay(hub.broker.head_id().split("-")[0] + "-0")
    assert body["ids"] == [e.id for e in replay.events]
    assert [e.type for e in replay.events] == [f"t:{i}" for i in range(5)]


async def test_published_event_reaches_a_subscriber(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    async with await subscribe(hub, "/?eventType=program:1234") as client:
        [event_id] = await publish(hub, {"type": "program:1234:views", "data": "42"})
        assert await client.events(1) == [
            (event_id, {"meta": {"type": "program:1234:views"}, "data": "42"})
        ]


BAD_BODIES = [
    (b"not json", 400, "not valid JSON"),
    (b"", 400, "not valid JSON"),
    (b"\xff\xfe{}", 400, "not valid JSON"),
    (b'{"type":"a","data":NaN}', 400, "NaN is not JSON"),
    (b'{"type":"a"', 400, "not valid JSON"),
    (b"[]", 400, "array is empty"),
    (b'"a"', 400, "must be a JSON object"),
    (b"42", 400, "must be a JSON object"),
    (b"null", 400, "must be a JSON object"),
    (b"[[]]", 400, "must be a JSON object"),
    (b'{"data":"x"}', 400, "type is required"),
    (b'{"type":""}', 400, "type must not be empty"),
    (b'{"type":null}', 400, "type must be a string"),
    (b'{"type":["a"]}', 400, "type must be a string"),
    (b'{"type":"a::b"}', 400, "empty segment"),
    (b'{"type":":a"}', 400, "empty segment"),
    (b'{"type":"a:"}', 400, "empty segment"),
    (b'{"type":"a\\nb"}', 400, "control character"),
    (b'{"type":"a\\u0000"}', 400, "control character"),
    (b'{"type":"' + b"t" * 257 + b'"}', 400, "longer than 256 bytes"),
    (b'{"type":"a\\ud800"}', 400, "not valid Unicode"),
    (b'{"type":"a","data":"\\udfff"}', 400, "not valid Unicode"),
    (b'{"type":"a","keys":"k"}', 400, "keys must be a list of strings"),
    (b'{"type":"a","keys":[1]}', 400, "keys must be a list of strings"),
    (b'{"type":"a","keys":[""]}', 400, "must not contain an empty string"),
    (b'{"type":"a","prefixes":[null]}', 400, "prefixes must be a list of strings"),
    (b'{"type":"a","flush":"true"}', 400, "flush must be a boolean"),
    (b'{"type":"a","extra":1}', 400, "unknown field(s): extra"),
    (b'[{"type":"ok"},{"type":"a::b"}]', 400, "event 1: "),
    (b'[{"type":"ok"},{"type":"ok","keys":["1","2","3","4"]}]', 413, "more than the limit of 3"),
    (b'{"type":"a","keys":["1","2"],"prefixes":["3","4"]}', 413, "exceed the limit of 3"),
    (b'{"type":"a","data":1e999}', 400, "the number 1e999 is out of range"),
    (b'{"type":"a","data":{"x":[-1E400]}}', 400, "is out of range"),
    (b'{"type":"a","data":NaN}', 400, "not valid JSON"),
    (b"[" * 200_000 + b"]" * 200_000, 400, "nested too deeply"),
    (b'{"type":"a","data":' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested too deeply"),
]


@pytest.mark.parametrize(("body", "status", "problem"), BAD_BODIES)
async def test_bad_publish_answers_4xx_json_and_publishes_nothing(
    hub_factory: HubFactory, body: bytes, status: int, problem: str
) -> None:
    hub = await start(hub_factory, max_keys=3)
    await publish(hub, {"type": "before"})
    before = history(hub)
    got_status, got = await post(hub, body)
    assert (got_status, got["status"]) == (status, status)
    assert problem in got["error"]
    assert history(hub) == before
    assert hub.fanout.published == 1


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_over_the_limit_is_413_and_publishes_nothing(
    hub_factory: HubFactory, chunked: bool
) -> None:
    """With or without Content-Length, a body over --max-body is refused."""
    hub = await start(hub_factory, max_body=10_000)
    before = history(hub)
    body = json.dumps({"type": "a", "data": "x" * 20_000}).encode()
    status, got = await post(hub, body, chunked=chunked)
    assert status == 413
    assert got == {"status": 413, "error": "request body is larger than the limit of 10000 bytes"}
    assert history(hub) == before
    status, _ = await post(hub, json.dumps({"type": "a", "data": "x" * 9_000}).encode())
    assert status == 200


async def test_rejections_are_logged_once(
    hub_factory: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "cachewire.hub.http")
    hub = await start(hub_factory)
    await post(hub, b'{"type":"a::b"}')
    [record] = [r for r in caplog.records if r.getMessage() == "request rejected"]
    assert (record.status, record.path) == (400, "/v1/publish")  # type: ignore[attr-defined]
    assert "empty segment" in record.error  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/v1/publishx", 404),
        ("POST", "/", 405),
        ("POST", "/hc", 405),
        ("GET", "/v1/publish", 405),
        ("DELETE", "/metrics", 405),
    ],
)
async def test_unknown_paths_and_methods_answer_json(
    hub_factory: HubFactory, method: str, path: str, status: int
) -> None:
    hub = await start(hub_factory)
    got_status, ctype, text = await request(hub, method, path)
    assert (got_status, ctype) == (status, "application/json")
    assert json.loads(text)["status"] == status


async def test_get_root_without_event_type_is_400_json(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    status, ctype, text = await request(hub, "GET", "/")
    assert (status, ctype) == (400, "application/json")
    assert "eventType" in json.loads(text)["error"]


async def test_health_endpoints(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    assert await request(hub, "GET", "/hc") == (200, "application/json", '{"status": "ok"}')
    assert await request(hub, "GET", "/healthz") == (200, "application/json", '{"status": "ok"}')
    status, _, text = await request(hub, "GET", "/readyz")
    assert (status, json.loads(text)) == (200, {"status": "ready", "head": hub.broker.head_id()})


async def test_readyz_says_503_while_stopping(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    hub.stopping = True  # what stop() sets first; the listener is still up here
    try:
        status, _, text = await request(hub, "GET", "/readyz")
    finally:
        hub.stopping = False
    assert (status, json.loads(text)["error"]) == (503, "shutting down")


def sample(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} missing from:\n{text}"
    return float(found.group(1))


async def test_prometheus_metrics(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    async with (
        await subscribe(hub, "/?eventType=a") as one,
        await subscribe(hub, "/?eventType=a,b") as two,
    ):
        await publish(hub, [{"type": "a"}, {"type": "b"}, {"type": "c"}])
        await one.events(1)
        await two.events(2)
        status, ctype, text = await request(hub, "GET", "/metrics")
    assert (status, ctype) == (200, "text/plain")
    assert sample(text, 'cachewire_hub_connections{transport="sse"}') == 2
    assert sample(text, 'cachewire_hub_connections{transport="grpc"}') == 0
    assert sample(text, "cachewire_hub_events_published_total") == 3
    assert sample(text, "cachewire_hub_deliveries_total") == 3
    assert sample(text, 'cachewire_hub_slow_consumer_drops_total{transport="sse"}') == 0
    assert sample(text, "cachewire_hub_history_size") == 3
    assert sample(text, "cachewire_hub_topics") == 2
    assert sample(text, "cachewire_hub_ready") == 1


async def test_plasma_metrics_json(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory)
    async with await subscribe(hub):
        status, _, text = await request(hub, "GET", "/metrics/plasma")
    assert status == 200
    assert json.loads(text) == {"connections": 1, "connections_sse": 1, "connections_grpc": 0}


async def test_own_endpoints_are_not_subscriptions_even_when_accepting_sse(
    hub_factory: HubFactory,
) -> None:
    hub = await start(hub_factory)
    accept = {"Accept": "text/event-stream"}
    status, ctype, _ = await request(hub, "GET", "/metrics/plasma", headers=accept)
    assert (status, ctype) == (200, "application/json")
    status, ctype, _ = await request(hub, "GET", "/v1/publish?eventType=a", headers=accept)
    assert (status, ctype) == (405, "application/json")
    async with await SseClient.connect(
        hub.http_port, "/elsewhere", headers=[("Accept", "text/event-stream")]
    ) as client:
        assert client.status == 400  # an SSE request without eventType
    assert hub.fanout.count() == 0
