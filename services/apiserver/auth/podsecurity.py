"""Pod Security admission: privileged, baseline and restricted levels per namespace (placeholder)."""

from __future__ import annotations

from typing import Mapping

from ..registry import Registry
from .admission import AdmissionPlugin

LEVELS = ("privileged", "baseline", "restricted")
DEFAULT_LEVEL = "baseline"


def admission_plugins(
    registries: Mapping[str, Registry], *, default_level: str = DEFAULT_LEVEL
) -> list[AdmissionPlugin]:
    return []
