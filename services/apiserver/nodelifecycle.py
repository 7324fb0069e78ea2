"""Node lifecycle: notices nodes that stopped heartbeating and moves their work elsewhere.

A node's kubelet posts the Ready condition with a fresh last_heartbeat_time
every few seconds. When the newest heartbeat is older than the grace period,
this controller marks the node Ready=Unknown, marks its pods not Ready (so the
endpoints controller drops them at once), and once the node has been not ready
for the eviction timeout, deletes its pods so their controllers recreate them on
live nodes. A node whose kubelet comes back posts Ready=True itself and is
schedulable again; the pods this controller marked get back the readiness their
containers last reported. Pods bound to a node that does not exist are deleted
after the same timeout.

Each pass is `plan_node_lifecycle(observed, now) -> actions`, pure and
table-tested, then `apply` performs the writes. Passes run every monitor
period and at once when a node's readiness changes; they read only the
informers' caches (no polling of the API server).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Iterable, Mapping, Union

import grpc

from kybernetes.v1 import node_pb2, pod_pb2
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
from services.common.resources import NODES, PODS
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
_WRITE_CONCURRENCY = 16

log = get_logger(controller="nodelifecycle")


def pod_key(pod: pod_pb2.Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


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


Action = Union[MarkNodeUnknown, MarkPodNotReady, RestorePodReady, EvictPod]


@dataclass(frozen=True)
class Observed:
    """What one pass looks at: the nodes, the pods bound to each node name, and since when
    (epoch seconds) each node name that pods are bound to has been seen missing."""

    nodes: Iterable[node_pb2.Node]
    pods_by_node: Mapping[str, list[pod_pb2.Pod]]
    missing_since: Mapping[str, float] = field(default_factory=dict)


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
        pods = observed.pods_by_node.get(name, [])
        condition = node_ready_condition(node)
        heartbeat = last_heartbeat(node)
        if heartbeat is None:
            heartbeat = seconds(node.metadata.creation_timestamp)
        stale = now - heartbeat > grace_period
        if stale and (condition is None or condition.status != UNKNOWN):
            actions.append(MarkNodeUnknown(node))
            continue  # the status write comes back as an event; its pods are handled then
        if condition is not None and condition.status == TRUE and not stale:
            actions.extend(RestorePodReady(pod) for pod in pods if marked_not_ready_by_us(pod))
            continue
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
    for name, pods in observed.pods_by_node.items():
        if name in known or not pods:
            continue
        since = missing_since[name] = observed.missing_since.get(name, now)
        if now - since >= eviction_timeout:
            actions.extend(EvictPod(pod, f"node {name} does not exist", force=True) for pod in pods)
    return Plan(actions, missing_since)


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


class NodeLifecycleController:
    name = "nodelifecycle"

    def __init__(
        self,
        *,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        eviction_timeout: float = DEFAULT_EVICTION_TIMEOUT,
        monitor_period: float | None = None,
    ) -> None:
        self.grace_period = grace_period
        self.eviction_timeout = eviction_timeout
        # Often enough that staleness is noticed well within the grace period.
        self.monitor_period = monitor_period or max(0.2, min(5.0, grace_period / 4))
        self._pods_by_node: dict[str, set[tuple[str, str]]] = {}
        self._missing_since: dict[str, float] = {}
        self._wakeup = asyncio.Event()
        self._writes = asyncio.Semaphore(_WRITE_CONCURRENCY)

    def setup(self, manager: Manager) -> None:
        self.client = manager.client
        self.nodes: Informer = manager.informer(NODES)
        self.pods: Informer = manager.informer(PODS)
        self.pods.add_handler(self._on_pod)
        self.nodes.add_handler(self._on_node)

    # -- events -----------------------------------------------------------

    def _on_pod(self, event_type: str, pod: pod_pb2.Pod, old: pod_pb2.Pod | None) -> None:
        key = (pod.metadata.namespace, pod.metadata.name)
        if old is not None and old.spec.node_name and old.spec.node_name != pod.spec.node_name:
            self._unindex(old.spec.node_name, key)
        if event_type == "DELETED":
            if pod.spec.node_name:
                self._unindex(pod.spec.node_name, key)
        elif pod.spec.node_name:
            self._pods_by_node.setdefault(pod.spec.node_name, set()).add(key)

    def _unindex(self, node_name: str, key: tuple[str, str]) -> None:
        keys = self._pods_by_node.get(node_name)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._pods_by_node[node_name]

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

    def observe(self) -> Observed:
        pods_by_node = {name: self._pods_on(name) for name in self._pods_by_node}
        return Observed(self.nodes.list(), pods_by_node, self._missing_since)

    async def monitor_once(self, now: float) -> None:
        plan = plan_node_lifecycle(self.observe(), now, self.grace_period, self.eviction_timeout)
        self._missing_since = plan.missing_since
        await self.apply(plan.actions, now)

    def _pods_on(self, node_name: str) -> list[pod_pb2.Pod]:
        pods = []
        for namespace, name in self._pods_by_node.get(node_name, ()):
            pod = self.pods.get(namespace, name)
            if pod is not None and pod.spec.node_name == node_name:
                pods.append(pod)
        return pods

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
                heartbeat = last_heartbeat(node)
                log.warning(
                    "node_not_ready",
                    node=node.metadata.name,
                    was=(previous.status if previous is not None else "") or None,
                    last_heartbeat_age=round(now - heartbeat, 1) if heartbeat is not None else None,
                    reason=REASON_NEVER_UPDATED if previous is None else REASON_STATUS_UNKNOWN,
                )
        elif isinstance(action, MarkPodNotReady):
            updated_pod = pod_marked_not_ready(action.pod, action.node_name, now)
            if await self._write(self.client.update_status(updated_pod), pod=pod_key(action.pod)):
                log.info("pod_marked_not_ready", pod=pod_key(action.pod), node=action.node_name)
        elif isinstance(action, RestorePodReady):
            restored = pod_ready_restored(action.pod, now)
            if await self._write(self.client.update_status(restored), pod=pod_key(action.pod)):
                ready = pod_ready_condition(restored)
                log.info("pod_ready_restored", pod=pod_key(action.pod), node=action.pod.spec.node_name,
                         ready=ready is not None and ready.status == TRUE)
        else:
            pod = action.pod
            call = self.client.delete(
                PODS, pod.metadata.name, pod.metadata.namespace, resource_version=pod.metadata.resource_version,
                grace_period_seconds=0 if action.force else None,
            )
            if await self._write(call, pod=pod_key(pod)):
                log.warning("pod_evicted", pod=pod_key(pod), node=pod.spec.node_name, reason=action.reason)

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
