"""--auth protected over real HTTP: publish, flush, SSE, tickets, cookie, expiry, reloads.

Every decision of hub/auth/decide.py as a client meets it: the status, the
WWW-Authenticate challenge, the JSON body, nothing stored on a refusal, and the counter.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cachewire.hub.server import Hub
from tests.auth_helpers import SECRET, bearer, token, write_api_keys
from tests.servers import wait_until
from tests.sse_wire import SseClient
from tests.unit.hub.sse_helpers import HubFactory

PUBLISHER = {"publish": ["order:", "user:"]}
READER = {"subscribe": ["user:42"]}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return write_api_keys(
        tmp_path / "keys.toml", {"k-orders": {"name": "orders", "publish": ["order:"]}}
    )


@pytest.fixture
async def hub(hub_factory: HubFactory, keys_file: Path) -> Hub:
    return await protected(hub_factory, keys_file)


async def protected(hub_factory: HubFactory, keys_file: Path, **kw: Any) -> Hub:
    settings: dict[str, Any] = {
        "grpc_port": None,
        "auth": "protected",
        "jwt_key": SECRET,
        "api_keys_file": str(keys_file),
        "public_types": ("program:",),
        "admin_port": 0,
        "cors_origin": "https://app.example",
        **kw,
    }
    hub: Hub = await hub_factory(**settings)
    return hub


async def call(
    hub: Hub, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON body) of one real request to the HTTP port."""
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    data = None if body is None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, f"http://127.0.0.1:{hub.http_port}{path}", data=data, headers=hdrs
        ) as resp,
    ):
        text = await resp.text()
        assert "Traceback" not in text
        return resp.status, dict(resp.headers), json.loads(text) if text else None


async def publish(hub: Hub, body: Any, headers: dict[str, str] | None = None) -> Any:
    return await call(hub, "POST", "/v1/publish", body, headers)


async def admin_metric(hub: Hub, line_start: str) -> float:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{hub.admin_port}/metrics") as resp,
    ):
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics")


def denied(reason: str) -> str:
    return f'cachewire_auth_denied_total{{reason="{reason}"}}'


def key_names(hub: Hub) -> set[str]:
    assert hub.auth is not None and hub.auth.api_keys is not None
    return {p.name for p in hub.auth.api_keys.keys.values()}


# --- publish ---


async def test_anonymous_publish_is_401_without_an_error_attribute(hub: Hub) -> None:
    head = hub.broker.head_id()
    status, headers, body = await publish(hub, {"type": "order:1"})
    assert (status, headers["WWW-Authenticate"]) == (401, "Bearer")
    assert body == {"error": "a credential is required", "status": 401}
    assert hub.broker.head_id() == head
    assert await admin_metric(hub, denied("missing")) == 1


@pytest.mark.parametrize(
    ("credential", "reason"),
    # made when the test runs, not at collection: a suite longer than a token's life
    # would present an expired token where an invalid one is meant
    [
        (lambda: bearer("not-a-jwt"), "invalid"),
        (lambda: bearer(token(PUBLISHER, expires_in=-10)), "expired"),
        (lambda: bearer(token(PUBLISHER, aud="other")), "invalid"),
        (lambda: bearer(token(PUBLISHER, aud=None)), "invalid"),
        (lambda: bearer(token(PUBLISHER, secret="another-secret-of-32-bytes-or-more")), "invalid"),
        (lambda: {"Authorization": "Basic dXNlcjpwYXNz"}, "invalid"),
        (lambda: {"X-API-Key": "k-unknown"}, "invalid"),
    ],
)
async def test_a_bad_credential_is_401_invalid_token_never_anonymous(
    hub: Hub, credential: Callable[[], dict[str, str]], reason: str
) -> None:
    head = hub.broker.head_id()
    status, headers, body = await publish(hub, {"type": "order:1"}, credential())
    assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer error="invalid_token"')
    assert body == {"error": "invalid or expired credential", "status": 401}
    assert hub.broker.head_id() == head
    assert await admin_metric(hub, denied(reason)) == 1


async def test_a_bad_credential_on_a_public_type_is_still_refused(hub: Hub) -> None:
    async with await SseClient.connect(
        hub.http_port, "/?eventType=program:1", headers=[("Authorization", "Bearer junk")]
    ) as client:
        assert client.status == 401


