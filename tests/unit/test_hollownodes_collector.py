"""The hollow nodes' process reports the cyclic collector's pauses on its summary line."""

from __future__ import annotations

import gc

from tools.hollownodes import CollectorPauses


def test_full_collections_and_the_longest_pause_are_counted() -> None:
    pauses = CollectorPauses()
    try:
        kept = [[index] for index in range(50_000)]  # tracked objects the collections walk
        gc.collect()
        assert len(kept) == 50_000
        full, slow, longest = pauses.summary()
        assert full != "gc_full=0" and pauses.longest > 0
        assert slow.startswith("gc_over_100ms=") and longest.startswith("gc_longest_ms=")
    finally:
        gc.callbacks.remove(pauses._on_collection)
