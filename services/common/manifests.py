"""Kubernetes manifests (YAML or JSON) to API messages and back.

Reading is strict and follows the message descriptors: every key of a document
must name a field (by its camelCase JSON name or its snake_case proto name, as
protobuf's JSON mapping accepts), every value must have the field's type. A
mistake is a `ManifestError` naming the document and the field path, e.g.
``pod.yaml[0]: spec.containers[0].imagePullSecretz: unknown field (...)``,
instead of being dropped silently. Where Kubernetes manifests habitually write a
number for a string field (``targetPort: 8080``, ``cpu: 1``, label values
``version: 2``) the number is read as its string. The checked document then goes
through ``json_format.ParseDict``.

Writing gives what kubectl prints: camelCase, defaults omitted, apiVersion and
kind filled, a single object or a ``kind: List``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, cast

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from .resources import ALL_KINDS, API_VERSION, kind_for, kind_of_message

MANIFEST_EXTENSIONS = (".yaml", ".yml", ".json")
LIST_KIND = "List"
STDIN = "-"

# int64 fields that the JSON form carries as a decimal string, as Kubernetes
# does (`resourceVersion: "123"`): our own `-o yaml` output must read back.
_STRING_ENCODED_INTS = frozenset({"kybernetes.v1.ObjectMeta.resource_version"})
_TIMESTAMP = Timestamp.DESCRIPTOR.full_name

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
_FLOAT_TYPES = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)


class ManifestError(ValueError):
    """A manifest that cannot be read: the message names the document and field."""


class _FieldError(Exception):
    """Raised while walking one document; load_manifests adds the document's name."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Manifest:
    """One object read from a manifest, with where it came from (`pod.yaml[0]`)."""

    message: Message
    origin: str
    source: str


# --- reading -----------------------------------------------------------------


class _StrictLoader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """Safe YAML that rejects a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping_once(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_once)


def _yaml_documents(text: str, source: str) -> Iterator[tuple[int, Any]]:
    index = 0
    try:
        for index, document in enumerate(yaml.load_all(text, Loader=_StrictLoader)):
            yield index, document
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ManifestError(f"{source}: invalid YAML{where}: {problem}") from None


def _json_documents(text: str, source: str) -> Iterator[tuple[int, Any]]:
    """A JSON object, or several one after the other (kubectl accepts a stream)."""
    decoder = json.JSONDecoder()
    position, index = 0, 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return
        try:
            document, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise ManifestError(
                f"{source}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
            ) from None
        yield index, document
        index += 1


def _documents(text: str, source: str) -> Iterator[tuple[int, Any]]:
    if text.lstrip().startswith(("{", "[")):
        return _json_documents(text, source)
    return _yaml_documents(text, source)


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
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (dt.date, dt.datetime)):
        return "timestamp"
    return type(value).__name__


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _field_names(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    names: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        names[field.json_name] = field
        names[field.name] = field
    return names


def _unknown_field_reason(key: str, descriptor: Descriptor) -> str:
    supported = [field.json_name for field in descriptor.fields]
    candidates = supported + [field.name for field in descriptor.fields]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return f"unknown field ({hint}supported: {', '.join(supported)})"


def _timestamp_string(value: Any, path: str) -> str:
    if isinstance(value, dt.datetime):
        when = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, str):
        try:
            Timestamp().FromJsonString(value)
        except ValueError:
            raise _FieldError(
                path, f'invalid timestamp "{value}" (expected RFC 3339, e.g. 2024-05-01T12:00:00Z)'
            ) from None
        return value
    raise _FieldError(path, f"expected an RFC 3339 timestamp, got {_type_name(value)}")


def _scalar(field: FieldDescriptor, value: Any, path: str, *, in_map: bool = False) -> Any:
    """Checks one scalar against the field's type, coercing what Kubernetes allows."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            # Label and annotation values such as `enabled: true` mean the text.
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            # IntOrString ports and quantities: `targetPort: 8080`, `cpu: 1`.
            return str(value)
        if value is None and in_map:
            return ""
        raise _FieldError(path, f"expected a string, got {_type_name(value)}")
    if kind in _INT_RANGES:
        if field.full_name in _STRING_ENCODED_INTS and isinstance(value, str):
            if not value.strip().lstrip("-").isdigit():
                raise _FieldError(path, f'expected an integer, got string "{value}"')
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            shown = f' "{value}"' if isinstance(value, str) else ""
            raise _FieldError(path, f"expected an integer, got {_type_name(value)}{shown}")
        low, high = _INT_RANGES[kind]
        if not low <= value <= high:
            raise _FieldError(path, f"{value} is out of range ({low}..{high})")
        return value
    if kind == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            shown = f' "{value}"' if isinstance(value, str) else ""
            raise _FieldError(path, f"expected true or false, got {_type_name(value)}{shown}")
        return value
    if kind in _FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _FieldError(path, f"expected a number, got {_type_name(value)}")
        return value
    if kind == FieldDescriptor.TYPE_ENUM:
        enum_type = field.enum_type
        assert enum_type is not None  # an enum field always has its enum's descriptor
        names = [v.name for v in enum_type.values]
        if isinstance(value, str) and value in names:
            return value
        if isinstance(value, int) and not isinstance(value, bool) and enum_type.values_by_number.get(value):
            return value
        raise _FieldError(path, f"expected one of {', '.join(names)}, got {value!r}")
    if kind == FieldDescriptor.TYPE_BYTES:
        if not isinstance(value, str):
            raise _FieldError(path, f"expected base64 text, got {_type_name(value)}")
        return value
    raise _FieldError(path, f"unsupported field type {kind}")


