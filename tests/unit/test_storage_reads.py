"""etcd reads during a leader election: the API server asks again for a moment, as etcd's own
client does, instead of answering its caller UNAVAILABLE (CI saw `kubecfg apply` fail on
"etcdserver: leader changed" right after an etcd member came back). Writes are not asked
again: a proposal that timed out may still be committed."""

from __future__ import annotations

import grpc
import pytest
from aetcd import rpc

from services.apiserver import storage as storage_module
from services.apiserver.errors import ApiError
from services.apiserver.storage import Storage


def _etcd_failure(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class FailingThenAnsweringKV:
    """etcd's KV service answering each Range with the next of `failures`, then a key."""

    def __init__(self, failures: list[grpc.aio.AioRpcError]) -> None:
        self.failures = failures
        self.ranges = 0

    async def Range(self, request: rpc.RangeRequest, timeout: float) -> rpc.RangeResponse:
        self.ranges += 1
        if self.failures:
            raise self.failures.pop(0)
        response = rpc.RangeResponse(kvs=[rpc.KeyValue(key=request.key, value=b"v", mod_revision=7)])
        response.header.revision = 7
        return response


def _storage(kv: FailingThenAnsweringKV) -> Storage:
    storage = Storage(["127.0.0.1:2379"])
    storage._kv = kv  # type: ignore[assignment]
    return storage


@pytest.mark.parametrize(
    "details",
    ["etcdserver: leader changed", "etcdserver: no leader", "etcdserver: request timed out"],
)
async def test_a_read_during_an_election_is_answered_once_etcd_has_a_leader(details: str) -> None:
    kv = FailingThenAnsweringKV([_etcd_failure(grpc.StatusCode.UNAVAILABLE, details)] * 2)

    found = await _storage(kv).get(b"/registry/pods/default/web")

    assert found is not None and found.value == b"v" and found.mod_revision == 7
    assert kv.ranges == 3


async def test_an_election_that_lasts_is_unavailable_after_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_module, "READ_ELECTION_WAIT", 0.2)
    kv = FailingThenAnsweringKV([_etcd_failure(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")] * 100)

    with pytest.raises(ApiError) as raised:
        await _storage(kv).get(b"/registry/pods/default/web")

    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert "no leader" in raised.value.message
    assert 2 <= kv.ranges < 10


@pytest.mark.parametrize(
    ("code", "details", "answered"),
    [
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", grpc.StatusCode.UNAVAILABLE),
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large", grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
async def test_other_failures_are_answered_at_once(
    code: grpc.StatusCode, details: str, answered: grpc.StatusCode
) -> None:
    kv = FailingThenAnsweringKV([_etcd_failure(code, details)])

    with pytest.raises(ApiError) as raised:
        await _storage(kv).get(b"/registry/pods/default/web")

    assert raised.value.code == answered
    assert kv.ranges == 1
