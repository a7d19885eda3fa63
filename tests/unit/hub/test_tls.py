"""--tls-cert/--tls-key: HTTPS and gRPC over real TLS (trustme certificates), and a rotated
certificate taken into use without a restart."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import grpc
import pytest
import trustme

from cachewire.hub.errors import ConfigError
from cachewire.hub.server import Hub
from cachewire.hub.settings import HubSettings, parse
from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.servers import wait_until
from tests.unit.hub.sse_helpers import HubFactory


def write_pair(ca: trustme.CA, directory: Path) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost", "hub.cachewire.test")
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    for path, blob in ((cert_path, cert.cert_chain_pems), (key_path, [cert.private_key_pem])):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(b.bytes() for b in blob))
        tmp.replace(path)
    return str(cert_path), str(key_path)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def https_ok(hub: Hub, ca: trustme.CA) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"https://127.0.0.1:{hub.http_port}/healthz", ssl=client_context(ca)) as resp,
        ):
            return resp.status == 200
    except aiohttp.ClientConnectorCertificateError:
        return False


async def grpc_ok(hub: Hub, ca: trustme.CA) -> bool:
    creds = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    options = (("grpc.ssl_target_name_override", "hub.cachewire.test"),)
    async with grpc.aio.secure_channel(f"127.0.0.1:{hub.grpc_port}", creds, options) as channel:
        stub = hub_pb2_grpc.HubStub(channel)
        try:
            await stub.Publish(
                hub_pb2.PublishRequest(events=[hub_pb2.EventInput(type="a")]), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False
    return True


async def test_https_and_grpc_over_tls_and_a_rotated_certificate(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    first, second = trustme.CA(), trustme.CA()
    cert, key = write_pair(first, tmp_path)
    hub: Hub = await hub_factory(tls_cert=cert, tls_key=key)
    assert await https_ok(hub, first)
    assert await grpc_ok(hub, first)
    assert not await https_ok(hub, second)

    write_pair(second, tmp_path)  # cert-manager renews: new files, same paths
    await wait_until(lambda: https_ok(hub, second), what="HTTPS with the new certificate")
    await wait_until(lambda: grpc_ok(hub, second), what="gRPC with the new certificate")
    assert not await https_ok(hub, first)


def test_cert_and_key_go_together() -> None:
    with pytest.raises(ConfigError):
        parse(HubSettings, ["--tls-cert", "/x.crt"], {})


def test_unreadable_certificate_is_a_config_error(tmp_path: Path) -> None:
    settings = HubSettings(tls_cert=str(tmp_path / "no.crt"), tls_key=str(tmp_path / "no.key"))
    with pytest.raises(ConfigError):
        Hub(settings)
