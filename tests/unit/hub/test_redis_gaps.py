"""The Redis reader's gap detection, without Redis: entries' `n`, and what a gap does to the
subscribers (a reset between the events before it and those after, from right before it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cachewire.hub.brokers.base import ResetReason
from cachewire.hub.brokers.redis import RedisBroker
from cachewire.hub.brokers.redis_reader import (
    StreamReader,
    entry_seq,
    seq_baseline,
    skipped_between,
    stream_id_before,
)
from cachewire.hub.core import Fanout
from cachewire.hub.events import Event
from cachewire.hub.settings import HubSettings
from tests.unit.hub.fakes import FakeSink

Entry = tuple[str, dict[str, str]]


def entry(entry_id: str, n: int | None, epoch: str = "e", kind: str = "a") -> Entry:
    fields = {"epoch": epoch, "type": kind, "data": "null"}
    if n is not None:
        fields["n"] = str(n)
    return entry_id, fields


class TimelineSink(FakeSink):
    """Events and resets in the order they came."""

    def __init__(self) -> None:
        super().__init__()
        self.timeline: list[str] = []

    def send(self, event: Event) -> bool:
        self.timeline.append(event.id)
        return super().send(event)

    def reset(self, reason: ResetReason, detail: str, resume_from: str) -> None:
        self.timeline.append(f"{reason}@{resume_from}")
        super().reset(reason, detail, resume_from)


# --- pure helpers ---


def test_an_entry_without_n_or_with_a_malformed_one_has_no_place() -> None:
    assert entry_seq({"n": "42"}) == 42
    for bad in ({}, {"n": ""}, {"n": "-1"}, {"n": "1.5"}, {"n": "²"}, {"n": "9" * 21}):
        assert entry_seq(bad) is None


def test_consecutive_or_unknown_places_skip_nothing() -> None:
    assert skipped_between(4, 5) == 0
    assert skipped_between(None, 9) == 0  # nothing read yet to compare with
    assert skipped_between(4, None) == 0  # an entry written before `n` existed


def test_a_jump_counts_the_entries_between_and_a_step_back_is_unknown() -> None:
    assert skipped_between(4, 6) == 1
    assert skipped_between(0, 101) == 100
    assert skipped_between(7, 7) == -1
    assert skipped_between(7, 3) == -1


def test_the_baseline_mirrors_the_publish_script() -> None:
    last = ("5-0", {"epoch": "e", "n": "17"})
    assert seq_baseline("e", "20", last) == 20  # the counter key wins
    assert seq_baseline("e", None, last) == 17  # no counter: the last entry of this epoch
    assert seq_baseline("other", None, last) == 0  # … of another epoch: a new count
    assert seq_baseline("e", None, ("5-0", {"epoch": "e"})) == 0  # written without n
    assert seq_baseline("e", None, None) == 0  # an empty stream


def test_the_resume_point_of_a_gap_is_the_greatest_id_before_the_next_entry() -> None:
    assert stream_id_before((1700, 5)) == (1700, 4)
    assert stream_id_before((1700, 0)) == (1699, 2**64 - 1)


# --- the reader, fed entries directly ---


@pytest.fixture
async def reader() -> AsyncIterator[tuple[StreamReader, Fanout, FakeSink]]:
    """A broker's reader that never connects (its clients are lazy), at epoch "e" after 1-0."""
    broker = RedisBroker(HubSettings(broker="redis", history=20))
    stream = broker.reader
    stream.epoch, stream.last, stream.last_pos, stream._last_n = "e", "1-0", (1, 0), 1
    fanout = Fanout(broker)
    stream._dispatch, stream._on_reset = fanout.dispatch, fanout.reset_all
    sink = FakeSink()
    await fanout.subscribe(frozenset({"a"}), sink)
    yield stream, fanout, sink
    await broker.stop()


async def test_consecutive_entries_are_dispatched_with_no_reset(
    reader: tuple[StreamReader, Fanout, FakeSink],
) -> None:
    stream, _, sink = reader
    stream._handle([entry("2-0", 2), entry("2-1", 3), entry("3-0", 4)])
    assert sink.ids() == ["e-2-0", "e-2-1", "e-3-0"] and sink.resets == []
    assert stream.gaps == stream.skipped == 0


async def test_a_gap_resets_between_the_events_before_and_after_it(
    reader: tuple[StreamReader, Fanout, FakeSink],
) -> None:
    """n 2, then 5: entries 3 and 4 were trimmed unread. The reset comes after e-2-0, its
    resume point is right before e-9-0 (a resume from it misses nothing kept), then e-9-0."""
    stream, fanout, _ = reader
    sink = TimelineSink()
    await fanout.subscribe(frozenset({"a"}), sink)
    stream._handle([entry("2-0", 2), entry("9-0", 5), entry("9-1", 6)])
    assert sink.timeline == ["e-2-0", f"history_expired@e-8-{2**64 - 1}", "e-9-0", "e-9-1"]
    assert (stream.gaps, stream.skipped) == (1, 2)
    assert stream.head_id() == fanout.last_id == "e-9-1"


async def test_a_gap_at_the_start_of_a_read_is_seen_too(
    reader: tuple[StreamReader, Fanout, FakeSink],
) -> None:
    stream, _, sink = reader
    stream._handle([entry("7-3", 40)])
    assert [r[0] for r in sink.resets] == ["history_expired"]
    assert sink.resets[0][2] == "e-7-2" and "38 events were trimmed" in sink.resets[0][1]
    assert sink.ids() == ["e-7-3"] and stream.skipped == 38


async def test_entries_without_n_are_read_as_before_and_break_nothing(
    reader: tuple[StreamReader, Fanout, FakeSink],
) -> None:
    """Written by a hub from before `n` (a rolling upgrade): nothing to check them against;
    the entries with `n` around them still count from one another."""
    stream, _, sink = reader
    stream._handle([entry("2-0", None), entry("3-0", 2), entry("4-0", None), entry("5-0", 3)])
    assert sink.ids() == ["e-2-0", "e-3-0", "e-4-0", "e-5-0"] and sink.resets == []
    stream._last_n = None  # a reader that has seen no `n` yet
    stream._handle([entry("6-0", None), entry("7-0", 10), entry("8-0", 11)])
    assert sink.resets == [] and stream.gaps == 0


async def test_a_counter_that_went_back_resets_too(
    reader: tuple[StreamReader, Fanout, FakeSink],
) -> None:
    stream, _, sink = reader
    stream._handle([entry("2-0", 1)])
    assert [r[0] for r in sink.resets] == ["history_expired"]
    assert "sequence went back" in sink.resets[0][1]
    assert (stream.gaps, stream.skipped) == (1, 0) and sink.ids() == ["e-2-0"]


async def test_entries_of_a_replaced_epoch_do_not_count(
    reader: tuple[StreamReader, Fanout, FakeSink],
) -> None:
    stream, _, sink = reader
    stream._dead.add("old")
    stream._handle([entry("2-0", 900, epoch="old"), entry("3-0", 2)])
    assert sink.ids() == ["e-3-0"] and sink.resets == []
