"""`kubecfg describe`: human-readable sections, laid out as kubectl describe does."""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Mapping, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import (
    endpoints_pb2,
    event_pb2,
    meta_pb2,
    namespace_pb2,
    node_pb2,
    pod_pb2,
    replication_controller_pb2,
    service_pb2,
)

from services.common.printing import event_interval, sort_events
from services.common.quantity import (
    QuantityError,
    format_cpu_millis,
    format_memory_bytes,
    parse_cpu_millis,
    parse_memory_bytes,
)

from .printers import (
    NONE,
    age,
    desired_replicas,
    format_labels,
    node_address,
    node_roles,
    timestamp_set,
    to_datetime,
)
from .tabwriter import tabwrite

# `apply` records what it applied here, so re-applying the same file is a no-op.
LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"
# kubectl describe leaves out apply's bookkeeping (the whole manifest as JSON).
HIDDEN_ANNOTATIONS = frozenset({LAST_APPLIED_ANNOTATION})
# Probe defaults the kubelet applies to unset (zero) fields, as Kubernetes does.
PROBE_DEFAULTS = {"timeout_seconds": 1, "period_seconds": 10, "success_threshold": 1, "failure_threshold": 3}


def format_time(ts: Timestamp, tz: dt.tzinfo | None = None) -> str:
    """RFC 1123 with a numeric zone, in local time: "Mon, 02 Jan 2006 15:04:05 +0000"."""
    if not timestamp_set(ts):
        return NONE
    return to_datetime(ts).astimezone(tz).strftime("%a, %d %b %Y %H:%M:%S %z")


class _Writer:
    """Lines at an indentation level with tab-separated cells, aligned at the end."""

    def __init__(self, tz: dt.tzinfo | None = None) -> None:
        self.lines: list[str] = []
        self.tz = tz

    def line(self, level: int, *cells: str) -> None:
        self.lines.append("  " * level + "\t".join(cells))

    def field(self, level: int, label: str, value: object) -> None:
        self.line(level, f"{label}:", str(value))

    def mapping(self, level: int, label: str, values: Mapping[str, str], *, separator: str = "=") -> None:
        """`Labels:  a=b` then one more line per pair, aligned (kubectl's printLabelsMultiline)."""
        values = {key: value for key, value in values.items() if key not in HIDDEN_ANNOTATIONS}
        if not values:
            self.field(level, label, NONE)
            return
        for i, key in enumerate(sorted(values)):
            self.line(level, f"{label}:" if i == 0 else "", f"{key}{separator}{values[key]}")

    def time(self, level: int, label: str, ts: Timestamp) -> None:
        self.field(level, label, format_time(ts, self.tz))

    def text(self) -> str:
        return tabwrite("\n".join(self.lines)) + "\n"


def _metadata(w: _Writer, meta: meta_pb2.ObjectMeta, *, namespaced: bool = True) -> None:
    w.field(0, "Name", meta.name)
    if namespaced:
        w.field(0, "Namespace", meta.namespace)


def _controller(meta: meta_pb2.ObjectMeta) -> str:
    for owner in meta.owner_references:
        if owner.controller:
            return f"{owner.kind}/{owner.name}"
    return ""


def _port(port: pod_pb2.ContainerPort) -> str:
    text = f"{port.container_port}/{port.protocol or 'TCP'}"
    return f"{text} ({port.name})" if port.name else text


def format_probe(probe: pod_pb2.Probe) -> str:
    """`http-get http://:8080/healthz delay=0s timeout=1s period=10s #success=1 #failure=3`."""
    if probe.HasField("http_get"):
        action = probe.http_get
        scheme = (action.scheme or "HTTP").lower()
        what = f"http-get {scheme}://{action.host}:{action.port}{action.path or '/'}"
    elif probe.HasField("tcp_socket"):
        what = f"tcp-socket {probe.tcp_socket.host}:{probe.tcp_socket.port}"
    elif probe.HasField("exec"):
        what = f"exec [{' '.join(probe.exec.command)}]"
    else:
        what = "unknown"
    timing = {name: getattr(probe, name) or default for name, default in PROBE_DEFAULTS.items()}
    return (
        f"{what} delay={probe.initial_delay_seconds}s timeout={timing['timeout_seconds']}s "
        f"period={timing['period_seconds']}s #success={timing['success_threshold']} "
        f"#failure={timing['failure_threshold']}"
    )


