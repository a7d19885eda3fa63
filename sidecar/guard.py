"""The pure core of the app-side library (sidecar.client): events applied to a cache under
its lock, and fills that cannot outlive an invalidation.

`cachetools.cached()` calls the function outside the lock and stores its result after: an
invalidation that arrives meanwhile is overwritten by the value computed before it.
`CacheGuard.cached` closes that race with a generation counter: a load remembers the
generation it started at, and its result is stored only if no invalidation (of its key, a
matching prefix, or everything) happened since, checked under the lock.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable, MutableMapping, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar, cast

P = ParamSpec("P")
R = TypeVar("R")
_MISSING: Any = object()


class EventLike(Protocol):
    """What `CacheGuard.apply` needs of an event (a hub_pb2.Event, or a test double)."""

    @property
    def keys(self) -> Sequence[str]: ...
    @property
    def prefixes(self) -> Sequence[str]: ...
    @property
    def flush(self) -> bool: ...


def _identity(key: str) -> Hashable:
    return key


class CacheGuard:
    """A cache, its lock, and the generations that keep fills from outliving invalidations.

    No I/O: the Invalidator feeds it events; unit tests feed it directly. Keys of the events
    map to cache keys through `key_fn` (identity by default); prefixes match the cache keys
    that are strings.
    """

    def __init__(
        self,
        cache: MutableMapping[Any, Any],
        lock: Any = None,
        key_fn: Callable[[str], Hashable] | None = None,
        *,
        max_tracked: int = 100_000,
    ) -> None:
        self.cache = cache
        self.lock: Any = lock if lock is not None else threading.RLock()
        self.key_fn = key_fn or _identity
        self.storing = True  # False while invalidations may be missed: fills are not stored
        self.cleared = 0  # times the cache was cleared
        self.removed = 0  # entries removed by invalidations
        self.discarded = 0  # fills not stored because an invalidation raced them
        self._max_tracked = max_tracked
        self._gen = 0  # bumped by every invalidation
        self._floor = 0  # loads that started before this generation may not store
        self._keys: dict[Hashable, int] = {}  # key → generation of its last invalidation
        self._prefixes: dict[str, int] = {}
        self._loads: Counter[int] = Counter()  # generations at which in-flight loads started

    def apply(self, events: Iterable[EventLike]) -> int:
        """Apply a batch under the lock; return how many entries were removed."""
        with self.lock:
            return sum(self.apply_event(event) for event in events)

    def apply_event(self, event: EventLike) -> int:
        """The one place an event reaches the cache (the caller holds the lock)."""
        if event.flush:
            removed = len(self.cache)
            self._clear_locked()
            return removed
        self._gen += 1
        tracking = bool(self._loads)  # loads that start later read the new generation
        removed = 0
        for raw in event.keys:
            key = self.key_fn(raw)
            if tracking:
                self._keys[key] = self._gen
            if self.cache.pop(key, _MISSING) is not _MISSING:
                removed += 1
        if event.prefixes:
            prefixes = tuple(event.prefixes)
            if tracking:
                self._prefixes.update(dict.fromkeys(prefixes, self._gen))
            for key in [k for k in self.cache if isinstance(k, str) and k.startswith(prefixes)]:
                if self.cache.pop(key, _MISSING) is not _MISSING:
                    removed += 1
        if len(self._keys) + len(self._prefixes) > self._max_tracked:
            self._floor = self._gen  # too much to track: no load in flight may store
            self._keys.clear()
            self._prefixes.clear()
        self.removed += removed
        return removed

    def clear(self) -> None:
        """Empty the cache; loads in flight will not store what they computed."""
        with self.lock:
            self._clear_locked()

    def _clear_locked(self) -> None:
        self._gen += 1
        self._floor = self._gen
        self._keys.clear()
        self._prefixes.clear()
        self.cache.clear()
        self.cleared += 1

    # --- race-safe fills ---

    def _begin(self, key: Hashable) -> tuple[bool, Any, int]:
        """A hit (True, value, 0), or a miss (False, None, token) that starts a load."""
        with self.lock:
            value = self.cache.get(key, _MISSING)
            if value is not _MISSING:
                return True, value, 0
            self._loads[self._gen] += 1
            return False, None, self._gen

    def _finish(self, token: int, key: Hashable, value: Any, store: bool) -> None:
        with self.lock:
            self._loads[token] -= 1
            if self._loads[token] <= 0:
                del self._loads[token]
            if store:
                if self.storing and self._fresh(token, key):
                    with contextlib.suppress(ValueError):  # too large for the cache
                        self.cache[key] = value
                else:
                    self.discarded += 1
            if not self._loads:
                self._keys.clear()
                self._prefixes.clear()

    def _fresh(self, token: int, key: Hashable) -> bool:
        """No invalidation of this key happened since the load started (lock held)."""
        if token < self._floor or self._keys.get(key, -1) > token:
            return False
        if self._prefixes and isinstance(key, str):
            return not any(g > token and key.startswith(p) for p, g in self._prefixes.items())
        return True

    def get_or_load(self, key: Hashable, loader: Callable[[], R]) -> R:
        """The cached value, or `loader()`, stored only if not invalidated meanwhile."""
        hit, value, token = self._begin(key)
        if hit:
            return cast(R, value)
        try:
            loaded = loader()
        except BaseException:
            self._finish(token, key, None, store=False)
            raise
        self._finish(token, key, loaded, store=True)
        return loaded

    async def get_or_load_async(self, key: Hashable, loader: Callable[[], Awaitable[R]]) -> R:
        """`get_or_load` for a coroutine loader."""
        hit, value, token = self._begin(key)
        if hit:
            return cast(R, value)
        try:
            loaded = await loader()
        except BaseException:
            self._finish(token, key, None, store=False)
            raise
        self._finish(token, key, loaded, store=True)
        return loaded

    def cached(self, *, key: Callable[P, Hashable]) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator like cachetools.cached (for def and async def), without its race."""

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            if inspect.iscoroutinefunction(func):

                async def awrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                    return await self.get_or_load_async(
                        key(*args, **kwargs), lambda: func(*args, **kwargs)
                    )

                return cast(Callable[P, R], functools.wraps(func)(awrapper))

            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                return self.get_or_load(key(*args, **kwargs), lambda: func(*args, **kwargs))

            return functools.wraps(func)(wrapper)

        return decorate
