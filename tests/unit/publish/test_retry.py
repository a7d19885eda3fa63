"""The publisher's retry timing: pure functions, no clock."""

from __future__ import annotations

import pytest

from cachewire.publish.retry import delay, next_delay, retry_after


def test_backoff_doubles_up_to_the_cap_within_the_upper_half() -> None:
    assert [next_delay(a, 0.1, 1.0, rng=lambda: 0.0) for a in range(6)] == [
        0.05,
        0.1,
        0.2,
        0.4,
        0.5,
        0.5,
    ]
    assert next_delay(3, 0.1, 1.0, rng=lambda: 1.0) == pytest.approx(0.8)


def test_the_hubs_hint_wins_when_it_is_longer() -> None:
    assert delay(0, 3.0, 0.1, 1.0, rng=lambda: 0.0) == 3.0
    assert delay(5, 0.0, 0.1, 1.0, rng=lambda: 0.0) == 0.5


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2", 2.0), ("0.5", 0.5), ("", None), (None, None), ("-1", None), ("soon", None)],
)
def test_retry_after_is_seconds_or_nothing(value: str | None, seconds: float | None) -> None:
    assert retry_after(value) == seconds
