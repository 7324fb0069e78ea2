"""The Node authorizer and NodeRestriction admission: what a kubelet's identity may do.

After Kubernetes' plugin/pkg/auth/authorizer/node and plugin/pkg/admission/noderestriction.
A kubelet authenticates as `system:node:<name>` in group `system:nodes`. The authorizer
grants such a caller what a kubelet needs and nothing else (every other request gets no
opinion, so RBAC decides, and there are no RBAC bindings for nodes): reading its own pods
and its own Node, and all services, endpoints and namespaces; registering and updating
its Node and its status; creating and deleting pods (its mirror pods) and writing pods'
status. As Kubernetes with AuthorizeNodeWithSelectors (1.32+), a node lists and watches
pods only with the field selector `spec.nodeName=<itself>` and nodes only with
`metadata.name=<itself>`, and gets only pods bound to itself and its own Node; a pod's
binding is read from the pods' watch cache. Which objects the writes may touch needs the
objects themselves, so NodeRestriction checks them at admission: a node may create only
mirror pods bound to itself and owned by its Node, delete only pods bound to itself,
write the status only of pods bound to itself, and write only its own Node, without
giving itself labels that steer workloads to it. A node's heartbeat is its Lease
(KEP-589): it may get, create, update and delete the Lease `kube-node-lease/<itself>`
and no other.

Both read only the watch caches (the Node authorizer's graph of which secrets a node may
read has no counterpart here: there are no secrets). Every refusal names the node, the
verb and the object.
"""

from __future__ import annotations

from typing import Any, Mapping

import grpc

from services.common.identity import NODE_USER_PREFIX, SYSTEM_NODES, UserInfo
from services.common.resources import LEASES, NODES, PODS, Kind
from services.common.selectors import FieldSelector, Operator, SelectorError
from services.common.validation import MIRROR_POD_ANNOTATION, show_value

from ..errors import ApiError
from ..registry import Registry
from .admission import CREATE, DELETE, UPDATE, AdmissionPlugin, AdmissionRequest
from .attributes import ALLOW, NO_OPINION, Decision, RequestAttributes, Verdict

READ_VERBS = frozenset({"get", "list", "watch"})
# What a kubelet reads of every object: the services and endpoints its pods' environment
# and DNS come from, and namespaces. Pods and nodes it reads only its own of (below).
READABLE_RESOURCES = frozenset({"services", "endpoints", "namespaces"})
# The selector terms that scope a node's lists and watches to itself.
POD_NODE_FIELD = "spec.nodeName"
NODE_NAME_FIELD = "metadata.name"
# The nodes' Leases (Kubernetes' NamespaceNodeLease) and what a node may do to its own.
NODE_LEASE_NAMESPACE = "kube-node-lease"
COORDINATION_GROUP = "coordination.k8s.io"
LEASE_VERBS = ("get", "create", "update", "patch", "delete")

# Kubernetes' label namespace that only administrators may set on a Node, so that a
# workload selecting it cannot be steered onto a node that labelled itself.
NODE_RESTRICTION_LABEL_DOMAIN = "node-restriction.kubernetes.io"
# The kubernetes.io and k8s.io labels a kubelet may set on its own Node (k8s.io/kubelet's
# well_known_labels.go); any other label in those domains is the cluster's to set.
KUBELET_LABELS = frozenset(
    {
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
    }
)
KUBELET_LABEL_DOMAINS = ("kubelet.kubernetes.io", "node.kubernetes.io")


def node_identity(user: UserInfo) -> tuple[bool, str]:
    """(is a node, the node's name): a caller in `system:nodes` named `system:node:<name>`
    is a node; one whose name after the prefix is empty is a node we cannot place."""
    is_node = user.in_group(SYSTEM_NODES) and user.name.startswith(NODE_USER_PREFIX)
    return is_node, user.node_name or ""


