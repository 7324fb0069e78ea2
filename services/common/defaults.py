"""Defaults the server fills in before validation, as Kubernetes' SetDefaults_* do.

Only fields the user left unset change; a value the user gave is kept even when
it is invalid, so that validation reports it. Server-owned metadata (uid,
timestamps, resource_version, generation) is the storage layer's job, not this.
"""

from __future__ import annotations

from typing import Any, Callable

from google.protobuf.message import Message

from kybernetes.v1 import (
    coordination_pb2,
    endpoints_pb2,
    namespace_pb2,
    node_pb2,
    pod_pb2,
    rbac_pb2,
    replication_controller_pb2,
    service_pb2,
)
from services.common.resources import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    DEFAULT_NAMESPACE,
    ENDPOINTS,
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

DEFAULT_PROTOCOL = "TCP"
DEFAULT_RESTART_POLICY = "Always"
DEFAULT_DNS_POLICY = "ClusterFirst"
DEFAULT_IMAGE_PULL_POLICY = "IfNotPresent"  # no registry: use the local image
DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS = 30
DEFAULT_REPLICAS = 1
DEFAULT_SERVICE_TYPE = "ClusterIP"
DEFAULT_SESSION_AFFINITY = "None"
# Probe timings when 0 (unset), as in Kubernetes.
DEFAULT_PROBE_TIMEOUT_SECONDS = 1
DEFAULT_PROBE_PERIOD_SECONDS = 10
DEFAULT_PROBE_SUCCESS_THRESHOLD = 1
DEFAULT_PROBE_FAILURE_THRESHOLD = 3


def _default_type_meta(obj: Any, kind: Kind) -> None:
    if not obj.api_version:
        obj.api_version = kind.api_version
    if not obj.kind:
        obj.kind = kind.name
    if kind.namespaced and not obj.metadata.namespace:
        obj.metadata.namespace = DEFAULT_NAMESPACE


def _default_probe(probe: pod_pb2.Probe) -> None:
    if probe.timeout_seconds == 0:
        probe.timeout_seconds = DEFAULT_PROBE_TIMEOUT_SECONDS
    if probe.period_seconds == 0:
        probe.period_seconds = DEFAULT_PROBE_PERIOD_SECONDS
    if probe.success_threshold == 0:
        probe.success_threshold = DEFAULT_PROBE_SUCCESS_THRESHOLD
    if probe.failure_threshold == 0:
        probe.failure_threshold = DEFAULT_PROBE_FAILURE_THRESHOLD
    if probe.HasField("http_get"):
        if not probe.http_get.path:
            probe.http_get.path = "/"
        if not probe.http_get.scheme:
            probe.http_get.scheme = "HTTP"


def default_container(container: pod_pb2.Container) -> None:
    if not container.image_pull_policy:
        container.image_pull_policy = DEFAULT_IMAGE_PULL_POLICY
    for port in container.ports:
        if not port.protocol:
            port.protocol = DEFAULT_PROTOCOL
    if container.HasField("liveness_probe"):
        _default_probe(container.liveness_probe)
    if container.HasField("readiness_probe"):
        _default_probe(container.readiness_probe)


def default_pod_spec(spec: pod_pb2.PodSpec) -> None:
    if not spec.restart_policy:
        spec.restart_policy = DEFAULT_RESTART_POLICY
    if not spec.HasField("termination_grace_period_seconds"):
        spec.termination_grace_period_seconds = DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS
    if not spec.dns_policy:
        spec.dns_policy = DEFAULT_DNS_POLICY
    for container in spec.containers:
        default_container(container)
        if spec.host_network:
            # On the host's network a container port is a host port (Kubernetes' SetDefaults_PodSpec),
            # so that the scheduler keeps two such pods off one node.
            for port in container.ports:
                if not port.host_port:
                    port.host_port = port.container_port


def default_pod(pod: pod_pb2.Pod) -> None:
    _default_type_meta(pod, PODS)
    default_pod_spec(pod.spec)


def default_service(svc: service_pb2.Service) -> None:
    _default_type_meta(svc, SERVICES)
    spec = svc.spec
    for port in spec.ports:
        if not port.protocol:
            port.protocol = DEFAULT_PROTOCOL
        if not port.target_port and port.port:
            port.target_port = str(port.port)
    if not spec.type:
        spec.type = DEFAULT_SERVICE_TYPE
    if not spec.session_affinity:
        spec.session_affinity = DEFAULT_SESSION_AFFINITY


def default_endpoints(ep: endpoints_pb2.Endpoints) -> None:
    _default_type_meta(ep, ENDPOINTS)
    for subset in ep.subsets:
        for port in subset.ports:
            if not port.protocol:
                port.protocol = DEFAULT_PROTOCOL


def default_replication_controller(rc: replication_controller_pb2.ReplicationController) -> None:
    _default_type_meta(rc, REPLICATION_CONTROLLERS)
    spec = rc.spec
    if not spec.HasField("replicas"):
        spec.replicas = DEFAULT_REPLICAS
    if spec.HasField("template"):
        template_labels = spec.template.metadata.labels
        # As Kubernetes: the template's labels stand in for a missing selector and missing labels.
        if not spec.selector:
            spec.selector.update(template_labels)
        if not rc.metadata.labels:
            rc.metadata.labels.update(template_labels)
        default_pod_spec(spec.template.spec)


def default_node(node: node_pb2.Node) -> None:
    _default_type_meta(node, NODES)


NAMESPACE_ACTIVE = "Active"


def default_namespace(ns: namespace_pb2.Namespace) -> None:
    _default_type_meta(ns, NAMESPACES)
    if not ns.status.phase:
        ns.status.phase = NAMESPACE_ACTIVE


def _default_rbac(kind: Kind) -> Callable[[Any], None]:
    def default(obj: Any) -> None:
        _default_type_meta(obj, kind)
        if hasattr(obj, "role_ref") and not obj.role_ref.api_group:
            obj.role_ref.api_group = "rbac.authorization.k8s.io"

    return default


def default_lease(lease: coordination_pb2.Lease) -> None:
    # Kubernetes defaults nothing in a Lease's spec: an unset duration or count stays unset.
    _default_type_meta(lease, LEASES)


_DEFAULTERS: dict[type[Message], Callable[[Any], None]] = {
    pod_pb2.Pod: default_pod,
    service_pb2.Service: default_service,
    endpoints_pb2.Endpoints: default_endpoints,
    replication_controller_pb2.ReplicationController: default_replication_controller,
    node_pb2.Node: default_node,
    namespace_pb2.Namespace: default_namespace,
    rbac_pb2.Role: _default_rbac(ROLES),
    rbac_pb2.ClusterRole: _default_rbac(CLUSTER_ROLES),
    rbac_pb2.RoleBinding: _default_rbac(ROLE_BINDINGS),
    rbac_pb2.ClusterRoleBinding: _default_rbac(CLUSTER_ROLE_BINDINGS),
    coordination_pb2.Lease: default_lease,
}


def apply_defaults(obj: Message) -> Message:
    """Fills the unset fields of an object of any API kind in place; returns the same object."""
    try:
        defaulter = _DEFAULTERS[type(obj)]
    except KeyError:
        raise TypeError(f"{type(obj).__name__} is not an API kind") from None
    defaulter(obj)
    return obj
