"""Credentials → principals: JWTs (HS256 secret, PEM public key, JWKS URL) and API keys.

A verifier raises `Unauthenticated` (reason for the log) for any credential it cannot
accept: a bad credential is refused, never treated as anonymous.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cachewire.hub.auth.decide import Grants, Principal
from cachewire.hub.errors import ConfigError, Unauthenticated

log = logging.getLogger("cachewire.hub.auth")

CLAIM = "cachewire"
JWKS_REFRESH = 300.0  # seconds between JWKS fetches
JWKS_MISS_REFRESH = 30.0  # an unknown `kid` refetches at most this often (key rotation)
CACHE_SIZE = 4096  # verified tokens remembered (until their exp), so a publisher's
# every request does not pay a signature check


def hash_key(key: str) -> str:
    """What the API-keys file stores for a key: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def _algorithms_for(key: Any) -> list[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ["ES256", "ES384", "ES512"]
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ["EdDSA"]
    raise ConfigError(f"--jwt-key: unsupported public key type {type(key).__name__}")


def load_jwt_key(text: str) -> tuple[Any, list[str]]:
    """`--jwt-key`: a PEM public key, a path to one, or else an HS256 secret.

    The algorithms come from the key, never from the token (no `alg: none`, no HS256
    signed with a public key)."""
    if not text.startswith("-----BEGIN") and os.path.isfile(text):
        text = Path(text).read_text()
    if text.startswith("-----BEGIN"):
        try:
            key = load_pem_public_key(text.encode())
        except ValueError as exc:
            raise ConfigError(f"--jwt-key: not a PEM public key ({exc})") from None
        return key, _algorithms_for(key)
    if len(text.encode()) < 32:
        raise ConfigError("--jwt-key: an HS256 secret must be at least 32 bytes")
    return text, ["HS256"]


class Jwks:
    """A JWKS URL's keys, fetched at start, refreshed every JWKS_REFRESH seconds and when a
    token names a `kid` not seen (at most every JWKS_MISS_REFRESH seconds)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def fetch(self) -> None:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(self.url) as resp,
        ):
            resp.raise_for_status()
            data = await resp.json(content_type=None)
        keys = jwt.PyJWKSet.from_dict(data).keys
        self._keys = {k.key_id or "": k for k in keys}
        self._fetched = time.monotonic()
        log.info("jwks fetched", extra={"url": self.url, "keys": len(self._keys)})

    async def key(self, kid: str) -> jwt.PyJWK:
        age = time.monotonic() - self._fetched
        if age > JWKS_REFRESH or (kid not in self._keys and age > JWKS_MISS_REFRESH):
            async with self._lock:
                if time.monotonic() - self._fetched > JWKS_MISS_REFRESH:
                    try:
                        await self.fetch()
                    except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
                        log.warning("jwks fetch failed", extra={"url": self.url, "error": str(exc)})
        found = self._keys.get(kid) or (self._keys.get("") if len(self._keys) == 1 else None)
        if found is None:
            raise Unauthenticated("invalid", f"jwt: no key with kid {kid!r} in the JWKS")
        return found


@dataclass(frozen=True)
class JwtConfig:
    key: str = ""
    jwks_url: str = ""
    audience: str = "cachewire"
    issuer: str = ""


class JwtVerifier:
    def __init__(self, config: JwtConfig) -> None:
        self._config = config
        self._key: Any = None
        self._algorithms: list[str] = []
        if config.key:
            self._key, self._algorithms = load_jwt_key(config.key)
        self.jwks = Jwks(config.jwks_url) if config.jwks_url else None
        self._cache: dict[str, Principal] = {}

    async def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None and cached.expires_at is not None and cached.expires_at > time.time():
            return cached
        key, algorithms = await self._key_for(token)
        c = self._config
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=c.audience,
                issuer=c.issuer or None,
                options={"require": ["exp", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("expired", "jwt: expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated("invalid", f"jwt: {exc}") from None
        try:
            grants = Grants.from_claim(claims.get(CLAIM))
        except ValueError as exc:
            raise Unauthenticated("invalid", f"jwt: bad {CLAIM!r} claim: {exc}") from None
        sub = claims.get("sub")
        principal = Principal(
            f"jwt:{sub}" if isinstance(sub, str) else "jwt",
            grants,
            "jwt",
            float(claims["exp"]),
        )
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[token] = principal
        return principal

    async def _key_for(self, token: str) -> tuple[Any, list[str]]:
        if self.jwks is None:
            return self._key, self._algorithms
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("invalid", f"jwt: {exc}") from None
        kid = header.get("kid") or ""
        found = await self.jwks.key(kid if isinstance(kid, str) else "")
        return found.key, [found.algorithm_name]  # the key's, never the token's choice


class ApiKeys:
    """`--api-keys-file`: TOML, one table per key hash (SHA-256 of the key, hex)::

        [keys.9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08]
        name = "orders-publisher"
        publish = ["order:", "user:"]
        subscribe = []
        flush = false

    `reload_if_changed` (polled by Auth) re-reads it when its mtime, size or inode change
    (a Kubernetes Secret update swaps a symlink); a bad file keeps the previous keys.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._stamp: tuple[float, int, int] | None = None
        self.keys: dict[str, Principal] = {}

    def _read_stamp(self) -> tuple[float, int, int]:
        st = self.path.stat()
        return st.st_mtime, st.st_size, st.st_ino

    def load(self) -> None:
        """Read the file; ValueError/OSError naming the problem."""
        stamp = self._read_stamp()
        data = tomllib.loads(self.path.read_text())
        table = data.get("keys", {})
        if not isinstance(table, dict):
            raise ValueError("[keys] must be a table of key hashes")
        keys = {}
        for digest, entry in table.items():
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"key {digest!r} is not a SHA-256 hex digest")
            if not isinstance(entry, dict):
                raise ValueError(f"keys.{digest[:8]}…: must be a table")
            name = entry.get("name", digest[:8])
            grants = Grants.from_claim({k: v for k, v in entry.items() if k != "name"})
            keys[digest] = Principal(f"api-key:{name}", grants, "api_key", None, digest)
        self.keys, self._stamp = keys, stamp
        log.info("api keys loaded", extra={"path": str(self.path), "keys": len(keys)})

    def reload_if_changed(self) -> bool:
        """True when the file changed and was loaded."""
        try:
            if self._read_stamp() == self._stamp:
                return False
            self.load()
        except (OSError, ValueError) as exc:
            log.error(
                "api keys file not reloaded; the previous keys stay in force",
                extra={"path": str(self.path), "error": str(exc)},
            )
            return False
        return True

    def verify(self, key: str) -> Principal:
        found = self.keys.get(hash_key(key))
        if found is None:
            raise Unauthenticated("invalid", "api key: unknown key")
        return found
