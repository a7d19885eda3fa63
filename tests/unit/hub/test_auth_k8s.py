"""--k8s-token-review and --policy-file against a small fake Kubernetes API server.

No real API server can run here: `FakeApiServer` is an HTTPS server (trustme certificate)
that answers TokenReviews for the tokens a test registers and records every request. The
hub verifies it with the CA in its service-account directory, as in a pod.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from aiohttp import web

from cachewire.hub.auth.k8s import Policy
from cachewire.hub.server import Hub
from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.auth_helpers import SECRET, token
from tests.servers import free_port, wait_until
from tests.unit.hub.sse_helpers import HubFactory

TIMEOUT = 20.0
HUB_OWN_TOKEN = "hub-own-service-account-token"
POLICY = """\
subscribers:
- {serviceAccount: "shop/*", types: ["product:", "cart:"]}
publishers:
- {serviceAccount: "orders/api", types: ["order:"], flush: true}
"""


def sa_token(name: str, expires_in: float = 3600.0) -> str:
    """A token shaped like a projected one (the hub reads only its exp, for the cache)."""
    claims = {"sub": name, "exp": time.time() + expires_in}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.sig-{name}"


class FakeApiServer:
    def __init__(self) -> None:
        self.users: dict[str, str] = {}  # token → username
        self.requests: list[tuple[dict[str, str], Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def review(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((dict(request.headers), body))
        username = self.users.get(body["spec"]["token"])
        status: dict[str, Any] = {"authenticated": username is not None}
        if username is not None:
            status |= {"user": {"username": username}, "audiences": body["spec"]["audiences"]}
        return web.json_response({**body, "status": status}, status=201)

    async def start(self, ca: trustme.CA) -> None:
        app = web.Application()
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self.review)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=server_ctx).start()
        self.url = f"https://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def api_server(tmp_path: Path) -> AsyncIterator[tuple[FakeApiServer, Path]]:
    ca = trustme.CA()
    server = FakeApiServer()
    await server.start(ca)
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(HUB_OWN_TOKEN)
    ca.cert_pem.write_to_path(str(sa_dir / "ca.crt"))
    yield server, sa_dir
    await server.stop()


@pytest.fixture
async def hub(
    hub_factory: HubFactory, api_server: tuple[FakeApiServer, Path], tmp_path: Path
) -> Hub:
    server, sa_dir = api_server
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    hub: Hub = await hub_factory(
        auth="protected",
        k8s_token_review=server.url,
        k8s_serviceaccount_dir=str(sa_dir),
        policy_file=str(policy),
        subscribe_heartbeat=30.0,
    )
    return hub


async def first_message(hub: Hub, token: str, *topics: str) -> Any:
    """The first message of a Subscribe (a heartbeat), or the status code it ended with."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        call = hub_pb2_grpc.HubStub(channel).Subscribe(
            hub_pb2.SubscribeRequest(topics=list(topics)),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        try:
            message = await asyncio.wait_for(call.read(), TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        call.cancel()
        return message.WhichOneof("message")


async def test_service_account_gets_its_policy_grants_and_reviews_are_cached(
    hub: Hub, api_server: tuple[FakeApiServer, Path]
) -> None:
    server, _ = api_server
    token = sa_token("shop-web")
    server.users[token] = "system:serviceaccount:shop:web"
    assert await first_message(hub, token, "product:1", "cart") == "heartbeat"
    assert await first_message(hub, token, "user:1") == grpc.StatusCode.PERMISSION_DENIED
    assert len(server.requests) == 1  # cached: one review for both
    headers, body = server.requests[0]
    assert headers["Authorization"] == f"Bearer {HUB_OWN_TOKEN}"
    assert body["spec"] == {"token": token, "audiences": ["cachewire-hub"]}
    unknown = sa_token("intruder")
    assert await first_message(hub, unknown, "product:1") == grpc.StatusCode.UNAUTHENTICATED


async def test_a_policy_reload_ends_streams_that_lost_their_grant(
    hub: Hub, api_server: tuple[FakeApiServer, Path], tmp_path: Path
) -> None:
    server, _ = api_server
    token = sa_token("shop-web")
    server.users[token] = "system:serviceaccount:shop:web"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        call = hub_pb2_grpc.HubStub(channel).Subscribe(
            hub_pb2.SubscribeRequest(topics=["cart:1"]),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        assert (await asyncio.wait_for(call.read(), TIMEOUT)).HasField("heartbeat")
        (tmp_path / "policy.yaml").write_text(
            'subscribers:\n- {serviceAccount: "shop/*", types: ["product:"]}\n'
        )
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            while True:
                await asyncio.wait_for(call.read(), TIMEOUT)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert hub.auth is not None and hub.auth.denied["revoked"] == 1


async def test_a_cached_review_ends_at_the_token_expiry(
    hub: Hub, api_server: tuple[FakeApiServer, Path]
) -> None:
    server, _ = api_server
    token = sa_token("shop-web", expires_in=2.0)
    server.users[token] = "system:serviceaccount:shop:web"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        call = hub_pb2_grpc.HubStub(channel).Subscribe(
            hub_pb2.SubscribeRequest(topics=["cart:1"]),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            while True:
                await asyncio.wait_for(call.read(), TIMEOUT)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await wait_until(
        lambda: hub.auth is not None and hub.auth.denied["expired"] >= 1, what="counted"
    )
    assert await first_message(hub, token, "cart:1") == grpc.StatusCode.UNAUTHENTICATED


async def test_api_server_down_is_unavailable_not_unauthenticated(
    hub: Hub, api_server: tuple[FakeApiServer, Path]
) -> None:
    server, _ = api_server
    await server.stop()
    assert await first_message(hub, sa_token("x"), "cart:1") == grpc.StatusCode.UNAVAILABLE


async def test_policy_publishers_may_publish_and_flush(
    hub: Hub, api_server: tuple[FakeApiServer, Path]
) -> None:
    server, _ = api_server
    token = sa_token("orders-api")
    server.users[token] = "system:serviceaccount:orders:api"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        stub = hub_pb2_grpc.HubStub(channel)
        meta = (("authorization", f"Bearer {token}"),)
        event = hub_pb2.EventInput(type="order:1", flush=True)
        await stub.Publish(hub_pb2.PublishRequest(events=[event]), metadata=meta)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            other = hub_pb2.EventInput(type="user:1")
            await stub.Publish(hub_pb2.PublishRequest(events=[other]), metadata=meta)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_policy_in_toml_and_service_account_patterns(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        '[[subscribers]]\nserviceAccount = "*"\ntypes = ["program:"]\n'
        '[[subscribers]]\nserviceAccount = "shop/web"\ntypes = ["cart:"]\n'
    )
    policy = Policy(str(path))
    policy.load()
    assert policy.grants("system:serviceaccount:shop:web").subscribe == {"program", "cart"}
    assert policy.grants("system:serviceaccount:shop:api").subscribe == {"program"}
    assert policy.grants("alice").subscribe == frozenset()
    path.write_text('[[subscribers]]\nserviceAccount = "no-slash"\ntypes = []\n')
    with pytest.raises(ValueError):
        policy.load()


async def test_offline_service_account_jwts_take_grants_from_the_policy(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    """--jwt-key/--jwt-jwks-url verifying the API server's tokens: no TokenReview call."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    hub: Hub = await hub_factory(
        auth="protected",
        jwt_key=SECRET,
        jwt_audience="cachewire-hub",
        policy_file=str(policy),
        subscribe_heartbeat=30.0,
    )
    sa = token(None, aud="cachewire-hub", sub="system:serviceaccount:shop:web")
    assert await first_message(hub, sa, "cart:1") == "heartbeat"
    assert await first_message(hub, sa, "user:1") == grpc.StatusCode.PERMISSION_DENIED