def _state(w: _Writer, level: int, label: str, state: pod_pb2.ContainerState) -> None:
    if state.HasField("running"):
        w.field(level, label, "Running")
        w.time(level + 1, "Started", state.running.started_at)
    elif state.HasField("waiting"):
        w.field(level, label, "Waiting")
        if state.waiting.reason:
            w.field(level + 1, "Reason", state.waiting.reason)
        if state.waiting.message:
            w.field(level + 1, "Message", state.waiting.message)
    elif state.HasField("terminated"):
        done = state.terminated
        w.field(level, label, "Terminated")
        if done.reason:
            w.field(level + 1, "Reason", done.reason)
        if done.message:
            w.field(level + 1, "Message", done.message)
        w.field(level + 1, "Exit Code", done.exit_code)
        if done.signal:
            w.field(level + 1, "Signal", done.signal)
        w.time(level + 1, "Started", done.started_at)
        w.time(level + 1, "Finished", done.finished_at)
    else:
        w.field(level, label, "Waiting" if label == "State" else NONE)


def _list(w: _Writer, level: int, label: str, items: Sequence[str]) -> None:
    w.line(level, f"{label}:")
    for item in items:
        w.line(level + 1, item)


def _container(w: _Writer, level: int, container: pod_pb2.Container, status: pod_pb2.ContainerStatus | None) -> None:
    w.line(level, f"{container.name}:")
    inner = level + 1
    if status is not None:
        w.field(inner, "Container ID", status.container_id)
    w.field(inner, "Image", container.image)
    if status is not None:
        w.field(inner, "Image ID", status.image_id)
    if not container.ports:
        w.field(inner, "Port", NONE)
        w.field(inner, "Host Port", NONE)
    else:
        label = "Ports" if len(container.ports) > 1 else "Port"
        w.field(inner, label, ", ".join(_port(p) for p in container.ports))
        host_ports = ", ".join(f"{p.host_port}/{p.protocol or 'TCP'}" for p in container.ports)
        w.field(inner, "Host Ports" if len(container.ports) > 1 else "Host Port", host_ports)
    if container.command:
        _list(w, inner, "Command", container.command)
    if container.args:
        _list(w, inner, "Args", container.args)
    if container.working_dir:
        w.field(inner, "Working Dir", container.working_dir)
    if status is not None:
        _state(w, inner, "State", status.state)
        if status.last_state.ListFields():
            _state(w, inner, "Last State", status.last_state)
        w.field(inner, "Ready", "True" if status.ready else "False")
        w.field(inner, "Restart Count", status.restart_count)
    for label, quantities in (("Limits", container.resources.limits), ("Requests", container.resources.requests)):
        if quantities:
            w.line(inner, f"{label}:")
            for key in sorted(quantities):
                w.field(inner + 1, key, quantities[key])
    if container.HasField("liveness_probe"):
        w.field(inner, "Liveness", format_probe(container.liveness_probe))
    if container.HasField("readiness_probe"):
        w.field(inner, "Readiness", format_probe(container.readiness_probe))
    if container.env:
        w.line(inner, "Environment:")
        for env in container.env:
            w.field(inner + 1, env.name, env.value)
    else:
        w.field(inner, "Environment", NONE)
    if container.volume_mounts:
        w.line(inner, "Mounts:")
        for mount in container.volume_mounts:
            sub_path = f' (path "{mount.sub_path}")' if mount.sub_path else ""
            mode = "ro" if mount.read_only else "rw"
            w.line(inner + 1, f"{mount.mount_path} from {mount.name}{sub_path} ({mode})")
    else:
        w.field(inner, "Mounts", NONE)


