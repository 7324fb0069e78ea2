"""RBAC: roles and bindings, evaluated from the watch caches (placeholder: masters only)."""

from __future__ import annotations

from typing import Mapping

from services.common.identity import SYSTEM_MASTERS

from ..registry import Registry
from .attributes import ALLOW, NO_OPINION, RequestAttributes, Verdict


class RBACAuthorizer:
    def __init__(self, registries: Mapping[str, Registry]) -> None:
        self.registries = registries

    def authorize(self, attributes: RequestAttributes) -> Verdict:
        if attributes.user.in_group(SYSTEM_MASTERS):
            return ALLOW
        return NO_OPINION
