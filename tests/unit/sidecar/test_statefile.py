"""The state file: atomic writes, and what a start does with a missing, bad or foreign file."""

from __future__ import annotations

from pathlib import Path

from cachewire.sidecar.applier import Applier
from cachewire.sidecar.state import Slot
from cachewire.sidecar.statefile import SavedState, StateWriter, load, write_atomic
from tests.unit.sidecar.fakes import MemorySink


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state"
    write_atomic(path, "one")
    write_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_load_missing_garbage_and_foreign_files_give_no_position(tmp_path: Path) -> None:
    path = tmp_path / "state"
    assert load(path, ["user"], ["memcached"]) == ""
    path.write_text("{not json")
    assert load(path, ["user"], ["memcached"]) == ""
    path.write_text(SavedState("e-5", ("user",), ("memcached",)).to_json())
    assert load(path, ["user"], ["memcached"]) == "e-5"
    assert load(path, ["user", "product"], ["memcached"]) == ""
    assert load(path, ["user"], ["memcached", "redis"]) == ""


async def test_writer_saves_only_changes_and_the_final_position(tmp_path: Path) -> None:
    path = tmp_path / "state"
    current = ["e-1"]
    writer = StateWriter(path, lambda: current[0], topics=["user"], sinks=["memory"], interval=3600)
    writer.start("e-1")
    await writer.save()
    assert writer.writes == 0 and not path.exists()  # unchanged since the restore
    current[0] = "e-2"
    await writer.stop()
    assert load(path, ["user"], ["memory"]) == "e-2" and writer.writes == 1


def test_restore_skips_the_start_flush_and_counts_as_applied() -> None:
    applier = Applier([Slot(MemorySink())])
    assert applier.restore("e-7")
    applier.on_connected()
    assert applier.slots[0].flush_cause is None
    assert applier.resume_id() == "e-7" and applier.applied_id() == "e-7"
    assert not Applier([Slot(MemorySink())]).restore("not an id")
