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
from services.common.resources import ENDPOINTS, NODES, PODS

from .apihelpers import make_pod, make_rc, make_service
from .control_helpers import (
    ControlPlane,
    FakeKubelets,
    Heartbeats,
    add_node,
    pods_in,
    ready_condition,
    wait_for,
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
        if condition is not None and condition.status == status:
            return condition
        return f"Ready={condition.status if condition else None}"

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
                    pods = [p for p in await pods_in(api, namespace, "app=web") if p.status.phase == "Running"]
                    placed = collections.Counter(p.spec.node_name for p in pods)
                    return pods if placed == expected else str(dict(placed))

                return check

            await wait_for(running_on({live: 2, silent: 2}), "2 pods running on each node")

            def endpoints(ready: int, not_ready: int):
                async def check():
                    ep = await api.get(ENDPOINTS, "web", namespace)
                    counts = (
                        sum(len(s.addresses) for s in ep.subsets),
                        sum(len(s.not_ready_addresses) for s in ep.subsets),
                    )
                    return ep if counts == (ready, not_ready) else str(counts)

                return check

            await wait_for(endpoints(4, 0), "4 ready endpoints")
            silent_pods = {p.metadata.name for p in await pods_in(api, namespace) if p.spec.node_name == silent}

            # The silent node's kubelet stops: no heartbeats, no pods started there.
            beats.names.discard(silent)
            kubelets.nodes.discard(silent)
            condition = await wait_for(node_status_becomes(api, silent, "Unknown"), "the silent node to be Unknown")
            assert condition.reason == "NodeStatusUnknown"

            async def silent_pods_not_ready():
                pods = [await api.get(PODS, name, namespace) for name in silent_pods]
                return pods if all(ready_condition(p) == "False" for p in pods) else None

            await wait_for(silent_pods_not_ready, "the silent node's pods to be marked not ready")
            ep = await wait_for(endpoints(2, 2), "their endpoints to be not ready")
            assert {a.target_ref.name for s in ep.subsets for a in s.not_ready_addresses} == silent_pods

            # After the eviction timeout they are deleted and recreated on the live node.
            await wait_for(running_on({live: 4}), "4 pods running on the live node", timeout=60)
            remaining = {p.metadata.name for p in await pods_in(api, namespace)}
            assert not remaining & silent_pods
            await wait_for(endpoints(4, 0), "4 ready endpoints again")
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
                    return pod if ready_condition(pod) == status else ready_condition(pod)

                return check

            def endpoint_ready(ready: bool):
                async def check():
                    ep = await api.get(ENDPOINTS, "web", namespace)
                    names = {
                        a.target_ref.name for s in ep.subsets for a in (s.addresses if ready else s.not_ready_addresses)
                    }
                    return ep if names == {"web"} else str(names)

                return check

            await wait_for(endpoint_ready(True), "web to be a ready endpoint")
            beats.names.discard(name)  # heartbeats stop for a while (e.g. a network blip)...
            await wait_for(pod_ready_is("False"), "web to be marked not ready")
            await wait_for(endpoint_ready(False), "web to be a not-ready endpoint")
            beats.names.add(name)  # ...and resume before the eviction timeout: no change to the pod itself
            await wait_for(pod_ready_is("True"), "web to be ready again")
            await wait_for(endpoint_ready(True), "web to be a ready endpoint again")
            await asyncio.sleep(EVICTION + 1)
            await api.get(PODS, "web", namespace)  # not evicted
    finally:
        await api.delete(NODES, name)


async def test_a_node_that_comes_back_gets_work_again(api, namespace):
    name = f"{namespace}-flaky"
    await add_node(api, name, labels={"flaky": "yes"})
    try:
        await wait_for(node_status_becomes(api, name, "Unknown"), "the node to be Unknown without heartbeats")
        await api.create(make_pod("web", namespace, node_selector={"flaky": "yes"}))

        async def pending_on_not_ready():
            pod = await api.get(PODS, "web", namespace)
            messages = [c.message for c in pod.status.conditions if c.type == "PodScheduled"]
            return pod if messages == ["0/1 nodes are available: 1 node(s) were not ready."] else str(messages)

        await wait_for(pending_on_not_ready, "web to wait for the node")
        async with Heartbeats(api, [name]):
            async def bound():
                pod = await api.get(PODS, "web", namespace)
                return pod if pod.spec.node_name == name else None

            await wait_for(bound, "web to be bound once the node heartbeats again")
            assert node_ready(await api.get(NODES, name)).status == "True"
    finally:
        await api.delete(NODES, name)


async def test_a_node_that_never_heartbeats_is_marked_unknown(api, namespace):
    name = f"{namespace}-mute"
    await add_node(api, name, ready=None)
    try:
        condition = await wait_for(node_status_becomes(api, name, "Unknown"), "the mute node to be Unknown")
        assert condition.reason == "NodeStatusNeverUpdated"
    finally:
        await api.delete(NODES, name)


async def test_pods_bound_to_a_node_that_does_not_exist_are_deleted(api, namespace):
    await api.create(make_pod("stray", namespace, node=f"{namespace}-ghost"))

    async def gone():
        try:
            await api.get(PODS, "stray", namespace)
        except grpc.aio.AioRpcError as error:
            return error.code() == grpc.StatusCode.NOT_FOUND
        return None

    await wait_for(gone, "the stray pod to be deleted", timeout=60)


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