def _volumes(w: _Writer, level: int, volumes: Iterable[pod_pb2.Volume]) -> None:
    volumes = list(volumes)
    if not volumes:
        w.field(level, "Volumes", NONE)
        return
    w.line(level, "Volumes:")
    for volume in volumes:
        w.line(level + 1, f"{volume.name}:")
        if volume.HasField("host_path"):
            w.field(level + 2, "Type", "HostPath (bare host directory volume)")
            w.field(level + 2, "Path", volume.host_path.path)
            w.field(level + 2, "HostPathType", volume.host_path.type)
        elif volume.HasField("empty_dir"):
            w.field(level + 2, "Type", "EmptyDir (a temporary directory that shares a pod's lifetime)")
            w.field(level + 2, "Medium", volume.empty_dir.medium)
            w.field(level + 2, "SizeLimit", volume.empty_dir.size_limit or "<unset>")
        else:
            w.field(level + 2, "Type", "EmptyDir (a temporary directory that shares a pod's lifetime)")


def _pod_template(w: _Writer, level: int, labels: Mapping[str, str], spec: pod_pb2.PodSpec) -> None:
    w.mapping(level, "Labels", labels)
    w.line(level, "Containers:")
    for container in spec.containers:
        _container(w, level + 1, container, None)
    _volumes(w, level, spec.volumes)


def describe_pod(pod: pod_pb2.Pod, now: dt.datetime, tz: dt.tzinfo | None = None) -> str:
    w = _Writer(tz)
    meta = pod.metadata
    _metadata(w, meta)
    node = pod.spec.node_name
    w.field(0, "Node", (f"{node}/{pod.status.host_ip}" if pod.status.host_ip else node) if node else NONE)
    if timestamp_set(pod.status.start_time):
        w.time(0, "Start Time", pod.status.start_time)
    w.mapping(0, "Labels", meta.labels)
    w.mapping(0, "Annotations", meta.annotations, separator=": ")
    terminating = timestamp_set(meta.deletion_timestamp)
    if terminating:
        # kubectl: the deletion's grace period beside it (the one the kubelet gives the containers).
        w.field(0, "Status", f"Terminating (lasts {age(meta.deletion_timestamp, now)})")
        w.field(0, "Termination Grace Period", f"{meta.deletion_grace_period_seconds}s")
    else:
        w.field(0, "Status", pod.status.phase or "Pending")
    if pod.status.reason:
        w.field(0, "Reason", pod.status.reason)
    if pod.status.message:
        w.field(0, "Message", pod.status.message)
    w.field(0, "IP", pod.status.pod_ip)
    controller = _controller(meta)
    if controller:
        w.field(0, "Controlled By", controller)
    w.line(0, "Containers:")
    statuses = {status.name: status for status in pod.status.container_statuses}
    for container in pod.spec.containers:
        _container(w, 1, container, statuses.get(container.name, pod_pb2.ContainerStatus()))
    if pod.status.conditions:
        w.line(0, "Conditions:")
        w.line(1, "Type", "Status")
        for condition in pod.status.conditions:
            w.line(1, condition.type, condition.status)
    _volumes(w, 0, pod.spec.volumes)
    restart = pod.spec.restart_policy or "Always"
    w.field(0, "Restart Policy", restart)
    if not terminating:
        spec = pod.spec
        grace = spec.termination_grace_period_seconds if spec.HasField("termination_grace_period_seconds") else 30
        w.field(0, "Termination Grace Period", f"{grace}s")
    w.field(0, "Node-Selectors", format_labels(pod.spec.node_selector))
    return w.text()