def _value(field: FieldDescriptor, value: Any, path: str) -> Any:
    """One field's value, checked and normalized for ParseDict."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            raise _FieldError(path, f"expected a mapping, got {_type_name(value)}")
        value_field = field.message_type.fields_by_name["value"]
        result = {}
        for key, item in value.items():
            key_text = _scalar(field.message_type.fields_by_name["key"], key, f"{path}[{key}]")
            result[key_text] = _single(value_field, item, f"{path}[{key_text}]", in_map=True)
        return result
    if field.is_repeated:
        if not isinstance(value, list):
            raise _FieldError(path, f"expected a list, got {_type_name(value)}")
        return [_single(field, item, f"{path}[{i}]") for i, item in enumerate(value)]
    return _single(field, value, path)


def _single(field: FieldDescriptor, value: Any, path: str, *, in_map: bool = False) -> Any:
    if field.message_type is None:
        return _scalar(field, value, path, in_map=in_map)
    if field.message_type.full_name == _TIMESTAMP:
        return _timestamp_string(value, path)
    if value is None and in_map:
        return {}
    return _message(field.message_type, value, path)


def _message(descriptor: Descriptor, document: Any, path: str) -> dict[str, Any]:
    """Walks a mapping along a message descriptor; returns it keyed by JSON names."""
    if not isinstance(document, dict):
        raise _FieldError(path, f"expected an object, got {_type_name(document)}")
    names = _field_names(descriptor)
    result: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in document.items():
        if not isinstance(key, str):
            raise _FieldError(path, f"field names are strings, got {_type_name(key)} {key!r}")
        key_path = _join(path, key)
        field = names.get(key)
        if field is None:
            raise _FieldError(key_path, _unknown_field_reason(key, descriptor))
        if field.name in seen:
            raise _FieldError(key_path, f'given twice (also as "{seen[field.name]}")')
        seen[field.name] = key
        if value is None:  # `field:` with nothing, or JSON null: unset, as in Kubernetes.
            continue
        result[field.json_name] = _value(field, value, key_path)
    return result


def _check_header(document: dict, *, expect_kind: bool = True) -> str:
    api_version = document.get("apiVersion", document.get("api_version"))
    kind = document.get("kind")
    if kind is None or kind == "":
        raise _FieldError("kind", "required (one of: " + ", ".join(k.name for k in ALL_KINDS) + f", {LIST_KIND})")
    if not isinstance(kind, str):
        raise _FieldError("kind", f"expected a string, got {_type_name(kind)}")
    try:
        expected = kind_for(kind).api_version
    except KeyError:  # a List, or a kind reported as unknown by the caller
        expected = API_VERSION
    if api_version is None or api_version == "":
        raise _FieldError("apiVersion", f'required ("{expected}" for {kind})')
    if api_version != expected:
        raise _FieldError("apiVersion", f'unsupported "{api_version}" ("{expected}" for {kind})')
    return kind


def _kind_message(kind_name: str, path: str) -> type[Message]:
    names = [k.name for k in ALL_KINDS]
    try:
        kind = kind_for(kind_name)
    except KeyError:
        kind = None
    if kind is None or kind.name != kind_name:
        hint = f' (did you mean "{kind.name}"?)' if kind is not None else ""
        raise _FieldError(path, f'unsupported "{kind_name}"{hint}; supported: {", ".join(names)}, {LIST_KIND}')
    return kind.message


def _objects(document: dict, path: str) -> Iterator[tuple[str, Message]]:
    """The object(s) of one document: itself, or the items of a `kind: List`."""
    kind_name = _check_header(document)
    if kind_name == LIST_KIND:
        unknown = sorted(set(document) - {"apiVersion", "api_version", "kind", "items", "metadata"})
        if unknown:
            raise _FieldError(_join(path, unknown[0]), "unknown field (supported: apiVersion, kind, metadata, items)")
        items = document.get("items") or []
        if not isinstance(items, list):
            raise _FieldError(_join(path, "items"), f"expected a list, got {_type_name(items)}")
        for i, item in enumerate(items):
            item_path = f"{_join(path, 'items')}[{i}]"
            if not isinstance(item, dict):
                raise _FieldError(item_path, f"expected an object, got {_type_name(item)}")
            try:
                kind_name = _check_header(item)
            except _FieldError as error:
                raise _FieldError(_join(item_path, error.path), error.reason) from None
            if kind_name == LIST_KIND:
                raise _FieldError(_join(item_path, "kind"), "a List cannot hold another List")
            yield item_path, _parse(_kind_message(kind_name, _join(item_path, "kind")), item, item_path)
        return
    yield path, _parse(_kind_message(kind_name, "kind"), document, path)


def _descriptor(message: Message | type[Message]) -> Descriptor:
    # The stubs type DESCRIPTOR as the pure-Python or the upb class; both have what we read.
    return cast(Descriptor, message.DESCRIPTOR)


def _parse(message_type: type[Message], document: dict, path: str) -> Message:
    checked = _message(_descriptor(message_type), document, path)
    message = message_type()
    try:
        json_format.ParseDict(checked, message)
    except json_format.ParseError as error:  # the walk above should have caught it first
        raise _FieldError(path, str(error)) from None
    return message


def iter_manifests(text: str, source: str = "<stdin>") -> Iterator[Manifest]:
    """Every object in a YAML or JSON text, with its origin (`source[index]`)."""
    for index, document in _documents(text, source):
        if document is None:  # an empty document or one that is only comments
            continue
        origin = f"{source}[{index}]"
        if not isinstance(document, dict):
            raise ManifestError(f"{origin}: expected an object with apiVersion and kind, got {_type_name(document)}")
        try:
            for path, message in _objects(document, ""):
                yield Manifest(message=message, origin=f"{origin}{': ' + path if path else ''}", source=source)
        except _FieldError as error:
            raise ManifestError(f"{origin}: {error}") from None


def load_manifests(text: str, source: str = "<stdin>") -> list[Message]:
    """The objects of a YAML or JSON text (several documents, or a `kind: List`)."""
    return [manifest.message for manifest in iter_manifests(text, source)]


def _read(path: str) -> tuple[str, str]:
    if path == STDIN:
        return sys.stdin.read(), "<stdin>"
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(), path
    except FileNotFoundError:
        raise ManifestError(f'the path "{path}" does not exist') from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise ManifestError(f"{path}: {error.strerror or error}") from None


def manifest_paths(paths: Iterable[str]) -> list[str]:
    """Files to read: each file as given, a directory's manifest files sorted, `-` for stdin."""
    files: list[str] = []
    for path in paths:
        if path != STDIN and os.path.isdir(path):
            files.extend(
                os.path.join(path, name)
                for name in sorted(os.listdir(path))
                if name.endswith(MANIFEST_EXTENSIONS) and os.path.isfile(os.path.join(path, name))
            )
        else:
            files.append(path)
    return files


