"""--allow-prefixes: what of an invalidation stays inside the app's cache namespace."""

from __future__ import annotations

from collections import Counter

from cachewire.sidecar.allow import Allow
from cachewire.sidecar.sinks.base import Invalidation


def test_keys_and_prefixes_outside_are_refused_and_counted() -> None:
    refused: Counter[str] = Counter()
    inv = Invalidation(
        "e-1", "t", keys=("app:1", "session:alice"), prefixes=("app:list:", "billing:")
    )
    out = Allow(("app:",)).confine(inv, refused)
    assert (out.keys, out.prefixes) == (("app:1",), ("app:list:",))
    assert refused == {"key_outside": 1, "prefix_outside": 1}


def test_a_prefix_covering_the_namespace_is_narrowed_to_it() -> None:
    """ "ap" covers "app:c:" and "app:d:": those are deleted, nothing outside them."""
    refused: Counter[str] = Counter()
    out = Allow(("app:c:", "app:d:", "other:")).confine(
        Invalidation("e-1", "t", prefixes=("ap",)), refused
    )
    assert out.prefixes == ("app:c:", "app:d:") and not refused


def test_an_invalidation_inside_is_returned_as_is() -> None:
    inv = Invalidation("e-1", "t", keys=("app:1",), prefixes=("app:x:",))
    assert Allow(("app:",)).confine(inv, Counter()) is inv
