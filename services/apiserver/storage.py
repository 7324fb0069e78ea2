"""etcd access for the API server: guarded transactions, ranges and a raw watch.

We use aetcd's generated etcd v3 messages and stubs, over our own channel: the
API needs the response headers' revisions, prev_kv on deletes, and watch
progress, which aetcd's convenience wrappers drop, and etcd is reached over TLS
with the API server's client certificate, which aetcd's client cannot do.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, Sequence, TypeAlias

import grpc
from aetcd import rpc

from services.common.transport import FAST_RECONNECT, ClientCredentials, aio_channel
from services.common.validation import show_value

from .errors import ApiError
from .txnbatch import TxnBatcher

_RANGE_END_ALL = b"\0"
# How long a batch of writes may wait for more under load (see txnbatch):
# long enough to gather a busy server's in-progress requests, short beside
# the latency a client sees at that load.
WRITE_HOLD = 0.005


def prefix_range_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with prefix."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return _RANGE_END_ALL


def etcd_target(endpoints: list[str]) -> str:
    """The members' HOST:PORT addresses as one target (see transport.channel_target: several
    are balanced and failed over across)."""
    cleaned = [e.removeprefix("http://").removeprefix("https://").rstrip("/") for e in endpoints if e]
    if not cleaned:
        raise ValueError("--etcd-servers: at least one endpoint is required")
    return ",".join(cleaned)


@dataclass(slots=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int


@dataclass(slots=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int  # the store revision the range was read at
    more: bool


@dataclass(slots=True)
class WatchEvent:
    deleted: bool
    key: bytes
    value: bytes  # the new value (PUT) or the last value before deletion (DELETE)
    prev_value: bytes | None
    revision: int


@dataclass(slots=True)
class WatchBatch:
    """One etcd watch response: its events, or an empty progress report."""

    events: list[WatchEvent]
    revision: int


@dataclass(slots=True)
class TxnResult:
    """A multi-key transaction's outcome (Storage.transaction)."""

    succeeded: bool
    revision: int  # the revision it committed at, or the store's when it did not
    # When it did not: every guarded key as it is now (None: absent), read in the same transaction.
    current: dict[bytes, KeyValue | None]


# One guard and one operation of a multi-key transaction. They are etcd's
# messages, built only by the functions below: callers need not know etcd.
Compare: TypeAlias = rpc.Compare
Op: TypeAlias = rpc.RequestOp


def absent(key: bytes) -> Compare:
    """Guard: key does not exist."""
    return rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0)


def at_revision(key: bytes, mod_revision: int) -> Compare:
    """Guard: key was last written at mod_revision (0: it does not exist)."""
    return rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=mod_revision)


def put(key: bytes, value: bytes) -> Op:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))


def delete(key: bytes) -> Op:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def delete_if_value(key: bytes, value: bytes) -> Op:
    """Deletes key only while it holds value (a nested transaction: never fails the outer one)."""
    return rpc.RequestOp(
        request_txn=rpc.TxnRequest(
            compare=[rpc.Compare(key=key, target=rpc.Compare.VALUE, result=rpc.Compare.EQUAL, value=value)],
            success=[delete(key)],
        )
    )


@dataclass
class LeaseReuse:
    """Which etcd lease a write with a time to live goes with (kube-apiserver's lease manager,
    storage/etcd3/lease_manager.go): one lease is granted for ttl plus a reuse window
    (5% of ttl, at most a minute) and shared by every such write in that window, up to
    `max_objects`, so a thousand events a minute cost etcd one lease, not a thousand; each key
    still lives at least ttl. Pure: the clock is the caller's."""

    reuse_seconds: int = 60
    reuse_share: float = 0.05
    max_objects: int = 1000
    lease_id: int = 0
    expires: float = 0.0  # when the current lease runs out
    ttl: int = 0  # the ttl it was granted for
    attached: int = 0

    def reuse_window(self, ttl: int) -> int:
        return min(int(ttl * self.reuse_share), self.reuse_seconds)

    def reuse(self, ttl: int, now: float) -> int | None:
        """The current lease if it fits a write of ttl at now (counted), else None: grant one."""
        if not self.lease_id or ttl != self.ttl or self.attached >= self.max_objects:
            return None
        valid = now + ttl < self.expires  # outlives the key's ttl
        sufficient = now + ttl + self.reuse_window(ttl) >= self.expires  # not longer than the window
        if not (valid and sufficient):
            return None
        self.attached += 1
        return self.lease_id

    def granted(self, lease_id: int, ttl: int, now: float) -> None:
        self.lease_id, self.ttl, self.attached = lease_id, ttl, 1
        self.expires = now + ttl + self.reuse_window(ttl)

    def forget(self) -> None:
        self.lease_id = 0


