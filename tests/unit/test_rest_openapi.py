"""The REST API's generated OpenAPI (rest/openapi.py) and the pure parts of pods/log
(rest/logs.py): options from the query, and the output filter."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from kybernetes.v1 import pod_pb2
from services.apiserver.rest import logs, openapi
from services.apiserver.rest.patch import MERGE_KEYS, merge_strategy
from services.apiserver.rest.routes import group_versions
from services.apiserver.rest.status import StatusError
from services.common.resources import ALL_KINDS


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for gv in group_versions():
        schemas.update(openapi.group_version_document(gv, {})["components"]["schemas"])
    return schemas


def _resolve(schemas: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema["allOf"][0]["$ref"]
    return schemas[ref.removeprefix(openapi.SCHEMA_PREFIX)]


def test_every_kind_has_a_schema_tagged_with_its_group_version_kind() -> None:
    schemas = _schemas()
    for kind in ALL_KINDS:  # the Event kind too: nothing here names a kind
        group, _, version = kind.api_version.rpartition("/")
        schema = schemas[kind.message.DESCRIPTOR.full_name]
        assert schema["x-kubernetes-group-version-kind"] == [{"group": group, "version": version, "kind": kind.name}]
        listed = schemas[kind.list_message.DESCRIPTOR.full_name]
        assert listed["x-kubernetes-group-version-kind"][0]["kind"] == f"{kind.name}List"
    for schema in schemas.values():  # every reference resolves
        for prop in schema.get("properties", {}).values():
            for inner in (prop, prop.get("items", {}), prop.get("additionalProperties", {})):
                if "allOf" in inner:
                    assert _resolve(schemas, inner)


def test_kubernetes_json_types() -> None:
    schemas = _schemas()
    meta = schemas["kybernetes.v1.ObjectMeta"]["properties"]
    assert meta["resourceVersion"]["type"] == "string"
    assert meta["creationTimestamp"] == {**meta["creationTimestamp"], "type": "string", "format": "date-time"}
    assert meta["labels"]["type"] == "object" and meta["labels"]["additionalProperties"] == {"type": "string"}
    assert meta["generation"]["type"] == "integer"
    port = schemas["kybernetes.v1.HTTPGetAction"]["properties"]["port"]
    assert _resolve(schemas, port)["x-kubernetes-int-or-string"] is True
    limits = schemas["kybernetes.v1.ResourceRequirements"]["properties"]["limits"]
    assert _resolve(schemas, limits["additionalProperties"]) is schemas[openapi.QUANTITY_NAME]
    containers = schemas["kybernetes.v1.PodSpec"]["properties"]["containers"]
    assert containers["type"] == "array"
    assert _resolve(schemas, containers["items"]) is schemas["kybernetes.v1.Container"]


def test_patch_merge_keys_are_patch_pys() -> None:
    """Each list's x-kubernetes-patch-* is what the server's strategic merge does."""
    schemas = _schemas()
    seen = 0
    for name, schema in schemas.items():
        for json_name, prop in schema.get("properties", {}).items():
            if prop.get("type") != "array":
                continue
            field = next(f for f in _descriptor(name).fields if f.json_name == json_name)
            strategy = merge_strategy(field.full_name)
            if strategy is None:
                assert "x-kubernetes-patch-strategy" not in prop
                continue
            seen += 1
            assert prop["x-kubernetes-patch-strategy"] == "merge"
            assert prop.get("x-kubernetes-patch-merge-key", "") == strategy[0]
    assert seen >= len(MERGE_KEYS) - 2  # some tabled fields our protos do not have


def _descriptor(name: str) -> Any:
    from google.protobuf import descriptor_pool

    return descriptor_pool.Default().FindMessageTypeByName(name)


def test_descriptions_from_proto_comments(tmp_path: Path) -> None:
    (tmp_path / "x.proto").write_text(
        'syntax = "proto3";\npackage demo.v1;\n\n// A thing.\n// Two lines.\nmessage Thing {\n'
        "  // Its size.\n  int32 size = 1;\n  string name = 2; // Its name.\n  message Inner {\n"
        "    // Deep.\n    repeated string deep = 1;\n  }\n  oneof choice {\n    // One.\n    string one = 3;\n  }\n"
        "  map<string, string> labels = 4;\n}\n"
    )
    comments = openapi.proto_comments(tmp_path)
    assert comments == {
        "demo.v1.Thing": "A thing. Two lines.",
        "demo.v1.Thing.size": "Its size.",
        "demo.v1.Thing.name": "Its name.",
        "demo.v1.Thing.Inner.deep": "Deep.",
        "demo.v1.Thing.one": "One.",
    }
    assert openapi.proto_comments(tmp_path / "absent") == {}


# -- pods/log ---------------------------------------------------------------------------

NOW = datetime.datetime(2026, 12, 3, 12, 0, 0, tzinfo=datetime.timezone.utc)


def _pod(*names: str) -> pod_pb2.Pod:
    pod = pod_pb2.Pod()
    pod.metadata.name, pod.metadata.namespace = "p", "ns"
    for name in names:
        pod.spec.containers.add(name=name)
    return pod


def test_log_options() -> None:
    options = logs.parse_options(_pod("a"), {"follow": "true", "tailLines": "5", "limitBytes": "10"}, NOW)
    assert (options.container, options.follow, options.tail_lines, options.limit_bytes) == ("a", True, 5, 10)
    assert logs.parse_options(_pod("a"), {}, NOW).tail_lines == -1
    assert logs.parse_options(_pod("a", "b"), {"container": "b"}, NOW).container == "b"
    since = logs.parse_options(_pod("a"), {"sinceSeconds": "60"}, NOW).since
    assert since == NOW - datetime.timedelta(seconds=60)
    request = logs.kubelet_request(_pod("a"), logs.parse_options(_pod("a"), {"sinceSeconds": "60"}, NOW))
    assert request.timestamps  # asked for, to drop the older lines here
    for query, words in (
        ({}, "a container name must be specified for pod p, choose one of: [a b]"),
        ({"container": "c"}, "container c is not valid for pod p"),
        ({"container": "a", "tailLines": "-1"}, "tailLines"),
        ({"container": "a", "limitBytes": "0"}, "limitBytes"),
        ({"container": "a", "previous": "true"}, "previous"),
        ({"container": "a", "sinceTime": "yesterday"}, "sinceTime"),
    ):
        with pytest.raises(StatusError) as raised:
            logs.parse_options(_pod("a", "b"), query, NOW)
        assert raised.value.code == 400 and words in raised.value.message


def test_log_output_filter() -> None:
    options = logs.parse_options(_pod("a"), {"sinceTime": "2026-12-03T11:59:00Z"}, NOW)
    output = logs.OutputFilter(options)
    sent = output.feed(b"2026-12-03T11:58:00.123456789Z old\n2026-12-03T11:59:30.5Z new")
    assert sent == b""  # the new line is not complete yet
    assert output.feed(b"er\n2026-12-03T12:00:00Z last\n") == b"newer\nlast\n"  # timestamps not asked for
    assert output.feed(b"", last=True) == b""

    stamped = logs.OutputFilter(logs.parse_options(_pod("a"), {"sinceTime": "2026-12-03T11:59:00Z",
                                                                "timestamps": "true"}, NOW))
    assert stamped.feed(b"2026-12-03T12:00:00Z x\n") == b"2026-12-03T12:00:00Z x\n"

    limited = logs.OutputFilter(logs.parse_options(_pod("a"), {"limitBytes": "5"}, NOW))
    assert limited.feed(b"abc") == b"abc" and not limited.done
    assert limited.feed(b"defg") == b"de" and limited.done
