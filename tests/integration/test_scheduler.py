"""The scheduler inside a real API server over real etcd, with Node objects and no kubelet."""

from __future__ import annotations

import asyncio
import collections

import pytest

from kybernetes.v1 import meta_pb2, pod_pb2
from services.common.client import ApiClient
from tools.processes import ManagedProcess, python_module_argv
from services.common.resources import NODES, PODS
from tests.polling import eventually

from .apihelpers import make_pod, make_service, privileged_namespace
from .control_helpers import API_WAIT, FAR_GRACE, ControlPlane, add_node, heartbeat, pods_in


@pytest.fixture(scope="module")
def plane():
    control = ControlPlane("scheduler", FAR_GRACE)
    yield control
    control.stop()


@pytest.fixture
def api_address(plane) -> str:
    return plane.address


class Nodes:
    """This test's nodes (named after its namespace), deleted when it ends."""

    def __init__(self, api: ApiClient, prefix: str) -> None:
        self.api = api
        self.prefix = prefix
        self.created: list[str] = []

    def name(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    async def add(self, short: str, **options) -> str:
        name = self.name(short)
        await add_node(self.api, name, **options)
        self.created.append(name)
        return name

    async def delete_all(self) -> None:
        for name in self.created:
            await self.api.delete(NODES, name)


@pytest.fixture
async def nodes(api, namespace):
    created = Nodes(api, namespace)
    yield created
    await created.delete_all()


def bound(api: ApiClient, namespace: str, name: str):
    async def check():
        pod = await api.get(PODS, name, namespace)
        assert pod.spec.node_name, f"{name} not bound yet"
        return pod

    return check


def scheduled_condition(pod: pod_pb2.Pod) -> pod_pb2.PodCondition | None:
    for condition in pod.status.conditions:
        if condition.type == "PodScheduled":
            return condition
    return None


def pending_with(api: ApiClient, namespace: str, name: str, message: str):
    async def check():
        pod = await api.get(PODS, name, namespace)
        condition = scheduled_condition(pod)
        if pod.spec.node_name:  # a failure at once, not "not yet" (an AssertionError would be retried)
            pytest.fail(f"{name} was bound to {pod.spec.node_name}")
        assert condition is not None and condition.status == "False" and condition.message == message, (
            condition.message if condition is not None else "no PodScheduled condition"
        )
        return pod

    return check


async def test_binds_to_the_one_ready_schedulable_node(api, nodes, namespace):
    ready = await nodes.add("ready")
    await nodes.add("down", ready="False")
    await nodes.add("cordoned", unschedulable=True)
    await nodes.add("silent", ready=None)  # registered, never heartbeated
    await api.create(make_pod("web", namespace))

    pod = await eventually(
        bound(api, namespace, "web"), what="web to be bound", **API_WAIT
    )
    assert pod.spec.node_name == ready
    condition = scheduled_condition(pod)
    assert condition is not None and condition.status == "True"


async def load_node(api: ApiClient, namespace: str, node_label: str) -> None:
    """A pod that takes half of a node's cpu: least-requested alone would avoid that node."""
    heavy = make_pod("heavy", namespace, {"app": "other"}, node_selector={"name": node_label})
    heavy.spec.containers[0].resources.requests["cpu"] = "2"
    await api.create(heavy)
    await eventually(
        bound(api, namespace, "heavy"),
        what="heavy to be bound",
        **API_WAIT,
    )


async def test_replicas_of_one_controller_spread_across_nodes(api, nodes, namespace):
    loaded = await nodes.add("loaded", labels={"name": "loaded"})
    idle = await nodes.add("idle", labels={"name": "idle"})
    await load_node(api, namespace, "loaded")
    for i in range(4):
        pod = make_pod(f"web-{i}", namespace, {"app": "web"})
        pod.metadata.owner_references.add(
            api_version="v1", kind="ReplicationController", name="web", uid="rc-web-uid", controller=True
        )
        await api.create(pod)

    async def all_bound():
        pods = await pods_in(api, namespace, "app=web")
        bound_pods = [p for p in pods if p.spec.node_name]
        assert len(pods) == 4 and all(p.spec.node_name for p in pods), f"{len(bound_pods)}/{len(pods)} bound"
        return pods

    pods = await eventually(
        all_bound, what="4 pods to be bound", **API_WAIT
    )
    assert collections.Counter(p.spec.node_name for p in pods) == {loaded: 2, idle: 2}


async def test_pods_selected_by_one_service_spread_across_nodes(api, nodes, namespace):
    loaded = await nodes.add("loaded", labels={"name": "loaded"})
    idle = await nodes.add("idle", labels={"name": "idle"})
    await api.create(make_service("web", namespace, {"app": "web"}))
    await load_node(api, namespace, "loaded")
    # A pod of the service already runs on the idle node (it has another controller).
    await api.create(make_pod("stable", namespace, {"app": "web", "track": "stable"}, node_selector={"name": "idle"}))
    stable = await eventually(
        bound(api, namespace, "stable"),
        what="stable to be bound",
        **API_WAIT,
    )
    assert stable.spec.node_name == idle

    await api.create(make_pod("canary", namespace, {"app": "web", "track": "canary"}))
    pod = await eventually(
        bound(api, namespace, "canary"),
        what="canary to be bound",
        **API_WAIT,
    )
    assert pod.spec.node_name == loaded  # away from its service peer, despite the load


async def test_pending_reason_then_bound_when_a_fitting_node_appears(api, nodes, namespace):
    await nodes.add("hdd-1", labels={"disk": "hdd"})
    await nodes.add("hdd-2", labels={"disk": "hdd"})
    await nodes.add("small-ssd", labels={"disk": "ssd"}, allocatable={"cpu": "1", "memory": "8Gi"})
    pod = make_pod("big", namespace, node_selector={"disk": "ssd"})
    pod.spec.containers[0].resources.requests["cpu"] = "2"
    await api.create(pod)

    message = "0/3 nodes are available: 2 node(s) didn't match node selector, 1 Insufficient cpu."
    pending = await eventually(
        pending_with(api, namespace, "big", message),
        what="the pending reason",
        **API_WAIT,
    )
    condition = scheduled_condition(pending)
    assert (condition.reason, pending.status.phase) == ("Unschedulable", "Pending")

    # Heartbeats change nothing that matters: the scheduler does not rewrite the condition.
    for _ in range(3):
        for name in nodes.created:
            await heartbeat(api, name)
    await api.create(make_pod("marker", namespace))
    await eventually(
        bound(api, namespace, "marker"),
        what="a later pod to be bound",
        **API_WAIT,
    )
    assert (await api.get(PODS, "big", namespace)).metadata.resource_version == pending.metadata.resource_version

    big_ssd = await nodes.add("big-ssd", labels={"disk": "ssd"}, allocatable={"cpu": "4", "memory": "8Gi"})
    pod = await eventually(
        bound(api, namespace, "big"),
        what="big to be bound once a fitting node exists",
        **API_WAIT,
    )
    assert pod.spec.node_name == big_ssd


async def test_pending_on_a_taken_host_port_until_its_holder_goes(api, nodes, namespace):
    await privileged_namespace(api, namespace)  # host ports are beyond Pod Security's baseline
    only = await nodes.add("only")

    def with_host_port(name: str) -> pod_pb2.Pod:
        pod = make_pod(name, namespace)
        pod.spec.containers[0].ports.add(container_port=80, host_port=8080)
        return pod

    await api.create(with_host_port("first"))
    await eventually(
        bound(api, namespace, "first"),
        what="first to be bound",
        **API_WAIT,
    )
    await api.create(with_host_port("second"))
    message = "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
    await eventually(
        pending_with(api, namespace, "second", message),
        what="second to wait for the port",
        **API_WAIT,
    )

    # Its deletion is graceful: while its kubelet stops it, the holder keeps the port (as in
    # Kubernetes). There is no kubelet here: the test removes it as one would, with grace 0.
    marked = await api.delete(PODS, "first", namespace)
    assert marked.metadata.HasField("deletion_timestamp")
    await eventually(
        pending_with(api, namespace, "second", message),
        what="second still waiting while the holder terminates",
        **API_WAIT,
    )
    await api.stub(PODS).Delete(
        meta_pb2.DeleteRequest(namespace=namespace, name="first", grace_period_seconds=0), timeout=10
    )
    pod = await eventually(
        bound(api, namespace, "second"),
        what="second to be bound once the port is free",
        **API_WAIT,
    )
    assert pod.spec.node_name == only


async def test_pod_waits_for_a_node_to_become_ready(api, nodes, namespace):
    name = await nodes.add("late", ready="False")
    await api.create(make_pod("web", namespace))
    message = "0/1 nodes are available: 1 node(s) were not ready."
    await eventually(
        pending_with(api, namespace, "web", message),
        what="web to wait for a ready node",
        **API_WAIT,
    )

    await heartbeat(api, name, "True")
    pod = await eventually(
        bound(api, namespace, "web"),
        what="web to be bound once the node is ready",
        **API_WAIT,
    )
    assert pod.spec.node_name == name


async def test_two_schedulers_racing_bind_each_pod_once(plane, api, nodes, namespace):
    for short in ("a", "b", "c"):
        await nodes.add(short)
    rival = ManagedProcess(
        "scheduler",
        python_module_argv("services.apiserver.controllers", "--server", plane.address, "--controllers", "scheduler",
                           FAR_GRACE),
        f"{plane.workdir}/rival-scheduler.log",
    )
    binds: dict[str, list[str]] = collections.defaultdict(list)
    listing = await api.list(PODS, namespace)
    call = api.watch(
        PODS, meta_pb2.ListOptions(namespace=namespace, resource_version=listing.metadata.resource_version)
    )

    async def record() -> None:
        async for event in call:
            pod = event.object
            if pod.spec.node_name and (
                not binds[pod.metadata.name] or binds[pod.metadata.name][-1] != pod.spec.node_name
            ):
                binds[pod.metadata.name].append(pod.spec.node_name)

    recorder = asyncio.create_task(record())
    try:
        await asyncio.sleep(1.0)  # the rival's informers are synced
        await asyncio.gather(*(api.create(make_pod(f"p-{i:02d}", namespace)) for i in range(40)))

        async def all_bound():
            pods = (await api.list(PODS, namespace)).items
            bound_pods = [p for p in pods if p.spec.node_name]
            assert len(pods) == 40 and all(p.spec.node_name for p in pods) and len(binds) == 40, (
                f"{len(bound_pods)}/{len(pods)} bound, {len(binds)} binds seen"
            )
            return True

        await eventually(
            all_bound, what="40 pods to be bound", **API_WAIT
        )
        assert all(len(nodes_seen) == 1 for nodes_seen in binds.values()), binds
        assert rival.alive()
    finally:
        call.cancel()
        recorder.cancel()
        await asyncio.gather(recorder, return_exceptions=True)
        rival.stop()