class CompactedError(Exception):
    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest available {compact_revision})")
        self.compact_revision = compact_revision


def _kv(kv: rpc.KeyValue) -> KeyValue:
    return KeyValue(kv.key, kv.value, kv.mod_revision, kv.create_revision)


# etcd's answers that are about the request, not etcd's health (its v3rpc errors): a
# client must not retry them forever as it would an UNAVAILABLE.
_REQUEST_ERRORS = {
    grpc.StatusCode.OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,  # a future or compacted revision
    grpc.StatusCode.INVALID_ARGUMENT: grpc.StatusCode.RESOURCE_EXHAUSTED,  # "request is too large", too many ops
    grpc.StatusCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,  # quota: etcd's space is full
}


# etcd's answers while its members elect a leader (v3rpc's ErrGRPCLeaderChanged, ErrGRPCNoLeader,
# ErrGRPCTimeout...). A read may be asked again, as etcd's own client does with every read
# that fails UNAVAILABLE; an election takes about a second (etcd's election timeout).
# Writes are not: a proposal that timed out may still be committed.
_ELECTION_ERRORS = ("leader changed", "no leader", "request timed out")
READ_ELECTION_WAIT = 3.0
_FIRST_READ_RETRY = 0.05


def during_election(error: grpc.aio.AioRpcError) -> bool:
    details = error.details() or ""
    return error.code() == grpc.StatusCode.UNAVAILABLE and any(text in details for text in _ELECTION_ERRORS)


def _etcd_error(error: grpc.aio.AioRpcError) -> ApiError:
    """What an etcd failure means to the API's caller: the request's fault (the code
    above), else etcd being out of reach (UNAVAILABLE)."""
    code = _REQUEST_ERRORS.get(error.code(), grpc.StatusCode.UNAVAILABLE)
    return ApiError(code, f"etcd: {error.code().name}: {show_value(error.details() or '')}")


