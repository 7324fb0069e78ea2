"""The authorizers and admission plugins one API server runs, in their order."""

from __future__ import annotations

from typing import Mapping

from .. import nodeipam
from ..registry import Registry
from . import node, objectrules, podsecurity, rbac, replicaslimit
from .admission import AdmissionPlugin
from .attributes import UnionAuthorizer


def build_authorizer(registries: Mapping[str, Registry]) -> UnionAuthorizer:
    """Kubernetes' default order: the Node authorizer, then RBAC."""
    return UnionAuthorizer([node.NodeAuthorizer(registries), rbac.RBACAuthorizer(registries)])


def build_admission_plugins(
    registries: Mapping[str, Registry],
    authorizer: UnionAuthorizer,
    *,
    pod_security_default: str,
    cluster_cidr: str | None = None,
    node_cidr_mask_size: int = nodeipam.DEFAULT_NODE_CIDR_MASK_SIZE,
    max_replicas: int = replicaslimit.DEFAULT_MAX_REPLICAS,
) -> list[AdmissionPlugin]:
    """Validating admission, in order: NodeRestriction, RBAC's escalation check, the object
    rules (endpoints addresses, immutable fields, Node pod ranges, the replicas ceiling), then
    Pod Security."""
    return [
        *node.admission_plugins(registries),
        *rbac.admission_plugins(registries, authorizer),
        *objectrules.admission_plugins(registries),
        *nodeipam.admission_plugins(registries, cluster_cidr=cluster_cidr, node_cidr_mask_size=node_cidr_mask_size),
        *replicaslimit.admission_plugins(max_replicas),
        *podsecurity.admission_plugins(registries, default_level=pod_security_default),
    ]
