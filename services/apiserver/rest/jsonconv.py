"""Kubernetes' JSON for the API's protobuf messages, both ways, derived from the descriptors.

protobuf's JSON mapping already gives Kubernetes' field names (the protos' json_name) and
RFC 3339 timestamps; what differs is Kubernetes-specific and listed here, by field, in one
place: resourceVersion is a string while other int64 fields are numbers (protobuf writes
int64 as strings), int-or-string fields (ports named or numbered) are strings in the protos
and numbers in JSON when they hold a number, quantities are strings that clients may send as
numbers, and a few fields Kubernetes' schema marks required are written even when they hold
their zero value (the official Python client refuses an object without them).

Reading is strict as the gRPC API is: a key that names no field is refused naming its path
(`spec.containers[0].imagePullSecretz`), unless the caller asked to ignore unknown fields
(`fieldValidation=Ignore|Warn`), when they are dropped and reported.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from google.protobuf import descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.resources import Kind

_TIMESTAMP = Timestamp.DESCRIPTOR.full_name
TIMESTAMP_NAME = _TIMESTAMP  # an RFC 3339 string in Kubernetes' JSON

# int64 fields Kubernetes' JSON carries as strings (metav1.ObjectMeta/ListMeta.resourceVersion).
STRING_INT64 = frozenset({
    "kybernetes.v1.ObjectMeta.resource_version",
    "kybernetes.v1.ListMeta.resource_version",
    "kybernetes.v1.ObjectReference.resource_version",
})
# intstr.IntOrString fields: strings in the protos ("8080" or "http"), a number in JSON when numeric.
INT_OR_STRING = frozenset({
    "kybernetes.v1.ServicePort.target_port",
    "kybernetes.v1.HTTPGetAction.port",
    "kybernetes.v1.TCPSocketAction.port",
})
# resource.Quantity fields (maps of them too): strings out, strings or numbers in (`cpu: 1`).
QUANTITY = frozenset({
    "kybernetes.v1.ResourceRequirements.limits",
    "kybernetes.v1.ResourceRequirements.requests",
    "kybernetes.v1.EmptyDirVolumeSource.size_limit",
    "kybernetes.v1.NodeStatus.capacity",
    "kybernetes.v1.NodeStatus.allocatable",
})
# Fields Kubernetes' OpenAPI marks required: written even at their zero value (false, 0, "", []),
# as Go's encoder writes a field without omitempty; the Python client raises on a missing one.
ALWAYS_WRITTEN = frozenset({
    "kybernetes.v1.ContainerStatus.name",
    "kybernetes.v1.ContainerStatus.ready",
    "kybernetes.v1.ContainerStatus.restart_count",
    "kybernetes.v1.ContainerStatus.image",
    "kybernetes.v1.ContainerStatus.image_id",
    "kybernetes.v1.ContainerStateTerminated.exit_code",
    "kybernetes.v1.ContainerPort.container_port",
    "kybernetes.v1.ServicePort.port",
    "kybernetes.v1.EndpointPort.port",
    "kybernetes.v1.EndpointAddress.ip",
    "kybernetes.v1.PodCondition.type",
    "kybernetes.v1.PodCondition.status",
    "kybernetes.v1.NodeCondition.type",
    "kybernetes.v1.NodeCondition.status",
    "kybernetes.v1.NodeAddress.type",
    "kybernetes.v1.NodeAddress.address",
    "kybernetes.v1.DaemonEndpoint.port",
    "kybernetes.v1.PolicyRule.verbs",
    "kybernetes.v1.Subject.kind",
    "kybernetes.v1.Subject.name",
    "kybernetes.v1.RoleRef.api_group",
    "kybernetes.v1.RoleRef.kind",
    "kybernetes.v1.RoleRef.name",
    "kybernetes.v1.OwnerReference.api_version",
    "kybernetes.v1.OwnerReference.kind",
    "kybernetes.v1.OwnerReference.name",
    "kybernetes.v1.OwnerReference.uid",
    "kybernetes.v1.ReplicationControllerStatus.replicas",
    "kybernetes.v1.HTTPHeader.name",
    "kybernetes.v1.HTTPHeader.value",
    "kybernetes.v1.Container.name",
    "kybernetes.v1.EnvVar.name",
    "kybernetes.v1.Volume.name",
    "kybernetes.v1.VolumeMount.name",
    "kybernetes.v1.VolumeMount.mount_path",
    "kybernetes.v1.HostPathVolumeSource.path",
    "kybernetes.v1.SeccompProfile.type",
})
# Fields Kubernetes' schema requires that our protos do not have: written empty (the Python
# client refuses a NodeSystemInfo without them) and accepted, then dropped, when read back.
OUTPUT_ONLY_EXTRAS: dict[str, dict[str, Any]] = {
    "kybernetes.v1.NodeSystemInfo": {
        "bootID": "", "machineID": "", "systemUUID": "", "kubeProxyVersion": "",
    },
}

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _check_tables() -> None:
    """Every field named above exists: a renamed proto field fails at import, not silently."""
    pool = descriptor_pool.Default()
    for name in (*STRING_INT64, *INT_OR_STRING, *QUANTITY, *ALWAYS_WRITTEN):
        message, _, field = name.rpartition(".")
        if field not in pool.FindMessageTypeByName(message).fields_by_name:
            raise LookupError(f"rest/jsonconv.py names {name}, which the protos do not have")
    for message in OUTPUT_ONLY_EXTRAS:
        pool.FindMessageTypeByName(message)


_check_tables()  # resources.py imported every kind's module: their descriptors are in the pool


class JsonDecodeError(ValueError):
    """A document that is not the message: the path of the field and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


