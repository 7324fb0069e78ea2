"""Scheduler filters on their own: which nodes a pod may run on, and the pending message."""

from __future__ import annotations

import collections

import pytest
from google.protobuf import timestamp_pb2

from kybernetes.v1 import meta_pb2, node_pb2, pod_pb2
from services.apiserver.scheduler.cache import NodeInfo, PodInfo, SchedulerCache
from services.apiserver.scheduler.filters import (
    INSUFFICIENT_CPU,
    INSUFFICIENT_MEMORY,
    NODE_SELECTOR_MISMATCH,
    NOT_READY,
    PORTS_IN_USE,
    TOO_MANY_PODS,
    UNSCHEDULABLE,
    feasible_nodes_to_find,
    find_some_feasible,
    rejections,
    unschedulable_message,
)

NOW = 1_700_000_000.0
GRACE = 20.0


def node(
    name: str = "n1",
    *,
    labels: dict[str, str] | None = None,
    ready: str = "True",
    heartbeat_age: float | None = 1.0,
    unschedulable: bool = False,
    allocatable: dict[str, str] | None = None,
    capacity: dict[str, str] | None = None,
) -> node_pb2.Node:
    n = node_pb2.Node(
        metadata=meta_pb2.ObjectMeta(name=name, labels=labels or {}),
        spec=node_pb2.NodeSpec(unschedulable=unschedulable),
    )
    if allocatable is None and capacity is None:
        allocatable = {"cpu": "2", "memory": "4Gi"}
    n.status.allocatable.update(allocatable or {})
    n.status.capacity.update(capacity or {})
    if ready:
        condition = n.status.conditions.add(type="Ready", status=ready)
        if heartbeat_age is not None:
            condition.last_heartbeat_time.CopyFrom(timestamp_pb2.Timestamp(seconds=int(NOW - heartbeat_age)))
    return n


def pod(
    name: str = "p",
    *,
    cpu: str = "",
    memory: str = "",
    limits: dict[str, str] | None = None,
    host_ports: list[tuple[int, str, str]] = (),
    node_selector: dict[str, str] | None = None,
    containers: int = 1,
) -> pod_pb2.Pod:
    p = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name=name, namespace="default", uid=f"uid-{name}"))
    p.spec.node_selector.update(node_selector or {})
    for index in range(containers):
        container = p.spec.containers.add(name=f"c{index}", image="busybox")
        if cpu:
            container.resources.requests["cpu"] = cpu
        if memory:
            container.resources.requests["memory"] = memory
        container.resources.limits.update(limits or {})
        if index == 0:
            for port, protocol, host_ip in host_ports:
                container.ports.add(container_port=port, host_port=port, protocol=protocol, host_ip=host_ip)
    return p


def node_info(n: node_pb2.Node, *placed: pod_pb2.Pod) -> NodeInfo:
    cache = SchedulerCache()
    cache.set_node(n)
    for p in placed:
        p.spec.node_name = n.metadata.name
        cache.set_bound_pod(p)
    return cache.nodes[n.metadata.name]


def reasons(p: pod_pb2.Pod, n: node_pb2.Node, *placed: pod_pb2.Pod) -> tuple[str, ...]:
    return rejections(PodInfo.from_pod(p), node_info(n, *placed))


@pytest.mark.parametrize(
    ("the_node", "expected"),
    [
        pytest.param(node(), (), id="ready-fresh"),
        # Liveness is node lifecycle's to judge (it marks a silent node Ready=Unknown): an old
        # heartbeat under Ready=True, as after an API server restart held renewals back, still fits.
        pytest.param(node(heartbeat_age=GRACE + 60), (), id="ready-with-an-old-heartbeat"),
        pytest.param(node(ready="False"), (NOT_READY,), id="ready-false"),
        pytest.param(node(ready="Unknown"), (NOT_READY,), id="ready-unknown"),
        pytest.param(node(ready=""), (NOT_READY,), id="no-ready-condition"),
        pytest.param(node(unschedulable=True), (UNSCHEDULABLE,), id="cordoned"),
        pytest.param(node(ready="False", unschedulable=True), (NOT_READY,), id="first-failing-filter-wins"),
    ],
)
def test_node_state_filters(the_node, expected):
    assert reasons(pod(), the_node) == expected


