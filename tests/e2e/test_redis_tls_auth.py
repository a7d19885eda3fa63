"""`--redis-url rediss://:password@host:port/db?ssl_ca_certs=…`: TLS, a password, a database."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.e2e.test_redis_helpers import Sse, eventually, publish
from tests.servers import Proc, free_port, start_redis

PASSWORD = "s3cret/p@ss"  # characters that must be percent-encoded in a URL
URL_PASSWORD = "s3cret%2Fp%40ss"


def self_signed(workdir: Path) -> Path:
    """A certificate for 127.0.0.1 (and its key), made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(workdir / "key.pem"), "-out", str(workdir / "cert.pem"),
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return workdir / "cert.pem"


async def test_tls_password_and_database_number_from_the_url(
    tmp_path: Path, procs: list[Proc], hub_process: Callable[..., Proc]
) -> None:
    """Publish, delivery and channel ingest over TLS, authenticated, in database 3."""
    cert = self_signed(tmp_path)
    port = free_port()
    redis = start_redis(
        port,
        extra=["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
               "--tls-key-file", str(tmp_path / "key.pem"), "--tls-ca-cert-file", str(cert),
               "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--dir", str(tmp_path)],
    )  # fmt: skip
    procs.append(redis)
    url = f"rediss://:{URL_PASSWORD}@127.0.0.1:{port}/3?ssl_ca_certs={cert}"
    hub = hub_process("--broker", "redis", "--redis-url", url, "--redis-channels", "plasma")
    client = aioredis.from_url(url)
    try:
        async with Sse(hub, "t") as sub:
            await sub.position()
            ids = await publish(hub, [{"type": "t:1"}])
            assert (await sub.next()).id == ids[0]
            assert await client.xlen("{cachewire}:events") == 1  # in database 3

            async def ingesting() -> bool:
                return bool((await client.pubsub_numsub("plasma"))[0][1] == 1)

            await eventually(ingesting, "the hub subscribed over TLS")
            await client.publish("plasma", json.dumps({"meta": {"type": "t:2"}, "data": 2}))
            assert (await sub.next()).data == {"meta": {"type": "t:2"}, "data": 2}
        plain = aioredis.from_url(url.replace("/3?", "/0?"))
        try:
            assert await plain.xlen("{cachewire}:events") == 0  # not in database 0
        finally:
            await plain.aclose()
    finally:
        await client.aclose()
