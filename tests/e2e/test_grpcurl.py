"""The API as a user without our code sees it: grpcurl with server reflection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def grpcurl(address: str, *args: str, data: str | None = None) -> subprocess.CompletedProcess:
    argv = [GRPCURL, "-plaintext"]
    if data is not None:
        argv += ["-d", data]
    return subprocess.run(argv + [address, *args], capture_output=True, text=True, timeout=30)


def test_list_and_describe_services_without_proto_files(apiserver):
    listed = grpcurl(apiserver.address, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "kybernetes.v1.PodRegistry",
        "kybernetes.v1.ServiceRegistry",
        "kybernetes.v1.EndpointsRegistry",
        "kybernetes.v1.ReplicationControllerRegistry",
        "kybernetes.v1.NodeRegistry",
        "grpc.health.v1.Health",
    } <= services
    described = grpcurl(apiserver.address, "describe", "kybernetes.v1.PodRegistry")
    assert described.returncode == 0, described.stderr
    for rpc in ("Create", "Get", "List", "Update", "Delete", "Watch", "Bind", "UpdateStatus"):
        assert f"rpc {rpc} " in described.stdout
    message = grpcurl(apiserver.address, "describe", "kybernetes.v1.ContainerPort")
    assert "container_port" in message.stdout


def test_health_check(apiserver):
    checked = grpcurl(apiserver.address, "grpc.health.v1.Health/Check")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["status"] == "SERVING"


def test_create_and_get_a_pod_from_kubernetes_json(apiserver, namespace):
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hello", "namespace": namespace, "labels": {"app": "hello"}},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "kybernetes/busybox:latest",
                    "command": ["httpd", "-f", "-p", "8080"],
                    "ports": [{"containerPort": 8080, "name": "http"}],
                }
            ]
        },
    }
    created = grpcurl(apiserver.address, "kybernetes.v1.PodRegistry/Create", data=json.dumps(manifest))
    assert created.returncode == 0, created.stderr
    pod = json.loads(created.stdout)
    assert pod["metadata"]["uid"] and pod["status"]["phase"] == "Pending"

    fetched = grpcurl(
        apiserver.address, "kybernetes.v1.PodRegistry/Get", data=json.dumps({"namespace": namespace, "name": "hello"})
    )
    assert fetched.returncode == 0, fetched.stderr
    got = json.loads(fetched.stdout)
    assert got["metadata"]["uid"] == pod["metadata"]["uid"]
    assert got["spec"]["containers"][0]["ports"][0]["container_port"] == 8080

    listed = grpcurl(
        apiserver.address,
        "kybernetes.v1.PodRegistry/List",
        data=json.dumps({"namespace": namespace, "labelSelector": "app in (hello)"}),
    )
    assert [item["metadata"]["name"] for item in json.loads(listed.stdout)["items"]] == ["hello"]


def test_errors_carry_status_and_field(apiserver, namespace):
    missing = grpcurl(
        apiserver.address, "kybernetes.v1.PodRegistry/Get", data=json.dumps({"namespace": namespace, "name": "nope"})
    )
    assert missing.returncode != 0 and "NotFound" in missing.stderr and '"nope" not found' in missing.stderr
    invalid = grpcurl(
        apiserver.address,
        "kybernetes.v1.PodRegistry/Create",
        data=json.dumps({"metadata": {"name": "x", "namespace": namespace}, "spec": {"containers": [{"name": "c"}]}}),
    )
    assert invalid.returncode != 0 and "InvalidArgument" in invalid.stderr
    assert "spec.containers[0].image" in invalid.stderr
