"""Validation of every kind: each bad manifest is rejected at the field a user must fix.

Manifests are written as Kubernetes JSON (camelCase) and read with protobuf's
JSON mapping, as kubecfg reads them, so the paths in the errors are the paths
in the manifest.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from kybernetes.v1 import endpoints_pb2, meta_pb2, node_pb2, pod_pb2, replication_controller_pb2, service_pb2
from services.common.defaults import apply_defaults
from services.common.validation import (
    FieldError,
    validate,
    validate_object_meta,
    validate_pod_spec,
)

MESSAGES: dict[str, type[Message]] = {
    "Pod": pod_pb2.Pod,
    "Service": service_pb2.Service,
    "Endpoints": endpoints_pb2.Endpoints,
    "ReplicationController": replication_controller_pb2.ReplicationController,
    "Node": node_pb2.Node,
}


def load(manifest: dict[str, Any]) -> Message:
    return json_format.ParseDict(manifest, MESSAGES[manifest["kind"]]())


def pod_spec() -> dict[str, Any]:
    return {
        "containers": [
            {
                "name": "web",
                "image": "kybernetes/busybox:latest",
                "command": ["httpd", "-f", "-p", "8080"],
                "ports": [{"name": "http", "containerPort": 8080, "hostPort": 18080}],
                "env": [{"name": "MODE", "value": "test"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "64Mi"}},
                "livenessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5},
                "readinessProbe": {"tcpSocket": {"port": "8080"}},
            },
            {"name": "sidecar", "image": "kybernetes/busybox:latest", "command": ["sleep", "3600"]},
        ],
        "volumes": [{"name": "data", "emptyDir": {}}, {"name": "logs", "hostPath": {"path": "/var/log"}}],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 5,
        "nodeSelector": {"disk": "ssd"},
    }


def pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"},
                     "annotations": {"example.com/note": "anything at all: goes here"}},
        "spec": pod_spec(),
    }


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "frontend"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "dns", "port": 53, "targetPort": "5353", "protocol": "UDP"},
            ],
        },
    }


def endpoints() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "frontend"},
        "subsets": [
            {
                "addresses": [{"ip": "172.17.0.2", "nodeName": "node-1"}, {"ip": "fd00::2"}],
                "notReadyAddresses": [{"ip": "172.17.0.3"}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 53}],
            }
        ],
    }


def replication_controller() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"app": "web"},
            "template": {"metadata": {"labels": {"app": "web", "tier": "frontend"}}, "spec": pod_spec()},
        },
    }


def node() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-1.example.com", "labels": {"kubernetes.io/hostname": "node-1"}},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {
            "capacity": {"cpu": "2", "memory": "24Gi", "pods": "110"},
            "allocatable": {"cpu": "1500m", "memory": "23Gi"},
            "addresses": [{"type": "InternalIP", "address": "10.0.0.5"}, {"type": "Hostname", "address": "node-1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        },
    }


DELETE = object()


def edit(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of manifest with the dotted path set ("spec.containers.0.image"); DELETE removes it."""
    result = copy.deepcopy(manifest)
    *parents, last = path.split(".")
    node = result
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is DELETE:
        del node[last]
    else:
        node[last] = value
    return result