def describe_service(service: service_pb2.Service, endpoints: endpoints_pb2.Endpoints | None) -> str:
    w = _Writer()
    _metadata(w, service.metadata)
    w.mapping(0, "Labels", service.metadata.labels)
    w.mapping(0, "Annotations", service.metadata.annotations, separator=": ")
    w.field(0, "Selector", format_labels(service.spec.selector))
    w.field(0, "Type", service.spec.type or "ClusterIP")
    w.field(0, "IP", service.spec.cluster_ip or NONE)
    for port in service.spec.ports:
        protocol = port.protocol or "TCP"
        w.line(0, "Port:", port.name or "<unset>", f"{port.port}/{protocol}")
        w.field(0, "TargetPort", f"{port.target_port or port.port}/{protocol}")
        if port.node_port:
            w.line(0, "NodePort:", port.name or "<unset>", f"{port.node_port}/{protocol}")
        w.field(0, "Endpoints", _port_endpoints(endpoints, port.name))
    w.field(0, "Session Affinity", service.spec.session_affinity or "None")
    return w.text()


def _port_endpoints(endpoints: endpoints_pb2.Endpoints | None, port_name: str) -> str:
    if endpoints is None:
        return NONE
    pairs: list[str] = []
    for subset in endpoints.subsets:
        for port in subset.ports:
            if port.name == port_name:
                pairs.extend(f"{address.ip}:{port.port}" for address in subset.addresses)
    return ",".join(pairs) or NONE


def describe_replication_controller(
    rc: replication_controller_pb2.ReplicationController, pods: Sequence[pod_pb2.Pod]
) -> str:
    w = _Writer()
    _metadata(w, rc.metadata)
    w.field(0, "Selector", format_labels(rc.spec.selector))
    w.mapping(0, "Labels", rc.metadata.labels)
    w.mapping(0, "Annotations", rc.metadata.annotations, separator=": ")
    w.field(0, "Replicas", f"{rc.status.replicas} current / {desired_replicas(rc)} desired")
    phases = {"Running": 0, "Pending": 0, "Succeeded": 0, "Failed": 0}
    for pod in pods:
        phase = pod.status.phase or "Pending"
        if phase in phases:
            phases[phase] += 1
    w.field(
        0,
        "Pods Status",
        f"{phases['Running']} Running / {phases['Pending']} Waiting / "
        f"{phases['Succeeded']} Succeeded / {phases['Failed']} Failed",
    )
    w.line(0, "Pod Template:")
    _pod_template(w, 1, rc.spec.template.metadata.labels, rc.spec.template.spec)
    return w.text()


_RESOURCE_KEYS = [(resource, which) for resource in ("cpu", "memory") for which in ("requests", "limits")]


def _quantity(resource: str, text: str) -> int:
    """cpu in millicores, memory in bytes; 0 for what does not parse (validation is the server's)."""
    try:
        return parse_cpu_millis(text) if resource == "cpu" else parse_memory_bytes(text)
    except QuantityError:
        return 0


def _pod_resources(pod: pod_pb2.Pod) -> dict[tuple[str, str], int]:
    """Sums of the containers' cpu/memory requests and limits."""
    sums = {key: 0 for key in _RESOURCE_KEYS}
    for container in pod.spec.containers:
        for resource, which in _RESOURCE_KEYS:
            quantities = getattr(container.resources, which)
            if resource in quantities:
                sums[(resource, which)] += _quantity(resource, quantities[resource])
    return sums


def _share(resource: str, amount: int, allocatable: Mapping[str, str]) -> str:
    """`750m (37%)`, as kubectl shows a node's allocated resources."""
    text = format_cpu_millis(amount) if resource == "cpu" else format_memory_bytes(amount)
    total = _quantity(resource, allocatable[resource]) if resource in allocatable else 0
    return f"{text} ({amount * 100 // total}%)" if total else text


