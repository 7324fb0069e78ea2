"""The REST API's JSON (services/apiserver/rest/jsonconv.py), Status mapping and routes: every
kind's message with every field set survives the round trip, and the shapes are Kubernetes'."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import meta_pb2, node_pb2, pod_pb2, replication_controller_pb2, service_pb2
from services.apiserver.errors import ApiError
from services.apiserver.rest.jsonconv import (
    ALWAYS_WRITTEN,
    INT_OR_STRING,
    STRING_INT64,
    JsonDecodeError,
    event_to_json,
    json_to_message,
    list_to_json,
    object_to_json,
)
from services.apiserver.rest.routes import PathError, Router
from services.apiserver.rest.status import causes_of, from_api_error
from services.common.resources import ALL_KINDS, NODES, PODS, ROLES, SERVICES, Kind

_TIMESTAMP = Timestamp.DESCRIPTOR.full_name


def _scalar(field: FieldDescriptor, index: int) -> Any:
    if field.full_name in INT_OR_STRING:
        return "8080" if index == 0 else "http"
    if field.type == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{index}"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"\x00bytes"
    return 7 + index  # every integer type


def _fill(message: Any, depth: int = 0) -> Any:
    """Every field of message set (repeated ones twice), to a value that is not the default."""
    descriptor: Descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            target = getattr(message, field.name)
            for index in range(2):
                if value_field.message_type is None:
                    target[f"key-{index}"] = _scalar(value_field, index)
                else:
                    _fill(target[f"key-{index}"], depth + 1)
        elif field.message_type is not None:
            if field.message_type.full_name == _TIMESTAMP:
                stamps = [Timestamp(seconds=1_796_299_200 + i) for i in range(2)]
                if field.is_repeated:
                    getattr(message, field.name).extend(stamps)
                else:
                    getattr(message, field.name).CopyFrom(stamps[0])
            elif depth < 8:
                if field.is_repeated:
                    for _ in range(2):
                        _fill(getattr(message, field.name).add(), depth + 1)
                else:
                    _fill(getattr(message, field.name), depth + 1)
        elif field.is_repeated:
            getattr(message, field.name).extend(_scalar(field, i) for i in range(2))
        else:
            setattr(message, field.name, _scalar(field, 0))
    return message


def _full(kind: Kind) -> Any:
    obj = _fill(kind.message())
    obj.api_version, obj.kind = kind.api_version, kind.name
    return obj


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.name)
def test_every_kind_round_trips_with_every_field(kind: Kind) -> None:
    obj = _full(kind)
    document = json.loads(json.dumps(object_to_json(kind, obj)))
    assert document["apiVersion"] == kind.api_version and document["kind"] == kind.name
    back, unknown = json_to_message(kind.message, document)
    assert unknown == []
    assert back == obj


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.name)
def test_every_kind_list_and_event(kind: Kind) -> None:
    listed = kind.list_message(metadata=meta_pb2.ListMeta(resource_version=42, continue_token="tok"))
    listed.items.append(_full(kind))
    document = list_to_json(kind, listed)
    assert document["apiVersion"] == kind.api_version and document["kind"] == f"{kind.name}List"
    assert document["metadata"] == {"resourceVersion": "42", "continue": "tok"}
    assert document["items"][0]["kind"] == kind.name
    empty = list_to_json(kind, kind.list_message(metadata=meta_pb2.ListMeta(resource_version=5)))
    assert empty["items"] == []  # always there: the Python client requires it
    event = event_to_json(kind, kind.event_message(type="MODIFIED", object=_full(kind)))
    assert event["type"] == "MODIFIED" and event["object"]["kind"] == kind.name


def test_kubernetes_shapes() -> None:
    pod = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(
        name="p", namespace="ns", resource_version=123, generation=4,
        creation_timestamp=Timestamp(seconds=1_796_299_200), deletion_grace_period_seconds=30,
    ))
    container = pod.spec.containers.add(name="c", image="i")
    container.resources.requests["cpu"] = "100m"
    container.readiness_probe.http_get.port = "8080"
    container.liveness_probe.tcp_socket.port = "http"
    status = pod.status.container_statuses.add(name="c", image="i")
    document = object_to_json(PODS, pod)
    meta = document["metadata"]
    assert meta["resourceVersion"] == "123"  # a string
    assert meta["generation"] == 4 and meta["deletionGracePeriodSeconds"] == 30  # int64 as numbers
    assert meta["creationTimestamp"] == "2026-12-03T12:00:00Z"  # RFC 3339
    spec = document["spec"]["containers"][0]
    assert spec["resources"] == {"requests": {"cpu": "100m"}}  # quantities as strings
    assert spec["readinessProbe"]["httpGet"]["port"] == 8080  # int-or-string: a number
    assert spec["livenessProbe"]["tcpSocket"]["port"] == "http"  # ... or a name
    # Required by Kubernetes' schema: written at their zero value.
    assert document["status"]["containerStatuses"][0] == {
        "name": "c", "image": "i", "imageID": "", "ready": False, "restartCount": 0,
    }
    assert status.ready is False
    assert "deletionTimestamp" not in meta  # unset stays absent: kubectl reads its presence


def test_service_target_port_and_node_extras() -> None:
    service = service_pb2.Service(metadata=meta_pb2.ObjectMeta(name="s"))
    service.spec.ports.add(port=80, target_port="8080")
    service.spec.ports.add(port=81, target_port="web")
    ports = object_to_json(SERVICES, service)["spec"]["ports"]
    assert [p["targetPort"] for p in ports] == [8080, "web"]
    node = node_pb2.Node(metadata=meta_pb2.ObjectMeta(name="n"))
    node.status.node_info.kubelet_version = "v1"
    node.status.capacity["cpu"] = "2"
    document = object_to_json(NODES, node)
    assert document["status"]["nodeInfo"]["bootID"] == ""  # what the Python client requires
    assert document["status"]["capacity"] == {"cpu": "2"}
    back, unknown = json_to_message(NODES.message, document)  # and read back, dropped
    assert unknown == [] and back.status.node_info.kubelet_version == "v1"


def test_reading_kubernetes_json() -> None:
    document = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "resourceVersion": "17", "labels": {"a": "b"}},
        "spec": {"containers": [{
            "name": "c", "image": "i", "resources": {"limits": {"cpu": 1, "memory": "64Mi"}},
            "livenessProbe": {"httpGet": {"port": 8080}}, "ports": [{"containerPort": 80}],
        }], "nodeName": None},
    }
    pod, _ = json_to_message(pod_pb2.Pod, document)
    assert pod.metadata.resource_version == 17
    assert pod.spec.containers[0].resources.limits["cpu"] == "1"  # a number quantity
    assert pod.spec.containers[0].liveness_probe.http_get.port == "8080"
    rc, _ = json_to_message(replication_controller_pb2.ReplicationController, {"spec": {"replicas": 0}})
    assert rc.spec.HasField("replicas") and rc.spec.replicas == 0


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"spec": {"containers": [{"name": "c", "imagePullSecretz": "x"}]}}, "spec.containers[0].imagePullSecretz"),
        ({"metadata": {"resource_version": "1"}}, "metadata.resource_version"),  # proto names are not JSON's
        ({"metadata": {"resourceVersion": 1}}, "metadata.resourceVersion"),  # a string in Kubernetes
        ({"metadata": {"labels": {"a": 1}}}, "metadata.labels[a]"),
        ({"spec": {"containers": {"name": "c"}}}, "spec.containers"),
        ({"spec": {"terminationGracePeriodSeconds": "30"}}, "spec.terminationGracePeriodSeconds"),
        ({"metadata": {"creationTimestamp": "yesterday"}}, "metadata.creationTimestamp"),
    ],
)
def test_bad_documents_name_the_field(document: dict[str, Any], path: str) -> None:
    with pytest.raises(JsonDecodeError) as raised:
        json_to_message(pod_pb2.Pod, document)
    assert raised.value.path == path


def test_unknown_fields_dropped_when_not_strict() -> None:
    pod, unknown = json_to_message(
        pod_pb2.Pod, {"metadata": {"name": "p", "x": 1}, "spec": {"containers": [{"name": "c", "y": 2}]}}, False
    )
    assert unknown == ["metadata.x", "spec.containers[0].y"]
    assert pod.metadata.name == "p"


def test_tables_name_fields_that_exist() -> None:
    for name in (*STRING_INT64, *INT_OR_STRING, *ALWAYS_WRITTEN):
        assert "." in name  # checked against the descriptors at import (jsonconv._check_tables)


# -- Status ------------------------------------------------------------------------------


def test_invalid_becomes_422_with_causes() -> None:
    error = ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        'Pod "p" is invalid: spec.containers[0].image: Required value; metadata.labels[a/b]: Invalid value: "x": bad',
    )
    status = from_api_error(error, kind="Pod", name="p", write=True)
    assert status.code == 422 and status.reason == "Invalid"
    body = status.body()
    assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == 422
    assert body["details"]["causes"] == [
        {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers[0].image"},
        {"reason": "FieldValueInvalid", "message": 'Invalid value: "x": bad', "field": "metadata.labels[a/b]"},
    ]
    assert causes_of("no fields here") == []


@pytest.mark.parametrize(
    ("code", "http", "reason"),
    [
        (grpc.StatusCode.NOT_FOUND, 404, "NotFound"),
        (grpc.StatusCode.ALREADY_EXISTS, 409, "AlreadyExists"),
        (grpc.StatusCode.ABORTED, 409, "Conflict"),
        (grpc.StatusCode.PERMISSION_DENIED, 403, "Forbidden"),
        (grpc.StatusCode.UNAUTHENTICATED, 401, "Unauthorized"),
        (grpc.StatusCode.OUT_OF_RANGE, 410, "Expired"),
        (grpc.StatusCode.FAILED_PRECONDITION, 409, "Conflict"),
        (grpc.StatusCode.UNAVAILABLE, 503, "ServiceUnavailable"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "TooManyRequests"),
        (grpc.StatusCode.INVALID_ARGUMENT, 400, "BadRequest"),
    ],
)
def test_codes(code: grpc.StatusCode, http: int, reason: str) -> None:
    status = from_api_error(ApiError(code, "something"), kind="pods", name="p")
    assert (status.code, status.reason) == (http, reason)
    assert status.body()["details"] == {"name": "p", "kind": "pods"}


def test_too_large_request_is_413() -> None:
    status = from_api_error(ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "request: 2.0 MiB is more than ..."))
    assert (status.code, status.reason) == (413, "RequestEntityTooLarge")


# -- routes ------------------------------------------------------------------------------


def test_routes_from_the_kinds_table() -> None:
    router = Router()
    assert {gv.name for gv in router.versions} == {"v1", "rbac.authorization.k8s.io/v1", "coordination.k8s.io/v1"}
    target = router.resolve("/api/v1/namespaces/ns/pods/p/status")
    assert (target.kind, target.namespace, target.name, target.subresource) == (PODS, "ns", "p", "status")
    target = router.resolve("/api/v1/pods")
    assert (target.kind, target.namespace, target.name) == (PODS, "", "")
    target = router.resolve("/api/v1/namespaces/ns")  # the namespace itself
    assert (target.kind.name, target.name) == ("Namespace", "ns")
    target = router.resolve("/api/v1/namespaces/ns/status")
    assert (target.kind.name, target.name, target.subresource) == ("Namespace", "ns", "status")
    target = router.resolve("/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles/r")
    assert (target.kind, target.namespace, target.name, target.api_group) == (ROLES, "ns", "r",
                                                                              "rbac.authorization.k8s.io")
    for path in ("/api/v1/namespaces/ns/nodes", "/api/v2/pods", "/apis/rbac.authorization.k8s.io/v1/pods",
                 "/api/v1/namespaces/ns/pods/p/status/x", "/api/v1/widgets", "/"):
        with pytest.raises(PathError):
            router.resolve(path)


def test_shared_watch_lines_are_bounded() -> None:
    from services.apiserver.rest.watch import _SharedLines

    shared = _SharedLines(1000)
    events = [bytes([i]) * 100 for i in range(20)]
    for data in events:
        shared.put(PODS, data, b"x" * 50)
    assert shared.size <= 1000
    assert shared.get(PODS, events[-1]) == b"x" * 50 and shared.get(PODS, events[0]) is None
    assert shared.get(SERVICES, events[-1]) is None  # by kind too
    shared.put(PODS, b"big" * 200, b"y")  # more than a quarter of the limit: not kept
    assert shared.get(PODS, b"big" * 200) is None


def _keys(value: Any) -> Any:
    """A document's shape: its keys, nested, and its lists' lengths (not the leaves)."""
    if isinstance(value, dict):
        return {key: _keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_keys(item) for item in value]
    return None


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.name)
def test_writer_emits_what_protobufs_json_mapping_does(kind: Kind) -> None:
    """The descriptor-driven writer has the fields protobuf's own JSON mapping has, by the same
    names, for an object with every field set (Kubernetes' output-only extras aside); leaves are
    test_kubernetes_shapes' and the round trip's."""
    from google.protobuf import json_format

    from services.apiserver.rest.jsonconv import OUTPUT_ONLY_EXTRAS

    obj = _full(kind)
    ours = object_to_json(kind, obj)
    theirs = json_format.MessageToDict(obj)

    def without_extras(document: Any) -> Any:
        if isinstance(document, dict):
            extras = {key for names in OUTPUT_ONLY_EXTRAS.values() for key in names}
            return {k: without_extras(v) for k, v in document.items() if k not in extras}
        if isinstance(document, list):
            return [without_extras(item) for item in document]
        return document

    assert _keys(without_extras(ours)) == _keys(theirs)
    assert json.loads(json.dumps(ours)) == ours
