"""Giving the heap's free pages back to the operating system, as Go's scavenger does for
Kubernetes' components.

glibc's allocator keeps what a process frees: it returns memory only from the top of its
heap, and only past a threshold, so a burst (a List of every pod, a watch fan-out, a batch of
etcd responses) leaves the process's RSS at its high-water mark for good, under long-lived
objects allocated after it. `malloc_trim(0)` hands every free page in the heap back
(madvise), wherever it is. Measured on an API server holding 10,000 pods after their status
churn and three full Lists: 5.3 -> 4.3 KiB of RSS per pod; one call took 0.4-0.6 ms.

Where the C library is not glibc (musl, macOS) there is no malloc_trim and nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import time
from typing import Callable

from services.common.log import get_logger

log = get_logger()

# How often a service gives its free pages back: often enough that a burst's memory is
# returned within the minute, rarely enough that the call (about a millisecond per 100 MB
# of heap) never matters.
RELEASE_INTERVAL = 30.0
# A release slower than this is logged: the loop waited for it.
SLOW_RELEASE_SECONDS = 0.05


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Returns the heap's free pages to the operating system; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


async def release_free_memory_periodically(interval: float = RELEASE_INTERVAL) -> None:
    """Releases free memory every `interval` seconds until cancelled. On the event loop's own
    thread: the call is short, and from another thread it would contend for the allocator's lock
    with every allocation the loop makes meanwhile."""
    while True:
        await asyncio.sleep(interval)
        started = time.monotonic()
        if not release_free_memory():
            return
        took = time.monotonic() - started
        if took > SLOW_RELEASE_SECONDS:
            log.info("free_memory_released", took_ms=round(took * 1000, 1))
