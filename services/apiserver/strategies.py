"""What each kind does differently in the API server: one strategy per kind.

After Kubernetes' registry strategies (pkg/registry/core/pod/strategy.go and
friends). The generic `Registry` (registry.py) does what every kind shares:
server-owned metadata (uid, timestamps, generation = 1 on create, the stored
values carried over on update), optimistic concurrency, List and Watch. It asks
the kind's strategy the rest:

- prepare_for_create / prepare_for_update: defaults, clearing or keeping status,
  the generation bump when the spec changed;
- validate / validate_update: `services/common/validation.py`, plus the checks
  that compare with the stored object (a bound pod's node);
- status_fields: what the status subresource (UpdateStatus) copies from the request;
- subresources: the extra RPCs of the kind (UpdateStatus; Bind for pods only);
- before_delete: the RC's `propagationPolicy: Orphan` (kubectl's --cascade=orphan);
- graceful_delete_period: a bound pod is deleted gracefully (the registry marks
  it and its kubelet removes it once its containers have stopped);
- side_keys / repair: a service's cluster IP and node ports, allocated in the
  service's own etcd transaction (ServiceAllocator; ranges, picking and the
  design in ipallocator.py).

The table at the bottom pairs every kind of `services.common.resources` with
its strategy; a kind without one fails at import. `build_strategies` makes a
fresh set for one API server (its service ranges, its own allocation views).
"""

from __future__ import annotations

import asyncio
import random
import weakref
from typing import Any, Callable, Mapping

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import (
    coordination_pb2,
    endpoints_pb2,
    event_pb2,
    meta_pb2,
    namespace_pb2,
    node_pb2,
    pod_pb2,
    replication_controller_pb2,
    service_pb2,
)
from services.common import defaults, events, podutil, validation
from services.common.resources import (
    ALL_KINDS,
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    ENDPOINTS,
    EVENTS,
    LEASES,
    NAMESPACES,
    NODES,
    PODS,
    REPLICATION_CONTROLLERS,
    ROLE_BINDINGS,
    ROLES,
    SERVICES,
    Kind,
)
from services.common.log import get_logger
from services.common.selectors import validate_dns1123_subdomain
from services.common.timestamps import now_timestamp
from services.common.validation import HEADLESS_CLUSTER_IP, FieldError

from .errors import ApiError, invalid, require_name
from .ipallocator import (
    DEFAULT_SERVICE_CLUSTER_IP_RANGE,
    DEFAULT_SERVICE_NODE_PORT_RANGE,
    IP_PREFIX,
    NODE_PORT_PREFIX,
    Holder,
    Loader,
    NodePortRange,
    ServiceIPRange,
    Span,
    TakenView,
    ip_key,
    node_port_key,
    owner_record,
    pick,
    plan_repair,
)
from .registry import ORPHAN, Registry, SideKeys, StatusREST, Strategy, SubresourceREST
from .storage import KeyValue, Storage, at_revision, delete, prefix_range_end, put

log = get_logger()


def bump_generation_on_spec_change(obj: Any, old: Any) -> None:
    """metadata.generation counts changes of the spec (the registry has set it to old's)."""
    if obj.spec.SerializeToString(deterministic=True) != old.spec.SerializeToString(deterministic=True):
        obj.metadata.generation = old.metadata.generation + 1


# -- pods -------------------------------------------------------------------


def check_binding(binding: pod_pb2.Binding) -> None:
    """What a Binding must say whatever the pod: the node it binds to."""
    if not binding.target.name:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "target.name: required (the node to bind to)")
    if binding.target.kind not in ("", "Node"):
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f'target.kind: must be "Node", not {validation.show_value(binding.target.kind)}',
        )
    # The target becomes the pod's spec.nodeName: a node's name (a DNS-1123 subdomain),
    # checked here so that nothing else (a path, a shell expansion, 100k characters) is stored.
    reason = validate_dns1123_subdomain(binding.target.name)
    if reason:
        raise invalid(
            "Binding", binding.metadata.name, [validation.invalid("target.name", binding.target.name, reason)]
        )


