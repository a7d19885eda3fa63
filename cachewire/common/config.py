"""Settings machinery shared by the hub and the sidecar.

Each process keeps its own frozen settings dataclass, `OPTIONS` table and `ConfigError`
(hub/settings.py, sidecar/settings.py); this module holds what they have in common:

- converters: the text of a flag, variable or config key → a typed value. A bad value
  raises ValueError with a short reason ("must be at least 1"), never naming the source;
- `lookup`: where an option is set, flag first, then its environment variables in order;
- `convert`: runs a converter and turns its ValueError into the caller's ConfigError, one
  line naming the source and the text as given: `--history='0': must be at least 1`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from cachewire.common.redact import redact

T = TypeVar("T")
Raw = tuple[str, str]  # (source, text): ("--history", "0"), ("CACHEWIRE_HISTORY", "0")…
_DAY = 86_400.0


# --- converters ---


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("a port is 0..65535")
    return value


def optional_port(text: str) -> int | None:
    """A port, or None for `off`, `none` or empty (the listener is turned off)."""
    return None if text.lower() in ("off", "none", "") else port(text)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def seconds(text: str) -> float:
    """More than 0 and less than a day; an `s` suffix is allowed (`2.5s`)."""
    value = float(text.removesuffix("s"))
    if not 0 < value < _DAY:  # also refuses nan and inf
        raise ValueError("must be a positive number of seconds")
    return value


def non_negative_seconds(text: str) -> float:
    """Like `seconds`, 0 allowed (e.g. no grace at all)."""
    value = float(text.removesuffix("s"))
    if not 0 <= value < _DAY:  # also refuses nan and inf
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def choice(*allowed: str) -> Callable[[str], str]:
    """A converter to one of `allowed`, case-insensitive; the value comes out lower case."""

    def convert(text: str) -> str:
        value = text.lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return convert


def csv(text: str) -> tuple[str, ...]:
    """A comma list; blanks around items and empty items are dropped."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


# --- sources ---


def lookup(
    flag: str, value: str | None, env: Mapping[str, str], names: Iterable[str]
) -> Raw | None:
    """The flag's value if given, else the first of `names` set in `env`; None if neither."""
    if value is not None:
        return flag, value
    for name in names:
        if name in env:
            return name, env[name]
    return None


def convert(converter: Callable[[str], T], raw: Raw, error: Callable[[str], Exception]) -> T:
    """The converted value (surrounding blanks ignored); `error` naming the source if bad."""
    source, text = raw
    try:
        return converter(text.strip())
    except ValueError as exc:
        raise error(redact(f"{source}={text!r}: {exc}")) from None
