"""The hub's settings: one frozen object, parsed from flags and environment at the edge.

Precedence: command-line flag, then CACHEWIRE_* variable, then Plasma's PLASMA_* variable
(where it means the same thing), then the default. `OPTIONS` is the single table from which
the flags, the environment names and the README's settings table come.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from cachewire.common.config import (
    choice,
    convert,
    csv,
    lookup,
    non_negative_seconds,
    optional_port,
    port,
    positive_int,
    seconds,
)
from cachewire.common.loop import LoopKind
from cachewire.hub.errors import ConfigError

AuthMode = Literal["off", "protected"]
BrokerKind = Literal["memory", "redis"]
LogLevel = Literal["debug", "info", "warning", "error"]
# gRPC's default receive limit (4 MiB), which the sidecar's --max-message-bytes defaults to
# and which Plasma's and most apps' clients keep; one event, and one Subscribe batch, stay
# below it with room for the message's own framing.
GRPC_MESSAGE_LIMIT = 4 << 20
MAX_GRPC_PAYLOAD = GRPC_MESSAGE_LIMIT - (64 << 10)


@dataclass(frozen=True, slots=True)
class HubSettings:
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int | None = 50051
    heartbeat: float = 15.0
    subscribe_heartbeat: float = 1.0
    history: int = 100_000
    history_bytes: int = 64 << 20
    sse_retry: int = 2000
    sse_event_query: str = "eventType"
    cors_origin: str = ""
    max_body: int = 1 << 20
    max_keys: int = 10_000
    max_prefixes: int = 100
    max_events: int = 1000
    subscribe_batch_bytes: int = 1 << 20
    queue_size: int = 10_000
    lag_threshold: int = 1_000
    publish_wait: float = 5.0
    max_topics: int = 100
    max_streams: int = 100
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 10_000
    max_connections_per_client: int = 1_000
    grace: float = 5.0
    grpc_held_writes: Literal["auto", "off"] = "auto"
    fast_publish: Literal["on", "off"] = "on"
    workers: int = 1
    drain_delay: float = 5.0
    drain_window: float = 10.0
    max_connection_age: float | None = 1800.0
    max_connection_age_grace: float = 30.0
    broker: BrokerKind = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_stream: str = "{cachewire}:events"
    redis_channels: tuple[str, ...] = ()
    ingest_lease: float = 5.0
    idempotency_window: float = 300.0
    loop: LoopKind = "auto"
    log_level: LogLevel = "info"
    auth: AuthMode = "off"
    public_types: tuple[str, ...] = ()
    jwt_key: str = ""
    jwt_jwks_url: str = ""
    jwt_audience: str = "cachewire"
    jwt_issuer: str = ""
    api_keys_file: str = ""
    admin_port: int | None = None
    admin_host: str = "127.0.0.1"
    tls_cert: str = ""
    tls_key: str = ""
    k8s_token_review: str = "off"
    k8s_serviceaccount_dir: str = "/var/run/secrets/kubernetes.io/serviceaccount"
    policy_file: str = ""

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """`cors_origin` is a comma list of origins (or `*`)."""
        return csv(self.cors_origin)

    def __post_init__(self) -> None:
        # Every message the hub sends must fit what any gRPC client receives by default.
        for flag, value in (
            ("--max-body", self.max_body),
            ("--subscribe-batch-bytes", self.subscribe_batch_bytes),
        ):
            if value > MAX_GRPC_PAYLOAD:
                raise ConfigError(
                    f"{flag}={value} is above {MAX_GRPC_PAYLOAD} bytes: gRPC clients receive "
                    f"messages of at most {GRPC_MESSAGE_LIMIT} bytes by default"
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HubSettings:
        return parse(cls, [], os.environ if env is None else env)


@dataclass(frozen=True)
class Option:
    field: str
    flag: str
    help: str
    env: tuple[str, ...] = ()
    convert: Callable[[str], Any] = str


def _broker(text: str) -> str:
    # Plasma's default "mock" emits fake events; cachewire's embedded broker replaces it.
    return "memory" if text.lower() == "mock" else choice("memory", "redis")(text)


def _optional_seconds(text: str) -> float | None:
    return None if text.lower() in ("off", "none", "") else seconds(text)


def _redis_url(text: str) -> str:
    from cachewire.hub.brokers.redis_link import check_url  # here: redis-py loads only when needed

    return check_url(text)


def _token_review(text: str) -> str:
    value = text.lower()
    if value in ("off", "false", "0", ""):
        return "off"
    if value in ("on", "true", "1", "in-cluster"):
        return "in-cluster"
    if text.startswith("https://"):
        return text
    raise ValueError("must be off, in-cluster or an https:// URL")


def _query_name(text: str) -> str:
    if not text or not text.replace("_", "").replace("-", "").isalnum():
        raise ValueError("must be a non-empty name of letters, digits, - or _")
    return text


OPTIONS: tuple[Option, ...] = (
    Option("host", "--host", "address to listen on (HTTP and gRPC)", ("CACHEWIRE_HOST",)),
    Option(
        "http_port",
        "--http-port",
        "HTTP port: SSE, publish, health, metrics",
        ("CACHEWIRE_HTTP_PORT", "PLASMA_PORT"),
        port,
    ),
    Option(
        "grpc_port",
        "--grpc-port",
        "gRPC port (off: no gRPC)",
        ("CACHEWIRE_GRPC_PORT", "PLASMA_GRPC_PORT", "PLASMA_GRPCPORT"),
        optional_port,
    ),
    Option(
        "heartbeat",
        "--heartbeat",
        "seconds between SSE heartbeat comments",
        ("CACHEWIRE_HEARTBEAT",),
        seconds,
    ),
    Option(
        "subscribe_heartbeat",
        "--subscribe-heartbeat",
        "seconds between gRPC Subscribe heartbeats (carry the high-water id)",
        ("CACHEWIRE_SUBSCRIBE_HEARTBEAT",),
        seconds,
    ),
    Option("history", "--history", "events kept for resume", ("CACHEWIRE_HISTORY",), positive_int),
    Option(
        "history_bytes",
        "--history-bytes",
        "bytes of events kept for resume (memory broker; the oldest leave first)",
        ("CACHEWIRE_HISTORY_BYTES",),
        positive_int,
    ),
    Option(
        "sse_retry",
        "--sse-retry",
        "SSE retry: value sent to clients, milliseconds",
        ("CACHEWIRE_SSE_RETRY", "PLASMA_SSE_RETRY"),
        positive_int,
    ),
    Option(
        "sse_event_query",
        "--sse-event-query",
        "query parameter naming SSE topics",
        ("CACHEWIRE_SSE_EVENT_QUERY", "PLASMA_SSE_EVENTQUERY"),
        _query_name,
    ),
    Option(
        "cors_origin",
        "--cors-origin",
        "comma list of browser origins allowed (`*`: any, for SSE only); publish and "
        "ticket requests from other origins are refused",
        ("CACHEWIRE_CORS_ORIGIN", "PLASMA_ORIGIN"),
    ),
    Option(
        "max_body",
        "--max-body",
        "largest publish body, and largest event encoded, bytes (at most 4 MiB - 64 KiB)",
        ("CACHEWIRE_MAX_BODY",),
        positive_int,
    ),
    Option(
        "max_keys",
        "--max-keys",
        "most keys plus prefixes in one event",
        ("CACHEWIRE_MAX_KEYS",),
        positive_int,
    ),
    Option(
        "max_prefixes",
        "--max-prefixes",
        "most prefixes in one event (each costs every sidecar a keyspace scan)",
        ("CACHEWIRE_MAX_PREFIXES",),
        positive_int,
    ),
    Option(
        "max_events",
        "--max-events",
        "most events in one publish request",
        ("CACHEWIRE_MAX_EVENTS",),
        positive_int,
    ),
    Option(
        "subscribe_batch_bytes",
        "--subscribe-batch-bytes",
        "most bytes of events in one gRPC Subscribe message (one larger event leaves alone)",
        ("CACHEWIRE_SUBSCRIBE_BATCH_BYTES",),
        positive_int,
    ),
    Option(
        "queue_size",
        "--queue-size",
        "events a subscriber may fall behind before it is reset and dropped",
        ("CACHEWIRE_QUEUE_SIZE",),
        positive_int,
    ),
    Option(
        "lag_threshold",
        "--lag-threshold",
        "events a subscriber may hold undelivered before it counts as lagging (at most half "
        "of --queue-size); while more than half lag, publishes wait (docs/hub.md, Overload)",
        ("CACHEWIRE_LAG_THRESHOLD",),
        positive_int,
    ),
    Option(
        "publish_wait",
        "--publish-wait",
        "longest a publish waits while the hub is behind; then 503 Retry-After / "
        "RESOURCE_EXHAUSTED",
        ("CACHEWIRE_PUBLISH_WAIT",),
        non_negative_seconds,
    ),
    Option(
        "max_topics",
        "--max-topics",
        "most topics in one subscription (SSE, gRPC Subscribe, Plasma Events)",
        ("CACHEWIRE_MAX_TOPICS",),
        positive_int,
    ),
    Option(
        "max_streams",
        "--max-streams",
        "most concurrent gRPC streams on one connection",
        ("CACHEWIRE_MAX_STREAMS",),
        positive_int,
    ),
    Option(
        "header_timeout",
        "--header-timeout",
        "seconds a new connection has to send a complete request header (HTTP), or to "
        "finish its handshake (gRPC)",
        ("CACHEWIRE_HEADER_TIMEOUT",),
        seconds,
    ),
    Option(
        "idle_timeout",
        "--idle-timeout",
        "seconds an HTTP keep-alive connection, or a gRPC connection without a call, may idle",
        ("CACHEWIRE_IDLE_TIMEOUT",),
        seconds,
    ),
    Option(
        "max_connections",
        "--max-connections",
        "most open HTTP connections (SSE streams included); more are closed at once",
        ("CACHEWIRE_MAX_CONNECTIONS",),
        positive_int,
    ),
    Option(
        "max_connections_per_client",
        "--max-connections-per-client",
        "most open HTTP connections from one client address",
        ("CACHEWIRE_MAX_CONNECTIONS_PER_CLIENT",),
        positive_int,
    ),
    Option(
        "grace",
        "--grace",
        "seconds to end streams and finish requests on SIGTERM",
        ("CACHEWIRE_GRACE",),
        non_negative_seconds,
    ),
    Option(
        "fast_publish",
        "--fast-publish",
        "on: a plain POST /v1/publish (JSON or NDJSON, one Content-Length, no Origin) is answered "
        "without aiohttp's request cycle, anything else as before; off: aiohttp answers all "
        "(docs/hub.md)",
        ("CACHEWIRE_FAST_PUBLISH",),
        choice("on", "off"),
    ),
    Option(
        "grpc_held_writes",
        "--grpc-held-writes",
        "auto: in a burst, Plasma Events messages leave several per TCP write (a grpcio-"
        "internal call, verified grpcio releases only); off: public grpcio API only "
        "(docs/grpc-plasma-performance.md)",
        ("CACHEWIRE_GRPC_HELD_WRITES",),
        choice("auto", "off"),
    ),
    Option(
        "workers",
        "--workers",
        "hub processes sharing the ports (SO_REUSEPORT), each a replica; needs --broker redis",
        ("CACHEWIRE_WORKERS",),
        positive_int,
    ),
    Option(
        "drain_delay",
        "--drain-delay",
        "on SIGTERM, seconds to keep serving while not ready (endpoints update)",
        ("CACHEWIRE_DRAIN_DELAY",),
        non_negative_seconds,
    ),
    Option(
        "drain_window",
        "--drain-window",
        "on SIGTERM, after the delay: seconds over which streams are ended, spread out",
        ("CACHEWIRE_DRAIN_WINDOW",),
        non_negative_seconds,
    ),
    Option(
        "max_connection_age",
        "--max-connection-age",
        "seconds before a gRPC connection is asked to reconnect, jittered by a tenth (off: never)",
        ("CACHEWIRE_MAX_CONNECTION_AGE",),
        _optional_seconds,
    ),
    Option(
        "max_connection_age_grace",
        "--max-connection-age-grace",
        "seconds a gRPC connection past its age keeps its streams before it is closed",
        ("CACHEWIRE_MAX_CONNECTION_AGE_GRACE",),
        seconds,
    ),
    Option(
        "broker",
        "--broker",
        "memory (embedded) or redis (Redis Streams, for replicas)",
        ("CACHEWIRE_BROKER", "PLASMA_SUBSCRIBER_TYPE"),
        _broker,
    ),
    Option(
        "redis_url",
        "--redis-url",
        "Redis URL (redis://, rediss://, unix://, redis+sentinel://; see docs/scale-out.md)",
        ("CACHEWIRE_REDIS_URL",),
        _redis_url,
    ),
    Option(
        "redis_stream",
        "--redis-stream",
        "Redis stream key holding the event history (its {hash tag} names the Cluster slot)",
        ("CACHEWIRE_REDIS_STREAM",),
    ),
    Option(
        "redis_channels",
        "--redis-channels",
        "comma list of Redis pub/sub channels to ingest Plasma messages from",
        ("CACHEWIRE_REDIS_CHANNELS", "PLASMA_SUBSCRIBER_REDIS_CHANNELS"),
        csv,
    ),
    Option(
        "ingest_lease",
        "--ingest-lease",
        "seconds a replica holds the channel-ingest lease (taken over after this)",
        ("CACHEWIRE_INGEST_LEASE",),
        seconds,
    ),
    Option(
        "idempotency_window",
        "--idempotency-window",
        "seconds a publish's idempotency key is remembered: a retry within it gets the first "
        "ids back, nothing is stored again (0: keys ignored)",
        ("CACHEWIRE_IDEMPOTENCY_WINDOW",),
        non_negative_seconds,
    ),
    Option(
        "loop",
        "--loop",
        "event loop: auto (uvloop when installed), uvloop or asyncio",
        ("CACHEWIRE_LOOP",),
        choice("auto", "uvloop", "asyncio"),
    ),
    Option(
        "log_level",
        "--log-level",
        "debug, info, warning or error",
        ("CACHEWIRE_LOG_LEVEL",),
        choice("debug", "info", "warning", "error"),
    ),
    Option(
        "auth",
        "--auth",
        "off (anyone may publish and subscribe, as in Plasma) or protected (docs/security.md)",
        ("CACHEWIRE_AUTH",),
        choice("off", "protected"),
    ),
    Option(
        "public_types",
        "--public-types",
        "protected: comma list of type patterns anyone may subscribe to",
        ("CACHEWIRE_PUBLIC_TYPES",),
        csv,
    ),
    Option(
        "jwt_key",
        "--jwt-key",
        "protected: HS256 secret, or a PEM public key (RS/ES/EdDSA) or a path to one",
        ("CACHEWIRE_JWT_KEY",),
    ),
    Option(
        "jwt_jwks_url",
        "--jwt-jwks-url",
        "protected: URL of a JWKS to verify JWTs with (cached, refreshed)",
        ("CACHEWIRE_JWT_JWKS_URL",),
    ),
    Option(
        "jwt_audience",
        "--jwt-audience",
        "protected: the `aud` a JWT must carry",
        ("CACHEWIRE_JWT_AUDIENCE",),
    ),
    Option(
        "jwt_issuer",
        "--jwt-issuer",
        "protected: the `iss` a JWT must carry (empty: not checked)",
        ("CACHEWIRE_JWT_ISSUER",),
    ),
    Option(
        "api_keys_file",
        "--api-keys-file",
        "protected: TOML file of API-key hashes and their grants (reloaded on change)",
        ("CACHEWIRE_API_KEYS_FILE",),
    ),
    Option(
        "admin_port",
        "--admin-port",
        "admin listener for /metrics and /metrics/plasma (off: none)",
        ("CACHEWIRE_ADMIN_PORT",),
        optional_port,
    ),
    Option(
        "admin_host",
        "--admin-host",
        "address of the admin listener",
        ("CACHEWIRE_ADMIN_HOST",),
    ),
    Option(
        "tls_cert",
        "--tls-cert",
        "PEM certificate (chain): serve HTTPS and gRPC over TLS (reloaded on change)",
        ("CACHEWIRE_TLS_CERT",),
    ),
    Option(
        "tls_key",
        "--tls-key",
        "PEM private key of --tls-cert",
        ("CACHEWIRE_TLS_KEY",),
    ),
    Option(
        "k8s_token_review",
        "--k8s-token-review",
        "protected: verify service-account tokens with the TokenReview API: off, "
        "in-cluster, or the API server's https:// URL",
        ("CACHEWIRE_K8S_TOKEN_REVIEW",),
        _token_review,
    ),
    Option(
        "k8s_serviceaccount_dir",
        "--k8s-serviceaccount-dir",
        "the hub's own service-account token and ca.crt, for TokenReview calls",
        ("CACHEWIRE_K8S_SERVICEACCOUNT_DIR",),
    ),
    Option(
        "policy_file",
        "--policy-file",
        "protected: TOML or YAML mapping service accounts to grants (reloaded on change)",
        ("CACHEWIRE_POLICY_FILE",),
    ),
)


def _plasma_redis_url(env: Mapping[str, str]) -> str | None:
    addr = env.get("PLASMA_SUBSCRIBER_REDIS_ADDR")
    if not addr:
        return None
    password = env.get("PLASMA_SUBSCRIBER_REDIS_PASSWORD", "")
    db = env.get("PLASMA_SUBSCRIBER_REDIS_DB", "0") or "0"
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{addr}/{db}"


def build_parser(prog: str = "cachewire-hub") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="cachewire hub: Plasma-compatible push hub for cache invalidations"
    )
    for opt in OPTIONS:
        envs = ", ".join(opt.env)
        parser.add_argument(
            opt.flag,
            dest=opt.field,
            default=None,
            metavar="VALUE",
            help=f"{opt.help} [env: {envs}]".replace("%", "%%"),  # argparse formats help with %
        )
    return parser


def parse(
    cls: type[HubSettings],
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    prog: str = "cachewire-hub",
) -> HubSettings:
    """Flags and environment → settings; a bad value raises ConfigError naming it."""
    env = os.environ if env is None else env
    args = vars(build_parser(prog).parse_args(list(argv)))
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw = lookup(opt.flag, args.get(opt.field), env, opt.env)
        if raw is None and opt.field == "redis_url":
            plasma = _plasma_redis_url(env)
            raw = None if plasma is None else ("PLASMA_SUBSCRIBER_REDIS_ADDR", plasma)
        if raw is not None:
            values[opt.field] = convert(opt.convert, raw, ConfigError)
    if bool(values.get("tls_cert")) != bool(values.get("tls_key")):
        raise ConfigError("--tls-cert and --tls-key go together")
    settings = cls(**values)
    _check_cluster(settings)
    return settings


def _check_cluster(s: HubSettings) -> None:
    """On Redis Cluster the broker's keys must share a slot: a hash tag in the stream name."""
    if not s.redis_url.startswith(("redis+cluster://", "rediss+cluster://")):
        return
    from cachewire.hub.brokers.redis_link import has_hash_tag  # redis-py only when needed

    if not has_hash_tag(s.redis_stream):
        raise ConfigError(
            f"--redis-stream {s.redis_stream!r}: on Redis Cluster the stream name needs a hash "
            "tag, e.g. {cachewire}:events, so that every key of the broker shares one slot"
        )


def settings_table() -> str:
    """The README's settings table, generated from OPTIONS."""
    defaults = {f.name: f.default for f in dataclasses.fields(HubSettings)}
    rows = ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for opt in OPTIONS:
        default = defaults[opt.field]
        shown = ",".join(default) if isinstance(default, tuple) else default
        rows.append(
            f"| `{opt.flag}` | {', '.join(f'`{e}`' for e in opt.env)} | `{shown}` | {opt.help} |"
        )
    return "\n".join(rows)
