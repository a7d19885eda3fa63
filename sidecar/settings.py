"""The sidecar's settings: one frozen object, from flags, environment and a TOML file.

Precedence: command-line flag, then CACHEWIRE_SIDECAR_* variable, then the config file
(`--config sidecar.toml`), then the default. `OPTIONS` is the single table from which the
flags, the variable names, the config keys and the docs' settings table come. Rules
(`[[rules]]`) exist only in the config file. A bad value raises ConfigError naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit

from cachewire.common.config import (
    Raw,
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
from cachewire.sidecar.errors import ConfigError
from cachewire.sidecar.rules import Rule, parse_rules

LogLevel = Literal["debug", "info", "warning", "error"]
PrefixPolicy = Literal["flush", "ignore"]
# What a Redis flush deletes: the allowed prefixes (SCAN + UNLINK), the whole database
# (FLUSHDB, chosen explicitly), or nothing.
RedisFlush = Literal["prefixes", "db", "off"]
ENV_PREFIX = "CACHEWIRE_SIDECAR_"


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    hub: str = "127.0.0.1:50051"
    token_file: str = ""
    hub_tls_ca: str = ""
    hub_tls_server_name: str = ""
    topics: tuple[str, ...] = ()
    config: str = ""
    memcached: str = ""
    memcached_flush: bool = True
    memcached_prefixes: PrefixPolicy = "flush"
    allow_prefixes: tuple[str, ...] = ()
    memcached_allow_prefixes: tuple[str, ...] = ()
    redis_url: str = ""
    redis_flush: RedisFlush = "prefixes"
    redis_allow_prefixes: tuple[str, ...] = ()
    webhook: str = ""
    webhook_flush: bool = True
    webhook_timeout: float = 5.0
    relay_port: int | None = None
    relay_history: int = 10_000
    relay_history_bytes: int = 16 << 20
    health_host: str = "127.0.0.1"
    health_port: int = 8091
    max_staleness: float = 5.0
    batch_delay: float = 2.0  # milliseconds
    batch_size: int = 500
    max_pending: int = 100_000
    max_pending_bytes: int = 8 << 20
    max_message_bytes: int = 4 << 20
    backoff_base: float = 0.1
    backoff_cap: float = 5.0
    grace: float = 5.0
    state_file: str = ""
    state_interval: float = 200.0  # milliseconds
    probe_interval: float | None = None  # seconds; None: no prober
    log_level: LogLevel = "info"
    rules: tuple[Rule, ...] = ()

    def allowed(self, sink: str) -> tuple[str, ...]:
        """The cache namespace of a sink: its own --<sink>-allow-prefixes, else the
        common --allow-prefixes (empty: every key)."""
        own: tuple[str, ...] = getattr(self, f"{sink}_allow_prefixes", ())
        return own or self.allow_prefixes

    def sink_names(self) -> list[str]:
        names = [
            n
            for n, on in (
                ("memcached", self.memcached),
                ("redis", self.redis_url),
                ("webhook", self.webhook),
            )
            if on
        ]
        return [*names, "relay"] if self.relay_port is not None else names


@dataclass(frozen=True)
class Option:
    field: str
    flag: str
    help: str
    convert: Callable[[str], Any] = str
    boolean: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()

    @property
    def key(self) -> str:
        """The config-file key: the flag without dashes (`redis-url`; `redis_url` also works)."""
        return self.flag.removeprefix("--")


def _milliseconds(text: str) -> float:
    value = float(text.removesuffix("ms"))
    if not 0 <= value <= 1000:
        raise ValueError("must be 0..1000 milliseconds")
    return value


def _interval_ms(text: str) -> float:
    value = float(text.removesuffix("ms"))
    if not 1 <= value <= 60_000:
        raise ValueError("must be 1..60000 milliseconds")
    return value


def _optional_seconds(text: str) -> float | None:
    if text.lower() in ("", "off", "0"):
        return None
    return seconds(text)


def _bool(text: str) -> bool:
    value = text.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _hostport(text: str) -> str:
    host, sep, number = text.rpartition(":")
    if not sep or not host or not number.isdigit() or not 0 < int(number) <= 65535:
        raise ValueError("must be HOST:PORT")
    return text


def _optional_hostport(text: str) -> str:
    return _hostport(text) if text else ""


def _topics(text: str) -> tuple[str, ...]:
    topics = csv(text)
    for topic in topics:
        if "" in topic.split(":") or any(ord(c) < 32 for c in topic):
            raise ValueError(f"topic {topic!r} is not a `:`-separated name")
    return topics


def _redis_url(text: str) -> str:
    """A URL redis-py can use, with a database number that is one (redis-py ignores
    `/abc` and would guard database 0 instead)."""
    if text and not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    if text.startswith(("redis://", "rediss://")):
        from redis.connection import parse_url  # here: redis-py loads only when needed

        parse_url(text)  # type: ignore[no-untyped-call]  # ValueError: a bad port or option
        db = urlsplit(text).path.strip("/")
        if db and not (db.isascii() and db.isdigit() and len(db) <= 5):
            raise ValueError(f"the database number {db[:20]!r} is not a number")
    return text


def _redis_flush(text: str) -> str:
    """true (the allowed prefixes; the old boolean's default), false, or db (FLUSHDB)."""
    value = text.lower()
    if value in ("1", "true", "yes", "on", "prefixes"):
        return "prefixes"
    if value in ("0", "false", "no", "off"):
        return "off"
    if value == "db":
        return "db"
    raise ValueError("must be true (the allowed prefixes), false, or db (FLUSHDB)")


def _prefixes(text: str) -> tuple[str, ...]:
    return csv(text)


def _http_url(text: str) -> str:
    if text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
    return text


OPTIONS: tuple[Option, ...] = (
    Option("hub", "--hub", "the hub's gRPC address, HOST:PORT", _hostport),
    Option(
        "token_file",
        "--token-file",
        "file holding the bearer token sent to the hub (re-read on every reconnect)",
    ),
    Option(
        "hub_tls_ca",
        "--hub-tls-ca",
        "PEM CA bundle: connect to the hub over TLS, verifying it with these CAs",
    ),
    Option(
        "hub_tls_server_name",
        "--hub-tls-server-name",
        "the name the hub's certificate must carry (default: the host of --hub)",
    ),
    Option("topics", "--topics", "comma list of topics to subscribe to (required)", _topics),
    Option("config", "--config", "TOML file with settings and [[rules]]"),
    Option("memcached", "--memcached", "memcached to guard, HOST:PORT", _optional_hostport),
    Option(
        "memcached_flush",
        "--memcached-flush",
        "flush_all memcached on a gap or a flush event",
        _bool,
        True,
    ),
    Option(
        "memcached_prefixes",
        "--memcached-prefixes",
        "what a prefix invalidation does to memcached: flush or ignore",
        choice("flush", "ignore"),
    ),
    Option(
        "allow_prefixes",
        "--allow-prefixes",
        "comma list: the app's cache namespace; memcached and Redis keys and prefixes "
        "outside it are not deleted (counted as refused)",
        _prefixes,
    ),
    Option(
        "memcached_allow_prefixes",
        "--memcached-allow-prefixes",
        "--allow-prefixes for memcached alone",
        _prefixes,
    ),
    Option("redis_url", "--redis-url", "Redis to guard (redis://, rediss://, unix://)", _redis_url),
    Option(
        "redis_flush",
        "--redis-flush",
        "on a gap or a flush event: prefixes (or true: SCAN + UNLINK the allowed prefixes), "
        "false, "
        "or db (FLUSHDB the whole database)",
        _redis_flush,
    ),
    Option(
        "redis_allow_prefixes",
        "--redis-allow-prefixes",
        "--allow-prefixes for Redis alone",
        _prefixes,
    ),
    Option("webhook", "--webhook", "URL to POST each batch to as JSON", _http_url),
    Option(
        "webhook_flush", "--webhook-flush", "POST a flush on a gap or a flush event", _bool, True
    ),
    Option("webhook_timeout", "--webhook-timeout", "seconds one webhook POST may take", seconds),
    Option(
        "relay_port",
        "--relay-port",
        "local relay port for the pod's app processes, on 127.0.0.1 (off: none)",
        optional_port,
    ),
    Option(
        "relay_history", "--relay-history", "events the local relay keeps for resume", positive_int
    ),
    Option(
        "relay_history_bytes",
        "--relay-history-bytes",
        "bytes of events the local relay keeps for resume (and queues per app stream)",
        positive_int,
    ),
    Option("health_host", "--health-host", "address of the health, metrics and status port"),
    Option("health_port", "--health-port", "port of /healthz, /readyz, /metrics, /v1/*", port),
    Option(
        "max_staleness",
        "--max-staleness",
        "seconds without an event or heartbeat before the caches are flushed",
        seconds,
    ),
    Option(
        "batch_delay",
        "--batch-delay",
        "milliseconds a batch may wait for more events after its first",
        _milliseconds,
    ),
    Option(
        "batch_size", "--batch-size", "most invalidations applied in one round trip", positive_int
    ),
    Option(
        "max_pending",
        "--max-pending",
        "invalidations kept per failing sink; past it the sink is flushed when back",
        positive_int,
    ),
    Option(
        "max_pending_bytes",
        "--max-pending-bytes",
        "bytes of invalidations kept per failing sink; past it as past --max-pending",
        positive_int,
    ),
    Option(
        "max_message_bytes",
        "--max-message-bytes",
        "largest message accepted from the hub (at least the hub's --subscribe-batch-bytes "
        "and --max-body)",
        positive_int,
    ),
    Option(
        "backoff_base", "--backoff-base", "first retry delay, seconds (reconnect, sinks)", seconds
    ),
    Option("backoff_cap", "--backoff-cap", "longest retry delay, seconds", seconds),
    Option(
        "grace", "--grace", "seconds to finish pending batches on SIGTERM", non_negative_seconds
    ),
    Option(
        "state_file",
        "--state-file",
        "file keeping the applied position across restarts (resume without a flush)",
    ),
    Option(
        "state_interval",
        "--state-interval",
        "milliseconds between writes of --state-file (at most)",
        _interval_ms,
    ),
    Option(
        "probe_interval",
        "--probe-interval",
        "seconds between canary probes of the guarded memcached/Redis (off: no prober)",
        _optional_seconds,
    ),
    Option(
        "log_level",
        "--log-level",
        "debug, info, warning or error",
        choice("debug", "info", "warning", "error"),
    ),
)
_BY_KEY = {o.key: o for o in OPTIONS} | {o.field: o for o in OPTIONS}


class _Parser(argparse.ArgumentParser):
    """Bad flags raise ConfigError (one line), instead of usage text and exit."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser(prog: str = "cachewire-sidecar") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description=("cachewire sidecar: applies the hub's invalidations to the caches of its pod"),
    )
    for opt in OPTIONS:
        help_text = f"{opt.help} [env: {opt.env}]".replace(
            "%", "%%"
        )  # argparse formats help with %
        if opt.boolean:
            parser.add_argument(
                opt.flag,
                dest=opt.field,
                default=None,
                help=help_text,
                action=argparse.BooleanOptionalAction,
            )
        else:
            parser.add_argument(
                opt.flag, dest=opt.field, default=None, metavar="VALUE", help=help_text
            )
    # --redis-flush was a boolean flag: its negative form keeps working.
    parser.add_argument(
        "--no-redis-flush",
        dest="redis_flush",
        action="store_const",
        const="false",
        help=argparse.SUPPRESS,
    )
    return parser


def _from_toml(value: Any, opt: Option) -> str:
    """A TOML value → the text a flag would carry (lists for topics, booleans, numbers)."""
    if isinstance(value, bool):
        if not opt.boolean and opt.field != "redis_flush":
            raise ValueError("must not be a boolean")
        return "true" if value else "false"
    if isinstance(value, list) and opt.field.endswith("allow_prefixes"):
        if not all(isinstance(v, str) and "," not in v for v in value):
            raise ValueError("must be a list of prefix strings")
        return ",".join(value)
    if isinstance(value, list) and opt.field == "topics":
        if not all(isinstance(v, str) and "," not in v for v in value):
            raise ValueError("must be a list of topic strings")
        return ",".join(value)
    if isinstance(value, str | int | float) and not (isinstance(value, str) and opt.boolean):
        return str(value)
    raise ValueError(f"has an unexpected type ({type(value).__name__})")


def load_config(path: str) -> tuple[dict[str, tuple[str, str]], tuple[Rule, ...]]:
    """The config file → ({field: (source, text)}, rules)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None
    values: dict[str, tuple[str, str]] = {}
    rules: tuple[Rule, ...] = ()
    for key, value in data.items():
        if key == "rules":
            try:
                rules = parse_rules(value)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            continue
        opt = _BY_KEY.get(key)
        if opt is None or opt.field == "config":
            raise ConfigError(f"{path}: unknown key {key!r}")
        try:
            values[opt.field] = (f"{path}: {key}", _from_toml(value, opt))
        except ValueError as exc:
            raise ConfigError(f"{path}: {key} {exc}") from None
    return values, rules


def parse(
    argv: Sequence[str], env: Mapping[str, str] | None = None, prog: str = "cachewire-sidecar"
) -> SidecarSettings:
    """Flags, environment and config file → settings; ConfigError names the bad one."""
    env = os.environ if env is None else env
    args = vars(build_parser(prog).parse_args(list(argv)))
    raw: dict[str, Raw] = {}
    for opt in OPTIONS:
        value = args.get(opt.field)
        if isinstance(value, bool):  # --[no-]memcached-flush: as a variable would say it
            value = "true" if value else "false"
        found = lookup(opt.flag, value, env, (opt.env,))
        if found is not None:
            raw[opt.field] = found
    rules: tuple[Rule, ...] = ()
    if "config" in raw and raw["config"][1]:
        from_file, rules = load_config(raw["config"][1])
        raw = {**from_file, **raw}
    values: dict[str, Any] = {"rules": rules}
    for opt in OPTIONS:
        if opt.field in raw:
            values[opt.field] = convert(opt.convert, raw[opt.field], ConfigError)
    settings = SidecarSettings(**values)
    check(settings)
    return settings


def check(s: SidecarSettings) -> None:
    """Rules that involve several settings."""
    if not s.topics:
        raise ConfigError("--topics is required (e.g. --topics user,product)")
    if not s.sink_names():
        raise ConfigError(
            "no cache to guard: give --memcached, --redis-url, --webhook or --relay-port"
        )
    if s.redis_url and s.redis_flush == "prefixes" and not s.allowed("redis"):
        # A flush (on every gap) would otherwise run FLUSHDB: non-cache data included.
        raise ConfigError(
            "--redis-url: say what a flush may delete: the app's cache namespace with "
            "--allow-prefixes (or --redis-allow-prefixes), e.g. --allow-prefixes app:cache:, "
            "so a flush deletes only those keys; or --redis-flush=db to FLUSHDB the whole "
            "database; or --redis-flush=false"
        )
    if s.probe_interval is not None and not (s.memcached or s.redis_url):
        raise ConfigError("--probe-interval needs a cache to probe: --memcached or --redis-url")
    if s.backoff_base > s.backoff_cap:
        raise ConfigError(
            f"--backoff-base ({s.backoff_base}) is larger than --backoff-cap ({s.backoff_cap})"
        )


def settings_table() -> str:
    """The docs' settings table, generated from OPTIONS."""
    defaults = {f.name: f.default for f in dataclasses.fields(SidecarSettings)}
    rows = [
        "| flag | environment | config key | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for opt in OPTIONS:
        default = defaults[opt.field]
        if isinstance(default, bool):
            shown = "true" if default else "false"
        elif default is None:
            shown = "off"
        else:
            shown = ",".join(default) if isinstance(default, tuple) else str(default)
        flag = f"--[no-]{opt.key}" if opt.boolean else opt.flag
        shown = f"`{shown}`" if shown else "—"
        key = "—" if opt.field == "config" else f"`{opt.key}`"
        rows.append(f"| `{flag}` | `{opt.env}` | {key} | {shown} | {opt.help} |")
    return "\n".join(rows)
