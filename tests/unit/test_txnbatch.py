"""The write batcher: concurrent guarded writes share transactions, answers stay per write."""

from __future__ import annotations

import asyncio

from aetcd import rpc

from services.apiserver.txnbatch import MAX_BATCH_OPS, TxnBatcher


class FakeEtcd:
    """Create-if-absent semantics over a dict, recording each transaction's size."""

    def __init__(self) -> None:
        self.keys: set[bytes] = set()
        self.revision = 1
        self.transactions: list[int] = []

    async def send(self, request: rpc.TxnRequest) -> rpc.TxnResponse:
        await asyncio.sleep(0.001)
        keys = [op.request_put.key for op in request.success]
        assert len(set(keys)) == len(keys), "etcd rejects a key twice in one transaction"
        self.transactions.append(len(keys))
        if any(key in self.keys for key in keys):
            return rpc.TxnResponse(succeeded=False, header=rpc.ResponseHeader(revision=self.revision))
        self.keys.update(keys)
        self.revision += 1
        return rpc.TxnResponse(succeeded=True, header=rpc.ResponseHeader(revision=self.revision))


def create(batcher: TxnBatcher, key: bytes):
    compare = rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0)
    op = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b"v"))
    return batcher.write(key, compare, op, len(key) + 1)


async def test_concurrent_writes_share_transactions():
    etcd = FakeEtcd()
    batcher = TxnBatcher(etcd.send)
    results = await asyncio.gather(*(create(batcher, f"k{i}".encode()) for i in range(300)))
    assert all(isinstance(r, int) for r in results)
    assert len(etcd.keys) == 300
    assert len(etcd.transactions) < 10
    assert max(etcd.transactions) <= MAX_BATCH_OPS


async def test_a_lost_guard_fails_only_its_own_write():
    etcd = FakeEtcd()
    etcd.keys.add(b"taken")
    batcher = TxnBatcher(etcd.send)
    keys = [b"a", b"taken", b"b", b"c"]
    results = await asyncio.gather(*(create(batcher, key) for key in keys))
    assert results[1] is None
    assert all(isinstance(r, int) for i, r in enumerate(results) if i != 1)
    assert etcd.keys == {b"a", b"b", b"c", b"taken"}


async def test_same_key_twice_goes_in_separate_transactions():
    etcd = FakeEtcd()
    batcher = TxnBatcher(etcd.send)
    first, second = await asyncio.gather(create(batcher, b"same"), create(batcher, b"same"))
    assert sorted([first is None, second is None]) == [False, True]


async def test_transport_errors_reach_every_caller():
    async def broken(request):
        raise ConnectionError("etcd is down")

    batcher = TxnBatcher(broken)
    results = await asyncio.gather(*(create(batcher, f"k{i}".encode()) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


class GatedEtcd:
    """Create-if-absent over a set; transactions wait while the test keeps the gate shut."""

    def __init__(self) -> None:
        self.revision = 1
        self.transactions: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, request: rpc.TxnRequest) -> rpc.TxnResponse:
        self.transactions.append(len(request.success))
        await self.gate.wait()
        self.revision += 1
        return rpc.TxnResponse(succeeded=True, header=rpc.ResponseHeader(revision=self.revision))


def submit(batcher: TxnBatcher, key: str) -> asyncio.Future:
    """A write started now, as a future the test can await later."""
    return asyncio.ensure_future(create(batcher, key.encode()))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def busy(batcher: TxnBatcher, etcd: GatedEtcd) -> None:
    """Many clients at once: transactions come to carry many writes."""
    for round_ in range(3):
        await asyncio.gather(*(submit(batcher, f"busy{round_}-{i}") for i in range(20)))
    etcd.transactions.clear()


async def start_transaction_with_waiting_writes(batcher: TxnBatcher, etcd: GatedEtcd, waiting: int):
    etcd.gate.clear()
    first = submit(batcher, "first")
    await settle()
    others = [submit(batcher, f"waiting{i}") for i in range(waiting)]
    await settle()
    etcd.gate.set()
    await first
    return others


async def test_a_lone_client_is_never_held():
    etcd = GatedEtcd()
    batcher = TxnBatcher(etcd.send, hold=3600, quiet=3600)
    await busy(batcher, etcd)
    for i in range(3):
        await asyncio.wait_for(submit(batcher, f"lone{i}"), 30)
    assert etcd.transactions == [1, 1, 1]


async def test_under_load_writes_arriving_after_a_transaction_join_the_waiting_batch():
    etcd = GatedEtcd()
    batcher = TxnBatcher(etcd.send, hold=3600, quiet=0.05)
    await busy(batcher, etcd)
    waiting = await start_transaction_with_waiting_writes(batcher, etcd, 4)
    late = submit(batcher, "late")  # arrives after "first" came back
    results = await asyncio.wait_for(asyncio.gather(*waiting, late), 30)
    assert len(set(results)) == 1  # one transaction, one revision
    assert etcd.transactions == [1, 5]


async def test_without_load_waiting_writes_go_at_once():
    etcd = GatedEtcd()
    batcher = TxnBatcher(etcd.send, hold=3600, quiet=3600)
    waiting = await start_transaction_with_waiting_writes(batcher, etcd, 2)
    await asyncio.wait_for(asyncio.gather(*waiting), 30)
    assert etcd.transactions == [1, 2]


async def test_a_held_batch_goes_when_full():
    etcd = GatedEtcd()
    batcher = TxnBatcher(etcd.send, hold=0.2, quiet=3600)
    await busy(batcher, etcd)
    waiting = await start_transaction_with_waiting_writes(batcher, etcd, 4)
    # Fills the held batch and starts another one.
    more = [submit(batcher, f"more{i}") for i in range(MAX_BATCH_OPS - 4 + 1)]
    await asyncio.wait_for(asyncio.gather(*waiting, *more[:-1]), 30)
    assert etcd.transactions[:2] == [1, MAX_BATCH_OPS]
    await asyncio.wait_for(more[-1], 30)
