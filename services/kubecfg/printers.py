"""Tables as `kubectl get` prints them: kubecfg's columns per kind. What a cell shows (ages, pod
status, ports...) is services/common/printing.py's, shared with the API server's REST Tables."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable

from kybernetes.v1 import (
    endpoints_pb2,
    event_pb2,
    namespace_pb2,
    node_pb2,
    pod_pb2,
    replication_controller_pb2,
    service_pb2,
)

# (`x as x`: re-exported, kubecfg's commands and describe take them from here)
from services.common.printing import (
    NONE,
    age,
    binding_subjects,
    created_at,
    desired_replicas,
    event_count,
    event_first_seen,
    event_last_seen,
    event_object,
    event_source,
    format_endpoints,
    format_labels,
    human_duration as human_duration,
    node_address,
    node_roles,
    node_status,
    pod_summary,
    service_ports,
    timestamp_set as timestamp_set,
    to_datetime as to_datetime,
    utc_now as utc_now,
)
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

from .tabwriter import column_widths, pad_row

# --- per-kind columns --------------------------------------------------------


@dataclass(frozen=True)
class TableSpec:
    headers: tuple[str, ...]
    wide_headers: tuple[str, ...]
    # row(obj, now) -> (cells, wide cells); cells exclude NAME and NAMESPACE.
    row: Callable[[Any, dt.datetime], tuple[list[str], list[str]]]
    # False: no NAME column first (events: kubectl shows their name last, in -o wide only).
    named: bool = True
    # True: -o wide shows wide_headers and the wide cells instead of headers and cells (events:
    # kubectl puts the wide columns between the others).
    wide_replaces: bool = False


def _pod_row(pod: pod_pb2.Pod, now: dt.datetime) -> tuple[list[str], list[str]]:
    summary = pod_summary(pod, now)
    return (
        [summary.ready, summary.status, summary.restarts, age(pod.metadata.creation_timestamp, now)],
        [pod.status.pod_ip or NONE, pod.spec.node_name or NONE],
    )


def _service_row(service: service_pb2.Service, now: dt.datetime) -> tuple[list[str], list[str]]:
    return (
        [
            service.spec.type or "ClusterIP",
            service.spec.cluster_ip or NONE,
            service_ports(service),
            format_labels(service.spec.selector),
            age(service.metadata.creation_timestamp, now),
        ],
        [],
    )


def _rc_row(rc: replication_controller_pb2.ReplicationController, now: dt.datetime) -> tuple[list[str], list[str]]:
    containers = rc.spec.template.spec.containers
    return (
        [
            str(desired_replicas(rc)),
            str(rc.status.replicas),
            str(rc.status.ready_replicas),
            age(rc.metadata.creation_timestamp, now),
        ],
        [
            ",".join(c.name for c in containers) or NONE,
            ",".join(c.image for c in containers) or NONE,
            format_labels(rc.spec.selector),
        ],
    )


def _node_row(node: node_pb2.Node, now: dt.datetime) -> tuple[list[str], list[str]]:
    info = node.status.node_info
    return (
        [node_status(node), node_roles(node), age(node.metadata.creation_timestamp, now), info.kubelet_version or NONE],
        [
            node_address(node, "InternalIP") or NONE,
            node_address(node, "ExternalIP") or NONE,
            info.os_image or NONE,
            info.kernel_version or NONE,
            info.container_runtime_version or NONE,
        ],
    )


def _endpoints_row(endpoints: endpoints_pb2.Endpoints, now: dt.datetime) -> tuple[list[str], list[str]]:
    return [format_endpoints(endpoints), age(endpoints.metadata.creation_timestamp, now)], []


def _namespace_row(ns: namespace_pb2.Namespace, now: dt.datetime) -> tuple[list[str], list[str]]:
    return [ns.status.phase, age(ns.metadata.creation_timestamp, now)], []


def _role_row(role: Any, now: dt.datetime) -> tuple[list[str], list[str]]:
    return [created_at(role.metadata.creation_timestamp)], []


def _binding_row(binding: Any, now: dt.datetime) -> tuple[list[str], list[str]]:
    users, groups, service_accounts = binding_subjects(binding.subjects)
    return (
        [f"{binding.role_ref.kind}/{binding.role_ref.name}", age(binding.metadata.creation_timestamp, now)],
        [", ".join(users), ", ".join(groups), ", ".join(service_accounts)],
    )


def _lease_row(lease: Any, now: dt.datetime) -> tuple[list[str], list[str]]:
    # kubectl's lease columns: who holds it ("" once released), and its age.
    return [lease.spec.holder_identity, age(lease.metadata.creation_timestamp, now)], []


def _event_row(event: event_pb2.Event, now: dt.datetime) -> tuple[list[str], list[str]]:
    last_seen, obj, message = event_last_seen(event, now), event_object(event), event.message.strip()
    return (
        [last_seen, event.type, event.reason, obj, message],
        [
            last_seen, event.type, event.reason, obj, event.involved_object.field_path, event_source(event), message,
            event_first_seen(event, now), str(event_count(event)), event.metadata.name,
        ],
    )


_BINDING_TABLE = TableSpec(("ROLE", "AGE"), ("USERS", "GROUPS", "SERVICEACCOUNTS"), _binding_row)

TABLES: dict[str, TableSpec] = {
    PODS.name: TableSpec(("READY", "STATUS", "RESTARTS", "AGE"), ("IP", "NODE"), _pod_row),
    SERVICES.name: TableSpec(("TYPE", "CLUSTER-IP", "PORT(S)", "SELECTOR", "AGE"), (), _service_row),
    REPLICATION_CONTROLLERS.name: TableSpec(
        ("DESIRED", "CURRENT", "READY", "AGE"), ("CONTAINERS", "IMAGES", "SELECTOR"), _rc_row
    ),
    NODES.name: TableSpec(
        ("STATUS", "ROLES", "AGE", "VERSION"),
        ("INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"),
        _node_row,
    ),
    ENDPOINTS.name: TableSpec(("ENDPOINTS", "AGE"), (), _endpoints_row),
    NAMESPACES.name: TableSpec(("STATUS", "AGE"), (), _namespace_row),
    ROLES.name: TableSpec(("CREATED AT",), (), _role_row),
    CLUSTER_ROLES.name: TableSpec(("CREATED AT",), (), _role_row),
    ROLE_BINDINGS.name: _BINDING_TABLE,
    CLUSTER_ROLE_BINDINGS.name: _BINDING_TABLE,
    LEASES.name: TableSpec(("HOLDER", "AGE"), (), _lease_row),
    EVENTS.name: TableSpec(
        ("LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"),
        ("LAST SEEN", "TYPE", "REASON", "OBJECT", "SUBOBJECT", "SOURCE", "MESSAGE", "FIRST SEEN", "COUNT", "NAME"),
        _event_row,
        named=False,
        wide_replaces=True,
    ),
}


@dataclass(frozen=True)
class TableOptions:
    wide: bool = False
    all_namespaces: bool = False
    show_kind: bool = False  # names as "pod/web" when several kinds are printed
    show_labels: bool = False
    output_watch_events: bool = False


def table_headers(kind: Kind, options: TableOptions) -> list[str]:
    spec = TABLES[kind.name]
    headers = ["NAME", *spec.headers] if spec.named else list(spec.headers)
    if options.wide and spec.wide_replaces:
        headers = list(spec.wide_headers)
    elif options.wide:
        headers += spec.wide_headers
    if options.show_labels:
        headers.append("LABELS")
    if options.all_namespaces and kind.namespaced:
        headers.insert(0, "NAMESPACE")
    if options.output_watch_events:
        headers.insert(0, "EVENT")
    return headers


def qualified_name(kind: Kind, name: str) -> str:
    """`pod/web`, as kubectl names objects in messages and `-o name`."""
    return f"{kind.singular}/{name}"


def table_row(kind: Kind, obj: Any, now: dt.datetime, options: TableOptions, event_type: str = "") -> list[str]:
    spec = TABLES[kind.name]
    cells, wide_cells = spec.row(obj, now)
    name = qualified_name(kind, obj.metadata.name) if options.show_kind else obj.metadata.name
    row = [name, *cells] if spec.named else cells
    if options.wide and spec.wide_replaces:
        row = wide_cells
    elif options.wide:
        row += wide_cells
    if options.show_labels:
        row.append(format_labels(obj.metadata.labels))
    if options.all_namespaces and kind.namespaced:
        row.insert(0, obj.metadata.namespace)
    if options.output_watch_events:
        row.insert(0, event_type)
    return row


def format_objects(
    kind: Kind, objects: list[Any], now: dt.datetime, options: TableOptions, *, headers: bool = True
) -> list[str]:
    """The aligned lines of `kubectl get` for objects of one kind."""
    rows = [table_row(kind, obj, now, options) for obj in objects]
    if headers:
        rows.insert(0, table_headers(kind, options))
    widths = column_widths(rows)
    return [pad_row(row, widths) for row in rows]
