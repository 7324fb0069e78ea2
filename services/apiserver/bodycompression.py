"""The watch cache's objects kept deflated against a dictionary of their own kind (issue 16:
the API server's memory per pod within 2x of the pod's encoding).

The cache holds every object of a kind encoded, and the encodings of one kind are mostly the
same bytes: field tags, the namespace, the image, label keys, condition types, the owner's
kind. Deflated on their own, a running pod's 574 bytes come to 414; deflated against another
pod's encoding as a preset dictionary (zlib's zdict), to about 200. What is left is mostly
what is unique to the pod: its name, uid, IP, container id and times.

The dictionary is the first object of the kind the process caches, replaced by the few
objects cached last when they make a markedly better one (a kind whose first object was
unlike the rest, or whose objects change). Each deflated object keeps the dictionary it was
deflated against (through its class, see watchcache.CachedObject), so replacing the
dictionary never touches the objects already held.

The price is CPU: deflating an object takes about 10 us as it is decoded into the cache (in
the cache's worker thread for a big batch), and inflating it again for each read (a watch
event for each watcher, a snapshot, a Get) about 3 us. A pod's four versions, each sent to a
few watchers, come to ~0.1 ms, against the ~15 ms of API server CPU a pod takes in
bench.scale.
"""

from __future__ import annotations

import collections
import zlib

# Raw deflate: no zlib header or checksum (6 bytes an object). An 8 KiB window, which the
# dictionary and the object share, and memory level 6: deflate's working memory comes to
# 64 KiB, freed after each object. With zlib's defaults (a 32 KiB window, memory level 8:
# 256 KiB) every object grew the heap past the allocator's trim threshold and back
# (services/common/memory.py fixes it at 128 KiB): two brk calls and fresh pages each,
# 40-170 us instead of 10. A pod deflates to the same size either way.
WINDOW_BITS = -13
MEMORY_LEVEL = 6
LEVEL = 1  # the fastest: level 6 made pods no smaller (2.90x -> 2.91x) and took longer
# The dictionary's length at most: half the window, so that an object of up to as much again
# can match any of it.
MAX_DICTIONARY_BYTES = 4 * 1024
# An object that deflates to fewer bytes saved than this is kept as it is: the saving would
# not pay for the time to inflate it at every read.
MIN_SAVING = 16
# Every CHECK_EVERY objects, the latest object is also deflated against the few objects before
# it (DICTIONARY_SAMPLES of them, joined): if that is BETTER_BY smaller than against the
# dictionary, they become the dictionary. Each replacement doubles the count to the next
# check, so a kind whose objects keep changing makes a handful of dictionaries, not one per
# CHECK_EVERY objects (the objects deflated against an old one keep it alive).
CHECK_EVERY = 256
DICTIONARY_SAMPLES = 4
BETTER_BY = 0.9


def _deflate(body: bytes, zdict: bytes) -> bytes:
    packer = zlib.compressobj(LEVEL, zlib.DEFLATED, WINDOW_BITS, MEMORY_LEVEL, zlib.Z_DEFAULT_STRATEGY, zdict)
    return packer.compress(body) + packer.flush()


class KindDictionary:
    """The dictionary one kind's objects are deflated against. Used from the cache's decoding
    thread and the event loop at once: each compression reads the dictionary once, and what
    it updates only decides when to look for a better one."""

    def __init__(self) -> None:
        self.zdict = b""  # none until the first object
        self._recent: collections.deque[bytes] = collections.deque(maxlen=DICTIONARY_SAMPLES)
        self._check_every = CHECK_EVERY
        self._count = 0

    def compress(self, body: bytes) -> tuple[bytes, bytes] | None:
        """body deflated, with the dictionary it was deflated against; None when it saves too
        little to keep deflated."""
        zdict = self.zdict
        packed = _deflate(body, zdict)
        if not zdict:
            self.zdict = body[-MAX_DICTIONARY_BYTES:]
        else:
            self._count += 1
            if self._count >= self._check_every:
                self._count = 0
                candidate = b"".join(self._recent)[-MAX_DICTIONARY_BYTES:]
                if len(_deflate(body, candidate)) < BETTER_BY * len(packed):
                    self.zdict = candidate
                    self._check_every *= 2
        self._recent.append(body)
        if len(packed) + MIN_SAVING > len(body):
            return None
        return packed, zdict


def inflate(packed: bytes, zdict: bytes) -> bytes:
    """The bytes KindDictionary.compress deflated to `packed` against `zdict`."""
    return zlib.decompressobj(WINDOW_BITS, zdict=zdict).decompress(packed)
