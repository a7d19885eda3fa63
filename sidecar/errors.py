"""The sidecar's exceptions, mapped to exit codes and HTTP statuses here and nowhere else.

SidecarError
├── ConfigError      bad flag, environment variable or config file → one line, exit 2
└── InvalidInput     bad query on the health port (/v1/applied)      → 400 JSON
SinkError            (sidecar.sinks.base) a cache did not confirm an operation
                     → kept pending, retried with backoff, logged and counted
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose."""

    http_status = 500


class ConfigError(SidecarError):
    """A setting is missing or malformed; the message names it (flag, variable or key)."""


class InvalidInput(SidecarError):
    http_status = 400