class Storage:
    """A connection to etcd with the handful of operations the registry needs."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        timeout: float = 10.0,
        write_hold: float = WRITE_HOLD,
        credentials: ClientCredentials | None = None,
    ) -> None:
        self.target = etcd_target(endpoints)
        self._credentials = credentials
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._kv: rpc.KVStub | None = None
        # One transaction in flight: writes that arrive meanwhile form the next
        # batch, held up to write_hold seconds when many clients write at once.
        self._batcher = TxnBatcher(self._txn, max_in_flight=1, hold=write_hold)
        self._leases = LeaseReuse()
        self._lease_lock = asyncio.Lock()

    async def connect(self) -> None:
        if self._channel is None:
            self._channel = aio_channel(
                self.target,
                self._credentials,
                [
                    ("grpc.max_receive_message_length", 512 * 1024 * 1024),
                    ("grpc.keepalive_time_ms", 10_000),
                    ("grpc.keepalive_timeout_ms", 5_000),
                    # Back within a second of etcd's return: gRPC's default reconnect back-off
                    # grows to 120 s, and writes came back 5.9 s after a 10 s outage (issue 14, D12).
                    *FAST_RECONNECT,
                ],
            )
            self._kv = rpc.KVStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
            self._kv = None

    @property
    def _kv_stub(self) -> rpc.KVStub:
        if self._kv is None:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "etcd: not connected")
        return self._kv

    async def _txn(self, request: rpc.TxnRequest) -> rpc.TxnResponse:
        try:
            return await self._kv_stub.Txn(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            if "lease not found" in (error.details() or ""):
                self._leases.forget()  # revoked or expired: the next write gets a new one
            raise _etcd_error(error) from error

    async def lease(self, ttl: int) -> int:
        """An etcd lease that keeps a key at least ttl seconds (shared, see LeaseReuse)."""
        async with self._lease_lock:
            now = time.monotonic()
            lease_id = self._leases.reuse(ttl, now)
            if lease_id is not None:
                return lease_id
            granted_ttl = ttl + self._leases.reuse_window(ttl)
            if self._channel is None:
                raise ApiError(grpc.StatusCode.UNAVAILABLE, "etcd: not connected")
            try:
                response = await rpc.LeaseStub(self._channel).LeaseGrant(
                    rpc.LeaseGrantRequest(TTL=granted_ttl), timeout=self._timeout
                )
            except grpc.aio.AioRpcError as error:
                raise _etcd_error(error) from error
            self._leases.granted(response.ID, ttl, now)
            return int(response.ID)

    async def get(self, key: bytes) -> KeyValue | None:
        result = await self.range(key)
        return result.kvs[0] if result.kvs else None

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        limit: int = 0,
        revision: int = 0,
        count_only: bool = False,
    ) -> RangeResult:
        request = rpc.RangeRequest(
            key=key,
            range_end=range_end or b"",
            limit=limit,
            revision=revision,
            count_only=count_only,
        )
        give_up = time.monotonic() + READ_ELECTION_WAIT
        retry_in = _FIRST_READ_RETRY
        while True:
            try:
                response = await self._kv_stub.Range(request, timeout=self._timeout)
                break
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (error.details() or ""):
                    raise CompactedError(0) from error
                if not during_election(error) or time.monotonic() + retry_in > give_up:
                    raise _etcd_error(error) from error
            await asyncio.sleep(retry_in)
            retry_in *= 2
        return RangeResult([_kv(kv) for kv in response.kvs], response.header.revision, response.more)

    async def current_revision(self) -> int:
        # A count-only range on an empty key range is the cheapest read of the header.
        return (await self.range(b"\0", b"\0", count_only=True)).revision

    async def is_compacted(self, revision: int) -> bool:
        """Whether etcd can no longer serve history at `revision`."""
        try:
            await self.range(b"\0", b"\0", revision=revision, count_only=True)
        except CompactedError:
            return True
        except ApiError:
            raise
        return False

    async def create(self, key: bytes, value: bytes, *, lease: int = 0) -> int | None:
        """Puts key if absent (attached to lease, when given); returns the new revision, or
        None when it exists."""
        return await self._batcher.write(
            key,
            rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0),
            rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease)),
            len(key) + len(value),
        )

    async def update(self, key: bytes, value: bytes, expected_mod_revision: int, *, lease: int = 0) -> int | None:
        """Puts key if it is still at expected_mod_revision (attached to lease, when given);
        returns the new revision, or None when somebody changed or deleted it meanwhile."""
        return await self._batcher.write(
            key,
            rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=expected_mod_revision),
            rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease)),
            len(key) + len(value),
        )

    async def delete(self, key: bytes, expected_mod_revision: int) -> int | None:
        """Deletes key if it is still at expected_mod_revision; returns the
        deletion's revision, or None on a conflict."""
        return await self._batcher.write(
            key,
            rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=expected_mod_revision),
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)),
            len(key),
        )

    async def transaction(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        """All of ops, at one revision, if every compare holds; else nothing, and
        the guarded keys as they are (read by the same transaction, so no race).

        Sent on its own, not through the write batcher: a batch's failed guard
        is retried write by write, which a many-key write cannot be split into.
        Meant for rare writes (a service with its allocations); single-key
        writes go through create/update/delete.
        """
        request = rpc.TxnRequest(
            compare=list(compares),
            success=list(ops),
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=c.key)) for c in compares],
        )
        response = await self._txn(request)
        if response.succeeded:
            return TxnResult(True, response.header.revision, {})
        current: dict[bytes, KeyValue | None] = {}
        for compare, op in zip(compares, response.responses, strict=True):
            kvs = op.response_range.kvs
            current[compare.key] = _kv(kvs[0]) if kvs else None
        return TxnResult(False, response.header.revision, current)

    async def compact(self, revision: int) -> None:
        await self._kv_stub.Compact(rpc.CompactionRequest(revision=revision, physical=True), timeout=self._timeout)

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Every change under prefix from start_revision on, in order.

        Raises CompactedError when start_revision is gone, ApiError(UNAVAILABLE)
        when the stream breaks.
        """
        requests: asyncio.Queue[rpc.WatchRequest | None] = asyncio.Queue()
        await requests.put(
            rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(
                    key=prefix,
                    range_end=prefix_range_end(prefix),
                    start_revision=start_revision,
                    prev_kv=True,
                )
            )
        )

        async def request_stream() -> AsyncIterator[rpc.WatchRequest]:
            while (request := await requests.get()) is not None:
                yield request

        if self._channel is None:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "etcd: not connected")
        call = rpc.WatchStub(self._channel).Watch(request_stream())
        try:
            async for response in call:
                if response.compact_revision:
                    raise CompactedError(response.compact_revision)
                if response.canceled:
                    raise ApiError(grpc.StatusCode.UNAVAILABLE, f"etcd cancelled the watch: {response.cancel_reason}")
                if response.created and not response.events:
                    continue
                events = []
                for event in response.events:
                    deleted = event.type == rpc.Event.DELETE
                    prev = event.prev_kv.value if event.HasField("prev_kv") else None
                    events.append(
                        WatchEvent(
                            deleted=deleted,
                            key=event.kv.key,
                            value=prev if deleted and prev is not None else event.kv.value,
                            prev_value=prev,
                            revision=event.kv.mod_revision,
                        )
                    )
                yield WatchBatch(events, response.header.revision)
        except grpc.aio.AioRpcError as error:
            raise _etcd_error(error) from error
        finally:
            await requests.put(None)
            call.cancel()
