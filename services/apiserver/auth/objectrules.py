"""Admission rules on objects: endpoints addresses, what a pod update may change (placeholder)."""

from __future__ import annotations

from typing import Mapping

from ..registry import Registry
from .admission import AdmissionPlugin


def admission_plugins(registries: Mapping[str, Registry]) -> list[AdmissionPlugin]:
    return []
