"""Capped exponential backoff with jitter, as a pure function (unit-tested without a clock)."""

from __future__ import annotations

import random
from collections.abc import Callable


def next_delay(
    attempt: int, base: float = 0.1, cap: float = 5.0, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry).

    The ceiling doubles per attempt up to `cap`; the delay is drawn from the upper half of
    it ("equal jitter"), so clients that lost the same server spread out but never spin.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    ceiling = min(cap, base * 2.0 ** min(attempt, 62))
    return ceiling / 2 + rng() * ceiling / 2