class NodeAuthorizer:
    """Kubernetes' Node authorizer over our kinds: an opinion on kubelets' requests only."""

    def __init__(self, registries: Mapping[str, Registry]) -> None:
        self.registries = registries

    def authorize(self, attributes: RequestAttributes) -> Verdict:
        is_node, node = node_identity(attributes.user)
        if not is_node:
            return NO_OPINION
        if not node:
            return Verdict(Decision.NO_OPINION, f"unknown node for user {show_value(attributes.user.name)}")
        if attributes.api_group == "authorization.k8s.io":
            # A kubelet asks whether the callers of its own API may use it (webhook
            # authorization): Kubernetes' node rules grant every node this one.
            allowed = attributes.resource == "subjectaccessreviews" and attributes.verb == "create"
            return ALLOW if allowed else NO_OPINION
        if attributes.api_group == COORDINATION_GROUP and attributes.resource == LEASES.plural:
            return self._authorize_lease(node, attributes)
        if attributes.api_group:
            return NO_OPINION
        resource, subresource, verb = attributes.resource, attributes.subresource, attributes.verb
        if resource == NODES.plural:
            return self._authorize_node(node, attributes)
        if resource == PODS.plural:
            return self._authorize_pod(node, attributes)
        if subresource == "" and verb in READ_VERBS and resource in READABLE_RESOURCES:
            return ALLOW
        return NO_OPINION

    def _authorize_lease(self, node: str, attributes: RequestAttributes) -> Verdict:
        """Kubernetes' authorizeLease: its own Lease in kube-node-lease, and nothing else (a
        create without a name is left to NodeRestriction, which sees the object)."""
        verb, name = attributes.verb, attributes.name
        if attributes.subresource or verb not in LEASE_VERBS:
            return Verdict(
                Decision.NO_OPINION,
                f"node {show_value(node)} may only {', '.join(LEASE_VERBS[:-1])} or {LEASE_VERBS[-1]} its own Lease",
            )
        if attributes.namespace != NODE_LEASE_NAMESPACE:
            return Verdict(
                Decision.NO_OPINION,
                f"node {show_value(node)} may access leases only in namespace {show_value(NODE_LEASE_NAMESPACE)}",
            )
        if name != node and not (verb == "create" and not name):
            return Verdict(
                Decision.NO_OPINION,
                f"node {show_value(node)} may {verb} only its own Lease "
                f"{show_value(f'{NODE_LEASE_NAMESPACE}/{node}')}, not {show_value(name)}",
            )
        return ALLOW

    def _authorize_pod(self, node: str, attributes: RequestAttributes) -> Verdict:
        verb, subresource = attributes.verb, attributes.subresource
        if subresource == "status":
            # NodeRestriction keeps a node to the status of pods bound to itself.
            return ALLOW if verb == "update" else NO_OPINION
        if subresource:
            return NO_OPINION
        if verb in ("create", "delete"):
            # Mirror pods; NodeRestriction keeps a node to mirror pods bound to itself.
            return ALLOW
        if verb == "get":
            return self._pod_of_node(node, verb, attributes.namespace, attributes.name)
        if verb not in ("list", "watch"):
            return NO_OPINION
        selector, problem = _field_selector(PODS, attributes.field_selector)
        if selector is not None:
            if _requires(selector, POD_NODE_FIELD, node):
                return ALLOW
            # One pod by name (Kubernetes takes a list's name from metadata.name=<name>):
            # allowed when that pod is bound to the node, as a get of it would be.
            named = selector.equals(NODE_NAME_FIELD)
            if named:
                return self._pod_of_node(node, verb, attributes.namespace, named)
        return Verdict(
            Decision.NO_OPINION,
            f"node {show_value(node)} may {verb} pods only with fieldSelector {POD_NODE_FIELD}={node}{problem}",
        )

    def _pod_of_node(self, node: str, verb: str, namespace: str, name: str) -> Verdict:
        """ALLOW when pod namespace/name is bound to node in the watch cache. The reason does
        not say whether the pod exists or where it runs: that is what the node may not read."""
        pod = self.registries[PODS.name].cache.get(namespace, name) if name else None
        if pod is not None and pod.spec.node_name == node:
            return ALLOW
        return Verdict(
            Decision.NO_OPINION,
            f"node {show_value(node)} may {verb} only pods bound to itself ({POD_NODE_FIELD}={node}), and pod "
            f"{show_value(f'{namespace}/{name}')} is not one of them",
        )

    def _authorize_node(self, node: str, attributes: RequestAttributes) -> Verdict:
        verb, subresource, name = attributes.verb, attributes.subresource, attributes.name
        if subresource == "" and verb == "get":
            # By name, not by the cache: a kubelet reads its Node before registering it.
            if name == node:
                return ALLOW
            return Verdict(
                Decision.NO_OPINION,
                f"node {show_value(node)} may get only its own Node {show_value(node)}, not {show_value(name)}",
            )
        if subresource == "" and verb in ("list", "watch"):
            selector, problem = _field_selector(NODES, attributes.field_selector)
            if selector is not None and _requires(selector, NODE_NAME_FIELD, node):
                return ALLOW
            return Verdict(
                Decision.NO_OPINION,
                f"node {show_value(node)} may {verb} nodes only with fieldSelector {NODE_NAME_FIELD}={node}{problem}",
            )
        if subresource == "" and verb == "create":
            # The name is in the object, which NodeRestriction sees (generateName included).
            return ALLOW
        if verb == "update" and subresource in ("", "status"):
            if name == node:
                return ALLOW
            what = "status of node" if subresource == "status" else "node"
            return Verdict(
                Decision.DENY,
                f"node {show_value(node)} cannot update {what} {show_value(name)}: a node may modify only its own Node",
            )
        return NO_OPINION


