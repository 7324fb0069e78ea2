"""Kubernetes v1 manifests (YAML and JSON) to API messages and back."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from kybernetes.v1 import endpoints_pb2, node_pb2, pod_pb2, replication_controller_pb2, service_pb2

from services.common.manifests import (
    ManifestError,
    dump_json,
    dump_yaml,
    load_manifest_files,
    load_manifest_sources,
    load_manifests,
    to_dict,
)

POD_YAML = """\
# A pod as `kubectl apply` takes it.
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels:
    app: web
    version: 2          # YAML integer: a label value is text
    canary: true        # YAML boolean, likewise
  annotations:
    owner: team-a
spec:
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 5
  nodeSelector:
    disk: ssd
  volumes:
  - name: data
    emptyDir: {}
  - name: logs
    hostPath:
      path: /var/log/web
      type: DirectoryOrCreate
  containers:
  - name: web
    image: kybernetes/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["httpd", "-f", "-p", "8080"]
    args:
    - -h
    - /www
    workingDir: /www
    ports:
    - name: http
      containerPort: 8080
      hostPort: 18080
      protocol: TCP
    env:
    - name: MODE
      value: production
    resources:
      requests:
        cpu: 100m
        memory: 128974848   # a YAML integer quantity
      limits:
        cpu: 1
        memory: 256Mi
    volumeMounts:
    - name: data
      mountPath: /www
    - name: logs
      mountPath: /logs
      readOnly: true
    livenessProbe:
      httpGet:
        path: /healthz
        port: http
        httpHeaders:
        - name: X-Probe
          value: "1"
      initialDelaySeconds: 3
      periodSeconds: 5
    readinessProbe:
      tcpSocket:
        port: 8080
      failureThreshold: 1
  - name: sidecar
    image: kybernetes/busybox:latest
    command: [sh, -c, "while true; do sleep 1; done"]
    livenessProbe:
      exec:
        command: [cat, /tmp/healthy]
"""

SERVICE_YAML = """\
apiVersion: v1
kind: Service
metadata:
  name: frontend
  labels: {tier: frontend}
spec:
  type: NodePort
  selector:
    tier: frontend
    stack: prod
  ports:
  - name: http
    port: 80
    targetPort: http
    nodePort: 30080
  - name: metrics
    protocol: UDP
    port: 9100
    targetPort: 9100
"""

RC_YAML = """\
apiVersion: v1
kind: ReplicationController
metadata:
  name: frontend
spec:
  replicas: 0
  selector:
    tier: frontend
  template:
    metadata:
      labels:
        tier: frontend
    spec:
      containers:
      - name: php-redis
        image: kybernetes/busybox:latest
        ports:
        - containerPort: 80
"""

NODE_YAML = """\
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels:
    kubernetes.io/hostname: node-1
spec:
  podCIDR: 10.244.1.0/24
  unschedulable: true
status:
  capacity: {cpu: "2", memory: 4Gi, pods: 110}
  addresses:
  - type: InternalIP
    address: 10.0.0.5
  daemonEndpoints:
    kubeletEndpoint:
      Port: 10250
  conditions:
  - type: Ready
    status: "True"
    lastHeartbeatTime: 2024-05-01T12:00:00Z
