"""Sends pod statuses to the API server, only when they changed, and removes
the pods the API server is deleting once they have stopped.

Each pod has at most one UpdateStatus in flight; a newer status computed
meanwhile is sent right after it (older ones are never sent). A pod from the
API server gets its status on its own object, a static pod on its mirror pod
(once that exists).

A terminating pod whose worker reports it stopped (`pod_terminated`) is
deleted from the API once its final status is sent, as Kubernetes' status
manager does: Delete with grace 0 and the pod's uid as precondition, so a new
pod of the same name is never touched. NodeRestriction lets a node delete the
pods bound to it. A pod with finalizers stays until they are removed.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import grpc

from kybernetes.v1 import meta_pb2, pod_pb2
from services.common.log import get_logger
from services.common.resources import PODS
from services.common.runtime import Backoff

from .sources import SOURCE_API, pod_source

log = get_logger(module="kubelet.status")

_RETRY_INITIAL = 0.5
_RETRY_MAX = 30.0

# (namespace, name) -> the API's copy of the pod, or None.
PodLookup = Callable[[str, str], pod_pb2.Pod | None]


class StatusManager:
    def __init__(self, client: Any | None, *, api_pod: PodLookup, mirror_pod: PodLookup) -> None:
        self.client = client
        self._api_pod = api_pod
        self._mirror_pod = mirror_pod
        self._pods: dict[str, pod_pb2.Pod] = {}
        self._statuses: dict[str, pod_pb2.PodStatus] = {}
        self._sent: dict[str, pod_pb2.PodStatus] = {}
        self._senders: dict[str, asyncio.Task] = {}
        # Terminated pods to remove from the API (uid -> the pod), and those removed.
        self._terminated: dict[str, pod_pb2.Pod] = {}
        self._removed: set[str] = set()

    def publish(self, uid: str, pod: pod_pb2.Pod, status: pod_pb2.PodStatus) -> None:
        self._pods[uid] = pod
        self._statuses[uid] = status
        if self.client is not None and self._sent.get(uid) != status:
            self._schedule(uid)

    def get(self, uid: str) -> pod_pb2.PodStatus | None:
        return self._statuses.get(uid)

    def pod_terminated(self, uid: str, pod: pod_pb2.Pod) -> None:
        """A pod the API server is deleting has stopped: remove it from the API once its
        final status (published before this) is sent. Only pods from the API server."""
        if pod_source(pod) != SOURCE_API or uid in self._terminated:
            return
        self._terminated[uid] = pod
        self._pods.setdefault(uid, pod)
        if self.client is not None:
            self._schedule(uid)

    def forget(self, uid: str) -> None:
        self._terminated.pop(uid, None)
        self._removed.discard(uid)
        self._pods.pop(uid, None)
        self._statuses.pop(uid, None)
        self._sent.pop(uid, None)
        sender = self._senders.pop(uid, None)
        if sender is not None:
            sender.cancel()

    def resend(self, uid: str) -> None:
        """Sends the current status again (a mirror pod was just made)."""
        self._sent.pop(uid, None)
        if self.client is not None and uid in self._statuses:
            self._schedule(uid)

    async def close(self) -> None:
        for sender in list(self._senders.values()):
            sender.cancel()

    def _schedule(self, uid: str) -> None:
        sender = self._senders.get(uid)
        if sender is not None and not sender.done():
            return  # the running sender picks the newest status up before it ends
        task = asyncio.get_running_loop().create_task(self._send_loop(uid))
        self._senders[uid] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._senders.get(uid) is done:
                del self._senders[uid]

        task.add_done_callback(forget)

    def _target(self, uid: str, pod: pod_pb2.Pod) -> pod_pb2.Pod | None:
        """The API object this pod's status goes to, if there is one now."""
        namespace, name = pod.metadata.namespace, pod.metadata.name
        if pod_source(pod) == SOURCE_API:
            target = self._api_pod(namespace, name)
            if target is None or target.metadata.uid != uid:
                return None  # deleted (or replaced by another pod of that name)
            return target
        return self._mirror_pod(namespace, name)

    async def _send_loop(self, uid: str) -> None:
        client = self.client
        if client is None:
            return  # no API server: statuses stay local (senders are only scheduled with one)
        backoff = Backoff(_RETRY_INITIAL, _RETRY_MAX)
        while True:
            pod, status = self._pods.get(uid), self._statuses.get(uid)
            if pod is None:
                return
            if status is None or self._sent.get(uid) == status:
                if uid not in self._terminated or uid in self._removed:
                    return
                # The final status is sent (or there is none to send): remove the pod.
                if await self._remove(uid, self._terminated[uid], backoff):
                    self._removed.add(uid)
                continue
            target = self._target(uid, pod)
            if target is None:
                return  # no API object (yet): a mirror pod's creation calls resend()
            request = pod_pb2.Pod(
                metadata=meta_pb2.ObjectMeta(
                    namespace=target.metadata.namespace, name=target.metadata.name, uid=target.metadata.uid
                ),
                status=status,
            )
            key = f"{pod.metadata.namespace}/{pod.metadata.name}"
            try:
                await client.update_status(request)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code == grpc.StatusCode.NOT_FOUND:
                    log.info("pod_status_target_gone", pod=key)
                    return
                if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                    log.error("pod_status_rejected", pod=key, code=code.name, detail=error.details())
                    self._sent[uid] = status  # the same status would be rejected again
                    continue
                delay = backoff.failure()
                log.warning("pod_status_update_failed", pod=key, code=code.name, detail=error.details(), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            self._sent[uid] = status
            backoff.reset()
            log.debug("pod_status_sent", pod=key, phase=status.phase)

    async def _remove(self, uid: str, pod: pod_pb2.Pod, backoff: Backoff) -> bool:
        """Deletes a terminated pod from the API (grace 0, guarded by its uid); True when done
        (or nothing is left to do), False after a failure worth retrying (slept its back-off)."""
        assert self.client is not None
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        target = self._target(uid, pod)
        if target is None:
            return True  # gone already (or replaced by another pod of that name)
        request = meta_pb2.DeleteRequest(
            namespace=pod.metadata.namespace, name=pod.metadata.name, grace_period_seconds=0, preconditions_uid=uid
        )
        try:
            await self.client.stub(PODS).Delete(request, timeout=self.client.timeout)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                log.info("terminated_pod_already_gone", pod=key, code=code.name)
                return True
            if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
                log.error("terminated_pod_delete_refused", pod=key, code=code.name, detail=error.details())
                return True  # the same request would be refused again
            delay = backoff.failure()
            log.warning("terminated_pod_delete_failed", pod=key, code=code.name, detail=error.details(), retry_in=delay)
            await asyncio.sleep(delay)
            return False
        backoff.reset()
        log.info("terminated_pod_deleted", pod=key)
        return True
