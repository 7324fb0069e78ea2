"""The default RBAC policy and system namespaces, written once when the API server starts.

Kubernetes' bootstrap policy (plugin/pkg/auth/authorizer/rbac/bootstrappolicy), adapted
to the kinds this API serves: the user-facing roles `cluster-admin`, `admin`, `edit` and
`view` (their rules listed, not aggregated), `system:basic-user` for every authenticated
caller, and one role per component identity, each granting what that component's code
calls and nothing more (see each role's comment). Events, secrets, config maps and the
other kinds Kubernetes' roles name are left out: this API has none of them. Leader election
leases are granted by a Role in kube-system (Kubernetes' namespaced bootstrap roles), not
cluster-wide.

`reconcile_bootstrap` is Kubernetes' RBAC reconciliation at start-up: a missing object is
created; an existing one annotated `rbac.authorization.kubernetes.io/autoupdate: "false"`
is left as its owner wrote it; any other gets the rules (or subjects) it lacks added,
never removed, and a binding whose roleRef differs is recreated. Then the namespaces
`default`, `kube-system` (Pod Security level `privileged`: the components' static pods
run there), `kube-public` and `kube-node-lease` (the nodes' Leases) are created if
missing, and the Roles and RoleBindings in them reconciled the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import grpc

from kybernetes.v1 import meta_pb2, namespace_pb2, rbac_pb2
from services.common.identity import (
    CONTROLLER_MANAGER_USER,
    SYSTEM_AUTHENTICATED,
    SYSTEM_BOOTSTRAPPERS,
    SYSTEM_MASTERS,
    SYSTEM_NODES,
)
from services.common.log import get_logger
from services.common.resources import CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, NAMESPACES, ROLE_BINDINGS, ROLES, Kind
from services.common.validation import RBAC_API_GROUP

from ..errors import ApiError
from ..registry import Registry
from .rbac import GROUP_KIND, SERVICE_ACCOUNT_KIND, USER_KIND, Rule, covers

log = get_logger()

AUTOUPDATE_ANNOTATION = "rbac.authorization.kubernetes.io/autoupdate"
BOOTSTRAPPING_LABEL = "kubernetes.io/bootstrapping"
BOOTSTRAPPING_VALUE = "rbac-defaults"
POD_SECURITY_ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"

# Component identities (client certificate subjects), as Kubernetes names them.
KUBE_SCHEDULER = "system:kube-scheduler"
KUBE_PROXY = "system:kube-proxy"
KUBE_DNS = "system:kube-dns"
APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"

CORE = ""
AUTHORIZATION_GROUP = "authorization.k8s.io"
AUTHENTICATION_GROUP = "authentication.k8s.io"
CERTIFICATES_GROUP = "certificates.k8s.io"
COORDINATION_GROUP = "coordination.k8s.io"

# Kubernetes' verb sets for the user-facing roles. patch and deletecollection have no RPC
# here; they stay so that these roles read as Kubernetes' do and cover manifests written
# for Kubernetes (a Role copied from its documentation needs its verbs held to be made).
READ = ("get", "list", "watch")
WRITE = ("create", "update", "patch", "delete", "deletecollection")

DEFAULT_NAMESPACE, SYSTEM_NAMESPACE, PUBLIC_NAMESPACE = "default", "kube-system", "kube-public"
# Each kubelet's Lease, its heartbeat (KEP-589); the Node authorizer keeps a node to its own.
NODE_LEASE_NAMESPACE = "kube-node-lease"

# How often a write that lost a race (another API server starting at the same time) is retried.
_ATTEMPTS = 5


def rule(
    verbs: Iterable[str],
    groups: Iterable[str] = (),
    resources: Iterable[str] = (),
    names: Iterable[str] = (),
    urls: Iterable[str] = (),
) -> rbac_pb2.PolicyRule:
    return rbac_pb2.PolicyRule(
        verbs=list(verbs),
        api_groups=list(groups),
        resources=list(resources),
        resource_names=list(names),
        non_resource_urls=list(urls),
    )


def _metadata(name: str, namespace: str = "") -> meta_pb2.ObjectMeta:
    return meta_pb2.ObjectMeta(
        name=name,
        namespace=namespace,
        labels={BOOTSTRAPPING_LABEL: BOOTSTRAPPING_VALUE},
        annotations={AUTOUPDATE_ANNOTATION: "true"},
    )


def cluster_role(name: str, *rules: rbac_pb2.PolicyRule) -> rbac_pb2.ClusterRole:
    return rbac_pb2.ClusterRole(
        api_version=CLUSTER_ROLES.api_version, kind=CLUSTER_ROLES.name, metadata=_metadata(name), rules=rules
    )


def subject(kind: str, name: str, namespace: str = "") -> rbac_pb2.Subject:
    return rbac_pb2.Subject(
        kind=kind, name=name, namespace=namespace, api_group="" if kind == SERVICE_ACCOUNT_KIND else RBAC_API_GROUP
    )


def cluster_role_binding(name: str, *subjects: rbac_pb2.Subject, role: str = "") -> rbac_pb2.ClusterRoleBinding:
    """A binding of the ClusterRole `role` (by default the binding's own name)."""
    return rbac_pb2.ClusterRoleBinding(
        api_version=CLUSTER_ROLE_BINDINGS.api_version,
        kind=CLUSTER_ROLE_BINDINGS.name,
        metadata=_metadata(name),
        subjects=subjects,
        role_ref=rbac_pb2.RoleRef(api_group=RBAC_API_GROUP, kind=CLUSTER_ROLES.name, name=role or name),
    )


def role(name: str, namespace: str, *rules: rbac_pb2.PolicyRule) -> rbac_pb2.Role:
    return rbac_pb2.Role(
        api_version=ROLES.api_version, kind=ROLES.name, metadata=_metadata(name, namespace), rules=rules
    )


def role_binding(name: str, namespace: str, *subjects: rbac_pb2.Subject, role: str = "") -> rbac_pb2.RoleBinding:
    """A binding, in namespace, of the Role `role` there (by default the binding's own name)."""
    return rbac_pb2.RoleBinding(
        api_version=ROLE_BINDINGS.api_version,
        kind=ROLE_BINDINGS.name,
        metadata=_metadata(name, namespace),
        subjects=subjects,
        role_ref=rbac_pb2.RoleRef(api_group=RBAC_API_GROUP, kind=ROLES.name, name=role or name),
    )


# -- the user-facing roles ----------------------------------------------------------------

# view: read what a namespace runs, nothing that grants more (Kubernetes' aggregate-to-view).
_VIEW_RULES = (
    rule(
        READ,
        [CORE],
        ["pods", "replicationcontrollers", "replicationcontrollers/scale", "services", "services/status", "endpoints"],
    ),
    rule(READ, [CORE], ["pods/status", "pods/log", "replicationcontrollers/status", "namespaces/status"]),
    rule(READ, [CORE], ["events"]),
    # Read access to namespaces at the namespace scope means reading *this* namespace.
    rule(READ, [CORE], ["namespaces"]),
)
# edit: view, and every write a user makes in a namespace; no status (the system's) and no
# roles (Kubernetes' aggregate-to-edit).
_EDIT_RULES = (
    *_VIEW_RULES,
    rule(WRITE, [CORE], ["pods"]),
    rule(WRITE, [CORE], ["replicationcontrollers", "replicationcontrollers/scale", "services", "endpoints"]),
)
# admin: edit, and granting it in the namespace (Kubernetes' aggregate-to-admin).
_ADMIN_RULES = (
    *_EDIT_RULES,
    rule(READ + WRITE, [RBAC_API_GROUP], ["roles", "rolebindings"]),
)

# -- the components' roles ------------------------------------------------------------------

# Recording events (services/common/events.py: create, and update to count a repeat), in any
# namespace: Kubernetes' eventsRule, in the scheduler's, the controllers' and the nodes' roles.
_EVENTS_RULE = rule(["create", "update", "patch"], [CORE], ["events"])
# Kubernetes grants the nodes this through the Node authorizer's static rules; here the Node
# authorizer has no opinion on events and this role, bound to the group system:nodes, decides.
NODE_EVENTS = "system:node-events"

# The scheduler (services/apiserver/scheduler): watches pods, nodes and services (for its
# spreading score), binds pods, and writes a pod's PodScheduled condition when it cannot.
# Kubernetes' role also has delete on pods (preemption), events, leases and reads of
# volumes and workload kinds: none of those exist here.
_SCHEDULER_RULES = (
    rule(READ, [CORE], ["nodes"]),
    rule(READ, [CORE], ["pods"]),
    rule(["create"], [CORE], ["pods/binding"]),
    rule(["update"], [CORE], ["pods/status"]),
    rule(READ, [CORE], ["services"]),
    _EVENTS_RULE,
)

# The controller side: the endpoints and node lifecycle controllers in the API server's
# process and the replicator, one identity. What each calls:
# - endpoints (endpoints_controller.py): informers on services, pods, endpoints, nodes;
#   create, update and delete endpoints.
# - node lifecycle (nodelifecycle.py): informers on nodes and pods; UpdateStatus of nodes
#   (Ready Unknown) and pods (Ready False and back); delete of pods (eviction); get of a
#   node (the owner of a Lease it would delete).
# - node IPAM (nodeipam.py): informer on nodes; update of nodes (spec.podCIDR), UpdateStatus
#   of nodes (NetworkUnavailable).
# - replicator (services/replicator/manager.py): informers on replication controllers and
#   pods; get of a controller (before adopting or deleting); create, update (adopt, release)
#   and delete of pods; UpdateStatus of controllers.
# The scheduler runs with them: its role is bound to this identity too. Kubernetes' own
# role is list/watch on everything plus a service account per controller; this is the
# union of those controllers' roles, cut to what the code above calls.
_CONTROLLER_MANAGER_RULES = (
    rule(["list", "watch"], [CORE], ["pods", "nodes", "services", "endpoints", "replicationcontrollers"]),
    rule(["get"], [CORE], ["replicationcontrollers", "nodes"]),
    rule(["create", "update", "delete"], [CORE], ["endpoints"]),
    rule(["create", "update", "delete"], [CORE], ["pods"]),
    rule(["update"], [CORE], ["nodes"]),
    rule(["update"], [CORE], ["nodes/status", "pods/status", "replicationcontrollers/status"]),
    _EVENTS_RULE,
)


def cluster_roles() -> list[rbac_pb2.ClusterRole]:
    return [
        # Everything, everywhere: the root role (bound to system:masters).
        cluster_role("cluster-admin", rule(["*"], ["*"], ["*"]), rule(["*"], urls=["*"])),
        cluster_role("admin", *_ADMIN_RULES),
        cluster_role("edit", *_EDIT_RULES),
        cluster_role("view", *_VIEW_RULES),
        # What any authenticated caller may learn about itself: `kubecfg auth can-i`, `auth whoami`.
        cluster_role(
            "system:basic-user",
            rule(["create"], [AUTHORIZATION_GROUP], ["selfsubjectaccessreviews"]),
            rule(["create"], [AUTHENTICATION_GROUP], ["selfsubjectreviews"]),
        ),
        cluster_role(KUBE_SCHEDULER, *_SCHEDULER_RULES),
        cluster_role(CONTROLLER_MANAGER_USER, *_CONTROLLER_MANAGER_RULES),
        cluster_role(NODE_EVENTS, _EVENTS_RULE),
        # kube-proxy (services/proxy): informers on services and endpoints; Kubernetes' role
        # also reads nodes (the proxy's own Node, for its topology).
        cluster_role(
            "system:node-proxier",
            rule(["list", "watch"], [CORE], ["services", "endpoints"]),
            rule(READ, [CORE], ["nodes"]),
        ),
        # The DNS server (services/dns): informers on services and endpoints.
        cluster_role("system:kube-dns", rule(["list", "watch"], [CORE], ["endpoints", "services"])),
        # Every call to a kubelet's own API (pod listing, logs, static pods), for the API
        # server's client to kubelets (Kubernetes' role, cut to the subresources kubelets serve).
        cluster_role(
            "system:kubelet-api-admin",
            rule(READ, [CORE], ["nodes"]),
            rule(["proxy"], [CORE], ["nodes"]),
            rule(["*"], [CORE], ["nodes/proxy", "nodes/log"]),
        ),
        # A joining node's bootstrap token asks for its certificate (Certificates.Sign), which
        # answers in the same call: no get or watch of the request as in Kubernetes.
        cluster_role(
            "system:node-bootstrapper", rule(["create"], [CERTIFICATES_GROUP], ["certificatesigningrequests"])
        ),
    ]


# Leader election (services/common/runtime/leaderelection.py) of the controllers in the API
# servers (lease kube-controller-manager) and of the replicators (lease kube-replicator),
# both as this identity: get, create and update of leases in kube-system, nowhere else.
# Kubernetes grants kube-controller-manager the same verbs (create any lease, get and update
# its own); here the lease names are flags (--leader-elect-resource-name), so the Role names
# none, and its namespace is the bound.
LEADER_LOCKING_CONTROLLER_MANAGER = "system::leader-locking-kube-controller-manager"
_LEADER_LOCKING_RULES = (rule(["get", "create", "update"], [COORDINATION_GROUP], ["leases"]),)


# The nodes' Leases are their heartbeats: the node lifecycle controller watches them
# (informers on leases in kube-node-lease), nowhere else, and deletes the Lease of a deleted
# Node (its owner; Kubernetes' garbage collector's part). Each node writes its own through
# the Node authorizer, not RBAC.
NODE_LEASE_READER = "system::node-lease-reader"
_NODE_LEASE_READER_RULES = (rule(["list", "watch"], [COORDINATION_GROUP], ["leases"]),)
NODE_LEASE_COLLECTOR = "system::node-lease-collector"
_NODE_LEASE_COLLECTOR_RULES = (rule(["delete"], [COORDINATION_GROUP], ["leases"]),)


def namespace_roles() -> list[rbac_pb2.Role]:
    """The Roles of the system namespaces (Kubernetes' NamespaceRoles)."""
    return [
        role(LEADER_LOCKING_CONTROLLER_MANAGER, SYSTEM_NAMESPACE, *_LEADER_LOCKING_RULES),
        role(NODE_LEASE_READER, NODE_LEASE_NAMESPACE, *_NODE_LEASE_READER_RULES),
        role(NODE_LEASE_COLLECTOR, NODE_LEASE_NAMESPACE, *_NODE_LEASE_COLLECTOR_RULES),
    ]


def namespace_role_bindings() -> list[rbac_pb2.RoleBinding]:
    return [
        role_binding(
            LEADER_LOCKING_CONTROLLER_MANAGER, SYSTEM_NAMESPACE, subject(USER_KIND, CONTROLLER_MANAGER_USER)
        ),
        role_binding(NODE_LEASE_READER, NODE_LEASE_NAMESPACE, subject(USER_KIND, CONTROLLER_MANAGER_USER)),
        role_binding(NODE_LEASE_COLLECTOR, NODE_LEASE_NAMESPACE, subject(USER_KIND, CONTROLLER_MANAGER_USER)),
    ]


def cluster_role_bindings() -> list[rbac_pb2.ClusterRoleBinding]:
    return [
        cluster_role_binding("cluster-admin", subject(GROUP_KIND, SYSTEM_MASTERS)),
        cluster_role_binding("system:basic-user", subject(GROUP_KIND, SYSTEM_AUTHENTICATED)),
        cluster_role_binding(
            KUBE_SCHEDULER, subject(USER_KIND, KUBE_SCHEDULER), subject(USER_KIND, CONTROLLER_MANAGER_USER)
        ),
        cluster_role_binding(CONTROLLER_MANAGER_USER, subject(USER_KIND, CONTROLLER_MANAGER_USER)),
        cluster_role_binding(NODE_EVENTS, subject(GROUP_KIND, SYSTEM_NODES)),
        cluster_role_binding("system:node-proxier", subject(USER_KIND, KUBE_PROXY)),
        cluster_role_binding("system:kube-dns", subject(USER_KIND, KUBE_DNS)),
        cluster_role_binding("system:kubelet-api-admin", subject(USER_KIND, APISERVER_KUBELET_CLIENT)),
        cluster_role_binding("system:node-bootstrapper", subject(GROUP_KIND, SYSTEM_BOOTSTRAPPERS)),
    ]


def namespaces() -> list[namespace_pb2.Namespace]:
    def namespace(name: str, labels: Mapping[str, str] | None = None) -> namespace_pb2.Namespace:
        return namespace_pb2.Namespace(
            api_version=NAMESPACES.api_version,
            kind=NAMESPACES.name,
            metadata=meta_pb2.ObjectMeta(name=name, labels=dict(labels or {})),
        )

    return [
        namespace(DEFAULT_NAMESPACE),
        namespace(SYSTEM_NAMESPACE, {POD_SECURITY_ENFORCE_LABEL: "privileged"}),
        namespace(PUBLIC_NAMESPACE),
        namespace(NODE_LEASE_NAMESPACE),
    ]


# -- reconciliation ---------------------------------------------------------------------------

CREATED, UPDATED, RECREATED, UNCHANGED, PROTECTED = "created", "updated", "recreated", "unchanged", "protected"


@dataclass(frozen=True)
class Reconciled:
    kind: str
    name: str
    action: str  # created, updated, recreated, unchanged, protected


def _merged(expected: Mapping[str, str], existing: Mapping[str, str]) -> dict[str, str]:
    """Kubernetes' merge: the expected keys a stored object lacks are added; its own values win."""
    return {**expected, **existing}


def _subject_key(value: Any) -> tuple[str, str, str, str]:
    # A User's or Group's apiGroup defaults to the RBAC group: "" and that group are one subject.
    group = value.api_group or (RBAC_API_GROUP if value.kind in (USER_KIND, GROUP_KIND) else "")
    return value.kind, group, value.name, value.namespace


def _protected(obj: Any) -> bool:
    return bool(obj.metadata.annotations.get(AUTOUPDATE_ANNOTATION) == "false")


def _reconciled_metadata(desired: Any, expected: Any, existing: Any) -> None:
    labels = _merged(expected.metadata.labels, existing.metadata.labels)
    annotations = _merged(expected.metadata.annotations, existing.metadata.annotations)
    desired.metadata.labels.clear()
    desired.metadata.labels.update(labels)
    desired.metadata.annotations.clear()
    desired.metadata.annotations.update(annotations)


def reconciled_role(expected: Any, existing: Any) -> Any | None:
    """The stored role (a ClusterRole or a Role) with what it lacks added (metadata, and the
    expected rules it does not cover, atom by atom, as Kubernetes appends them), or None
    when nothing is missing."""
    desired = type(existing)()
    desired.CopyFrom(existing)
    _reconciled_metadata(desired, expected, existing)
    _, missing = covers([Rule.of(r) for r in existing.rules], expected.rules)
    for atom in missing:
        desired.rules.append(
            rule(
                [atom.verb],
                [atom.api_group] if not atom.non_resource_url else [],
                [atom.resource] if atom.resource else [],
                [atom.resource_name] if atom.resource_name else [],
                [atom.non_resource_url] if atom.non_resource_url else [],
            )
        )
    return None if desired == existing else desired


def reconciled_binding(expected: Any, existing: Any) -> Any | None:
    """The stored binding (cluster-wide or not) with the expected subjects it lacks added, or
    None when complete."""
    desired = type(existing)()
    desired.CopyFrom(existing)
    _reconciled_metadata(desired, expected, existing)
    have = {_subject_key(s) for s in existing.subjects}
    desired.subjects.extend(s for s in expected.subjects if _subject_key(s) not in have)
    return None if desired == existing else desired


async def _read(registry: Registry, name: str, namespace: str = "") -> Any | None:
    try:
        return await registry.get(meta_pb2.GetRequest(name=name, namespace=namespace))
    except ApiError as error:
        if error.code == grpc.StatusCode.NOT_FOUND:
            return None
        raise


async def _reconcile(registry: Registry, expected: Any) -> str:
    kind: Kind = registry.kind
    name, namespace = expected.metadata.name, expected.metadata.namespace
    is_binding = kind in (CLUSTER_ROLE_BINDINGS, ROLE_BINDINGS)
    for _ in range(_ATTEMPTS):
        existing = await _read(registry, name, namespace)
        try:
            if existing is None:
                await registry.create(expected)
                return CREATED
            if _protected(existing):
                return PROTECTED
            if is_binding and existing.role_ref != expected.role_ref:
                # A roleRef cannot change: Kubernetes deletes and recreates the binding.
                await registry.delete(
                    meta_pb2.DeleteRequest(
                        name=name, namespace=namespace, resource_version=existing.metadata.resource_version
                    )
                )
                await registry.create(expected)
                return RECREATED
            desired = reconciled_binding(expected, existing) if is_binding else reconciled_role(expected, existing)
            if desired is None:
                return UNCHANGED
            await registry.update(desired)  # guarded by the resource_version just read
            return UPDATED
        except ApiError as error:
            # Another API server wrote it meanwhile: read again and decide again.
            if error.code not in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND):
                raise
    raise ApiError(grpc.StatusCode.ABORTED, f'{kind.plural} "{name}": too many concurrent writers at start-up')