"""


def as_json(document: object) -> str:
    """JSON of a YAML-loaded document (YAML timestamps become RFC 3339 text)."""
    return json.dumps(document, default=lambda value: value.isoformat())


def load_one(text: str, source: str = "test.yaml"):
    objects = load_manifests(text, source)
    assert len(objects) == 1
    return objects[0]


def error_of(text: str, source: str = "pod.yaml") -> str:
    with pytest.raises(ManifestError) as caught:
        load_manifests(text, source)
    return str(caught.value)


def test_pod_with_every_supported_field() -> None:
    pod = load_one(POD_YAML)
    assert isinstance(pod, pod_pb2.Pod)
    assert pod.metadata.name == "web" and pod.metadata.namespace == "shop"
    assert dict(pod.metadata.labels) == {"app": "web", "version": "2", "canary": "true"}
    assert pod.spec.restart_policy == "OnFailure"
    assert pod.spec.HasField("termination_grace_period_seconds") and pod.spec.termination_grace_period_seconds == 5
    assert pod.spec.volumes[0].HasField("empty_dir")
    assert pod.spec.volumes[1].host_path.path == "/var/log/web"
    web, sidecar = pod.spec.containers
    assert list(web.command) == ["httpd", "-f", "-p", "8080"] and list(web.args) == ["-h", "/www"]
    assert (web.ports[0].name, web.ports[0].container_port, web.ports[0].host_port) == ("http", 8080, 18080)
    assert web.env[0].name == "MODE" and web.env[0].value == "production"
    assert dict(web.resources.requests) == {"cpu": "100m", "memory": "128974848"}
    assert dict(web.resources.limits) == {"cpu": "1", "memory": "256Mi"}
    assert web.volume_mounts[1].read_only is True
    assert web.liveness_probe.http_get.port == "http"
    assert web.liveness_probe.http_get.http_headers[0].value == "1"
    assert web.readiness_probe.tcp_socket.port == "8080"  # IntOrString: a YAML int becomes text
    assert list(sidecar.liveness_probe.exec.command) == ["cat", "/tmp/healthy"]


def test_service_with_named_target_port_and_rc_with_template() -> None:
    service = load_one(SERVICE_YAML)
    assert isinstance(service, service_pb2.Service)
    assert [(p.name, p.port, p.target_port) for p in service.spec.ports] == [
        ("http", 80, "http"),
        ("metrics", 9100, "9100"),
    ]
    assert service.spec.ports[0].node_port == 30080 and service.spec.ports[1].protocol == "UDP"
    rc = load_one(RC_YAML)
    assert isinstance(rc, replication_controller_pb2.ReplicationController)
    assert rc.spec.HasField("replicas") and rc.spec.replicas == 0  # explicit zero is kept
    assert rc.spec.template.spec.containers[0].ports[0].container_port == 80


def test_node_with_status_and_special_json_names() -> None:
    node = load_one(NODE_YAML)
    assert isinstance(node, node_pb2.Node)
    assert node.spec.pod_cidr == "10.244.1.0/24" and node.spec.unschedulable
    assert node.status.capacity["pods"] == "110"
    assert node.status.daemon_endpoints.kubelet_endpoint.port == 10250
    assert node.status.conditions[0].last_heartbeat_time.seconds == 1714564800


def test_several_documents_and_a_list() -> None:
    text = "\n---\n".join([SERVICE_YAML, RC_YAML, "# only a comment", ""])
    assert [type(o) for o in load_manifests(text)] == [
        service_pb2.Service, replication_controller_pb2.ReplicationController,
    ]
    listing = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [yaml.safe_load(SERVICE_YAML), yaml.safe_load(NODE_YAML)],
    }
    objects = load_manifests(as_json(listing), "list.json")
    assert [o.metadata.name for o in objects] == ["frontend", "node-1"]


def test_json_and_snake_case_names() -> None:
    text = json.dumps({
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"},
        "subsets": [{"addresses": [{"ip": "10.1.0.4", "node_name": "n1"}], "ports": [{"port": 80}]}],
    })
    endpoints = load_one(text)
    assert isinstance(endpoints, endpoints_pb2.Endpoints)
    assert endpoints.subsets[0].addresses[0].node_name == "n1"
    # Two JSON objects one after the other, as kubectl accepts.
    assert len(load_manifests(text + "\n" + text)) == 2


def test_unknown_field_names_document_and_path() -> None:
    text = POD_YAML.replace("imagePullPolicy: IfNotPresent", "imagePullSecretz: x")
    message = error_of(SERVICE_YAML + "---\n" + text)
    assert message.startswith("pod.yaml[1]: spec.containers[0].imagePullSecretz: unknown field")
    assert "imagePullPolicy" in message  # the hint / supported list


def test_unknown_field_in_a_list_item() -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "Pod", "spek": {}}]}
    assert error_of(json.dumps(listing), "l.json").startswith("l.json[0]: items[0].spek: unknown field")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: Pod\nmetadata: {name: a}\n", "pod.yaml[0]: apiVersion: required"),
        ("apiVersion: apps/v1\nkind: Pod\n", 'pod.yaml[0]: apiVersion: unsupported "apps/v1"'),
        ("apiVersion: v1\nmetadata: {name: a}\n", "pod.yaml[0]: kind: required"),
        ("apiVersion: v1\nkind: Deployment\n", 'pod.yaml[0]: kind: unsupported "Deployment"'),
        ("apiVersion: v1\nkind: pod\n", 'did you mean "Pod"'),
        (
            "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: a\n    ports:\n    - containerPort: '80'\n",
            'pod.yaml[0]: spec.containers[0].ports[0].containerPort: expected an integer, got string "80"',
        ),
        ("apiVersion: v1\nkind: Pod\nspec: {containers: {name: a}}\n", "spec.containers: expected a list, got object"),
        ("apiVersion: v1\nkind: Pod\nmetadata: [a]\n", "metadata: expected an object, got list"),
        (
            "apiVersion: v1\nkind: Node\nspec: {unschedulable: 'yes'}\n",
            'spec.unschedulable: expected true or false, got string "yes"',
        ),
        (
            "apiVersion: v1\nkind: Pod\nspec: {containers: [{name: a, command: [[x]]}]}\n",
            "command[0]: expected a string, got list",
        ),
        (
            "apiVersion: v1\nkind: Service\nspec: {ports: [{port: 99999999999}]}\n",
            "spec.ports[0].port: 99999999999 is out of range",
        ),
        (
            "apiVersion: v1\nkind: Pod\nspec: {nodeName: a, node_name: b}\n",
            'spec.node_name: given twice (also as "nodeName")',
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {creationTimestamp: soon}\n",
            'metadata.creationTimestamp: invalid timestamp "soon"',
        ),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, name: b}\n", "duplicate key 'name'"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: [\n", "pod.yaml: invalid YAML at line"),
        ("- just\n- a list\n", "pod.yaml[0]: expected an object with apiVersion and kind, got list"),
        ('{"apiVersion": "v1", "kind": "Pod",}', "pod.yaml: invalid JSON at line 1"),
    ],
)
def test_errors_name_the_field_and_the_reason(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_null_means_unset() -> None:
    pod = load_one(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  creationTimestamp: null\n  labels:\nspec:\n  containers:\n"
    )
    assert pod.metadata.name == "a" and not pod.metadata.labels and not pod.spec.containers
    assert not pod.metadata.HasField("creation_timestamp")


def test_round_trip_through_yaml_and_json() -> None:
    for text in (POD_YAML, SERVICE_YAML, RC_YAML, NODE_YAML):
        original = load_one(text)
        original.metadata.resource_version = 42
        assert load_manifests(dump_yaml([original]), "again.yaml") == [original]
        assert load_manifests(dump_json([original]), "again.json") == [original]


def test_to_dict_is_kubernetes_shaped() -> None:
    rc = load_one(RC_YAML)
    rc.api_version, rc.kind = "", ""
    rc.metadata.resource_version = 7
    rc.metadata.generation = 2
    body = to_dict(rc)
    assert list(body)[:2] == ["apiVersion", "kind"] and body["kind"] == "ReplicationController"
    assert body["metadata"] == {"name": "frontend", "resourceVersion": "7", "generation": 2}
    assert body["spec"]["replicas"] == 0
    assert "status" not in body  # defaults are left out
    pod = load_one(POD_YAML)
    assert to_dict(pod)["spec"]["terminationGracePeriodSeconds"] == 5  # an int64, as a number


def test_dump_single_object_or_list() -> None:
    service, rc = load_one(SERVICE_YAML), load_one(RC_YAML)
    assert yaml.safe_load(dump_yaml([service]))["kind"] == "Service"
    listing = yaml.safe_load(dump_yaml([service, rc]))
    assert listing["kind"] == "List" and [i["kind"] for i in listing["items"]] == ["Service", "ReplicationController"]
    assert json.loads(dump_json([service], as_list=True))["items"][0]["metadata"]["name"] == "frontend"
    assert json.loads(dump_json([]))["items"] == []
    # A script with newlines stays readable.
    assert "|" in dump_yaml([load_one(POD_YAML.replace('"httpd", "-f"', '"sh\\nline2", "-f"'))])


def test_files_directories_and_stdin(tmp_path, monkeypatch) -> None:
    (tmp_path / "b-service.yaml").write_text(SERVICE_YAML)
    (tmp_path / "a-rc.yml").write_text(RC_YAML)
    (tmp_path / "c-node.json").write_text(as_json(yaml.safe_load(NODE_YAML)))
    (tmp_path / "notes.txt").write_text("not a manifest")
    kinds = [type(o).__name__ for o in load_manifest_files([str(tmp_path)])]
    assert kinds == ["ReplicationController", "Service", "Node"]  # sorted by file name
    sources = load_manifest_sources([os.path.join(tmp_path, "b-service.yaml")])
    assert sources[0].origin.endswith("b-service.yaml[0]")
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(POD_YAML))
    assert load_manifest_files(["-"])[0].metadata.name == "web"
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest_files([str(tmp_path / "missing.yaml")])
