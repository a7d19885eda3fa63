"""JSON on the hot paths: one place that encodes and decodes, with orjson when installed.

Every publish body, every event's data and every reply built per request goes through
`loads`, `dumps` and `dumpb`. orjson is several times faster than the standard library, but
it differs from it in three ways that matter here, so its answers are only used where they
are the same:

- integers beyond 64 bits become floats (precision lost): when a text has a run of 19 or
  more digits and orjson's value holds a float that large, the standard library decodes it
  again;
- its errors are worded differently, and it refuses lone surrogates (which the standard
  library accepts and validation then names): any text orjson refuses is decoded again by
  the standard library, so errors, and what is accepted, stay exactly as they were;
- it writes some floats in another (equally valid, equally exact) form: 1e-07 as 1e-7.

Without orjson (it is a dependency, but a build without wheels may lack it) the standard
library does everything. NaN and Infinity are refused when decoding, so decoded values never
carry them to an encoder.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; this keeps a source build working
    orjson = None  # type: ignore[assignment]

_LONG_NUMBER = re.compile(rb"[0-9]{19}")
# An exponent of three digits may be beyond a double (1e999): the standard library decides.
_BIG_EXPONENT = re.compile(rb"[eE][+-]?[0-9]{3}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """1e999 is valid JSON syntax but no finite number: Python reads it as inf, which no
    encoder may write back (orjson would write null, browsers' JSON.parse rejects
    `Infinity`), so it is refused like NaN."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _std_loads(text: str | bytes) -> Any:
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def _std_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def loads(text: str | bytes) -> Any:
    """Strict JSON → Python. Raises ValueError (or RecursionError) like `json.loads`."""
    if orjson is not None:
        raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the standard library decides, and words the error
        else:
            if _BIG_EXPONENT.search(raw) is None and (
                not _LONG_NUMBER.search(raw) or not _has_huge_float(value)
            ):
                return value
    return _std_loads(text)


def _has_huge_float(value: Any) -> bool:
    """Whether a decoded value holds a float of 19 digits or more (maybe a big integer)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if abs(item) >= 1e18:
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII kept as is (a lone surrogate too: callers check)."""
    if orjson is not None:
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError:
            pass  # a lone surrogate, or an integer beyond 64 bits
    return _std_dumps(value)


def dumpb(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes (what goes on a wire)."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:
            pass  # e.g. an integer beyond 64 bits: the standard library writes it
    return _std_dumps(value).encode()
