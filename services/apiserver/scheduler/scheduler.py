"""The scheduling loop: pending pods in, bindings out.

Informers on pods, nodes and services feed a SchedulerCache. Pods with no node
go to an active queue; one loop takes them one at a time, filters and scores
every registered node from the cache's precomputed aggregates (no I/O), assumes
the choice in the cache at once, and hands the Bind call to a task. Up to
`bind_concurrency` binds (and status writes) are in flight; the loop takes the
next pod only when a slot is free, so every decision sees the assumptions of
the ones before it.

A pod that fits nowhere is parked as unschedulable, with a PodScheduled=False
condition saying why (written only when the message changes). Parked pods go
back to the active queue when the cluster changes in a way that could make room:
a node added or changed in readiness, labels, schedulability or allocatable; a
placed pod deleted, finished or moved; and every `retry_period` as a safety
net. A heartbeat alone is not a change, so the scheduler does not spin. A node is ready
when its Ready condition is True: node lifecycle marks a node whose heartbeats
stopped Ready=Unknown, and its kubelet posts True again when it is back, as
Kubernetes' scheduler leaves liveness to the node controller. The scheduler keeps no
clock of its own on heartbeats, so a restart of the API server, which holds the
renewals back, does not make it skip nodes.

Binding is guarded by the API server (a pod is bound once; FAILED_PRECONDITION
when it already is), so two schedulers may race safely: the loser's assumption
is corrected by the watch.

A pod being deleted (deletionTimestamp set) is never placed (Kubernetes'
skipPodSchedule). A bound one still holds its resources and host ports on its
node until it is gone or has finished, as in Kubernetes, but no longer counts
for spreading (its replacement may go beside it).
"""

from __future__ import annotations

import asyncio
import collections
import random
from typing import Any

import grpc

from kybernetes.v1 import meta_pb2, node_pb2, pod_pb2, service_pb2
from services.common.events import NORMAL, WARNING, NullRecorder, Recorder, pod_reference
from services.common.log import get_logger
from services.common.podutil import POD_SCHEDULED, find_condition, is_being_deleted, is_terminated, node_condition_ready
from services.common.resources import NODES, PODS, SERVICES
from services.common.runtime import Backoff, Manager, TaskGroup
from services.common.runtime.informer import Informer
from services.common.timestamps import now_timestamp

from .cache import PodInfo, PodKey, SchedulerCache
from .filters import feasible_nodes_to_find, find_some_feasible, unschedulable_message
from .scores import select_node

REASON_UNSCHEDULABLE = "Unschedulable"
DEFAULT_BIND_CONCURRENCY = 64
DEFAULT_RETRY_PERIOD = 30.0
_RETRY_INITIAL = 0.1
_RETRY_MAX = 10.0

log = get_logger(controller="scheduler")


def _name(key: PodKey) -> str:
    return f"{key[0]}/{key[1]}"


def _node_state(node: node_pb2.Node | None) -> Any:
    """What about a node can turn a pod that did not fit into one that does."""
    if node is None:
        return None
    return (
        node_condition_ready(node),
        node.spec.unschedulable,
        sorted(node.metadata.labels.items()),
        sorted(node.status.allocatable.items()),
        sorted(node.status.capacity.items()),
    )


def _pod_spec_changed(old: pod_pb2.Pod | None, pod: pod_pb2.Pod) -> bool:
    if old is None:
        return True
    return (
        old.metadata.uid != pod.metadata.uid
        or old.metadata.generation != pod.metadata.generation
        or old.metadata.labels != pod.metadata.labels
    )


def scheduled_condition(pod: pod_pb2.Pod) -> pod_pb2.PodCondition | None:
    return find_condition(pod.status.conditions, POD_SCHEDULED)


