"""`cachewire hub --auth protected …` as users run it: the documented flags and variables."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.auth_helpers import SECRET, token, write_api_keys
from tests.servers import BIN, Proc, free_port, http_ok


def post(port: int, body: object, headers: dict[str, str]) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/publish",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_protected_hub_process(hub_process: Callable[..., Proc], tmp_path: Path) -> None:
    keys = write_api_keys(tmp_path / "keys.toml", {"k1": {"name": "orders", "publish": ["order:"]}})
    admin = free_port()
    hub = hub_process(
        "--auth",
        "protected",
        "--api-keys-file",
        str(keys),
        "--public-types",
        "program:",
        "--admin-port",
        str(admin),
        env={"CACHEWIRE_JWT_KEY": SECRET},
    )
    port = hub.ports["http"]
    assert post(port, {"type": "order:1"}, {}) == 401
    assert post(port, {"type": "order:1"}, {"X-API-Key": "k1"}) == 200
    assert post(port, {"type": "user:1"}, {"X-API-Key": "k1"}) == 403
    writer = {"Authorization": f"Bearer {token({'publish': ['user:']})}"}
    assert post(port, {"type": "user:1"}, writer) == 200
    assert not http_ok(f"http://127.0.0.1:{port}/metrics")
    assert http_ok(f"http://127.0.0.1:{admin}/metrics")
    assert hub.stop() == 0
    assert "auth denied" in hub.log() and "k1" not in hub.log()


def test_protected_without_admin_port_says_metrics_are_not_served(
    hub_process: Callable[..., Proc],
) -> None:
    hub = hub_process("--auth", "protected", grpc=False)
    assert hub.stop() == 0
    assert "--admin-port is off" in hub.log()


def test_cachewire_publish_sends_its_credential(
    hub_process: Callable[..., Proc], tmp_path: Path
) -> None:
    """`cachewire publish` against a protected hub: CACHEWIRE_API_KEY, --token-file."""
    keys = write_api_keys(tmp_path / "keys.toml", {"k1": {"name": "o", "publish": ["order:"]}})
    hub = hub_process("--auth", "protected", "--api-keys-file", str(keys), "--jwt-key", SECRET)
    url = f"http://127.0.0.1:{hub.ports['http']}"
    argv = [str(BIN / "cachewire"), "publish", "--hub-url", url, "--type", "order:1"]
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=60)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEWIRE_")}
    refused = run([*argv, "--retry-for", "0"], env=env)
    assert refused.returncode != 0 and "credential" in refused.stderr
    ok = run(argv, env={**env, "CACHEWIRE_API_KEY": "k1"})
    assert ok.returncode == 0, ok.stderr
    token_file = tmp_path / "token"
    token_file.write_text(token({"publish": ["order:"]}))
    grpc_url = f"grpc://127.0.0.1:{hub.ports['grpc']}"
    ok = run([*argv, "--token-file", str(token_file), "--hub-url", grpc_url], env=env)
    assert ok.returncode == 0, ok.stderr
