"""One back-off for every retry: nothing, then initial, doubling to a cap, per key.

Used for container restarts (the kubelet's CrashLoopBackOff, with a reset once
a container has run as long as the cap), for work-queue retries and for every
loop that reconnects or restarts a task. The key is whatever the caller retries
(a container, a controller key); loops with one thing to retry use the default
key. `jitter` spreads retries so that many clients that failed together do not
come back together: a delay d is returned as d * (1 - jitter .. 1 + jitter).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Hashable

_SINGLE = object()  # the key of a loop that retries one thing


@dataclass
class _Entry:
    failures: int = 0
    last_update: float = 0.0


class Backoff:
    def __init__(
        self,
        initial: float = 10.0,
        maximum: float = 300.0,
        *,
        jitter: float = 0.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if initial < 0 or maximum < initial:
            raise ValueError("back-off needs 0 <= initial <= maximum")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self._rng = rng
        self._entries: dict[Hashable, _Entry] = {}

    @property
    def reset_after(self) -> float:
        """A container that ran this long is considered healthy again."""
        return max(self.maximum, self.initial)

    def delay(self, key: Hashable = _SINGLE) -> float:
        """How long to wait before the next attempt: 0 after no failure, then
        initial, doubling, capped at maximum (without jitter)."""
        entry = self._entries.get(key)
        if entry is None or entry.failures == 0:
            return 0.0
        return min(self.initial * (2 ** (entry.failures - 1)), self.maximum)

    def failures(self, key: Hashable = _SINGLE) -> int:
        entry = self._entries.get(key)
        return entry.failures if entry else 0

    def record_failure(self, key: Hashable = _SINGLE, now: float | None = None) -> None:
        entry = self._entries.setdefault(key, _Entry())
        entry.failures += 1
        entry.last_update = time.time() if now is None else now

    def failure(self, key: Hashable = _SINGLE, now: float | None = None) -> float:
        """Records a failure and returns how long to wait before trying again (with jitter)."""
        self.record_failure(key, now)
        delay = self.delay(key)
        if self.jitter:
            delay *= 1 - self.jitter + 2 * self.jitter * self._rng()
        return delay

    def reset(self, key: Hashable = _SINGLE) -> None:
        self._entries.pop(key, None)

    def forget(self, predicate: Callable[[Hashable], bool]) -> None:
        """Drops the entries whose key matches (a pod that is gone)."""
        for key in [key for key in self._entries if predicate(key)]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