class Scheduler:
    name = "scheduler"

    def __init__(
        self,
        *,
        bind_concurrency: int = DEFAULT_BIND_CONCURRENCY,
        retry_period: float = DEFAULT_RETRY_PERIOD,
        rng: random.Random | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        # Scheduled / FailedScheduling events (component "default-scheduler", as Kubernetes').
        self.recorder: Recorder = recorder or NullRecorder()
        self.retry_period = retry_period
        self.cache = SchedulerCache()
        self._rng = rng or random.Random()
        # Where the next pod's search for fitting nodes starts (find_some_feasible).
        self._next_start = 0
        self._active: collections.deque[PodKey] = collections.deque()
        self._active_set: set[PodKey] = set()
        self._unschedulable: set[PodKey] = set()
        self._backoff = Backoff(_RETRY_INITIAL, _RETRY_MAX)
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(bind_concurrency)
        self._writes = TaskGroup("scheduler-writes")
        self.bound = 0  # binds that succeeded, for the curious (bench, tests)

    def setup(self, manager: Manager) -> None:
        self.client = manager.client
        self.pods: Informer = manager.informer(PODS)
        self.nodes: Informer = manager.informer(NODES)
        self.services: Informer = manager.informer(SERVICES)
        self.pods.add_handler(self._on_pod)
        self.nodes.add_handler(self._on_node)
        self.services.add_handler(self._on_service)

    # -- queue ------------------------------------------------------------

    def _enqueue(self, key: PodKey) -> None:
        self._unschedulable.discard(key)
        if key not in self._active_set:
            self._active_set.add(key)
            self._active.append(key)
            self._wakeup.set()

    def _drop(self, key: PodKey) -> None:
        self._active_set.discard(key)  # left in the deque; skipped when popped
        self._unschedulable.discard(key)
        self._backoff.reset(key)

    def _retry_later(self, key: PodKey) -> None:
        asyncio.get_running_loop().call_later(self._backoff.failure(key), self._enqueue, key)

    def _cluster_changed(self) -> None:
        """Room may have appeared: every parked pod gets another try."""
        if not self._unschedulable:
            return
        parked, self._unschedulable = self._unschedulable, set()
        for key in sorted(parked):
            self._enqueue(key)

    # -- events -----------------------------------------------------------

    def _on_pod(self, event_type: str, pod: pod_pb2.Pod, old: pod_pb2.Pod | None) -> None:
        key = (pod.metadata.namespace, pod.metadata.name)
        if event_type == "DELETED":
            self._drop(key)
            if self.cache.remove_pod(key):
                self._cluster_changed()
            return
        if pod.spec.node_name:
            self._drop(key)
            if self.cache.set_bound_pod(pod):
                self._cluster_changed()
            return
        if is_terminated(pod) or is_being_deleted(pod):
            self._drop(key)
            self.cache.remove_pod(key)
            return
        placement = self.cache.placement(key)
        if placement is not None:
            uid, _, assumed = placement
            if assumed and uid == pod.metadata.uid:
                return  # our bind is in flight; the watch has not shown it yet
            self.cache.remove_pod(key)  # a new pod under an old name
        if key in self._unschedulable and not _pod_spec_changed(old, pod):
            return  # e.g. our own condition write: nothing new to try
        self._enqueue(key)

    def _on_node(self, event_type: str, node: node_pb2.Node, old: node_pb2.Node | None) -> None:
        if event_type == "DELETED":
            self.cache.remove_node(node.metadata.name)
            return
        self.cache.set_node(node)
        if _node_state(old) != _node_state(node):
            self._cluster_changed()

    def _on_service(self, event_type: str, service: service_pb2.Service, old: service_pb2.Service | None) -> None:
        if event_type == "DELETED":
            self.cache.remove_service(service.metadata.namespace, service.metadata.name)
        else:
            self.cache.set_service(service.metadata.namespace, service.metadata.name, dict(service.spec.selector))

    # -- the loop ---------------------------------------------------------

    async def run(self) -> None:
        """Runs once the informers are synced: schedules pending pods until cancelled."""
        log.info(
            "scheduler_started",
            nodes=len(self.cache.registered_nodes()),
            pending=len(self._active_set),
        )
        try:
            await asyncio.gather(self._schedule_forever(), self._retry_parked())
        finally:
            await self._writes.close()

    async def _retry_parked(self) -> None:
        while True:
            await asyncio.sleep(self.retry_period)
            self._cluster_changed()

    async def _schedule_forever(self) -> None:
        while True:
            if not self._active:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            key = self._next_active()
            if key is None:
                self._slots.release()
                continue
            try:
                holds_slot = self.schedule_one(key)
            except Exception:
                log.exception("schedule_failed", pod=_name(key))
                holds_slot = False
                self._retry_later(key)
            if not holds_slot:
                self._slots.release()
            # Let watch events (and bind replies) in between decisions.
            await asyncio.sleep(0)

    def _next_active(self) -> PodKey | None:
        while self._active:
            key = self._active.popleft()
            if key in self._active_set:
                self._active_set.discard(key)
                return key
        return None

    def schedule_one(self, key: PodKey) -> bool:
        """Decides for one pod; returns True when it started a task that holds a slot."""
        pod = self.pods.get(*key)
        if pod is None or pod.spec.node_name or is_terminated(pod) or is_being_deleted(pod):
            return False
        if self.cache.is_assumed(key):
            return False
        info = self.cache.pod_info(pod)
        nodes = self.cache.registered_nodes()
        feasible, failures, self._next_start = find_some_feasible(
            info, nodes, want=feasible_nodes_to_find(len(nodes)), start=self._next_start,
        )
        if not feasible:
            self._unschedulable.add(key)
            return self._report_unschedulable(pod, unschedulable_message(len(nodes), failures))
        node = select_node(info, feasible, self._rng)
        self.cache.assume(info, node.name)
        self._writes.spawn(self._bind(info, node.name), name=f"bind-{_name(key)}")
        return True

    # -- writes -----------------------------------------------------------

    async def _bind(self, info: PodInfo, node_name: str) -> None:
        key = info.key
        binding = pod_pb2.Binding(
            metadata=meta_pb2.ObjectMeta(namespace=info.namespace, name=info.name, uid=info.uid),
            target=pod_pb2.ObjectReference(kind="Node", name=node_name),
        )
        try:
            await self.client.stub(PODS).Bind(binding, timeout=self.client.timeout)
            self.bound += 1
            self._backoff.reset(key)
            log.info("pod_bound", pod=_name(key), node=node_name)
            self.recorder.event_on(
                pod_reference(info.namespace, info.name, info.uid), NORMAL, "Scheduled",
                f"Successfully assigned {_name(key)} to {node_name}",
            )
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                # Bound already (another scheduler, or a retried call that had
                # succeeded) or replaced: the watch shows which, and corrects
                # the cache; nothing to do here.
                log.info("pod_bind_skipped", pod=_name(key), node=node_name, detail=error.details())
            elif code == grpc.StatusCode.NOT_FOUND:
                self.cache.forget(key, info.uid)
            else:
                self.cache.forget(key, info.uid)
                self._retry_later(key)
                log.warning("pod_bind_failed", pod=_name(key), node=node_name, code=code.name, detail=error.details())
        except asyncio.CancelledError:
            raise
        except Exception:
            self.cache.forget(key, info.uid)
            self._retry_later(key)
            log.exception("pod_bind_failed", pod=_name(key), node=node_name)
        finally:
            self._slots.release()

    def _report_unschedulable(self, pod: pod_pb2.Pod, message: str) -> bool:
        """Writes PodScheduled=False with the reason if it changed; True when a task holds the slot."""
        # Every failed attempt, as Kubernetes records it (the recorder aggregates repeats).
        self.recorder.event(pod, WARNING, "FailedScheduling", message)
        condition = scheduled_condition(pod)
        if (
            condition is not None
            and condition.status == "False"
            and condition.reason == REASON_UNSCHEDULABLE
            and condition.message == message
        ):
            return False
        log.info("pod_unschedulable", pod=f"{pod.metadata.namespace}/{pod.metadata.name}", message=message)
        updated = pod_pb2.Pod()
        updated.CopyFrom(pod)
        condition = scheduled_condition(updated)
        if condition is None:
            condition = updated.status.conditions.add(type=POD_SCHEDULED)
        if condition.status != "False":
            condition.last_transition_time.CopyFrom(now_timestamp())
        condition.status, condition.reason, condition.message = "False", REASON_UNSCHEDULABLE, message
        self._writes.spawn(self._write_status(updated), name=f"unschedulable-{pod.metadata.name}")
        return True

    async def _write_status(self, pod: pod_pb2.Pod) -> None:
        key = (pod.metadata.namespace, pod.metadata.name)
        try:
            # Guarded by resource_version: never overwrite a bind that happened meanwhile.
            await self.client.update_status(pod)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.ABORTED:
                self._enqueue(key)  # it changed: decide again from the newer version
            elif code != grpc.StatusCode.NOT_FOUND:
                log.warning("pod_status_write_failed", pod=_name(key), code=code.name, detail=error.details())
                self._unschedulable.discard(key)
                self._retry_later(key)
        finally:
            self._slots.release()

