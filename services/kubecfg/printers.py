"""Tables as `kubectl get` prints them: columns per kind, ages, pod status."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import endpoints_pb2, namespace_pb2, node_pb2, pod_pb2, replication_controller_pb2, service_pb2

from services.common.resources import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
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

from .tabwriter import column_widths, pad_row

NONE = "<none>"
NODE_ROLE_PREFIX = "node-role.kubernetes.io/"
MAX_ENDPOINTS_SHOWN = 3


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def human_duration(seconds: float) -> str:
    """kubectl's duration.HumanDuration: "45s", "5m30s", "3h5m", "2d3h", "3y"."""
    total = int(seconds)
    if total < -1:
        return "<invalid>"
    if total < 0:
        return "0s"
    if total < 120:
        return f"{total}s"
    minutes = total // 60
    if minutes < 10:
        rest = total % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = total // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def timestamp_set(ts: Timestamp) -> bool:
    return ts.seconds != 0 or ts.nanos != 0


def to_datetime(ts: Timestamp) -> dt.datetime:
    return ts.ToDatetime(tzinfo=dt.timezone.utc)


def age(ts: Timestamp, now: dt.datetime) -> str:
    """Time since ts as kubectl's AGE column shows it; <unknown> when unset."""
    if not timestamp_set(ts):
        return "<unknown>"
    return human_duration((now - to_datetime(ts)).total_seconds())


def format_labels(labels: Mapping[str, str]) -> str:
    """kubectl's labels.FormatLabels: sorted k=v pairs, <none> when empty."""
    if not labels:
        return NONE
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels))


# --- pods --------------------------------------------------------------------


@dataclass(frozen=True)
class PodSummary:
    ready: str  # "1/2"
    status: str  # "Running", "CrashLoopBackOff", "Terminating"...
    restarts: str  # "3" or "3 (5m ago)"


