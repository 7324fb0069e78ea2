"""Expectations under a lagging watch: the replicator's view of pods trails its own writes by
seconds, its status writes are slow (pod events keep arriving while a sync waits on one), and it
is poked to sync again and again meanwhile; it must still create and delete exactly the
difference, once."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common.client import ApiClient
from services.common.runtime.informer import Informer
from services.common.resources import PODS, REPLICATION_CONTROLLERS
from services.common.runtime import Manager
from services.replicator.manager import ReplicationManager
from tests.polling import eventually

from .apihelpers import make_rc, scale
from .control_helpers import ControlPlane, PodCreations, pods_in

LAG = 0.2  # per pod event: ten creations take two seconds to show


class LaggingInformer(Informer):
    """Delivers every event late, as a slow or congested watch would."""

    async def _apply(self, event_type, obj) -> None:
        await asyncio.sleep(LAG)
        await super()._apply(event_type, obj)


class SlowStatusClient(ApiClient):
    """Status writes take a while: pod events keep arriving while a sync waits on one."""

    async def update_status(self, obj):
        await asyncio.sleep(2 * LAG)
        return await super().update_status(obj)


@pytest.fixture(scope="module")
def plane():
    control = ControlPlane("")
    yield control
    control.stop()


@pytest.fixture
def api_address(plane) -> str:
    return plane.address


@pytest.fixture
async def lagging_replicator(plane):
    client = SlowStatusClient(plane.address)
    manager = Manager(client, name="test-replicator")
    manager.use_informer(LaggingInformer(client, PODS))
    replicator = ReplicationManager(resync_period=0.3)
    manager.add(replicator)
    task = asyncio.create_task(manager.run())
    yield replicator
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await client.close()


async def poke(api: ApiClient, namespace: str, name: str, times: int) -> None:
    """Changes the controller's annotations: each change is an event that makes it sync again."""
    for i in range(times):
        rc = await api.get(REPLICATION_CONTROLLERS, name, namespace)
        rc.metadata.annotations["poke"] = str(i)
        try:
            await api.update(rc)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ABORTED:
                raise
        await asyncio.sleep(0.05)


def status_replicas(api: ApiClient, namespace: str, name: str, replicas: int):
    async def check():
        rc = await api.get(REPLICATION_CONTROLLERS, name, namespace)
        assert rc.status.replicas == replicas, f"status.replicas={rc.status.replicas}"
        return rc

    return check


async def test_lagging_watch_never_over_creates_or_over_deletes(lagging_replicator, api, namespace):
    async with PodCreations(api, namespace) as creations:
        await api.create(make_rc("web", namespace, {"app": "web"}, replicas=10))
        await poke(api, namespace, "web", 20)
        # The replicator itself must see all ten before it reports them.
        await eventually(
            status_replicas(api, namespace, "web", 10),
            what="the replicator to see 10 pods",
            timeout=60,
            interval=0.1,
            retry_on=(grpc.aio.AioRpcError,),
        )
        await poke(api, namespace, "web", 5)
        assert len(await pods_in(api, namespace)) == 10
        assert len(creations.names) == 10, creations.names

        await scale(api, namespace, "web", 4)
        await poke(api, namespace, "web", 20)
        await eventually(
            status_replicas(api, namespace, "web", 4),
            what="the replicator to see 4 pods",
            timeout=60,
            interval=0.1,
            retry_on=(grpc.aio.AioRpcError,),
        )
        await poke(api, namespace, "web", 5)
        assert len(await pods_in(api, namespace)) == 4
        assert len(creations.names) == 10, creations.names  # nothing re-created after the deletions