async def _ensure_namespace(registry: Registry, expected: namespace_pb2.Namespace) -> str:
    if await _read(registry, expected.metadata.name) is not None:
        return UNCHANGED
    try:
        await registry.create(expected)
    except ApiError as error:
        if error.code != grpc.StatusCode.ALREADY_EXISTS:
            raise
        return UNCHANGED
    return CREATED


async def reconcile_bootstrap(registries: Mapping[str, Registry]) -> list[Reconciled]:
    """Writes the bootstrap policy and namespaces through the registries (as the API server
    itself, which admission lets through); returns what was done to each object. An etcd
    error is raised (ApiError): the caller decides whether to start without the policy."""
    done: list[Reconciled] = []
    for kind, objects in (
        (CLUSTER_ROLES, cluster_roles()),
        (CLUSTER_ROLE_BINDINGS, cluster_role_bindings()),
    ):
        registry = registries[kind.name]
        for obj in objects:
            done.append(Reconciled(kind.name, obj.metadata.name, await _reconcile(registry, obj)))
    for namespace in namespaces():
        action = await _ensure_namespace(registries[NAMESPACES.name], namespace)
        done.append(Reconciled(NAMESPACES.name, namespace.metadata.name, action))
    # Once their namespaces exist.
    namespaced: tuple[tuple[Kind, list[Any]], ...] = (
        (ROLES, list(namespace_roles())),
        (ROLE_BINDINGS, list(namespace_role_bindings())),
    )
    for kind, objects in namespaced:
        registry = registries[kind.name]
        for obj in objects:
            action = await _reconcile(registry, obj)
            done.append(Reconciled(kind.name, f"{obj.metadata.namespace}/{obj.metadata.name}", action))
    for item in done:
        if item.action != UNCHANGED:
            log.info("bootstrap_reconciled", kind=item.kind, name=item.name, action=item.action)
    return done
