"""kubecfg's tables and describe output, from proto objects alone."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import endpoints_pb2, meta_pb2, node_pb2, pod_pb2, replication_controller_pb2, service_pb2

from services.common.resources import ENDPOINTS, NODES, PODS, REPLICATION_CONTROLLERS, SERVICES
from services.kubecfg.describe import (
    describe_endpoints,
    describe_node,
    describe_pod,
    describe_replication_controller,
    describe_service,
    format_probe,
)
from services.kubecfg.printers import (
    TableOptions,
    format_endpoints,
    format_objects,
    human_duration,
    node_status,
    pod_summary,
)
from services.kubecfg.tabwriter import tabwrite

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def ago(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(NOW - dt.timedelta(seconds=seconds))
    return ts


def meta(name: str, namespace: str = "default", age_seconds: float = 300, **labels: str) -> meta_pb2.ObjectMeta:
    return meta_pb2.ObjectMeta(name=name, namespace=namespace, creation_timestamp=ago(age_seconds), labels=labels)


def running_pod(name: str = "web-1", *, restarts: int = 0, ready: bool = True) -> pod_pb2.Pod:
    pod = pod_pb2.Pod(metadata=meta(name, app="web"))
    pod.spec.node_name = "node-1"
    pod.spec.containers.add(name="web", image="busybox")
    pod.status.phase = "Running"
    pod.status.pod_ip = "10.1.0.7"
    status = pod.status.container_statuses.add(name="web", ready=ready, restart_count=restarts)
    status.state.running.started_at.CopyFrom(ago(60))
    return pod


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (45, "45s"), (119, "119s"), (120, "2m"), (330, "5m30s"),
        (600, "10m"), (179 * 60, "179m"), (3 * 3600, "3h"), (3 * 3600 + 5 * 60, "3h5m"), (30 * 3600, "30h"),
        (2 * 86400 + 3 * 3600, "2d3h"), (30 * 86400, "30d"), (3 * 365 * 86400 + 86400, "3y1d"),
        (10 * 365 * 86400, "10y"),
    ],
)
def test_human_duration_matches_kubectl(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_pod_table_and_wide_columns() -> None:
    pending = pod_pb2.Pod(metadata=meta("job-x", age_seconds=45))
    pending.spec.containers.add(name="a")
    pending.spec.containers.add(name="b")
    lines = format_objects(PODS, [running_pod(), pending], NOW, TableOptions())
    assert lines == [
        "NAME    READY   STATUS    RESTARTS   AGE",
        "web-1   1/1     Running   0          5m",
        "job-x   0/2     Pending   0          45s",
    ]
    wide = format_objects(PODS, [running_pod(), pending], NOW, TableOptions(wide=True))
    assert wide[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert wide[1].split()[-2:] == ["10.1.0.7", "node-1"]
    assert wide[2].split()[-2:] == ["<none>", "<none>"]


def test_all_namespaces_kind_prefix_and_labels() -> None:
    pod = running_pod()
    pod.metadata.namespace = "shop"
    lines = format_objects(PODS, [pod], NOW, TableOptions(all_namespaces=True, show_kind=True, show_labels=True))
    assert lines[0].split() == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "LABELS"]
    assert lines[1].split() == ["shop", "pod/web-1", "1/1", "Running", "0", "5m", "app=web"]
    # Nodes are cluster-scoped: no NAMESPACE column even with -A.
    node = node_pb2.Node(metadata=meta("n1", namespace=""))
    assert format_objects(NODES, [node], NOW, TableOptions(all_namespaces=True))[0].startswith("NAME ")
    assert format_objects(PODS, [pod], NOW, TableOptions(), headers=False) == ["web-1   1/1   Running   0     5m"]


def test_pod_status_as_kubectl_computes_it() -> None:
    crashing = running_pod(restarts=4, ready=False)
    status = crashing.status.container_statuses[0]
    status.state.Clear()
    status.state.waiting.reason = "CrashLoopBackOff"
    status.last_state.terminated.exit_code = 1
    status.last_state.terminated.finished_at.CopyFrom(ago(90))
    summary = pod_summary(crashing, NOW)
    assert (summary.ready, summary.status, summary.restarts) == ("0/1", "CrashLoopBackOff", "4 (90s ago)")

    done = running_pod()
    done.status.phase = "Succeeded"
    done.status.container_statuses[0].state.Clear()
    done.status.container_statuses[0].state.terminated.reason = "Completed"
    assert pod_summary(done, NOW).status == "Completed"

    killed = running_pod()
    killed.status.container_statuses[0].state.Clear()
    killed.status.container_statuses[0].state.terminated.signal = 9
    assert pod_summary(killed, NOW).status == "Signal:9"

    leaving = running_pod()
    leaving.metadata.deletion_timestamp.CopyFrom(ago(1))
    assert pod_summary(leaving, NOW).status == "Terminating"

    assert pod_summary(pod_pb2.Pod(), NOW).status == "Pending"  # no status yet


def test_service_rc_node_and_endpoints_tables() -> None:
    service = service_pb2.Service(metadata=meta("frontend"))
    service.spec.selector.update({"tier": "frontend", "stack": "prod"})
    service.spec.ports.add(port=80, protocol="TCP", target_port="http")
    service.spec.ports.add(port=53, protocol="UDP", node_port=30053)
    assert format_objects(SERVICES, [service], NOW, TableOptions()) == [
        "NAME       TYPE        CLUSTER-IP   PORT(S)               SELECTOR                   AGE",
        "frontend   ClusterIP   <none>       80/TCP,53:30053/UDP   stack=prod,tier=frontend   5m",
    ]

    rc = replication_controller_pb2.ReplicationController(metadata=meta("frontend", age_seconds=7200))
    rc.spec.selector["tier"] = "frontend"
    rc.spec.template.spec.containers.add(name="php", image="php:8")
    rc.status.replicas, rc.status.ready_replicas = 2, 1
    assert format_objects(REPLICATION_CONTROLLERS, [rc], NOW, TableOptions()) == [
        "NAME       DESIRED   CURRENT   READY   AGE",
        "frontend   1         2         1       120m",  # unset replicas means 1
    ]
    rc.spec.replicas = 0
    wide = format_objects(REPLICATION_CONTROLLERS, [rc], NOW, TableOptions(wide=True))
    assert wide[1].split() == ["frontend", "0", "2", "1", "120m", "php", "php:8", "tier=frontend"]

    node = node_pb2.Node(metadata=meta("node-1", namespace="", **{"node-role.kubernetes.io/worker": ""}))
    node.status.conditions.add(type="Ready", status="True")
    node.status.node_info.kubelet_version = "v0.1.0"
    node.spec.unschedulable = True
    assert format_objects(NODES, [node], NOW, TableOptions()) == [
        "NAME     STATUS                     ROLES    AGE   VERSION",
        "node-1   Ready,SchedulingDisabled   worker   5m    v0.1.0",
    ]

    endpoints = endpoints_pb2.Endpoints(metadata=meta("frontend"))
    subset = endpoints.subsets.add()
    for i in range(5):
        subset.addresses.add(ip=f"10.1.0.{i}")
    subset.not_ready_addresses.add(ip="10.1.0.99")
    subset.ports.add(port=8080)
    assert format_endpoints(endpoints) == "10.1.0.0:8080,10.1.0.1:8080,10.1.0.2:8080 + 2 more..."
    table = format_objects(ENDPOINTS, [endpoints_pb2.Endpoints(metadata=meta("empty"))], NOW, TableOptions())
    assert table[1].split() == ["empty", "<none>", "5m"]


def test_node_status_without_heartbeat_is_unknown() -> None:
    node = node_pb2.Node()
    assert node_status(node) == "Unknown"
    node.status.conditions.add(type="Ready", status="False")
    assert node_status(node) == "NotReady"


def test_tabwriter_aligns_blocks_like_go() -> None:
    text = "Name:\tweb\nNamespace:\tdefault\nContainers:\n  web:\n    Image:\tbusybox\n    Restart Count:\t0"
    assert tabwrite(text).split("\n") == [
        "Name:       web",
        "Namespace:  default",
        "Containers:",
        "  web:",
        "    Image:          busybox",
        "    Restart Count:  0",
    ]


def test_describe_pod_sections() -> None:
    pod = running_pod(restarts=1)
    pod.metadata.annotations["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    pod.metadata.annotations["team"] = "a"
    pod.metadata.owner_references.add(kind="ReplicationController", name="web", controller=True)
    pod.status.host_ip = "192.168.1.5"
    container = pod.spec.containers[0]
    container.ports.add(container_port=8080, name="http")
    container.env.add(name="MODE", value="prod")
    container.volume_mounts.add(name="data", mount_path="/data", read_only=True)
    container.liveness_probe.http_get.path = "/healthz"
    container.liveness_probe.http_get.port = "http"
    container.resources.limits["cpu"] = "500m"
    pod.spec.volumes.add(name="data").empty_dir.SetInParent()
    pod.status.container_statuses[0].last_state.terminated.exit_code = 137
    pod.status.container_statuses[0].last_state.terminated.reason = "Error"
    pod.status.conditions.add(type="Ready", status="True")
    text = describe_pod(pod, NOW, tz=dt.timezone.utc)
    lines = text.splitlines()
    assert lines[0] == "Name:           web-1"
    assert "Node:           node-1/192.168.1.5" in lines
    assert "Annotations:    team: a" in lines  # apply's bookkeeping is not shown
    assert "Controlled By:  ReplicationController/web" in lines
    for expected in (
        "    Port:           8080/TCP (http)",
        "    State:          Running",
        "      Started:      Wed, 01 May 2024 11:59:00 +0000",
        "    Last State:     Terminated",
        "      Reason:       Error",
        "      Exit Code:    137",
        "    Restart Count:  1",
        "      MODE:  prod",
        "      /data from data (ro)",
        "  Type   Status",
        "  Ready  True",
    ):
        assert expected in lines, expected
    assert "EmptyDir" in text
    assert [line.split() for line in lines if line.strip().startswith("cpu:")] == [["cpu:", "500m"]]
    liveness = "Liveness: http-get http://:http/healthz delay=0s timeout=1s period=10s #success=1 #failure=3"
    assert [" ".join(line.split()) for line in lines if "Liveness:" in line] == [liveness]
    assert [" ".join(line.split()) for line in lines if "Grace Period" in line] == ["Termination Grace Period: 30s"]


def test_describe_a_terminating_pod_shows_the_deletions_grace() -> None:
    pod = running_pod()
    pod.spec.termination_grace_period_seconds = 30
    pod.metadata.deletion_timestamp.CopyFrom(ago(4))
    pod.metadata.deletion_grace_period_seconds = 5
    lines = [" ".join(line.split()) for line in describe_pod(pod, NOW, tz=dt.timezone.utc).splitlines()]
    assert "Status: Terminating (lasts 4s)" in lines
    assert [line for line in lines if "Grace Period" in line] == ["Termination Grace Period: 5s"]


def test_format_probe_kinds() -> None:
    assert format_probe(pod_pb2.Probe(tcp_socket=pod_pb2.TCPSocketAction(port="80"), period_seconds=3)) == (
        "tcp-socket :80 delay=0s timeout=1s period=3s #success=1 #failure=3"
    )
    probe = pod_pb2.Probe(exec=pod_pb2.ExecAction(command=["cat", "/ok"]), failure_threshold=1)
    assert format_probe(probe).startswith("exec [cat /ok] delay=0s") and format_probe(probe).endswith("#failure=1")


def test_describe_service_rc_node_endpoints() -> None:
    service = service_pb2.Service(metadata=meta("web"))
    service.spec.selector["app"] = "web"
    service.spec.ports.add(name="http", port=80, target_port="8080", protocol="TCP")
    endpoints = endpoints_pb2.Endpoints(metadata=meta("web"))
    subset = endpoints.subsets.add()
    subset.addresses.add(ip="10.1.0.7")
    subset.ports.add(name="http", port=8080)
    text = describe_service(service, endpoints)
    assert "Port:              http  80/TCP" in text.splitlines()
    assert "Endpoints:         10.1.0.7:8080" in text.splitlines()
    assert "Ports:" in describe_endpoints(endpoints) and "10.1.0.7" in describe_endpoints(endpoints)

    rc = replication_controller_pb2.ReplicationController(metadata=meta("web"))
    rc.spec.replicas = 3
    rc.spec.selector["app"] = "web"
    rc.spec.template.metadata.labels["app"] = "web"
    rc.spec.template.spec.containers.add(name="web", image="busybox")
    rc.status.replicas = 2
    pending = pod_pb2.Pod(metadata=meta("web-2"))
    text = describe_replication_controller(rc, [running_pod(), pending])
    assert "Replicas:     2 current / 3 desired" in text
    assert "Pods Status:  1 Running / 1 Waiting / 0 Succeeded / 0 Failed" in text

    node = node_pb2.Node(metadata=meta("node-1", namespace=""))
    node.status.allocatable.update({"cpu": "2", "memory": "1Gi"})
    node.status.addresses.add(type="InternalIP", address="10.0.0.5")
    node.status.daemon_endpoints.kubelet_endpoint.port = 10250
    pod = running_pod()
    pod.spec.containers[0].resources.requests.update({"cpu": "500m", "memory": "256Mi"})
    text = describe_node(node, [pod], NOW, tz=dt.timezone.utc)
    assert "Kubelet Endpoint:" in text and "10.0.0.5:10250" in text
    assert "(1 in total)" in text
    assert any(line.split()[:3] == ["cpu", "500m", "(25%)"] for line in text.splitlines())
    assert any(line.split()[:3] == ["memory", "256Mi", "(25%)"] for line in text.splitlines())