# -- writing ---------------------------------------------------------------------------


def _zero(field: FieldDescriptor) -> Any:
    if field.is_repeated:
        return []
    if field.type == FieldDescriptor.TYPE_BOOL:
        return False
    if field.type in _INT_RANGES:
        return 0
    return ""


class _Writer:
    """One message type's writer: for each field (by number) its JSON name and how a value is
    written. Built once per type from the descriptor; writing walks only the fields that are
    set (ListFields, in protobuf's C code), which is what MessageToDict emits too, at a third of
    its cost (a List of 5,000 pods: bench/rest.py)."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.fields = {field.number: (field.json_name, _converter(field)) for field in descriptor.fields}
        self.always = [(field.json_name, _zero(field)) for field in descriptor.fields
                       if field.full_name in ALWAYS_WRITTEN]
        self.extras = OUTPUT_ONLY_EXTRAS.get(descriptor.full_name, {})

    def write(self, message: Message) -> dict[str, Any]:
        fields = self.fields
        document = {}
        for field, value in message.ListFields():
            name, convert = fields[field.number]
            document[name] = convert(value)
        for name, zero in self.always:
            if name not in document:
                document[name] = list(zero) if isinstance(zero, list) else zero
        for key, default in self.extras.items():
            document.setdefault(key, default)
        return document


_WRITERS: dict[str, _Writer] = {}


def _write(message: Message) -> dict[str, Any]:
    descriptor = message.DESCRIPTOR
    writer = _WRITERS.get(descriptor.full_name)
    if writer is None:
        writer = _WRITERS[descriptor.full_name] = _Writer(descriptor)  # type: ignore[arg-type]
    return writer.write(message)


def _same(value: Any) -> Any:
    return value


def _int_or_string(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _timestamp(value: Timestamp) -> str:
    return value.ToJsonString()


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _single(field: FieldDescriptor) -> Any:
    """How one value of field is written (an item of a list, a value of a map)."""
    if field.message_type is not None:
        return _timestamp if field.message_type.full_name == _TIMESTAMP else _write
    if field.full_name in INT_OR_STRING:
        return _int_or_string
    if field.full_name in STRING_INT64:
        return str
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _bytes
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        names = {value.number: value.name for value in field.enum_type.values}
        return lambda number: names.get(number, number)
    return _same  # strings, booleans, numbers (int64 a number, as Kubernetes writes it)


def _converter(field: FieldDescriptor) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = _single(field.message_type.fields_by_name["value"])
        if value is _same:
            return dict
        return lambda entries: {key: value(item) for key, item in entries.items()}
    single = _single(field)
    if field.is_repeated:
        if single is _same:
            return list
        return lambda items: [single(item) for item in items]
    return single


def message_to_json(message: Message) -> dict[str, Any]:
    """Any message as Kubernetes' JSON (no apiVersion/kind added)."""
    return _write(message)


def object_to_json(kind: Kind, obj: Message) -> dict[str, Any]:
    """An object of a kind: apiVersion and kind first, as Kubernetes writes them."""
    document = message_to_json(obj)
    document.pop("apiVersion", None)
    document.pop("kind", None)
    return {"apiVersion": kind.api_version, "kind": kind.name, **document}


def list_to_json(kind: Kind, listed: Message) -> dict[str, Any]:
    """A kind's List message as `{"apiVersion", "kind": "PodList", "metadata", "items": [...]}`:
    items always present (the Python client requires it) and metadata.resourceVersion set."""
    meta = listed.metadata  # type: ignore[attr-defined]
    metadata: dict[str, Any] = {"resourceVersion": str(meta.resource_version)}
    if meta.continue_token:
        metadata["continue"] = meta.continue_token
    if meta.remaining_item_count:
        metadata["remainingItemCount"] = meta.remaining_item_count
    return {
        "apiVersion": kind.api_version,
        "kind": f"{kind.name}List",
        "metadata": metadata,
        "items": [object_to_json(kind, item) for item in listed.items],  # type: ignore[attr-defined]
    }