def describe_node(
    node: node_pb2.Node, pods: Sequence[pod_pb2.Pod], now: dt.datetime, tz: dt.tzinfo | None = None
) -> str:
    w = _Writer(tz)
    _metadata(w, node.metadata, namespaced=False)
    w.field(0, "Roles", node_roles(node))
    w.mapping(0, "Labels", node.metadata.labels)
    w.mapping(0, "Annotations", node.metadata.annotations, separator=": ")
    w.time(0, "CreationTimestamp", node.metadata.creation_timestamp)
    w.field(0, "Unschedulable", "true" if node.spec.unschedulable else "false")
    status = node.status
    if status.conditions:
        w.line(0, "Conditions:")
        w.line(1, "Type", "Status", "LastHeartbeatTime", "LastTransitionTime", "Reason", "Message")
        w.line(1, "----", "------", "-----------------", "------------------", "------", "-------")
        for c in status.conditions:
            w.line(
                1,
                c.type,
                c.status,
                format_time(c.last_heartbeat_time, tz),
                format_time(c.last_transition_time, tz),
                c.reason,
                c.message,
            )
    else:
        w.field(0, "Conditions", NONE)
    if status.addresses:
        w.line(0, "Addresses:")
        for address in status.addresses:
            w.field(1, address.type, address.address)
    kubelet_port = status.daemon_endpoints.kubelet_endpoint.port
    if kubelet_port:
        w.field(0, "Kubelet Endpoint", f"{node_address(node, 'InternalIP') or node.metadata.name}:{kubelet_port}")
    for label, quantities in (("Capacity", status.capacity), ("Allocatable", status.allocatable)):
        if quantities:
            w.line(0, f"{label}:")
            for key in sorted(quantities):
                w.field(1, key, quantities[key])
    info = status.node_info
    if info.ListFields():
        w.line(0, "System Info:")
        w.field(1, "Kernel Version", info.kernel_version)
        w.field(1, "OS Image", info.os_image)
        w.field(1, "Operating System", info.operating_system)
        w.field(1, "Architecture", info.architecture)
        w.field(1, "Container Runtime Version", info.container_runtime_version)
        w.field(1, "Kubelet Version", info.kubelet_version)
    if node.spec.pod_cidr:
        w.field(0, "PodCIDR", node.spec.pod_cidr)
    running = [p for p in pods if (p.status.phase or "Pending") not in ("Succeeded", "Failed")]
    allocatable = status.allocatable or status.capacity
    w.line(0, "Non-terminated Pods:", f"({len(running)} in total)")
    if running:
        w.line(1, "Namespace", "Name", "CPU Requests", "CPU Limits", "Memory Requests", "Memory Limits", "Age")
        w.line(1, "---------", "----", "------------", "----------", "---------------", "-------------", "---")
        for pod in sorted(running, key=lambda p: (p.metadata.namespace, p.metadata.name)):
            usage = _pod_resources(pod)
            w.line(
                1,
                pod.metadata.namespace,
                pod.metadata.name,
                *(
                    _share(resource, usage[(resource, which)], allocatable)
                    for resource in ("cpu", "memory")
                    for which in ("requests", "limits")
                ),
                age(pod.metadata.creation_timestamp, now),
            )
    totals = {key: 0 for key in _RESOURCE_KEYS}
    for pod in running:
        for resource_key, value in _pod_resources(pod).items():
            totals[resource_key] += value
    w.line(0, "Allocated resources:")
    w.line(1, "(Total limits may be over 100 percent, i.e., overcommitted.)")
    w.line(1, "Resource", "Requests", "Limits")
    w.line(1, "--------", "--------", "------")
    for resource in ("cpu", "memory"):
        w.line(
            1,
            resource,
            _share(resource, totals[(resource, "requests")], allocatable),
            _share(resource, totals[(resource, "limits")], allocatable),
        )
    return w.text()


def describe_endpoints(endpoints: endpoints_pb2.Endpoints) -> str:
    w = _Writer()
    _metadata(w, endpoints.metadata)
    w.mapping(0, "Labels", endpoints.metadata.labels)
    w.mapping(0, "Annotations", endpoints.metadata.annotations, separator=": ")
    w.line(0, "Subsets:")
    for subset in endpoints.subsets:
        w.field(1, "Addresses", ",".join(a.ip for a in subset.addresses) or NONE)
        w.field(1, "NotReadyAddresses", ",".join(a.ip for a in subset.not_ready_addresses) or NONE)
        w.line(1, "Ports:")
        w.line(2, "Name", "Port", "Protocol")
        w.line(2, "----", "----", "--------")
        for port in subset.ports:
            w.line(2, port.name or "<unset>", str(port.port), port.protocol or "TCP")
        w.line(0, "")
    return w.text()


