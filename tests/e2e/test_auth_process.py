"""`cachewire hub --auth protected …` as users run it: the documented flags and variables."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.auth_helpers import SECRET, token, write_api_keys
from tests.servers import Proc, free_port, http_ok


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
