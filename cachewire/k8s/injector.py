"""`cachewire injector`: the mutating admission webhook that injects the sidecar.

HTTPS on `--port` (10250: open from the control plane even on private GKE clusters),
`POST /mutate` answers AdmissionReview v1 with a JSONPatch from `inject()`, `/healthz` is
200 while the process runs and `/readyz` once a serving certificate is loaded.
Certificates: `--tls-auto` (cachewire.k8s.tls_auto) or `--tls-cert`/`--tls-key` files
(cert-manager), re-read when they change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from cachewire.common import logs
from cachewire.common.config import choice, lookup, port, seconds
from cachewire.k8s import config as k8s_config
from cachewire.k8s.admission import ReviewError, review
from cachewire.k8s.inject import InjectConfig
from cachewire.k8s.kubeapi import SA_DIR, KubeApi
from cachewire.k8s.tls_auto import AutoTLS

log = logging.getLogger("cachewire.injector")
MAX_BODY = 4 << 20  # an AdmissionReview of a large pod; the API server's own limit is 3 MiB


def _default_api(env: Mapping[str, str]) -> str:
    host, api_port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host:
        return ""
    return f"https://{f'[{host}]' if ':' in host else host}:{api_port or 443}"


# field → (flag, variable, converter, default, help)
OPTIONS: dict[str, tuple[str, str, Any, Any, str]] = {
    "host": ("--host", "CACHEWIRE_INJECTOR_HOST", str, "127.0.0.1", "address to listen on"),
    "port": ("--port", "CACHEWIRE_INJECTOR_PORT", port, 10250, "HTTPS port"),
    "tls_auto": (
        "--tls-auto",
        "CACHEWIRE_INJECTOR_TLS_AUTO",
        choice("true", "false"),
        "false",
        "true: create and renew the CA and certificate in --secret, patch the caBundle",
    ),
    "tls_cert": ("--tls-cert", "CACHEWIRE_INJECTOR_TLS_CERT", str, "", "certificate file (PEM)"),
    "tls_key": ("--tls-key", "CACHEWIRE_INJECTOR_TLS_KEY", str, "", "private key file (PEM)"),
    "namespace": (
        "--namespace",
        "CACHEWIRE_INJECTOR_NAMESPACE",
        str,
        "cachewire",
        "the injector's namespace (its Service and Secret)",
    ),
    "service": ("--service", "CACHEWIRE_INJECTOR_SERVICE", str, "cachewire-injector", "Service"),
    "secret": (
        "--secret",
        "CACHEWIRE_INJECTOR_SECRET",
        str,
        "cachewire-injector-tls",
        "Secret holding the --tls-auto certificates",
    ),
    "webhook_config": (
        "--webhook-config",
        "CACHEWIRE_INJECTOR_WEBHOOK_CONFIG",
        str,
        "cachewire-injector",
        "MutatingWebhookConfiguration whose caBundle --tls-auto keeps",
    ),
    "kube_api": (
        "--kube-api",
        "CACHEWIRE_INJECTOR_KUBE_API",
        str,
        "",
        "API server URL (default: from KUBERNETES_SERVICE_HOST/PORT)",
    ),
    "kube_token_file": (
        "--kube-token-file",
        "CACHEWIRE_INJECTOR_KUBE_TOKEN_FILE",
        str,
        f"{SA_DIR}/token",
        "bearer token for the API server",
    ),
    "kube_ca_file": (
        "--kube-ca-file",
        "CACHEWIRE_INJECTOR_KUBE_CA_FILE",
        str,
        f"{SA_DIR}/ca.crt",
        "CA of the API server",
    ),
    "reconcile_interval": (
        "--reconcile-interval",
        "CACHEWIRE_INJECTOR_RECONCILE_INTERVAL",
        seconds,
        300.0,
        "seconds between certificate and caBundle checks",
    ),
    "log_level": (
        "--log-level",
        "CACHEWIRE_INJECTOR_LOG_LEVEL",
        choice("debug", "info", "warning", "error"),
        "info",
        "debug, info, warning or error",
    ),
}


@dataclass(frozen=True)
class InjectorSettings:
    host: str
    port: int
    tls_auto: str
    tls_cert: str
    tls_key: str
    namespace: str
    service: str
    secret: str
    webhook_config: str
    kube_api: str
    kube_token_file: str
    kube_ca_file: str
    reconcile_interval: float
    log_level: str
    inject: InjectConfig


class ConfigError(Exception):
    pass


def parse(argv: Sequence[str], env: Mapping[str, str], prog: str) -> InjectorSettings:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    for name, (flag, variable, _, default, text) in OPTIONS.items():
        parser.add_argument(
            flag, dest=name, metavar="VALUE", help=f"{text} [env: {variable}; default: {default}]"
        )
    k8s_config.add_arguments(parser)
    args = parser.parse_args(list(argv))
    values: dict[str, Any] = {}
    for name, (flag, variable, convert, default, _) in OPTIONS.items():
        found = lookup(flag, getattr(args, name), env, (variable,))
        try:
            values[name] = default if found is None else convert(found[1].strip())
        except ValueError as exc:
            raise ConfigError(f"{found and found[0]}={found and found[1]!r}: {exc}") from None
    values["kube_api"] = values["kube_api"] or _default_api(env)
    settings = InjectorSettings(**values, inject=k8s_config.from_args(args, env))
    if (settings.tls_auto == "true") == bool(settings.tls_cert or settings.tls_key):
        raise ConfigError("give either --tls-auto true or both --tls-cert and --tls-key")
    if settings.tls_auto == "false" and not (settings.tls_cert and settings.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if settings.tls_auto == "true" and not settings.kube_api:
        raise ConfigError("--tls-auto needs the API server: set --kube-api (not in a pod?)")
    return settings


# --- HTTP ---

READY = web.AppKey("ready", asyncio.Event)
CONFIG = web.AppKey("config", InjectConfig)


async def mutate(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return web.json_response({"error": "body is not JSON"}, status=400)
    try:
        return web.json_response(review(body, request.app[CONFIG]))
    except ReviewError as exc:
        return web.json_response({"error": str(exc)}, status=400)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready = request.app[READY].is_set()
    return web.json_response({"ready": ready}, status=200 if ready else 503)


def make_app(config: InjectConfig) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[READY] = asyncio.Event()
    app[CONFIG] = config
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


# --- certificates ---


class FileTLS:
    """--tls-cert/--tls-key (cert-manager's Secret, mounted): re-read when they change."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = Path(cert), Path(key)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._seen: tuple[float, float] | None = None

    async def reconcile(self) -> None:
        seen = (self.cert.stat().st_mtime, self.key.stat().st_mtime)
        if seen != self._seen:
            self.context.load_cert_chain(self.cert, self.key)
            self._seen = seen
            log.info("serving certificate loaded", extra={"file": str(self.cert)})


async def keep_certificates(tls: AutoTLS | FileTLS, interval: float, ready: asyncio.Event) -> None:
    """Reconcile forever; a failure is logged and retried (the loaded certificate stays)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await tls.reconcile()
            ready.set()
        except Exception:  # an API or file error must not end the loop: log, retry
            log.exception("certificate reconcile failed")


async def serve(s: InjectorSettings, stop: asyncio.Event) -> None:
    api = KubeApi(s.kube_api, s.kube_token_file, s.kube_ca_file) if s.tls_auto == "true" else None
    tls: AutoTLS | FileTLS
    if api is not None:
        tls = AutoTLS(api, s.namespace, s.service, s.secret, s.webhook_config)
    else:
        tls = FileTLS(s.tls_cert, s.tls_key)
    app = make_app(s.inject)
    runner = web.AppRunner(app, access_log=None)
    try:
        await tls.reconcile()  # no serving before there is a certificate
        app[READY].set()
        await runner.setup()
        site = web.TCPSite(runner, s.host, s.port, ssl_context=tls.context)
        await site.start()
        log.info("injector started", extra={"host": s.host, "port": s.port})
        keeper = asyncio.create_task(keep_certificates(tls, s.reconcile_interval, app[READY]))
        await stop.wait()
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
    finally:
        await runner.cleanup()
        if api is not None:
            await api.close()
    log.info("injector stopped")


def main(argv: Sequence[str], prog: str = "cachewire injector") -> int:
    try:
        settings = parse(argv, os.environ, prog)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(run())
    except Exception as exc:  # start-up: API server unreachable, bad files, port taken
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0
