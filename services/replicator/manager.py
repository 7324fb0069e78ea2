"""The replication manager: keeps each replication controller's live pods at spec.replicas.

Informers on replication controllers and pods (the public API only) feed a
work queue of controller keys; a worker syncs one controller at a time:

1. claim: of the pods in its namespace, the ones whose controller reference
   names its uid are its own; an owned pod whose labels no longer match is
   released, and a matching orphan (no controller) is adopted;
2. count: live owned pods minus spec.replicas is what to create or delete,
   but only once the expectations of its previous sync are met (see
   expectations.py), so a watch that lags our own writes never over-creates.
   A pod being deleted (deletionTimestamp set: its kubelet is stopping it) is
   not live (Kubernetes' FilterActivePods): its replacement is made at once,
   and a scale-down neither counts it nor deletes it again; its marking meets
   the expectation of its deletion, as its removal would;
3. act: creates (slow start: 1, 2, 4, ... at a time, stopping at the first
   failure) and deletes run in parallel, bounded by one semaphore for the
   whole process;
4. report: status.replicas, readyReplicas, ... written when they change.

Garbage collection: a pod whose controller reference names a replication
controller that no longer exists (deleted with the default Background policy)
is deleted, once the informers are synced and after the API server confirms the
controller is gone. Nothing is kept outside the API: a restarted replicator
rebuilds its view from the informers and acts only on what it sees.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import grpc

from kybernetes.v1 import pod_pb2, replication_controller_pb2
from services.common.events import NORMAL, WARNING, NullRecorder, Recorder
from services.common.log import get_logger
from services.common.podutil import is_active, is_being_deleted as pod_being_deleted
from services.common.resources import FOREGROUND_FINALIZER, PODS, REPLICATION_CONTROLLERS
from services.common.runtime import Manager, WorkQueue, run_workers
from services.common.runtime.informer import Informer

from .expectations import DEFAULT_TIMEOUT, Expectations
from .ownerindex import OwnerIndex
from .replicas import (
    compute_status,
    controller_ref,
    deletion_order,
    foreground_plan,
    in_foreground_deletion,
    is_being_deleted,
    new_pod,
    owner_reference,
    rc_controller_ref,
    replica_diff,
    selector_of,
    without_finalizer,
)

ObjectKey = tuple[str, str]  # (namespace, name)
ReplicationController = replication_controller_pb2.ReplicationController

DEFAULT_WORKERS = 5
DEFAULT_CONCURRENCY = 32
DEFAULT_RESYNC_PERIOD = 30.0
# At most this many creates or deletes per sync, as Kubernetes' burstReplicas.
MAX_BURST = 500
# A call that failed this way may still have happened: keep expecting its event.
_AMBIGUOUS = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)

log = get_logger(controller="replicator")


def _name(key: ObjectKey) -> str:
    return f"{key[0]}/{key[1]}"


def _pod_name(pod: pod_pb2.Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


def _rc_name(rc: ReplicationController) -> str:
    return f"{rc.metadata.namespace}/{rc.metadata.name}"


class SyncError(Exception):
    """A sync did not finish its work; the controller is retried with back-off."""


class ReplicationManager:
    name = "replicator"

    def __init__(
        self,
        *,
        workers: int = DEFAULT_WORKERS,
        concurrency: int = DEFAULT_CONCURRENCY,
        resync_period: float = DEFAULT_RESYNC_PERIOD,
        expectations_timeout: float = DEFAULT_TIMEOUT,
        recorder: Recorder | None = None,
    ) -> None:
        self.workers = workers
        # SuccessfulCreate / SuccessfulDelete (and Failed...) events on the controller.
        self.recorder: Recorder = recorder or NullRecorder()
        self.resync_period = resync_period
        self.queue: WorkQueue[ObjectKey] = WorkQueue()
        self.gc_queue: WorkQueue[ObjectKey] = WorkQueue()
        self.expectations: Expectations[ObjectKey] = Expectations(expectations_timeout)
        self._writes = asyncio.Semaphore(concurrency)
        self._synced = False
        # The pods by controller uid, and the orphans by namespace: a sync reads its own.
        self.owners = OwnerIndex()
        self.created = 0
        self.deleted = 0

    def setup(self, manager: Manager) -> None:
        self.client = manager.client
        self.rcs: Informer = manager.informer(REPLICATION_CONTROLLERS)
        self.pods: Informer = manager.informer(PODS)
        self.rcs.add_handler(self._on_rc)
        self.pods.add_handler(self._on_pod)

    # -- lookups ----------------------------------------------------------

    def _controller(self, namespace: str, name: str, uid: str) -> ReplicationController | None:
        rc = self.rcs.get(namespace, name)
        return rc if rc is not None and rc.metadata.uid == uid else None

    # -- events -----------------------------------------------------------

    def _on_rc(self, event_type: str, rc: ReplicationController, old: ReplicationController | None) -> None:
        key = (rc.metadata.namespace, rc.metadata.name)
        if event_type == "DELETED":
            self.expectations.forget(key)
            if self._synced:
                for pod in self.pods.get_many(self.owners.owned_by(rc.metadata.uid)):
                    if rc_controller_ref(pod) is not None:
                        self.gc_queue.add((pod.metadata.namespace, pod.metadata.name))
        self.queue.add(key)

    def _on_pod(self, event_type: str, pod: pod_pb2.Pod, old: pod_pb2.Pod | None) -> None:
        self.owners.update(event_type, pod)
        namespace, name = pod.metadata.namespace, pod.metadata.name
        ref = rc_controller_ref(pod)
        if ref is not None:
            rc = self._controller(namespace, ref.name, ref.uid)
            if rc is not None:
                key = (namespace, ref.name)
                if event_type == "ADDED":
                    self.expectations.creation_observed(key)
                if event_type == "DELETED" or pod_being_deleted(pod):
                    # Marked for deletion is as good as gone for counting (Kubernetes'
                    # updatePod): no need to wait out its grace period to act again.
                    self.expectations.deletion_observed(key, pod.metadata.uid)
                self.queue.add(key)
            elif self._synced and event_type != "DELETED" and not pod_being_deleted(pod):
                self.gc_queue.add((namespace, name))
        elif event_type != "DELETED" and is_active(pod):
            self._queue_matching_controllers(pod)  # an orphan someone may adopt
        if old is not None:
            old_ref = rc_controller_ref(old)
            if old_ref is not None and (ref is None or old_ref.uid != ref.uid):
                if self._controller(namespace, old_ref.name, old_ref.uid) is not None:
                    self.queue.add((namespace, old_ref.name))

    def _queue_matching_controllers(self, pod: pod_pb2.Pod) -> None:
        namespace = pod.metadata.namespace
        for rc in self.rcs.in_namespace(namespace):
            if selector_of(rc).matches(pod.metadata.labels):
                self.queue.add((namespace, rc.metadata.name))

    # -- sync -------------------------------------------------------------

    async def sync(self, key: ObjectKey) -> None:
        rc = self.rcs.get(*key)
        if rc is None:
            self.expectations.forget(key)
            return
        if in_foreground_deletion(rc):
            await self._delete_in_foreground(rc)
            return
        if is_being_deleted(rc):
            return  # its pods are being released or collected: hands off
        # Decide whether we may act before reading the pods: events that arrive after this
        # only make the pods we read newer than the decision, never older.
        may_act = self.expectations.satisfied(key)
        if may_act and self.expectations.expired(key):
            creations, deletions = self.expectations.pending(key)
            log.warning("expectations_expired", rc=_name(key), creations=creations, deletions=deletions)
        if may_act:
            self.expectations.forget(key)  # met or expired: the next act records anew
        active = await self._claim(rc)
        await self._write_status(rc, active)
        if not may_act:
            # If an awaited event never comes, look again when the record expires.
            self.queue.add_after(key, self.expectations.timeout + 0.1)
            return
        await self._manage(rc, key, active)

    async def _delete_in_foreground(self, rc: ReplicationController) -> None:
        """Deletes the controller's pods; once none is left (each pod's deletion event
        brings us back), removes the finalizer, and with it the controller."""
        doomed, finished = foreground_plan(rc, self.pods.in_namespace(rc.metadata.namespace))
        if finished:
            # The cache may lag a pod made just before the delete: the API server decides.
            listed = await self.client.list(PODS, rc.metadata.namespace)
            doomed, finished = foreground_plan(rc, list(listed.items))
        for pod in doomed:
            async with self._writes:
                try:
                    await self.client.delete(PODS, pod.metadata.name, pod.metadata.namespace,
                                             resource_version=pod.metadata.resource_version)
                except grpc.aio.AioRpcError as error:
                    if error.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND):
                        raise
            log.info("pod_deleted_in_foreground", rc=_rc_name(rc), pod=_pod_name(pod))
        if not finished:
            return
        async with self._writes:
            try:
                # Guarded by the controller's resource_version: a change meanwhile brings us back.
                await self.client.update(without_finalizer(rc, FOREGROUND_FINALIZER))
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND):
                    raise
                return
        log.info("foreground_deletion_finished", rc=_rc_name(rc))

    async def _claim(self, rc: ReplicationController) -> list[pod_pb2.Pod]:
        """The live pods the controller owns, after adopting and releasing."""
        selector = selector_of(rc)
        uid = rc.metadata.uid
        active: list[pod_pb2.Pod] = []
        adopt: list[pod_pb2.Pod] = []
        release: list[pod_pb2.Pod] = []
        # Its own pods and the namespace's orphans: a pod another controller owns is never ours.
        for pod in self.pods.get_many([*self.owners.owned_by(uid), *self.owners.orphans_in(rc.metadata.namespace)]):
            ref = controller_ref(pod)
            matches = selector.matches(pod.metadata.labels)
            if ref is not None:
                if ref.uid != uid:
                    continue
                if not matches:
                    release.append(pod)
                elif is_active(pod):
                    active.append(pod)
            elif matches and is_active(pod):
                adopt.append(pod)
        if release:
            await asyncio.gather(*(self._release(rc, pod) for pod in release))
        if adopt and await self._still_wanted(rc):
            adopted = await asyncio.gather(*(self._adopt(rc, pod) for pod in adopt))
            active.extend(pod for pod in adopted if pod is not None)
        return active

    async def _still_wanted(self, rc: ReplicationController) -> bool:
        """Asks the API server (not our cache) whether the controller still exists and is not
        being deleted. Pods released by an Orphan delete may reach us before the controller's
        own change does (two watch streams); adopting them back, or replacing them, would undo
        the user's --cascade=false."""
        try:
            live = await self.client.get(REPLICATION_CONTROLLERS, rc.metadata.name, rc.metadata.namespace)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return live.metadata.uid == rc.metadata.uid and not is_being_deleted(live)

    async def _adopt(self, rc: ReplicationController, pod: pod_pb2.Pod) -> pod_pb2.Pod | None:
        updated = pod_pb2.Pod()
        updated.CopyFrom(pod)
        updated.metadata.owner_references.append(owner_reference(rc))
        async with self._writes:
            try:
                result = await self.client.update(updated)  # guarded by the pod's resource_version
            except grpc.aio.AioRpcError as error:
                if error.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND):
                    return None  # changed meanwhile: its event brings us back
                raise
        log.info("pod_adopted", rc=_rc_name(rc), pod=_pod_name(pod))
        return result

    async def _release(self, rc: ReplicationController, pod: pod_pb2.Pod) -> None:
        updated = pod_pb2.Pod()
        updated.CopyFrom(pod)
        kept = [ref for ref in updated.metadata.owner_references if ref.uid != rc.metadata.uid]
        del updated.metadata.owner_references[:]
        updated.metadata.owner_references.extend(kept)
        async with self._writes:
            try:
                await self.client.update(updated)
            except grpc.aio.AioRpcError as error:
                if error.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND):
                    return
                raise
        log.info("pod_released", rc=_rc_name(rc), pod=_pod_name(pod),
                 reason="labels no longer match the selector")

    async def _manage(self, rc: ReplicationController, key: ObjectKey, active: list[pod_pb2.Pod]) -> None:
        diff = replica_diff(rc, active)
        if diff > 0:
            count = min(diff, MAX_BURST)
            if not await self._still_wanted(rc):
                return
            self.expectations.expect(key, creations=count)
            log.info("creating_pods", rc=_name(key), count=count, replicas=rc.spec.replicas, live=len(active))
            failed = await self._slow_start(key, count, lambda: self._create(rc, key))
            if failed:
                raise SyncError(f"{failed} of {count} pod creations did not happen")
        elif diff < 0:
            victims = deletion_order(active)[: min(-diff, MAX_BURST)]
            self.expectations.expect(key, deletions=[pod.metadata.uid for pod in victims])
            log.info("deleting_pods", rc=_name(key), count=len(victims), replicas=rc.spec.replicas, live=len(active))
            results = await asyncio.gather(*(self._delete(key, pod, rc) for pod in victims))
            if not all(results):
                raise SyncError(f"{results.count(False)} of {len(victims)} pod deletions failed")

    async def _slow_start(self, key: ObjectKey, count: int, create: Callable[[], Awaitable[bool]]) -> int:
        """Creates in doubling batches; stops at a batch with a failure. Returns how many did not happen."""
        remaining, batch = count, 1
        while remaining > 0:
            size = min(batch, remaining)
            results = await asyncio.gather(*(create() for _ in range(size)))
            remaining -= size
            failures = results.count(False)
            if failures:
                for _ in range(remaining):  # never attempted: stop expecting them
                    self.expectations.creation_observed(key)
                return failures + remaining
            batch *= 2
        return 0

    async def _create(self, rc: ReplicationController, key: ObjectKey) -> bool:
        async with self._writes:
            try:
                pod = await self.client.create(new_pod(rc))
            except grpc.aio.AioRpcError as error:
                if error.code() not in _AMBIGUOUS:
                    self.expectations.creation_observed(key)
                log.warning("pod_create_failed", rc=_name(key), code=error.code().name, detail=error.details())
                self.recorder.event(rc, WARNING, "FailedCreate", f"Error creating: {error.details()}")
                return False
        self.created += 1
        log.info("pod_created", rc=_name(key), pod=_pod_name(pod))
        self.recorder.event(rc, NORMAL, "SuccessfulCreate", f"Created pod: {pod.metadata.name}")
        return True

    async def _delete(self, key: ObjectKey, pod: pod_pb2.Pod, rc: ReplicationController) -> bool:
        async with self._writes:
            try:
                await self.client.delete(PODS, pod.metadata.name, pod.metadata.namespace)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    # Gone already; its DELETED event may have come before we expected it.
                    self.expectations.deletion_observed(key, pod.metadata.uid)
                    return True
                if error.code() not in _AMBIGUOUS:
                    self.expectations.deletion_observed(key, pod.metadata.uid)
                log.warning("pod_delete_failed", rc=_name(key), pod=_pod_name(pod), code=error.code().name,
                            detail=error.details())
                self.recorder.event(rc, WARNING, "FailedDelete", f"Error deleting: {error.details()}")
                return False
        self.deleted += 1
        log.info("pod_deleted", rc=_name(key), pod=_pod_name(pod), phase=pod.status.phase,
                 node=pod.spec.node_name or None)
        self.recorder.event(rc, NORMAL, "SuccessfulDelete", f"Deleted pod: {pod.metadata.name}")
        return True

    async def _write_status(self, rc: ReplicationController, active: list[pod_pb2.Pod]) -> None:
        status = compute_status(rc, active)
        if status == rc.status:
            return
        updated = ReplicationController()
        updated.CopyFrom(rc)
        updated.status.CopyFrom(status)
        updated.metadata.resource_version = 0  # we are the only writer of status
        try:
            await self.client.update_status(updated)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise

    # -- garbage collection -----------------------------------------------

    async def collect(self, key: ObjectKey) -> None:
        """Deletes the pod if its replication controller is gone."""
        pod = self.pods.get(*key)
        if pod is None or pod_being_deleted(pod):
            return  # gone, or going already
        ref = rc_controller_ref(pod)
        if ref is None or self._controller(key[0], ref.name, ref.uid) is not None:
            return
        # Our informer may lag the controller's creation: ask before deleting anything.
        try:
            rc = await self.client.get(REPLICATION_CONTROLLERS, ref.name, key[0])
            if rc.metadata.uid == ref.uid:
                return
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
        async with self._writes:
            try:
                # Guarded: if the pod changed (e.g. was adopted), look again.
                await self.client.delete(PODS, key[1], key[0], resource_version=pod.metadata.resource_version)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return
                raise
        self.deleted += 1
        log.info("pod_garbage_collected", pod=_name(key), owner=f"{key[0]}/{ref.name}", owner_uid=ref.uid)

    def _scan_for_garbage(self) -> None:
        for pod in self.pods.list():
            ref = rc_controller_ref(pod)
            if pod_being_deleted(pod):
                continue
            if ref is not None and self._controller(pod.metadata.namespace, ref.name, ref.uid) is None:
                self.gc_queue.add((pod.metadata.namespace, pod.metadata.name))

    # -- the loop ---------------------------------------------------------

    async def _resync(self) -> None:
        """Level-triggered safety net: every controller again, from the caches (no API reads)."""
        while True:
            await asyncio.sleep(self.resync_period)
            for rc in self.rcs.list():
                self.queue.add((rc.metadata.namespace, rc.metadata.name))
            self._scan_for_garbage()

    async def run(self) -> None:
        """Runs once the informers are synced: collects garbage, syncs controllers until cancelled."""
        self._synced = True
        self._scan_for_garbage()
        log.info("replicator_started", controllers=len(self.rcs), pods=len(self.pods))
        await asyncio.gather(
            run_workers(self.queue, self.sync, workers=self.workers, name="replicator"),
            run_workers(self.gc_queue, self.collect, workers=2, name="replicator-gc"),
            self._resync(),
        )
