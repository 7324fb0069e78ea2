"""Restart back-off: the first restart at once, then initial, 2x, 4x... up to a cap.

The count resets once a container has run for a while (as long as the cap),
so a container that crashes once a day restarts at once every time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Hashable


@dataclass
class _Entry:
    failures: int = 0
    last_update: float = 0.0


class BackOff:
    def __init__(self, initial: float = 10.0, maximum: float = 300.0) -> None:
        if initial < 0 or maximum < initial:
            raise ValueError("back-off needs 0 <= initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self._entries: dict[Hashable, _Entry] = {}

    @property
    def reset_after(self) -> float:
        """A container that ran this long is considered healthy again."""
        return max(self.maximum, self.initial)

    def delay(self, key: Hashable) -> float:
        """How long to wait before the next attempt: 0 after no failure, then
        initial, doubling, capped at maximum."""
        entry = self._entries.get(key)
        if entry is None or entry.failures == 0:
            return 0.0
        return min(self.initial * (2 ** (entry.failures - 1)), self.maximum)

    def failures(self, key: Hashable) -> int:
        entry = self._entries.get(key)
        return entry.failures if entry else 0

    def record_failure(self, key: Hashable, now: float | None = None) -> None:
        entry = self._entries.setdefault(key, _Entry())
        entry.failures += 1
        entry.last_update = time.time() if now is None else now

    def reset(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def forget(self, predicate) -> None:  # type: ignore[no-untyped-def]
        """Drops the entries whose key matches (a pod that is gone)."""
        for key in [key for key in self._entries if predicate(key)]:
            del self._entries[key]
