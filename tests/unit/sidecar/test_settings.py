"""Sidecar settings: flags, CACHEWIRE_SIDECAR_* variables, the TOML file, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachewire.sidecar.errors import ConfigError
from cachewire.sidecar.settings import OPTIONS, SidecarSettings, parse, settings_table

BASE = ["--topics", "user", "--memcached", "127.0.0.1:11211"]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    return str(path)


def test_defaults_with_the_required_flags() -> None:
    s = parse(BASE, env={})
    assert s.topics == ("user",)
    assert s.hub == "127.0.0.1:50051"
    assert s.max_staleness == 5.0 and s.batch_delay == 2.0 and s.memcached_flush is True
    assert s.relay_port is None and s.rules == ()
    assert s.sink_names() == ["memcached"]


def test_flag_beats_environment_beats_config_file(tmp_path: Path) -> None:
    config = write(tmp_path, 'hub = "file:1"\nbatch-size = 7\nmax_staleness = 9\n')
    env = {"CACHEWIRE_SIDECAR_HUB": "env:2", "CACHEWIRE_SIDECAR_BATCH_SIZE": "8"}
    s = parse([*BASE, "--config", config, "--hub", "flag:3"], env=env)
    assert (s.hub, s.batch_size, s.max_staleness) == ("flag:3", 8, 9.0)


def test_boolean_flags_and_variables() -> None:
    assert parse([*BASE, "--no-memcached-flush"], env={}).memcached_flush is False
    env = {"CACHEWIRE_SIDECAR_REDIS_FLUSH": "off", "CACHEWIRE_SIDECAR_REDIS_URL": "redis://h/1"}
    s = parse(BASE, env=env)
    assert s.redis_flush == "off" and s.sink_names() == ["memcached", "redis"]


def test_redis_flush_modes_and_the_allowed_prefixes() -> None:
    """--redis-flush=true (the default) deletes the allowed prefixes; FLUSHDB only when
    chosen; the old --no-redis-flush still turns it off."""
    url = ["--redis-url", "redis://h/0"]
    s = parse([*BASE, *url, "--allow-prefixes", "app:cache:, app:v2:"], env={})
    assert s.redis_flush == "prefixes" and s.allowed("redis") == ("app:cache:", "app:v2:")
    s = parse([*BASE, *url, "--allow-prefixes", "a:", "--redis-allow-prefixes", "r:"], env={})
    assert (s.allowed("redis"), s.allowed("memcached")) == (("r:",), ("a:",))
    assert parse([*BASE, *url, "--redis-flush", "db"], env={}).redis_flush == "db"
    assert parse([*BASE, *url, "--no-redis-flush"], env={}).redis_flush == "off"
    assert parse([*BASE, *url, "--redis-flush=false"], env={}).redis_flush == "off"


@pytest.mark.parametrize(
    "extra", [[], ["--redis-flush", "true"], ["--memcached-allow-prefixes", "m:"]]
)
def test_a_redis_flush_without_a_namespace_is_refused(extra: list[str]) -> None:
    """A flush would be FLUSHDB of the whole database, non-cache data included: the sidecar
    refuses to start and names the three ways out."""
    with pytest.raises(ConfigError) as err:
        parse([*BASE, "--redis-url", "redis://h/0", *extra], env={})
    message = str(err.value)
    for way in (
        "--allow-prefixes",
        "--redis-allow-prefixes",
        "--redis-flush=db",
        "--redis-flush=false",
    ):
        assert way in message


def test_config_file_with_lists_booleans_and_rules(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
topics = ["user", "product:1"]
redis-url = "redis://127.0.0.1:6379/0"
redis-flush = false
relay-port = 7070

[[rules]]
type = "user:{id}"
keys = ["user:{id}", "user:{id}:profile"]
""",
    )
    s = parse(["--config", config], env={})
    assert s.topics == ("user", "product:1")
    assert s.redis_flush == "off" and s.relay_port == 7070
    assert [r.pattern for r in s.rules] == ["user:{id}"]


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "--topics is required"),
        (["--topics", "a"], {}, "no cache to guard"),
        ([*BASE, "--hub", "nohost"], {}, "--hub='nohost': must be HOST:PORT"),
        ([*BASE, "--max-staleness", "0"], {}, "--max-staleness='0': must be a positive"),
        ([*BASE, "--batch-delay", "5000"], {}, "--batch-delay='5000': must be 0..1000"),
        ([*BASE, "--batch-size", "x"], {}, "--batch-size='x'"),
        ([*BASE, "--redis-url", "http://x"], {}, "must start with redis://"),
        ([*BASE, "--webhook", "ftp://x"], {}, "must be an http:// or https:// URL"),
        ([*BASE, "--relay-port", "70000"], {}, "a port is 0..65535"),
        ([*BASE, "--memcached-prefixes", "maybe"], {}, "must be one of flush, ignore"),
        ([*BASE, "--topics", "a::b"], {}, "is not a `:`-separated name"),
        ([*BASE, "--bogus"], {}, "unrecognized arguments: --bogus"),
        (
            BASE,
            {"CACHEWIRE_SIDECAR_MEMCACHED_FLUSH": "perhaps"},
            "CACHEWIRE_SIDECAR_MEMCACHED_FLUSH",
        ),
        ([*BASE, "--backoff-base", "9"], {}, "--backoff-base (9.0) is larger than --backoff-cap"),
    ],
)
def test_bad_settings_name_the_culprit_on_one_line(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse(argv, env=env)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hub = ", "not valid TOML"),
        ("colour = 'blue'", "unknown key 'colour'"),
        ("batch-size = true", "batch-size must not be a boolean"),
        ("memcached-flush = 'no'", "memcached-flush has an unexpected type"),
        ("topics = [1]", "topics must be a list of topic strings"),
        ("[[rules]]\ntype = 'a:{x}'\nkeys = ['{y}']", "rules[0] (a:{x}).keys"),
        ("batch-size = 0", "batch-size='0': must be at least 1"),
    ],
)
def test_bad_config_file_names_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        parse([*BASE, "--config", config], env={})
    assert message in str(err.value)
    assert config in str(err.value)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match=r"--config /nonexistent.toml: No such file"):
        parse([*BASE, "--config", "/nonexistent.toml"], env={})


def test_every_option_has_a_field_and_a_table_row() -> None:
    fields = set(SidecarSettings.__dataclass_fields__)
    assert {o.field for o in OPTIONS} <= fields
    table = settings_table()
    for opt in OPTIONS:
        assert opt.env in table


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:hunter2@127.0.0.1:6379/abc", "the database number 'abc' is not a number"),
        ("redis://u:hunter2@127.0.0.1:notaport/0", "--redis-url="),
    ],
)
def test_a_bad_redis_url_fails_at_start_without_its_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse([*BASE, "--redis-url", url, "--redis-flush", "db"], env={})
    assert message in str(err.value)
    assert "hunter2" not in str(err.value) and ":***@" in str(err.value)