async def test_publish_needs_every_event_covered_else_nothing_is_stored(hub: Hub) -> None:
    head = hub.broker.head_id()
    events = [{"type": "order:1"}, {"type": "invoice:9"}]
    status, headers, body = await publish(hub, events, bearer(token(PUBLISHER)))
    assert (status, headers["WWW-Authenticate"]) == (403, 'Bearer error="insufficient_scope"')
    assert body == {"error": "the credential does not grant this", "status": 403}
    assert hub.broker.head_id() == head
    status, _, body = await publish(hub, events[:1], bearer(token(PUBLISHER)))
    assert status == 200 and body["ids"] == [hub.broker.head_id()]


async def test_flush_needs_the_flush_grant(hub: Hub) -> None:
    event = {"type": "user:42", "flush": True}
    status, _, _ = await publish(hub, event, bearer(token(PUBLISHER)))
    assert status == 403
    status, _, _ = await publish(hub, event, bearer(token({**PUBLISHER, "flush": True})))
    assert status == 200


async def test_api_keys_publish_and_the_file_is_reloaded(hub: Hub, keys_file: Path) -> None:
    assert (await publish(hub, {"type": "order:1"}, {"X-API-Key": "k-orders"}))[0] == 200
    assert (await publish(hub, {"type": "user:1"}, {"X-API-Key": "k-orders"}))[0] == 403
    write_api_keys(keys_file, {"k-users": {"name": "users", "publish": ["user:"]}})

    async def reloaded() -> bool:
        return (await publish(hub, {"type": "user:1"}, {"X-API-Key": "k-users"}))[0] == 200

    await wait_until(reloaded, what="the new key file in force")
    assert (await publish(hub, {"type": "order:1"}, {"X-API-Key": "k-orders"}))[0] == 401


# --- cross-site (both modes) ---


@pytest.mark.parametrize("mode", ["off", "protected"])
async def test_publish_takes_json_from_allowed_origins_only(
    hub_factory: HubFactory, keys_file: Path, mode: str
) -> None:
    hub = await protected(hub_factory, keys_file, auth=mode)
    creds = {"X-API-Key": "k-orders"}
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, _, body = await publish(hub, {"type": "order:1"}, {**creds, "Content-Type": ctype})
        assert status == 415, body
    status, _, _ = await publish(hub, {"type": "order:1"}, {**creds, "Origin": "https://evil"})
    assert status == 403
    status, headers, _ = await publish(
        hub, {"type": "order:1"}, {**creds, "Origin": "https://app.example"}
    )
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_preflight_allows_listed_origins_only(hub: Hub) -> None:
    status, headers, _ = await call(
        hub, "OPTIONS", "/v1/tickets", headers={"Origin": "https://app.example"}
    )
    assert status == 204 and "Authorization" in headers["Access-Control-Allow-Headers"]
    status, _, _ = await call(hub, "OPTIONS", "/v1/publish", headers={"Origin": "https://evil"})
    assert status == 403


# --- SSE ---


async def sse(hub: Hub, target: str, *headers: tuple[str, str]) -> SseClient:
    return await SseClient.connect(hub.http_port, target, headers=headers)


async def test_sse_public_types_are_open_and_others_need_a_grant(hub: Hub) -> None:
    async with await sse(hub, "/?eventType=program:1") as client:
        assert client.status == 200
    async with await sse(hub, "/?eventType=user:42") as client:
        assert (client.status, client.headers["www-authenticate"]) == (401, "Bearer")
    reader = ("Authorization", f"Bearer {token(READER)}")
    async with await sse(hub, "/?eventType=user:42,program:1", reader) as client:
        assert client.status == 200
    async with await sse(hub, "/?eventType=user:42,user:43", reader) as client:
        assert client.status == 403
        assert client.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'
        assert (await client.json_body())["status"] == 403


async def test_sse_subscriber_receives_exactly_its_granted_and_public_types(hub: Hub) -> None:
    cookie = ("Cookie", f"cachewire_token={token(READER)}")
    async with await sse(hub, "/?eventType=user:42,program:1", cookie) as client:
        assert client.status == 200
        await hub.fanout.wait_subscribers(1, "sse")
        writer = bearer(token({"publish": ["*"]}))
        events = [{"type": t} for t in ("user:43", "user:42:email", "program:1:x", "other")]
        assert (await publish(hub, events, writer))[0] == 200
        got = [data["meta"]["type"] for _, data in await client.events(2)]
        assert got == ["user:42:email", "program:1:x"]
    assert hub.auth is not None
    await wait_until(lambda: not hub.auth._watches, what="the stream's watch dropped")  # type: ignore[union-attr]


