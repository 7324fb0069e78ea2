"""The real `kubecfg` command against a real API server (scheduler and controllers off)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from kybernetes.v1 import kubelet_pb2, kubelet_pb2_grpc
from services.common.transport import ServingCertificate
from tools.processes import REPO, dev_pki, free_port

# A generous bound for a command to finish; not a speed assertion.
COMMAND_TIMEOUT = 60


def kubecfg_argv() -> list[str]:
    """The installed console script when there is one, else the module."""
    script = Path(sys.executable).with_name("kubecfg")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.kubecfg.main"]


@dataclass
class Result:
    code: int
    out: str
    err: str


class Kubecfg:
    def __init__(self, server: str, namespace: str) -> None:
        self.server = server
        self.namespace = namespace

    def argv(self, *args: str) -> list[str]:
        return [*kubecfg_argv(), "--server", self.server, "-n", self.namespace, *args]

    def __call__(self, *args: str, stdin: str | None = None) -> Result:
        done = subprocess.run(
            self.argv(*args), input=stdin, capture_output=True, text=True, cwd=REPO, timeout=COMMAND_TIMEOUT,
            env={**os.environ, "KYBERNETES_SERVER": ""},
        )
        return Result(done.returncode, done.stdout, done.stderr)

    async def run_async(self, *args: str) -> Result:
        """For tests that serve something in this process while kubecfg runs."""
        process = await asyncio.create_subprocess_exec(
            *self.argv(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO
        )
        out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT)
        return Result(process.returncode or 0, out.decode(), err.decode())


@pytest.fixture
def kubecfg(apiserver, namespace) -> Kubecfg:
    return Kubecfg(apiserver.address, namespace)


def app_manifest(node: str) -> str:
    return f"""\
apiVersion: v1
kind: ReplicationController
metadata:
  name: frontend
  labels: {{tier: frontend}}
spec:
  replicas: 2
  selector: {{tier: frontend, stack: prod}}
  template:
    metadata:
      labels: {{tier: frontend, stack: prod, canary: "no"}}
    spec:
      containers:
      - name: web
        image: kybernetes/busybox:latest
        command: [httpd, -f, -p, "8080"]
        ports: [{{containerPort: 8080, name: http}}]
---
apiVersion: v1
kind: Service
metadata:
  name: frontend
