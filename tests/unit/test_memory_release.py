"""Free heap pages go back to the operating system (services/common/memory.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.common.memory import _malloc_trim

# In a process of its own, so that what this test process allocated before cannot blur it:
# 200 MB of 1 KiB objects (glibc's heap, below its mmap threshold), then one more that stays
# above them, so that freeing the rest cannot shrink the heap from its top.
SCRIPT = """
import sys
from services.common.memory import release_free_memory

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

burst = [bytes(1024) + bytes([i % 256]) for i in range(200_000)]
pinned = bytes(1024) + b"pinned"
held = rss_mb()
del burst
freed = rss_mb()
assert release_free_memory()
print(held, freed, rss_mb())
"""


@pytest.mark.skipif(_malloc_trim() is None, reason="the C library has no malloc_trim (not glibc)")
def test_a_burst_freed_under_a_live_object_is_returned_only_when_released():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60)
    held, freed, released = map(float, result.stdout.split())
    # Freed but kept: glibc cannot give back what lies under the heap's top.
    assert freed > held - 50, result.stdout
    # Released: most of the 200 MB goes back.
    assert released < held - 150, result.stdout


# A thread frees a 30 MB burst after the process freed one big buffer (a List's response):
# glibc, left to itself, raised its trim threshold to twice that buffer and keeps the burst at
# the top of the thread's heap, where malloc_trim does not reach; tuned, the burst goes back.
TUNED_SCRIPT = """
import sys, threading
from services.common.memory import release_free_memory, tune_allocator

if sys.argv[1] == "tuned":
    assert tune_allocator()

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

big = bytearray(20 * 2**20)
del big
base = rss_mb()

def burst():
    objects = [bytes(1024) + bytes([i % 256]) for i in range(30_000)]
    del objects

thread = threading.Thread(target=burst)
thread.start()
thread.join()
assert release_free_memory()
print(rss_mb() - base)
"""


def _kept_after_a_thread_burst(mode: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", TUNED_SCRIPT, mode], capture_output=True, text=True, check=True, timeout=60
    )
    return float(result.stdout)


@pytest.mark.skipif(_malloc_trim() is None, reason="the C library has no malloc_trim (not glibc)")
def test_a_tuned_allocator_returns_what_a_thread_freed_after_a_big_buffer():
    assert _kept_after_a_thread_burst("default") > 20  # the case the tuning is for (glibc's default)
    assert _kept_after_a_thread_burst("tuned") < 5
