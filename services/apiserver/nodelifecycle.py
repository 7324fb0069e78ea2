"""Node lifecycle: notices nodes that stopped heartbeating and moves their work elsewhere.

A node's kubelet renews its Lease `kube-node-lease/<node>` every 10 s and posts
its Ready condition when it changes (and every 5 minutes). The node's heartbeat
is the later of the Lease's renewTime and the Ready condition's
last_heartbeat_time (Kubernetes' KEP-589: a kubelet without a Lease still
counts by its status). As Kubernetes' probeTimestamp, what counts is when this
controller saw that heartbeat change, by its own clock: a node's clock may be
off, and a controller that starts (or an API server restarted with it, whose
outage held the renewals back) gives every node a whole grace period before
judging it (issue 16: an API server restart at 1,000 nodes marked 335 nodes and
7,567 pods not ready). When that heartbeat is older than the grace period,
this controller marks the node Ready=Unknown, marks its pods not Ready (so the
endpoints controller drops them at once), and once the node has been not ready
for the eviction timeout, deletes its pods so their controllers recreate them on
live nodes. A node whose kubelet comes back posts Ready=True itself and is
schedulable again; the pods this controller marked get back the readiness their
containers last reported. Pods bound to a node that does not exist are deleted
after the same timeout. A node's Lease outlives its Node only until the next pass:
the Lease names the Node as its owner, and a Lease whose owner is gone is deleted, as
Kubernetes' garbage collector deletes a dependent of a deleted owner.

Each pass is `plan_node_lifecycle(observed, now) -> actions`, pure and
table-tested, then `apply` performs the writes. Passes run every monitor
period and at once when a node's readiness changes; they read only the
informers' caches (no polling of the API server).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Iterator, Mapping, Union

import grpc

from kybernetes.v1 import coordination_pb2, node_pb2, pod_pb2
from services.common.events import NORMAL, WARNING, NullRecorder, Recorder, node_reference
from services.common.log import get_logger
from services.common.podutil import (
    FALSE,
    READY,
    RUNNING,
    TRUE,
    UNKNOWN,
    find_condition,
    last_heartbeat,
    node_condition_ready,
    node_ready_condition,
    pod_ready_condition,
    seconds,
)
from services.common.resources import LEASES, NODES, PODS
from services.common.runtime import Manager
from services.common.runtime.informer import Informer
from services.common.timestamps import timestamp_at

DEFAULT_GRACE_PERIOD = 20.0
DEFAULT_EVICTION_TIMEOUT = 30.0
# Reasons and messages as Kubernetes' node lifecycle controller writes them.
REASON_STATUS_UNKNOWN = "NodeStatusUnknown"
MESSAGE_STATUS_UNKNOWN = "Kubelet stopped posting node status."
REASON_NEVER_UPDATED = "NodeStatusNeverUpdated"
MESSAGE_NEVER_UPDATED = "Kubelet never posted node status."
REASON_POD_NODE_NOT_READY = "NodeNotReady"
# Where the kubelets' Leases are (Kubernetes' NamespaceNodeLease).
NODE_LEASE_NAMESPACE = "kube-node-lease"
_WRITE_CONCURRENCY = 16

log = get_logger(controller="nodelifecycle")


def pod_key(pod: pod_pb2.Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


# --- heartbeats: the Lease's and the status's ----------------------------------------------


def lease_renew_time(lease: coordination_pb2.Lease | None) -> float | None:
    """When a node's Lease was last renewed (epoch seconds), if it says."""
    if lease is None or not lease.spec.HasField("renew_time"):
        return None
    return seconds(lease.spec.renew_time)


def lease_renewals(leases: Iterable[coordination_pb2.Lease]) -> dict[str, float]:
    """Node name -> when its Lease was last renewed (epoch seconds), for the Leases that say."""
    renewals = {}
    for lease in leases:
        renewed = lease_renew_time(lease)
        if renewed is not None:
            renewals[lease.metadata.name] = renewed
    return renewals


def node_heartbeat(node: node_pb2.Node, lease_renewed: float | None) -> float | None:
    """The node's latest sign of life: its Lease's renewal or its Ready condition's heartbeat."""
    posted = last_heartbeat(node)
    if posted is None or (lease_renewed is not None and lease_renewed > posted):
        return lease_renewed
    return posted


Probes = Mapping[str, tuple[float | None, float]]


