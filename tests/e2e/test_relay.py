"""End to end: publish to a `cachewire-hub` process → a `cachewire-sidecar` process with
--relay-port → an app's Invalidator → the key is gone from its cachetools cache.

Processes are started with their documented flags; every wait is on a fact (readiness
endpoints, an event id applied), bounded by generous timeouts.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import cachetools

from cachewire.sidecar.client import Invalidator
from tests.servers import Proc, free_port, start_sidecar

WAIT = 20.0


def publish(hub: Proc, event: dict[str, Any]) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['http']}/v1/publish",
        data=json.dumps(event).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        ids: list[str] = json.load(response)["ids"]
    return ids[0]


def app_cache(client: Invalidator, **items: Any) -> None:
    with client.lock:
        client.cache.update(items)


def test_publish_reaches_the_apps_cache_through_the_sidecar_relay(
    hub_process: Callable[..., Proc], procs: list[Proc]
) -> None:
    """Keys and prefixes published to the hub leave an app's cache behind the sidecar; when
    the sidecar restarts, the app clears its cache, reconnects, and is invalidated again."""
    hub = hub_process()
    relay_port = free_port()
    sidecar = start_sidecar("--relay-port", str(relay_port), hub=hub, probe="/readyz")
    procs.append(sidecar)
    cache: cachetools.TTLCache[Any, Any] = cachetools.TTLCache(maxsize=100, ttl=3600)
    with Invalidator(f"127.0.0.1:{relay_port}", ["user"], cache, backoff_cap=0.5) as client:
        assert client.wait_connected(WAIT)
        app_cache(
            client,
            **{"user:42": "old", "user:42:profile": "old", "user:7": "keep", "feed:42:1": "old"},
        )
        event_id = publish(
            hub,
            {"type": "user:42", "keys": ["user:42", "user:42:profile"], "prefixes": ["feed:42:"]},
        )
        assert client.wait_applied(event_id, WAIT), sidecar.log()
        with client.lock:
            assert dict(cache) == {"user:7": "keep"}

        # The sidecar goes away: the app clears its cache and stops storing fills.
        sidecar.stop()
        assert client.wait_until(lambda: not client.connected, WAIT)
        assert len(cache) == 0 and not client.guard.storing
        # A new sidecar on the same relay port: the app reconnects (a reset: the new relay
        # does not know its position) and is invalidated again.
        procs.append(start_sidecar("--relay-port", str(relay_port), hub=hub, probe="/readyz"))
        assert client.wait_until(lambda: client.connected, WAIT)
        app_cache(client, **{"user:9": "old"})
        event_id = publish(hub, {"type": "user:9", "keys": ["user:9"]})
        assert client.wait_applied(event_id, WAIT)
        assert "user:9" not in cache


def test_the_client_subscribes_to_the_hub_directly(hub_process: Callable[..., Proc]) -> None:
    """The same library, pointed at the hub's gRPC port instead of a sidecar."""
    hub = hub_process()
    cache: cachetools.LRUCache[Any, Any] = cachetools.LRUCache(maxsize=100)
    with Invalidator(f"127.0.0.1:{hub.ports['grpc']}", ["user"], cache) as client:
        assert client.wait_connected(WAIT)
        app_cache(client, **{"user:1": "old", "user:2": "keep"})
        event_id = publish(hub, {"type": "user:1", "keys": ["user:1"]})
        assert client.wait_applied(event_id, WAIT)
        assert dict(cache) == {"user:2": "keep"}
        assert client.stats.resets == 0
