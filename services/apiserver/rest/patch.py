"""PATCH in Kubernetes' three kinds, applied to an object's JSON (jsonconv's output):

- application/json-patch+json (RFC 6902): the `jsonpatch` library;
- application/merge-patch+json (RFC 7386): a few lines below;
- application/strategic-merge-patch+json: Kubernetes' own merge, by hand. Lists of objects
  whose Go type declares `patchStrategy:"merge" patchMergeKey:"..."` are merged item by item
  on that key, lists of scalars declared `patchStrategy:"merge"` are merged as sets, every
  other list is replaced; `null` deletes a field; `$patch: replace|delete` (on a map or a list
  item), `$retainKeys`, `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>` (a
  merged list put in the order kubectl apply's manifest has, as Kubernetes' normalizeElementOrder)
  are understood. The merge keys of our types are in MERGE_KEYS, by protobuf field, in one place;
  the walk follows the message descriptors, so a key names its field wherever it is nested.

What the server does with the result (strict decoding, the registry's update with the stored
resourceVersion as precondition, retries on conflict) is in server.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import jsonpointer
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)

# Kubernetes' `patchStrategy:"merge" patchMergeKey:"..."` tags for the fields our protos have
# (k8s.io/api core/v1, meta/v1 types.go). RBAC kinds, Lease, Endpoints subsets and every list
# not named here have no merge strategy: a patch replaces them whole.
MERGE_KEYS: dict[str, str] = {
    "kybernetes.v1.ObjectMeta.owner_references": "uid",
    "kybernetes.v1.PodSpec.volumes": "name",
    "kybernetes.v1.PodSpec.containers": "name",
    "kybernetes.v1.PodSpec.init_containers": "name",
    "kybernetes.v1.Container.ports": "containerPort",
    "kybernetes.v1.Container.env": "name",
    "kybernetes.v1.Container.volume_mounts": "mountPath",
    "kybernetes.v1.PodStatus.conditions": "type",
    "kybernetes.v1.ServiceSpec.ports": "port",
    "kybernetes.v1.NodeStatus.conditions": "type",
    "kybernetes.v1.NodeStatus.addresses": "type",
    "kybernetes.v1.NamespaceStatus.conditions": "type",
    "kybernetes.v1.ReplicationControllerStatus.conditions": "type",
}
# Lists of scalars with `patchStrategy:"merge"` (no key): merged as sets, in order.
MERGED_SCALAR_LISTS = frozenset({
    "kybernetes.v1.ObjectMeta.finalizers",
    "kybernetes.v1.NodeSpec.pod_cidrs",
})

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList/"
_SET_ELEMENT_ORDER = "$setElementOrder/"


def _known_fields() -> tuple[dict[str, str], frozenset[str]]:
    """The tables above, less fields the protos do not have (init containers, pod CIDRs...),
    each remaining name checked to be a repeated field: a typo fails at import."""
    pool = descriptor_pool.Default()
    keys: dict[str, str] = {}
    scalars: set[str] = set()
    for table in (MERGE_KEYS, MERGED_SCALAR_LISTS):
        for name in table:
            message, _, field_name = name.rpartition(".")
            try:
                descriptor = pool.FindMessageTypeByName(message)
            except KeyError:
                continue
            field = descriptor.fields_by_name.get(field_name)
            if field is None:
                continue
            if not field.is_repeated:
                raise LookupError(f"rest/patch.py: {name} is not a list")
            if isinstance(table, dict):
                keys[name] = table[name]
            else:
                scalars.add(name)
    return keys, frozenset(scalars)


_MERGE_KEYS, _MERGED_SCALARS = _known_fields()


def merge_strategy(field: str) -> tuple[str, str] | None:
    """A list field's strategic merge (its full protobuf name): (merge key or "" for a list
    of scalars merged as a set, "merge"), None when a patch replaces it whole. What the
    OpenAPI schemas say (openapi.py), so that kubectl's patches and this merge agree."""
    if field in _MERGE_KEYS:
        return _MERGE_KEYS[field], "merge"
    if field in _MERGED_SCALARS:
        return "", "merge"
    return None