def load_manifest_sources(paths: Iterable[str]) -> list[Manifest]:
    """Every object of files, directories (*.yaml, *.yml, *.json) and `-` (stdin)."""
    manifests: list[Manifest] = []
    for path in manifest_paths(paths):
        text, source = _read(path)
        manifests.extend(iter_manifests(text, source))
    return manifests


def load_manifest_files(paths: list[str]) -> list[Message]:
    return [manifest.message for manifest in load_manifest_sources(paths)]


# --- writing -----------------------------------------------------------------


def _ints_as_numbers(document: dict[str, Any], descriptor: Descriptor) -> None:
    """MessageToDict writes int64 as strings; Kubernetes writes them as numbers,
    except resourceVersion."""
    for field in descriptor.fields:
        if field.json_name not in document:
            continue
        value = document[field.json_name]
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_type = field.message_type.fields_by_name["value"].message_type
                if value_type is not None:
                    for item in value.values():
                        _ints_as_numbers(item, value_type)
            elif field.message_type.full_name != _TIMESTAMP:
                for item in value if field.is_repeated else [value]:
                    _ints_as_numbers(item, field.message_type)
        elif field.type in _INT_RANGES and field.full_name not in _STRING_ENCODED_INTS:
            document[field.json_name] = [int(v) for v in value] if field.is_repeated else int(value)


