"""Coalesces concurrent guarded writes into shared etcd transactions.

Each etcd transaction costs the API server a gRPC call and a watch response to
read back, and etcd a raft round with an fsync, whatever its size; under load
the server's CPU is what bounds the write rate. Writes that arrive while a
transaction is in flight are sent together as the next one: every write's
guard in `compare`, every write in `success`. All of them then commit at one
revision. If any guard fails, the batch is retried write by write, so each
caller still gets its own answer (its revision, or None for a lost guard).

Hold: once transactions usually carry several writes (many clients write at
once), the batch that gathered during a transaction is held for up to `hold`
seconds after it returns, so that the requests the server is still working
through join it. The hold ends early when writes stop arriving for `quiet`
seconds and the batch is already of its usual size (every client has had its
turn; waiting longer would only idle the server), or when the batch is full.
A write that finds the batcher idle, and every write of a lone client, is sent
at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from aetcd import rpc

# etcd's defaults: --max-txn-ops=128 and a 1.5 MiB request limit.
MAX_BATCH_OPS = 128
MAX_BATCH_BYTES = 1024 * 1024
# Hold only once transactions usually (moving average) carry this many writes.
HOLD_MIN_TYPICAL_BATCH = 4.0
# A held batch may go on a pause in arrivals once it has this share of the usual size.
HOLD_USUAL_SHARE = 0.75
_TYPICAL_BATCH_WEIGHT = 0.1  # of the newest transaction in the moving average

SendTxn = Callable[[rpc.TxnRequest], Awaitable[rpc.TxnResponse]]


@dataclass
class _Write:
    key: bytes
    compare: rpc.Compare
    op: rpc.RequestOp
    size: int
    result: asyncio.Future


@dataclass
class _Batch:
    writes: list[_Write] = field(default_factory=list)
    keys: set[bytes] = field(default_factory=set)
    size: int = 0

    def fits(self, write: _Write) -> bool:
        # One key at most once per transaction: etcd rejects duplicates.
        return (
            len(self.writes) < MAX_BATCH_OPS
            and self.size + write.size <= MAX_BATCH_BYTES
            and write.key not in self.keys
        )

    def add(self, write: _Write) -> None:
        self.writes.append(write)
        self.keys.add(write.key)
        self.size += write.size


class TxnBatcher:
    def __init__(
        self,
        send: SendTxn,
        *,
        max_in_flight: int = 1,
        hold: float = 0.0,
        quiet: float = 0.0006,
    ) -> None:
        self._send = send
        self._max_in_flight = max_in_flight
        self._hold = hold
        self._quiet = quiet
        self._in_flight = 0
        self._pending: list[_Batch] = []
        self._flush_scheduled = False
        self._typical_batch = 1.0  # writes per transaction, moving average
        self._last_arrival = 0.0  # event loop time of the latest write
        self._hold_until = 0.0
        self._hold_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    async def write(self, key: bytes, compare: rpc.Compare, op: rpc.RequestOp, size: int) -> int | None:
        """Commits op if compare holds; returns the revision, or None if it did not."""
        loop = asyncio.get_running_loop()
        write = _Write(key, compare, op, size, loop.create_future())
        if not self._pending or not self._pending[-1].fits(write):
            self._pending.append(_Batch())
        self._pending[-1].add(write)
        self._last_arrival = loop.time()
        if self._hold_timer is not None:
            if len(self._pending) > 1:  # the held batch is full
                self._flush()
        elif not self._flush_scheduled and self._in_flight < self._max_in_flight:
            # Flush after this turn of the loop, so writes submitted together share a batch.
            # (With a transaction in flight, its return sends or holds the next batch.)
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await write.result

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        while self._pending and self._in_flight < self._max_in_flight:
            batch = self._pending.pop(0)
            self._in_flight += 1
            task = asyncio.create_task(self._commit(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _next(self, committed: int) -> None:
        """A transaction returned: send what gathered meanwhile, or hold it."""
        self._typical_batch += (committed - self._typical_batch) * _TYPICAL_BATCH_WEIGHT
        if self._hold and len(self._pending) == 1 and self._typical_batch >= HOLD_MIN_TYPICAL_BATCH:
            loop = asyncio.get_running_loop()
            self._hold_until = loop.time() + self._hold
            self._hold_timer = loop.call_at(min(self._last_arrival + self._quiet, self._hold_until), self._check_hold)
        else:
            self._flush()

    def _check_hold(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        quiet_from = self._last_arrival + self._quiet
        usual_size = len(self._pending[0].writes) >= self._typical_batch * HOLD_USUAL_SHARE if self._pending else True
        if (now >= quiet_from and usual_size) or now >= self._hold_until:
            self._flush()
        else:
            wake = quiet_from if now < quiet_from else now + self._quiet
            self._hold_timer = loop.call_at(min(wake, self._hold_until), self._check_hold)

    async def _commit(self, batch: _Batch) -> None:
        try:
            writes = batch.writes
            response = await self._send(
                rpc.TxnRequest(compare=[w.compare for w in writes], success=[w.op for w in writes])
            )
            if response.succeeded or len(writes) == 1:
                revision = response.header.revision if response.succeeded else None
                for w in writes:
                    _resolve(w.result, revision)
                return
            # A failed guard in a batch: each write on its own, so only its owner loses.
            responses = await asyncio.gather(
                *(self._send(rpc.TxnRequest(compare=[w.compare], success=[w.op])) for w in writes),
                return_exceptions=True,
            )
            for w, response in zip(writes, responses, strict=True):
                if isinstance(response, BaseException):
                    _fail(w.result, response)
                else:
                    _resolve(w.result, response.header.revision if response.succeeded else None)
        except BaseException as error:
            for w in batch.writes:
                _fail(w.result, error)
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            self._in_flight -= 1
            self._next(len(batch.writes))


def _resolve(future: asyncio.Future, value: int | None) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
