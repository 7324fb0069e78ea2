"""What `kubectl get` shows of our kinds, for every component that prints objects: ages as
kubectl's HumanDuration, pod READY/STATUS/RESTARTS as kubectl's printPod, service ports, node
status and roles, endpoints, role-binding subjects, events. kubecfg's tables (services/kubecfg/printers.py)
and the REST API's server-side Tables (services/apiserver/rest/table.py) are built from these."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import endpoints_pb2, event_pb2, node_pb2, pod_pb2, replication_controller_pb2, service_pb2

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


# --- other kinds ---------------------------------------------------------------


def service_ports(service: service_pb2.Service) -> str:
    ports = []
    for port in service.spec.ports:
        protocol = port.protocol or "TCP"
        if port.node_port:
            ports.append(f"{port.port}:{port.node_port}/{protocol}")
        else:
            ports.append(f"{port.port}/{protocol}")
    return ",".join(ports) or NONE


def desired_replicas(rc: replication_controller_pb2.ReplicationController) -> int:
    """spec.replicas, which defaults to 1 when unset."""
    return rc.spec.replicas if rc.spec.HasField("replicas") else 1


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


def created_at(ts: Timestamp) -> str:
    """RFC 3339 in UTC, as the server's default table prints "Created At" (roles have no
    printer of their own in Kubernetes, so kubectl shows NAME and CREATED AT)."""
    if not timestamp_set(ts):
        return "<unknown>"
    return to_datetime(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


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


# --- events --------------------------------------------------------------------


def event_first_seen(event: event_pb2.Event, now: dt.datetime) -> str:
    """FIRST SEEN: since firstTimestamp (kubectl's printEvent)."""
    return age(event.first_timestamp, now)


def event_last_seen(event: event_pb2.Event, now: dt.datetime) -> str:
    """LAST SEEN: since lastTimestamp, else since firstTimestamp."""
    if not timestamp_set(event.last_timestamp):
        return event_first_seen(event, now)
    return age(event.last_timestamp, now)


def event_count(event: event_pb2.Event) -> int:
    """COUNT: a singleton event may leave it unset (1)."""
    return event.count or 1


def event_object(event: event_pb2.Event) -> str:
    """OBJECT: "pod/web-1", the kind in lower case."""
    ref = event.involved_object
    return f"{ref.kind.lower()}/{ref.name}" if ref.name else ref.kind.lower()


def event_source(event: event_pb2.Event) -> str:
    """SOURCE: "kubelet, node-1" (component, host), <unknown> without a component."""
    component = event.source.component or event.reporting_component
    host = event.source.host or event.reporting_instance
    if not component:
        return "<unknown>"
    return f"{component}, {host}" if host else component


def event_interval(event: event_pb2.Event, now: dt.datetime) -> str:
    """describe's Age of an event: "5m" or, repeated, "2m (x3 over 10m)" (kubectl's DescribeEvents)."""
    first = event_first_seen(event, now)
    if event.count > 1:
        return f"{age(event.last_timestamp, now)} (x{event.count} over {first})"
    return first


def sort_events(events: Any) -> list[event_pb2.Event]:
    """Oldest last-seen first, as kubectl describe sorts them (SortableEvents)."""
    def last(event: event_pb2.Event) -> tuple[int, int]:
        ts = event.last_timestamp if timestamp_set(event.last_timestamp) else event.first_timestamp
        return ts.seconds, ts.nanos
    return sorted(events, key=last)
