"""Node lifecycle with short timeouts: a node that stops heartbeating is marked not ready, its
pods leave the endpoints at once and are deleted after the eviction timeout, and their
controller recreates them on the live node. The test plays the kubelets."""

from __future__ import annotations

import asyncio
import collections

import grpc
import pytest

from kybernetes.v1 import node_pb2
from services.common.client import ApiClient
from services.apiserver.nodelifecycle import NODE_LEASE_NAMESPACE
from services.common.resources import ENDPOINTS, LEASES, NODES, PODS
from services.kubelet.nodelease import renewed_lease
from tests.polling import eventually

from .apihelpers import make_pod, make_rc, make_service
from .control_helpers import (
    API_WAIT,
    ControlPlane,
    FakeKubelets,
    Heartbeats,
    add_node,
    pods_in,
    ready_condition,
    stamp,
)

GRACE = 3
EVICTION = 3


@pytest.fixture(scope="module")
def plane():
    control = ControlPlane(
        "scheduler,endpoints,nodelifecycle",
        f"--node-monitor-grace-period={GRACE}",
        f"--pod-eviction-timeout={EVICTION}",
        replicator=True,
    )
    yield control
    control.stop()


@pytest.fixture
def api_address(plane) -> str:
    return plane.address


def node_ready(node: node_pb2.Node) -> node_pb2.NodeCondition | None:
    for condition in node.status.conditions:
        if condition.type == "Ready":
            return condition
    return None


def node_status_becomes(api: ApiClient, name: str, status: str):
    async def check():
        condition = node_ready(await api.get(NODES, name))
        assert condition is not None and condition.status == status, f"Ready={condition.status if condition else None}"
        return condition

    return check


async def test_pods_of_a_silent_node_leave_endpoints_then_move_to_a_live_node(api, namespace):
    live, silent = f"{namespace}-live", f"{namespace}-silent"
    for name in (live, silent):
        await add_node(api, name)
    kubelets = FakeKubelets(api, namespace, nodes={live, silent})
    async with Heartbeats(api, [live, silent]) as beats:
        try:
            await api.create(make_service("web", namespace, {"app": "web"}))
            await api.create(make_rc("web", namespace, {"app": "web"}, replicas=4))

            def running_on(expected: dict[str, int]):
                async def check():
                    await kubelets.start_bound_pods()
                    pods = [
                        p for p in await pods_in(api, namespace, "app=web")
                        if p.status.phase == "Running" and not p.metadata.HasField("deletion_timestamp")
                    ]
                    placed = collections.Counter(p.spec.node_name for p in pods)
                    assert placed == expected, str(dict(placed))
                    return pods or True  # an empty list would read as "not yet"

                return check

            await eventually(
                running_on({live: 2, silent: 2}),
                what="2 pods running on each node",
                **API_WAIT,
            )

            def endpoints(ready: int, not_ready: int):
                async def check():
                    ep = await api.get(ENDPOINTS, "web", namespace)
                    counts = (
                        sum(len(s.addresses) for s in ep.subsets),
                        sum(len(s.not_ready_addresses) for s in ep.subsets),
                    )
                    assert counts == (ready, not_ready), str(counts)
                    return ep

                return check

            await eventually(
                endpoints(4, 0), what="4 ready endpoints", **API_WAIT
            )
            silent_pods = {p.metadata.name for p in await pods_in(api, namespace) if p.spec.node_name == silent}

            # The silent node's kubelet stops: no heartbeats, no pods started there.
            beats.names.discard(silent)
            kubelets.nodes.discard(silent)
            condition = await eventually(
                node_status_becomes(api, silent, "Unknown"),
                what="the silent node to be Unknown",
                **API_WAIT,
            )
            assert condition.reason == "NodeStatusUnknown"

            async def silent_pods_not_ready():
                pods = [await api.get(PODS, name, namespace) for name in silent_pods]
                assert all(ready_condition(p) == "False" for p in pods), str([ready_condition(p) for p in pods])
                return True

            await eventually(
                silent_pods_not_ready,
                what="the silent node's pods to be marked not ready",
                **API_WAIT,
            )
            ep = await eventually(
                endpoints(2, 2),
                what="their endpoints to be not ready",
                **API_WAIT,
            )
            assert {a.target_ref.name for s in ep.subsets for a in s.not_ready_addresses} == silent_pods

            # After the eviction timeout they are deleted and recreated on the live node. Their
            # deletion is graceful: with no kubelet to finish it they stay, terminating (as in
            # Kubernetes, until the node comes back or is deleted), out of the count.
            await eventually(
                running_on({live: 4}),
                what="4 pods running on the live node",
                timeout=60,
                interval=0.1,
                retry_on=(grpc.aio.AioRpcError,),
            )
            remaining = {p.metadata.name: p for p in await pods_in(api, namespace)}
            assert all(remaining[name].metadata.HasField("deletion_timestamp") for name in silent_pods & set(remaining))
            await eventually(
                endpoints(4, 0),
                what="4 ready endpoints again",
                **API_WAIT,
            )
            assert node_ready(await api.get(NODES, live)).status == "True"
        finally:
            for name in (live, silent):
                await api.delete(NODES, name)