def _field_selector(kind: Kind, text: str) -> tuple[FieldSelector | None, str]:
    """The parsed selector, or None and why not (to append to a reason). The registry refuses
    a selector that does not parse; the authorizer only declines to allow the call."""
    try:
        return FieldSelector.parse(text, kind.fields(kind.message()).keys()), ""
    except SelectorError as error:
        return None, f" (its fieldSelector does not parse: {error})"


def _requires(selector: FieldSelector, field: str, value: str) -> bool:
    """Whether one of the selector's ANDed terms is field=value: then it selects nothing else,
    whatever the other terms are."""
    return any(
        term.field == field and term.operator is Operator.EQUALS and term.value == value
        for term in selector.requirements
    )


# -- NodeRestriction ------------------------------------------------------------------


def _forbidden(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.PERMISSION_DENIED, message)


def _pod_name(pod: Any) -> str:
    return show_value(f"{pod.metadata.namespace}/{pod.metadata.name}")


def _label_domain(key: str) -> str:
    domain, slash, _ = key.partition("/")
    return domain if slash else ""


def _in_domain(domain: str, parent: str) -> bool:
    return domain == parent or domain.endswith("." + parent)


def is_kubelet_label(key: str) -> bool:
    """A label a kubelet may set on its own Node."""
    if key in KUBELET_LABELS:
        return True
    domain = _label_domain(key)
    return any(_in_domain(domain, allowed) for allowed in KUBELET_LABEL_DOMAINS)


def forbidden_node_labels(labels: Mapping[str, str], old: Mapping[str, str]) -> list[str]:
    """The label keys added, removed or changed between old and labels that a node may not
    set: node-restriction.kubernetes.io ones, and kubernetes.io / k8s.io ones that are not
    the kubelet's own (getForbiddenLabels)."""
    modified = {key for key in labels.keys() | old.keys() if labels.get(key) != old.get(key)}
    forbidden = []
    for key in sorted(modified):
        domain = _label_domain(key)
        restricted = _in_domain(domain, NODE_RESTRICTION_LABEL_DOMAIN)
        kubernetes = _in_domain(domain, "kubernetes.io") or _in_domain(domain, "k8s.io")
        if restricted or (kubernetes and not is_kubelet_label(key)):
            forbidden.append(key)
    return forbidden


