"""The API's kinds in one table: names, messages, stubs and storage keys.

Every component that deals with "a kind" (the API server's generic registry,
kubecfg's verbs, the watch helpers) looks it up here, so adding a kind is one
entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from google.protobuf.message import Message

from kybernetes.v1 import (
    coordination_pb2,
    coordination_pb2_grpc,
    endpoints_pb2,
    endpoints_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    namespace_pb2,
    namespace_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    pod_pb2,
    pod_pb2_grpc,
    rbac_pb2,
    rbac_pb2_grpc,
    replication_controller_pb2,
    replication_controller_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)

API_VERSION = "v1"
# Kubernetes keeps RBAC in its own API group; manifests name it so.
RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"
# Leases (leader election) are in Kubernetes' coordination group.
COORDINATION_API_VERSION = "coordination.k8s.io/v1"
DEFAULT_NAMESPACE = "default"
# Annotation on the BOOKMARK that closes the initial events of a Watch.
INITIAL_EVENTS_END_ANNOTATION = "k8s.io/initial-events-end"
# Kubernetes' finalizer of a foreground deletion: the API server puts it on the owner, which
# stays (marked) until the garbage collector of its dependents (the replicator) removes it.
FOREGROUND_FINALIZER = "foregroundDeletion"


def _pod_fields(pod: pod_pb2.Pod) -> dict[str, str]:
    return {
        "metadata.name": pod.metadata.name,
        "metadata.namespace": pod.metadata.namespace,
        "spec.nodeName": pod.spec.node_name,
        "spec.restartPolicy": pod.spec.restart_policy,
        "status.phase": pod.status.phase,
        "status.podIP": pod.status.pod_ip,
    }


def _meta_fields(obj: Any) -> dict[str, str]:
    return {"metadata.name": obj.metadata.name, "metadata.namespace": obj.metadata.namespace}


def _node_fields(node: node_pb2.Node) -> dict[str, str]:
    return {
        "metadata.name": node.metadata.name,
        "spec.unschedulable": "true" if node.spec.unschedulable else "false",
    }


def _event_fields(event: event_pb2.Event) -> dict[str, str]:
    """Kubernetes' event field selectors (core/v1 EventToSelectableFields)."""
    ref = event.involved_object
    return {
        "metadata.name": event.metadata.name,
        "metadata.namespace": event.metadata.namespace,
        "involvedObject.kind": ref.kind,
        "involvedObject.namespace": ref.namespace,
        "involvedObject.name": ref.name,
        "involvedObject.uid": ref.uid,
        "involvedObject.apiVersion": ref.api_version,
        "involvedObject.resourceVersion": str(ref.resource_version) if ref.resource_version else "",
        "involvedObject.fieldPath": ref.field_path,
        "reason": event.reason,
        "reportingComponent": event.reporting_component,
        "source": event.source.component,
        "type": event.type,
    }


@dataclass(frozen=True)
class Kind:
    """One API kind: how it is named, stored, served and selected."""

    name: str  # "Pod"
    plural: str  # "pods": the etcd key segment and kubecfg's resource name
    singular: str  # "pod"
    short_names: tuple[str, ...]
    # The generated classes. Typed as Any: they are built with their fields as keywords
    # (Pod(metadata=...)), which types-protobuf's generic Message does not declare.
    message: type[Any]
    list_message: type[Any]
    event_message: type[Any]
    stub: Callable[[Any], Any]  # the generated client stub class
    service_name: str  # full gRPC service name
    namespaced: bool = True
    has_status: bool = True
    # apiVersion of its objects: "v1" (the core group) or "<group>/v1".
    api_version: str = API_VERSION
    # Fields a field selector may name, read from an object.
    fields: Callable[[Any], dict[str, str]] = field(default=_meta_fields)

    def key_prefix(self, namespace: str = "") -> str:
        """The etcd prefix of every object of this kind (in one namespace when given)."""
        if not self.namespaced or not namespace:
            return f"/registry/{self.plural}/"
        return f"/registry/{self.plural}/{namespace}/"

    def key(self, namespace: str, name: str) -> str:
        if self.namespaced:
            return f"/registry/{self.plural}/{namespace}/{name}"
        return f"/registry/{self.plural}/{name}"

    def names(self) -> tuple[str, ...]:
        """Every name kubecfg accepts for this kind."""
        return (self.plural, self.singular, self.name.lower(), *self.short_names)


PODS = Kind(
    name="Pod", plural="pods", singular="pod", short_names=("po",),
    message=pod_pb2.Pod, list_message=pod_pb2.PodList, event_message=pod_pb2.PodWatchEvent,
    stub=pod_pb2_grpc.PodRegistryStub, service_name="kybernetes.v1.PodRegistry",
    fields=_pod_fields,
)
SERVICES = Kind(
    name="Service", plural="services", singular="service", short_names=("svc",),
    message=service_pb2.Service, list_message=service_pb2.ServiceList,
    event_message=service_pb2.ServiceWatchEvent,
    stub=service_pb2_grpc.ServiceRegistryStub, service_name="kybernetes.v1.ServiceRegistry",
    has_status=False,
)
ENDPOINTS = Kind(
    name="Endpoints", plural="endpoints", singular="endpoints", short_names=("ep",),
    message=endpoints_pb2.Endpoints, list_message=endpoints_pb2.EndpointsList,
    event_message=endpoints_pb2.EndpointsWatchEvent,
    stub=endpoints_pb2_grpc.EndpointsRegistryStub, service_name="kybernetes.v1.EndpointsRegistry",
    has_status=False,
)
REPLICATION_CONTROLLERS = Kind(
    name="ReplicationController", plural="replicationcontrollers",
    singular="replicationcontroller", short_names=("rc",),
    message=replication_controller_pb2.ReplicationController,
    list_message=replication_controller_pb2.ReplicationControllerList,
    event_message=replication_controller_pb2.ReplicationControllerWatchEvent,
    stub=replication_controller_pb2_grpc.ReplicationControllerRegistryStub,
    service_name="kybernetes.v1.ReplicationControllerRegistry",
)
NODES = Kind(
    name="Node", plural="nodes", singular="node", short_names=("no",),
    message=node_pb2.Node, list_message=node_pb2.NodeList, event_message=node_pb2.NodeWatchEvent,
    stub=node_pb2_grpc.NodeRegistryStub, service_name="kybernetes.v1.NodeRegistry",
    namespaced=False, fields=_node_fields,
)