async def test_sse_stream_ends_with_reauth_when_the_token_expires(hub: Hub) -> None:
    short = ("Authorization", f"Bearer {token(READER, expires_in=2.0)}")
    async with await sse(hub, "/?eventType=user:42", short) as client:
        assert client.status == 200
        rest = await client.until_end()
        reauth = b'event: cachewire:reauth\ndata: {"meta":{"type":"cachewire:reauth"}}\n\n'
        assert rest.endswith(f"id: {hub.fanout.last_id}\n".encode() + reauth)
        assert client.ended_cleanly
    assert await admin_metric(hub, denied("expired")) == 1


async def test_sse_stream_of_a_revoked_api_key_ends(hub: Hub, keys_file: Path) -> None:
    write_api_keys(
        keys_file,
        {"k-read": {"name": "reader", "subscribe": ["user:"]}},
    )
    await wait_until(lambda: key_names(hub) == {"api-key:reader"}, what="the keys reloaded")
    async with await sse(hub, "/?eventType=user:42", ("X-API-Key", "k-read")) as client:
        assert client.status == 200
        await hub.fanout.wait_subscribers(1, "sse")
        write_api_keys(keys_file, {"k-read": {"name": "reader", "subscribe": ["order:"]}})
        rest = await client.until_end()
        assert b"event: cachewire:reauth" in rest
    assert await admin_metric(hub, denied("revoked")) == 1


# --- tickets ---


async def ticket(hub: Hub, types: list[str], headers: dict[str, str]) -> tuple[int, Any]:
    status, _, body = await call(hub, "POST", "/v1/tickets", {"types": types}, headers)
    return status, body


async def test_a_ticket_opens_one_stream_of_its_types_once(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    status, body = await ticket(hub, ["user:42"], bearer(token(READER)))
    assert status == 200 and body["expires_in"] == 60
    value = body["ticket"]
    async with await sse(hub, f"/?eventType=user:42&ticket={value}") as client:
        assert client.status == 200
    async with await sse(hub, f"/?eventType=user:42&ticket={value}") as client:
        assert client.status == 401  # single use
    assert value not in caplog.text  # query strings never reach the logs


async def test_a_ticket_is_bound_to_its_types_and_its_issuer_grants(hub: Hub) -> None:
    _, body = await ticket(hub, ["user:42"], bearer(token({"subscribe": ["user:"]})))
    async with await sse(hub, f"/?eventType=user:43&ticket={body['ticket']}") as client:
        assert client.status == 403
    assert (await ticket(hub, ["user:43"], bearer(token(READER))))[0] == 403
    assert (await ticket(hub, ["user:42"], {}))[0] == 401
    assert (await ticket(hub, ["user:42"], {**bearer(token(READER)), "Origin": "https://evil"}))[
        0
    ] == 403


async def test_an_expired_ticket_is_refused(hub: Hub) -> None:
    assert hub.auth is not None
    hub.auth.tickets.ttl = 0.0
    _, body = await ticket(hub, ["user:42"], bearer(token(READER)))
    async with await sse(hub, f"/?eventType=user:42&ticket={body['ticket']}") as client:
        assert client.status == 401


async def test_tickets_exist_only_in_protected_mode(hub_factory: HubFactory) -> None:
    hub = await hub_factory(grpc_port=None)
    assert (await ticket(hub, ["a"], {}))[0] == 404


# --- the admin listener ---


async def test_metrics_are_on_the_admin_port_only_when_protected(hub: Hub) -> None:
    for path in ("/metrics", "/metrics/plasma"):
        status, _, _ = await call(hub, "GET", path)
        assert status == 404
    async with aiohttp.ClientSession() as http:
        for path in ("/metrics", "/metrics/plasma"):
            async with http.get(f"http://127.0.0.1:{hub.admin_port}{path}") as resp:
                assert resp.status == 200
    for path in ("/healthz", "/readyz", "/hc"):
        assert (await call(hub, "GET", path))[0] == 200


async def test_off_mode_serves_metrics_on_both_ports(hub_factory: HubFactory) -> None:
    hub = await hub_factory(grpc_port=None, admin_port=0)
    async with aiohttp.ClientSession() as http:
        for port in (hub.http_port, hub.admin_port):
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200


async def test_off_mode_warns_when_listening_beyond_loopback(
    hub_factory: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await hub_factory(grpc_port=None)
    assert "auth is off and the hub listens beyond loopback" not in caplog.text
    await hub_factory(grpc_port=None, host="0.0.0.0")
    assert "auth is off and the hub listens beyond loopback" in caplog.text
