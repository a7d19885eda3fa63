"""The few Kubernetes API calls the injector makes, over aiohttp.

Reading and writing one Secret and patching one MutatingWebhookConfiguration do not earn
a Kubernetes client library. Credentials are the pod's service-account token (re-read on
each call: the kubelet rotates it) and the cluster CA.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import aiohttp

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API {status}: {message}")
        self.status = status


class KubeApi:
    def __init__(self, url: str, token_file: str, ca_file: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token_file = token_file
        ssl_ctx: ssl.SSLContext | bool = True
        if self.url.startswith("https://") and Path(ca_file).exists():
            ssl_ctx = ssl.create_default_context(cafile=ca_file)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self._session.request(
            method, self.url + path, json=body, headers=headers
        ) as resp:
            data = await resp.json(content_type=None) if resp.content_length != 0 else None
            if resp.status >= 400:
                message = data.get("message", "") if isinstance(data, dict) else ""
                raise ApiError(resp.status, message or resp.reason or "")
            return data

    def _token(self) -> str:
        """A tiny local file the kubelet rotates: read it each time."""
        try:
            with open(self.token_file, encoding="utf-8") as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    # --- the one Secret ---

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            secret: dict[str, Any] = await self.request(
                "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}"
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return secret

    async def write_secret(
        self, namespace: str, name: str, data: dict[str, bytes], resource_version: str = ""
    ) -> None:
        """Create the Secret, or replace it (at `resource_version`); 409 when someone won."""
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "Opaque",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
        path = f"/api/v1/namespaces/{namespace}/secrets"
        if resource_version:
            await self.request("PUT", f"{path}/{name}", body)
        else:
            await self.request("POST", path, body)

    # --- the webhook configuration ---

    async def patch_ca_bundle(self, name: str, ca_bundle: bytes) -> bool:
        """Set caBundle on every webhook of the configuration; False if already set."""
        path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"
        config = await self.request("GET", path)
        encoded = base64.b64encode(ca_bundle).decode()
        ops = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": encoded}
            for i, hook in enumerate(config.get("webhooks") or [])
            if (hook.get("clientConfig") or {}).get("caBundle") != encoded
        ]
        if ops:
            await self.request("PATCH", path, ops, content_type="application/json-patch+json")
        return bool(ops)


def secret_data(secret: dict[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
