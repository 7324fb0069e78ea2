"""A minimal OpenAPI v3, generated from the kinds table: enough for kubectl to know that this
server validates fields itself (`fieldValidation` on each kind's PATCH), so that `kubectl
create/apply/edit` validate on the server (fieldValidation=Strict) without `--validate=false`.

/openapi/v3 lists one document per group version; each document has every kind's object path
with its operations, the PATCH one tagged with the kind (`x-kubernetes-group-version-kind`)
and the query parameters the server reads. No schemas yet: kubectl then computes client-side
apply's strategic merge patch from its compiled-in types, and `kubectl explain` has nothing to
show (a later milestone: schemas from the message descriptors).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .routes import GroupVersion, group_version

OPENAPI_V3 = "/openapi/v3"
# What a PATCH reads from the query, as Kubernetes documents it.
_PATCH_PARAMETERS = ("fieldManager", "fieldValidation", "force", "pretty")


def _path(gv: GroupVersion, plural: str, namespaced: bool) -> str:
    namespace = "namespaces/{namespace}/" if namespaced else ""
    return f"{gv.prefix}/{namespace}{plural}/{{name}}"


def _parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}


def group_version_document(gv: GroupVersion) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for kind in gv.kinds:
        group, version = group_version(kind)
        gvk = {"group": group, "version": version, "kind": kind.name}
        operation = {"operationId": f"patch{kind.name}", "x-kubernetes-action": "patch",
                     "x-kubernetes-group-version-kind": gvk,
                     "parameters": [_parameter(name) for name in _PATCH_PARAMETERS],
                     "responses": {"200": {"description": "OK"}}}
        paths[_path(gv, kind.plural, kind.namespaced)] = {
            "get": {"operationId": f"read{kind.name}", "x-kubernetes-action": "get",
                    "x-kubernetes-group-version-kind": gvk, "responses": {"200": {"description": "OK"}}},
            "patch": operation,
        }
    return {"openapi": "3.0.0", "info": {"title": "Kybernetes", "version": gv.name}, "paths": paths,
            "components": {"schemas": {}}}


def _relative(gv: GroupVersion) -> str:
    return gv.prefix.lstrip("/")


class OpenApi:
    """The documents, made once (the kinds do not change while the server runs)."""

    def __init__(self, versions: list[GroupVersion]) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        root: dict[str, Any] = {}
        for gv in versions:
            document = group_version_document(gv)
            digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16].upper()
            self.documents[f"{OPENAPI_V3}/{_relative(gv)}"] = document
            root[_relative(gv)] = {"serverRelativeURL": f"{OPENAPI_V3}/{_relative(gv)}?hash={digest}"}
        self.root = {"paths": root}

    def get(self, path: str) -> dict[str, Any] | None:
        """The document at a path (/openapi/v3 or one group version's), None if none."""
        if path == OPENAPI_V3:
            return self.root
        return self.documents.get(path)
