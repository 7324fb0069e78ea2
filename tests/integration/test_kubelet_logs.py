"""The kubelet's Logs RPC streams a container's output (tail, follow, errors)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from kybernetes.v1 import kubelet_pb2, kubelet_pb2_grpc, pod_pb2
from tests.integration.kubelet_helpers import (
    KubeletProcess,
    container,
    is_running,
    make_pod,
    sleeper,
)
from tests.polling import eventually

pytestmark = pytest.mark.docker


async def _logs(kubelet: KubeletProcess, request: kubelet_pb2.PodLogsRequest) -> bytes:
    async with kubelet.channel() as channel:
        stub = kubelet_pb2_grpc.KubeletStub(channel)
        chunks = [chunk.data async for chunk in stub.Logs(request, timeout=15)]
    return b"".join(chunks)


async def _running(kubelet: KubeletProcess, name: str) -> pod_pb2.Pod | None:
    pod = await kubelet.get_pod(name)
    return pod if is_running(pod) else None


async def test_logs_tail_and_follow(kubelet: KubeletProcess) -> None:
    talker = container(
        "talker", "sh", "-c",
        "trap 'exit 0' TERM; for i in 1 2 3 4 5; do echo line-$i; done; echo to-stderr >&2; "
        "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.5; done",
    )
    await kubelet.submit(make_pod("talk", talker, sleeper("quiet")))
    await eventually(lambda: _running(kubelet, "talk"), what="pod running")

    async def has_ticks() -> bytes | None:
        data = await _logs(kubelet, kubelet_pb2.PodLogsRequest(name="talk", container="talker"))
        return data if b"tick-2" in data else None

    everything = await eventually(has_ticks, what="logs with ticks")
    lines = everything.split(b"\n")
    assert b"to-stderr" in lines  # stderr too, in no fixed order against stdout
    assert [line for line in lines if line != b"to-stderr"][:5] == [b"line-%d" % i for i in range(1, 6)]

    last = await _logs(kubelet, kubelet_pb2.PodLogsRequest(name="talk", container="talker", tail_lines=1))
    assert last.count(b"\n") == 1 and last.startswith(b"tick-"), last

    stamped = await _logs(
        kubelet, kubelet_pb2.PodLogsRequest(name="talk", container="talker", tail_lines=1, timestamps=True)
    )
    assert stamped[:4].isdigit() and b" tick-" in stamped, stamped  # "2026-...Z tick-N"

    # Follow: new lines keep arriving on the same stream.
    async with kubelet.channel() as channel:
        stub = kubelet_pb2_grpc.KubeletStub(channel)
        call = stub.Logs(kubelet_pb2.PodLogsRequest(name="talk", container="talker", follow=True, tail_lines=1))
        seen = b""
        try:
            async def read_until_new_ticks() -> None:
                nonlocal seen
                async for chunk in call:
                    seen += chunk.data
                    if seen.count(b"tick-") >= 3:
                        return

            await asyncio.wait_for(read_until_new_ticks(), 20)
        finally:
            call.cancel()
    assert seen.count(b"tick-") >= 3


async def test_logs_errors(kubelet: KubeletProcess) -> None:
    await kubelet.submit(make_pod("two", sleeper("a"), sleeper("b")))
    await eventually(lambda: _running(kubelet, "two"), what="pod running")
    cases = [
        (kubelet_pb2.PodLogsRequest(name="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (kubelet_pb2.PodLogsRequest(name="two"), grpc.StatusCode.INVALID_ARGUMENT, "container"),
        (kubelet_pb2.PodLogsRequest(name="two", container="c"), grpc.StatusCode.INVALID_ARGUMENT, '"c"'),
        (kubelet_pb2.PodLogsRequest(name=""), grpc.StatusCode.INVALID_ARGUMENT, "name"),
    ]
    for request, code, fragment in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _logs(kubelet, request)
        assert raised.value.code() == code, request
        assert fragment in raised.value.details()
    # The pod's full name works too.
    assert await _logs(kubelet, kubelet_pb2.PodLogsRequest(name=f"two-{kubelet.node}", container="a")) == b""