def bind_pod(pod: pod_pb2.Pod, binding: pod_pb2.Binding, namespace: str, now: Timestamp) -> pod_pb2.Pod:
    """The stored pod bound to binding's node (a new message), or ApiError when it may not be."""
    name = binding.metadata.name
    if pod.spec.node_name:
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f'pod "{name}" in namespace {namespace} is already bound to node "{pod.spec.node_name}"',
        )
    if binding.metadata.uid and binding.metadata.uid != pod.metadata.uid:
        raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f'pod "{name}" was replaced (uid differs)')
    if pod.metadata.HasField("deletion_timestamp"):
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION, f'pod "{name}" is being deleted, cannot be assigned to a host'
        )
    updated = pod_pb2.Pod()
    updated.CopyFrom(pod)
    updated.spec.node_name = binding.target.name
    podutil.set_pod_condition(updated, podutil.POD_SCHEDULED, podutil.TRUE, "", "", now)
    return updated


def pod_grace_period(pod: pod_pb2.Pod, requested: int | None) -> int:
    """The grace period a Delete gives a pod (Kubernetes' podStrategy.CheckGracefulDelete):
    the request's, else the pod's spec.terminationGracePeriodSeconds (30 by default); 0, at
    once, for a pod no kubelet runs (not bound) or that is over (Succeeded or Failed).

    A mirror pod also goes at once: its static pod runs whatever the API says, and its
    kubelet makes it again (Kubernetes marks it and that kubelet removes it at once)."""
    if not pod.spec.node_name or podutil.is_terminated(pod):
        return 0
    if validation.MIRROR_POD_ANNOTATION in pod.metadata.annotations:
        return 0
    if requested is not None:
        return max(0, requested)
    if pod.spec.HasField("termination_grace_period_seconds"):
        return max(0, pod.spec.termination_grace_period_seconds)
    return defaults.DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS


class BindingREST(SubresourceREST):
    """pods/binding: sets spec.nodeName once (the scheduler's write), guarded by revision."""

    name = "binding"
    rpc = "Bind"

    async def handle(self, request: pod_pb2.Binding) -> pod_pb2.Pod:
        require_name(request.metadata.name)
        namespace = self.registry.stored_namespace_of(request.metadata.namespace)
        check_binding(request)

        def mutate(pod: pod_pb2.Pod) -> pod_pb2.Pod:
            return bind_pod(pod, request, namespace, now_timestamp())

        return await self.registry.guarded_write(
            namespace, request.metadata.name, request.metadata.resource_version, mutate
        )


class PodStrategy(Strategy[pod_pb2.Pod]):
    subresources = (StatusREST, BindingREST)
    status_fields = ("status",)

    def prepare_for_create(self, obj: pod_pb2.Pod) -> None:
        defaults.default_pod(obj)
        obj.status.Clear()
        obj.status.phase = podutil.PENDING

    def prepare_for_update(self, obj: pod_pb2.Pod, old: pod_pb2.Pod) -> None:
        self.keep_status(obj, old)
        defaults.default_pod(obj)
        bump_generation_on_spec_change(obj, old)

    def validate(self, obj: pod_pb2.Pod) -> list[FieldError]:
        return validation.validate_pod(obj)

    def graceful_delete_period(self, obj: pod_pb2.Pod, requested: int | None) -> int | None:
        return pod_grace_period(obj, requested)

    def validate_update(self, obj: pod_pb2.Pod, old: pod_pb2.Pod) -> list[FieldError]:
        # Checked first and alone, as before strategies: the message names only this.
        if old.spec.node_name and obj.spec.node_name != old.spec.node_name:
            return [
                FieldError("spec.nodeName", f"field is immutable once bound (bound to {old.spec.node_name})")
            ]
        # Both compared as today's defaults fill them, so that a default added since the pod
        # was stored does not read as a change of its spec.
        updated, stored = pod_pb2.Pod(), pod_pb2.Pod()
        updated.CopyFrom(obj)
        stored.CopyFrom(old)
        defaults.default_pod(updated)
        defaults.default_pod(stored)
        return self.validate(obj) + validation.validate_pod_update(updated, stored)


