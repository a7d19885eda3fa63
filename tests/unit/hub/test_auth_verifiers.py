"""JWT verification by key kind: HS256 secret, PEM public key (inline or a path), JWKS URL
(a real HTTP server, refetched when a new `kid` appears); algorithms from the key only."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cachewire.hub.auth import verifiers
from cachewire.hub.auth.verifiers import JwtConfig, JwtVerifier, load_jwt_key
from cachewire.hub.errors import ConfigError, Unauthenticated
from tests.servers import free_port

CLAIMS = {"aud": "cachewire", "sub": "svc", "cachewire": {"subscribe": ["user:"]}}


def claims(**extra: Any) -> dict[str, Any]:
    return {**CLAIMS, "exp": time.time() + 60, **extra}


def pem(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def test_es256_pem_inline_and_as_a_path(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "key.pem"
    path.write_text(pem(key))
    for configured in (pem(key), str(path)):
        verifier = JwtVerifier(JwtConfig(key=configured))
        principal = await verifier.verify(jwt.encode(claims(), key, algorithm="ES256"))
        assert (principal.name, principal.grants.subscribe) == ("jwt:svc", frozenset({"user"}))


async def test_a_public_key_cannot_be_used_as_an_hmac_secret() -> None:
    """The classic algorithm confusion: HS256 signed with the public key's text."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = JwtVerifier(JwtConfig(key=pem(key)))
    forged = jwt.api_jws.PyJWS()
    forged._algorithms["HS256"].prepare_key = lambda k: k  # type: ignore[method-assign]
    token = forged.encode(json.dumps(claims()).encode(), pem(key).encode(), algorithm="HS256")
    with pytest.raises(Unauthenticated):
        await verifier.verify(token)
    assert (await verifier.verify(jwt.encode(claims(), key, algorithm="RS256"))).kind == "jwt"


async def test_issuer_is_checked_when_configured() -> None:
    secret = "s" * 32
    verifier = JwtVerifier(JwtConfig(key=secret, issuer="https://idp"))
    with pytest.raises(Unauthenticated):
        await verifier.verify(jwt.encode(claims(), secret))
    await verifier.verify(jwt.encode(claims(iss="https://idp"), secret))


def test_short_secrets_and_bad_pems_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        load_jwt_key("short")
    with pytest.raises(ConfigError):
        load_jwt_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


@pytest.fixture
async def jwks_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A JWKS endpoint whose document a test may change; counts fetches."""
    state: dict[str, Any] = {"keys": [], "fetches": 0}

    async def serve(request: web.Request) -> web.Response:
        state["fetches"] += 1
        return web.json_response({"keys": state["keys"]})

    app = web.Application()
    app.router.add_get("/jwks", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/jwks", state
    await runner.cleanup()


def jwk(key: Any, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "alg": "ES256", "use": "sig"}


async def test_jwks_keys_are_cached_and_refetched_for_a_new_kid(
    jwks_server: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = jwks_server
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    state["keys"] = [jwk(old, "k1")]
    verifier = JwtVerifier(JwtConfig(jwks_url=url))
    assert verifier.jwks is not None
    await verifier.jwks.fetch()
    for _ in range(3):
        await verifier.verify(jwt.encode(claims(), old, "ES256", headers={"kid": "k1"}))
    assert state["fetches"] == 1  # cached
    state["keys"] = [jwk(old, "k1"), jwk(new, "k2")]  # rotation
    monkeypatch.setattr(verifiers, "JWKS_MISS_REFRESH", 0.0)
    await verifier.verify(jwt.encode(claims(), new, "ES256", headers={"kid": "k2"}))
    assert state["fetches"] == 2
    with pytest.raises(Unauthenticated):
        await verifier.verify(jwt.encode(claims(), new, "ES256", headers={"kid": "k9"}))