def to_dict(msg: Message) -> dict[str, Any]:
    """The object as Kubernetes prints it: camelCase, defaults omitted, apiVersion/kind set."""
    body = json_format.MessageToDict(msg)
    _ints_as_numbers(body, _descriptor(msg))
    try:
        kind = kind_of_message(msg)
    except KeyError:
        return body
    body.pop("apiVersion", None)
    body.pop("kind", None)
    return {"apiVersion": kind.api_version, "kind": kind.name, **body}


def _document(msgs: list[Message], as_list: bool | None) -> dict[str, Any]:
    if as_list is None:
        as_list = len(msgs) != 1
    if not as_list:
        return to_dict(msgs[0])
    return {
        "apiVersion": API_VERSION,
        "kind": LIST_KIND,
        "items": [to_dict(msg) for msg in msgs],
        "metadata": {"resourceVersion": ""},
    }


class _BlockDumper(yaml.CSafeDumper if hasattr(yaml, "CSafeDumper") else yaml.SafeDumper):  # type: ignore[misc]
    """Multi-line strings (scripts in `command`) as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def dump_yaml(msgs: list[Message], *, as_list: bool | None = None) -> str:
    """YAML as `kubectl get -o yaml` prints it: one object, or a List of several
    (as_list forces either)."""
    return yaml.dump(
        _document(msgs, as_list), Dumper=_BlockDumper, default_flow_style=False, sort_keys=True, allow_unicode=True
    )


def dump_json(msgs: list[Message], *, as_list: bool | None = None) -> str:
    """JSON as `kubectl get -o json` prints it."""
    return json.dumps(_document(msgs, as_list), indent=4, ensure_ascii=False) + "\n"
