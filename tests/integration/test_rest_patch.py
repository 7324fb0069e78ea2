"""The REST API's second milestone (issue 15): PATCH in its three kinds and the commands built on
it (kubectl patch/label/annotate/apply/scale), and server-side Table printing, with the real
kubectl and the official Python client against a real API server and etcd."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.integration import test_rest_api
from tests.integration.test_rest_api import KUBECTL, kubectl, pod_manifest
from tools.clusterpki import ADMIN, ClusterPKI
from tools.processes import ApiServerProcess

# The REST API server, its admin kubeconfig and a namespace per test: test_rest_api.py's fixtures.
rest_server = test_rest_api.rest_server
admin_kubeconfig = test_rest_api.admin_kubeconfig
namespace = test_rest_api.namespace


def _create_pod(config: Path, namespace: str, tmp_path: Path) -> str:
    name = f"web-{uuid.uuid4().hex[:6]}"
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(pod_manifest(name, namespace)))
    kubectl(config, "create", "-f", str(path))
    return name


def _get(config: Path, namespace: str, what: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl(config, "get", what, name, "-n", namespace, "-o", "json").stdout)


def test_kubectl_patch_each_type(admin_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    name = _create_pod(admin_kubeconfig, namespace, tmp_path)
    # Strategic (kubectl's default): the container merged by name, the rest of it as it was.
    strategic = {"spec": {"containers": [{"name": "web", "image": "kybernetes/busybox:1.36"}]}}
    out = kubectl(admin_kubeconfig, "patch", "pod", name, "-n", namespace, "-p", json.dumps(strategic)).stdout
    assert f"pod/{name} patched" in out
    got = _get(admin_kubeconfig, namespace, "pod", name)
    container = got["spec"]["containers"][0]
    assert container["image"] == "kybernetes/busybox:1.36"
    assert [e["name"] for e in container["env"]] == ["MODE"]
    assert container["ports"][0]["containerPort"] == 8080  # untouched

    # Merge patch: a label added, one removed with null.
    merge = {"metadata": {"labels": {"tier": None, "release": "canary"}}}
    kubectl(admin_kubeconfig, "patch", "pod", name, "-n", namespace, "--type=merge", "-p", json.dumps(merge))
    assert _get(admin_kubeconfig, namespace, "pod", name)["metadata"]["labels"] == {"app": "web", "release": "canary"}

    # JSON patch: a test and a replace.
    ops = [{"op": "test", "path": "/metadata/labels/app", "value": "web"},
           {"op": "replace", "path": "/spec/containers/0/image", "value": "kybernetes/busybox:latest"}]
    kubectl(admin_kubeconfig, "patch", "pod", name, "-n", namespace, "--type=json", "-p", json.dumps(ops))
    assert _get(admin_kubeconfig, namespace, "pod", name)["spec"]["containers"][0]["image"] == (
        "kybernetes/busybox:latest")

    # The status subresource, as kubectl patches it.
    status = {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Patched"}]}}
    kubectl(admin_kubeconfig, "patch", "pod", name, "-n", namespace, "--subresource=status", "-p", json.dumps(status))
    conditions = _get(admin_kubeconfig, namespace, "pod", name)["status"]["conditions"]
    assert [(c["type"], c.get("reason")) for c in conditions] == [("Ready", "Patched")]


def test_bad_patches_store_nothing(admin_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    name = _create_pod(admin_kubeconfig, namespace, tmp_path)
    before = _get(admin_kubeconfig, namespace, "pod", name)
    # A patch that yields an invalid object: 422 naming the field.
    invalid = kubectl(admin_kubeconfig, "patch", "pod", name, "-n", namespace, "--type=merge",
                      "-p", '{"spec": {"restartPolicy": "Sometimes"}}', check=False)
    assert invalid.returncode != 0 and "spec.restartPolicy" in invalid.stderr, invalid.stderr
    # Unknown field under strict decoding.
    unknown = kubectl(admin_kubeconfig, "patch", "pod", name, "-n", namespace, "--type=merge",
                      "-p", '{"spec": {"restartPolicyz": "Always"}}', check=False)
    assert unknown.returncode != 0 and "spec.restartPolicyz" in unknown.stderr, unknown.stderr
    # A JSON patch whose test fails, and one that is not a patch at all.
    failed = kubectl(admin_kubeconfig, "patch", "pod", name, "-n", namespace, "--type=json",
                     "-p", '[{"op": "test", "path": "/metadata/labels/app", "value": "db"}]', check=False)
    assert failed.returncode != 0
    malformed = kubectl(admin_kubeconfig, "patch", "pod", name, "-n", namespace, "--type=json",
                        "-p", '[{"op": "frobnicate", "path": "/x"}]', check=False)
    assert malformed.returncode != 0
    # Strategic merge: a container without its merge key.
    keyless = kubectl(admin_kubeconfig, "patch", "pod", name, "-n", namespace,
                      "-p", '{"spec": {"containers": [{"image": "x"}]}}', check=False)
    assert keyless.returncode != 0 and "merge key" in keyless.stderr, keyless.stderr
    after = _get(admin_kubeconfig, namespace, "pod", name)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def _raw_patch(server: str, path: str, pki: ClusterPKI, body: bytes, content_type: str) -> tuple[int, Any]:
    credentials = pki.credentials(ADMIN.stem)
    context = ssl.create_default_context(cadata=pki.ca.certificate_pem.decode())
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = Path(directory) / "c.crt", Path(directory) / "c.key"
        cert_path.write_bytes(credentials.certificate)
        key_path.write_bytes(credentials.key)
        context.load_cert_chain(cert_path, key_path)
    request = urllib.request.Request(f"https://{server}{path}", data=body, method="PATCH",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_patch_status_codes(rest_server: ApiServerProcess, cluster_pki: ClusterPKI,
                            admin_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    name = _create_pod(admin_kubeconfig, namespace, tmp_path)
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    server = rest_server.rest_address
    code, body = _raw_patch(server, path, cluster_pki, b"{not json", "application/merge-patch+json")
    assert code == 400 and body["reason"] == "BadRequest"
    code, body = _raw_patch(server, path, cluster_pki, b'{"spec": {"restartPolicy": "Sometimes"}}',
                            "application/strategic-merge-patch+json")
    assert code == 422 and body["reason"] == "Invalid"
    assert any(cause["field"] == "spec.restartPolicy" for cause in body["details"]["causes"]), body
    code, body = _raw_patch(server, path, cluster_pki, b"{}", "application/apply-patch+yaml")
    assert code == 415
    code, body = _raw_patch(server, path, cluster_pki, b'{"metadata": {"resourceVersion": "1", "labels": {"a": "b"}}}',
                            "application/merge-patch+json")
    assert code == 409 and body["reason"] == "Conflict"
    # The status subresource: a condition merged by type.
    status = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    code, body = _raw_patch(server, path + "/status", cluster_pki, json.dumps(status).encode(),
                            "application/strategic-merge-patch+json")
    assert code == 200, body
    assert {"type": "Ready", "status": "False"}.items() <= body["status"]["conditions"][0].items()


def test_kubectl_label_and_annotate(admin_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    name = _create_pod(admin_kubeconfig, namespace, tmp_path)
    out = kubectl(admin_kubeconfig, "label", "pod", name, "-n", namespace, "release=stable").stdout
    assert f"pod/{name} labeled" in out
    kubectl(admin_kubeconfig, "label", "pod", name, "-n", namespace, "tier-")
    kubectl(admin_kubeconfig, "annotate", "pod", name, "-n", namespace, "example.com/owner=team-a")
    meta = _get(admin_kubeconfig, namespace, "pod", name)["metadata"]
    assert meta["labels"] == {"app": "web", "release": "stable"}
    assert meta["annotations"]["example.com/owner"] == "team-a"
    overwrite = kubectl(admin_kubeconfig, "label", "pod", name, "-n", namespace, "release=next", check=False)
    assert overwrite.returncode != 0 and "--overwrite" in overwrite.stderr
    kubectl(admin_kubeconfig, "label", "pod", name, "-n", namespace, "release=next", "--overwrite")
    assert _get(admin_kubeconfig, namespace, "pod", name)["metadata"]["labels"]["release"] == "next"


def _rc_documents(namespace: str, replicas: int) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": namespace},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
        {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "web", "namespace": namespace},
         "spec": {"replicas": replicas, "selector": {"app": "web"}, "template": {
             "metadata": {"labels": {"app": "web"}},
             "spec": {"containers": [{"name": "c", "image": "kybernetes/busybox:latest"}]}}}},
    ]


def test_kubectl_apply_configured_and_scale(admin_kubeconfig: Path, namespace: str,
                                            tmp_path: Path) -> None:
    # kubectl's default validation: /openapi/v3 tells it the server validates (fieldValidation=Strict).
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump_all(_rc_documents(namespace, 2)))
    kubectl(admin_kubeconfig, "apply", "-f", str(path))
    path.write_text(yaml.safe_dump_all(_rc_documents(namespace, 3)))
    out = kubectl(admin_kubeconfig, "apply", "-f", str(path)).stdout
    assert "replicationcontroller/web configured" in out and "service/web unchanged" in out, out
    rc = _get(admin_kubeconfig, namespace, "rc", "web")
    assert rc["spec"]["replicas"] == 3
    applied = json.loads(rc["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert applied["spec"]["replicas"] == 3

    out = kubectl(admin_kubeconfig, "scale", "rc", "web", "-n", namespace, "--replicas=5").stdout
    assert "replicationcontroller/web scaled" in out
    assert _get(admin_kubeconfig, namespace, "rc", "web")["spec"]["replicas"] == 5
    # With a precondition on the current count (kubectl then reads the Scale and PUTs it).
    out = kubectl(admin_kubeconfig, "scale", "rc", "web", "-n", namespace, "--current-replicas=5",
                  "--replicas=1").stdout
    assert "replicationcontroller/web scaled" in out
    stale = kubectl(admin_kubeconfig, "scale", "rc", "web", "-n", namespace, "--current-replicas=5", "--replicas=2",
                    check=False)
    assert stale.returncode != 0 and _get(admin_kubeconfig, namespace, "rc", "web")["spec"]["replicas"] == 1

    # kubectl edit: the editor is a script; kubectl sends the change as a strategic merge patch.
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/replicas: 1$/replicas: 2/' \"$1\"\n")
    editor.chmod(0o755)
    assert KUBECTL
    edited = subprocess.run(
        [KUBECTL, "--kubeconfig", str(admin_kubeconfig), "edit", "rc", "web", "-n", namespace],
        env={**os.environ, "KUBE_EDITOR": str(editor)}, capture_output=True, text=True, timeout=60)
    assert edited.returncode == 0 and "replicationcontroller/web edited" in edited.stdout, edited.stderr
    assert _get(admin_kubeconfig, namespace, "rc", "web")["spec"]["replicas"] == 2


def test_kubectl_validates_on_the_server(admin_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    manifest = pod_manifest(f"odd-{uuid.uuid4().hex[:6]}", namespace)
    manifest["spec"]["containers"][0]["imagePullSecretz"] = "x"
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(manifest))
    for verb in ("create", "apply"):
        result = kubectl(admin_kubeconfig, verb, "-f", str(path), check=False)
        assert result.returncode != 0
        assert 'unknown field "spec.containers[0].imagePullSecretz"' in result.stderr, result.stderr
    missing = kubectl(admin_kubeconfig, "get", "pod", manifest["metadata"]["name"], "-n", namespace, check=False)
    assert missing.returncode != 0


def test_python_client_patch_namespaced_pod(admin_kubeconfig: Path, namespace: str,
                                            tmp_path: Path) -> None:
    from kubernetes import client, config

    name = _create_pod(admin_kubeconfig, namespace, tmp_path)
    api_client = config.new_client_from_config(config_file=str(admin_kubeconfig))
    core = client.CoreV1Api(api_client)
    # A dict body: the client sends it as a strategic merge patch.
    patched = core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {"patched": "yes"}}})
    assert patched.metadata.labels == {"app": "web", "tier": "front", "patched": "yes"}
    # A list body: a JSON patch.
    patched = core.patch_namespaced_pod(name, namespace, [{"op": "remove", "path": "/metadata/labels/tier"}])
    assert "tier" not in patched.metadata.labels
    api_client.close()


def test_kubectl_get_tables(admin_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    name = _create_pod(admin_kubeconfig, namespace, tmp_path)
    lines = kubectl(admin_kubeconfig, "get", "pods", "-n", namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], lines
    assert lines[1].split()[:4] == [name, "0/1", "Pending", "0"], lines
    wide = kubectl(admin_kubeconfig, "get", "pods", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
                               "READINESS", "GATES"], wide
    assert "<none>" in wide[1]
    one = kubectl(admin_kubeconfig, "get", "pod", name, "-n", namespace).stdout.splitlines()
    assert one[0].split()[:2] == ["NAME", "READY"] and one[1].split()[0] == name
    every = kubectl(admin_kubeconfig, "get", "pods", "-A").stdout.splitlines()
    assert every[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert any(line.split()[:2] == [namespace, name] for line in every[1:])

    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump_all(_rc_documents(namespace, 2)))
    kubectl(admin_kubeconfig, "apply", "-f", str(path))
    services = kubectl(admin_kubeconfig, "get", "svc", "-n", namespace).stdout.splitlines()
    assert services[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], services
    assert services[1].split()[:2] == ["web", "ClusterIP"] and "80/TCP" in services[1]
    rcs = kubectl(admin_kubeconfig, "get", "rc", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert rcs[0].split() == ["NAME", "DESIRED", "CURRENT", "READY", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    assert rcs[1].split()[:2] == ["web", "2"] and "app=web" in rcs[1]
    namespaces = kubectl(admin_kubeconfig, "get", "ns", namespace).stdout.splitlines()
    assert namespaces[0].split() == ["NAME", "STATUS", "AGE"] and namespaces[1].split()[:2] == [namespace, "Active"]


def test_kubectl_get_watch_prints_rows(admin_kubeconfig: Path, namespace: str,
                                       tmp_path: Path) -> None:
    assert KUBECTL
    watcher = subprocess.Popen(
        [KUBECTL, "--kubeconfig", str(admin_kubeconfig), "get", "pods", "-n", namespace, "-w",
         "--request-timeout=8s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        name = _create_pod(admin_kubeconfig, namespace, tmp_path)
        kubectl(admin_kubeconfig, "label", "pod", name, "-n", namespace, "seen=yes")
        out, err = watcher.communicate(timeout=20)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], (out, err)
    # Its creation and its label, each a Table row of the watch (the header printed once).
    assert [row[:3] for row in rows[1:]].count([name, "0/1", "Pending"]) >= 2, (out, err)
