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

The controller works from informers; the periodic check reads only their
caches (no polling of the API server). Readiness helpers used by the scheduler
and the endpoints controller live here too, so all three agree on what "ready"
means.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from kybernetes.v1 import node_pb2, pod_pb2
from services.common.client import ApiClient
from services.common.informer import Informer
from services.common.log import get_logger
from services.common.resources import NODES, PODS
from services.common.timestamps import timestamp_at

DEFAULT_GRACE_PERIOD = 20.0
DEFAULT_EVICTION_TIMEOUT = 30.0
READY = "Ready"
TERMINATED_PHASES = ("Succeeded", "Failed")
# Reasons and messages as Kubernetes' node lifecycle controller writes them.
REASON_STATUS_UNKNOWN = "NodeStatusUnknown"
MESSAGE_STATUS_UNKNOWN = "Kubelet stopped posting node status."
REASON_NEVER_UPDATED = "NodeStatusNeverUpdated"
MESSAGE_NEVER_UPDATED = "Kubelet never posted node status."
REASON_POD_NODE_NOT_READY = "NodeNotReady"
_WRITE_CONCURRENCY = 16

log = get_logger(controller="nodelifecycle")


def seconds(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def ready_condition(node: node_pb2.Node) -> node_pb2.NodeCondition | None:
    for condition in node.status.conditions:
        if condition.type == READY:
            return condition
    return None


def last_heartbeat(node: node_pb2.Node) -> float | None:
    """When the node's kubelet last posted its Ready condition (epoch seconds), if ever."""
    condition = ready_condition(node)
    if condition is None or not condition.HasField("last_heartbeat_time"):
        return None
    return seconds(condition.last_heartbeat_time)


def is_node_ready(node: node_pb2.Node, now: float, grace_period: float) -> bool:
    """Ready=True, posted within the grace period: the node may take work."""
    condition = ready_condition(node)
    if condition is None or condition.status != "True":
        return False
    heartbeat = last_heartbeat(node)
    return heartbeat is not None and now - heartbeat <= grace_period


def node_condition_ready(node: node_pb2.Node) -> bool:
    """The node's Ready condition says True (whatever its age: staleness is turned into
    Ready=Unknown by this controller, which is an event the others see)."""
    condition = ready_condition(node)
    return condition is not None and condition.status == "True"


def pod_key(pod: pod_pb2.Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


class NodeLifecycleController:
    def __init__(
        self,
        client: ApiClient,
        *,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        eviction_timeout: float = DEFAULT_EVICTION_TIMEOUT,
        monitor_period: float | None = None,
    ) -> None:
        self.client = client
        self.grace_period = grace_period
        self.eviction_timeout = eviction_timeout
        # Often enough that staleness is noticed well within the grace period.
        self.monitor_period = monitor_period or max(0.2, min(5.0, grace_period / 4))
        self.nodes = Informer(client, NODES)
        self.pods = Informer(client, PODS)
        self._pods_by_node: dict[str, set[tuple[str, str]]] = {}
        self._missing_since: dict[str, float] = {}  # node name -> first seen missing (monotonic)
        self._wakeup = asyncio.Event()
        self._writes = asyncio.Semaphore(_WRITE_CONCURRENCY)

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
        self.pods.add_handler(self._on_pod)
        self.nodes.add_handler(self._on_node)
        informers = [
            asyncio.create_task(self.nodes.run(), name="nodelifecycle-nodes"),
            asyncio.create_task(self.pods.run(), name="nodelifecycle-pods"),
        ]
        try:
            await self.nodes.wait_synced()
            await self.pods.wait_synced()
            log.info(
                "nodelifecycle_started",
                grace_period=self.grace_period,
                eviction_timeout=self.eviction_timeout,
                nodes=len(self.nodes.list()),
            )
            while True:
                self._wakeup.clear()
                try:
                    await self.monitor_once(time.time(), time.monotonic())
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("nodelifecycle_check_failed")
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self.monitor_period)
                except asyncio.TimeoutError:
                    pass
        finally:
            for task in informers:
                task.cancel()
            await asyncio.gather(*informers, return_exceptions=True)

    async def monitor_once(self, now: float, monotonic_now: float) -> None:
        """One pass over every node (and every node name pods are bound to)."""
        work = []
        known = set()
        for node in self.nodes.list():
            name = node.metadata.name
            known.add(name)
            condition = ready_condition(node)
            heartbeat = last_heartbeat(node)
            if heartbeat is None:
                heartbeat = seconds(node.metadata.creation_timestamp)
            stale = now - heartbeat > self.grace_period
            if stale and (condition is None or condition.status != "Unknown"):
                work.append(self._mark_unknown(node, now))
                continue  # the status write comes back as an event; its pods are handled then
            if condition is not None and condition.status == "True" and not stale:
                work.extend(self._restore_pod_ready(pod) for pod in self._pods_on(name) if _marked_by_us(pod))
                continue
            not_ready_since = (
                seconds(condition.last_transition_time)
                if condition is not None and condition.HasField("last_transition_time")
                else now
            )
            pods = self._pods_on(name)
            if now - not_ready_since >= self.eviction_timeout:
                work.extend(self._evict(pod, f"node {name} has been not ready for {round(now - not_ready_since)}s")
                            for pod in pods)
            else:
                work.extend(self._mark_pod_not_ready(pod, name) for pod in pods if _pod_ready_status(pod) != "False")
        for name in list(self._missing_since):
            if name in known or name not in self._pods_by_node:
                del self._missing_since[name]
        for name in self._pods_by_node:
            if name in known:
                continue
            since = self._missing_since.setdefault(name, monotonic_now)
            if monotonic_now - since >= self.eviction_timeout:
                work.extend(self._evict(pod, f"node {name} does not exist") for pod in self._pods_on(name))
        if work:
            await asyncio.gather(*work)

    def _pods_on(self, node_name: str) -> list[pod_pb2.Pod]:
        pods = []
        for namespace, name in self._pods_by_node.get(node_name, ()):
            pod = self.pods.get(namespace, name)
            if pod is not None and pod.spec.node_name == node_name:
                pods.append(pod)
        return pods

    # -- writes -----------------------------------------------------------

    async def _mark_unknown(self, node: node_pb2.Node, now: float) -> None:
        updated = node_pb2.Node()
        updated.CopyFrom(node)
        condition = ready_condition(updated)
        if condition is None:
            condition = updated.status.conditions.add(type=READY)
            condition.last_heartbeat_time.CopyFrom(node.metadata.creation_timestamp)
            condition.reason, condition.message = REASON_NEVER_UPDATED, MESSAGE_NEVER_UPDATED
        else:
            condition.reason, condition.message = REASON_STATUS_UNKNOWN, MESSAGE_STATUS_UNKNOWN
        previous_status = condition.status
        condition.status = "Unknown"
        condition.last_transition_time.CopyFrom(timestamp_at(now))
        heartbeat = last_heartbeat(node)
        if await self._write(self.client.update_status(updated), node=node.metadata.name):
            log.warning(
                "node_not_ready",
                node=node.metadata.name,
                was=previous_status or None,
                last_heartbeat_age=round(now - heartbeat, 1) if heartbeat is not None else None,
                reason=condition.reason,
            )

    async def _mark_pod_not_ready(self, pod: pod_pb2.Pod, node_name: str) -> None:
        updated = pod_pb2.Pod()
        updated.CopyFrom(pod)
        now = timestamp_at(time.time())
        for condition in updated.status.conditions:
            if condition.type == READY:
                break
        else:
            condition = updated.status.conditions.add(type=READY)
        condition.status = "False"
        condition.reason = REASON_POD_NODE_NOT_READY
        condition.message = f"node {node_name} is not ready"
        condition.last_transition_time.CopyFrom(now)
        if await self._write(self.client.update_status(updated), pod=pod_key(pod)):
            log.info("pod_marked_not_ready", pod=pod_key(pod), node=node_name)

    async def _restore_pod_ready(self, pod: pod_pb2.Pod) -> None:
        """The node is back: give a pod we marked the readiness its kubelet last reported.

        A kubelet sends a pod's status when its own view changes; for a pod
        whose containers did not change, it would not correct our mark."""
        updated = pod_pb2.Pod()
        updated.CopyFrom(pod)
        containers = updated.status.container_statuses
        ready = bool(containers) and all(c.ready for c in containers) and updated.status.phase == "Running"
        for condition in updated.status.conditions:
            if condition.type == READY:
                condition.status = "True" if ready else "False"
                condition.reason = "" if ready else "ContainersNotReady"
                condition.message = ""
                condition.last_transition_time.CopyFrom(timestamp_at(time.time()))
        if await self._write(self.client.update_status(updated), pod=pod_key(pod)):
            log.info("pod_ready_restored", pod=pod_key(pod), node=pod.spec.node_name, ready=ready)

    async def _evict(self, pod: pod_pb2.Pod, why: str) -> None:
        call = self.client.delete(
            PODS, pod.metadata.name, pod.metadata.namespace, resource_version=pod.metadata.resource_version
        )
        if await self._write(call, pod=pod_key(pod)):
            log.warning("pod_evicted", pod=pod_key(pod), node=pod.spec.node_name, reason=why)

    async def _write(self, call: Any, **context: str) -> bool:
        """Runs one write; a lost race or a vanished object is left to the next pass."""
        async with self._writes:
            try:
                await call
                return True
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND):
                    log.warning("nodelifecycle_write_failed", code=error.code().name, detail=error.details(), **context)
                return False


def _marked_by_us(pod: pod_pb2.Pod) -> bool:
    return any(c.type == READY and c.reason == REASON_POD_NODE_NOT_READY for c in pod.status.conditions)


def _pod_ready_status(pod: pod_pb2.Pod) -> str:
    for condition in pod.status.conditions:
        if condition.type == READY:
            return condition.status
    return ""


async def run(
    api_address: str,
    *,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    eviction_timeout: float = DEFAULT_EVICTION_TIMEOUT,
) -> None:
    client = ApiClient(api_address, timeout=30.0)
    try:
        await NodeLifecycleController(client, grace_period=grace_period, eviction_timeout=eviction_timeout).run()
    finally:
        await client.close()
