"""Discovery documents, from the kinds table: /version, /api, /api/v1, /apis, /apis/{group}/{version}.

Only the unaggregated (legacy) form is served. kubectl (client-go's discovery client) asks
/api and /apis for `application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`
first, and falls back to the per-group-version documents when the answer's Content-Type is
plain `application/json` — which it always is here.
"""

from __future__ import annotations

import platform
from typing import Any, Mapping

from services.common.resources import Kind

from .routes import GroupVersion, group_version

# The Kubernetes API level this REST API follows: kubectl compares it with its own version
# (a skew warning beyond one minor release) and the Python client shows it.
KUBERNETES_MAJOR, KUBERNETES_MINOR = "1", "37"
GIT_VERSION = f"v{KUBERNETES_MAJOR}.{KUBERNETES_MINOR}.0+kybernetes"

# The verbs every kind's REST resource serves; deletecollection but where Kubernetes has none
# (namespaces: one DELETE would end every namespace).
RESOURCE_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
NO_DELETE_COLLECTION = frozenset({"namespaces"})
# What a subresource is and takes: its verbs and the kind of its request body (with its group
# and version when not the resource's own: autoscaling/v1 Scale).
SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "binding": ["create"], "scale": ["get", "patch", "update"]}
SUBRESOURCE_KIND = {"binding": "Binding", "scale": "Scale"}
SUBRESOURCE_GROUP_VERSION = {"scale": ("autoscaling", "v1")}
# Kubernetes' categories: `kubectl get all` lists the resources in "all".
CATEGORIES = {"pods": ["all"], "services": ["all"], "replicationcontrollers": ["all"]}


def version() -> dict[str, Any]:
    return {
        "major": KUBERNETES_MAJOR,
        "minor": KUBERNETES_MINOR,
        "gitVersion": GIT_VERSION,
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "python",
        "platform": f"{platform.system().lower()}/{platform.machine()}",
    }


def api_versions(versions: list[GroupVersion]) -> dict[str, Any]:
    """/api: the core group's versions."""
    return {
        "kind": "APIVersions",
        "apiVersion": "v1",
        "versions": [gv.version for gv in versions if not gv.group],
        "serverAddressByClientCIDRs": [],
    }


def api_group_list(versions: list[GroupVersion]) -> dict[str, Any]:
    """/apis: every named group (the core group is /api's)."""
    groups = []
    for gv in versions:
        if not gv.group:
            continue
        entry = {"groupVersion": gv.name, "version": gv.version}
        groups.append({"name": gv.group, "versions": [entry], "preferredVersion": entry})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(gv: GroupVersion) -> dict[str, Any]:
    """/apis/{group}: one group."""
    entry = {"groupVersion": gv.name, "version": gv.version}
    return {"kind": "APIGroup", "apiVersion": "v1", "name": gv.group, "versions": [entry], "preferredVersion": entry}


def api_resource_list(gv: GroupVersion, subresources: Mapping[str, list[str]]) -> dict[str, Any]:
    """/api/v1 or /apis/{group}/{version}: the resources, with `subresources[kind name]`."""
    resources: list[dict[str, Any]] = []
    for kind in gv.kinds:
        resources.append(_resource(kind))
        for sub in subresources.get(kind.name, []):
            entry = {
                "name": f"{kind.plural}/{sub}",
                "singularName": "",
                "namespaced": kind.namespaced,
                "kind": SUBRESOURCE_KIND.get(sub, kind.name),
                "verbs": SUBRESOURCE_VERBS.get(sub, ["get"]),
            }
            if sub in SUBRESOURCE_GROUP_VERSION:
                entry["group"], entry["version"] = SUBRESOURCE_GROUP_VERSION[sub]
            resources.append(entry)
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv.name, "resources": resources}


def _resource(kind: Kind) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "name": kind.plural,
        "singularName": kind.singular,
        "namespaced": kind.namespaced,
        "kind": kind.name,
        "verbs": [verb for verb in RESOURCE_VERBS
                  if verb != "deletecollection" or kind.plural not in NO_DELETE_COLLECTION],
    }
    if kind.short_names:
        resource["shortNames"] = list(kind.short_names)
    if kind.plural in CATEGORIES and not group_version(kind)[0]:
        resource["categories"] = CATEGORIES[kind.plural]
    return resource
