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
- before_delete: the RC's `propagationPolicy: Orphan` (kubectl's --cascade=orphan).

The table at the bottom pairs every kind of `services.common.resources` with
its strategy; a kind without one fails at import.
"""

from __future__ import annotations

from typing import Any, Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import (
    endpoints_pb2,
    meta_pb2,
    node_pb2,
    pod_pb2,
    replication_controller_pb2,
    service_pb2,
)
from services.common import defaults, podutil, validation
from services.common.resources import (
    ALL_KINDS,
    ENDPOINTS,
    NODES,
    PODS,
    REPLICATION_CONTROLLERS,
    SERVICES,
    Kind,
)
from services.common.timestamps import now_timestamp
from services.common.validation import FieldError

from .errors import ApiError, require_name
from .registry import ORPHAN, Registry, StatusREST, Strategy, SubresourceREST


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
            grpc.StatusCode.INVALID_ARGUMENT, f'target.kind: must be "Node", not "{binding.target.kind}"'
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
    updated = pod_pb2.Pod()
    updated.CopyFrom(pod)
    updated.spec.node_name = binding.target.name
    podutil.set_pod_condition(updated, podutil.POD_SCHEDULED, podutil.TRUE, "", "", now)
    return updated


class BindingREST(SubresourceREST):
    """pods/binding: sets spec.nodeName once (the scheduler's write), guarded by revision."""

    name = "binding"
    rpc = "Bind"

    async def handle(self, request: pod_pb2.Binding) -> pod_pb2.Pod:
        require_name(request.metadata.name)
        namespace = self.registry.namespace_of(request.metadata.namespace)
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

    def validate_update(self, obj: pod_pb2.Pod, old: pod_pb2.Pod) -> list[FieldError]:
        # Checked first and alone, as before strategies: the message names only this.
        if old.spec.node_name and obj.spec.node_name != old.spec.node_name:
            return [
                FieldError("spec.nodeName", f"field is immutable once bound (bound to {old.spec.node_name})")
            ]
        return self.validate(obj)


# -- services and endpoints ---------------------------------------------------


class ServiceStrategy(Strategy[service_pb2.Service]):
    def prepare_for_create(self, obj: service_pb2.Service) -> None:
        defaults.default_service(obj)

    def prepare_for_update(self, obj: service_pb2.Service, old: service_pb2.Service) -> None:
        defaults.default_service(obj)
        bump_generation_on_spec_change(obj, old)

    def validate(self, obj: service_pb2.Service) -> list[FieldError]:
        return validation.validate_service(obj)


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


# -- the table --------------------------------------------------------------------

_STRATEGY_CLASSES: dict[str, type[Strategy[Any]]] = {
    PODS.name: PodStrategy,
    SERVICES.name: ServiceStrategy,
    ENDPOINTS.name: EndpointsStrategy,
    REPLICATION_CONTROLLERS.name: ReplicationControllerStrategy,
    NODES.name: NodeStrategy,
}


def _strategies() -> dict[str, Strategy[Any]]:
    missing = [kind.name for kind in ALL_KINDS if kind.name not in _STRATEGY_CLASSES]
    if missing:
        raise RuntimeError(f"no API server strategy for kind(s) {', '.join(missing)}: add one to strategies.py")
    return {kind.name: _STRATEGY_CLASSES[kind.name](kind) for kind in ALL_KINDS}


# Every kind's strategy, by kind name, in the kinds table's order.
STRATEGIES: dict[str, Strategy[Any]] = _strategies()


def strategy_for(kind: Kind) -> Strategy[Any]:
    return STRATEGIES[kind.name]
