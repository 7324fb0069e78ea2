"""A log throttle: a flood of garbage packets or a dead upstream must not become a flood of log lines."""

from __future__ import annotations

import time
from typing import Callable

DEFAULT_PER_SECOND = 10


class Throttle:
    """At most `per_second` allowed events a second; counts the ones it refused."""

    def __init__(self, per_second: int = DEFAULT_PER_SECOND, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self._clock = clock
        self._second = -1
        self._allowed = 0
        self._suppressed = 0

    def allow(self) -> bool:
        second = int(self._clock())
        if second != self._second:
            self._second, self._allowed = second, 0
        if self._allowed < self.per_second:
            self._allowed += 1
            return True
        self._suppressed += 1
        return False

    def take_suppressed(self) -> int:
        """How many events were refused since the last call (to log with the next allowed one)."""
        count, self._suppressed = self._suppressed, 0
        return count
