"""Credentials are masked in every message and log line."""

from __future__ import annotations

import json
import logging

from cachewire.common.logs import JsonFormatter
from cachewire.common.redact import redact


def test_url_passwords_and_password_parameters_are_masked() -> None:
    assert redact("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("x rediss://user:p%40ss@h/1 y") == "x rediss://user:***@h/1 y"
    assert redact("redis+sentinel://h:26379/m?password=pw&db=1") == (
        "redis+sentinel://h:26379/m?password=***&db=1"
    )
    assert (
        redact("redis://h:6379/0 and http://example/x") == "redis://h:6379/0 and http://example/x"
    )


def test_a_log_line_never_carries_a_password() -> None:
    url = ("redis://:pw@h",)
    record = logging.LogRecord("t", logging.ERROR, "", 0, "cannot reach %s", url, None)
    record.url = "redis://u:pw2@h/0"
    line = JsonFormatter().format(record)
    assert "pw" not in line.replace("***", "")
    assert json.loads(line)["url"] == "redis://u:***@h/0"
