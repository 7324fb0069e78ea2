"""The endpoints controller: every service with a selector gets an Endpoints object of the
same name listing where its pods can be reached.

For each pod the selector matches (same namespace, bound, with an IP, not
finished, not being deleted) and each service port, the target port is resolved: a number as is,
a name through the pod's container ports (a pod without that named port is left
out of that port). Pods with the same resolved ports form one subset; a pod
that is Running with Ready=True on a node whose Ready condition is True is in
`addresses`, any other in `notReadyAddresses`. A terminating pod (deletionTimestamp
set) is in neither, from the moment it is marked, while its containers still
serve what they have (Kubernetes' ShouldPodBeInEndpoints; there is no
publishNotReadyAddresses here to keep it). Output is sorted, and written
only when it differs from what is stored, so an unchanged cluster costs no
writes.

Event handlers only queue service keys (a pod event queues the services whose
selectors match its old or new labels; a node's readiness change queues every
service); workers sync one service at a time from the informers' caches. A
service without a selector is left alone (its endpoints are managed by hand).
Endpoints whose service is deleted are deleted, as are leftovers found at start.
"""

from __future__ import annotations

from typing import Callable, Iterable

import grpc

from kybernetes.v1 import endpoints_pb2, meta_pb2, node_pb2, pod_pb2, service_pb2
from services.common.log import get_logger
from services.common.podutil import is_being_deleted, is_pod_ready, is_terminated, node_condition_ready
from services.common.resources import ENDPOINTS, NODES, PODS, SERVICES
from services.common.runtime import Manager, WorkQueue, run_workers
from services.common.runtime.informer import Informer
from services.common.selectors import LabelSelector

ServiceKey = tuple[str, str]
PortKey = tuple[tuple[str, int, str], ...]  # ((name, port, protocol), ...) in service order
DEFAULT_WORKERS = 4

log = get_logger(controller="endpoints")


def resolve_target_port(service_port: service_pb2.ServicePort, pod: pod_pb2.Pod) -> int | None:
    """The pod's port a service port sends to; None when a named port is missing."""
    target = service_port.target_port or str(service_port.port)
    if target.isdigit():
        return int(target)
    protocol = service_port.protocol or "TCP"
    for container in pod.spec.containers:
        for port in container.ports:
            if port.name == target and (port.protocol or "TCP") == protocol:
                return port.container_port
    return None


def endpoint_subsets(
    service: service_pb2.Service,
    pods: Iterable[pod_pb2.Pod],
    node_ready: Callable[[str], bool],
) -> list[endpoints_pb2.EndpointSubset]:
    """The subsets the service's Endpoints should hold (deterministic order)."""
    selector = LabelSelector.from_map(service.spec.selector)
    groups: dict[PortKey, tuple[list[endpoints_pb2.EndpointAddress], list[endpoints_pb2.EndpointAddress]]] = {}
    for pod in pods:
        if pod.metadata.namespace != service.metadata.namespace or not selector.matches(pod.metadata.labels):
            continue
        if not pod.status.pod_ip or not pod.spec.node_name or is_terminated(pod) or is_being_deleted(pod):
            continue
        ports: list[tuple[str, int, str]] = []
        for service_port in service.spec.ports:
            port = resolve_target_port(service_port, pod)
            if port is not None:
                ports.append((service_port.name, port, service_port.protocol or "TCP"))
        if not ports:
            continue
        address = endpoints_pb2.EndpointAddress(
            ip=pod.status.pod_ip,
            node_name=pod.spec.node_name,
            target_ref=pod_pb2.ObjectReference(
                kind="Pod", namespace=pod.metadata.namespace, name=pod.metadata.name, uid=pod.metadata.uid
            ),
        )
        ready, not_ready = groups.setdefault(tuple(ports), ([], []))
        (ready if is_pod_ready(pod) and node_ready(pod.spec.node_name) else not_ready).append(address)

    def ordered(addresses: list[endpoints_pb2.EndpointAddress]) -> list[endpoints_pb2.EndpointAddress]:
        return sorted(addresses, key=lambda address: (address.ip, address.target_ref.name))

    return [
        endpoints_pb2.EndpointSubset(
            addresses=ordered(ready),
            not_ready_addresses=ordered(not_ready),
            ports=[
                endpoints_pb2.EndpointPort(name=name, port=port, protocol=protocol) for name, port, protocol in ports
            ],
        )
        for ports, (ready, not_ready) in sorted(groups.items())
    ]