# -- services and endpoints ---------------------------------------------------


Service = service_pb2.Service
NODE_PORT = "NodePort"


def allocation_keys(svc: Service) -> list[bytes]:
    """The allocation keys a stored service holds: its cluster IP's (when it is an
    address) and one per node port number (a TCP and a UDP port may share one)."""
    keys: list[bytes] = []
    if (ip := ip_key(svc.spec.cluster_ip)) is not None:
        keys.append(ip.encode())
    for port in svc.spec.ports:
        if port.node_port and (key := node_port_key(port.node_port).encode()) not in keys:
            keys.append(key)
    return keys


def patch_allocated_values(obj: Service, old: Service) -> None:
    """An update that leaves out what the server allocated keeps it, as Kubernetes'
    patchAllocatedValues and dropTypeDependentFields do (so `apply` of a manifest
    without clusterIP or nodePort changes neither)."""
    spec, before = obj.spec, old.spec
    if not spec.cluster_ip:
        spec.cluster_ip = before.cluster_ip
    if before.type == NODE_PORT and spec.type == NODE_PORT:
        used = {port.node_port for port in spec.ports if port.node_port}
        by_name = {port.name: port.node_port for port in before.ports}
        for port in spec.ports:
            kept = by_name.get(port.name, 0)
            if not port.node_port and kept and kept not in used:
                port.node_port = kept
                used.add(kept)
    elif before.type == NODE_PORT and spec.type != NODE_PORT:
        # Leaving NodePort with the node ports as they were: they go with the type.
        if {p.node_port for p in spec.ports} - {0} == {p.node_port for p in before.ports} - {0}:
            for port in spec.ports:
                port.node_port = 0


class ServiceAllocation(SideKeys):
    """One write attempt's cluster IP and node ports: the keys it claims and
    releases, what it picked (reserved in the views until it is done), and how
    to undo what it filled in the service when the attempt does not commit."""

    def __init__(self, name: str, owner: bytes) -> None:
        super().__init__()
        self.name = name
        self.owner = owner
        self._values: dict[bytes, tuple[TakenView, int | None]] = {}  # claimed or released key -> its view
        self._requested: dict[bytes, FieldError] = {}  # a claim the user asked for -> the error if taken
        self._undo: list[Callable[[], None]] = []
        self._finished = False

    def claim(
        self, key: bytes, view: TakenView, value: int, *, taken: FieldError | None = None,
        undo: Callable[[], None] | None = None,
    ) -> None:
        """Claims key; taken: the user asked for it (the error if it is held), else it was picked."""
        self.claims[key] = self.owner
        self._values[key] = (view, value)
        view.reserve(value)
        if taken is not None:
            self._requested[key] = taken
        if undo is not None:
            self._undo.append(undo)

    def release(self, key: bytes, view: TakenView, value: int | None) -> None:
        self.releases[key] = self.owner
        self._values[key] = (view, value)

    def done(self, revision: int | None) -> None:
        if self._finished:
            return
        self._finished = True
        for key in self.claims:
            view, value = self._values[key]
            if value is not None:
                view.unreserve(value)
        if revision is None:
            for undo in reversed(self._undo):
                undo()
            return
        for key, added in [*((k, True) for k in self.claims), *((k, False) for k in self.releases)]:
            view, value = self._values[key]
            if value is not None:
                view.record(revision, added=[value] if added else [], removed=[] if added else [value])

    async def lost(self, held: Mapping[bytes, KeyValue]) -> None:
        errors = [self._requested[key] for key in held if key in self._requested]
        if errors:
            raise invalid(SERVICES.name, self.name, errors, code=grpc.StatusCode.ALREADY_EXISTS)
        # Picked values another server took meanwhile: our view is stale; list again and pick again.
        log.info("service_allocation_lost", service=self.name, keys=sorted(k.decode() for k in held))
        stale: list[TakenView] = []
        for key in held:
            view, value = self._values[key]
            if value is not None:
                view.saw_taken(value)
            if view not in stale:
                stale.append(view)
        await asyncio.gather(*(view.refresh() for view in stale))


