"""A small fake Kubernetes API server: the Secret and webhook-configuration calls the
injector makes, with their state, resourceVersion conflicts and a record of every request.

No real API server can run on our machines; this one speaks the same paths and status
codes (404, 409) so the injector's client code runs unchanged against it.
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
from aiohttp import web

MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"
TOKEN = "fake-service-account-token"


@dataclass
class Call:
    method: str
    path: str
    authorization: str
    content_type: str
    body: Any


@dataclass
class FakeApiServer:
    secrets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    webhook_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    patched: asyncio.Event = field(default_factory=asyncio.Event)
    version: int = 0
    conflicts: int = 0  # answer this many writes with 409, as if another replica won

    def add_webhook_config(self, name: str, hooks: int = 3) -> None:
        webhooks = [
            {"name": f"h{i}.inject.cachewire.io", "clientConfig": {"service": {"name": "x"}}}
            for i in range(hooks)
        ]
        self.webhook_configs[name] = {"metadata": {"name": name}, "webhooks": webhooks}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        secrets = "/api/v1/namespaces/{ns}/secrets"
        app.router.add_get(secrets + "/{name}", self.get_secret)
        app.router.add_post(secrets, self.create_secret)
        app.router.add_put(secrets + "/{name}", self.replace_secret)
        app.router.add_get(MWC, self.get_mwc)
        app.router.add_patch(MWC, self.patch_mwc)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.calls.append(
            Call(
                request.method,
                request.path,
                request.headers.get("Authorization", ""),
                request.content_type,
                body,
            )
        )
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized")
        response: web.StreamResponse = await handler(request)
        return response

    def _bump(self) -> str:
        self.version += 1
        return str(self.version)

    async def get_secret(self, request: web.Request) -> web.Response:
        secret = self.secrets.get((request.match_info["ns"], request.match_info["name"]))
        if secret is None:
            return _status(404, "secrets not found")
        return web.json_response(secret)

    async def create_secret(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = (request.match_info["ns"], body["metadata"]["name"])
        if key in self.secrets or self._conflict():
            return _status(409, "already exists")
        body["metadata"]["resourceVersion"] = self._bump()
        self.secrets[key] = body
        return web.json_response(body, status=201)

    async def replace_secret(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = (request.match_info["ns"], request.match_info["name"])
        current = self.secrets.get(key)
        if current is None:
            return _status(404, "secrets not found")
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return _status(409, "the object has been modified")
        if self._conflict():
            return _status(409, "the object has been modified")
        body["metadata"]["resourceVersion"] = self._bump()
        self.secrets[key] = body
        return web.json_response(body)

    def _conflict(self) -> bool:
        if self.conflicts:
            self.conflicts -= 1
            return True
        return False

    async def get_mwc(self, request: web.Request) -> web.Response:
        config = self.webhook_configs.get(request.match_info["name"])
        if config is None:
            return _status(404, "not found")
        return web.json_response(config)

    async def patch_mwc(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if request.content_type != "application/json-patch+json":
            return _status(415, "unsupported patch type")
        ops = await request.json()
        patched = jsonpatch.apply_patch(copy.deepcopy(self.webhook_configs[name]), ops)
        self.webhook_configs[name] = patched
        self.patched.set()
        return web.json_response(patched)


def _status(code: int, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
    return web.Response(status=code, text=json.dumps(body), content_type="application/json")
