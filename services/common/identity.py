"""Who a caller is: Kubernetes' user info, and how a client certificate names it.

A certificate's common name is the user and each organization a group, as in
Kubernetes (`CN=system:node:node-1, O=system:nodes`). Shared by the API server,
which authenticates every call, and the kubelet, which authenticates the callers
of its own API.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Mapping

from cryptography import x509
from cryptography.x509.oid import NameOID

SYSTEM_MASTERS = "system:masters"
SYSTEM_NODES = "system:nodes"
SYSTEM_AUTHENTICATED = "system:authenticated"
SYSTEM_UNAUTHENTICATED = "system:unauthenticated"
SYSTEM_BOOTSTRAPPERS = "system:bootstrappers"
NODE_USER_PREFIX = "system:node:"
BOOTSTRAP_USER_PREFIX = "system:bootstrap:"
ANONYMOUS_USER = "system:anonymous"
# The controller side (endpoints, node lifecycle, replication, scheduling), as kube-controller-manager.
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
# The API server's own calls (its in-process controllers use certificates like any other).
APISERVER_USER = "system:apiserver"


@dataclass(frozen=True)
class UserInfo:
    """An authenticated caller: a name and the groups it belongs to."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""

    def in_group(self, group: str) -> bool:
        return group in self.groups

    @property
    def node_name(self) -> str | None:
        """The node a kubelet's identity speaks for (`system:node:<name>` in `system:nodes`)."""
        if self.name.startswith(NODE_USER_PREFIX) and SYSTEM_NODES in self.groups:
            return self.name[len(NODE_USER_PREFIX) :] or None
        return None

    def __str__(self) -> str:
        return self.name


ANONYMOUS = UserInfo(ANONYMOUS_USER, (SYSTEM_UNAUTHENTICATED,))
APISERVER = UserInfo(APISERVER_USER, (SYSTEM_MASTERS, SYSTEM_AUTHENTICATED))


def authenticated(name: str, groups: tuple[str, ...] | list[str], uid: str = "") -> UserInfo:
    """A user with `system:authenticated` added, as every authenticated Kubernetes user has."""
    kept = tuple(dict.fromkeys(g for g in groups if g))
    if SYSTEM_AUTHENTICATED not in kept:
        kept += (SYSTEM_AUTHENTICATED,)
    return UserInfo(name, kept, uid)


@functools.lru_cache(maxsize=1024)
def user_from_certificate(pem: bytes) -> UserInfo:
    """The user a verified client certificate names. Cached: a connection sends the same
    certificate on every call, and parsing it costs more than the call."""
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    groups = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return authenticated(name, groups)


def user_from_auth_context(auth_context: Mapping[str, Iterable[bytes]]) -> UserInfo | None:
    """The user of a gRPC call's verified peer certificate, if the peer sent one."""
    pems = list(auth_context.get("x509_pem_cert") or ())
    if not pems:
        return None
    user = user_from_certificate(pems[0])
    return user if user.name else None