def _lister(storage: Storage, prefix: str) -> Loader:
    start = prefix.encode()

    async def load() -> tuple[int, list[str]]:
        result = await storage.range(start, prefix_range_end(start))
        return result.revision, [kv.key[len(start):].decode() for kv in result.kvs]

    return load


def _port_value(text: str) -> int | None:
    return int(text) if text.isdigit() else None


class ServiceAllocator:
    """Plans each service write's allocations (ServiceAllocation) from the ranges
    and what this server knows is taken (one TakenView per range)."""

    def __init__(
        self, ip_range: ServiceIPRange, port_range: NodePortRange, ips: TakenView, ports: TakenView,
        rng: random.Random | None = None,
    ) -> None:
        self.ip_range = ip_range
        self.port_range = port_range
        self.ips = ips
        self.ports = ports
        self._rng = rng or random.Random()

    @classmethod
    def over(cls, storage: Storage, ip_range: ServiceIPRange, port_range: NodePortRange) -> ServiceAllocator:
        return cls(
            ip_range,
            port_range,
            TakenView(_lister(storage, IP_PREFIX), ip_range.value),
            TakenView(_lister(storage, NODE_PORT_PREFIX), _port_value),
        )

    def _view_of(self, key: bytes) -> tuple[TakenView, int | None]:
        text = key.decode()
        if text.startswith(IP_PREFIX):
            return self.ips, self.ip_range.value(text.removeprefix(IP_PREFIX))
        return self.ports, _port_value(text.removeprefix(NODE_PORT_PREFIX))

    async def plan(self, obj: Service | None, old: Service | None) -> ServiceAllocation:
        """The allocations of a create (old None), an update, or a delete (obj None).

        Fills obj's empty clusterIP (unless headless) and a NodePort service's
        empty nodePorts with picked values; checks that values asked for are in
        range (INVALID_ARGUMENT naming the field); whether they are free is for
        etcd's guard to say (ALREADY_EXISTS in lost). A full range is
        RESOURCE_EXHAUSTED naming the field and the range: a condition of the
        cluster an operator fixes (a wider range, fewer services), not a bad
        request, and not INTERNAL (Kubernetes' 500), which here means a bug.
        """
        svc = obj if obj is not None else old
        assert svc is not None, "a write has the new object, the stored one, or both"
        meta = svc.metadata
        side = ServiceAllocation(meta.name, owner_record(meta.namespace, meta.name, meta.uid))
        held = allocation_keys(old) if old is not None else []
        try:
            if obj is not None:
                await self._allocate(obj, held, side)
            keeps = set(allocation_keys(obj)) if obj is not None else set()
            for key in held:
                if key not in keeps:
                    side.release(key, *self._view_of(key))
        except BaseException:
            side.done(None)
            raise
        return side

    async def _allocate(self, obj: Service, held: list[bytes], side: ServiceAllocation) -> None:
        spec = obj.spec
        errors: list[FieldError] = []
        # What the user asked for first (reserved before anything is picked), then the picks.
        if spec.cluster_ip and spec.cluster_ip != HEADLESS_CLUSTER_IP:
            key = ip_key(spec.cluster_ip)
            if key is not None and key.encode() not in held:
                path, value = "spec.clusterIP", self.ip_range.value(spec.cluster_ip)
                if value is None or not self.ip_range.allows(spec.cluster_ip):
                    errors.append(validation.invalid(path, spec.cluster_ip, self.ip_range.not_in_range()))
                else:
                    taken = validation.invalid(path, spec.cluster_ip, "provided IP is already allocated")
                    side.claim(key.encode(), self.ips, value, taken=taken)
        node_ports = spec.type == NODE_PORT
        if node_ports:
            for i, port in enumerate(spec.ports):
                port_key = node_port_key(port.node_port).encode()
                if not port.node_port or port_key in held or port_key in side.claims:
                    continue
                path = f"spec.ports[{i}].nodePort"
                if not self.port_range.allows(port.node_port):
                    errors.append(validation.invalid(path, port.node_port, self.port_range.not_in_range()))
                else:
                    taken = validation.invalid(path, port.node_port, "provided port is already allocated")
                    side.claim(port_key, self.ports, port.node_port, taken=taken)
        if errors:
            raise invalid(SERVICES.name, side.name, errors)
        if not spec.cluster_ip:
            what = f"a cluster IP from {self.ip_range}"
            value = await self._pick(self.ips, self.ip_range.span, "spec.clusterIP", what, side.name)
            spec.cluster_ip = self.ip_range.text(value)
            undo = _clear_cluster_ip(spec)
            side.claim((IP_PREFIX + spec.cluster_ip).encode(), self.ips, value, undo=undo)
        if node_ports:
            for i, port in enumerate(spec.ports):
                if port.node_port:
                    continue
                what = f"a node port from {self.port_range}"
                value = await self._pick(self.ports, self.port_range.span, f"spec.ports[{i}].nodePort", what, side.name)
                port.node_port = value
                side.claim(node_port_key(value).encode(), self.ports, value, undo=_clear_node_port(port))

    async def _pick(self, view: TakenView, span: Span, path: str, what: str, name: str) -> int:
        await view.ready()
        value = pick(span, view, self._rng)
        if value is None:
            await view.refresh()  # freed by another server since we listed?
            value = pick(span, view, self._rng)
        if value is None:
            raise invalid(
                SERVICES.name, name, [FieldError(path, f"failed to allocate {what}: the range is full")],
                code=grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        return value


def _clear_cluster_ip(spec: service_pb2.ServiceSpec) -> Callable[[], None]:
    def clear() -> None:
        spec.cluster_ip = ""

    return clear


def _clear_node_port(port: service_pb2.ServicePort) -> Callable[[], None]:
    def clear() -> None:
        port.node_port = 0

    return clear


class ServiceStrategy(Strategy[Service]):
    has_side_keys = True

    def __init__(
        self,
        kind: Kind,
        *,
        cluster_ip_range: ServiceIPRange | None = None,
        node_port_range: NodePortRange | None = None,
    ) -> None:
        super().__init__(kind)
        self.cluster_ip_range = cluster_ip_range or ServiceIPRange.parse(DEFAULT_SERVICE_CLUSTER_IP_RANGE)
        self.node_port_range = node_port_range or NodePortRange.parse(DEFAULT_SERVICE_NODE_PORT_RANGE)
        # One allocator (with its views of etcd) per storage this strategy serves.
        self._allocators: weakref.WeakKeyDictionary[Storage, ServiceAllocator] = weakref.WeakKeyDictionary()

    def allocator(self, storage: Storage) -> ServiceAllocator:
        allocator = self._allocators.get(storage)
        if allocator is None:
            allocator = ServiceAllocator.over(storage, self.cluster_ip_range, self.node_port_range)
            self._allocators[storage] = allocator
        return allocator

    def prepare_for_create(self, obj: Service) -> None:
        defaults.default_service(obj)

    def prepare_for_update(self, obj: Service, old: Service) -> None:
        defaults.default_service(obj)
        patch_allocated_values(obj, old)
        bump_generation_on_spec_change(obj, old)

    def validate(self, obj: Service) -> list[FieldError]:
        return validation.validate_service(obj)

    def validate_update(self, obj: Service, old: Service) -> list[FieldError]:
        errors = self.validate(obj)
        if old.spec.cluster_ip and obj.spec.cluster_ip != old.spec.cluster_ip:
            errors.append(validation.invalid("spec.clusterIP", obj.spec.cluster_ip, "field is immutable"))
        return errors

    async def side_keys(self, registry: Registry, obj: Service | None, old: Service | None) -> SideKeys:
        return await self.allocator(registry.storage).plan(obj, old)

    async def repair(self, registry: Registry) -> None:
        """Makes the allocation keys match the services (see ipallocator.plan_repair):
        services stored before allocation keys existed, keys edited by hand."""
        storage = registry.storage
        listing = service_pb2.ServiceList.FromString(await registry.list(meta_pb2.ListOptions()))
        revision = listing.metadata.resource_version
        keys: dict[bytes, tuple[bytes, int]] = {}
        for prefix in (IP_PREFIX.encode(), NODE_PORT_PREFIX.encode()):
            result = await storage.range(prefix, prefix_range_end(prefix), revision=revision)
            keys.update((kv.key, (kv.value, kv.mod_revision)) for kv in result.kvs)
        holders = []
        for svc in listing.items:
            meta, name = svc.metadata, f"{svc.metadata.namespace}/{svc.metadata.name}"
            holders.append(
                Holder(
                    key=self.kind.key(meta.namespace, meta.name).encode(),
                    revision=meta.resource_version,
                    owner=owner_record(meta.namespace, meta.name, meta.uid),
                    name=name,
                    wants=tuple(allocation_keys(svc)),
                )
            )
            ip = svc.spec.cluster_ip
            if not ip:
                log.warning("service_without_cluster_ip", service=name, hint="its next update allocates one")
            elif ip != HEADLESS_CLUSTER_IP and not self.cluster_ip_range.allows(ip):
                log.warning("service_ip_out_of_range", service=name, ip=ip, range=str(self.cluster_ip_range))
        plan = plan_repair(holders, keys)
        for problem in plan.problems:
            log.error("service_allocation_conflict", problem=problem)
        for claim in plan.claims:
            guards = [
                at_revision(claim.service_key, claim.service_revision),
                at_revision(claim.key, claim.expected_mod_revision),
            ]
            outcome = await storage.transaction(guards, [put(claim.key, claim.owner)])
            log.info(
                "service_allocation_repaired",
                key=claim.key.decode(),
                service=claim.service_key.decode(),
                done=outcome.succeeded,
            )
        for release in plan.releases:
            outcome = await storage.transaction([at_revision(release.key, release.mod_revision)], [delete(release.key)])
            log.info("service_allocation_released", key=release.key.decode(), done=outcome.succeeded)


class EndpointsStrategy(Strategy[endpoints_pb2.Endpoints]):
    # No spec: the generation stays where it was.

    def prepare_for_create(self, obj: endpoints_pb2.Endpoints) -> None:
        defaults.default_endpoints(obj)

    def prepare_for_update(self, obj: endpoints_pb2.Endpoints, old: endpoints_pb2.Endpoints) -> None:
        defaults.default_endpoints(obj)

    def validate(self, obj: endpoints_pb2.Endpoints) -> list[FieldError]:
        return validation.validate_endpoints(obj)


# -- replication controllers ---------------------------------------------------

ReplicationController = replication_controller_pb2.ReplicationController


class ReplicationControllerStrategy(Strategy[ReplicationController]):
    subresources = (StatusREST,)
    status_fields = ("status",)
    collects_dependents = True  # the replicator deletes a controller's pods

    def prepare_for_create(self, obj: ReplicationController) -> None:
        defaults.default_replication_controller(obj)
        obj.status.Clear()

    def prepare_for_update(self, obj: ReplicationController, old: ReplicationController) -> None:
        self.keep_status(obj, old)
        defaults.default_replication_controller(obj)
        bump_generation_on_spec_change(obj, old)

    def validate(self, obj: ReplicationController) -> list[FieldError]:
        return validation.validate_replication_controller(obj)

    async def before_delete(self, registry: Registry, obj: ReplicationController, propagation_policy: str) -> None:
        """Orphan (--cascade=orphan): the controller's pods stay, with its owner reference removed."""
        if propagation_policy != ORPHAN:
            return
        # Mark the controller as being deleted before releasing its pods, so its
        # replication manager stops adopting and replacing them (as Kubernetes'
        # orphan finalizer does); Delete's retry loop then deletes it.
        uid = obj.metadata.uid
        await registry.guarded_write(obj.metadata.namespace, obj.metadata.name, 0, _mark_deleting(uid))
        pods = registry.peer(PODS)
        listing = pod_pb2.PodList.FromString(await pods.list(meta_pb2.ListOptions(namespace=obj.metadata.namespace)))
        for pod in listing.items:
            if not any(ref.uid == uid for ref in pod.metadata.owner_references):
                continue
            try:
                await pods.guarded_write(pod.metadata.namespace, pod.metadata.name, 0, _release_from(uid))
            except ApiError as error:
                if error.code != grpc.StatusCode.NOT_FOUND:
                    raise


def _mark_deleting(uid: str) -> Callable[[Any], Any | None]:
    """The controller with deletion_timestamp set (None: gone, replaced, or already marked)."""

    def mark(current: Any) -> Any:
        if current.metadata.uid != uid or current.metadata.HasField("deletion_timestamp"):
            return None
        updated = type(current)()
        updated.CopyFrom(current)
        updated.metadata.deletion_timestamp.CopyFrom(now_timestamp())
        return updated

    return mark


def _release_from(uid: str) -> Callable[[Any], Any | None]:
    """The pod without its owner reference to uid (None: it has none)."""

    def release(current: Any) -> Any:
        kept = [ref for ref in current.metadata.owner_references if ref.uid != uid]
        if len(kept) == len(current.metadata.owner_references):
            return None
        updated = type(current)()
        updated.CopyFrom(current)
        del updated.metadata.owner_references[:]
        updated.metadata.owner_references.extend(kept)
        return updated

    return release


# -- nodes ----------------------------------------------------------------------


class NodeStrategy(Strategy[node_pb2.Node]):
    # A node registers with its status (the kubelet's first report): kept on create.
    subresources = (StatusREST,)
    status_fields = ("status",)

    def prepare_for_create(self, obj: node_pb2.Node) -> None:
        defaults.default_node(obj)

    def prepare_for_update(self, obj: node_pb2.Node, old: node_pb2.Node) -> None:
        self.keep_status(obj, old)
        defaults.default_node(obj)
        bump_generation_on_spec_change(obj, old)

    def validate(self, obj: node_pb2.Node) -> list[FieldError]:
        return validation.validate_node(obj)


# -- namespaces and RBAC ----------------------------------------------------------


class NamespaceStrategy(Strategy[namespace_pb2.Namespace]):
    # The phase is the server's: "Active" from creation (no namespace controller yet).

    def prepare_for_create(self, obj: namespace_pb2.Namespace) -> None:
        obj.ClearField("status")
        defaults.default_namespace(obj)

    def prepare_for_update(self, obj: namespace_pb2.Namespace, old: namespace_pb2.Namespace) -> None:
        obj.status.CopyFrom(old.status)
        defaults.default_namespace(obj)

    def validate(self, obj: namespace_pb2.Namespace) -> list[FieldError]:
        return validation.validate_namespace(obj)


class RbacStrategy(Strategy[Any]):
    """Roles and bindings: defaults, validation, and a binding's roleRef fixed once made."""

    def prepare_for_create(self, obj: Any) -> None:
        defaults.apply_defaults(obj)

    def prepare_for_update(self, obj: Any, old: Any) -> None:
        defaults.apply_defaults(obj)

    def validate(self, obj: Any) -> list[FieldError]:
        return validation.validate(obj)

    def validate_update(self, obj: Any, old: Any) -> list[FieldError]:
        errors = self.validate(obj)
        if self.kind in (ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS):
            errors += validation.validate_role_ref_update(obj, old)
        return errors


# -- leases ---------------------------------------------------------------------------


class LeaseStrategy(Strategy[coordination_pb2.Lease]):
    """Leader election's leases (Kubernetes' coordination/lease strategy): a spec only, no
    status; the generation stays where it was (a renewal every few seconds is no new spec)."""

    def prepare_for_create(self, obj: coordination_pb2.Lease) -> None:
        defaults.default_lease(obj)

    def prepare_for_update(self, obj: coordination_pb2.Lease, old: coordination_pb2.Lease) -> None:
        defaults.default_lease(obj)

    def validate(self, obj: coordination_pb2.Lease) -> list[FieldError]:
        return validation.validate_lease(obj)


# -- events ---------------------------------------------------------------------------

# How long an event lives after its last write (kube-apiserver's --event-ttl).
DEFAULT_EVENT_TTL = 3600


class EventStrategy(Strategy[event_pb2.Event]):
    """Events (Kubernetes' event strategy): no spec nor status; each write is stored with an etcd
    lease of `ttl` seconds, so an event expires that long after it was last written. Not in the
    watch cache, as in Kubernetes (etcdwatch.py says why)."""

    watch_cached = False

    def __init__(self, kind: Kind, *, ttl: int = DEFAULT_EVENT_TTL) -> None:
        super().__init__(kind)
        self.ttl = ttl

    def lease_ttl(self) -> int | None:
        return self.ttl

    def validate(self, obj: event_pb2.Event) -> list[FieldError]:
        return events.validate_event(obj)

    def validate_update(self, obj: event_pb2.Event, old: event_pb2.Event) -> list[FieldError]:
        return events.validate_event_update(obj, old)


# -- the table --------------------------------------------------------------------

_STRATEGY_CLASSES: dict[str, type[Strategy[Any]]] = {
    PODS.name: PodStrategy,
    SERVICES.name: ServiceStrategy,
    ENDPOINTS.name: EndpointsStrategy,
    REPLICATION_CONTROLLERS.name: ReplicationControllerStrategy,
    NODES.name: NodeStrategy,
    NAMESPACES.name: NamespaceStrategy,
    ROLES.name: RbacStrategy,
    CLUSTER_ROLES.name: RbacStrategy,
    ROLE_BINDINGS.name: RbacStrategy,
    CLUSTER_ROLE_BINDINGS.name: RbacStrategy,
    LEASES.name: LeaseStrategy,
    EVENTS.name: EventStrategy,
}


def build_strategies(
    *,
    cluster_ip_range: ServiceIPRange | None = None,
    node_port_range: NodePortRange | None = None,
    event_ttl: int = DEFAULT_EVENT_TTL,
) -> dict[str, Strategy[Any]]:
    """Every kind's strategy, by kind name, in the kinds table's order: a fresh set
    for one API server (the service strategy keeps that server's allocation views)."""
    missing = [kind.name for kind in ALL_KINDS if kind.name not in _STRATEGY_CLASSES]
    if missing:
        raise RuntimeError(f"no API server strategy for kind(s) {', '.join(missing)}: add one to strategies.py")
    strategies: dict[str, Strategy[Any]] = {}
    for kind in ALL_KINDS:
        if kind is SERVICES:
            strategies[kind.name] = ServiceStrategy(
                kind, cluster_ip_range=cluster_ip_range, node_port_range=node_port_range
            )
        elif kind is EVENTS:
            strategies[kind.name] = EventStrategy(kind, ttl=event_ttl)
        else:
            strategies[kind.name] = _STRATEGY_CLASSES[kind.name](kind)
    return strategies


# Every kind's strategy with the default ranges (what tests and tools read).
STRATEGIES: dict[str, Strategy[Any]] = build_strategies()


def strategy_for(kind: Kind) -> Strategy[Any]:
    return STRATEGIES[kind.name]
