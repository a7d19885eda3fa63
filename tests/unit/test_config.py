"""cachewire.common.config: the value converters and source lookup the hub and the sidecar share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cachewire.common import config


class Bad(Exception):
    pass


@pytest.mark.parametrize(
    ("convert", "text", "value"),
    [
        (config.port, "0", 0),
        (config.port, "65535", 65535),
        (config.optional_port, "off", None),
        (config.optional_port, "None", None),
        (config.optional_port, "", None),
        (config.optional_port, "7070", 7070),
        (config.positive_int, "1", 1),
        (config.seconds, "2.5s", 2.5),
        (config.seconds, "0.05", 0.05),
        (config.non_negative_seconds, "0", 0.0),
        (config.non_negative_seconds, "3s", 3.0),
        (config.choice("memory", "redis"), "Redis", "redis"),
        (config.csv, " a, b,,c ,", ("a", "b", "c")),
        (config.csv, "", ()),
    ],
)
def test_converters_accept_good_text(convert: Callable[[str], Any], text: str, value: Any) -> None:
    assert convert(text) == value


@pytest.mark.parametrize(
    ("convert", "text", "reason"),
    [
        (config.port, "65536", "a port is 0..65535"),
        (config.port, "-1", "a port is 0..65535"),
        (config.optional_port, "http", "invalid literal"),
        (config.positive_int, "0", "must be at least 1"),
        (config.positive_int, "1.5", "invalid literal"),
        (config.seconds, "0", "must be a positive number of seconds"),
        (config.seconds, "nan", "must be a positive number of seconds"),
        (config.seconds, "86400", "must be a positive number of seconds"),
        (config.non_negative_seconds, "-1", "must be a number of seconds, 0 or more"),
        (config.non_negative_seconds, "inf", "must be a number of seconds, 0 or more"),
        (config.choice("debug", "info"), "loud", "must be one of debug, info"),
    ],
)
def test_converters_refuse_bad_text_with_a_reason(
    convert: Callable[[str], Any], text: str, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        convert(text)


def test_lookup_takes_the_flag_then_the_variables_in_order() -> None:
    env = {"B": "from b", "C": "from c"}
    assert config.lookup("--x", "from flag", env, ("A", "B")) == ("--x", "from flag")
    assert config.lookup("--x", "", env, ("A",)) == ("--x", "")  # an empty flag is set
    assert config.lookup("--x", None, env, ("A", "C", "B")) == ("C", "from c")
    assert config.lookup("--x", None, env, ("A",)) is None


def test_convert_strips_blanks_and_names_the_source_and_text_when_bad() -> None:
    assert config.convert(config.positive_int, ("--history", " 5 "), Bad) == 5
    with pytest.raises(Bad) as info:
        config.convert(config.positive_int, ("CACHEWIRE_HISTORY", " 0"), Bad)
    assert str(info.value) == "CACHEWIRE_HISTORY=' 0': must be at least 1"
