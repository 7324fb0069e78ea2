"""The scheduler's view of the cluster: nodes with per-node aggregates of the pods on them.

Filters and scores must be cheap (the scheduler evaluates every node for every
pod), so everything they read is precomputed here and kept current as pods
are placed and removed: requested cpu/memory, pod count, host ports in use,
and how many pods of each spread group (a controller, or a service's selector)
a node holds. A pod the scheduler has decided on but whose bind the watch has
not shown yet is "assumed": counted on its node at once, so a burst of pods does
not overpack a node before the watch catches up.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Iterable, Mapping

from kybernetes.v1 import node_pb2, pod_pb2
from services.common.labelsets import shared_labels
from services.common.podutil import is_being_deleted, is_terminated, node_condition_ready
from services.common.quantity import QuantityError, parse_cpu_millis, parse_memory_bytes, parse_quantity
from services.common.selectors import LabelSelector

PodKey = tuple[str, str]  # (namespace, name)

# Kubernetes scores a pod that requests nothing as if it asked for this much, so
# that such pods still spread by load instead of piling onto one node.
DEFAULT_SCORE_CPU_MILLIS = 100
DEFAULT_SCORE_MEMORY_BYTES = 200 * 1024 * 1024
ANY_IP = "0.0.0.0"


@dataclass(frozen=True, slots=True)
class HostPort:
    protocol: str
    ip: str
    port: int

    def conflicts(self, other: HostPort) -> bool:
        if self.port != other.port or self.protocol != other.protocol:
            return False
        return self.ip == other.ip or self.ip == ANY_IP or other.ip == ANY_IP


def _quantity(parse, resources: pod_pb2.ResourceRequirements, name: str) -> int:
    # A request defaults to the limit when only a limit is given, as in Kubernetes.
    text = resources.requests.get(name) or resources.limits.get(name)
    if not text:
        return 0
    try:
        return parse(text)
    except QuantityError:
        return 0  # validation rejects these; never let one break scheduling


def pod_requests(spec: pod_pb2.PodSpec) -> tuple[int, int]:
    """(cpu millicores, memory bytes) the pod's containers request together."""
    cpu = memory = 0
    for container in spec.containers:
        cpu += _quantity(parse_cpu_millis, container.resources, "cpu")
        memory += _quantity(parse_memory_bytes, container.resources, "memory")
    return cpu, memory


def pod_host_ports(spec: pod_pb2.PodSpec) -> tuple[HostPort, ...]:
    return tuple(
        HostPort(port.protocol or "TCP", port.host_ip or ANY_IP, port.host_port)
        for container in spec.containers
        for port in container.ports
        if port.host_port
    )


def controller_uid(pod: pod_pb2.Pod) -> str:
    for ref in pod.metadata.owner_references:
        if ref.controller:
            return ref.uid
    return ""


@dataclass(slots=True)
class PodInfo:
    """What filters and scores need to know about one pod, computed once."""

    namespace: str
    name: str
    uid: str
    generation: int
    # Shared read-only label sets (services.common.labelsets): the pods of a controller hold one.
    labels: Mapping[str, str]
    node_selector: Mapping[str, str]
    cpu_millis: int
    memory_bytes: int
    host_ports: tuple[HostPort, ...]
    controller_uid: str
    groups: frozenset[str] = frozenset()
    # Being deleted: still holds its resources and ports, no longer counts for spreading.
    terminating: bool = False

    @classmethod
    def from_pod(cls, pod: pod_pb2.Pod) -> PodInfo:
        cpu, memory = pod_requests(pod.spec)
        return cls(
            namespace=pod.metadata.namespace,
            name=pod.metadata.name,
            uid=pod.metadata.uid,
            generation=pod.metadata.generation,
            labels=shared_labels(pod.metadata.labels),
            node_selector=shared_labels(pod.spec.node_selector),
            cpu_millis=cpu,
            memory_bytes=memory,
            host_ports=pod_host_ports(pod.spec),
            controller_uid=controller_uid(pod),
            terminating=is_being_deleted(pod),
        )

    @property
    def key(self) -> PodKey:
        return (self.namespace, self.name)

    @property
    def score_cpu_millis(self) -> int:
        return self.cpu_millis or DEFAULT_SCORE_CPU_MILLIS

    @property
    def score_memory_bytes(self) -> int:
        return self.memory_bytes or DEFAULT_SCORE_MEMORY_BYTES


