"""Kubernetes service-account tokens: the TokenReview API, and the policy that maps
`system:serviceaccount:NS:SA` to grants.

`--k8s-token-review`: each bearer token not verified as a JWT of our own is sent to
`POST /apis/authentication.k8s.io/v1/tokenreviews` with `audiences: ["cachewire-hub"]`,
authenticated with the hub's own service-account token (re-read every call: it rotates)
and verifying the API server with its CA. An answer is cached by the token's SHA-256 until
min(exp, CACHE_TTL); a refusal for NEGATIVE_TTL. Needs RBAC `system:auth-delegator`.

`--policy-file` (TOML or YAML, reloaded on change)::

    subscribers:
    - {serviceAccount: "shop/*", types: ["product:", "cart:"]}
    publishers:
    - {serviceAccount: "orders/api", types: ["order:"], flush: false}

`serviceAccount` is `NAMESPACE/NAME`, `NAMESPACE/*` or `*`; a service account's grants are
the union of the entries that match it.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import logging
import os
import ssl
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from cachewire.hub.auth.decide import Grants, Principal, patterns
from cachewire.hub.errors import ConfigError, Unauthenticated, Unavailable

log = logging.getLogger("cachewire.hub.auth")

AUDIENCE = "cachewire-hub"
CACHE_TTL = 300.0
NEGATIVE_TTL = 10.0
CACHE_SIZE = 10_000
SA_PREFIX = "system:serviceaccount:"
IN_CLUSTER_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def api_server_url(setting: str, env: dict[str, str] | None = None) -> str:
    """`--k8s-token-review`: `in-cluster` (the pod's KUBERNETES_SERVICE_HOST/PORT) or the
    API server's https:// URL."""
    if setting.startswith("https://"):
        return setting.rstrip("/")
    env = dict(os.environ) if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ConfigError(
            "--k8s-token-review=in-cluster: KUBERNETES_SERVICE_HOST is not set "
            "(not in a pod? give the API server's https:// URL)"
        )
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{port}"


def _token_exp(token: str) -> float | None:
    """The `exp` of a JWT, unverified (the API server verified it): for the cache only."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class _Rule:
    account: str  # NS/NAME, NS/*, *
    types: frozenset[str]
    flush: bool


class Policy:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._stamp: tuple[float, int, int] | None = None
        self._subscribers: list[_Rule] = []
        self._publishers: list[_Rule] = []

    def load(self) -> None:
        st = self.path.stat()
        text = self.path.read_text()
        if self.path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the policy must be a mapping")
        unknown = set(data) - {"subscribers", "publishers"}
        if unknown:
            raise ValueError(f"unknown section(s): {', '.join(sorted(unknown))}")
        subscribers = [self._rule(r, "subscribers") for r in data.get("subscribers") or []]
        publishers = [self._rule(r, "publishers") for r in data.get("publishers") or []]
        self._subscribers, self._publishers = subscribers, publishers
        self._stamp = (st.st_mtime, st.st_size, st.st_ino)
        log.info(
            "policy loaded",
            extra={"path": str(self.path), "rules": len(subscribers) + len(publishers)},
        )

    @staticmethod
    def _rule(raw: Any, section: str) -> _Rule:
        if not isinstance(raw, dict):
            raise ValueError(f"{section}: each entry must be a mapping")
        account = raw.get("serviceAccount")
        if not isinstance(account, str) or not (account == "*" or account.count("/") == 1):
            raise ValueError(f"{section}: serviceAccount must be NAMESPACE/NAME, NS/* or *")
        flush = raw.get("flush", False)
        if not isinstance(flush, bool) or (flush and section == "subscribers"):
            raise ValueError(f"{section}: flush is a boolean, for publishers")
        return _Rule(account, patterns(raw.get("types")), flush)

    def reload_if_changed(self) -> bool:
        try:
            st = self.path.stat()
            if (st.st_mtime, st.st_size, st.st_ino) == self._stamp:
                return False
            self.load()
        except (OSError, ValueError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
            log.error(
                "policy not reloaded; the previous one stays in force",
                extra={"path": str(self.path), "error": str(exc)},
            )
            return False
        return True

    def grants(self, username: str) -> Grants:
        """The grants of `system:serviceaccount:NS:SA` (none for anyone else)."""
        if not username.startswith(SA_PREFIX):
            return Grants()
        account = username.removeprefix(SA_PREFIX).replace(":", "/", 1)

        def union(rules: list[_Rule]) -> tuple[frozenset[str], bool]:
            hits = [r for r in rules if fnmatch.fnmatchcase(account, r.account)]
            return frozenset().union(*(r.types for r in hits)), any(r.flush for r in hits)

        subscribe, _ = union(self._subscribers)
        publish, flush = union(self._publishers)
        return Grants(publish, subscribe, flush)


class TokenReview:
    def __init__(self, setting: str, sa_dir: str, policy: Policy | None) -> None:
        self.url = api_server_url(setting) + "/apis/authentication.k8s.io/v1/tokenreviews"
        self.sa_dir = Path(sa_dir)
        self.policy = policy
        self._cache: dict[str, tuple[float, str | None, float | None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext:
        ca = self.sa_dir / "ca.crt"
        return ssl.create_default_context(cafile=str(ca) if ca.exists() else None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def verify(self, token: str) -> Principal:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.time()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            _, username, exp = cached
        else:
            username = await self._review(token)
            exp = _token_exp(token)
            until = now + (CACHE_TTL if username else NEGATIVE_TTL)
            if username and exp is not None:
                until = min(until, exp)
            if len(self._cache) >= CACHE_SIZE:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= CACHE_SIZE:
                    self._cache.clear()
            self._cache[key] = (until, username, exp)
        if username is None:
            raise Unauthenticated("invalid", "token review: not authenticated")
        if exp is not None and exp <= now:
            raise Unauthenticated("expired", f"{username}: expired")
        grants = self.policy.grants(username) if self.policy is not None else Grants()
        return Principal(username, grants, "k8s", exp, username)

    async def _review(self, token: str) -> str | None:
        """The username the API server answers for this token and audience, or None."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [AUDIENCE]},
        }
        try:
            own = (self.sa_dir / "token").read_text().strip()  # rotates: read every time
            async with self._session.post(
                self.url,
                json=body,
                headers={"Authorization": f"Bearer {own}"},
                ssl=self._ssl(),
            ) as resp:
                if resp.status != 201 and resp.status != 200:
                    raise OSError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                answer = await resp.json()
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.error("token review failed", extra={"url": self.url, "error": str(exc)})
            raise Unavailable("cannot verify the token now; retry") from None
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            return None
        if AUDIENCE not in (status.get("audiences") or [AUDIENCE]):
            return None
        username = (status.get("user") or {}).get("username")
        return username if isinstance(username, str) else None