NAMESPACES = Kind(
    name="Namespace", plural="namespaces", singular="namespace", short_names=("ns",),
    message=namespace_pb2.Namespace, list_message=namespace_pb2.NamespaceList,
    event_message=namespace_pb2.NamespaceWatchEvent,
    stub=namespace_pb2_grpc.NamespaceRegistryStub, service_name="kybernetes.v1.NamespaceRegistry",
    namespaced=False, has_status=False,
)
ROLES = Kind(
    name="Role", plural="roles", singular="role", short_names=(),
    message=rbac_pb2.Role, list_message=rbac_pb2.RoleList, event_message=rbac_pb2.RoleWatchEvent,
    stub=rbac_pb2_grpc.RoleRegistryStub, service_name="kybernetes.v1.RoleRegistry",
    has_status=False, api_version=RBAC_API_VERSION,
)
CLUSTER_ROLES = Kind(
    name="ClusterRole", plural="clusterroles", singular="clusterrole", short_names=(),
    message=rbac_pb2.ClusterRole, list_message=rbac_pb2.ClusterRoleList,
    event_message=rbac_pb2.ClusterRoleWatchEvent,
    stub=rbac_pb2_grpc.ClusterRoleRegistryStub, service_name="kybernetes.v1.ClusterRoleRegistry",
    namespaced=False, has_status=False, api_version=RBAC_API_VERSION,
)
ROLE_BINDINGS = Kind(
    name="RoleBinding", plural="rolebindings", singular="rolebinding", short_names=(),
    message=rbac_pb2.RoleBinding, list_message=rbac_pb2.RoleBindingList,
    event_message=rbac_pb2.RoleBindingWatchEvent,
    stub=rbac_pb2_grpc.RoleBindingRegistryStub, service_name="kybernetes.v1.RoleBindingRegistry",
    has_status=False, api_version=RBAC_API_VERSION,
)
CLUSTER_ROLE_BINDINGS = Kind(
    name="ClusterRoleBinding", plural="clusterrolebindings", singular="clusterrolebinding", short_names=(),
    message=rbac_pb2.ClusterRoleBinding, list_message=rbac_pb2.ClusterRoleBindingList,
    event_message=rbac_pb2.ClusterRoleBindingWatchEvent,
    stub=rbac_pb2_grpc.ClusterRoleBindingRegistryStub, service_name="kybernetes.v1.ClusterRoleBindingRegistry",
    namespaced=False, has_status=False, api_version=RBAC_API_VERSION,
)
LEASES = Kind(
    name="Lease", plural="leases", singular="lease", short_names=(),
    message=coordination_pb2.Lease, list_message=coordination_pb2.LeaseList,
    event_message=coordination_pb2.LeaseWatchEvent,
    stub=coordination_pb2_grpc.LeaseRegistryStub, service_name="kybernetes.v1.LeaseRegistry",
    has_status=False, api_version=COORDINATION_API_VERSION,
)
EVENTS = Kind(
    name="Event", plural="events", singular="event", short_names=("ev",),
    message=event_pb2.Event, list_message=event_pb2.EventList, event_message=event_pb2.EventWatchEvent,
    stub=event_pb2_grpc.EventRegistryStub, service_name="kybernetes.v1.EventRegistry",
    has_status=False, fields=_event_fields,
)

ALL_KINDS: tuple[Kind, ...] = (
    PODS, SERVICES, ENDPOINTS, REPLICATION_CONTROLLERS, NODES,
    NAMESPACES, ROLES, CLUSTER_ROLES, ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS, LEASES, EVENTS,
)
RBAC_KINDS: tuple[Kind, ...] = (ROLES, CLUSTER_ROLES, ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS)
_BY_NAME: dict[str, Kind] = {}
for _kind in ALL_KINDS:
    _BY_NAME[_kind.name] = _kind
    for _alias in _kind.names():
        _BY_NAME[_alias] = _kind


def kind_for(name: str) -> Kind:
    """Looks a kind up by its Kind name ("Pod") or any kubecfg name ("po", "pods")."""
    try:
        return _BY_NAME[name] if name in _BY_NAME else _BY_NAME[name.lower()]
    except KeyError:
        known = ", ".join(k.plural for k in ALL_KINDS)
        raise KeyError(f'unknown kind "{name}" (known: {known})') from None


def kind_of_message(message: Message) -> Kind:
    for kind in ALL_KINDS:
        if isinstance(message, kind.message):
            return kind
    raise KeyError(f"{type(message).__name__} is not an API kind")
