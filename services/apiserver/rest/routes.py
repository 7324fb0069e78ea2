"""Kubernetes' URL layout, derived from the kinds table: which kind, namespace, name and
subresource a path names (apiserver's RequestInfoFactory), and what a method on it means.

    /api/v1/[namespaces/{ns}/]{plural}[/{name}[/{subresource}]]
    /apis/{group}/{version}/[namespaces/{ns}/]{plural}[/{name}[/{subresource}]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from services.common.resources import ALL_KINDS, Kind

# Subresources of a namespace itself (namespaces/{name}/status), not a namespaced path.
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


def group_version(kind: Kind) -> tuple[str, str]:
    """("", "v1") for the core group, ("rbac.authorization.k8s.io", "v1") for others."""
    group, _, version = kind.api_version.rpartition("/")
    return group, version


@dataclass(frozen=True)
class GroupVersion:
    group: str
    version: str
    kinds: tuple[Kind, ...]

    @property
    def name(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


def group_versions(kinds: Iterable[Kind] = ALL_KINDS) -> list[GroupVersion]:
    """The group versions the kinds are in, the core group first, each with its kinds."""
    found: dict[tuple[str, str], list[Kind]] = {}
    for kind in kinds:
        found.setdefault(group_version(kind), []).append(kind)
    return [GroupVersion(group, version, tuple(members)) for (group, version), members in found.items()]


@dataclass(frozen=True)
class ResourcePath:
    """What a resource URL names."""

    kind: Kind
    namespace: str  # "" for a cluster-scoped kind or a list across namespaces
    name: str
    subresource: str

    @property
    def api_group(self) -> str:
        return group_version(self.kind)[0]


class PathError(LookupError):
    """A path that names nothing served here (404)."""


class Router:
    """Resolves paths against the kinds, by (group, version, plural)."""

    def __init__(self, kinds: Iterable[Kind] = ALL_KINDS) -> None:
        self.versions = group_versions(kinds)
        self._by_plural: dict[tuple[str, str, str], Kind] = {
            (gv.group, gv.version, kind.plural): kind for gv in self.versions for kind in gv.kinds
        }

    def resolve(self, path: str) -> ResourcePath:
        parts = [part for part in path.split("/") if part]
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise PathError(path)
        if not rest:
            raise PathError(path)
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in _NAMESPACE_SUBRESOURCES):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise PathError(path)
        kind = self._by_plural.get((group, version, rest[0]))
        if kind is None or (namespace and not kind.namespaced):
            raise PathError(path)
        name = rest[1] if len(rest) > 1 else ""
        subresource = rest[2] if len(rest) > 2 else ""
        return ResourcePath(kind, namespace, name, subresource)
