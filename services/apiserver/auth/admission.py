"""Admission: checks of an object against policy, after validation and before storage.

After Kubernetes' validating admission plugins: each plugin sees what a write would
store (and what was stored before) and who asks, and refuses by raising ApiError. They
run inside the registry's write (the update's mutate function), so a plugin is
synchronous and reads only caches; a refused write changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from services.common.identity import UserInfo
from services.common.resources import Kind

CREATE = "CREATE"
UPDATE = "UPDATE"
DELETE = "DELETE"


@dataclass(frozen=True)
class AdmissionRequest:
    user: UserInfo
    operation: str  # CREATE, UPDATE, DELETE
    kind: Kind
    obj: Any  # what would be stored; for DELETE, the stored object
    old: Any = None  # the stored object (UPDATE)
    subresource: str = ""  # "status", "binding"

    @property
    def namespace(self) -> str:
        return str(self.obj.metadata.namespace)

    @property
    def name(self) -> str:
        return str(self.obj.metadata.name)


class AdmissionPlugin(Protocol):
    name: str

    def admit(self, request: AdmissionRequest) -> None:
        """Raises ApiError (INVALID_ARGUMENT or PERMISSION_DENIED) to refuse."""


class AdmissionChain:
    """Every plugin, in order; the first refusal wins."""

    def __init__(self, plugins: list[AdmissionPlugin] | None = None) -> None:
        self.plugins = list(plugins or [])

    def admit(self, request: AdmissionRequest) -> None:
        for plugin in self.plugins:
            plugin.admit(request)