def probe(nodes: Iterable[node_pb2.Node], lease_renewals: Mapping[str, float], previous: Probes,
          now: float) -> dict[str, tuple[float | None, float]]:
    """Each node's latest heartbeat and when this controller first saw it (its own clock,
    `now` for a heartbeat it had not seen): Kubernetes' nodeHealth probeTimestamp."""
    probes = {}
    for node in nodes:
        name = node.metadata.name
        heartbeat = node_heartbeat(node, lease_renewals.get(name))
        seen = previous.get(name)
        probes[name] = seen if seen is not None and seen[0] == heartbeat else (heartbeat, now)
    return probes


# --- the decision ------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkNodeUnknown:
    node: node_pb2.Node


@dataclass(frozen=True)
class MarkPodNotReady:
    pod: pod_pb2.Pod
    node_name: str


@dataclass(frozen=True)
class RestorePodReady:
    pod: pod_pb2.Pod


@dataclass(frozen=True)
class EvictPod:
    pod: pod_pb2.Pod
    reason: str
    # No kubelet will finish a graceful deletion (the node does not exist): delete at once,
    # as Kubernetes' pod garbage collector does for pods of a missing node.
    force: bool = False


@dataclass(frozen=True)
class CollectLease:
    """A node's Lease whose owner, the Node of that uid, is gone."""

    lease: coordination_pb2.Lease
    owner_uid: str


Action = Union[MarkNodeUnknown, MarkPodNotReady, RestorePodReady, EvictPod, CollectLease]


@dataclass(frozen=True)
class Observed:
    """What one pass looks at: the nodes, the pods bound to each node name, since when
    (epoch seconds) each node name that pods are bound to has been seen missing, and when
    each node's Lease was last renewed (epoch seconds, by node name)."""

    nodes: Iterable[node_pb2.Node]
    pods_by_node: Mapping[str, list[pod_pb2.Pod]]
    missing_since: Mapping[str, float] = field(default_factory=dict)
    lease_renewals: Mapping[str, float] = field(default_factory=dict)
    # The pods this controller marked not ready, by node (None: found among pods_by_node). The
    # controller keeps them indexed, so that a pass over a thousand Ready nodes reads no pod.
    marked_by_node: Mapping[str, list[pod_pb2.Pod]] | None = None
    # When this controller saw each node's heartbeat change (its clock; `probe`): what its
    # staleness is judged by. Without it (a table test), by the heartbeat's own time.
    heard_at: Mapping[str, float] | None = None
    # The Leases in kube-node-lease (those naming a Node as owner are collected with it).
    leases: Iterable[coordination_pb2.Lease] = ()


@dataclass(frozen=True)
class Plan:
    actions: list[Action]
    # The missing-node record to keep for the next pass.
    missing_since: dict[str, float]


def plan_node_lifecycle(observed: Observed, now: float, grace_period: float, eviction_timeout: float) -> Plan:
    """One pass over every node (and every node name pods are bound to); pure."""
    actions: list[Action] = []
    known = set()
    for node in observed.nodes:
        name = node.metadata.name
        known.add(name)
        condition = node_ready_condition(node)
        heartbeat = observed.heard_at.get(name) if observed.heard_at is not None else None
        if heartbeat is None:
            heartbeat = node_heartbeat(node, observed.lease_renewals.get(name))
        if heartbeat is None:
            heartbeat = seconds(node.metadata.creation_timestamp)
        stale = now - heartbeat > grace_period
        if stale and (condition is None or condition.status != UNKNOWN):
            actions.append(MarkNodeUnknown(node))
            continue  # the status write comes back as an event; its pods are handled then
        if condition is not None and condition.status == TRUE and not stale:
            if observed.marked_by_node is not None:
                actions.extend(RestorePodReady(pod) for pod in observed.marked_by_node.get(name, []))
            else:
                pods = observed.pods_by_node.get(name, [])
                actions.extend(RestorePodReady(pod) for pod in pods if marked_not_ready_by_us(pod))
            continue
        pods = observed.pods_by_node.get(name, [])
        not_ready_since = (
            seconds(condition.last_transition_time)
            if condition is not None and condition.HasField("last_transition_time")
            else now
        )
        if now - not_ready_since >= eviction_timeout:
            why = f"node {name} has been not ready for {round(now - not_ready_since)}s"
            actions.extend(EvictPod(pod, why) for pod in pods if not pod.metadata.HasField("deletion_timestamp"))
        else:
            actions.extend(MarkPodNotReady(pod, name) for pod in pods if _pod_ready_status(pod) != FALSE)
    missing_since: dict[str, float] = {}
    for name in observed.pods_by_node:
        if name in known:
            continue
        pods = observed.pods_by_node[name]
        if not pods:
            continue
        since = missing_since[name] = observed.missing_since.get(name, now)
        if now - since >= eviction_timeout:
            actions.extend(EvictPod(pod, f"node {name} does not exist", force=True) for pod in pods)
    actions.extend(_orphaned_leases(observed.nodes, observed.leases))
    return Plan(actions, missing_since)


