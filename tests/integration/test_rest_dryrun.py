"""The REST API's dryRun=All and deletecollection (issue 15), with the real kubectl and the
official Python client, against a real API server (--rest-listen) and etcd."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration import test_rest_api
from tests.integration.test_rest_api import kubectl, write_kubeconfig

# The REST API server, its admin kubeconfig and a namespace per test: test_rest_api.py's fixtures.
rest_server = test_rest_api.rest_server
admin_kubeconfig = test_rest_api.admin_kubeconfig
namespace = test_rest_api.namespace


def _pod(name: str, where: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": where, "labels": labels or {"app": "dry"}},
        "spec": {"containers": [{"name": "c", "image": "kybernetes/busybox:latest"}]},
    }


def _core(config_path: Path) -> tuple[Any, Any]:
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(config_path))
    return api_client, client.CoreV1Api(api_client)


def _exists(config: Path, where: str, what: str) -> bool:
    result = kubectl(config, "get", what, "-n", where, "-o", "name", check=False)
    if result.returncode == 0:
        return True
    assert "NotFound" in result.stderr or "not found" in result.stderr, result.stderr
    return False


def test_kubectl_dry_run_server_create_apply_delete(admin_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(_pod("dry", namespace)))
    # create: validated, defaulted and admitted in full (uid, creation time), nothing stored.
    created = kubectl(admin_kubeconfig, "create", "--dry-run=server", "-o", "yaml", "-f", str(path))
    shown = yaml.safe_load(created.stdout)
    assert shown["metadata"]["name"] == "dry" and shown["metadata"]["uid"] and shown["metadata"]["creationTimestamp"]
    assert shown["spec"]["containers"][0]["imagePullPolicy"]  # the server's defaults
    assert not _exists(admin_kubeconfig, namespace, "pod/dry")
    # An invalid object is refused as the real create would be.
    bad = _pod("Bad_Name", namespace)
    result = kubectl(admin_kubeconfig, "create", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert result.returncode != 0 and "metadata.name" in result.stderr, result.stderr

    kubectl(admin_kubeconfig, "apply", "-f", str(path))
    changed = _pod("dry", namespace, {"app": "dry", "tier": "changed"})
    path.write_text(yaml.safe_dump(changed))
    applied = kubectl(admin_kubeconfig, "apply", "--dry-run=server", "-f", str(path)).stdout
    assert "pod/dry configured (server dry run)" in applied, applied
    stored = json.loads(kubectl(admin_kubeconfig, "get", "pod", "dry", "-n", namespace, "-o", "json").stdout)
    assert stored["metadata"]["labels"] == {"app": "dry"}
    # Create of a name that exists: AlreadyExists, as the real create.
    result = kubectl(admin_kubeconfig, "create", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode != 0 and "AlreadyExists" in result.stderr, result.stderr

    deleted = kubectl(admin_kubeconfig, "delete", "pod", "dry", "-n", namespace, "--dry-run=server").stdout
    assert 'pod "dry" deleted' in deleted and "(server dry run)" in deleted, deleted
    assert _exists(admin_kubeconfig, namespace, "pod/dry")
    after = json.loads(kubectl(admin_kubeconfig, "get", "pod", "dry", "-n", namespace, "-o", "json").stdout)
    assert after["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


def test_dry_run_service_allocates_nothing_and_bad_values(admin_kubeconfig: Path, namespace: str) -> None:
    """A service's dry-run create shows a cluster IP but keeps none; /status too; an unknown
    dryRun value is a 400 naming the field."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api_client, core = _core(admin_kubeconfig)
    try:
        service = client.V1Service(metadata=client.V1ObjectMeta(name="dry-svc"), spec=client.V1ServiceSpec(
            selector={"app": "x"}, ports=[client.V1ServicePort(port=80)], type="NodePort"))
        shown = core.create_namespaced_service(namespace, service, dry_run="All")
        assert shown.spec.cluster_ip and shown.spec.ports[0].node_port
        assert core.list_namespaced_service(namespace).items == []
        created = core.create_namespaced_service(namespace, service)  # the same port may be picked: it was given back
        assert created.spec.cluster_ip

        with pytest.raises(ApiException) as raised:
            core.create_namespaced_pod(namespace, client.V1Pod(
                metadata=client.V1ObjectMeta(name="p"),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")])), dry_run="Bogus")
        body = json.loads(raised.value.body)
        assert raised.value.status == 400 and body["message"].startswith("dryRun: Unsupported value: \"Bogus\"")
        assert body["details"]["causes"][0]["field"] == "dryRun"

        pod = core.create_namespaced_pod(namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(name="p"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")])))
        patched = core.patch_namespaced_pod_status("p", namespace, {"status": {"message": "dry"}}, dry_run="All")
        assert patched.status.message == "dry"
        stored = core.read_namespaced_pod("p", namespace)
        assert stored.status.message is None and stored.metadata.resource_version == pod.metadata.resource_version
        replaced = core.replace_namespaced_pod("p", namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(name="p", labels={"x": "y"}, resource_version=pod.metadata.resource_version),
            spec=stored.spec), dry_run="All")
        assert replaced.metadata.labels == {"x": "y"}
        assert core.read_namespaced_pod("p", namespace).metadata.labels is None
    finally:
        api_client.close()


def test_deletecollection_with_selectors_and_propagation(admin_kubeconfig: Path, namespace: str) -> None:
    from kubernetes import client

    api_client, core = _core(admin_kubeconfig)
    try:
        for index in range(4):
            core.create_namespaced_pod(namespace, client.V1Pod(
                metadata=client.V1ObjectMeta(name=f"p{index}", labels={"app": "a" if index < 2 else "b"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")])))
        # dryRun: listed as deleted, nothing gone.
        response = core.delete_collection_namespaced_pod(namespace, label_selector="app=a", dry_run="All",
                                                         _preload_content=False)
        shown = json.loads(response.read())
        assert shown["kind"] == "PodList" and sorted(i["metadata"]["name"] for i in shown["items"]) == ["p0", "p1"]
        assert len(core.list_namespaced_pod(namespace).items) == 4
        core.delete_collection_namespaced_pod(namespace, label_selector="app=a")
        assert sorted(p.metadata.name for p in core.list_namespaced_pod(namespace).items) == ["p2", "p3"]

        # propagationPolicy=Orphan: an RC's pods stay, released (no owner reference).
        rc = core.create_namespaced_replication_controller(namespace, client.V1ReplicationController(
            metadata=client.V1ObjectMeta(name="rc"), spec=client.V1ReplicationControllerSpec(
                replicas=0, selector={"app": "owned"}, template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels={"app": "owned"}),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")])))))
        owner = client.V1OwnerReference(api_version="v1", kind="ReplicationController", name="rc",
                                        uid=rc.metadata.uid, controller=True)
        core.create_namespaced_pod(namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(name="owned", labels={"app": "owned"}, owner_references=[owner]),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")])))
        core.delete_collection_namespaced_replication_controller(namespace, propagation_policy="Orphan")
        assert core.list_namespaced_replication_controller(namespace).items == []
        assert core.read_namespaced_pod("owned", namespace).metadata.owner_references is None

        # Namespaces have no deletecollection (as in Kubernetes): 405, nothing deleted.
        response = api_client.call_api("DELETE", f"{api_client.configuration.host}/api/v1/namespaces")
        assert response.status == 405
        assert core.read_namespace(namespace).metadata.name == namespace
    finally:
        api_client.close()


def test_kubectl_delete_by_label_and_all(admin_kubeconfig: Path, namespace: str) -> None:
    for name, app in (("k0", "x"), ("k1", "x"), ("k2", "y")):
        kubectl(admin_kubeconfig, "create", "-f", "-", input=json.dumps(_pod(name, namespace, {"app": app})))
    out = kubectl(admin_kubeconfig, "delete", "pods", "-l", "app=x", "-n", namespace).stdout
    assert 'pod "k0" deleted' in out and 'pod "k1" deleted' in out and "k2" not in out
    assert kubectl(admin_kubeconfig, "get", "pods", "-n", namespace, "-o", "name").stdout.split() == ["pod/k2"]
    kubectl(admin_kubeconfig, "delete", "pods", "--all", "-n", namespace)
    assert kubectl(admin_kubeconfig, "get", "pods", "-n", namespace, "-o", "name").stdout.split() == []


def test_deletecollection_needs_its_verb(rest_server: Any, cluster_pki: Any, namespace: str, tmp_path: Path) -> None:
    """A user who may delete pods one by one but not deletecollection: 403 naming the verb."""
    user = f"rest-deleter-{uuid.uuid4().hex[:6]}"
    credentials = cluster_pki.client_credentials(user)
    config = write_kubeconfig(tmp_path / "deleter.conf", rest_server.rest_address, cluster_pki,
                              user=user, certificate=credentials.certificate, key=credentials.key)
    api_client, core = _core(config)
    try:
        from kubernetes.client.rest import ApiException

        with pytest.raises(ApiException) as raised:
            core.delete_collection_namespaced_pod(namespace)
        assert raised.value.status == 403
        assert f'User "{user}" cannot deletecollection resource "pods"' in json.loads(raised.value.body)["message"]
    finally:
        api_client.close()
