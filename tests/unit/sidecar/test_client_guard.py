"""The client library's pure core (sidecar.guard, and topics in sidecar.client): applying
events to a cache, and fills that cannot outlive an invalidation (the race cachetools.cached
leaves open). No I/O, no clock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cachetools
import pytest

from cachewire.sidecar._backoff import next_delay
from cachewire.sidecar.client import matches, parse_topics
from cachewire.sidecar.guard import CacheGuard

WAIT = 10.0  # generous bound for barriers; never reached when the test passes


@dataclass(frozen=True)
class Ev:
    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    flush: bool = False
    id: str = "e-1"


def filled(**items: Any) -> cachetools.LRUCache[Any, Any]:
    cache: cachetools.LRUCache[Any, Any] = cachetools.LRUCache(maxsize=100)
    cache.update(items)
    return cache


# --- applying events ---


def test_keys_are_deleted_and_counted() -> None:
    """Keys of an event leave the cache; absent keys are fine; the count is what was there."""
    cache = filled(a=1, b=2, c=3)
    guard = CacheGuard(cache)
    assert guard.apply([Ev(keys=("a", "missing")), Ev(keys=("b",))]) == 2
    assert dict(cache) == {"c": 3}
    assert guard.removed == 2


def test_prefixes_scan_string_keys() -> None:
    """A prefix deletes every string key that starts with it, and nothing else."""
    cache = filled(**{"user:1": 1, "user:12": 2, "users": 3, "order:1": 4})
    cache[("user:1",)] = 5  # not a string key: prefixes do not reach it
    CacheGuard(cache).apply([Ev(prefixes=("user:", "order:"))])
    assert set(cache) == {"users", ("user:1",)}


def test_flush_clears_everything() -> None:
    cache = filled(a=1, b=2)
    guard = CacheGuard(cache)
    assert guard.apply([Ev(flush=True, keys=("a",))]) == 2
    assert len(cache) == 0
    assert guard.cleared == 1


def test_key_fn_maps_event_keys_to_cache_keys() -> None:
    """key_fn turns an invalidation key into the app's cache key (here: a tuple)."""
    cache = filled()
    cache[("user", "42")] = "alice"
    CacheGuard(cache, key_fn=lambda k: tuple(k.split(":"))).apply([Ev(keys=("user:42",))])
    assert len(cache) == 0


def test_apply_holds_the_cache_lock() -> None:
    """Deletions happen under the cache's lock, so app threads never see a half-applied batch."""
    seen: list[bool] = []

    class Probe(cachetools.LRUCache[Any, Any]):
        def pop(self, key: Any, default: Any = None) -> Any:
            seen.append(lock._is_owned())  # type: ignore[attr-defined]
            return super().pop(key, default)

    lock = threading.RLock()
    CacheGuard(Probe(maxsize=10), lock).apply([Ev(keys=("a", "b"))])
    assert seen == [True, True]


# --- race-safe fills ---


def race(guard: CacheGuard, key: str, during: Callable[[], None], value: Any = "old") -> Any:
    """Load `key` in a thread; run `during` while the loader is inside; return its result."""
    inside, release = threading.Event(), threading.Event()
    result: list[Any] = []

    def loader() -> Any:
        inside.set()
        assert release.wait(WAIT)
        return value

    thread = threading.Thread(target=lambda: result.append(guard.get_or_load(key, loader)))
    thread.start()
    assert inside.wait(WAIT)
    during()
    release.set()
    thread.join(WAIT)
    assert not thread.is_alive()
    return result[0]


def test_cachetools_cached_has_the_race() -> None:
    """The problem: cachetools.cached stores a value computed before an invalidation."""
    cache: cachetools.LRUCache[Any, Any] = cachetools.LRUCache(maxsize=10)
    inside, release = threading.Event(), threading.Event()

    @cachetools.cached(cache, key=lambda uid: f"user:{uid}", lock=threading.RLock())
    def load(uid: int) -> str:
        inside.set()
        assert release.wait(WAIT)
        return "old"

    thread = threading.Thread(target=load, args=(42,))
    thread.start()
    assert inside.wait(WAIT)
    CacheGuard(cache).apply([Ev(keys=("user:42",))])  # the invalidation lands mid-load
    release.set()
    thread.join(WAIT)
    assert cache.get("user:42") == "old"  # stale, and it stays


def test_a_fill_raced_by_its_keys_invalidation_is_not_stored() -> None:
    """The fix: the loader's caller gets its value, but the cache does not keep it."""
    guard = CacheGuard(filled())
    got = race(guard, "user:42", lambda: guard.apply([Ev(keys=("user:42",))]))
    assert got == "old"
    assert "user:42" not in guard.cache
    assert guard.discarded == 1
    assert guard.get_or_load("user:42", lambda: "new") == "new"
    assert guard.cache["user:42"] == "new"  # the next load, after the invalidation, is kept


def test_a_fill_raced_by_a_matching_prefix_is_not_stored() -> None:
    guard = CacheGuard(filled())
    race(guard, "user:42", lambda: guard.apply([Ev(prefixes=("user:",))]))
    assert "user:42" not in guard.cache


