"""Expectations: creates and deletes a controller has asked for but not yet seen in its watch.

The replicator counts pods from its informer, which lags its own writes. After
asking for N creations it must not count again until the watch has shown them,
or it would create them twice. So each sync that acts records what it expects;
pod events lower the record; and the controller does not act again until the
record is met, or has expired (a lost event must not wedge a controller).
Deletions are tracked by pod uid, so an unrelated pod's deletion is not taken
for one of ours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Iterable, TypeVar

K = TypeVar("K", bound=Hashable)

DEFAULT_TIMEOUT = 60.0


@dataclass
class _Record:
    creations: int
    deletions: set[str]
    since: float


class Expectations(Generic[K]):
    def __init__(self, timeout: float = DEFAULT_TIMEOUT, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._clock = clock
        self._records: dict[K, _Record] = {}

    def expect(self, key: K, *, creations: int = 0, deletions: Iterable[str] = ()) -> None:
        """Records what a sync is about to do (replacing a met or expired record)."""
        self._records[key] = _Record(creations, set(deletions), self._clock())

    def creation_observed(self, key: K) -> None:
        """A pod of this controller appeared, or a create failed for sure."""
        record = self._records.get(key)
        if record is not None and record.creations > 0:
            record.creations -= 1

    def deletion_observed(self, key: K, uid: str) -> None:
        """A pod of this controller disappeared, or a delete failed for sure."""
        record = self._records.get(key)
        if record is not None:
            record.deletions.discard(uid)

    def satisfied(self, key: K) -> bool:
        """True when the controller may count and act again."""
        record = self._records.get(key)
        if record is None:
            return True
        if record.creations <= 0 and not record.deletions:
            return True
        return self._clock() - record.since > self.timeout

    def expired(self, key: K) -> bool:
        record = self._records.get(key)
        return record is not None and self._clock() - record.since > self.timeout

    def pending(self, key: K) -> tuple[int, int]:
        """(creations, deletions) still awaited."""
        record = self._records.get(key)
        if record is None:
            return (0, 0)
        return (max(record.creations, 0), len(record.deletions))

    def forget(self, key: K) -> None:
        self._records.pop(key, None)
