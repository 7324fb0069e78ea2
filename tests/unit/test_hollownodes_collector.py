"""The hollow nodes' process and Python's cyclic collector: pauses counted, survivors frozen."""

from __future__ import annotations

import asyncio
import gc

from tools.hollownodes import Collector, parse_args


async def test_survivors_of_the_young_generations_are_frozen_and_pauses_counted() -> None:
    collector = Collector()
    kept = [[index] for index in range(10_000)]  # tracked objects that stay alive
    freezer = asyncio.create_task(collector.freeze_survivors(0.01))
    try:
        await asyncio.sleep(0.1)
        assert gc.get_freeze_count() >= len(kept), "what survived is frozen: no collection walks it again"
        assert collector.longest > 0 and collector.summary()[2].startswith("gc_longest_ms=")
    finally:
        freezer.cancel()
        gc.callbacks.remove(collector._on_collection)
        gc.unfreeze()


def test_freezing_is_on_by_default_and_off_with_zero() -> None:
    base = ["--nodes", "1", "--server", "127.0.0.1:1"]
    assert parse_args(base).gc_freeze_every == 5.0
    assert parse_args([*base, "--gc-freeze-every", "0"]).gc_freeze_every == 0.0
