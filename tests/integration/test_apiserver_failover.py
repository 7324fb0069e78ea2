"""Two API servers over one etcd, and clients that know both (issue 14's highly available
control plane): when one is killed, calls go on through the other, every acknowledged write
is there, and a watch resumes on the other with no event missed or repeated."""

from __future__ import annotations

import asyncio
import time
from typing import Iterator

import grpc
import pytest

from services.common.client import ApiClient
from services.common.resources import PODS
from services.common.runtime.informer import Informer
from tests.polling import eventually
from tools.processes import ApiServerProcess

from .apihelpers import make_pod


@pytest.fixture
def replicas(etcd_endpoint: str) -> Iterator[list[ApiServerProcess]]:
    servers = [ApiServerProcess(etcd_endpoint, "--controllers=") for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


async def test_a_killed_api_server_is_failed_over_with_nothing_lost(replicas, namespace):
    client = ApiClient(",".join(server.address for server in replicas), timeout=5)
    seen: list[str] = []
    informer = Informer(client, PODS, namespace=namespace)
    informer.add_handler(lambda event, pod, old: seen.append(f"{event} {pod.metadata.name}"))
    watching = asyncio.create_task(informer.run())
    acknowledged: list[str] = []
    failures: list[str] = []
    try:
        await informer.wait_synced(10)

        async def write(count: int) -> None:
            for _ in range(count):
                name = f"p{len(acknowledged) + len(failures):03}"
                try:
                    await client.create(make_pod(name, namespace))
                    acknowledged.append(name)
                except grpc.aio.AioRpcError as error:
                    # Only an outage may fail a write, never the client's request.
                    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), error
                    failures.append(name)
                await asyncio.sleep(0.02)

        await write(20)
        killed_at = time.monotonic()
        replicas[0].kill()
        await write(60)
        # Written through the other replica once the first was gone: how long that took is
        # bench material (bench/chaos); here, that it happened and nothing was lost.
        first_after = next(i for i, name in enumerate(acknowledged) if i >= 20)
        print(f"first write acknowledged {time.monotonic() - killed_at:.2f} s after the kill "
              f"(write #{first_after}); {len(failures)} failed during the failover")
        assert len(acknowledged) >= 60, failures

        async def every_write_stored_and_seen() -> bool:
            stored = {pod.metadata.name for pod in (await client.list(PODS, namespace)).items}
            assert set(acknowledged) <= stored, set(acknowledged) - stored
            added = [entry.split()[1] for entry in seen if entry.startswith("ADDED ")]
            assert sorted(added) == sorted(stored), (sorted(added), sorted(stored))  # no gap, no repeat
            return True

        await eventually(every_write_stored_and_seen, what="every acknowledged pod stored and watched once",
                         timeout=20, retry_on=(grpc.aio.AioRpcError,))
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await client.close()