@pytest.mark.parametrize(
    ("selector", "labels", "fits"),
    [
        pytest.param({}, {}, True, id="no-selector"),
        pytest.param({"disk": "ssd"}, {"disk": "ssd", "zone": "a"}, True, id="subset"),
        pytest.param({"disk": "ssd"}, {"disk": "hdd"}, False, id="other-value"),
        pytest.param({"disk": "ssd"}, {}, False, id="missing-label"),
        pytest.param({"disk": "ssd", "zone": "a"}, {"disk": "ssd", "zone": "b"}, False, id="one-of-two-differs"),
    ],
)
def test_node_selector(selector, labels, fits):
    result = reasons(pod(node_selector=selector), node(labels=labels))
    assert result == (() if fits else (NODE_SELECTOR_MISMATCH,))


@pytest.mark.parametrize(
    ("wanted", "used", "fits"),
    [
        pytest.param([(8080, "TCP", "")], [], True, id="free"),
        pytest.param([(8080, "TCP", "")], [(8080, "TCP", "")], False, id="same-port"),
        pytest.param([(8080, "TCP", "")], [(8080, "UDP", "")], True, id="other-protocol"),
        pytest.param([(8080, "TCP", "")], [(8081, "TCP", "")], True, id="other-port"),
        pytest.param([(53, "UDP", "127.0.0.1")], [(53, "UDP", "127.0.0.2")], True, id="different-host-ips"),
        pytest.param([(53, "UDP", "127.0.0.1")], [(53, "UDP", "")], False, id="wildcard-used-conflicts"),
        pytest.param([(53, "UDP", "")], [(53, "UDP", "127.0.0.1")], False, id="wildcard-wanted-conflicts"),
    ],
)
def test_host_ports(wanted, used, fits):
    result = reasons(pod(host_ports=wanted), node(), pod("other", host_ports=used))
    assert result == (() if fits else (PORTS_IN_USE,))


@pytest.mark.parametrize(
    ("new", "placed", "allocatable", "expected"),
    [
        pytest.param(pod(cpu="500m"), [pod("a", cpu="1500m")], {"cpu": "2", "memory": "1Gi"}, (), id="exactly-fits"),
        pytest.param(
            pod(cpu="501m"), [pod("a", cpu="1500m")], {"cpu": "2", "memory": "1Gi"}, (INSUFFICIENT_CPU,), id="cpu-short"
        ),
        pytest.param(
            pod(memory="600Mi"), [pod("a", memory="500Mi")], {"cpu": "2", "memory": "1Gi"},
            (INSUFFICIENT_MEMORY,), id="memory-short",
        ),
        pytest.param(
            pod(cpu="3", memory="2Gi"), [], {"cpu": "2", "memory": "1Gi"},
            (INSUFFICIENT_CPU, INSUFFICIENT_MEMORY), id="both-short-both-named",
        ),
        pytest.param(
            pod(cpu="300m", containers=2), [], {"cpu": "500m", "memory": "1Gi"}, (INSUFFICIENT_CPU,),
            id="containers-add-up",
        ),
        pytest.param(
            pod(limits={"cpu": "3"}), [], {"cpu": "2", "memory": "1Gi"}, (INSUFFICIENT_CPU,),
            id="limit-stands-in-for-missing-request",
        ),
        pytest.param(pod(), [pod("a", cpu="2")], {"cpu": "2", "memory": "1Gi"}, (), id="no-request-always-fits"),
        pytest.param(pod(cpu="100m"), [], {"memory": "1Gi"}, (INSUFFICIENT_CPU,), id="no-cpu-reported-is-zero"),
        pytest.param(
            pod(), [pod("a"), pod("b")], {"cpu": "2", "memory": "1Gi", "pods": "2"}, (TOO_MANY_PODS,), id="pod-limit"
        ),
    ],
)
def test_resources(new, placed, allocatable, expected):
    assert reasons(new, node(allocatable=allocatable), *placed) == expected