def test_a_fill_raced_by_a_clear_is_not_stored() -> None:
    guard = CacheGuard(filled())
    race(guard, "user:42", guard.clear)
    assert "user:42" not in guard.cache


def test_a_fill_raced_by_other_keys_is_stored() -> None:
    """Only invalidations that concern the key discard its fill."""
    guard = CacheGuard(filled())
    race(guard, "user:42", lambda: guard.apply([Ev(keys=("user:7",), prefixes=("order:",))]))
    assert guard.cache["user:42"] == "old"
    assert guard.discarded == 0


def test_an_invalidation_before_the_load_does_not_discard_it() -> None:
    guard = CacheGuard(filled(**{"user:42": "old"}))
    guard.apply([Ev(keys=("user:42",))])
    assert guard.get_or_load("user:42", lambda: "new") == "new"
    assert guard.cache["user:42"] == "new"


def test_a_hit_does_not_call_the_loader() -> None:
    guard = CacheGuard(filled(**{"user:42": "cached"}))
    assert guard.get_or_load("user:42", lambda: pytest.fail("loader called")) == "cached"


def test_nothing_is_stored_while_storing_is_off() -> None:
    """While the stream is down the Invalidator turns storing off: loads pass through."""
    guard = CacheGuard(filled())
    guard.storing = False
    assert guard.get_or_load("k", lambda: 1) == 1
    assert "k" not in guard.cache


def test_a_failing_loader_leaves_no_load_behind() -> None:
    guard = CacheGuard(filled())

    def boom() -> int:
        raise RuntimeError("db down")

    with pytest.raises(RuntimeError):
        guard.get_or_load("k", boom)
    assert not guard._loads
    assert guard.get_or_load("k", lambda: 2) == 2


def test_tracking_is_bounded() -> None:
    """Past max_tracked invalidated keys during a load, every load in flight is discarded."""
    guard = CacheGuard(filled(), max_tracked=3)
    race(guard, "user:42", lambda: guard.apply([Ev(keys=(f"k{i}",)) for i in range(4)]))
    assert "user:42" not in guard.cache
    assert len(guard._keys) <= 3
    assert guard.get_or_load("user:42", lambda: "new") == "new"
    assert guard.cache["user:42"] == "new"


def test_tracking_is_dropped_when_no_load_is_in_flight() -> None:
    guard = CacheGuard(filled())
    race(guard, "a", lambda: guard.apply([Ev(keys=("b",))]))
    assert not guard._keys and not guard._loads


def test_cached_decorator_sync() -> None:
    guard = CacheGuard(filled())
    calls: list[int] = []

    @guard.cached(key=lambda uid: f"user:{uid}")
    def load(uid: int) -> str:
        calls.append(uid)
        return f"u{uid}"

    assert load(1) == "u1" and load(1) == "u1"
    assert calls == [1]
    assert load.__name__ == "load"


async def test_cached_decorator_async_closes_the_race() -> None:
    """async def works the same way: an invalidation during the await discards the fill."""
    guard = CacheGuard(filled())
    inside, release = asyncio.Event(), asyncio.Event()

    @guard.cached(key=lambda uid: f"user:{uid}")
    async def load(uid: int) -> str:
        inside.set()
        await release.wait()
        return "old"

    task = asyncio.create_task(load(42))
    async with asyncio.timeout(WAIT):
        await inside.wait()
    guard.apply([Ev(keys=("user:42",))])
    release.set()
    assert await task == "old"
    assert "user:42" not in guard.cache
    assert await load(42) == "old"
    assert guard.cache["user:42"] == "old"


# --- topics and backoff ---


def test_topics_follow_plasmas_rule() -> None:
    topics = parse_topics(["a:b"])
    assert matches(topics, "a:b") and matches(topics, "a:b:c")
    assert not matches(topics, "a") and not matches(topics, "a:bc")


@pytest.mark.parametrize("bad", [[], [""], ["a::b"], [":a"], ["a\n"], ["x" * 300]])
def test_bad_topics_are_refused(bad: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_topics(bad)


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    assert next_delay(0, 0.1, 5.0, rng=lambda: 0.0) == pytest.approx(0.05)
    assert next_delay(0, 0.1, 5.0, rng=lambda: 1.0) == pytest.approx(0.1)
    assert next_delay(3, 0.1, 5.0, rng=lambda: 1.0) == pytest.approx(0.8)
    assert next_delay(50, 0.1, 5.0, rng=lambda: 0.5) == pytest.approx(3.75)
    assert next_delay(10_000, 0.1, 5.0, rng=lambda: 1.0) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        next_delay(-1)


def test_sidecar_client_re_exports_the_guard() -> None:
    """Apps that import CacheGuard from cachewire.sidecar.client get the class of sidecar.guard."""

    from cachewire.sidecar import client

    assert client.CacheGuard is CacheGuard
    assert {"CacheGuard", "Invalidator", "matches", "parse_topics"} <= set(client.__all__)
