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