def event_to_json(kind: Kind, event: Message) -> dict[str, Any]:
    """A watch event: `{"type": "ADDED", "object": {...}}`."""
    return {"type": event.type, "object": object_to_json(kind, event.object)}  # type: ignore[attr-defined]


# -- reading ---------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Reader:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.unknown: list[str] = []

    def message(self, descriptor: Descriptor, document: Any, path: str) -> dict[str, Any]:
        """document checked along descriptor, normalized for json_format.ParseDict."""
        if not isinstance(document, dict):
            raise JsonDecodeError(path, f"expected an object, got {_type_name(document)}")
        fields = {field.json_name: field for field in descriptor.fields}
        extras = OUTPUT_ONLY_EXTRAS.get(descriptor.full_name, {})
        result: dict[str, Any] = {}
        for key, value in document.items():
            field = fields.get(key)
            if field is None:
                if key in extras:
                    continue
                where = _join(path, key)
                if self.strict:
                    raise JsonDecodeError(where, "unknown field")
                self.unknown.append(where)
                continue
            if value is None:  # JSON null: unset, as in Kubernetes
                continue
            result[key] = self.value(field, value, _join(path, key))
        return result

    def value(self, field: FieldDescriptor, value: Any, path: str) -> Any:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if not isinstance(value, dict):
                raise JsonDecodeError(path, f"expected an object, got {_type_name(value)}")
            value_field = field.message_type.fields_by_name["value"]
            quantity = field.full_name in QUANTITY
            return {
                str(key): self.single(value_field, item, f"{path}[{key}]", quantity=quantity)
                for key, item in value.items()
            }
        if field.is_repeated:
            if not isinstance(value, list):
                raise JsonDecodeError(path, f"expected an array, got {_type_name(value)}")
            return [self.single(field, item, f"{path}[{index}]") for index, item in enumerate(value)]
        return self.single(field, value, path, quantity=field.full_name in QUANTITY)

    def single(self, field: FieldDescriptor, value: Any, path: str, *, quantity: bool = False) -> Any:
        if field.message_type is not None:
            if field.message_type.full_name == _TIMESTAMP:
                if not isinstance(value, str):
                    raise JsonDecodeError(path, f"expected an RFC 3339 time, got {_type_name(value)}")
                try:
                    Timestamp().FromJsonString(value)
                except ValueError:
                    raise JsonDecodeError(path, f"invalid RFC 3339 time {value!r:.80}") from None
                return value
            return self.message(field.message_type, value, path)
        kind = field.type
        if kind == FieldDescriptor.TYPE_STRING:
            if isinstance(value, str):
                return value
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and (quantity or field.full_name in INT_OR_STRING):
                return str(value)
            raise JsonDecodeError(path, f"expected a string, got {_type_name(value)}")
        if kind in _INT_RANGES:
            if field.full_name in STRING_INT64:
                if not isinstance(value, str):
                    raise JsonDecodeError(path, f"expected a string, got {_type_name(value)}")
                if value == "":
                    return 0
                if not value.isdigit():
                    raise JsonDecodeError(path, f"invalid resource version {value!r:.80}")
                value = int(value)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise JsonDecodeError(path, f"expected an integer, got {_type_name(value)}")
            low, high = _INT_RANGES[kind]
            if not low <= value <= high:
                raise JsonDecodeError(path, f"{value} is out of range")
            return value
        if kind == FieldDescriptor.TYPE_BOOL:
            if not isinstance(value, bool):
                raise JsonDecodeError(path, f"expected a boolean, got {_type_name(value)}")
            return value
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise JsonDecodeError(path, f"expected a number, got {_type_name(value)}")
            return value
        if kind == FieldDescriptor.TYPE_BYTES:
            if not isinstance(value, str):
                raise JsonDecodeError(path, f"expected base64 text, got {_type_name(value)}")
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise JsonDecodeError(path, "invalid base64") from None
            return value
        if kind == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            if isinstance(value, str) and value in field.enum_type.values_by_name:
                return value
            raise JsonDecodeError(path, f"expected one of {', '.join(field.enum_type.values_by_name)}")
        raise JsonDecodeError(path, f"unsupported field type {kind}")


def json_to_message(message_class: type[Any], document: Any, strict: bool = True) -> tuple[Any, list[str]]:
    """The message a JSON document describes, and the paths of unknown fields it dropped (none
    when strict: the first one raises JsonDecodeError)."""
    reader = _Reader(strict)
    checked = reader.message(message_class.DESCRIPTOR, document, "")
    message = message_class()
    try:
        json_format.ParseDict(checked, message)
    except json_format.ParseError as error:  # the walk above should have caught it first
        raise JsonDecodeError("", str(error)) from None
    return message, reader.unknown