VALID_MANIFESTS = [
    pytest.param(pod(), id="pod-full"),
    pytest.param({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
                 id="pod-minimal"),
    pytest.param(edit(edit(pod(), "metadata.name", DELETE), "metadata.generateName", "web-"), id="pod-generate-name"),
    pytest.param(edit(pod(), "spec.restartPolicy", "OnFailure"), id="pod-restart-on-failure"),
    pytest.param(edit(pod(), "spec.terminationGracePeriodSeconds", 0), id="pod-grace-zero"),
    pytest.param(edit(pod(), "spec.containers.0.ports.0.protocol", "UDP"), id="pod-udp-port"),
    pytest.param(edit(pod(), "spec.nodeName", "node-1.example.com"), id="pod-node-name"),
    pytest.param(edit(pod(), "spec.dnsPolicy", "Default"), id="pod-dns-default"),
    pytest.param(edit(pod(), "spec.dnsPolicy", "ClusterFirstWithHostNet"), id="pod-dns-cluster-first-with-host-net"),
    pytest.param(edit(edit(pod(), "spec.dnsPolicy", "None"), "spec.dnsConfig", {
        "nameservers": ["1.2.3.4", "fd00::53", "10.0.0.10"], "searches": ["ns1.svc.cluster.local", "my.dns.search."],
        "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}), id="pod-dns-none-with-config"),
    pytest.param(edit(pod(), "spec.dnsConfig", {"searches": [f"d{i}.example" for i in range(32)]}),
                 id="pod-dns-config-32-searches"),
    pytest.param(edit(pod(), "spec.enableServiceLinks", False), id="pod-service-links-off"),
    pytest.param(edit(pod(), "spec.containers.0.livenessProbe", {"exec": {"command": ["true"]}}), id="pod-exec-probe"),
    pytest.param(edit(pod(), "spec.containers.0.resources", {"limits": {"ephemeral-storage": "1Gi"}}),
                 id="pod-ephemeral-storage"),
    pytest.param(edit(pod(), "metadata.labels", {"example.com/app": "web", "empty": ""}), id="pod-prefixed-labels"),
    pytest.param(edit(pod(), "metadata.name", "a" * 253), id="pod-name-253"),
    pytest.param(service(), id="service-two-ports"),
    pytest.param({"kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}},
                 id="service-one-unnamed-port"),
    pytest.param(edit(edit(service(), "spec.type", "NodePort"), "spec.ports.0",
                      {"name": "http", "port": 80, "nodePort": 30080}), id="service-node-port"),
    pytest.param(edit(service(), "spec.sessionAffinity", "ClientIP"), id="service-client-ip"),
    pytest.param(edit(service(), "spec.clusterIP", "None"), id="service-headless"),
    pytest.param(edit(service(), "spec.clusterIP", "10.96.0.10"), id="service-cluster-ip"),
    pytest.param(edit(service(), "spec.clusterIP", "fd00::a"), id="service-cluster-ip-v6"),
    pytest.param(edit(edit(edit(service(), "spec.type", "NodePort"), "spec.ports.0.nodePort", 30053),
                      "spec.ports.1.nodePort", 30053), id="service-one-node-port-for-tcp-and-udp"),
    pytest.param(endpoints(), id="endpoints"),
    pytest.param({"kind": "Endpoints", "metadata": {"name": "empty"}}, id="endpoints-no-subsets"),
    pytest.param(replication_controller(), id="rc"),
    pytest.param(edit(replication_controller(), "spec.replicas", 0), id="rc-zero-replicas"),
    pytest.param(node(), id="node"),
    pytest.param({"kind": "Node", "metadata": {"name": "n"}}, id="node-minimal"),
]


@pytest.mark.parametrize("manifest", VALID_MANIFESTS)
def test_valid_manifest_passes(manifest: dict[str, Any]) -> None:
    assert validate(load(manifest)) == []


@pytest.mark.parametrize("manifest", VALID_MANIFESTS)
def test_valid_manifest_passes_after_defaults(manifest: dict[str, Any]) -> None:
    assert validate(apply_defaults(load(manifest))) == []


def case(id: str, manifest: dict[str, Any], path: str, reason: str) -> Any:
    return pytest.param(manifest, path, reason, id=id)


INVALID_MANIFESTS = [
    # Type and object metadata
    case("api-version", edit(pod(), "apiVersion", "v2"), "apiVersion", 'Unsupported value: "v2"'),
    case("no-name", edit(pod(), "metadata.name", DELETE), "metadata.name", "name or generateName is required"),
    case("uppercase-name", edit(pod(), "metadata.name", "Web"), "metadata.name", "RFC 1123 subdomain"),
    case("name-underscore", edit(pod(), "metadata.name", "web_1"), "metadata.name", 'Invalid value: "web_1"'),
    case("name-too-long", edit(pod(), "metadata.name", "a" * 254), "metadata.name", "no more than 253"),
    case("bad-generate-name", edit(edit(pod(), "metadata.name", DELETE), "metadata.generateName", "Web-"),
         "metadata.generateName", "RFC 1123"),
    case("bad-namespace", edit(pod(), "metadata.namespace", "my.ns"), "metadata.namespace", "RFC 1123 label"),
    case("bad-label-key", edit(pod(), "metadata.labels", {"-app": "web"}), "metadata.labels", '"-app"'),
    case("bad-label-prefix", edit(pod(), "metadata.labels", {"Example.com/app": "web"}), "metadata.labels",
         "prefix part"),
    case("bad-label-value", edit(pod(), "metadata.labels", {"app": "web frontend"}), "metadata.labels[app]",
         'Invalid value: "web frontend"'),
    case("long-label-value", edit(pod(), "metadata.labels", {"app": "w" * 64}), "metadata.labels[app]",
         "no more than 63"),
    case("bad-annotation-key", edit(pod(), "metadata.annotations", {"note me": "x"}), "metadata.annotations",
         '"note me"'),
    case("huge-annotations", edit(pod(), "metadata.annotations", {"a": "x" * 300_000}), "metadata.annotations",
         "Too long"),
    case("two-controllers", edit(pod(), "metadata.ownerReferences", [
        {"kind": "ReplicationController", "name": "a", "uid": "1", "controller": True},
        {"kind": "ReplicationController", "name": "b", "uid": "2", "controller": True}]),
         "metadata.ownerReferences", "only one reference"),
    # DNS
    case("bad-dns-policy", edit(pod(), "spec.dnsPolicy", "Cluster"), "spec.dnsPolicy", 'Unsupported value: "Cluster"'),
    case("dns-none-without-config", edit(pod(), "spec.dnsPolicy", "None"), "spec.dnsConfig",
         "must provide `dnsConfig` when `dnsPolicy` is None"),
    case("dns-none-without-nameserver", edit(edit(pod(), "spec.dnsPolicy", "None"), "spec.dnsConfig",
                                             {"searches": ["a.example"]}),
         "spec.dnsConfig.nameservers", "must provide at least one DNS nameserver"),
    case("dns-four-nameservers", edit(pod(), "spec.dnsConfig", {"nameservers": ["1.1.1.1", "1.1.1.2", "1.1.1.3",
                                                                                "1.1.1.4"]}),
         "spec.dnsConfig.nameservers", "must not have more than 3 nameservers"),
    case("dns-nameserver-not-ip", edit(pod(), "spec.dnsConfig", {"nameservers": ["dns.example"]}),
         "spec.dnsConfig.nameservers[0]", "must be a valid IP address"),
    case("dns-33-searches", edit(pod(), "spec.dnsConfig", {"searches": [f"d{i}.example" for i in range(33)]}),
         "spec.dnsConfig.searches", "must not have more than 32 search paths"),
    case("dns-search-list-too-long", edit(pod(), "spec.dnsConfig",
                                          {"searches": [("x" * 60 + f".{i}.example") for i in range(30)]}),
         "spec.dnsConfig.searches", "must not have more than 2048 characters"),
    case("dns-bad-search", edit(pod(), "spec.dnsConfig", {"searches": ["Not_A.Domain"]}),
         "spec.dnsConfig.searches[0]", "RFC 1123 subdomain"),
    case("dns-option-without-name", edit(pod(), "spec.dnsConfig", {"options": [{"value": "2"}]}),
         "spec.dnsConfig.options[0]", "Option.Name must not be empty"),
    # Containers
    case("no-containers", edit(pod(), "spec.containers", []), "spec.containers", "Required value"),
    case("missing-image", edit(pod(), "spec.containers.1.image", ""), "spec.containers[1].image", "Required value"),
    case("image-whitespace", edit(pod(), "spec.containers.1.image", " busybox"), "spec.containers[1].image",
         "whitespace"),
    case("missing-container-name", edit(pod(), "spec.containers.1.name", ""), "spec.containers[1].name",
         "Required value"),
    case("duplicate-container-name", edit(pod(), "spec.containers.1.name", "web"), "spec.containers[1].name",
         'Duplicate value: "web"'),
    case("container-name-not-label", edit(pod(), "spec.containers.1.name", "side.car"), "spec.containers[1].name",
         "RFC 1123 label"),
    case("bad-pull-policy", edit(pod(), "spec.containers.1.imagePullPolicy", "Sometimes"),
         "spec.containers[1].imagePullPolicy", "Unsupported value"),
    # Ports
    case("container-port-missing", edit(pod(), "spec.containers.0.ports.0", {"name": "http"}),
         "spec.containers[0].ports[0].containerPort", "Required value"),
    case("container-port-too-big", edit(pod(), "spec.containers.0.ports.0.containerPort", 65536),
         "spec.containers[0].ports[0].containerPort", "between 1 and 65535"),
    case("container-port-negative", edit(pod(), "spec.containers.0.ports.0.containerPort", -1),
         "spec.containers[0].ports[0].containerPort", "between 1 and 65535"),
    case("host-port-too-big", edit(pod(), "spec.containers.0.ports.0.hostPort", 70000),
         "spec.containers[0].ports[0].hostPort", "between 1 and 65535"),
    case("bad-protocol", edit(pod(), "spec.containers.0.ports.0.protocol", "HTTP"),
         "spec.containers[0].ports[0].protocol", 'Unsupported value: "HTTP"'),
    case("bad-port-name", edit(pod(), "spec.containers.0.ports.0.name", "HTTP"),
         "spec.containers[0].ports[0].name", "alpha-numeric"),
    case("port-name-too-long", edit(pod(), "spec.containers.0.ports.0.name", "a-very-long-port-name"),
         "spec.containers[0].ports[0].name", "no more than 15"),
    case("port-name-digits-only", edit(pod(), "spec.containers.0.ports.0.name", "8080"),
         "spec.containers[0].ports[0].name", "at least one letter"),
    case("duplicate-port-name", edit(pod(), "spec.containers.0.ports", [
        {"name": "http", "containerPort": 80}, {"name": "http", "containerPort": 81}]),
         "spec.containers[0].ports[1].name", 'Duplicate value: "http"'),
    case("duplicate-host-port-across-containers", edit(pod(), "spec.containers.1.ports",
                                                       [{"containerPort": 9090, "hostPort": 18080}]),
         "spec.containers[1].ports[0].hostPort", 'Duplicate value: "18080/TCP"'),
    case("duplicate-host-port-in-container", edit(pod(), "spec.containers.0.ports", [
        {"containerPort": 80, "hostPort": 8000, "protocol": "UDP"},
        {"containerPort": 81, "hostPort": 8000, "protocol": "UDP"}]),
         "spec.containers[0].ports[1].hostPort", 'Duplicate value: "8000/UDP"'),
    # host_ip/pod_ip: the proto field names, which the JSON mapping accepts beside the JSON ones.
    case("bad-host-ip", edit(pod(), "spec.containers.0.ports.0.host_ip", "localhost"),
         "spec.containers[0].ports[0].hostIP", "valid IP address"),
    # Env
    case("empty-env-name", edit(pod(), "spec.containers.0.env.0.name", ""), "spec.containers[0].env[0].name",
         "Required value"),
    case("env-name-starts-with-digit", edit(pod(), "spec.containers.0.env.0.name", "1MODE"),
         "spec.containers[0].env[0].name", "must not start with a digit"),
    # Volumes and mounts
    case("volume-without-source", edit(pod(), "spec.volumes.0", {"name": "data"}), "spec.volumes[0]",
         "must specify a volume type"),
    case("volume-two-sources",
         edit(pod(), "spec.volumes.0", {"name": "data", "emptyDir": {}, "hostPath": {"path": "/x"}}),
         "spec.volumes[0].hostPath", "may not specify more than 1 volume type"),
    case("duplicate-volume", edit(pod(), "spec.volumes.1.name", "data"), "spec.volumes[1].name",
         'Duplicate value: "data"'),
    case("volume-name-not-label", edit(pod(), "spec.volumes.1.name", "Logs"), "spec.volumes[1].name", "RFC 1123"),
    case("relative-host-path", edit(pod(), "spec.volumes.1.hostPath.path", "var/log"), "spec.volumes[1].hostPath.path",
         "must be an absolute path"),
    case("host-path-missing", edit(pod(), "spec.volumes.1.hostPath", {}), "spec.volumes[1].hostPath.path",
         "Required value"),
    case("host-path-bad-type", edit(pod(), "spec.volumes.1.hostPath.type", "Folder"), "spec.volumes[1].hostPath.type",
         "Unsupported value"),
    case("empty-dir-bad-medium", edit(pod(), "spec.volumes.0.emptyDir", {"medium": "Disk"}),
         "spec.volumes[0].emptyDir.medium", "Unsupported value"),
    case("empty-dir-bad-size", edit(pod(), "spec.volumes.0.emptyDir", {"sizeLimit": "big"}),
         "spec.volumes[0].emptyDir.sizeLimit", "quantities must match"),
    case("mount-unknown-volume", edit(pod(), "spec.containers.0.volumeMounts.0.name", "cache"),
         "spec.containers[0].volumeMounts[0].name", 'Not found: "cache"'),
    case("mount-relative-path", edit(pod(), "spec.containers.0.volumeMounts.0.mountPath", "data"),
         "spec.containers[0].volumeMounts[0].mountPath", "must be an absolute path"),
    case("mount-path-missing", edit(pod(), "spec.containers.0.volumeMounts.0", {"name": "data"}),
         "spec.containers[0].volumeMounts[0].mountPath", "Required value"),
    case("mount-path-twice", edit(pod(), "spec.containers.0.volumeMounts", [
        {"name": "data", "mountPath": "/d"}, {"name": "logs", "mountPath": "/d"}]),
         "spec.containers[0].volumeMounts[1].mountPath", "must be unique"),
    case("mount-sub-path-escapes", edit(pod(), "spec.containers.0.volumeMounts.0.subPath", "../etc"),
         "spec.containers[0].volumeMounts[0].subPath", "'..'"),
    # Probes
    case("probe-without-handler", edit(pod(), "spec.containers.0.livenessProbe", {"periodSeconds": 5}),
         "spec.containers[0].livenessProbe", "must specify a handler type"),
    case("probe-two-handlers", edit(pod(), "spec.containers.0.readinessProbe",
                                    {"exec": {"command": ["true"]}, "tcpSocket": {"port": "8080"}}),
         "spec.containers[0].readinessProbe.tcpSocket", "may not specify more than 1 handler type"),
    case("probe-unknown-port-name", edit(pod(), "spec.containers.0.livenessProbe.httpGet.port", "admin"),
         "spec.containers[0].livenessProbe.httpGet.port", "name of a port of the container"),
    case("probe-port-out-of-range", edit(pod(), "spec.containers.0.readinessProbe.tcpSocket.port", "0"),
         "spec.containers[0].readinessProbe.tcpSocket.port", "between 1 and 65535"),
    case("probe-port-missing", edit(pod(), "spec.containers.0.readinessProbe.tcpSocket", {}),
         "spec.containers[0].readinessProbe.tcpSocket.port", "Required value"),
    case("probe-port-bad-name", edit(pod(), "spec.containers.0.readinessProbe.tcpSocket.port", "Web_Port"),
         "spec.containers[0].readinessProbe.tcpSocket.port", "alpha-numeric"),
    case("probe-negative-timing", edit(pod(), "spec.containers.0.livenessProbe.initialDelaySeconds", -5),
         "spec.containers[0].livenessProbe.initialDelaySeconds", "greater than or equal to 0"),
    case("probe-exec-empty", edit(pod(), "spec.containers.0.livenessProbe", {"exec": {}}),
         "spec.containers[0].livenessProbe.exec.command", "Required value"),
    case("liveness-success-threshold", edit(pod(), "spec.containers.0.livenessProbe.successThreshold", 2),
         "spec.containers[0].livenessProbe.successThreshold", "must be 1"),
    case("probe-bad-scheme", edit(pod(), "spec.containers.0.livenessProbe.httpGet.scheme", "FTP"),
         "spec.containers[0].livenessProbe.httpGet.scheme", "Unsupported value"),
    # Resources
    case("unknown-resource", edit(pod(), "spec.containers.0.resources.limits", {"nvidia.com/gpu": "1"}),
         "spec.containers[0].resources.limits[nvidia.com/gpu]", 'supported values: "cpu"'),
    case("bad-cpu-quantity", edit(pod(), "spec.containers.0.resources.requests.cpu", "half"),
         "spec.containers[0].resources.requests[cpu]", 'Invalid value: "half"'),
    case("negative-memory", edit(pod(), "spec.containers.0.resources.limits.memory", "-64Mi"),
         "spec.containers[0].resources.limits[memory]", "greater than or equal to 0"),
    case("request-over-limit", edit(pod(), "spec.containers.0.resources.requests.memory", "128Mi"),
         "spec.containers[0].resources.requests", "must be less than or equal to memory limit of 64Mi"),
    # Pod-level fields
    case("bad-restart-policy", edit(pod(), "spec.restartPolicy", "Sometimes"), "spec.restartPolicy",
         'Unsupported value: "Sometimes": supported values: "Always", "Never", "OnFailure"'),
    case("negative-grace-period", edit(pod(), "spec.terminationGracePeriodSeconds", -1),
         "spec.terminationGracePeriodSeconds", "greater than or equal to 0"),
    case("bad-node-selector", edit(pod(), "spec.nodeSelector", {"disk": "fast ssd"}), "spec.nodeSelector[disk]",
         "Invalid value"),
    case("bad-node-name", edit(pod(), "spec.nodeName", "Node_1"), "spec.nodeName", "RFC 1123 subdomain"),
    case("bad-phase", edit(pod(), "status", {"phase": "Sleeping"}), "status.phase", "Unsupported value"),
    case("bad-pod-ip", edit(pod(), "status", {"pod_ip": "10.0.0.300"}), "status.podIP", "valid IP address"),
    # Services
    case("service-name-starts-with-digit", edit(service(), "metadata.name", "1frontend"), "metadata.name",
         "DNS-1035 label"),
    case("service-name-dotted", edit(service(), "metadata.name", "front.end"), "metadata.name", "DNS-1035"),
    case("service-no-ports", edit(service(), "spec.ports", []), "spec.ports", "Required value"),
    case("service-port-zero", edit(service(), "spec.ports.0.port", 0), "spec.ports[0].port", "between 1 and 65535"),
    case("service-port-too-big", edit(service(), "spec.ports.1.port", 65536), "spec.ports[1].port",
         "between 1 and 65535"),
    case("service-unnamed-port-among-two", edit(service(), "spec.ports.1.name", ""), "spec.ports[1].name",
         "Required value"),
    case("service-duplicate-port-name", edit(service(), "spec.ports.1.name", "http"), "spec.ports[1].name",
         'Duplicate value: "http"'),
    case("service-duplicate-port", edit(service(), "spec.ports.1", {"name": "alt", "port": 80}), "spec.ports[1]",
         'Duplicate value: "80/TCP"'),
    case("service-bad-port-name", edit(service(), "spec.ports.0.name", "HTTP"), "spec.ports[0].name", "RFC 1123"),
    case("service-target-port-range", edit(service(), "spec.ports.1.targetPort", "70000"),
         "spec.ports[1].targetPort", "between 1 and 65535"),
    case("service-target-port-name", edit(service(), "spec.ports.0.targetPort", "web--port"),
         "spec.ports[0].targetPort", "consecutive hyphens"),
    case("service-sctp", edit(service(), "spec.ports.1.protocol", "SCTP"), "spec.ports[1].protocol",
         'Unsupported value: "SCTP": supported values: "TCP", "UDP"'),
    case("service-affinity", edit(service(), "spec.sessionAffinity", "Sticky"), "spec.sessionAffinity",
         "Unsupported value"),
    case("service-type", edit(service(), "spec.type", "LoadBalancer"), "spec.type",
         'Unsupported value: "LoadBalancer": supported values: "ClusterIP", "NodePort"'),
    case("service-node-port-on-cluster-ip", edit(service(), "spec.ports.0.nodePort", 30080), "spec.ports[0].nodePort",
         "may not be used when `type` is 'ClusterIP'"),
    case("service-bad-selector", edit(service(), "spec.selector", {"app": "-web"}), "spec.selector[app]",
         "Invalid value"),
    case("service-bad-cluster-ip", edit(service(), "spec.clusterIP", "10.0.0"), "spec.clusterIP", "valid IP"),
    case("service-cluster-ip-none-lowercase", edit(service(), "spec.clusterIP", "none"), "spec.clusterIP",
         "valid IP"),
    case("service-headless-node-port-type", edit(edit(service(), "spec.clusterIP", "None"), "spec.type", "NodePort"),
         "spec.clusterIP", """Invalid value: "None": may not be set to 'None' for NodePort services"""),
    case("service-headless-with-node-port", edit(edit(service(), "spec.clusterIP", "None"), "spec.ports.0.nodePort",
                                                 30080), "spec.ports[0].nodePort", "may not be used when `type`"),
    case("service-node-port-too-big", edit(edit(service(), "spec.type", "NodePort"), "spec.ports.0.nodePort",
                                              70000), "spec.ports[0].nodePort", "between 1 and 65535"),
    case("service-duplicate-node-port",
         edit(edit(edit(edit(service(), "spec.type", "NodePort"), "spec.ports.1.protocol", "TCP"),
                   "spec.ports.0.nodePort", 30080), "spec.ports.1.nodePort", 30080),
         "spec.ports[1].nodePort", "Duplicate value: 30080"),
    # Endpoints
    case("endpoints-bad-ip", edit(endpoints(), "subsets.0.addresses.1.ip", "fd00::zz"), "subsets[0].addresses[1].ip",
         "valid IP address"),
    case("endpoints-missing-ip", edit(endpoints(), "subsets.0.notReadyAddresses.0", {"hostname": "x"}),
         "subsets[0].notReadyAddresses[0].ip", "Required value"),
    case("endpoints-port-range", edit(endpoints(), "subsets.0.ports.1.port", 0), "subsets[0].ports[1].port",
         "between 1 and 65535"),
    case("endpoints-no-addresses",
         edit(edit(endpoints(), "subsets.0.addresses", []), "subsets.0.notReadyAddresses", []),
         "subsets[0]", "must specify `addresses` or `notReadyAddresses`"),
    case("endpoints-no-ports", edit(endpoints(), "subsets.0.ports", []), "subsets[0].ports", "Required value"),
    case("endpoints-duplicate-port-name", edit(endpoints(), "subsets.0.ports.1.name", "http"),
         "subsets[0].ports[1].name", "Duplicate value"),
    case("endpoints-bad-name", edit(endpoints(), "metadata.name", "Frontend"), "metadata.name", "RFC 1123"),
    # Replication controllers
    case("rc-negative-replicas", edit(replication_controller(), "spec.replicas", -1), "spec.replicas",
         "Invalid value: -1: must be greater than or equal to 0"),
    case("rc-empty-selector", edit(replication_controller(), "spec.selector", {}), "spec.selector", "Required value"),
    case("rc-bad-selector", edit(replication_controller(), "spec.selector", {"app": "web!"}), "spec.selector[app]",
         "Invalid value"),
    case("rc-no-template", edit(replication_controller(), "spec.template", DELETE), "spec.template", "Required value"),
    case("rc-selector-mismatch", edit(replication_controller(), "spec.selector", {"app": "api"}),
         "spec.template.metadata.labels", "selector does not match template labels"),
    case("rc-selector-key-missing", edit(replication_controller(), "spec.selector", {"app": "web", "track": "stable"}),
         "spec.template.metadata.labels", "selector does not match template labels"),
    case("rc-template-bad-label", edit(replication_controller(), "spec.template.metadata.labels",
                                       {"app": "web", "bad key": "x"}),
         "spec.template.metadata.labels", '"bad key"'),
    case("rc-template-restart-never", edit(replication_controller(), "spec.template.spec.restartPolicy", "Never"),
         "spec.template.spec.restartPolicy", 'Unsupported value: "Never": supported values: "Always"'),
    case("rc-template-missing-image", edit(replication_controller(), "spec.template.spec.containers.0.image", ""),
         "spec.template.spec.containers[0].image", "Required value"),
    case("rc-template-port", edit(replication_controller(), "spec.template.spec.containers.0.ports.0.containerPort",
                                  0), "spec.template.spec.containers[0].ports[0].containerPort", "Required value"),
    case("rc-bad-name", edit(replication_controller(), "metadata.name", "Web"), "metadata.name", "RFC 1123"),
    case("rc-negative-status", edit(replication_controller(), "status", {"replicas": -1}), "status.replicas",
         "greater than or equal to 0"),
    # Nodes
    case("node-bad-name", edit(node(), "metadata.name", "Node_1"), "metadata.name", "RFC 1123 subdomain"),
    case("node-with-namespace", edit(node(), "metadata.namespace", "default"), "metadata.namespace",
         "Forbidden: not allowed on this type"),
    case("node-bad-cidr", edit(node(), "spec.podCIDR", "10.244.1.0/33"), "spec.podCIDR", "valid CIDR"),
    case("node-bad-capacity", edit(node(), "status.capacity.memory", "24 GB"), "status.capacity[memory]",
         "quantities must match"),
    case("node-bad-address", edit(node(), "status.addresses.0.address", "ten.zero"), "status.addresses[0].address",
         "valid IP address"),
    case("node-bad-kubelet-port", edit(node(), "status.daemonEndpoints.kubeletEndpoint.Port", 99999),
         "status.daemonEndpoints.kubeletEndpoint.Port", "between 1 and 65535"),
]


@pytest.mark.parametrize(("manifest", "path", "reason"), INVALID_MANIFESTS)
def test_invalid_manifest_names_field(manifest: dict[str, Any], path: str, reason: str) -> None:
    errors = validate(load(manifest))
    assert errors, "expected a validation error"
    at_path = [e for e in errors if e.path == path]
    assert at_path, f"no error at {path}; got {[str(e) for e in errors]}"
    assert any(reason in e.reason for e in at_path), [str(e) for e in at_path]


def test_kind_must_match_the_message() -> None:
    pod_saying_service = load(pod())
    pod_saying_service.kind = "Service"
    errors = validate(pod_saying_service)
    assert [str(e) for e in errors] == ['kind: Unsupported value: "Service": supported values: "Pod"']


def test_error_string_is_path_then_reason() -> None:
    errors = validate(load(edit(pod(), "spec.containers.1.image", "")))
    assert [str(e) for e in errors] == ["spec.containers[1].image: Required value"]
    assert errors == [FieldError("spec.containers[1].image", "Required value")]


def test_every_problem_is_reported_not_just_the_first() -> None:
    manifest = edit(edit(edit(pod(), "metadata.name", "Bad"), "spec.restartPolicy", "Nope"),
                    "spec.containers.0.ports.0.containerPort", 0)
    paths = {e.path for e in validate(load(manifest))}
    assert {"metadata.name", "spec.restartPolicy", "spec.containers[0].ports[0].containerPort"} <= paths


def test_rc_without_selector_is_valid_once_defaulted() -> None:
    manifest = edit(replication_controller(), "spec.selector", DELETE)
    rc = load(manifest)
    assert [e.path for e in validate(rc)] == ["spec.selector"]
    assert validate(apply_defaults(rc)) == []


def test_validate_pod_spec_uses_given_path() -> None:
    spec = json_format.ParseDict({"containers": [{"name": "c"}]}, pod_pb2.PodSpec())
    assert [str(e) for e in validate_pod_spec(spec, "spec.template.spec")] == [
        "spec.template.spec.containers[0].image: Required value"
    ]


def test_validate_object_meta_cluster_scoped_and_custom_path() -> None:
    meta = meta_pb2.ObjectMeta(name="x", namespace="default")
    assert [e.path for e in validate_object_meta(meta, namespaced=True)] == []
    assert [e.path for e in validate_object_meta(meta, namespaced=False, path="spec.template.metadata")] == [
        "spec.template.metadata.namespace"
    ]


def test_validate_rejects_non_api_messages() -> None:
    with pytest.raises(TypeError):
        validate(pod_pb2.PodSpec())


def test_unknown_manifest_field_is_not_silently_accepted() -> None:
    # Guards the premise of these tests: the JSON mapping refuses what the API does not have.
    with pytest.raises(json_format.ParseError, match="shareProcessNamespace"):
        load(edit(pod(), "spec.shareProcessNamespace", True))



# -- hostile input: quoted values are cut, not echoed whole ---------------------------


def test_a_huge_value_is_quoted_cut_with_how_much_was_left_out() -> None:
    from services.common.validation import MAX_SHOWN_VALUE, show_value

    huge = "A" * 100_000
    shown = show_value(huge)
    assert shown.startswith('"' + "A" * MAX_SHOWN_VALUE + '"')
    assert shown.endswith(f"…({100_000 - MAX_SHOWN_VALUE} more characters)")
    assert len(shown) < MAX_SHOWN_VALUE + 40
    assert show_value("web") == '"web"'
    assert show_value({"k": "v" * 1000}).endswith("more characters)")


def test_a_huge_bad_name_gives_a_short_error_naming_the_field() -> None:
    errors = validate_object_meta(meta_pb2.ObjectMeta(name="x" * 100_000), namespaced=True)
    assert [e.path for e in errors] == ["metadata.name"]
    assert len(str(errors[0])) < 1024 and "more characters" in str(errors[0])


def test_a_bad_generate_name_is_reported_as_sent() -> None:
    errors = validate_object_meta(meta_pb2.ObjectMeta(generate_name="Bad_Prefix-"), namespaced=True)
    assert [e.path for e in errors] == ["metadata.generateName"]
    assert '"Bad_Prefix-"' in str(errors[0])
