"""A protected hub over TLS and a sidecar with a rotating token file, as processes.

The sidecar verifies the hub with --hub-tls-ca/--hub-tls-server-name and sends the token
from --token-file. Its first token expires: the hub ends the stream UNAUTHENTICATED, the
sidecar re-reads the (rotated) file, resubscribes from its position, and applies what
follows without flushing the caches it guards.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Callable
from pathlib import Path

import trustme
from pymemcache.client.base import Client

from tests.auth_helpers import SECRET, token
from tests.e2e.test_sidecar import WAIT, applied, wait_ready
from tests.servers import Proc, wait_for
from tests.unit.hub.test_tls import write_pair

SIDECAR_GRANTS = {"subscribe": ["user:"]}
FIRST_TOKEN_TTL = 8.0


def publish(hub: Proc, ctx: ssl.SSLContext, event: dict[str, object]) -> str:
    request = urllib.request.Request(
        f"https://127.0.0.1:{hub.ports['http']}/v1/publish",
        data=json.dumps(event).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token({'publish': ['user:']})}",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=WAIT, context=ctx) as resp:
        ids: list[str] = json.load(resp)["ids"]
    return ids[0]


def test_sidecar_reauthenticates_with_a_rotated_token_without_losing_its_position(
    hub_process: Callable[..., Proc],
    sidecar_process: Callable[..., Proc],
    memcached_server: Proc,
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    cert, key = write_pair(ca, tmp_path)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    token_file = tmp_path / "token"

    hub = hub_process(
        "--auth", "protected", "--jwt-key", SECRET, "--tls-cert", cert, "--tls-key", key,
        "--subscribe-heartbeat", "0.2",
        tls_ca=ctx,
    )  # fmt: skip
    # Long enough for a sidecar to start on a busy machine, short enough for a test.
    token_file.write_text(token(SIDECAR_GRANTS, expires_in=FIRST_TOKEN_TTL))
    sc = sidecar_process(
        "--memcached", f"127.0.0.1:{memcached_server.port}",
        "--hub-tls-ca", str(ca_file),
        "--hub-tls-server-name", "hub.cachewire.test",
        "--token-file", str(token_file),
        hub=hub,
    )  # fmt: skip
    wait_ready(sc)
    first = publish(hub, ctx, {"type": "user:1", "keys": ["user:1"]})
    assert applied(sc, first) == 200

    mc = Client(("127.0.0.1", memcached_server.port), default_noreply=False)
    mc.set("guarded", b"still here")
    token_file.write_text(token(SIDECAR_GRANTS, expires_in=300.0))  # the kubelet rotates it
    wait_for(
        lambda: "UNAUTHENTICATED" in sc.log() and sc.log().count("subscribed to the hub") >= 2,
        timeout=WAIT,
        what="the stream ended at expiry and resubscribed with the new token",
    )
    second = publish(hub, ctx, {"type": "user:2", "keys": ["user:2"]})
    assert applied(sc, second) == 200
    assert mc.get("guarded") == b"still here"  # resumed: no gap, no flush
    mc.close()
    records = [json.loads(line) for line in sc.log().splitlines() if line.startswith("{")]
    resumed = [r["resume_from"] for r in records if r["msg"] == "subscribed to the hub"]
    epoch, n = first.rsplit("-", 1)
    assert resumed[0] == ""
    assert resumed[1].rsplit("-", 1)[0] == epoch and int(resumed[1].rsplit("-", 1)[1]) >= int(n)