class PatchError(ValueError):
    """A patch that cannot be applied. code 400: malformed (not a patch of its kind); 422: a
    well-formed patch that does not apply to this object (a JSON patch's missing path, a
    failed test); field: the object's field it failed at, when known (`spec.replicas`)."""

    def __init__(self, message: str, code: int = 400, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.field = field


# -- merge patch (RFC 7386) -------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merged key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# -- JSON patch (RFC 6902) --------------------------------------------------------------


def json_patch(document: dict[str, Any], patch: Any) -> Any:
    if not isinstance(patch, list):
        raise PatchError("a JSON patch must be an array of operations")
    try:
        jsonpatch.JsonPatch(patch)  # every operation well-formed before any is applied
        result = copy.deepcopy(document)
        for index, operation in enumerate(patch):
            try:
                result = jsonpatch.JsonPatch([operation]).apply(result, in_place=True)
            except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPatchTestFailed,
                    jsonpointer.JsonPointerException) as error:
                raise PatchError(_not_applied(index, operation, result, error), 422,
                                 _dotted(str(operation.get("path", "")))) from None
        return result
    except jsonpatch.InvalidJsonPatch as error:
        raise PatchError(f"invalid JSON patch: {error}") from None
    except (TypeError, KeyError, AttributeError) as error:  # an operation of the wrong shape
        raise PatchError(f"invalid JSON patch: {error!r}"[:300]) from None


def _not_applied(index: int, operation: dict[str, Any], document: Any, error: Exception) -> str:
    """Why operation `index` of a JSON patch does not apply, in a line (not the object's dump)."""
    path = str(operation.get("path"))
    where = f"the JSON patch does not apply: operation {index} ({str(operation.get('op'))[:16]} {path[:128]})"
    if isinstance(error, jsonpatch.JsonPatchTestFailed):
        try:
            found = json.dumps(jsonpointer.resolve_pointer(document, path))[:64]
        except jsonpointer.JsonPointerException:
            return f"{where}: no such path"
        return f"{where}: the value is {found}, not {json.dumps(operation.get('value'))[:64]}"
    if isinstance(error, jsonpointer.JsonPointerException):  # its message quotes the whole object
        return f"{where}: no such path"
    return f"{where}: {str(error)[:128]}"


def _dotted(pointer: str) -> str:
    """A JSON pointer as our field paths are written: /spec/containers/0/image -> spec.containers[0].image."""
    path = ""
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        path += f"[{token}]" if token.isdigit() or token == "-" else (f".{token}" if path else token)
    return path


# -- strategic merge patch --------------------------------------------------------------


def _fields(descriptor: Descriptor | None) -> dict[str, FieldDescriptor]:
    return {field.json_name: field for field in descriptor.fields} if descriptor is not None else {}


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _map_value_type(field: FieldDescriptor) -> Descriptor | None:
    entry = field.message_type
    assert entry is not None  # a map field's entry message
    return entry.fields_by_name["value"].message_type


