"""JSON-lines logging for the hub and the sidecar: one object per line on stderr.

Each line has `ts`, `level`, `logger` and `msg`, plus whatever `extra=` fields the call
adds, plus `trace_id` and `span_id` while a span is active (tracing on), and `exc` when
an exception is logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from cachewire.common.redact import redact
from cachewire.common.telemetry import log_fields

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(log_fields())  # trace_id and span_id while a span is active
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, default=str))  # no password of a URL reaches a log


def setup(level: str) -> None:
    """Send every log line to stderr as JSON, at `level` (debug, info, warning, error)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
