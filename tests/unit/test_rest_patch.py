"""The REST API's PATCH (merge, JSON and strategic merge patch), scale and Table printing, on JSON
documents: no server."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from kybernetes.v1 import meta_pb2, pod_pb2, replication_controller_pb2, service_pb2
from services.apiserver.rest.jsonconv import JsonDecodeError, json_to_message, object_to_json
from services.apiserver.rest.patch import (
    JSON_PATCH,
    MERGE_KEYS,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    PatchError,
    apply_patch,
    merge_patch,
    sets_resource_version,
    strategic_merge,
)
from services.apiserver.rest.scale import read_scale, scalable, scale_of
from services.apiserver.rest.table import COLUMNS, list_table, table, wants_table
from services.common.resources import ALL_KINDS, PODS, REPLICATION_CONTROLLERS, SERVICES

POD = pod_pb2.Pod.DESCRIPTOR
SERVICE = service_pb2.Service.DESCRIPTOR


def pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}, "finalizers": ["a"],
                     "ownerReferences": [{"apiVersion": "v1", "kind": "ReplicationController", "name": "rc",
                                          "uid": "u1"}]},
        "spec": {
            "containers": [
                {"name": "web", "image": "web:1", "ports": [{"containerPort": 80, "name": "http"}],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}], "args": ["x", "y"]},
                {"name": "side", "image": "side:1"},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
        "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Initialized", "status": "True"}]},
    }


def test_lists_merge_by_their_keys() -> None:
    patch = {"spec": {"containers": [
        {"name": "web", "image": "web:2", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
         "ports": [{"containerPort": 443}]},
        {"name": "new", "image": "new:1"},
    ]}}
    got = strategic_merge(pod(), patch, POD)
    web, side, new = got["spec"]["containers"]
    assert (web["image"], side["image"], new["image"]) == ("web:2", "side:1", "new:1")
    assert web["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}]
    assert web["ports"] == [{"containerPort": 80, "name": "http"}, {"containerPort": 443}]
    assert web["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]


def test_lists_without_a_key_are_replaced_and_scalar_merge_lists_unioned() -> None:
    got = strategic_merge(pod(), {"spec": {"containers": [{"name": "web", "args": ["z"]}]},
                                  "metadata": {"finalizers": ["b", "a"]}}, POD)
    assert got["spec"]["containers"][0]["args"] == ["z"]
    assert got["metadata"]["finalizers"] == ["a", "b"]
    got = strategic_merge(pod(), {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}, POD)
    assert got["metadata"]["finalizers"] == []


def test_status_conditions_owner_references_and_service_ports() -> None:
    got = strategic_merge(pod(), {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, POD)
    assert got["status"]["conditions"] == [{"type": "Ready", "status": "True"}, {"type": "Initialized",
                                                                                  "status": "True"}]
    got = strategic_merge(pod(), {"metadata": {"ownerReferences": [{"uid": "u2", "name": "other"}]}}, POD)
    assert [ref["uid"] for ref in got["metadata"]["ownerReferences"]] == ["u1", "u2"]
    service = {"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}}
    got = strategic_merge(service, {"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}, SERVICE)
    assert got["spec"]["ports"] == [{"port": 80, "targetPort": 9090}, {"port": 443}]


def test_null_deletes_and_directives() -> None:
    got = strategic_merge(pod(), {"metadata": {"labels": {"tier": None}}, "status": None}, POD)
    assert got["metadata"]["labels"] == {"app": "web"} and "status" not in got
    # $patch: delete on a list item removes it by its key; on a map, the map.
    got = strategic_merge(pod(), {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}, POD)
    assert [c["name"] for c in got["spec"]["containers"]] == ["web"]
    got = strategic_merge(pod(), {"spec": {"volumes": [{"name": "data", "emptyDir": {"$patch": "delete"}}]}}, POD)
    assert got["spec"]["volumes"] == [{"name": "data"}]
    # $patch: replace on a map: the map as the patch has it; in a keyed list: the list as it has it.
    got = strategic_merge(pod(), {"metadata": {"labels": {"only": "this", "$patch": "replace"}}}, POD)
    assert got["metadata"]["labels"] == {"only": "this"}
    got = strategic_merge(pod(), {"spec": {"containers": [{"name": "x", "image": "x:1"}, {"$patch": "replace"}]}},
                          POD)
    assert got["spec"]["containers"] == [{"name": "x", "image": "x:1"}]
    # $retainKeys: what is not named goes (a volume's source switched).
    got = strategic_merge(pod(), {"spec": {"volumes": [
        {"name": "data", "hostPath": {"path": "/d"}, "$retainKeys": ["name", "hostPath"]}]}}, POD)
    assert got["spec"]["volumes"] == [{"name": "data", "hostPath": {"path": "/d"}}]
    # $setElementOrder orders the merged list (test_rest_element_order.py has the details).
    got = strategic_merge(pod(), {"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "web"}]}}, POD)
    assert [c["name"] for c in got["spec"]["containers"]] == ["side", "web"]


@pytest.mark.parametrize("patch, words", [
    ({"spec": {"containers": [{"image": "x"}]}}, "merge key 'name'"),
    ({"spec": {"containers": ["web"]}}, "merge key"),
    ({"metadata": {"$patch": "explode"}}, "unknown patch directive"),
    ({"$bogus": 1}, "unknown patch directive"),
    ({"spec": {"containers": [{"name": "web", "args": [{"$patch": "delete"}]}]}}, "without a merge key"),
])
def test_malformed_strategic_patches(patch: dict[str, Any], words: str) -> None:
    with pytest.raises(PatchError) as raised:
        strategic_merge(pod(), patch, POD)
    assert raised.value.code == 400 and words in str(raised.value)


def test_the_original_is_not_changed() -> None:
    original = pod()
    strategic_merge(original, {"spec": {"containers": [{"name": "web", "image": "web:9"}]},
                               "metadata": {"labels": {"app": None}}}, POD)
    assert original == pod()
    apply_patch(MERGE_PATCH, original, {"metadata": {"labels": None}}, POD)
    apply_patch(JSON_PATCH, original, [{"op": "remove", "path": "/metadata/labels"}], POD)
    assert original == pod()


def test_merge_patch_is_rfc_7386() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"b": None, "d": 3}, "l": [3]}) == {
        "a": {"c": 2, "d": 3}, "l": [3]}
    assert merge_patch({"a": 1}, {"a": {"b": None}}) == {"a": {}}


def test_json_patch_errors() -> None:
    document = pod()
    assert apply_patch(JSON_PATCH, document, [{"op": "add", "path": "/metadata/labels/x", "value": "y"}],
                       POD)["metadata"]["labels"]["x"] == "y"
    for patch, code in (
        ({"op": "add"}, 400),  # not a list
        ([{"op": "frobnicate", "path": "/a"}], 400),
        ([{"path": "/a"}], 400),
        ([{"op": "remove", "path": "/no/such"}], 422),
        ([{"op": "test", "path": "/metadata/name", "value": "other"}], 422),
    ):
        with pytest.raises(PatchError) as raised:
            apply_patch(JSON_PATCH, document, patch, POD)
        assert raised.value.code == code, patch
    with pytest.raises(PatchError):
        apply_patch(STRATEGIC_MERGE_PATCH, document, [1], POD)


def test_patched_pod_decodes_strictly() -> None:
    patched = apply_patch(STRATEGIC_MERGE_PATCH, pod(), {"spec": {"containers": [{"name": "web", "imagez": "x"}]}},
                          POD)
    with pytest.raises(JsonDecodeError) as raised:
        json_to_message(pod_pb2.Pod, patched, True)
    assert raised.value.path == "spec.containers[0].imagez"


def test_resource_version_in_the_patch() -> None:
    assert sets_resource_version(MERGE_PATCH, {"metadata": {"resourceVersion": "5"}})
    assert not sets_resource_version(STRATEGIC_MERGE_PATCH, {"metadata": {"labels": {}}})
    assert sets_resource_version(JSON_PATCH, [{"op": "replace", "path": "/metadata/resourceVersion", "value": "5"}])


def test_merge_keys_name_repeated_message_fields() -> None:
    assert "kybernetes.v1.PodSpec.containers" in MERGE_KEYS


def test_scale_of_a_replication_controller() -> None:
    assert [kind.name for kind in ALL_KINDS if scalable(kind)] == [REPLICATION_CONTROLLERS.name]
    rc = replication_controller_pb2.ReplicationController(
        metadata=meta_pb2.ObjectMeta(name="web", namespace="ns", resource_version=7),
        spec=replication_controller_pb2.ReplicationControllerSpec(replicas=3, selector={"b": "2", "a": "1"}),
        status=replication_controller_pb2.ReplicationControllerStatus(replicas=2),
    )
    scale = scale_of(rc)
    assert scale["apiVersion"] == "autoscaling/v1" and scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 3} and scale["status"] == {"replicas": 2, "selector": "a=1,b=2"}
    assert scale["metadata"]["resourceVersion"] == "7"
    assert read_scale(merge_patch(scale, {"spec": {"replicas": 5}})) == (5, 7)
    for bad in ({"spec": {"replicas": -1}}, {"spec": {"replicas": "2"}}, {"spex": {}}):
        with pytest.raises(JsonDecodeError):
            read_scale(bad)


@pytest.mark.parametrize("accept, wanted", [
    ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
     "application/json", True),
    ("application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json", False),
    ("application/json", False),
    ("", False),
    ("application/json, application/json;as=Table;v=v1;g=meta.k8s.io", False),
])
def test_wants_table(accept: str, wanted: bool) -> None:
    assert wants_table(accept) is wanted


def test_pod_table_has_kubectls_columns() -> None:
    created = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    item = json_to_message(pod_pb2.Pod, {
        "metadata": {"name": "web", "namespace": "ns", "resourceVersion": "4",
                     "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ")},
        "spec": {"containers": [{"name": "c", "image": "i"}], "nodeName": "n1"},
        "status": {"phase": "Running", "podIP": "10.0.0.5",
                   "containerStatuses": [{"name": "c", "ready": True, "restartCount": 2, "image": "i",
                                          "state": {"running": {}}}]},
    }, True)[0]
    listed = PODS.list_message(metadata=meta_pb2.ListMeta(resource_version=9), items=[item])
    document = list_table(PODS, listed, "Metadata")
    assert document["kind"] == "Table" and document["apiVersion"] == "meta.k8s.io/v1"
    assert document["metadata"] == {"resourceVersion": "9"}
    names = [(c["name"], c["priority"]) for c in document["columnDefinitions"]]
    assert names == [("Name", 0), ("Ready", 0), ("Status", 0), ("Restarts", 0), ("Age", 0), ("IP", 1), ("Node", 1),
                     ("Nominated Node", 1), ("Readiness Gates", 1)]
    row = document["rows"][0]
    assert row["cells"] == ["web", "1/1", "Running", "2", "5m", "10.0.0.5", "n1", "<none>", "<none>"]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["namespace"] == "ns" and row["object"]["metadata"]["resourceVersion"] == "4"
    assert table(PODS, [item], "Object")["rows"][0]["object"] == object_to_json(PODS, item)
    assert "object" not in table(PODS, [item], "None")["rows"][0]


def test_every_kind_has_columns_and_renders_an_empty_object() -> None:
    for kind in ALL_KINDS:
        document = table(kind, [kind.message()], "Metadata")
        names = [c["name"] for c in document["columnDefinitions"]]
        # kubectl's event columns have the name last, in -o wide only; every other kind's first.
        assert names.index("Name") == (len(names) - 1 if kind.name == "Event" else 0)
        assert len(document["rows"][0]["cells"]) == len(document["columnDefinitions"])
    assert [c.name for c in COLUMNS[SERVICES.name]] == ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age",
                                                         "Selector"]


def test_openapi_v3_tells_kubectl_the_server_validates() -> None:
    from services.apiserver.rest.openapi import OpenApi
    from services.apiserver.rest.routes import group_versions

    spec = OpenApi(group_versions())
    root = spec.get("/openapi/v3")
    assert root is not None
    url = root["paths"]["api/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/api/v1?hash=")
    document = spec.get(url.partition("?")[0])
    assert document is not None and spec.get("/openapi/v2") is None
    patch = document["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert {"name": "fieldValidation", "in": "query"}.items() <= patch["parameters"][1].items()
    assert "/api/v1/nodes/{name}" in document["paths"]
    assert "apis/rbac.authorization.k8s.io/v1" in root["paths"]


class _FakeRegistry:
    """A registry whose object changes under the first `conflicts` writes."""

    def __init__(self, conflicts: int) -> None:
        self.conflicts = conflicts
        self.stored = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name="web", namespace="ns", resource_version=5,
                                                              labels={"app": "web"}),
                                  spec=pod_pb2.PodSpec(containers=[pod_pb2.Container(name="c", image="i")]))
        self.writes: list[int] = []

    async def get(self, request: Any) -> Any:
        return self.stored

    async def update(self, obj: Any) -> Any:
        import grpc

        from services.apiserver.errors import ApiError

        self.writes.append(obj.metadata.resource_version)
        if self.conflicts:
            self.conflicts -= 1
            self.stored.metadata.resource_version += 1  # someone else wrote meanwhile
            raise ApiError(grpc.StatusCode.ABORTED, "stale")
        self.stored = obj
        return obj


async def _patch(registry: _FakeRegistry, body: bytes, content_type: str) -> Any:
    import asyncio
    import unittest.mock

    from aiohttp import StreamReader
    from aiohttp.test_utils import make_mocked_request

    from services.apiserver.rest.routes import ResourcePath
    from services.apiserver.rest.server import RestServer

    server = RestServer({}, authenticator=None, authorizer=None, serving=None)  # type: ignore[arg-type]
    protocol: Any = unittest.mock.Mock(_reading_paused=False)
    payload = StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    payload.feed_data(body)
    payload.feed_eof()
    request = make_mocked_request("PATCH", "/api/v1/namespaces/ns/pods/web", payload=payload,
                                  headers={"Content-Type": content_type, "Content-Length": str(len(body))})
    target = ResourcePath(PODS, "ns", "web", "")
    return await server._patch(request, target, registry, registry.update)  # type: ignore[arg-type]


async def test_patch_retries_on_conflict_with_the_new_version() -> None:
    registry = _FakeRegistry(conflicts=2)
    obj, _ = await _patch(registry, b'{"metadata": {"labels": {"x": "y"}}}', MERGE_PATCH)
    assert registry.writes == [5, 6, 7] and dict(obj.metadata.labels) == {"app": "web", "x": "y"}


async def test_patch_naming_a_resource_version_is_not_retried() -> None:
    from services.apiserver.rest.status import StatusError

    registry = _FakeRegistry(conflicts=1)
    with pytest.raises(StatusError) as raised:
        await _patch(registry, b'{"metadata": {"resourceVersion": "5", "labels": {"x": "y"}}}', MERGE_PATCH)
    assert raised.value.code == 409 and registry.writes == [5]
    registry = _FakeRegistry(conflicts=10)
    with pytest.raises(StatusError) as raised:
        await _patch(registry, b'{"metadata": {"labels": {"x": "y"}}}', MERGE_PATCH)
    assert raised.value.code == 409 and len(registry.writes) == 5  # Kubernetes' patcher gives up too
