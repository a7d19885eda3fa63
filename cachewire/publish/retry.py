"""When to try again: capped exponential backoff with jitter, and the hub's own hint.

Pure functions, unit-tested without a clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def next_delay(
    attempt: int, base: float = 0.05, cap: float = 2.0, rng: Callable[[], float] = random.random
) -> float:
    """Seconds before retry number `attempt` (0 for the first): the ceiling doubles per
    attempt up to `cap`, the delay is drawn from its upper half ("equal jitter")."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    ceiling = min(cap, base * 2.0 ** min(attempt, 62))
    return ceiling / 2 + rng() * ceiling / 2


def retry_after(value: str | None) -> float | None:
    """An HTTP `Retry-After` (or gRPC `retry-after` metadata) in seconds; None when absent
    or not a number of seconds (an HTTP date is not honoured: the backoff applies)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < 3600 else None


def delay(
    attempt: int, hint: float | None, base: float, cap: float, rng: Callable[[], float]
) -> float:
    """The wait before the next attempt: the backoff, or the hub's hint when it is longer."""
    backoff = next_delay(attempt, base, cap, rng)
    return backoff if hint is None else max(backoff, hint)