def _has_ready_condition(pod: pod_pb2.Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def pod_summary(pod: pod_pb2.Pod, now: dt.datetime) -> PodSummary:
    """READY, STATUS and RESTARTS, computed as kubectl's printPod does."""
    reason = pod.status.reason or pod.status.phase or "Pending"
    restarts = 0
    ready = 0
    last_restart: dt.datetime | None = None
    has_running = False
    for status in reversed(pod.status.container_statuses):
        restarts += status.restart_count
        finished = status.last_state.terminated.finished_at
        if status.last_state.HasField("terminated") and timestamp_set(finished):
            when = to_datetime(finished)
            if last_restart is None or when > last_restart:
                last_restart = when
        state = status.state
        if state.HasField("waiting") and state.waiting.reason:
            reason = state.waiting.reason
        elif state.HasField("terminated") and state.terminated.reason:
            reason = state.terminated.reason
        elif state.HasField("terminated"):
            if state.terminated.signal:
                reason = f"Signal:{state.terminated.signal}"
            else:
                reason = f"ExitCode:{state.terminated.exit_code}"
        elif status.ready and state.HasField("running"):
            has_running = True
            ready += 1
    if reason == "Completed" and has_running:
        reason = "Running" if _has_ready_condition(pod) else "NotReady"
    if timestamp_set(pod.metadata.deletion_timestamp):
        reason = "Unknown" if pod.status.reason == "NodeLost" else "Terminating"
    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        restarts_text += f" ({human_duration((now - last_restart).total_seconds())} ago)"
    return PodSummary(ready=f"{ready}/{len(pod.spec.containers)}", status=reason, restarts=restarts_text)


# --- per-kind columns --------------------------------------------------------


@dataclass(frozen=True)
class TableSpec:
    headers: tuple[str, ...]
    wide_headers: tuple[str, ...]
    # row(obj, now) -> (cells, wide cells); cells exclude NAME and NAMESPACE.
    row: Callable[[Any, dt.datetime], tuple[list[str], list[str]]]


def _pod_row(pod: pod_pb2.Pod, now: dt.datetime) -> tuple[list[str], list[str]]:
    summary = pod_summary(pod, now)
    return (
        [summary.ready, summary.status, summary.restarts, age(pod.metadata.creation_timestamp, now)],
        [pod.status.pod_ip or NONE, pod.spec.node_name or NONE],
    )


def service_ports(service: service_pb2.Service) -> str:
    ports = []
    for port in service.spec.ports:
        protocol = port.protocol or "TCP"
        if port.node_port:
            ports.append(f"{port.port}:{port.node_port}/{protocol}")
        else:
            ports.append(f"{port.port}/{protocol}")
    return ",".join(ports) or NONE


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


def desired_replicas(rc: replication_controller_pb2.ReplicationController) -> int:
    """spec.replicas, which defaults to 1 when unset."""
    return rc.spec.replicas if rc.spec.HasField("replicas") else 1


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


def node_status(node: node_pb2.Node) -> str:
    """Ready / NotReady / Unknown, plus SchedulingDisabled when cordoned."""
    ready = next((c for c in node.status.conditions if c.type == "Ready"), None)
    if ready is None:
        status = "Unknown"
    elif ready.status == "True":
        status = "Ready"
    elif ready.status == "False":
        status = "NotReady"
    else:
        status = "Unknown"
    if node.spec.unschedulable:
        status += ",SchedulingDisabled"
    return status


def node_roles(node: node_pb2.Node) -> str:
    roles = sorted(key[len(NODE_ROLE_PREFIX) :] for key in node.metadata.labels if key.startswith(NODE_ROLE_PREFIX))
    return ",".join(role for role in roles if role) or NONE


def node_address(node: node_pb2.Node, address_type: str) -> str:
    return next((a.address for a in node.status.addresses if a.type == address_type), "")


def _node_row(node: node_pb2.Node, now: dt.datetime) -> tuple[list[str], list[str]]:
    info = node.status.node_info
    return (
        [node_status(node), node_roles(node), age(node.metadata.creation_timestamp, now), info.kubelet_version or NONE],
        [
            node_address(node, "InternalIP") or NONE,
            node_address(node, "ExternalIP") or NONE,
            info.operating_system or NONE,
            info.kernel_version or NONE,
            info.container_runtime_version or NONE,
        ],
    )


def format_endpoints(endpoints: endpoints_pb2.Endpoints, limit: int = MAX_ENDPOINTS_SHOWN) -> str:
    """Ready ip:port pairs, the first few and "+ N more..." as kubectl shows them."""
    pairs = []
    for subset in endpoints.subsets:
        ports: list[int | None] = [p.port for p in subset.ports] or [None]
        for port in ports:
            for address in subset.addresses:
                pairs.append(address.ip if port is None else f"{address.ip}:{port}")
    if not pairs:
        return NONE
    if len(pairs) > limit:
        return ",".join(pairs[:limit]) + f" + {len(pairs) - limit} more..."
    return ",".join(pairs)


def _endpoints_row(endpoints: endpoints_pb2.Endpoints, now: dt.datetime) -> tuple[list[str], list[str]]:
    return [format_endpoints(endpoints), age(endpoints.metadata.creation_timestamp, now)], []


def _namespace_row(ns: namespace_pb2.Namespace, now: dt.datetime) -> tuple[list[str], list[str]]:
    return [ns.status.phase, age(ns.metadata.creation_timestamp, now)], []


def created_at(ts: Timestamp) -> str:
    """RFC 3339 in UTC, as the server's default table prints "Created At" (roles have no
    printer of their own in Kubernetes, so kubectl shows NAME and CREATED AT)."""
    if not timestamp_set(ts):
        return "<unknown>"
    return to_datetime(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def _role_row(role: Any, now: dt.datetime) -> tuple[list[str], list[str]]:
    return [created_at(role.metadata.creation_timestamp)], []


def binding_subjects(subjects: Any) -> tuple[list[str], list[str], list[str]]:
    """Users, groups and service accounts ("namespace/name"), as Kubernetes' SubjectsStrings."""
    users, groups, service_accounts = [], [], []
    for subject in subjects:
        if subject.kind == "ServiceAccount":
            service_accounts.append(f"{subject.namespace}/{subject.name}")
        elif subject.kind == "User":
            users.append(subject.name)
        elif subject.kind == "Group":
            groups.append(subject.name)
    return users, groups, service_accounts


def _binding_row(binding: Any, now: dt.datetime) -> tuple[list[str], list[str]]:
    users, groups, service_accounts = binding_subjects(binding.subjects)
    return (
        [f"{binding.role_ref.kind}/{binding.role_ref.name}", age(binding.metadata.creation_timestamp, now)],
        [", ".join(users), ", ".join(groups), ", ".join(service_accounts)],
    )


def _lease_row(lease: Any, now: dt.datetime) -> tuple[list[str], list[str]]:
    # kubectl's lease columns: who holds it ("" once released), and its age.
    return [lease.spec.holder_identity, age(lease.metadata.creation_timestamp, now)], []


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
    headers = ["NAME", *spec.headers]
    if options.wide:
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
    cells, wide_cells = TABLES[kind.name].row(obj, now)
    name = qualified_name(kind, obj.metadata.name) if options.show_kind else obj.metadata.name
    row = [name, *cells]
    if options.wide:
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
