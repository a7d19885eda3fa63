"""`--state-file`: the position every sink has applied through, kept across restarts.

Without it a restarted sidecar does not know what it missed and flushes every cache it
guards. With it, the sidecar resumes the hub stream from the saved position: the hub
replays what was published meanwhile (at least once; duplicates are harmless deletes), and
only when that is no longer possible does it answer with a reset, which flushes as usual.

What is saved is the position applied to *every* sink, never merely received, so a
resume never skips an invalidation a sink has not confirmed. It is written at most every
`interval` seconds (and once at shutdown): a `kill -9` loses at most that much progress,
which the resume replays. Each write goes to a temporary file in the same directory,
is fsynced and renamed over the old one, so a crash leaves the old or the new file, never
half of one. The file also names the topics and sinks it was written for; a sidecar
started with other topics or sinks ignores it (those caches were not guarded) and flushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("cachewire.sidecar.statefile")

VERSION = 1


@dataclass(frozen=True, slots=True)
class SavedState:
    applied_id: str
    topics: tuple[str, ...]
    sinks: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "applied_id": self.applied_id,
                "topics": list(self.topics),
                "sinks": list(self.sinks),
            }
        )


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text`: temporary file, fsync, rename (old or new, never half)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load(path: Path, topics: Sequence[str], sinks: Sequence[str]) -> str:
    """The saved position to resume after, or "" (flush at start) with a log line saying why."""
    try:
        data = json.loads(path.read_text())
        saved = SavedState(str(data["applied_id"]), tuple(data["topics"]), tuple(data["sinks"]))
        if data.get("version") != VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
    except FileNotFoundError:
        log.info("no state file yet: flushing at start", extra={"state_file": str(path)})
        return ""
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning(
            "state file unreadable: flushing at start",
            extra={"state_file": str(path), "error": str(exc)},
        )
        return ""
    if saved.topics != tuple(topics) or saved.sinks != tuple(sinks):
        log.warning(
            "state file was written for other topics or sinks: flushing at start",
            extra={
                "state_file": str(path),
                "saved_topics": list(saved.topics),
                "saved_sinks": list(saved.sinks),
            },
        )
        return ""
    if saved.applied_id:
        log.info(
            "resuming from the state file",
            extra={"state_file": str(path), "resume_from": saved.applied_id},
        )
    return saved.applied_id


class StateWriter:
    """Saves `read()` (the applied-everywhere id) when it changed, at most every `interval`."""

    def __init__(
        self,
        path: Path,
        read: Callable[[], str],
        *,
        topics: Sequence[str],
        sinks: Sequence[str],
        interval: float,
    ) -> None:
        self.path = path
        self.read = read
        self.topics, self.sinks = tuple(topics), tuple(sinks)
        self.interval = interval
        self.saved = ""
        self.writes = 0
        self._task: asyncio.Task[None] | None = None

    def check_writable(self) -> None:
        """Fail at start (OSError) when the directory cannot take the file."""
        write_atomic(self.path.parent / f".{self.path.name}.probe", "")
        os.unlink(self.path.parent / f".{self.path.name}.probe")

    def start(self, restored: str) -> None:
        self.saved = restored
        self._task = asyncio.create_task(self._run(), name="state-file")

    async def stop(self) -> None:
        """Stop the periodic writes and save the final position."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.save()

    async def save(self) -> None:
        current = self.read()
        if not current or current == self.saved:
            return
        text = SavedState(current, self.topics, self.sinks).to_json()
        try:
            await asyncio.to_thread(write_atomic, self.path, text)
        except OSError as exc:  # the next round retries; a restart flushes at worst
            log.warning(
                "state file write failed", extra={"state_file": str(self.path), "error": str(exc)}
            )
            return
        self.saved = current
        self.writes += 1

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.save()