def node_owner_uid(lease: coordination_pb2.Lease) -> str:
    """The uid of the Node a Lease names as its owner ("": none)."""
    for owner in lease.metadata.owner_references:
        if owner.kind == "Node" and owner.name == lease.metadata.name:
            return owner.uid
    return ""


def _orphaned_leases(nodes: Iterable[node_pb2.Node], leases: Iterable[coordination_pb2.Lease]) -> list[Action]:
    uids = {node.metadata.uid for node in nodes}
    actions: list[Action] = []
    for lease in leases:
        owner = node_owner_uid(lease)
        if owner and owner not in uids:
            actions.append(CollectLease(lease, owner))
    return actions


def marked_not_ready_by_us(pod: pod_pb2.Pod) -> bool:
    return any(c.type == READY and c.reason == REASON_POD_NODE_NOT_READY for c in pod.status.conditions)


def _pod_ready_status(pod: pod_pb2.Pod) -> str:
    condition = pod_ready_condition(pod)
    return condition.status if condition is not None else ""


# --- what the writes carry (pure) --------------------------------------------------------


def node_marked_unknown(node: node_pb2.Node, now: float) -> node_pb2.Node:
    updated = node_pb2.Node()
    updated.CopyFrom(node)
    condition = node_ready_condition(updated)
    if condition is None:
        condition = updated.status.conditions.add(type=READY)
        condition.last_heartbeat_time.CopyFrom(node.metadata.creation_timestamp)
        condition.reason, condition.message = REASON_NEVER_UPDATED, MESSAGE_NEVER_UPDATED
    else:
        condition.reason, condition.message = REASON_STATUS_UNKNOWN, MESSAGE_STATUS_UNKNOWN
    condition.status = UNKNOWN
    condition.last_transition_time.CopyFrom(timestamp_at(now))
    return updated


def pod_marked_not_ready(pod: pod_pb2.Pod, node_name: str, now: float) -> pod_pb2.Pod:
    updated = pod_pb2.Pod()
    updated.CopyFrom(pod)
    condition = find_condition(updated.status.conditions, READY)
    if condition is None:
        condition = updated.status.conditions.add(type=READY)
    condition.status = FALSE
    condition.reason = REASON_POD_NODE_NOT_READY
    condition.message = f"node {node_name} is not ready"
    condition.last_transition_time.CopyFrom(timestamp_at(now))
    return updated


def pod_ready_restored(pod: pod_pb2.Pod, now: float) -> pod_pb2.Pod:
    """The node is back: the readiness its kubelet last reported for the containers.

    A kubelet sends a pod's status when its own view changes; for a pod whose
    containers did not change, it would not correct our mark."""
    updated = pod_pb2.Pod()
    updated.CopyFrom(pod)
    containers = updated.status.container_statuses
    ready = bool(containers) and all(c.ready for c in containers) and updated.status.phase == RUNNING
    for condition in updated.status.conditions:
        if condition.type == READY:
            condition.status = TRUE if ready else FALSE
            condition.reason = "" if ready else "ContainersNotReady"
            condition.message = ""
            condition.last_transition_time.CopyFrom(timestamp_at(now))
    return updated


# --- the controller ----------------------------------------------------------------------


class _PodsOn(Mapping[str, list[pod_pb2.Pod]]):
    """Node name -> its pods, read from the informer when first asked for."""

    def __init__(self, index: Mapping[str, object], load: Callable[[str], list[pod_pb2.Pod]]) -> None:
        self._index = index
        self._load = load
        self._loaded: dict[str, list[pod_pb2.Pod]] = {}

    def __getitem__(self, name: str) -> list[pod_pb2.Pod]:
        if name not in self._index:
            raise KeyError(name)
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._index))

    def __len__(self) -> int:
        return len(self._index)