async def test_pods_of_a_node_that_comes_back_in_time_are_ready_again_and_stay(api, namespace):
    name = f"{namespace}-blip"
    await add_node(api, name)
    kubelets = FakeKubelets(api, namespace, nodes={name})
    try:
        async with Heartbeats(api, [name]) as beats:
            await api.create(make_service("web", namespace, {"app": "web"}))
            await api.create(make_pod("web", namespace, {"app": "web"}, node=name))
            await kubelets.start_bound_pods()

            def pod_ready_is(status: str):
                async def check():
                    pod = await api.get(PODS, "web", namespace)
                    assert ready_condition(pod) == status, f"Ready={ready_condition(pod)!r}"
                    return pod

                return check

            def endpoint_ready(ready: bool):
                async def check():
                    ep = await api.get(ENDPOINTS, "web", namespace)
                    names = {
                        a.target_ref.name for s in ep.subsets for a in (s.addresses if ready else s.not_ready_addresses)
                    }
                    assert names == {"web"}, str(names)
                    return ep

                return check

            await eventually(
                endpoint_ready(True),
                what="web to be a ready endpoint",
                **API_WAIT,
            )
            beats.names.discard(name)  # heartbeats stop for a while (e.g. a network blip)...
            await eventually(
                pod_ready_is("False"),
                what="web to be marked not ready",
                **API_WAIT,
            )
            await eventually(
                endpoint_ready(False),
                what="web to be a not-ready endpoint",
                **API_WAIT,
            )
            beats.names.add(name)  # ...and resume before the eviction timeout: no change to the pod itself
            await eventually(
                pod_ready_is("True"),
                what="web to be ready again",
                **API_WAIT,
            )
            await eventually(
                endpoint_ready(True),
                what="web to be a ready endpoint again",
                **API_WAIT,
            )
            await asyncio.sleep(EVICTION + 1)
            await api.get(PODS, "web", namespace)  # not evicted
    finally:
        await api.delete(NODES, name)


async def test_a_node_that_comes_back_gets_work_again(api, namespace):
    name = f"{namespace}-flaky"
    await add_node(api, name, labels={"flaky": "yes"})
    try:
        await eventually(
            node_status_becomes(api, name, "Unknown"),
            what="the node to be Unknown without heartbeats",
            **API_WAIT,
        )
        await api.create(make_pod("web", namespace, node_selector={"flaky": "yes"}))

        async def pending_on_not_ready():
            pod = await api.get(PODS, "web", namespace)
            messages = [c.message for c in pod.status.conditions if c.type == "PodScheduled"]
            assert messages == ["0/1 nodes are available: 1 node(s) were not ready."], str(messages)
            return pod

        await eventually(
            pending_on_not_ready,
            what="web to wait for the node",
            **API_WAIT,
        )
        async with Heartbeats(api, [name]):
            async def bound():
                pod = await api.get(PODS, "web", namespace)
                assert pod.spec.node_name == name, f"bound to {pod.spec.node_name!r}"
                return pod

            await eventually(
                bound,
                what="web to be bound once the node heartbeats again",
                **API_WAIT,
            )
            assert node_ready(await api.get(NODES, name)).status == "True"
    finally:
        await api.delete(NODES, name)


async def test_a_node_that_never_heartbeats_is_marked_unknown(api, namespace):
    name = f"{namespace}-mute"
    await add_node(api, name, ready=None)
    try:
        condition = await eventually(
            node_status_becomes(api, name, "Unknown"),
            what="the mute node to be Unknown",
            **API_WAIT,
        )
        assert condition.reason == "NodeStatusNeverUpdated"
    finally:
        await api.delete(NODES, name)


async def test_pods_bound_to_a_node_that_does_not_exist_are_deleted(api, namespace):
    await api.create(make_pod("stray", namespace, node=f"{namespace}-ghost"))

    async def gone():
        try:
            await api.get(PODS, "stray", namespace)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error.code().name
            return True
        raise AssertionError("the stray pod is still there")

    await eventually(
        gone, what="the stray pod to be deleted", timeout=60, interval=0.1, retry_on=(grpc.aio.AioRpcError,)
    )


async def test_a_heartbeating_node_stays_ready(api, namespace):
    name = f"{namespace}-steady"
    await add_node(api, name)
    try:
        async with Heartbeats(api, [name]):
            await api.create(make_pod("web", namespace, node=name))
            # Longer than the grace period and the eviction timeout together.
            await asyncio.sleep(GRACE + EVICTION + 1)
            assert node_ready(await api.get(NODES, name)).status == "True"
            await api.get(PODS, "web", namespace)  # still there
    finally:
        await api.delete(NODES, name)


async def test_the_lease_of_a_deleted_node_goes_with_it(api, namespace):
    # As the kubelets write them: each node's Lease names its Node as its owner.
    kept, deleted = f"{namespace}-kept", f"{namespace}-deleted"
    for name in (kept, deleted):
        node = await add_node(api, name)
        await api.create(renewed_lease(None, name, 40, stamp(), node.metadata.uid))
    try:
        await api.delete(NODES, deleted)

        async def collected():
            names = {lease.metadata.name for lease in (await api.list(LEASES, NODE_LEASE_NAMESPACE)).items}
            assert deleted not in names and kept in names, sorted(names)
            return True

        await eventually(collected, what="the deleted node's Lease to be collected", **API_WAIT)
        # Its owner alive, a Lease stays through several passes.
        await asyncio.sleep(GRACE)
        assert (await api.get(LEASES, kept, NODE_LEASE_NAMESPACE)).spec.holder_identity == kept
    finally:
        await api.delete(NODES, kept)
        await eventually(
            lambda: absent(api, kept), what="the kept node's Lease to go with it", **API_WAIT,
        )


async def absent(api: ApiClient, lease_name: str) -> bool:
    try:
        await api.get(LEASES, lease_name, NODE_LEASE_NAMESPACE)
    except grpc.aio.AioRpcError as error:
        return error.code() == grpc.StatusCode.NOT_FOUND
    return False