class NodeRestriction:
    """Kubernetes' NodeRestriction admission plugin for the pods and Nodes nodes write.

    require_owner_reference: as Kubernetes, a mirror pod must name its Node (v1, kind Node,
    the node's name and uid, controller) as its one owner, as our kubelet makes them
    (services/kubelet/mirror.py). Off only to admit mirror pods of older kubelets that made
    them without one; an owner reference a mirror pod does carry is checked either way.
    """

    name = "NodeRestriction"

    def __init__(self, registries: Mapping[str, Registry], *, require_owner_reference: bool = True) -> None:
        self.registries = registries
        self.require_owner_reference = require_owner_reference

    def admit(self, request: AdmissionRequest) -> None:
        is_node, node = node_identity(request.user)
        if not is_node:
            return
        if not node:
            raise _forbidden(f"could not determine node from user {show_value(request.user.name)}")
        if request.kind.name == PODS.name:
            self._admit_pod(node, request)
        elif request.kind.name == NODES.name:
            self._admit_node(node, request)
        elif request.kind.name == LEASES.name:
            self._admit_lease(node, request)

    # -- pods --

    def _admit_pod(self, node: str, request: AdmissionRequest) -> None:
        if request.subresource == "status":
            self._admit_pod_status(node, request)
        elif request.subresource:
            raise _forbidden(
                f"node {show_value(node)} cannot write subresource {show_value(request.subresource)} of pod "
                f"{_pod_name(request.obj)}: only status"
            )
        elif request.operation == CREATE:
            self._admit_pod_create(node, request)
        elif request.operation == DELETE:
            bound = request.obj.spec.node_name
            if bound != node:
                raise _forbidden(
                    f"node {show_value(node)} cannot delete pod {_pod_name(request.obj)} {_bound_to(bound)}: "
                    "a node may delete only pods bound to itself"
                )
        else:
            raise _forbidden(
                f"node {show_value(node)} cannot {request.operation.lower()} pod {_pod_name(request.obj)}: "
                "a node may only create and delete mirror pods"
            )

    def _admit_pod_create(self, node: str, request: AdmissionRequest) -> None:
        pod = request.obj
        what = f"node {show_value(node)} cannot create pod {_pod_name(pod)}"
        if MIRROR_POD_ANNOTATION not in pod.metadata.annotations:
            raise _forbidden(
                f"{what}: it has no {show_value(MIRROR_POD_ANNOTATION)} annotation, "
                "and a node may create only mirror pods"
            )
        if pod.spec.node_name != node:
            raise _forbidden(f"{what} {_bound_to(pod.spec.node_name)}: a node may create only pods bound to itself")
        owners = pod.metadata.owner_references
        if len(owners) > 1:
            raise _forbidden(f"{what}: a node may create only pods with a single owner reference, to itself")
        if not owners:
            if self.require_owner_reference:
                raise _forbidden(f"{what}: a node may create only pods with an owner reference to itself")
            return
        owner = owners[0]
        if (owner.api_version, owner.kind, owner.name) != ("v1", "Node", node):
            raise _forbidden(f"{what}: a node may create only pods with an owner reference to itself")
        if not owner.controller:
            raise _forbidden(f"{what}: a node may create only pods with a controller owner reference to itself")
        registered = self.registries[NODES.name].cache.get("", node)
        if registered is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"{what}: nodes {show_value(node)} not found")
        if owner.uid != registered.metadata.uid:
            raise _forbidden(
                f"{what}: its owner reference's uid {show_value(owner.uid)} is not node {show_value(node)}'s "
                f"({show_value(registered.metadata.uid)})"
            )

    def _admit_pod_status(self, node: str, request: AdmissionRequest) -> None:
        old = request.old if request.old is not None else request.obj
        if request.operation != UPDATE:
            raise _forbidden(f"node {show_value(node)} cannot {request.operation.lower()} status of pods")
        bound = old.spec.node_name
        if bound != node:
            raise _forbidden(
                f"node {show_value(node)} cannot update status of pod {_pod_name(old)} {_bound_to(bound)}: "
                "a node may update the status only of pods bound to itself"
            )
        if dict(request.obj.metadata.labels) != dict(old.metadata.labels):
            raise _forbidden(f"node {show_value(node)} cannot update labels of pod {_pod_name(old)} through its status")

    # -- leases --

    def _admit_lease(self, node: str, request: AdmissionRequest) -> None:
        """Kubernetes' admitLease: a node writes only its own Lease in kube-node-lease."""
        lease = request.obj
        namespace, name = lease.metadata.namespace, lease.metadata.name
        verb = request.operation.lower()
        if namespace != NODE_LEASE_NAMESPACE or name != node:
            raise _forbidden(
                f"node {show_value(node)} cannot {verb} lease {show_value(f'{namespace}/{name}')}: a node may write "
                f"only its own Lease {show_value(f'{NODE_LEASE_NAMESPACE}/{node}')}"
            )

    # -- nodes --

    def _admit_node(self, node: str, request: AdmissionRequest) -> None:
        target = request.obj.metadata.name
        verb = request.operation.lower()
        if request.subresource:
            verb = f"{verb} {request.subresource} of"
        if target != node:
            raise _forbidden(
                f"node {show_value(node)} cannot {verb} node {show_value(target)}: a node may modify only its own Node"
            )
        if request.operation == CREATE:
            old_labels: Mapping[str, str] = {}
        elif request.operation == UPDATE and request.old is not None:
            old_labels = request.old.metadata.labels
        else:
            return
        forbidden = forbidden_node_labels(request.obj.metadata.labels, old_labels)
        if forbidden:
            shown = ", ".join(show_value(key) for key in forbidden[:10])
            more = f" and {len(forbidden) - 10} more" if len(forbidden) > 10 else ""
            change = "set" if request.operation == CREATE else "modify"
            raise _forbidden(
                f"node {show_value(node)} cannot {verb} node {show_value(target)}: it is not allowed to {change} the "
                f"labels {shown}{more} (labels in {NODE_RESTRICTION_LABEL_DOMAIN}/ and kubernetes.io labels "
                "other than the kubelet's are for administrators to set)"
            )


def _bound_to(node: str) -> str:
    return f"bound to node {show_value(node)}" if node else "that is not bound to a node"


def admission_plugins(registries: Mapping[str, Registry]) -> list[AdmissionPlugin]:
    """NodeRestriction, requiring mirror pods' owner reference to their Node."""
    return [NodeRestriction(registries, require_owner_reference=True)]
