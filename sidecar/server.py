"""The sidecar's lifecycle: `await Sidecar(settings).start()` … `await sidecar.stop(grace)`.

start() returns once the sinks are set up, the health port is bound (`health_port`) and
the hub stream is started; it does not wait for the hub (`wait_ready` does). Signals are
handled by __main__, not here, so tests and embedders run it as is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cachewire.sidecar.allow import Allow
from cachewire.sidecar.applier import Applier
from cachewire.sidecar.errors import ConfigError
from cachewire.sidecar.health import HealthServer
from cachewire.sidecar.metrics import Metrics
from cachewire.sidecar.probe import make_prober
from cachewire.sidecar.rules import Rules
from cachewire.sidecar.settings import SidecarSettings
from cachewire.sidecar.sinks.base import Sink
from cachewire.sidecar.state import Slot
from cachewire.sidecar.statefile import StateWriter
from cachewire.sidecar.statefile import load as load_state
from cachewire.sidecar.stream import HubAccess, StreamClient

log = logging.getLogger("cachewire.sidecar")


def _allow(prefixes: tuple[str, ...]) -> Allow | None:
    return Allow(prefixes) if prefixes else None


def make_slots(s: SidecarSettings, metrics: Metrics) -> list[Slot]:
    """The sinks the settings ask for, each with its flush policy."""
    slots: list[Slot] = []
    if s.memcached:
        from cachewire.sidecar.sinks.memcached import MemcachedSink

        slots.append(
            Slot(
                MemcachedSink(
                    s.memcached,
                    flush_enabled=s.memcached_flush,
                    prefixes=s.memcached_prefixes,
                    metrics=metrics,
                ),
                s.memcached_flush,
                _allow(s.allowed("memcached")),
            )
        )
    if s.redis_url:
        from cachewire.sidecar.sinks.redis import RedisSink

        allowed = s.allowed("redis")
        flushing = s.redis_flush != "off"
        sink = RedisSink(
            s.redis_url,
            flush_enabled=flushing,
            flush_prefixes=allowed if s.redis_flush == "prefixes" else (),
        )
        slots.append(Slot(sink, flushing, _allow(allowed)))
    if s.webhook:
        from cachewire.sidecar.sinks.webhook import WebhookSink

        slots.append(Slot(WebhookSink(s.webhook, timeout=s.webhook_timeout), s.webhook_flush))
    if s.relay_port is not None:
        try:
            from cachewire.sidecar.sinks.local import RelaySink
        except ImportError as exc:
            raise ConfigError(f"--relay-port: the local relay is not available ({exc})") from None
        # The relay's app caches are always cleared on a gap: there is nothing to opt out of.
        relay: Sink = RelaySink(s.relay_port, s.relay_history, history_bytes=s.relay_history_bytes)
        slots.append(Slot(relay, True))
    return slots


class Sidecar:
    def __init__(self, settings: SidecarSettings, slots: Sequence[Slot] | None = None) -> None:
        self.settings = s = settings
        self.metrics = Metrics()
        self.rules = Rules(s.rules)
        self.slots = list(slots) if slots is not None else make_slots(s, self.metrics)
        self.applier = Applier(
            self.slots,
            self.rules,
            self.metrics,
            batch_size=s.batch_size,
            batch_delay=s.batch_delay / 1000,
            max_pending=s.max_pending,
            max_pending_bytes=s.max_pending_bytes,
            max_staleness=s.max_staleness,
            backoff_base=s.backoff_base,
            backoff_cap=s.backoff_cap,
        )
        # --probe-interval: canaries through this sidecar's own pipeline, on a topic of its own
        self.prober = make_prober(s, self.metrics.registry, self.applier.wait_caught_up)
        probe_topics = (self.prober.topic,) if self.prober is not None else ()
        self.stream = StreamClient(
            s.hub,
            s.topics + probe_topics,
            self.applier,
            backoff_base=s.backoff_base,
            backoff_cap=s.backoff_cap,
            idle_timeout=s.max_staleness,
            max_message_bytes=s.max_message_bytes,
            on_reconnect=self.metrics.reconnects.inc,
            access=HubAccess(s.hub_tls_ca, s.hub_tls_server_name, s.token_file),
        )
        self.health = HealthServer(self)
        self.health_port = 0
        self.state: StateWriter | None = None
        if s.state_file:
            self.state = StateWriter(
                Path(s.state_file),
                self.applier.applied_id,
                topics=s.topics,
                sinks=[x.name for x in self.slots],
                interval=s.state_interval / 1000,
            )
        self._started: list[Slot] = []

    @property
    def relay_port(self) -> int | None:
        for slot in self.slots:
            if slot.name == "relay":
                return int(getattr(slot.sink, "port", 0)) or None
        return None

    async def start(self) -> None:
        s = self.settings
        self._warn_prefixes()
        # 1. Sinks: a cache that is down is not fatal (it is retried); a relay that cannot
        #    bind its port is (OSError).
        for slot in self.slots:
            await slot.sink.start()
            self._started.append(slot)
        # 2. The applier's sink workers and the staleness watch.
        self.applier.start()
        # 3. The health port, so probes and the barrier answer from now on.
        self.health_port = await self.health.start(s.health_host, s.health_port)
        # 4. The hub stream: the first subscription flushes (what was missed is unknown),
        #    unless --state-file holds the position applied before a restart.
        if self.state is not None:
            self.state.check_writable()
            restored = load_state(self.state.path, self.state.topics, self.state.sinks)
            self.applier.restore(restored)
            self.state.start(restored)
        self.stream.start()
        if self.prober is not None:  # 5. The prober: its first canary once caught up.
            self.prober.start()
        log.info(
            "sidecar started",
            extra={
                "hub": s.hub,
                "topics": list(s.topics),
                "sinks": [x.name for x in self.slots],
                "health_port": self.health_port,
                "relay_port": self.relay_port,
                "rules": len(self.rules.rules),
                "max_staleness": s.max_staleness,
            },
        )

    def _warn_prefixes(self) -> None:
        patterns = self.rules.need_prefixes
        if patterns and any(slot.name == "memcached" for slot in self.slots):
            s = self.settings
            action = (
                "flush_all memcached"
                if s.memcached_prefixes == "flush" and s.memcached_flush
                else "be skipped (logged and counted) in memcached"
            )
            log.warning(
                "rules derive prefixes, which memcached cannot enumerate: each prefix "
                f"invalidation will {action}; see docs/sidecar.md for alternatives",
                extra={"rules": patterns},
            )

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.grace if grace is None else grace
        log.info("sidecar stopping", extra={"grace": grace})
        # 1. No more canaries; no new events: end the hub stream.
        if self.prober is not None:
            await self.prober.stop()
        await self.stream.stop()
        # 2. Apply what is pending within the grace period; a batch in flight completes.
        await self.applier.stop(grace)
        if self.state is not None:  # the position now applied, for the next start
            await self.state.stop()
        # 3. Close the sinks, then the health port.
        for slot in reversed(self._started):
            try:
                await slot.sink.close()
            except Exception as exc:
                log.warning("sink close failed", extra={"sink": slot.name, "error": str(exc)})
        await self.health.stop()
        log.info("sidecar stopped")

    # --- waiting points and queries ---

    async def wait_applied(self, event_id: str) -> None:
        """Return once `event_id` is applied to every sink (bound it with asyncio.timeout)."""
        await self.applier.wait_applied(event_id)

    async def wait_ready(self) -> None:
        """Return once subscribed and caught up to the hub's high-water id."""
        await self.applier.wait_caught_up()

    def status(self) -> dict[str, Any]:
        s = self.settings
        return {
            "hub": s.hub,
            "topics": list(s.topics),
            "max_staleness": s.max_staleness,
            "subscriptions": self.stream.subscriptions,
            **self.applier.status(),
        }
