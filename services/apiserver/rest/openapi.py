"""OpenAPI v3, generated from the kinds table and the message descriptors: what `kubectl
explain` reads, what client-side `kubectl apply` takes its strategic-merge keys from, and
what tells kubectl that this server validates fields itself (`fieldValidation` on each
kind's PATCH), so that `kubectl create/apply/edit` validate on the server.

/openapi/v3 lists one document per group version; each has every kind's object path with
its operations and `components.schemas`: one schema per message the kinds use, named by
its full protobuf name (kybernetes.v1.Pod). A message is an object with a property per
field by json_name; repeated is an array, a map `additionalProperties`, a message a
reference (`allOf: [$ref]`, as Kubernetes writes them); Kubernetes' JSON types where
jsonconv.py writes them (resourceVersion a string, int-or-string ports, quantities, RFC
3339 times); `x-kubernetes-group-version-kind` on each kind's schema and its List's;
`x-kubernetes-patch-merge-key`/`-strategy` from patch.py's strategic-merge tables (one
source for both). Descriptions are the comments of protos/ when that directory is beside
the code (read once, by a small parser), else a short generated one.

/openapi/v2 is not served: kubectl 1.37 reads v3 for explain, apply and validation, and
falls back to nothing it needs when v2 answers 404.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from services.common.resources import Kind

from .jsonconv import INT_OR_STRING, QUANTITY, STRING_INT64, TIMESTAMP_NAME
from .patch import merge_strategy
from .routes import GroupVersion, group_version

OPENAPI_V3 = "/openapi/v3"
SCHEMA_PREFIX = "#/components/schemas/"
# What a PATCH reads from the query, as Kubernetes documents it.
_PATCH_PARAMETERS = ("fieldManager", "fieldValidation", "force", "pretty")
# Where the protos are, from this file (services/apiserver/rest/): their comments are the descriptions.
PROTOS = Path(__file__).resolve().parents[3] / "protos"

_INTEGERS = {
    FieldDescriptor.TYPE_INT32: "int32", FieldDescriptor.TYPE_SINT32: "int32", FieldDescriptor.TYPE_SFIXED32: "int32",
    FieldDescriptor.TYPE_UINT32: "int32", FieldDescriptor.TYPE_FIXED32: "int32",
    FieldDescriptor.TYPE_INT64: "int64", FieldDescriptor.TYPE_SINT64: "int64", FieldDescriptor.TYPE_SFIXED64: "int64",
    FieldDescriptor.TYPE_UINT64: "int64", FieldDescriptor.TYPE_FIXED64: "int64",
}
# Kubernetes' own schemas for its two string-or-number types, by Kubernetes' names (kubectl
# explain shows <IntOrString>, <Quantity>).
INT_OR_STRING_NAME = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY_NAME = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_SHARED = {
    INT_OR_STRING_NAME: {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}],
                         "description": (
        "IntOrString holds an int32 or a string: a port number or the name of a container port.")},
    QUANTITY_NAME: {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}],
                    "description": (
        'A quantity: a number with an optional suffix, e.g. cpu "500m" or "2", memory "64Mi" or "1G".')},
}
# Kubernetes' descriptions of the fields every object has (api-conventions).
_COMMON_FIELDS = {
    "apiVersion": "APIVersion defines the versioned schema of this representation of an object.",
    "kind": "Kind is a string value representing the REST resource this object represents.",
    "metadata": "Standard object's metadata.",
    "spec": "The desired behavior of this object, as its owner writes it.",
    "status": "The most recently observed status of this object, as the system writes it. Read-only.",
    "items": "The objects of the list.",
}

# -- descriptions from the protos' comments ----------------------------------------------

_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)\s*;")
_BLOCK = re.compile(r"^\s*(message|enum|oneof|service)\s+(\w+)\s*\{")
_FIELD = re.compile(r"^\s*(?:repeated\s+|optional\s+)?(?:map\s*<[^>]*>|[\w.]+)\s+(\w+)\s*=\s*\d+[^;]*;\s*(?://\s?(.*))?$")


def proto_comments(directory: Path = PROTOS) -> dict[str, str]:
    """{"kybernetes.v1.Pod": comment, "kybernetes.v1.Pod.spec": comment, ...}: the `//` lines
    right above a message or field (or after a field on its line), from every .proto file."""
    comments: dict[str, str] = {}
    for path in sorted(directory.rglob("*.proto")) if directory.is_dir() else []:
        package = ""
        stack: list[tuple[str, str]] = []  # (block, full name) of the open blocks
        pending: list[str] = []
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("//"):
                pending.append(stripped[2:].strip())
                continue
            if (match := _PACKAGE.match(line)) is not None:
                package = match.group(1)
            elif (match := _BLOCK.match(line)) is not None:
                block, name = match.groups()
                messages = [full for kind, full in stack if kind == "message"]
                parent = messages[-1] if messages else package
                full = f"{parent}.{name}" if block in ("message", "enum") else parent
                if pending and block == "message":
                    comments[full] = " ".join(pending)
                stack.append((block, full))
            elif stripped.startswith("}"):
                if stack:
                    stack.pop()
            elif (match := _FIELD.match(line)) is not None and stack and stack[-1][0] in ("message", "oneof"):
                text = " ".join([*pending, match.group(2) or ""]).strip()
                if text:
                    comments[f"{stack[-1][1]}.{match.group(1)}"] = text
            pending = []
    return comments


def _words(name: str) -> str:
    return name.replace("_", " ")


# -- schemas from descriptors ------------------------------------------------------------


class SchemaBuilder:
    """components.schemas for some messages and every message they reach."""

    def __init__(self, comments: dict[str, str]) -> None:
        self.comments = comments
        self.schemas: dict[str, dict[str, Any]] = {}

    def ref(self, descriptor: Descriptor) -> str:
        self.add(descriptor)
        return SCHEMA_PREFIX + descriptor.full_name

    def add(self, descriptor: Descriptor, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        name = descriptor.full_name
        if name in self.schemas:
            if extra:
                self.schemas[name].update(extra)
            return self.schemas[name]
        schema: dict[str, Any] = {"type": "object", "properties": {}}
        self.schemas[name] = schema  # before the fields: a message that reaches itself ends here
        schema["description"] = self.comments.get(name) or f"{descriptor.name} ({name} in the protos)."
        for field in descriptor.fields:
            schema["properties"][field.json_name] = self.field(descriptor, field)
        if extra:
            schema.update(extra)
        return schema

    def field(self, owner: Descriptor, field: FieldDescriptor) -> dict[str, Any]:
        description = (self.comments.get(field.full_name) or _COMMON_FIELDS.get(field.json_name)
                       or f"{_words(field.name).capitalize()} of this {owner.name}.")
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            value = self.single(message.fields_by_name["value"], quantity=field.full_name in QUANTITY)
            return {"type": "object", "additionalProperties": value, "description": description}
        if field.is_repeated:
            schema: dict[str, Any] = {"type": "array", "items": self.single(field), "description": description}
            strategy = merge_strategy(field.full_name)
            if strategy is not None:
                key, kind = strategy
                schema["x-kubernetes-patch-strategy"] = kind
                if key:
                    schema["x-kubernetes-patch-merge-key"] = key
            return schema
        schema = self.single(field, quantity=field.full_name in QUANTITY)
        if "allOf" in schema:
            schema["default"] = {}
        return {**schema, "description": description}

    def single(self, field: FieldDescriptor, *, quantity: bool = False) -> dict[str, Any]:
        """One value of the field (an item of a list, a value of a map)."""
        message = field.message_type
        if message is not None:
            if message.full_name == TIMESTAMP_NAME:
                return {"type": "string", "format": "date-time"}
            return {"allOf": [{"$ref": self.ref(message)}]}
        if quantity or field.full_name in INT_OR_STRING:
            shared = QUANTITY_NAME if quantity else INT_OR_STRING_NAME
            self.schemas.setdefault(shared, dict(_SHARED[shared]))
            return {"allOf": [{"$ref": SCHEMA_PREFIX + shared}]}
        kind = field.type
        if kind in _INTEGERS:
            if field.full_name in STRING_INT64:
                return {"type": "string"}
            return {"type": "integer", "format": _INTEGERS[kind]}
        if kind == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return {"type": "number", "format": "double"}
        if kind == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        if kind == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
        return {"type": "string"}


def _gvk(kind: Kind, name: str) -> dict[str, Any]:
    group, version = group_version(kind)
    return {"x-kubernetes-group-version-kind": [{"group": group, "version": version, "kind": name}]}


# -- documents -----------------------------------------------------------------------------


def _path(gv: GroupVersion, plural: str, namespaced: bool) -> str:
    namespace = "namespaces/{namespace}/" if namespaced else ""
    return f"{gv.prefix}/{namespace}{plural}/{{name}}"


def _parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}


def _content(ref: str) -> dict[str, Any]:
    return {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": ref}}}}}


def group_version_document(gv: GroupVersion, comments: dict[str, str] | None = None) -> dict[str, Any]:
    builder = SchemaBuilder(proto_comments() if comments is None else comments)
    paths: dict[str, Any] = {}
    for kind in gv.kinds:
        group, version = group_version(kind)
        builder.add(kind.message.DESCRIPTOR, _gvk(kind, kind.name))
        ref = builder.ref(kind.message.DESCRIPTOR)
        builder.add(kind.list_message.DESCRIPTOR, _gvk(kind, f"{kind.name}List"))
        gvk = {"group": group, "version": version, "kind": kind.name}
        operation = {"operationId": f"patch{kind.name}", "x-kubernetes-action": "patch",
                     "x-kubernetes-group-version-kind": gvk,
                     "parameters": [_parameter(name) for name in _PATCH_PARAMETERS],
                     "responses": _content(ref)}
        paths[_path(gv, kind.plural, kind.namespaced)] = {
            "get": {"operationId": f"read{kind.name}", "x-kubernetes-action": "get",
                    "x-kubernetes-group-version-kind": gvk, "responses": _content(ref)},
            "patch": operation,
        }
    return {"openapi": "3.0.0", "info": {"title": "Kybernetes", "version": gv.name}, "paths": paths,
            "components": {"schemas": dict(sorted(builder.schemas.items()))}}


def _relative(gv: GroupVersion) -> str:
    return gv.prefix.lstrip("/")


class OpenApi:
    """The documents, made once (the kinds do not change while the server runs)."""

    def __init__(self, versions: list[GroupVersion]) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        comments = proto_comments()
        root: dict[str, Any] = {}
        for gv in versions:
            document = group_version_document(gv, comments)
            digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16].upper()
            self.documents[f"{OPENAPI_V3}/{_relative(gv)}"] = document
            root[_relative(gv)] = {"serverRelativeURL": f"{OPENAPI_V3}/{_relative(gv)}?hash={digest}"}
        self.root = {"paths": root}

    def get(self, path: str) -> dict[str, Any] | None:
        """The document at a path (/openapi/v3 or one group version's), None if none."""
        if path == OPENAPI_V3:
            return self.root
        return self.documents.get(path)
