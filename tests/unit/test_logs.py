"""cachewire.common.logs: the JSON-lines logging the hub and the sidecar both set up."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from cachewire.common import logs


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """setup() replaces the root handlers: put pytest's back afterwards."""
    root, access = logging.getLogger(), logging.getLogger("aiohttp.access")
    handlers, level, access_level = root.handlers[:], root.level, access.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        access.setLevel(access_level)


@pytest.mark.usefixtures("restored_logging")
def test_setup_writes_one_json_object_a_line_to_stderr_at_the_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.setup("warning")
    log = logging.getLogger("test.logs")
    log.info("not shown")
    log.warning("shown", extra={"sink": "redis", "pending": 3})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    shown, failed = lines
    assert {k: shown[k] for k in ("level", "logger", "msg", "sink", "pending")} == {
        "level": "warning",
        "logger": "test.logs",
        "msg": "shown",
        "sink": "redis",
        "pending": 3,
    }
    assert shown["ts"].endswith("Z") and "trace_id" not in shown
    assert failed["level"] == "error" and "ValueError: boom" in failed["exc"]
    assert logging.getLogger("aiohttp.access").level == logging.WARNING
