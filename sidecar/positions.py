"""Stream positions: the hub's ids "<epoch>-<position>", ordered within an epoch.

The memory broker's position is a sequence number ("3f2a9c1e-42"); the Redis broker's is
a Redis stream id ("<epoch>-1717171717171-0"). Both compare as tuples of integers. Epochs
do not compare by name: `Epochs` orders them by the order in which the sidecar met them,
which is the order of the hub's history (a new epoch replaces the old one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pos:
    id: str
    epoch: str
    seq: tuple[int, ...]


def parse_id(event_id: str) -> Pos | None:
    """An id → its position, or None when it is not "<epoch>-<n>[-<n>…]"."""
    epoch, sep, rest = event_id.partition("-")
    if not sep or not epoch or not rest:
        return None
    if rest.isascii() and rest.isdigit():  # the memory broker's "<epoch>-<n>": the hot path
        return Pos(event_id, epoch, (int(rest),))
    parts = rest.split("-")
    if not all(p.isascii() and p.isdigit() for p in parts):
        return None
    return Pos(event_id, epoch, tuple(int(p) for p in parts))


class Epochs:
    """Epochs in the order met; positions of a later epoch cover all of an earlier one."""

    def __init__(self) -> None:
        self._order: dict[str, int] = {}

    def see(self, epoch: str) -> None:
        self._order.setdefault(epoch, len(self._order))

    def known(self, epoch: str) -> bool:
        return epoch in self._order

    def covers(self, have: Pos | None, want: Pos) -> bool:
        """Whether having applied through `have` includes `want`."""
        if have is None or want.epoch not in self._order or have.epoch not in self._order:
            return False
        if have.epoch == want.epoch:
            return have.seq >= want.seq
        return self._order[have.epoch] > self._order[want.epoch]


def min_id(epochs: Epochs, positions: Sequence[Pos | None]) -> str:
    """The lowest of these positions (what every sink has applied through), "" if one is None."""
    lowest: Pos | None = None
    for pos in positions:
        if pos is None:
            return ""
        if lowest is None or epochs.covers(lowest, pos):
            lowest = pos
    return lowest.id if lowest else ""