def describe_namespace(namespace: namespace_pb2.Namespace) -> str:
    w = _Writer()
    _metadata(w, namespace.metadata, namespaced=False)
    w.mapping(0, "Labels", namespace.metadata.labels)
    w.mapping(0, "Annotations", namespace.metadata.annotations, separator=": ")
    w.field(0, "Status", namespace.status.phase)
    # kubectl's closing lines; this API has neither quotas nor limit ranges.
    w.line(0, "")
    w.line(0, "No resource quota.")
    w.line(0, "")
    w.line(0, "No LimitRange resource.")
    return w.text()


def _go_list(values: Iterable[str]) -> str:
    """Go's %v of a []string: [a b]."""
    return "[" + " ".join(values) + "]"


def _go_quoted(values: Iterable[str]) -> str:
    """Go's %q of a []string: ["a" "b"]."""
    return "[" + " ".join(f'"{value}"' for value in values) + "]"


def _rule_sort_key(group: str, resource: str, names: Sequence[str], url: str, verbs: Sequence[str]) -> str:
    """Kubernetes sorts a role's rules by their String() ("PolicyRule{APIGroups:...}")."""
    parts = []
    if not url:
        parts += [f"APIGroups:{_go_quoted([group])}", f"Resources:{_go_quoted([resource])}"]
    else:
        parts.append(f"NonResourceURLs:{_go_quoted([url])}")
    if names:
        parts.append(f"ResourceNames:{_go_quoted(names)}")
    parts.append(f"Verbs:{_go_quoted(verbs)}")
    return "PolicyRule{" + ", ".join(parts) + "}"


def policy_rule_lines(rules: Iterable[Any]) -> list[tuple[str, str, str, str]]:
    """A role's rules as kubectl describe lists them: broken down to one resource of one
    group each (one verb for a named or non-resource rule), the verbs on a resource merged
    (Kubernetes' BreakdownRule, CompactRules), sorted. Cells: Resources (resource.group/sub),
    Non-Resource URLs, Resource Names, Verbs."""
    merged: dict[tuple[str, str], list[str]] = {}
    atomic: list[tuple[str, str, tuple[str, ...], str, list[str]]] = []
    for rule in rules:
        for group in rule.api_groups:
            for resource in rule.resources:
                for verb in rule.verbs:
                    if rule.resource_names:
                        atomic.extend((group, resource, (name,), "", [verb]) for name in rule.resource_names)
                    else:
                        verbs = merged.setdefault((group, resource), [])
                        if verb not in verbs:
                            verbs.append(verb)
        for url in rule.non_resource_urls:
            atomic.extend(("", "", (), url, [verb]) for verb in rule.verbs)
    entries = [(group, resource, (), "", verbs) for (group, resource), verbs in merged.items()] + atomic
    entries.sort(key=lambda entry: _rule_sort_key(entry[0], entry[1], entry[2], entry[3], entry[4]))
    lines = []
    for group, resource, names, url, verbs in entries:
        combined = ""
        if resource:
            base, slash, sub = resource.partition("/")
            combined = base + (f".{group}" if group else "") + (f"/{sub}" if slash else "")
        lines.append((combined, _go_list([url] if url else []), _go_list(names), _go_list(verbs)))
    return lines


def describe_role(role: Any) -> str:
    """A Role or ClusterRole (kubectl prints both alike, without a namespace)."""
    w = _Writer()
    w.field(0, "Name", role.metadata.name)
    w.mapping(0, "Labels", role.metadata.labels)
    w.mapping(0, "Annotations", role.metadata.annotations, separator=": ")
    w.line(0, "PolicyRule:")
    w.line(1, "Resources", "Non-Resource URLs", "Resource Names", "Verbs")
    w.line(1, "---------", "-----------------", "--------------", "-----")
    for cells in policy_rule_lines(role.rules):
        w.line(1, *cells)
    return w.text()


