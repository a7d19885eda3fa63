"""The invariant checker's verdict on made-up records (no processes): what counts as
covered, late, never covered, and a stale read."""

from __future__ import annotations

from tests.chaos.checker import Checker, MemcachedTap, Publication


def publication(checker: Checker, key: str, at: float) -> Publication:
    version, _ = checker.db.write(key)
    pub = Publication(key, version, at, at, f"e-{version}", 1, "http")
    checker.publications.append(pub)
    return pub


def test_delete_flush_late_and_never() -> None:
    checker = Checker()
    checker.started_at = 0.0
    log = checker.cache("memcached0")
    publication(checker, "a", 10.0)  # deleted 50 ms later
    publication(checker, "b", 10.0)  # covered by a flush at 11 s
    publication(checker, "c", 20.0)  # deleted 5 s later: late
    publication(checker, "d", 30.0)  # never
    log.deleted("a", 10.05)
    log.deleted("c", 19.0)  # before the write: does not count
    log.flushed("flush_all", 11.0)
    log.deleted("c", 25.0)
    fig = checker.verdict("made up", bound=3.0)
    assert (fig.checks, fig.deleted, fig.flushed) == (4, 2, 1)
    assert fig.violations == 2
    assert any("never covered" in d for d in fig.details)
    assert any("after 5.000s" in d for d in fig.details)


def test_a_stale_read_counts_only_after_its_invalidation_was_published() -> None:
    checker = Checker()
    checker.db.write("k")  # version 1: cached by a reader
    publication(checker, "k", 100.0)  # version 2, published at 100
    checker.cache("memcached0").deleted("k", 100.01)
    checker.stale_reads.clear()
    checker.read("memcached0", "k", 1, 99.0)  # before the publish: not stale by the promise
    checker.read("memcached0", "k", 1, 101.0)  # within the bound
    checker.read("memcached0", "k", 1, 104.5)  # 4.5 s after: a violation
    fig = checker.verdict("reads", bound=3.0)
    assert fig.stale_reads == 2 and fig.violations == 1


def test_memcached_tap_counts_a_delete_when_memcached_answers() -> None:
    checker = Checker()
    log = checker.cache("memcached0")
    tap = MemcachedTap(log)
    tap.to_server(b"delete a\r\ndelete b\r\nflush_a")
    tap.to_server(b"ll\r\nversion\r\n")
    assert not log.deletes and not log.flushes  # nothing answered yet
    tap.to_client(b"DELETED\r\nNOT_FOUND\r\nOK\r\nVERSION 1.6\r\n")
    assert set(log.deletes) == {"a", "b"} and len(log.flushes) == 1


def test_memcached_tap_counts_quiet_meta_deletes_on_mn() -> None:
    """The sidecar's quiet meta deletes count when MN confirms them; NF is gone too; an
    error reply fails the whole batch (the sidecar retries it)."""
    checker = Checker()
    log = checker.cache("memcached0")
    tap = MemcachedTap(log)
    tap.to_server(b"md a q\r\nmd b q\r\nmn\r\n")
    tap.to_client(b"NF\r\n")
    assert not log.deletes  # not confirmed before MN
    tap.to_client(b"MN\r\n")
    assert set(log.deletes) == {"a", "b"}
    tap.to_server(b"md c q\r\nmd d q\r\nmn\r\nflush_all\r\n")
    tap.to_client(b"SERVER_ERROR out of memory\r\nMN\r\nOK\r\n")
    assert set(log.deletes) == {"a", "b"} and len(log.flushes) == 1
