"""Restart back-off: at once, then doubling to a cap, reset after a good run."""

from __future__ import annotations

import pytest

from services.common.runtime.backoff import Backoff


def test_first_restart_is_immediate_then_doubles_to_the_cap() -> None:
    backoff = Backoff(initial=1.0, maximum=5.0)
    delays = []
    for _ in range(6):
        delays.append(backoff.delay("c"))
        backoff.record_failure("c")
    assert delays == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_keys_are_independent_and_reset_and_forget() -> None:
    backoff = Backoff(initial=2.0, maximum=10.0)
    backoff.record_failure(("pod-a", "c"))
    backoff.record_failure(("pod-a", "c"))
    backoff.record_failure(("pod-b", "c"))
    assert backoff.delay(("pod-a", "c")) == 4.0
    assert backoff.delay(("pod-b", "c")) == 2.0
    backoff.reset(("pod-a", "c"))
    assert backoff.delay(("pod-a", "c")) == 0.0
    backoff.forget(lambda key: key[0] == "pod-b")
    assert backoff.failures(("pod-b", "c")) == 0


def test_reset_after_is_the_cap() -> None:
    assert Backoff(initial=10.0, maximum=300.0).reset_after == 300.0


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(initial=5.0, maximum=1.0)
    with pytest.raises(ValueError):
        Backoff(initial=-1.0, maximum=1.0)


def test_failure_records_and_returns_the_delay_with_jitter_around_it() -> None:
    samples = iter([0.0, 1.0, 0.5])
    backoff = Backoff(initial=1.0, maximum=8.0, jitter=0.5, rng=lambda: next(samples))
    assert backoff.failure() == 0.5  # 1.0 at the low end of the jitter
    assert backoff.failure() == 3.0  # 2.0 at the high end
    assert backoff.failure() == 4.0  # 4.0 in the middle
    assert backoff.delay() == 4.0  # delay() itself carries no jitter
    backoff.reset()
    assert backoff.delay() == 0.0 and len(backoff) == 0
