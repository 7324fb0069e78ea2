"""Mirror pods: the API server's read-only copies of this node's static pods.

For every static pod the kubelet keeps one API pod of the same namespace/name,
annotated kubernetes.io/config.mirror=<static pod hash> and bound to the node,
so that users see static pods with kubecfg and their status. A mirror whose
static pod changed is replaced; one whose static pod is gone is deleted; one a
user deleted is made again.

As Kubernetes' kubelet, a mirror pod's one owner is this node's Node (controller),
which NodeRestriction requires: the Node's uid is read before mirrors are made, so
none is made before the kubelet has registered its Node.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import grpc

from kybernetes.v1 import meta_pb2, pod_pb2
from services.common.log import get_logger
from services.common.resources import NODES, PODS

from .sources import CONFIG_HASH_ANNOTATION, MIRROR_ANNOTATION, STATIC_SOURCES, PodConfig, pod_source

log = get_logger(module="kubelet.mirror")

_PERIOD = 10.0
# How soon mirrors are tried again when the Node is not registered yet: sooner than
# _PERIOD, as registering takes a moment after start.
_NODE_RETRY = 1.0


def mirror_pod_for(pod: pod_pb2.Pod, node: str, node_uid: str) -> pod_pb2.Pod:
    mirror = pod_pb2.Pod(api_version="v1", kind="Pod")
    mirror.metadata.namespace = pod.metadata.namespace
    mirror.metadata.name = pod.metadata.name
    mirror.metadata.labels.update(pod.metadata.labels)
    mirror.metadata.annotations.update(pod.metadata.annotations)
    mirror.metadata.annotations[MIRROR_ANNOTATION] = pod.metadata.annotations.get(CONFIG_HASH_ANNOTATION, "")
    mirror.metadata.owner_references.append(
        meta_pb2.OwnerReference(api_version="v1", kind=NODES.name, name=node, uid=node_uid, controller=True)
    )
    mirror.spec.CopyFrom(pod.spec)
    return mirror


class MirrorManager:
    def __init__(self, client: Any, node: str, config: PodConfig, on_mirror_ready: Callable[[str], None]) -> None:
        self.client = client
        self.node = node
        self.config = config
        self._on_mirror_ready = on_mirror_ready
        self._mirrors: dict[tuple[str, str], pod_pb2.Pod] = {}
        self._synced = False
        self._wake = asyncio.Event()
        self._conflicts_logged: set[tuple[str, str]] = set()
        # The mirror uid the status manager was last told about, per pod.
        self._announced: dict[tuple[str, str], str] = {}

    def get(self, namespace: str, name: str) -> pod_pb2.Pod | None:
        return self._mirrors.get((namespace, name))

    def on_event(self, event_type: str, pod: pod_pb2.Pod) -> None:
        """A mirror pod event from the API watch."""
        key = (pod.metadata.namespace, pod.metadata.name)
        if event_type == "DELETED":
            current = self._mirrors.get(key)
            if current is not None and current.metadata.uid == pod.metadata.uid:
                del self._mirrors[key]
        else:
            self._mirrors[key] = pod
        self.trigger()

    def set_synced(self) -> None:
        self._synced = True
        self.trigger()

    def trigger(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), _PERIOD)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if not self._synced:
                continue
            try:
                await self.sync()
            except Exception:
                log.exception("mirror_pods_sync_failed")

    async def sync(self) -> None:
        statics = {
            (pod.metadata.namespace, pod.metadata.name): pod
            for pod in self.config.pods()
            if pod_source(pod) in STATIC_SOURCES
        }
        stale: list[pod_pb2.Pod] = []  # static pods whose mirror is missing or out of date
        for key, pod in statics.items():
            mirror = self._mirrors.get(key)
            wanted = pod.metadata.annotations.get(CONFIG_HASH_ANNOTATION, "")
            if mirror is not None and mirror.metadata.annotations.get(MIRROR_ANNOTATION) == wanted:
                if self._announced.get(key) != mirror.metadata.uid:
                    # A mirror made before (by an earlier kubelet): statuses can go there now.
                    self._announced[key] = mirror.metadata.uid
                    self._on_mirror_ready(pod.metadata.uid)
                continue
            stale.append(pod)
        # Read each pass, not kept: a Node deleted and registered again has another uid.
        node_uid = await self._node_uid() if stale else ""
        if node_uid:
            for pod in stale:
                mirror = self._mirrors.get((pod.metadata.namespace, pod.metadata.name))
                if mirror is not None:
                    await self._delete(mirror)
                await self._create(pod, node_uid)
        for key, mirror in list(self._mirrors.items()):
            if key not in statics:
                await self._delete(mirror)

    async def _node_uid(self) -> str:
        """This node's Node's uid, for mirror pods' owner reference; "" when it cannot be
        read (before the kubelet has registered it: then a sync again soon)."""
        try:
            node = await self.client.get(NODES, self.node, "")
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                log.info("mirror_pods_wait_for_node", node=self.node, retry_in=_NODE_RETRY)
                asyncio.get_running_loop().call_later(_NODE_RETRY, self.trigger)
            else:  # tried again with the next periodic sync
                log.warning("mirror_pods_node_unreadable", node=self.node, code=error.code().name,
                            detail=error.details())
            return ""
        return str(node.metadata.uid)

    async def _create(self, pod: pod_pb2.Pod, node_uid: str) -> None:
        key = (pod.metadata.namespace, pod.metadata.name)
        try:
            created = await self.client.create(mirror_pod_for(pod, self.node, node_uid))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.ALREADY_EXISTS:
                if key not in self._conflicts_logged:
                    self._conflicts_logged.add(key)
                    log.warning("mirror_pod_name_taken", pod=f"{key[0]}/{key[1]}", detail=error.details())
                return
            log.warning("mirror_pod_create_failed", pod=f"{key[0]}/{key[1]}", code=error.code().name,
                        detail=error.details())
            return
        self._conflicts_logged.discard(key)
        self._mirrors[key] = created
        self._announced[key] = created.metadata.uid
        log.info("mirror_pod_created", pod=f"{key[0]}/{key[1]}")
        self._on_mirror_ready(pod.metadata.uid)

    async def _delete(self, mirror: pod_pb2.Pod) -> None:
        key = (mirror.metadata.namespace, mirror.metadata.name)
        try:
            # No resource_version precondition: our own status updates move it on.
            await self.client.delete(PODS, mirror.metadata.name, mirror.metadata.namespace)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                log.warning("mirror_pod_delete_failed", pod=f"{key[0]}/{key[1]}", code=error.code().name,
                            detail=error.details())
                return
        if self._mirrors.get(key) is mirror:
            del self._mirrors[key]
        self._announced.pop(key, None)
        log.info("mirror_pod_deleted", pod=f"{key[0]}/{key[1]}")
