"""OpenAPI generated from the protos (issue 15): `kubectl explain` reads it, and kubectl still
validates on the server (no --validate=false), against a real API server and etcd."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.integration import test_rest_api
from tests.integration.test_rest_api import kubectl

# The REST API server, its admin kubeconfig and a namespace per test: test_rest_api.py's fixtures.
rest_server = test_rest_api.rest_server
admin_kubeconfig = test_rest_api.admin_kubeconfig
namespace = test_rest_api.namespace


def test_kubectl_explain(admin_kubeconfig: Path) -> None:
    pods = kubectl(admin_kubeconfig, "explain", "pods").stdout
    assert "KIND:       Pod" in pods and "VERSION:    v1" in pods
    for field in ("apiVersion\t<string>", "metadata\t<ObjectMeta>", "spec\t<PodSpec>", "status\t<PodStatus>"):
        assert field in pods, pods

    ports = kubectl(admin_kubeconfig, "explain", "pods.spec.containers.ports").stdout
    assert "FIELD: ports <[]ContainerPort>" in ports, ports
    assert "containerPort\t<integer>" in ports and "protocol\t<string>" in ports
    assert "Port published on the node's address." in ports  # the proto's comment on host_port

    spec = kubectl(admin_kubeconfig, "explain", "rc.spec", "--recursive").stdout
    assert "FIELD: spec <ReplicationControllerSpec>" in spec, spec
    for line in ("replicas\t<integer>", "selector\t<map[string]string>", "containers\t<[]Container>",
                 "port\t<IntOrString>", "limits\t<map[string]Quantity>", "creationTimestamp\t<string>"):
        assert line in spec, f"{line!r} not in:\n{spec}"

    result = kubectl(admin_kubeconfig, "explain", "pods.spec.nosuchfield", check=False)
    assert result.returncode != 0 and "nosuchfield" in result.stderr, result.stderr


def test_apply_validates_on_the_server_and_merges_by_key(
    admin_kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """With schemas served, kubectl apply (client-side) still sends fieldValidation=Strict (an
    unknown field is refused by the server), and its strategic merge still agrees with this
    server's: an env var another client added stays when the manifest adds one of its own.
    (kubectl takes core/v1's merge keys from its compiled-in types, not from the schemas; that
    the schemas say the same as patch.py is tests/unit/test_rest_openapi.py's.)"""
    container = {"name": "c", "image": "kybernetes/busybox:latest", "env": [{"name": "MODE", "value": "a"}],
                 "ports": [{"containerPort": 8080, "protocol": "TCP"}]}
    manifest = {"apiVersion": "v1", "kind": "ReplicationController",
                "metadata": {"name": "explained", "namespace": namespace},
                "spec": {"replicas": 0, "selector": {"app": "explained"}, "template": {
                    "metadata": {"labels": {"app": "explained"}}, "spec": {"containers": [container]}}}}
    bad = json.loads(json.dumps(manifest))
    bad["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    path = tmp_path / "rc.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = kubectl(admin_kubeconfig, "apply", "-f", str(path), check=False)
    assert result.returncode != 0 and "portz" in result.stderr and "unknown field" in result.stderr, result.stderr

    path.write_text(yaml.safe_dump(manifest))
    kubectl(admin_kubeconfig, "apply", "-f", str(path))
    extra = [{"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": "EXTRA", "value": "x"}}]
    kubectl(admin_kubeconfig, "patch", "rc", "explained", "-n", namespace, "--type=json", "-p", json.dumps(extra))
    container["env"].append({"name": "MINE", "value": "b"})
    # A new port listed first: $setElementOrder keeps the manifest's order.
    container["ports"].insert(0, {"containerPort": 9090, "protocol": "TCP"})
    path.write_text(yaml.safe_dump(manifest))
    assert "replicationcontroller/explained configured" in kubectl(admin_kubeconfig, "apply", "-f", str(path)).stdout
    got = json.loads(kubectl(admin_kubeconfig, "get", "rc", "explained", "-n", namespace, "-o", "json").stdout)
    live = got["spec"]["template"]["spec"]["containers"][0]
    assert [p["containerPort"] for p in live["ports"]] == [9090, 8080]
    assert [e["name"] for e in live["env"]] == ["MODE", "EXTRA", "MINE"]  # EXTRA where the server had it