class EndpointsController:
    name = "endpoints"

    def __init__(self, *, workers: int = DEFAULT_WORKERS) -> None:
        self.workers = workers
        self.queue: WorkQueue[ServiceKey] = WorkQueue()
        self._selectors: dict[str, dict[str, LabelSelector]] = {}  # namespace -> service -> selector
        self._orphaned: set[ServiceKey] = set()  # endpoints whose service is gone: delete them

    def setup(self, manager: Manager) -> None:
        self.client = manager.client
        self.services: Informer = manager.informer(SERVICES)
        self.pods: Informer = manager.informer(PODS)
        self.endpoints: Informer = manager.informer(ENDPOINTS)
        self.nodes: Informer = manager.informer(NODES)
        self.services.add_handler(self._on_service)
        self.pods.add_handler(self._on_pod)
        self.endpoints.add_handler(self._on_endpoints)
        self.nodes.add_handler(self._on_node)

    # -- events -----------------------------------------------------------

    def _on_service(self, event_type: str, service: service_pb2.Service, old: service_pb2.Service | None) -> None:
        key = (service.metadata.namespace, service.metadata.name)
        selectors = self._selectors.setdefault(key[0], {})
        if event_type == "DELETED":
            selectors.pop(key[1], None)
            self._orphaned.add(key)
        elif service.spec.selector:
            selectors[key[1]] = LabelSelector.from_map(service.spec.selector)
            self._orphaned.discard(key)
        else:
            selectors.pop(key[1], None)
            self._orphaned.discard(key)
        self.queue.add(key)

    def _on_pod(self, event_type: str, pod: pod_pb2.Pod, old: pod_pb2.Pod | None) -> None:
        namespace = pod.metadata.namespace
        for service_name, selector in self._selectors.get(namespace, {}).items():
            if selector.matches(pod.metadata.labels) or (old is not None and selector.matches(old.metadata.labels)):
                self.queue.add((namespace, service_name))

    def _on_endpoints(self, event_type: str, endpoints: endpoints_pb2.Endpoints, old: object) -> None:
        key = (endpoints.metadata.namespace, endpoints.metadata.name)
        if key[1] in self._selectors.get(key[0], {}):
            self.queue.add(key)  # put back what someone else changed or deleted

    def _on_node(self, event_type: str, node: node_pb2.Node, old: node_pb2.Node | None) -> None:
        was_ready = old is not None and node_condition_ready(old)
        is_ready = event_type != "DELETED" and node_condition_ready(node)
        if was_ready != is_ready:
            for namespace, selectors in self._selectors.items():
                for name in selectors:
                    self.queue.add((namespace, name))

    # -- sync -------------------------------------------------------------

    def _node_ready(self, name: str) -> bool:
        node = self.nodes.get("", name)
        # A node we have no object for is not second-guessed: the pod's own Ready says it.
        return node is None or node_condition_ready(node)

    async def sync(self, key: ServiceKey) -> None:
        namespace, name = key
        service = self.services.get(namespace, name)
        current = self.endpoints.get(namespace, name)
        if service is None:
            if key in self._orphaned:
                self._orphaned.discard(key)
                if current is not None:
                    await self._delete(key)
            return
        if not service.spec.selector:
            return
        selected = self.pods.in_namespace(namespace, LabelSelector.from_map(service.spec.selector))
        subsets = endpoint_subsets(service, selected, self._node_ready)
        labels = dict(service.metadata.labels)
        if current is not None and list(current.subsets) == subsets and dict(current.metadata.labels) == labels:
            return
        desired = endpoints_pb2.Endpoints(
            metadata=meta_pb2.ObjectMeta(namespace=namespace, name=name, labels=labels), subsets=subsets
        )
        ready = sum(len(s.addresses) for s in subsets)
        not_ready = sum(len(s.not_ready_addresses) for s in subsets)
        if current is None:
            try:
                await self.client.create(desired)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
                # Our informer lags a create: sync again once it shows the object.
                self.queue.add_after(key, 0.2)
                return
            log.info("endpoints_created", service=f"{namespace}/{name}", ready=ready, not_ready=not_ready)
            return
        desired.metadata.resource_version = current.metadata.resource_version
        desired.metadata.uid = current.metadata.uid
        try:
            await self.client.update(desired)
        except grpc.aio.AioRpcError as error:
            if error.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND,
                                    grpc.StatusCode.FAILED_PRECONDITION):
                raise
            # Changed or gone since our informer saw it: its event requeues the service.
            self.queue.add_after(key, 0.2)
            return
        log.info("endpoints_updated", service=f"{namespace}/{name}", ready=ready, not_ready=not_ready)

    async def _delete(self, key: ServiceKey) -> None:
        try:
            await self.client.delete(ENDPOINTS, key[1], key[0])
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                self._orphaned.add(key)
                raise
        log.info("endpoints_deleted", service=f"{key[0]}/{key[1]}")

    # -- the loop ---------------------------------------------------------

    async def run(self) -> None:
        """Runs once the informers are synced: deletes leftovers, then syncs services until cancelled."""
        for endpoints in self.endpoints.list():
            key = (endpoints.metadata.namespace, endpoints.metadata.name)
            if self.services.get(*key) is None:
                self._orphaned.add(key)  # left over from a service deleted while we were away
                self.queue.add(key)
        log.info("endpoints_controller_started", services=len(self.services))
        await run_workers(self.queue, self.sync, workers=self.workers, name="endpoints")