class NodeInfo:
    """One node and the aggregates of the pods placed on it."""

    __slots__ = (
        "name", "node", "labels", "unschedulable", "ready",
        "allocatable_cpu", "allocatable_memory", "allocatable_pods",
        "requested_cpu", "requested_memory", "score_cpu", "score_memory", "pod_count",
        "ports", "groups", "group_pods",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.node: node_pb2.Node | None = None  # None: pods name this node, but it is not registered
        self.labels: dict[str, str] = {}
        self.unschedulable = False
        # Its Ready condition is True. Whether its heartbeats still come is node lifecycle's to
        # judge, which marks a silent node Ready=Unknown (as Kubernetes' scheduler leaves it to
        # the node controller's taints): the scheduler holds no clock of its own on them.
        self.ready = False
        self.allocatable_cpu = 0
        self.allocatable_memory = 0
        self.allocatable_pods: int | None = None  # None: no limit reported
        self.requested_cpu = 0
        self.requested_memory = 0
        self.score_cpu = 0
        self.score_memory = 0
        self.pod_count = 0
        self.ports: collections.Counter[HostPort] = collections.Counter()
        # How many pods carry each exact set of spread groups, and each single group: scoring
        # asks every candidate node for its count, and most nodes hold none of the pod's groups
        # (or the pod has one group), which the per-group count answers without a scan.
        self.groups: collections.Counter[frozenset[str]] = collections.Counter()
        self.group_pods: collections.Counter[str] = collections.Counter()

    def set_node(self, node: node_pb2.Node) -> None:
        self.node = node
        self.labels = dict(node.metadata.labels)
        self.unschedulable = node.spec.unschedulable
        self.ready = node_condition_ready(node)
        allocatable = node.status.allocatable or node.status.capacity
        capacity = node.status.capacity
        self.allocatable_cpu = _node_quantity(parse_cpu_millis, allocatable, capacity, "cpu") or 0
        self.allocatable_memory = _node_quantity(parse_memory_bytes, allocatable, capacity, "memory") or 0
        self.allocatable_pods = _node_quantity(_whole, allocatable, capacity, "pods")

    def add(self, pod: PodInfo) -> None:
        self._count(pod, 1)

    def remove(self, pod: PodInfo) -> None:
        self._count(pod, -1)

    def _count(self, pod: PodInfo, sign: int) -> None:
        self.requested_cpu += sign * pod.cpu_millis
        self.requested_memory += sign * pod.memory_bytes
        self.score_cpu += sign * pod.score_cpu_millis
        self.score_memory += sign * pod.score_memory_bytes
        self.pod_count += sign
        for port in pod.host_ports:
            self.ports[port] += sign
            if self.ports[port] <= 0:
                del self.ports[port]
        if pod.groups and not pod.terminating:
            self.groups[pod.groups] += sign
            if self.groups[pod.groups] <= 0:
                del self.groups[pod.groups]
            for group in pod.groups:
                self.group_pods[group] += sign
                if self.group_pods[group] <= 0:
                    del self.group_pods[group]

    def spread_count(self, groups: frozenset[str]) -> int:
        """Pods on this node that share at least one spread group with `groups`."""
        if len(groups) == 1:
            (group,) = groups
            return self.group_pods.get(group, 0)
        if not any(group in self.group_pods for group in groups):
            return 0
        # Several groups: a pod in two of them counts once, so count the exact sets.
        return sum(count for held, count in self.groups.items() if not held.isdisjoint(groups))

    @property
    def empty(self) -> bool:
        return self.node is None and self.pod_count == 0


def _whole(text: str) -> int:
    return math.floor(parse_quantity(text))


def _node_quantity(parse, allocatable, capacity, name: str) -> int | None:
    text = allocatable.get(name) or capacity.get(name)
    if not text:
        return None
    try:
        return parse(text)
    except QuantityError:
        return None


@dataclass(slots=True)
class _Placement:
    info: PodInfo
    node_name: str
    assumed: bool
    terminated: bool


class SchedulerCache:
    """Nodes, the pods placed on them (bound or assumed), and services for spreading."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self._placements: dict[PodKey, _Placement] = {}
        self._services: dict[str, dict[str, LabelSelector]] = {}  # namespace -> name -> selector
        self._schedulable: list[NodeInfo] | None = None

    # -- nodes ------------------------------------------------------------

    def set_node(self, node: node_pb2.Node) -> None:
        name = node.metadata.name
        info = self.nodes.get(name)
        if info is None:
            info = self.nodes[name] = NodeInfo(name)
            self._schedulable = None
        elif info.node is None:
            self._schedulable = None
        info.set_node(node)

    def remove_node(self, name: str) -> None:
        info = self.nodes.get(name)
        if info is None:
            return
        info.node = None
        if info.empty:
            del self.nodes[name]
        self._schedulable = None

    def registered_nodes(self) -> list[NodeInfo]:
        """Every node with a Node object, in a stable order."""
        if self._schedulable is None:
            self._schedulable = sorted((n for n in self.nodes.values() if n.node is not None), key=lambda n: n.name)
        return self._schedulable

    # -- pods -------------------------------------------------------------

    def placement(self, key: PodKey) -> tuple[str, str, bool] | None:
        """(uid, node name, assumed) of a placed pod, else None."""
        placed = self._placements.get(key)
        if placed is None:
            return None
        return placed.info.uid, placed.node_name, placed.assumed

    def is_assumed(self, key: PodKey) -> bool:
        placed = self._placements.get(key)
        return placed is not None and placed.assumed

    def pod_info(self, pod: pod_pb2.Pod) -> PodInfo:
        info = PodInfo.from_pod(pod)
        info.groups = self._groups_for(info)
        return info

    def assume(self, info: PodInfo, node_name: str) -> None:
        self.remove_pod(info.key)
        self._place(_Placement(info, node_name, assumed=True, terminated=False))

    def forget(self, key: PodKey, uid: str) -> None:
        """Drops an assumption whose bind failed (only if it is still that pod's assumption)."""
        placed = self._placements.get(key)
        if placed is not None and placed.assumed and placed.info.uid == uid:
            self.remove_pod(key)

    def set_bound_pod(self, pod: pod_pb2.Pod) -> bool:
        """Records a pod the watch shows bound; returns True when this freed room on a node."""
        key = (pod.metadata.namespace, pod.metadata.name)
        terminated = is_terminated(pod)
        placed = self._placements.get(key)
        if (
            placed is not None
            and not placed.assumed
            and placed.info.uid == pod.metadata.uid
            and placed.node_name == pod.spec.node_name
            and placed.terminated == terminated
            and placed.info.terminating == is_being_deleted(pod)
            and placed.info.generation == pod.metadata.generation
            and placed.info.labels == dict(pod.metadata.labels)
        ):
            return False  # a status change: nothing the scheduler counts
        freed = placed is not None and not placed.terminated and (terminated or placed.node_name != pod.spec.node_name)
        self.remove_pod(key)
        self._place(_Placement(self.pod_info(pod), pod.spec.node_name, assumed=False, terminated=terminated))
        return freed

    def remove_pod(self, key: PodKey) -> bool:
        """Forgets a pod; returns True when it was counted on a node."""
        placed = self._placements.pop(key, None)
        if placed is None:
            return False
        if placed.terminated:
            return False
        node = self.nodes.get(placed.node_name)
        if node is not None:
            node.remove(placed.info)
            if node.empty:
                del self.nodes[placed.node_name]
        return True

    def _place(self, placed: _Placement) -> None:
        self._placements[placed.info.key] = placed
        if placed.terminated:
            return  # a finished pod holds no resources
        node = self.nodes.get(placed.node_name)
        if node is None:
            node = self.nodes[placed.node_name] = NodeInfo(placed.node_name)
        node.add(placed.info)

    # -- spreading --------------------------------------------------------

    def set_service(self, namespace: str, name: str, selector: dict[str, str]) -> None:
        selectors = self._services.setdefault(namespace, {})
        parsed = LabelSelector.from_map(selector) if selector else None
        if parsed is None:
            if selectors.pop(name, None) is None:
                return
        else:
            if selectors.get(name) == parsed:
                return
            selectors[name] = parsed
        self._regroup(namespace)

    def remove_service(self, namespace: str, name: str) -> None:
        if self._services.get(namespace, {}).pop(name, None) is not None:
            self._regroup(namespace)

    def _groups_for(self, info: PodInfo) -> frozenset[str]:
        groups = [f"controller:{info.controller_uid}"] if info.controller_uid else []
        for name, selector in self._services.get(info.namespace, {}).items():
            if selector.matches(info.labels):
                groups.append(f"service:{info.namespace}/{name}")
        return frozenset(groups)

    def _regroup(self, namespace: str) -> None:
        for placed in [p for p in self._placements.values() if p.info.namespace == namespace]:
            groups = self._groups_for(placed.info)
            if groups == placed.info.groups:
                continue
            node = self.nodes.get(placed.node_name)
            if node is not None and not placed.terminated:
                node.remove(placed.info)
                placed.info.groups = groups
                node.add(placed.info)
            else:
                placed.info.groups = groups

    def placed_pods(self) -> Iterable[tuple[PodInfo, str, bool]]:
        for placed in self._placements.values():
            yield placed.info, placed.node_name, placed.assumed
