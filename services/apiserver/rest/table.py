"""Server-side printing: a meta.k8s.io/v1 Table when the client's Accept asks for one
(`application/json;as=Table;v=v1;g=meta.k8s.io`, what `kubectl get` sends), for lists, single
objects and watch events.

The columns are Kubernetes' own printers' (pkg/printers/internalversion) for these kinds —
priority 1 columns are what `-o wide` adds; what each cell shows is computed by
services/common/printing.py, the same code kubecfg prints with. Each row carries the object's
metadata as a PartialObjectMetadata (kubectl's NAMESPACE column, --show-labels), or the whole
object with includeObject=Object, or nothing with includeObject=None.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable

from services.common import printing
from services.common.printing import NONE, age, utc_now
from services.common.resources import (
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

from .jsonconv import message_to_json, object_to_json
from .status import bad_request

TABLE_API_VERSION = "meta.k8s.io/v1"
_INCLUDE_OBJECT = ("", "Metadata", "Object", "None")


@dataclass(frozen=True)
class Column:
    name: str
    cell: Callable[[Any, dt.datetime], Any]
    type: str = "string"
    priority: int = 0  # 1: shown by -o wide only
    format: str = ""
    description: str = ""

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "format": self.format, "description": self.description,
                "priority": self.priority}


def _name(obj: Any, now: dt.datetime) -> str:
    return obj.metadata.name


def _age(obj: Any, now: dt.datetime) -> str:
    return age(obj.metadata.creation_timestamp, now)


NAME = Column("Name", _name, format="name", description="Name must be unique within a namespace.")
AGE = Column("Age", _age, description="CreationTimestamp is a timestamp representing the server time when this "
                                      "object was created.")


def _pod_readiness_gates(pod: Any, now: dt.datetime) -> str:
    return NONE  # our pods have no readiness gates


def _service_external_ip(service: Any, now: dt.datetime) -> str:
    # Our services have no external IPs nor load balancers: ClusterIP and NodePort show <none>.
    return NONE


def _rc_containers(rc: Any) -> Any:
    return rc.spec.template.spec.containers


def _binding_subjects(index: int) -> Callable[[Any, dt.datetime], str]:
    def cell(binding: Any, now: dt.datetime) -> str:
        return ", ".join(printing.binding_subjects(binding.subjects)[index])
    return cell


_ROLE_COLUMNS = (NAME, Column("Created At", lambda role, now: printing.created_at(role.metadata.creation_timestamp),
                              type="date"))
_BINDING_COLUMNS = (
    NAME,
    Column("Role", lambda binding, now: f"{binding.role_ref.kind}/{binding.role_ref.name}"),
    AGE,
    Column("Users", _binding_subjects(0), priority=1),
    Column("Groups", _binding_subjects(1), priority=1),
    Column("ServiceAccounts", _binding_subjects(2), priority=1),
)

# By kind name: Kubernetes' columns, in its order.
COLUMNS: dict[str, tuple[Column, ...]] = {
    PODS.name: (
        NAME,
        Column("Ready", lambda pod, now: printing.pod_summary(pod, now).ready,
               description="The aggregate readiness state of this pod for accepting traffic."),
        Column("Status", lambda pod, now: printing.pod_summary(pod, now).status,
               description="The aggregate status of the containers in this pod."),
        Column("Restarts", lambda pod, now: printing.pod_summary(pod, now).restarts,
               description="The number of times the containers in this pod have been restarted and when the last "
                           "container in this pod has restarted."),
        AGE,
        Column("IP", lambda pod, now: pod.status.pod_ip or NONE, priority=1, description="IP address allocated to "
                                                                                         "the pod."),
        Column("Node", lambda pod, now: pod.spec.node_name or NONE, priority=1,
               description="Name of the Node this pod is assigned to."),
        Column("Nominated Node", lambda pod, now: NONE, priority=1,
               description="Name of the Node where this pod is nominated to run (preemption)."),
        Column("Readiness Gates", _pod_readiness_gates, priority=1, description="The readiness gates of this pod."),
    ),
    SERVICES.name: (
        NAME,
        Column("Type", lambda svc, now: svc.spec.type or "ClusterIP", description="The type of this service."),
        Column("Cluster-IP", lambda svc, now: svc.spec.cluster_ip or NONE, description="The IP of this service."),
        Column("External-IP", _service_external_ip, description="The external IPs of this service."),
        Column("Port(s)", lambda svc, now: printing.service_ports(svc), description="The ports of this service."),
        AGE,
        Column("Selector", lambda svc, now: printing.format_labels(svc.spec.selector), priority=1,
               description="Route service traffic to pods with label keys and values matching this selector."),
    ),
    ENDPOINTS.name: (
        NAME,
        Column("Endpoints", lambda ep, now: printing.format_endpoints(ep), description="Endpoints of the service."),
        AGE,
    ),
    REPLICATION_CONTROLLERS.name: (
        NAME,
        Column("Desired", lambda rc, now: printing.desired_replicas(rc), type="integer",
               description="Number of desired pods."),
        Column("Current", lambda rc, now: rc.status.replicas, type="integer",
               description="Number of actual replicas."),
        Column("Ready", lambda rc, now: rc.status.ready_replicas, type="integer",
               description="The number of ready replicas for this replication controller."),
        AGE,
        Column("Containers", lambda rc, now: ",".join(c.name for c in _rc_containers(rc)), priority=1,
               description="Names of each container in the template."),
        Column("Images", lambda rc, now: ",".join(c.image for c in _rc_containers(rc)), priority=1,
               description="Images referenced by each container in the template."),
        Column("Selector", lambda rc, now: printing.format_labels(rc.spec.selector), priority=1,
               description="Label selector for pods."),
    ),
    NODES.name: (
        NAME,
        Column("Status", lambda node, now: printing.node_status(node), description="The status of the node."),
        Column("Roles", lambda node, now: printing.node_roles(node), description="The roles of the node."),
        AGE,
        Column("Version", lambda node, now: node.status.node_info.kubelet_version or NONE,
               description="Kubelet Version reported by the node."),
        Column("Internal-IP", lambda node, now: printing.node_address(node, "InternalIP") or NONE, priority=1,
               description="List of internal IPs."),
        Column("External-IP", lambda node, now: printing.node_address(node, "ExternalIP") or NONE, priority=1,
               description="List of external IPs."),
        Column("OS-Image", lambda node, now: node.status.node_info.os_image or NONE, priority=1,
               description="OS Image reported by the node."),
        Column("Kernel-Version", lambda node, now: node.status.node_info.kernel_version or NONE, priority=1,
               description="Kernel Version reported by the node."),
        Column("Container-Runtime", lambda node, now: node.status.node_info.container_runtime_version or NONE,
               priority=1, description="Container Runtime Version reported by the node."),
    ),
    NAMESPACES.name: (
        NAME,
        Column("Status", lambda ns, now: ns.status.phase, description="The status of the namespace."),
        AGE,
    ),
    LEASES.name: (
        NAME,
        Column("Holder", lambda lease, now: lease.spec.holder_identity, description="The holder of the lease."),
        AGE,
    ),
    # kubectl's printEvent: no Name column but in -o wide, last.
    EVENTS.name: (
        Column("Last Seen", lambda ev, now: printing.event_last_seen(ev, now),
               description="The time at which the most recent occurrence of this event was recorded."),
        Column("Type", lambda ev, now: ev.type, description="Type of this event (Normal, Warning)."),
        Column("Reason", lambda ev, now: ev.reason,
               description="This should be a short, machine understandable string that gives the reason for the "
                           "transition into the object's current status."),
        Column("Object", lambda ev, now: printing.event_object(ev), description="The object that this event is "
                                                                                 "about."),
        Column("Subobject", lambda ev, now: ev.involved_object.field_path, priority=1,
               description="The field of the object the event is about, if it is a part of it."),
        Column("Source", lambda ev, now: printing.event_source(ev), priority=1,
               description="The component reporting this event."),
        Column("Message", lambda ev, now: ev.message.strip(),
               description="A human-readable description of the status of this operation."),
        Column("First Seen", lambda ev, now: printing.event_first_seen(ev, now), priority=1,
               description="The time at which the event was first recorded."),
        Column("Count", lambda ev, now: printing.event_count(ev), priority=1,
               description="The number of times this event has occurred."),
        Column("Name", _name, priority=1, format="name", description="Name must be unique within a namespace."),
    ),
    ROLES.name: _ROLE_COLUMNS,
    CLUSTER_ROLES.name: _ROLE_COLUMNS,
    ROLE_BINDINGS.name: _BINDING_COLUMNS,
    CLUSTER_ROLE_BINDINGS.name: _BINDING_COLUMNS,
}
# Any kind without printers of its own: Kubernetes' default table.
DEFAULT_COLUMNS = (NAME, AGE)


def wants_table(accept: str) -> bool:
    """Whether the Accept header's first media type this server can answer is a v1 Table (a
    client that asks for v1beta1 only, or puts plain JSON first, gets JSON)."""
    for part in accept.split(","):
        media, *raw = (piece.strip() for piece in part.split(";"))
        params = dict(p.split("=", 1) for p in raw if "=" in p)
        if media not in ("application/json", "*/*", "application/*", ""):
            continue
        if params.get("as") == "Table":
            if params.get("g") == "meta.k8s.io" and params.get("v") == "v1":
                return True
            continue  # a Table version not served: the next choice
        if not params.get("as"):
            return False
    return False


def include_object(query: Any) -> str:
    value = query.get("includeObject", "")
    if value not in _INCLUDE_OBJECT:
        raise bad_request(f"includeObject: invalid value {value[:64]!r}: expected Metadata, Object or None")
    return value or "Metadata"


def _row(kind: Kind, obj: Any, columns: tuple[Column, ...], now: dt.datetime, include: str) -> dict[str, Any]:
    row: dict[str, Any] = {"cells": [column.cell(obj, now) for column in columns]}
    if include == "Object":
        row["object"] = object_to_json(kind, obj)
    elif include == "Metadata":
        row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": TABLE_API_VERSION,
                         "metadata": message_to_json(obj.metadata)}
    return row


def table(kind: Kind, objects: list[Any], include: str, *, metadata: dict[str, Any] | None = None,
          definitions: bool = True) -> dict[str, Any]:
    """The Table of objects of a kind (definitions False: the rows only, as a watch's later events)."""
    columns = COLUMNS.get(kind.name, DEFAULT_COLUMNS)
    now = utc_now()
    document: dict[str, Any] = {"kind": "Table", "apiVersion": TABLE_API_VERSION, "metadata": metadata or {}}
    document["columnDefinitions"] = [column.definition() for column in columns] if definitions else []
    document["rows"] = [_row(kind, obj, columns, now, include) for obj in objects]
    return document


def list_table(kind: Kind, listed: Any, include: str) -> dict[str, Any]:
    """A List message as a Table, with its list metadata (resourceVersion, continue)."""
    meta = listed.metadata
    metadata: dict[str, Any] = {"resourceVersion": str(meta.resource_version)}
    if meta.continue_token:
        metadata["continue"] = meta.continue_token
    if meta.remaining_item_count:
        metadata["remainingItemCount"] = meta.remaining_item_count
    return table(kind, list(listed.items), include, metadata=metadata)