def test_capacity_stands_in_for_missing_allocatable():
    assert reasons(pod(cpu="1"), node(allocatable={}, capacity={"cpu": "2", "memory": "1Gi"})) == ()
    assert reasons(pod(cpu="3"), node(allocatable={}, capacity={"cpu": "2", "memory": "1Gi"})) == (INSUFFICIENT_CPU,)


def test_finished_pods_free_their_resources():
    done = pod("done", cpu="2")
    done.status.phase = "Succeeded"
    assert reasons(pod(cpu="1"), node(allocatable={"cpu": "2", "memory": "1Gi"}), done) == ()


def test_find_feasible_counts_reasons_per_node():
    cache = SchedulerCache()
    for n in (
        node("a", labels={"disk": "ssd"}, allocatable={"cpu": "1", "memory": "1Gi"}),
        node("b", labels={"disk": "hdd"}),
        node("c", labels={"disk": "hdd"}),
        node("d", labels={"disk": "ssd"}, ready="False"),
        node("e", labels={"disk": "ssd"}),
    ):
        cache.set_node(n)
    feasible, failures, next_start = find_some_feasible(
        PodInfo.from_pod(pod(cpu="1500m", node_selector={"disk": "ssd"})), cache.registered_nodes(), want=5,
    )
    assert [n.name for n in feasible] == ["e"]
    assert failures == {NODE_SELECTOR_MISMATCH: 2, INSUFFICIENT_CPU: 1, NOT_READY: 1}
    assert next_start == 0  # every node looked at: the next search starts where this one did


@pytest.mark.parametrize(
    ("nodes", "wanted"), [(1, 1), (100, 100), (101, 100), (500, 230), (1_000, 420), (5_000, 500), (6_000, 300)]
)
def test_the_scheduler_looks_for_kubernetes_adaptive_share_of_nodes(nodes: int, wanted: int) -> None:
    assert feasible_nodes_to_find(nodes) == wanted


def test_each_search_starts_where_the_last_stopped_so_every_node_gets_its_turn() -> None:
    cache = SchedulerCache()
    for name in "abcdef":
        cache.set_node(node(name, ready="False" if name == "b" else "True"))
    nodes, info = cache.registered_nodes(), PodInfo.from_pod(pod())
    found, starts, start = [], [], 0
    for _ in range(3):
        feasible, failures, start = find_some_feasible(info, nodes, want=2, start=start)
        found.append("".join(n.name for n in feasible))
        starts.append(start)
    assert found == ["ac", "de", "fa"]  # b is not ready: skipped, counted
    assert starts == [3, 5, 1]


@pytest.mark.parametrize(
    ("count", "failures", "message"),
    [
        pytest.param(
            3,
            {NODE_SELECTOR_MISMATCH: 2, INSUFFICIENT_CPU: 1},
            "0/3 nodes are available: 2 node(s) didn't match node selector, 1 Insufficient cpu.",
            id="issue-example",
        ),
        pytest.param(
            2,
            {INSUFFICIENT_MEMORY: 1, INSUFFICIENT_CPU: 1},
            "0/2 nodes are available: 1 Insufficient cpu, 1 Insufficient memory.",
            id="ties-in-alphabetical-order",
        ),
        pytest.param(0, {}, "0/0 nodes are available: no nodes are registered.", id="no-nodes"),
    ],
)
def test_unschedulable_message(count, failures, message):
    assert unschedulable_message(count, collections.Counter(failures)) == message
