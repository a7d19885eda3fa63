"""Settings: flags, CACHEWIRE_* and PLASMA_* variables, precedence, bad values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cachewire.hub.__main__ import main
from cachewire.hub.errors import ConfigError
from cachewire.hub.settings import OPTIONS, HubSettings, parse, settings_table


def test_defaults_are_the_documented_ones() -> None:
    s = parse(HubSettings, [], {})
    assert s == HubSettings()
    assert (s.host, s.http_port, s.grpc_port) == ("127.0.0.1", 8080, 50051)
    assert (s.heartbeat, s.history, s.sse_retry) == (15.0, 100_000, 2000)
    assert (s.sse_event_query, s.cors_origin, s.max_body) == ("eventType", "", 1 << 20)
    assert (s.max_keys, s.queue_size, s.broker) == (10_000, 10_000, "memory")


def test_flags_set_every_issue_setting() -> None:
    s = parse(
        HubSettings,
        [
            "--host",
            "0.0.0.0",
            "--http-port",
            "9000",
            "--grpc-port",
            "off",
            "--heartbeat",
            "2.5",
            "--history",
            "50",
            "--sse-retry",
            "500",
            "--cors-origin",
            "https://app.example",
            "--max-body",
            "1000",
            "--max-keys",
            "7",
            "--queue-size",
            "3",
            "--grace",
            "0",
            "--sse-event-query",
            "topics",
            "--log-level",
            "DEBUG",
        ],
        {},
    )
    assert s == HubSettings(
        host="0.0.0.0",
        http_port=9000,
        grpc_port=None,
        heartbeat=2.5,
        history=50,
        sse_retry=500,
        cors_origin="https://app.example",
        max_body=1000,
        max_keys=7,
        queue_size=3,
        grace=0.0,
        sse_event_query="topics",
        log_level="debug",
    )


def test_cachewire_environment() -> None:
    s = HubSettings.from_env(
        {
            "CACHEWIRE_HTTP_PORT": "9001",
            "CACHEWIRE_HEARTBEAT": "3s",
            "CACHEWIRE_HISTORY": "9",
            "CACHEWIRE_CORS_ORIGIN": "*",
            "CACHEWIRE_QUEUE_SIZE": "11",
            "UNRELATED": "x",
        }
    )
    assert (s.http_port, s.heartbeat, s.history, s.cors_origin, s.queue_size) == (
        9001,
        3.0,
        9,
        "*",
        11,
    )


def test_plasma_environment_is_honoured() -> None:
    s = HubSettings.from_env(
        {
            "PLASMA_PORT": "9002",
            "PLASMA_ORIGIN": "http://a",
            "PLASMA_SSE_RETRY": "700",
            "PLASMA_SSE_EVENTQUERY": "ev",
            "PLASMA_GRPCPORT": "9003",
            "PLASMA_SUBSCRIBER_TYPE": "mock",
        }
    )
    assert (s.http_port, s.cors_origin, s.sse_retry, s.sse_event_query, s.grpc_port) == (
        9002,
        "http://a",
        700,
        "ev",
        9003,
    )
    assert s.broker == "memory"  # Plasma's fake-event "mock" source is never started


def test_plasma_redis_address_becomes_a_url() -> None:
    s = HubSettings.from_env(
        {
            "PLASMA_SUBSCRIBER_REDIS_ADDR": "redis.local:6380",
            "PLASMA_SUBSCRIBER_REDIS_PASSWORD": "p@ss",
            "PLASMA_SUBSCRIBER_REDIS_DB": "2",
        }
    )
    assert s.redis_url == "redis://:p%40ss@redis.local:6380/2"


def test_flag_beats_cachewire_beats_plasma() -> None:
    env = {
        "CACHEWIRE_HTTP_PORT": "2",
        "PLASMA_PORT": "3",
        "PLASMA_ORIGIN": "plasma",
        "CACHEWIRE_CORS_ORIGIN": "cachewire",
    }
    assert parse(HubSettings, ["--http-port", "1"], env).http_port == 1
    assert parse(HubSettings, [], env).http_port == 2
    assert parse(HubSettings, [], {"PLASMA_PORT": "3"}).http_port == 3
    assert parse(HubSettings, [], env).cors_origin == "cachewire"


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--history", "0"], {}, "--history='0'"),
        (["--history", "many"], {}, "--history='many'"),
        (["--http-port", "70000"], {}, "--http-port='70000'"),
        (["--heartbeat", "0"], {}, "--heartbeat='0'"),
        (["--heartbeat", "nan"], {}, "--heartbeat='nan'"),
        (["--grace", "-1"], {}, "--grace='-1'"),
        (["--grace", "inf"], {}, "--grace='inf'"),
        (["--queue-size", "-3"], {}, "--queue-size='-3'"),
        (["--max-body", "1.5"], {}, "--max-body='1.5'"),
        (["--sse-retry", ""], {}, "--sse-retry=''"),
        (["--sse-event-query", "a b"], {}, "--sse-event-query='a b'"),
        (["--broker", "kafka"], {}, "--broker='kafka'"),
        (["--log-level", "loud"], {}, "--log-level='loud'"),
        ([], {"CACHEWIRE_HISTORY": "0"}, "CACHEWIRE_HISTORY='0'"),
        ([], {"PLASMA_PORT": "http"}, "PLASMA_PORT='http'"),
        ([], {"PLASMA_SSE_RETRY": "-1"}, "PLASMA_SSE_RETRY='-1'"),
        ([], {"CACHEWIRE_REDIS_URL": "localhost:6379"}, "CACHEWIRE_REDIS_URL="),
    ],
)
def test_bad_values_name_the_setting(argv: list[str], env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(HubSettings, argv, env)
    message = str(info.value)
    assert message.startswith(named)
    assert "\n" not in message


def test_main_with_a_bad_value_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--history", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == "cachewire-hub: --history='0': must be at least 1\n"


def test_every_option_is_a_field_with_a_flag_and_an_environment_name() -> None:
    fields = {f.name for f in dataclasses.fields(HubSettings)}
    assert {o.field for o in OPTIONS} == fields
    for opt in OPTIONS:
        assert opt.flag == "--" + opt.field.replace("_", "-")
        assert f"CACHEWIRE_{opt.field.upper()}" in opt.env


def test_settings_table_lists_every_flag_and_variable() -> None:
    table = settings_table()
    for opt in OPTIONS:
        assert f"`{opt.flag}`" in table
        for name in opt.env:
            assert f"`{name}`" in table
    assert table.count("\n") == len(OPTIONS) + 1


def test_docs_hub_md_shows_the_current_settings_table() -> None:
    """docs/hub.md carries the generated table between its hub-settings markers."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "hub.md").read_text()
    block = text.split("<!-- hub-settings -->\n", 1)[1].split("\n<!-- /hub-settings -->", 1)[0]
    assert block == settings_table(), (
        "docs/hub.md's settings table is out of date: replace it with the output of "
        "python -c 'from hub.settings import settings_table; print(settings_table())'"
    )


def test_help_of_every_command_renders(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse formats help texts with %: a literal % in a setting's help must not crash."""
    from cachewire.cli import COMMANDS, main

    for name in COMMANDS:
        with pytest.raises(SystemExit) as exited:
            main([name, "--help"])
        assert exited.value.code == 0, name
        assert "usage:" in capsys.readouterr().out
