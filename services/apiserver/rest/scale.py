"""The `scale` subresource (autoscaling/v1 Scale) of every kind with spec.replicas, REST only:
what `kubectl scale` reads and patches. A Scale is a view of the object: spec.replicas is the
object's, status.replicas and status.selector (a label selector's text) its status and
selector; writing one writes spec.replicas through the registry's update, with the Scale's
resourceVersion (the object's) as precondition.
"""

from __future__ import annotations

from typing import Any

from services.common.resources import Kind

from .jsonconv import JsonDecodeError

SCALE_API_VERSION = "autoscaling/v1"
SCALE_GROUP, SCALE_VERSION, SCALE_KIND = "autoscaling", "v1", "Scale"
_SCALE_KEYS = {"apiVersion", "kind", "metadata", "spec", "status"}


def scalable(kind: Kind) -> bool:
    """A kind whose spec has `replicas` (derived from the descriptor: ReplicationController)."""
    spec = kind.message.DESCRIPTOR.fields_by_name.get("spec")
    return spec is not None and spec.message_type is not None and "replicas" in spec.message_type.fields_by_name


def _selector_text(selector: Any) -> str:
    return ",".join(f"{key}={selector[key]}" for key in sorted(selector))


def scale_of(obj: Any) -> dict[str, Any]:
    """The Scale JSON of an object."""
    meta = obj.metadata
    metadata: dict[str, Any] = {"name": meta.name, "resourceVersion": str(meta.resource_version)}
    if meta.namespace:
        metadata["namespace"] = meta.namespace
    if meta.uid:
        metadata["uid"] = meta.uid
    if meta.HasField("creation_timestamp"):
        metadata["creationTimestamp"] = meta.creation_timestamp.ToJsonString()
    spec = obj.spec
    replicas = spec.replicas if spec.HasField("replicas") else 1
    status: dict[str, Any] = {"replicas": obj.status.replicas}
    selector = _selector_text(spec.selector)
    if selector:
        status["selector"] = selector
    return {"kind": SCALE_KIND, "apiVersion": SCALE_API_VERSION, "metadata": metadata,
            "spec": {"replicas": replicas}, "status": status}


def read_scale(document: Any) -> tuple[int, int]:
    """(spec.replicas, metadata.resourceVersion or 0) of a Scale document; JsonDecodeError
    naming the field when it is not one."""
    if not isinstance(document, dict):
        raise JsonDecodeError("", "the body must be a JSON object")
    for key in document:
        if key not in _SCALE_KEYS:
            raise JsonDecodeError(key, "unknown field")
    if document.get("apiVersion") not in (None, "", SCALE_API_VERSION):
        raise JsonDecodeError("apiVersion", f"expected {SCALE_API_VERSION}")
    if document.get("kind") not in (None, "", SCALE_KIND):
        raise JsonDecodeError("kind", f"expected {SCALE_KIND}")
    spec = document.get("spec") or {}
    if not isinstance(spec, dict):
        raise JsonDecodeError("spec", "expected an object")
    replicas = spec.get("replicas", 0)
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise JsonDecodeError("spec.replicas", "expected an integer")
    if not 0 <= replicas < 2**31:
        raise JsonDecodeError("spec.replicas", f"Invalid value: {replicas}: must be greater than or equal to 0")
    metadata = document.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise JsonDecodeError("metadata", "expected an object")
    version = metadata.get("resourceVersion") or "0"
    if not isinstance(version, str) or not version.isdigit():
        raise JsonDecodeError("metadata.resourceVersion", "invalid resource version")
    return replicas, int(version)
