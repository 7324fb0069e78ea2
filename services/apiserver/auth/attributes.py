"""What a request would do, as authorizers see it, and what they answer.

After Kubernetes' authorizer.Attributes: a user, a verb on a resource (with its
subresource), in a namespace, optionally one object by name, and a list's or watch's
field and label selectors (KEP-4601, authorize with selectors). Every authorizer is a
pure function of these attributes and what it has cached; none reads etcd per call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from services.common.identity import UserInfo

# Kubernetes' verbs, by our RPC names (UpdateStatus and Bind are subresources).
VERB_OF_METHOD = {
    "Create": "create",
    "Get": "get",
    "List": "list",
    "Watch": "watch",
    "Update": "update",
    "Delete": "delete",
    "UpdateStatus": "update",
    "Bind": "create",
}
SUBRESOURCE_OF_METHOD = {"UpdateStatus": "status", "Bind": "binding"}


@dataclass(frozen=True)
class RequestAttributes:
    user: UserInfo
    verb: str  # get, list, watch, create, update, delete
    resource: str  # plural: "pods"
    subresource: str = ""  # "status", "binding", "log", "proxy"
    namespace: str = ""
    name: str = ""
    api_group: str = ""  # "" (core) or "rbac.authorization.k8s.io"
    # A list's or watch's selectors as the caller sent them (unparsed: an authorizer that
    # narrows reads by them parses them, as Kubernetes' GetFieldSelector does), else "".
    field_selector: str = ""
    label_selector: str = ""

    def describe(self) -> str:
        """`verb "create" on resource "pods" in namespace "a"`, for PERMISSION_DENIED messages."""
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        where = f' in namespace "{self.namespace}"' if self.namespace else " at the cluster scope"
        named = f' named "{self.name}"' if self.name else ""
        return f'user "{self.user.name}" cannot {self.verb} resource "{resource}"{named}{where}'


class Decision(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"  # final: later authorizers are not asked
    NO_OPINION = "no-opinion"


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW


ALLOW = Verdict(Decision.ALLOW)
NO_OPINION = Verdict(Decision.NO_OPINION)


class Authorizer(Protocol):
    def authorize(self, attributes: RequestAttributes) -> Verdict: ...


class UnionAuthorizer:
    """Asks each authorizer in turn; the first ALLOW or DENY decides (Kubernetes' union)."""

    def __init__(self, authorizers: list[Authorizer]) -> None:
        self.authorizers = authorizers

    def authorize(self, attributes: RequestAttributes) -> Verdict:
        reasons = []
        for authorizer in self.authorizers:
            verdict = authorizer.authorize(attributes)
            if verdict.decision is not Decision.NO_OPINION:
                return verdict
            if verdict.reason:
                reasons.append(verdict.reason)
        return Verdict(Decision.NO_OPINION, "; ".join(reasons))
