"""RBAC: roles and bindings, evaluated from the watch caches (placeholder: masters only)."""

from __future__ import annotations

from typing import Mapping

from services.common.identity import SYSTEM_MASTERS

from ..registry import Registry
from .admission import AdmissionPlugin
from .attributes import ALLOW, NO_OPINION, Authorizer, RequestAttributes, Verdict


class RBACAuthorizer:
    def __init__(self, registries: Mapping[str, Registry]) -> None:
        self.registries = registries

    def authorize(self, attributes: RequestAttributes) -> Verdict:
        if attributes.user.in_group(SYSTEM_MASTERS):
            return ALLOW
        return NO_OPINION


def admission_plugins(registries: Mapping[str, Registry], authorizer: Authorizer) -> list[AdmissionPlugin]:
    """RBAC's escalation check (placeholder: none yet)."""
    return []
