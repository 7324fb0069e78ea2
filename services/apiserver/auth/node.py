"""The Node authorizer: what a kubelet's identity may do (placeholder: no opinion)."""

from __future__ import annotations

from typing import Mapping

from ..registry import Registry
from .admission import AdmissionPlugin
from .attributes import NO_OPINION, RequestAttributes, Verdict


class NodeAuthorizer:
    def __init__(self, registries: Mapping[str, Registry]) -> None:
        self.registries = registries

    def authorize(self, attributes: RequestAttributes) -> Verdict:
        return NO_OPINION


def admission_plugins(registries: Mapping[str, Registry]) -> list[AdmissionPlugin]:
    """NodeRestriction (placeholder: none yet)."""
    return []
