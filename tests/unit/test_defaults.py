"""Defaults: what the server fills in when a manifest leaves a field unset, and what it leaves alone."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from kybernetes.v1 import endpoints_pb2, node_pb2, pod_pb2, replication_controller_pb2, service_pb2
from services.common.defaults import apply_defaults
from services.common.validation import validate


def defaulted(message_type: type[Message], manifest: dict[str, Any]) -> dict[str, Any]:
    message = json_format.ParseDict(manifest, message_type())
    assert apply_defaults(message) is message
    return json_format.MessageToDict(message)


MINIMAL_POD = {
    "metadata": {"name": "p"},
    "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]},
}


def test_pod_defaults() -> None:
    pod = defaulted(pod_pb2.Pod, MINIMAL_POD)
    assert pod["apiVersion"] == "v1"
    assert pod["kind"] == "Pod"
    assert pod["metadata"] == {"name": "p", "namespace": "default"}  # no uid, timestamps or version
    assert pod["spec"]["restartPolicy"] == "Always"
    assert pod["spec"]["terminationGracePeriodSeconds"] == "30"
    assert pod["spec"]["dnsPolicy"] == "ClusterFirst"
    assert "enableServiceLinks" not in pod["spec"]  # unset means true, as Kubernetes' default
    container = pod["spec"]["containers"][0]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert "livenessProbe" not in container  # no probe is invented
    assert "status" not in pod


def test_pod_values_given_are_kept() -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "team-a"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "dnsPolicy": "Default",
            "containers": [{"name": "c", "image": "i", "imagePullPolicy": "Never",
                            "ports": [{"containerPort": 53, "protocol": "UDP"}]}],
        },
    }
    pod = defaulted(pod_pb2.Pod, manifest)
    assert pod["metadata"]["namespace"] == "team-a"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["terminationGracePeriodSeconds"] == "0"  # an explicit 0 is not "unset"
    assert pod["spec"]["dnsPolicy"] == "Default"
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    assert pod["spec"]["containers"][0]["ports"][0]["protocol"] == "UDP"


def test_invalid_values_are_not_papered_over() -> None:
    manifest = {
        "metadata": {"name": "p"},
        "spec": {"restartPolicy": "Sometimes", "containers": [{"name": "c", "image": "i"}]},
    }
    message = apply_defaults(json_format.ParseDict(manifest, pod_pb2.Pod()))
    assert message.spec.restart_policy == "Sometimes"
    assert [e.path for e in validate(message)] == ["spec.restartPolicy"]


@pytest.mark.parametrize("probe_kind", ["livenessProbe", "readinessProbe"])
def test_probe_defaults(probe_kind: str) -> None:
    manifest = {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "image": "i", probe_kind: {"httpGet": {"port": "8080"}, "periodSeconds": 2}}]}}
    probe = defaulted(pod_pb2.Pod, manifest)["spec"]["containers"][0][probe_kind]
    assert probe == {
        "httpGet": {"path": "/", "port": "8080", "scheme": "HTTP"},
        "timeoutSeconds": 1,
        "periodSeconds": 2,
        "successThreshold": 1,
        "failureThreshold": 3,
    }


def test_service_defaults() -> None:
    manifest = {"metadata": {"name": "s"}, "spec": {"selector": {"app": "web"}, "ports": [
        {"port": 80}, {"name": "named", "port": 81, "targetPort": "http", "protocol": "UDP"}]}}
    svc = defaulted(service_pb2.Service, manifest)
    assert (svc["apiVersion"], svc["kind"], svc["metadata"]["namespace"]) == ("v1", "Service", "default")
    assert svc["spec"]["ports"] == [
        {"port": 80, "targetPort": "80", "protocol": "TCP"},
        {"name": "named", "port": 81, "targetPort": "http", "protocol": "UDP"},
    ]
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["sessionAffinity"] == "None"


def test_service_given_values_are_kept() -> None:
    manifest = {"metadata": {"name": "s"}, "spec": {"type": "NodePort", "sessionAffinity": "ClientIP",
                                                   "ports": [{"port": 80, "nodePort": 30080}]}}
    svc = defaulted(service_pb2.Service, manifest)
    assert (svc["spec"]["type"], svc["spec"]["sessionAffinity"]) == ("NodePort", "ClientIP")


def test_endpoints_defaults() -> None:
    ep = defaulted(endpoints_pb2.Endpoints, {"metadata": {"name": "s"}, "subsets": [
        {"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]})
    assert (ep["apiVersion"], ep["kind"], ep["metadata"]["namespace"]) == ("v1", "Endpoints", "default")
    assert ep["subsets"][0]["ports"] == [{"port": 80, "protocol": "TCP"}]


RC_TEMPLATE = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}


def test_rc_defaults_from_template() -> None:
    rc = defaulted(replication_controller_pb2.ReplicationController,
                   {"metadata": {"name": "web"}, "spec": {"template": RC_TEMPLATE}})
    assert (rc["apiVersion"], rc["kind"], rc["metadata"]["namespace"]) == ("v1", "ReplicationController", "default")
    assert rc["spec"]["replicas"] == 1
    assert rc["spec"]["selector"] == {"app": "web"}
    assert rc["metadata"]["labels"] == {"app": "web"}
    template_spec = rc["spec"]["template"]["spec"]
    assert template_spec["restartPolicy"] == "Always"
    assert template_spec["containers"][0]["imagePullPolicy"] == "IfNotPresent"


def test_rc_keeps_zero_replicas_and_its_own_selector() -> None:
    rc = defaulted(replication_controller_pb2.ReplicationController, {
        "metadata": {"name": "web", "labels": {"team": "a"}},
        "spec": {"replicas": 0, "selector": {"app": "web"},
                 "template": {"metadata": {"labels": {"app": "web", "track": "canary"}}, "spec": RC_TEMPLATE["spec"]}},
    })
    assert rc["spec"].get("replicas", 0) == 0
    message = json_format.ParseDict(rc, replication_controller_pb2.ReplicationController())
    assert message.spec.HasField("replicas") and message.spec.replicas == 0
    assert rc["spec"]["selector"] == {"app": "web"}
    assert rc["metadata"]["labels"] == {"team": "a"}


def test_node_stays_cluster_scoped() -> None:
    node = defaulted(node_pb2.Node, {"metadata": {"name": "node-1"}})
    assert node == {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}


@pytest.mark.parametrize(
    ("message_type", "manifest"),
    [
        (pod_pb2.Pod, MINIMAL_POD),
        (service_pb2.Service, {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}),
        (
            replication_controller_pb2.ReplicationController,
            {"metadata": {"name": "r"}, "spec": {"template": RC_TEMPLATE}},
        ),
        (node_pb2.Node, {"metadata": {"name": "n"}}),
    ],
)
def test_defaults_are_idempotent_and_valid(message_type: type[Message], manifest: dict[str, Any]) -> None:
    once = json_format.ParseDict(manifest, message_type())
    apply_defaults(once)
    twice = message_type()
    twice.CopyFrom(once)
    apply_defaults(twice)
    assert twice == once
    assert validate(once) == []


def test_apply_defaults_rejects_non_api_messages() -> None:
    with pytest.raises(TypeError):
        apply_defaults(pod_pb2.PodSpec())