def strategic_merge(original: Any, patch: Any, descriptor: Descriptor | None) -> Any:
    """The strategic merge of patch (a JSON object) into original, along descriptor (None:
    no schema below here, plain merge-patch semantics for objects, lists replaced)."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    return _merge_map(original if isinstance(original, dict) else {}, patch, descriptor, "")


def _where(path: str) -> str:
    return path or "the object"


def _merge_map(original: dict[str, Any], patch: dict[str, Any], descriptor: Descriptor | None,
               path: str) -> Any:
    directive = patch.get(_DIRECTIVE)
    if directive is not None:
        if directive == "replace":
            return _strip_directives({k: v for k, v in patch.items() if k != _DIRECTIVE})
        if directive == "delete":
            return None
        raise PatchError(f"{_where(path)}: unknown patch directive {str(directive)[:40]!r}")
    result = dict(original)
    fields = _fields(descriptor)
    retain = patch.get(_RETAIN_KEYS)
    for key, value in patch.items():
        if key in (_RETAIN_KEYS,):
            continue
        if key.startswith(_SET_ELEMENT_ORDER):
            continue  # applied below, once the list is merged
        if key.startswith(_DELETE_FROM_PRIMITIVE_LIST):
            name = key[len(_DELETE_FROM_PRIMITIVE_LIST):]
            if not isinstance(value, list):
                raise PatchError(f"{path}.{key}: expected an array")
            current = result.get(name)
            if isinstance(current, list):
                result[name] = [item for item in current if item not in value]
            continue
        if key.startswith("$"):
            raise PatchError(f"{_where(path)}: unknown patch directive {key[:40]!r}")
        where = f"{path}.{key}" if path else key
        if value is None:
            result.pop(key, None)
            continue
        field = fields.get(key)
        merged = _merge_value(result.get(key), value, field, where)
        if merged is None:
            result.pop(key, None)
        else:
            result[key] = merged
    for key, order in patch.items():
        if key.startswith(_SET_ELEMENT_ORDER):
            name = key[len(_SET_ELEMENT_ORDER):]
            field = fields.get(name)
            if not isinstance(order, list):
                raise PatchError(f"{path}.{key}: expected an array")
            merged_list = result.get(name)
            if field is not None and isinstance(merged_list, list) and (
                    field.full_name in _MERGE_KEYS or field.full_name in _MERGED_SCALARS):
                original_list = original.get(name)
                result[name] = set_element_order(merged_list, order, _MERGE_KEYS.get(field.full_name),
                                                 original_list if isinstance(original_list, list) else [])
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchError(f"{_where(path)}: $retainKeys must be an array")
        keep = set(retain)
        result = {key: value for key, value in result.items() if key in keep}
    return result


def _merge_value(original: Any, value: Any, field: FieldDescriptor | None, path: str) -> Any:
    if field is None:  # no schema (an unknown field: strict decoding refuses it after)
        if isinstance(value, dict) and isinstance(original, dict):
            return _merge_map(original, value, None, path)
        return _strip_directives(value)
    if _is_map(field):
        if not isinstance(value, dict):
            return value  # the wrong type: decoding names the field
        value_type = _map_value_type(field)
        if value_type is None:  # string -> scalar (labels, annotations, selectors)
            return _merge_map(original if isinstance(original, dict) else {}, value, None, path)
        merged = dict(original) if isinstance(original, dict) else {}
        for key, item in value.items():
            if item is None:
                merged.pop(key, None)
            elif isinstance(item, dict):
                result = _merge_map(merged.get(key) or {}, item, value_type, f"{path}[{key}]")
                if result is None:
                    merged.pop(key, None)
                else:
                    merged[key] = result
            else:
                merged[key] = item
        return merged
    if field.is_repeated:
        if not isinstance(value, list):
            return value
        name = field.full_name
        if name in _MERGE_KEYS:
            return _merge_keyed_list(original if isinstance(original, list) else [], value, _MERGE_KEYS[name],
                                     field.message_type, path)
        if name in _MERGED_SCALARS:
            return _merge_scalar_list(original if isinstance(original, list) else [], value, path)
        return _replace_list(value, path)
    if field.message_type is not None and isinstance(value, dict):
        return _merge_map(original if isinstance(original, dict) else {}, value, field.message_type, path)
    return value


def _replace_list(value: list[Any], path: str) -> list[Any]:
    items = []
    for item in value:
        if isinstance(item, dict) and _DIRECTIVE in item:
            if item[_DIRECTIVE] == "replace":
                continue  # {"$patch": "replace"} in a list: the rest is the list, as replacing does anyway
            raise PatchError(f"{path}: patch directive {str(item[_DIRECTIVE])[:40]!r} in a list without a merge key")
        items.append(_strip_directives(item))
    return items


def _merge_scalar_list(original: list[Any], value: list[Any], path: str) -> list[Any]:
    merged = list(original)
    for item in value:
        if isinstance(item, (dict, list)):
            raise PatchError(f"{path}: expected a list of scalars")
        if item not in merged:
            merged.append(item)
    return merged


def _merge_keyed_list(original: list[Any], value: list[Any], key: str, item_type: Descriptor | None,
                      path: str) -> list[Any]:
    if any(isinstance(item, dict) and item.get(_DIRECTIVE) == "replace" for item in value):
        return [_strip_directives(item) for item in value if not (isinstance(item, dict) and _DIRECTIVE in item)]
    merged = [item for item in original]
    for index, item in enumerate(value):
        where = f"{path}[{index}]"
        if not isinstance(item, dict):
            raise PatchError(f"{where}: expected an object with the merge key {key!r}")
        if key not in item:
            raise PatchError(f"{where}: does not contain the declared merge key {key!r}")
        found = next((i for i, existing in enumerate(merged)
                      if isinstance(existing, dict) and existing.get(key) == item[key]), None)
        directive = item.get(_DIRECTIVE)
        if directive == "delete":
            merged = [existing for existing in merged
                      if not (isinstance(existing, dict) and existing.get(key) == item[key])]
            continue
        if directive is not None and directive != "merge":
            raise PatchError(f"{where}: unknown patch directive {str(directive)[:40]!r}")
        body = {k: v for k, v in item.items() if k != _DIRECTIVE}
        if found is None:
            merged.append(_merge_map({}, body, item_type, where))
        else:
            merged[found] = _merge_map(merged[found], body, item_type, where)
    return merged


def set_element_order(merged: list[Any], order: list[Any], key: str | None, server: list[Any]) -> list[Any]:
    """A merged list in the order `$setElementOrder/<field>` gives (Kubernetes'
    normalizeElementOrder): the items it names in its order, the items only the server had
    kept where they were among those; key None for a list of scalars. Pure."""

    def ident(item: Any) -> Any:
        return item.get(key) if key is not None and isinstance(item, dict) else item

    wanted = [ident(item) for item in order]
    server_ids = [ident(item) for item in server]

    def position(ids: list[Any], item: Any) -> int:
        return ids.index(ident(item)) if ident(item) in ids else -1

    named = sorted((item for item in merged if ident(item) in wanted), key=lambda item: position(wanted, item))
    server_only = [item for item in merged if ident(item) not in wanted]
    server_only.sort(key=lambda item: (position(server_ids, item) < 0, position(server_ids, item)))
    result: list[Any] = []
    i = j = 0
    while i < len(named) or j < len(server_only):
        if j >= len(server_only):
            result.append(named[i])
            i += 1
        elif i >= len(named):
            result.append(server_only[j])
            j += 1
        else:
            left, right = position(server_ids, named[i]), position(server_ids, server_only[j])
            if left >= 0 and right >= 0 and left < right:  # both on the server: its order between them
                result.append(named[i])
                i += 1
            else:
                result.append(server_only[j])
                j += 1
    return result


def _strip_directives(value: Any) -> Any:
    """A value placed as it is: nulls and directives inside it dropped (a replaced map has no
    `$patch` of its own left in it)."""
    if isinstance(value, dict):
        return {key: _strip_directives(item) for key, item in value.items()
                if not key.startswith("$") and item is not None}
    if isinstance(value, list):
        return [_strip_directives(item) for item in value]
    return value


# -- one entry point ------------------------------------------------------------------


def apply_patch(content_type: str, document: dict[str, Any], patch: Any, descriptor: Descriptor | None) -> Any:
    """document (an object's JSON, not changed) patched; PatchError when it cannot be."""
    if content_type == JSON_PATCH:
        return json_patch(document, patch)
    if not isinstance(patch, dict):
        raise PatchError("a merge patch must be a JSON object")
    if content_type == MERGE_PATCH:
        return merge_patch(document, patch)
    if content_type == STRATEGIC_MERGE_PATCH:
        return strategic_merge(document, patch, descriptor)
    raise PatchError(f"unknown patch type {content_type[:64]!r}", 415)


def sets_resource_version(content_type: str, patch: Any) -> bool:
    """Whether the patch itself names a resourceVersion (then a conflict is the client's, not
    retried: Kubernetes' patcher retries only patches that leave it alone)."""
    if content_type == JSON_PATCH:
        return isinstance(patch, list) and any(
            isinstance(op, dict) and str(op.get("path", "")).startswith("/metadata/resourceVersion") for op in patch
        )
    meta = patch.get("metadata") if isinstance(patch, dict) else None
    return isinstance(meta, dict) and meta.get("resourceVersion") is not None