class NodeLifecycleController:
    name = "nodelifecycle"

    def __init__(
        self,
        *,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        eviction_timeout: float = DEFAULT_EVICTION_TIMEOUT,
        monitor_period: float | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.grace_period = grace_period
        # NodeNotReady and eviction events (component "node-controller", as Kubernetes').
        self.recorder: Recorder = recorder or NullRecorder()
        self.eviction_timeout = eviction_timeout
        # Often enough that staleness is noticed well within the grace period.
        self.monitor_period = monitor_period or max(0.2, min(5.0, grace_period / 4))
        self._pods_by_node: dict[str, set[tuple[str, str]]] = {}
        self._marked_by_node: dict[str, set[tuple[str, str]]] = {}  # pods we marked not ready
        self._missing_since: dict[str, float] = {}
        self._probes: dict[str, tuple[float | None, float]] = {}  # see probe()
        self._streams = (0, 0)  # the node and lease informers' streams when last probed
        self._wakeup = asyncio.Event()
        self._writes = asyncio.Semaphore(_WRITE_CONCURRENCY)

    def setup(self, manager: Manager) -> None:
        self.client = manager.client
        self.nodes: Informer = manager.informer(NODES)
        self.pods: Informer = manager.informer(PODS)
        self.leases: Informer = manager.informer(LEASES, namespace=NODE_LEASE_NAMESPACE)
        self.pods.add_handler(self._on_pod)
        self.nodes.add_handler(self._on_node)

    # -- events -----------------------------------------------------------

    def _on_pod(self, event_type: str, pod: pod_pb2.Pod, old: pod_pb2.Pod | None) -> None:
        key = (pod.metadata.namespace, pod.metadata.name)
        if old is not None and old.spec.node_name and old.spec.node_name != pod.spec.node_name:
            self._unindex(self._pods_by_node, old.spec.node_name, key)
            self._unindex(self._marked_by_node, old.spec.node_name, key)
        if event_type == "DELETED":
            if pod.spec.node_name:
                self._unindex(self._pods_by_node, pod.spec.node_name, key)
                self._unindex(self._marked_by_node, pod.spec.node_name, key)
        elif pod.spec.node_name:
            self._pods_by_node.setdefault(pod.spec.node_name, set()).add(key)
            if marked_not_ready_by_us(pod):
                self._marked_by_node.setdefault(pod.spec.node_name, set()).add(key)
            else:
                self._unindex(self._marked_by_node, pod.spec.node_name, key)

    @staticmethod
    def _unindex(index: dict[str, set[tuple[str, str]]], node_name: str, key: tuple[str, str]) -> None:
        keys = index.get(node_name)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del index[node_name]

    def _on_node(self, event_type: str, node: node_pb2.Node, old: node_pb2.Node | None) -> None:
        was_ready = old is not None and node_condition_ready(old)
        if event_type == "DELETED" or was_ready != node_condition_ready(node):
            self._wakeup.set()  # act on a change of readiness at once, not at the next tick

    # -- the loop ---------------------------------------------------------

    async def run(self) -> None:
        log.info(
            "nodelifecycle_started",
            grace_period=self.grace_period,
            eviction_timeout=self.eviction_timeout,
            nodes=len(self.nodes),
        )
        while True:
            self._wakeup.clear()
            await self.monitor_once(time.time())
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.monitor_period)
            except asyncio.TimeoutError:
                pass

    def observe(self, now: float) -> Observed:
        nodes, leases = self.nodes.list(), self.leases.list()
        renewals = lease_renewals(leases)
        streams = (self.nodes.streams, self.leases.streams)
        if streams != self._streams:
            # Our view of the heartbeats was interrupted (an API server restart): the renewals
            # it held back were no node's fault. Every heartbeat counts from now.
            self._streams, self._probes = streams, {}
        self._probes = probe(nodes, renewals, self._probes, now)
        # Read lazily: a pass reads the pods only of the nodes it acts on.
        return Observed(
            nodes, _PodsOn(self._pods_by_node, self._pods_on), self._missing_since,
            renewals, _PodsOn(self._marked_by_node, self._marked_on),
            heard_at={name: seen for name, (_, seen) in self._probes.items()},
            leases=leases,
        )

    def _marked_on(self, node_name: str) -> list[pod_pb2.Pod]:
        return [pod for pod in self._pods_on(node_name, self._marked_by_node) if marked_not_ready_by_us(pod)]

    async def monitor_once(self, now: float) -> None:
        plan = plan_node_lifecycle(self.observe(now), now, self.grace_period, self.eviction_timeout)
        self._missing_since = plan.missing_since
        await self.apply(plan.actions, now)

    def _pods_on(
        self, node_name: str, index: dict[str, set[tuple[str, str]]] | None = None
    ) -> list[pod_pb2.Pod]:
        keys = (self._pods_by_node if index is None else index).get(node_name, ())
        return [pod for pod in self.pods.get_many(keys) if pod.spec.node_name == node_name]

    # -- writes -----------------------------------------------------------

    async def apply(self, actions: list[Action], now: float) -> None:
        if actions:
            await asyncio.gather(*(self._apply_one(action, now) for action in actions))

    async def _apply_one(self, action: Action, now: float) -> None:
        if isinstance(action, MarkNodeUnknown):
            node = action.node
            updated = node_marked_unknown(node, now)
            if await self._write(self.client.update_status(updated), node=node.metadata.name):
                previous = node_ready_condition(node)
                lease = self.leases.get(NODE_LEASE_NAMESPACE, node.metadata.name)
                heartbeat = node_heartbeat(node, lease_renew_time(lease))
                log.warning(
                    "node_not_ready",
                    node=node.metadata.name,
                    was=(previous.status if previous is not None else "") or None,
                    last_heartbeat_age=round(now - heartbeat, 1) if heartbeat is not None else None,
                    reason=REASON_NEVER_UPDATED if previous is None else REASON_STATUS_UNKNOWN,
                )
                name = node.metadata.name
                self.recorder.event_on(
                    node_reference(name), NORMAL, "NodeNotReady", f"Node {name} status is now: NodeNotReady"
                )
        elif isinstance(action, MarkPodNotReady):
            updated_pod = pod_marked_not_ready(action.pod, action.node_name, now)
            if await self._write(self.client.update_status(updated_pod), pod=pod_key(action.pod)):
                log.info("pod_marked_not_ready", pod=pod_key(action.pod), node=action.node_name)
                self.recorder.event(action.pod, WARNING, REASON_POD_NODE_NOT_READY, "Node is not ready")
        elif isinstance(action, RestorePodReady):
            restored = pod_ready_restored(action.pod, now)
            if await self._write(self.client.update_status(restored), pod=pod_key(action.pod)):
                ready = pod_ready_condition(restored)
                log.info("pod_ready_restored", pod=pod_key(action.pod), node=action.pod.spec.node_name,
                         ready=ready is not None and ready.status == TRUE)
        elif isinstance(action, CollectLease):
            await self._collect_lease(action)
        else:
            pod = action.pod
            call = self.client.delete(
                PODS, pod.metadata.name, pod.metadata.namespace, resource_version=pod.metadata.resource_version,
                grace_period_seconds=0 if action.force else None,
            )
            if await self._write(call, pod=pod_key(pod)):
                log.warning("pod_evicted", pod=pod_key(pod), node=pod.spec.node_name, reason=action.reason)
                node_name = pod.spec.node_name
                self.recorder.event(
                    pod, NORMAL, "NodeControllerEviction", f"Marking for deletion Pod {pod_key(pod)}: {action.reason}"
                )
                self.recorder.event_on(
                    node_reference(node_name), NORMAL, "DeletingAllPods", f"Deleting all Pods from Node {node_name}."
                )

    async def _collect_lease(self, action: CollectLease) -> None:
        lease = action.lease
        name = lease.metadata.name
        # Our caches may not have seen the Node yet (its watch and the Leases' are two streams):
        # the owner is looked up in the API, as Kubernetes' garbage collector does, before the
        # dependent goes. The delete's precondition spares a Lease written meanwhile.
        try:
            owner = await self.client.get(NODES, name)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                log.warning("nodelifecycle_read_failed", code=error.code().name, detail=error.details(), node=name)
                return
        else:
            if owner.metadata.uid == action.owner_uid:
                return
        call = self.client.delete(
            LEASES, name, NODE_LEASE_NAMESPACE, resource_version=lease.metadata.resource_version
        )
        if await self._write(call, lease=f"{NODE_LEASE_NAMESPACE}/{name}"):
            log.info("lease_collected", lease=f"{NODE_LEASE_NAMESPACE}/{name}", owner_uid=action.owner_uid)

    async def _write(self, call: Awaitable[object], **context: str) -> bool:
        """Runs one write; a lost race or a vanished object is left to the next pass."""
        async with self._writes:
            try:
                await call
                return True
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND):
                    log.warning("nodelifecycle_write_failed", code=error.code().name, detail=error.details(), **context)
                return False
