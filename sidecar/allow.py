"""Confinement of a sink to the app's cache namespace (`--allow-prefixes`).

Pure: an invalidation in, the part of it inside the namespace out, with what was refused.
A key is allowed when it starts with an allowed prefix. A prefix inside the namespace is
kept; a prefix that covers part of it ("app" when "app:cache:" is allowed) is narrowed to
the allowed prefixes it covers, so nothing inside is left stale; any other is refused.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from cachewire.sidecar.sinks.base import Invalidation


@dataclass(frozen=True, slots=True)
class Allow:
    prefixes: tuple[str, ...]

    def confine(self, inv: Invalidation, refused: Counter[str]) -> Invalidation:
        """`inv` with keys and prefixes outside the namespace removed (counted in
        `refused` by reason: key_outside, prefix_outside)."""
        allowed = self.prefixes
        keys = tuple(k for k in inv.keys if k.startswith(allowed))
        if len(keys) < len(inv.keys):
            refused["key_outside"] += len(inv.keys) - len(keys)
        prefixes: list[str] = []
        for prefix in inv.prefixes:
            if prefix.startswith(allowed):
                prefixes.append(prefix)
                continue
            covered = [a for a in allowed if a.startswith(prefix)]
            if covered:
                prefixes.extend(covered)
            else:
                refused["prefix_outside"] += 1
        if len(keys) == len(inv.keys) and prefixes == list(inv.prefixes):
            return inv
        return replace(inv, keys=keys, prefixes=tuple(dict.fromkeys(prefixes)))