def describe_role_binding(binding: Any) -> str:
    """A RoleBinding or ClusterRoleBinding."""
    w = _Writer()
    w.field(0, "Name", binding.metadata.name)
    w.mapping(0, "Labels", binding.metadata.labels)
    w.mapping(0, "Annotations", binding.metadata.annotations, separator=": ")
    w.line(0, "Role:")
    w.field(1, "Kind", binding.role_ref.kind)
    w.field(1, "Name", binding.role_ref.name)
    w.line(0, "Subjects:")
    w.line(1, "Kind", "Name", "Namespace")
    w.line(1, "----", "----", "---------")
    for subject in binding.subjects:
        w.line(1, subject.kind, subject.name, subject.namespace)
    return w.text()


def describe_lease(lease: Any) -> str:
    """A Lease, as kubectl's generic describer prints its spec (who holds it, since when)."""
    w = _Writer()
    _metadata(w, lease.metadata)
    w.mapping(0, "Labels", lease.metadata.labels)
    w.mapping(0, "Annotations", lease.metadata.annotations, separator=": ")
    w.field(0, "API Version", lease.api_version)
    w.field(0, "Kind", lease.kind)
    spec = lease.spec
    w.line(0, "Spec:")
    if spec.HasField("acquire_time"):
        w.time(1, "Acquire Time", spec.acquire_time)
    w.field(1, "Holder Identity", spec.holder_identity or NONE)
    if spec.HasField("lease_duration_seconds"):
        w.field(1, "Lease Duration Seconds", spec.lease_duration_seconds)
    if spec.HasField("lease_transitions"):
        w.field(1, "Lease Transitions", spec.lease_transitions)
    if spec.HasField("renew_time"):
        w.time(1, "Renew Time", spec.renew_time)
    return w.text()


def describe_events(events: Iterable[event_pb2.Event], now: dt.datetime) -> str:
    """The `Events:` section kubectl describe ends a pod, controller or node with (DescribeEvents):
    Type, Reason, Age ("2m (x3 over 10m)" for a repeated one), From, Message; oldest first."""
    w = _Writer()
    ordered = sort_events(events)
    if not ordered:
        w.field(0, "Events", NONE)
        return w.text()
    w.line(0, "Events:")
    w.line(1, "Type", "Reason", "Age", "From", "Message")
    w.line(1, "----", "------", "----", "----", "-------")
    for event in ordered:
        source = event.source.component or event.reporting_component
        w.line(1, event.type, event.reason, event_interval(event, now), source, event.message.strip())
    return w.text()


def describe_event(event: event_pb2.Event) -> str:
    """One Event, as kubectl's generic describer prints it (its fields, in alphabetical order)."""
    w = _Writer()
    _metadata(w, event.metadata)
    w.mapping(0, "Labels", event.metadata.labels)
    w.mapping(0, "Annotations", event.metadata.annotations, separator=": ")
    w.field(0, "API Version", event.api_version or "v1")
    w.field(0, "Count", event.count or 1)
    w.time(0, "First Timestamp", event.first_timestamp)
    ref = event.involved_object
    w.line(0, "Involved Object:")
    for label, value in (
        ("API Version", ref.api_version), ("Field Path", ref.field_path), ("Kind", ref.kind), ("Name", ref.name),
        ("Namespace", ref.namespace), ("Resource Version", str(ref.resource_version or "")), ("UID", ref.uid),
    ):
        if value:
            w.field(1, label, value)
    w.field(0, "Kind", event.kind or "Event")
    w.time(0, "Last Timestamp", event.last_timestamp)
    w.field(0, "Message", event.message)
    w.field(0, "Reason", event.reason)
    w.line(0, "Source:")
    w.field(1, "Component", event.source.component)
    if event.source.host:
        w.field(1, "Host", event.source.host)
    w.field(0, "Type", event.type)
    return w.text()