spec:
  selector: {{tier: frontend, stack: prod}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  labels: {{tier: frontend, stack: prod, version: 2}}
spec:
  containers:
  - name: web
    image: kybernetes/busybox:latest
    ports: [{{containerPort: 8080}}]
    resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: db-1
  labels: {{tier: backend, stack: prod}}
spec:
  nodeName: {node}
  containers:
  - {{name: db, image: kybernetes/busybox:latest}}
---
apiVersion: v1
kind: Node
metadata:
  name: {node}
status:
  addresses: [{{type: InternalIP, address: 127.0.0.1}}]
  conditions: [{{type: Ready, status: "True"}}]
"""


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_apply_get_describe_scale_delete(kubecfg: Kubecfg, tmp_path: Path, unique_name: str, namespace: str) -> None:
    node = f"node-{unique_name}"
    manifest = tmp_path / "app.yaml"
    manifest.write_text(app_manifest(node))

    applied = kubecfg("apply", "-f", str(manifest))
    assert applied.code == 0, applied.err
    assert applied.out.splitlines() == [
        "replicationcontroller/frontend created",
        "service/frontend created",
        "pod/web-1 created",
        "pod/db-1 created",
        f"node/{node} created",
    ]
    again = kubecfg("apply", "-f", str(tmp_path))  # a directory this time
    assert again.code == 0 and all(line.endswith(" unchanged") for line in again.out.splitlines()), again

    pods = kubecfg("get", "pods")
    assert pods.code == 0, pods.err
    assert table(pods.out) == [
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        ["db-1", "0/1", "Pending", "0", table(pods.out)[1][-1]],
        ["web-1", "0/1", "Pending", "0", table(pods.out)[2][-1]],
    ]
    wide = kubecfg("get", "po", "-o", "wide")
    assert table(wide.out)[1][-2:] == ["<none>", node]

    selected = kubecfg("get", "pods", "-l", "tier in (frontend, web), stack in (prod)", "-o", "name")
    assert selected.out.splitlines() == ["pod/web-1"]
    excluded = kubecfg("get", "pods", "-l", "tier notin (frontend)", "-o", "name")
    assert excluded.out.splitlines() == ["pod/db-1"]

    as_yaml = yaml.safe_load(kubecfg("get", "pod", "web-1", "-o", "yaml").out)
    metadata = as_yaml["metadata"]
    assert (as_yaml["kind"], metadata["name"], metadata["namespace"]) == ("Pod", "web-1", namespace)
    assert as_yaml["metadata"]["labels"]["version"] == "2"
    assert as_yaml["spec"]["restartPolicy"] == "Always"  # defaulted by the server
    listing = json.loads(kubecfg("get", "svc,rc", "-o", "json").out)
    assert listing["kind"] == "List" and [i["kind"] for i in listing["items"]] == ["Service", "ReplicationController"]

    services = kubecfg("get", "services")
    row = table(services.out)[1]
    assert row[:5] == ["frontend", "ClusterIP", row[2], "80/TCP", "stack=prod,tier=frontend"]
    assert ipaddress.ip_address(row[2]) in ipaddress.ip_network("10.96.0.0/12")  # allocated by the server

    described = kubecfg("describe", "pod", "web-1")
    assert described.code == 0, described.err
    lines = described.out.splitlines()
    assert lines[0].split() == ["Name:", "web-1"] and lines[1].split() == ["Namespace:", namespace]
    assert any(line.split() == ["Image:", "kybernetes/busybox:latest"] for line in lines)
    node_text = kubecfg("describe", "node", node).out
    assert "(1 in total)" in node_text and "db-1" in node_text

    scaled = kubecfg("scale", "rc", "frontend", "--replicas", "5")
    assert (scaled.code, scaled.out) == (0, "replicationcontroller/frontend scaled\n"), scaled.err
    assert table(kubecfg("get", "rc").out)[1][:3] == ["frontend", "5", "0"]
    assert "Replicas:     0 current / 5 desired" in kubecfg("describe", "rc", "frontend").out

    # db-1 is bound to a node no kubelet runs: its graceful deletion only marks it (Terminating),
    # and only --force removes it (with kubectl's warning), as with kubectl.
    graceful = kubecfg("delete", "pods", "-l", "tier=backend", "--wait=false")
    assert (graceful.code, graceful.out) == (0, 'pod "db-1" deleted\n'), graceful.err
    assert table(kubecfg("get", "pods").out)[1][:3] == ["db-1", "0/1", "Terminating"]
    by_label = kubecfg("delete", "pods", "-l", "tier=backend", "--force")
    assert (by_label.code, by_label.out) == (0, 'pod "db-1" force deleted\n'), by_label.err
    assert by_label.err.startswith("Warning: Immediate deletion does not wait for confirmation"), by_label.err
    by_file = kubecfg("delete", "-f", str(manifest), "--ignore-not-found")
    assert by_file.code == 0, by_file.err
    assert by_file.out.splitlines() == [
        'replicationcontroller "frontend" deleted',
        'service "frontend" deleted',
        'pod "web-1" deleted',
        f'node "{node}" deleted',
    ]
    empty = kubecfg("get", "all")
    assert (empty.code, empty.out, empty.err) == (0, "", f"No resources found in {namespace} namespace.\n")


def test_errors_are_one_line_with_a_non_zero_exit(kubecfg: Kubecfg, tmp_path: Path) -> None:
    missing = kubecfg("get", "pod", "missing")
    assert (missing.code, missing.out) == (1, "")
    assert missing.err == 'Error from server (NotFound): pods "missing" not found\n'
    assert kubecfg("delete", "rc", "missing").err == (
        'Error from server (NotFound): replicationcontrollers "missing" not found\n'
    )
    assert kubecfg("delete", "rc", "missing", "--ignore-not-found").code == 0

    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: typo}\n"
        "spec:\n  containers:\n  - name: a\n    image: kybernetes/busybox:latest\n    imagePullSecretz: x\n"
    )
    rejected = kubecfg("apply", "-f", str(typo))
    assert rejected.code == 1
    assert rejected.err.startswith(f"error: {typo}[0]: spec.containers[0].imagePullSecretz: unknown field")
    assert len(rejected.err.splitlines()) == 1
    assert kubecfg("get", "pod", "typo").code == 1  # nothing was created

    no_image = "apiVersion: v1\nkind: Pod\nmetadata: {name: noimage}\nspec:\n  containers: [{name: a}]\n"
    invalid = kubecfg("create", "-f", "-", stdin=no_image)
    assert invalid.code == 1
    assert invalid.err.startswith(
        'Error from server (Invalid): error when creating "<stdin>": Pod "noimage" is invalid:'
    )
    assert "spec.containers[0].image" in invalid.err

    duplicate = "apiVersion: v1\nkind: Pod\nmetadata: {name: twice}\nspec:\n  containers: [{name: a, image: x}]\n"
    assert kubecfg("create", "-f", "-", stdin=duplicate).code == 0
    again = kubecfg("create", "-f", "-", stdin=duplicate)
    assert again.code == 1
    assert again.err == (
        'Error from server (AlreadyExists): error when creating "<stdin>": pods "twice" already exists\n'
    )

    bad_selector = kubecfg("get", "pods", "-l", "tier in (")
    assert bad_selector.code == 1 and bad_selector.err.startswith("Error from server (Invalid):")


def test_unreachable_server() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = Kubecfg(address, "default")("get", "pods")
    assert result.code == 1
    assert result.err == f"error: cannot reach the API server at {address}: connection refused\n"


async def test_watch_prints_changes(kubecfg: Kubecfg) -> None:
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: a, image: x}}]\n"
    assert (await asyncio.to_thread(kubecfg, "create", "-f", "-", stdin=pod.format(name="first"))).code == 0
    watcher = await asyncio.create_subprocess_exec(
        *kubecfg.argv("get", "pods", "-w", "--output-watch-events"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )
    try:
        async def next_row() -> list[str]:
            line = await asyncio.wait_for(watcher.stdout.readline(), COMMAND_TIMEOUT)
            assert line, (await watcher.stderr.read()).decode()
            return line.decode().split()

        assert (await next_row())[:3] == ["EVENT", "NAME", "READY"]
        assert (await next_row())[:3] == ["ADDED", "first", "0/1"]
        assert (await asyncio.to_thread(kubecfg, "create", "-f", "-", stdin=pod.format(name="second"))).code == 0
        assert (await next_row())[:2] == ["ADDED", "second"]
        assert (await asyncio.to_thread(kubecfg, "delete", "pod", "first")).code == 0
        assert (await next_row())[:2] == ["DELETED", "first"]
    finally:
        watcher.terminate()
        await watcher.wait()


class FakeKubelet(kubelet_pb2_grpc.KubeletServicer):
    """Serves Logs as a node's kubelet would, recording what it was asked."""

    def __init__(self) -> None:
        self.requests: list[kubelet_pb2.PodLogsRequest] = []

    async def Logs(self, request, context):
        self.requests.append(request)
        for i in range(3):
            yield kubelet_pb2.LogChunk(data=f"{request.container} line {i}\n".encode())


async def test_logs_are_read_from_the_pods_kubelet(
    kubecfg: Kubecfg, unique_name: str, namespace: str, tmp_path: Path
) -> None:
    kubelet = FakeKubelet()
    server = grpc.aio.server()
    kubelet_pb2_grpc.add_KubeletServicer_to_server(kubelet, server)
    # Served as a real kubelet serves its API: TLS with a node certificate from the cluster CA,
    # client certificates required (kubecfg presents the admin's).
    pki = dev_pki()
    directory = pki.ensure_node(f"node-{unique_name}")
    port = server.add_secure_port(
        "127.0.0.1:0",
        ServingCertificate.from_files(*pki.pair("kubelet", directory), pki.ca_file).server_credentials(
            require_client_certificate=True
        ),
    )
    await server.start()
    try:
        node = f"node-{unique_name}"
        manifest = f"""\
apiVersion: v1
kind: Node
metadata: {{name: {node}}}
status:
  addresses: [{{type: InternalIP, address: 127.0.0.1}}]
  daemonEndpoints: {{kubeletEndpoint: {{Port: {port}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: chatty}}
spec:
  nodeName: {node}
  containers:
  - {{name: app, image: kybernetes/busybox:latest}}
  - {{name: sidecar, image: kybernetes/busybox:latest}}
"""
        manifest_path = tmp_path / "node-and-pod.yaml"
        manifest_path.write_text(manifest)
        assert (await kubecfg.run_async("apply", "-f", str(manifest_path))).code == 0
        ambiguous = await kubecfg.run_async("logs", "chatty")
        assert ambiguous.code == 1
        assert ambiguous.err == (
            "error: a container name must be specified for pod chatty, choose one of: [app sidecar]\n"
        )

        result = await kubecfg.run_async("logs", "chatty", "-c", "sidecar", "--tail", "2", "-f")
        assert (result.code, result.out) == (0, "sidecar line 0\nsidecar line 1\nsidecar line 2\n"), result.err
        request = kubelet.requests[-1]
        assert (request.namespace, request.name, request.container, request.follow, request.tail_lines) == (
            namespace, "chatty", "sidecar", True, 2,
        )
        await kubecfg.run_async("delete", "node", node)
    finally:
        await server.stop(None)
