"""The Node authorizer and NodeRestriction: what a kubelet's identity may do, decided from
fake watch caches (in-memory stand-ins with the cache's get/objects/on_change)."""

from __future__ import annotations

from typing import Any, Callable

import grpc
import pytest

from kybernetes.v1 import meta_pb2, node_pb2, pod_pb2
from services.apiserver.auth.admission import CREATE, DELETE, UPDATE, AdmissionRequest
from services.apiserver.auth.attributes import Decision, RequestAttributes, UnionAuthorizer, Verdict
from services.apiserver.auth.node import NodeAuthorizer, NodeRestriction, admission_plugins, forbidden_node_labels
from services.apiserver.errors import ApiError
from services.common.identity import SYSTEM_MASTERS, SYSTEM_NODES, UserInfo, authenticated
from services.common.resources import ALL_KINDS, NODES, PODS, Kind
from services.common.validation import MIRROR_POD_ANNOTATION

# -- an in-memory stand-in for the registries' watch caches ---------------------------


class FakeCache:
    """What admission plugins and authorizers read of a WatchCache."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self._objects: dict[tuple[str, str], Any] = {}
        self._listeners: list[Callable[[], None]] = []

    def put(self, obj: Any) -> Any:
        self._objects[(obj.metadata.namespace, obj.metadata.name)] = obj
        self._changed()
        return obj

    def remove(self, namespace: str, name: str) -> None:
        self._objects.pop((namespace, name), None)
        self._changed()

    def get(self, namespace: str, name: str) -> Any | None:
        return self._objects.get((namespace, name))

    def objects(self) -> list[Any]:
        return list(self._objects.values())

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()


class FakeRegistry:
    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.cache = FakeCache(kind)


def fake_registries() -> dict[str, Any]:
    return {kind.name: FakeRegistry(kind) for kind in ALL_KINDS}


def node_user(name: str) -> UserInfo:
    return authenticated(f"system:node:{name}", [SYSTEM_NODES])


ADMIN = authenticated("admin", [SYSTEM_MASTERS])
NODE_1 = node_user("node-1")


def make_node(name: str, uid: str = "", labels: dict[str, str] | None = None) -> node_pb2.Node:
    return node_pb2.Node(metadata=meta_pb2.ObjectMeta(name=name, uid=uid or f"uid-{name}", labels=labels or {}))


def make_pod(
    name: str = "p", namespace: str = "ns", node: str = "", mirror: bool = False, labels: dict[str, str] | None = None
) -> pod_pb2.Pod:
    pod = pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace, labels=labels or {}),
        spec=pod_pb2.PodSpec(containers=[pod_pb2.Container(name="c", image="busybox")], node_name=node),
    )
    if mirror:
        pod.metadata.annotations[MIRROR_POD_ANNOTATION] = "hash"
    return pod


def owner(node: str, uid: str = "", controller: bool = True, kind: str = "Node") -> meta_pb2.OwnerReference:
    return meta_pb2.OwnerReference(
        api_version="v1", kind=kind, name=node, uid=uid or f"uid-{node}", controller=controller
    )


# -- the authorizer ---------------------------------------------------------------------


def attrs(
    verb: str,
    resource: str,
    subresource: str = "",
    name: str = "",
    namespace: str = "",
    user: UserInfo = NODE_1,
    fields: str = "",
    labels: str = "",
) -> RequestAttributes:
    return RequestAttributes(
        user, verb, resource, subresource, namespace, name, field_selector=fields, label_selector=labels
    )


ALLOWED = [
    *(
        pytest.param(attrs(verb, resource, namespace="ns"), id=f"{verb}-{resource}")
        for verb in ("get", "list", "watch")
        for resource in ("services", "endpoints", "namespaces")
    ),
    *(
        pytest.param(attrs(verb, "pods", namespace=namespace, fields="spec.nodeName=node-1"), id=f"{verb}-own-pods{n}")
        for verb in ("list", "watch")
        for n, namespace in (("", ""), ("-in-namespace", "ns"))
    ),
    pytest.param(attrs("list", "pods", fields="spec.nodeName==node-1"), id="list-own-pods-double-equals"),
    pytest.param(
        attrs("watch", "pods", fields="status.phase!=Failed,spec.nodeName=node-1,metadata.namespace=ns"),
        id="watch-own-pods-and-more-terms",
    ),
    pytest.param(attrs("list", "pods", fields="spec.nodeName=node-1", labels="app=web"), id="list-own-pods-labelled"),
    *(
        pytest.param(attrs(verb, "nodes", fields="metadata.name=node-1"), id=f"{verb}-own-node")
        for verb in ("list", "watch")
    ),
    pytest.param(
        attrs("list", "nodes", fields="metadata.name=node-1,spec.unschedulable=false"), id="list-own-node-and-more"
    ),
    pytest.param(attrs("get", "nodes", name="node-1"), id="get-own-node"),
    pytest.param(attrs("create", "nodes", name="node-1"), id="create-node"),
    pytest.param(attrs("update", "nodes", name="node-1"), id="update-own-node"),
    pytest.param(attrs("update", "nodes", "status", name="node-1"), id="update-own-node-status"),
    pytest.param(attrs("create", "pods", namespace="ns", name="p"), id="create-pod-mirror-checked-at-admission"),
    pytest.param(attrs("delete", "pods", namespace="ns", name="p"), id="delete-pod-checked-at-admission"),
    pytest.param(attrs("update", "pods", "status", namespace="ns", name="p"), id="pod-status-checked-at-admission"),
]


@pytest.mark.parametrize("attributes", ALLOWED)
def test_a_node_may_do_what_a_kubelet_needs(attributes: RequestAttributes) -> None:
    assert NodeAuthorizer(fake_registries()).authorize(attributes).decision is Decision.ALLOW


NO_OPINION = [
    pytest.param(attrs("update", "pods", namespace="ns", name="p"), id="update-pod-spec"),
    pytest.param(attrs("create", "pods", "binding", namespace="ns", name="p"), id="bind-pod"),
    pytest.param(attrs("delete", "nodes", name="node-1"), id="delete-own-node"),
    pytest.param(attrs("create", "services", namespace="ns"), id="create-service"),
    pytest.param(attrs("update", "endpoints", namespace="ns", name="e"), id="update-endpoints"),
    pytest.param(attrs("delete", "namespaces", name="ns"), id="delete-namespace"),
    pytest.param(attrs("get", "replicationcontrollers", namespace="ns", name="rc"), id="read-rc"),
    pytest.param(attrs("get", "secrets", namespace="ns", name="s"), id="read-secret"),
    pytest.param(
        RequestAttributes(NODE_1, "list", "roles", namespace="ns", api_group="rbac.authorization.k8s.io"),
        id="rbac-group",
    ),
    pytest.param(attrs("update", "pods", namespace="ns", name="p", user=ADMIN), id="not-a-node"),
    pytest.param(
        attrs("get", "pods", user=authenticated("kubelet", [SYSTEM_NODES])), id="in-system-nodes-without-node-name"
    ),
    pytest.param(attrs("get", "pods", user=authenticated("system:node:node-1", [])), id="node-name-without-group"),
    pytest.param(attrs("get", "pods", "log", namespace="ns", name="p"), id="pod-log"),
    pytest.param(attrs("get", "pods", "status", namespace="ns", name="p"), id="get-pod-status"),
]


@pytest.mark.parametrize("attributes", NO_OPINION)
def test_anything_else_is_left_to_rbac(attributes: RequestAttributes) -> None:
    verdict = NodeAuthorizer(fake_registries()).authorize(attributes)
    assert verdict.decision is Decision.NO_OPINION


def test_a_node_identity_without_a_node_name_is_named() -> None:
    user = authenticated("system:node:", [SYSTEM_NODES])
    verdict = NodeAuthorizer(fake_registries()).authorize(attrs("get", "pods", user=user))
    assert verdict == Verdict(Decision.NO_OPINION, 'unknown node for user "system:node:"')


@pytest.mark.parametrize(
    "subresource, what", [pytest.param("", "node", id="node"), pytest.param("status", "status of node", id="status")]
)
def test_another_nodes_node_is_denied_naming_both(subresource: str, what: str) -> None:
    verdict = NodeAuthorizer(fake_registries()).authorize(attrs("update", "nodes", subresource, name="node-2"))
    assert verdict.decision is Decision.DENY
    assert verdict.reason == f'node "node-1" cannot update {what} "node-2": a node may modify only its own Node'


class NoOpinion:
    def authorize(self, attributes: RequestAttributes) -> Verdict:
        return Verdict(Decision.NO_OPINION)


def test_behind_the_union_what_the_node_authorizer_does_not_allow_is_not_allowed() -> None:
    union = UnionAuthorizer([NodeAuthorizer(fake_registries()), NoOpinion()])
    assert union.authorize(attrs("list", "pods", fields="spec.nodeName=node-1")).allowed
    assert not union.authorize(attrs("list", "pods")).allowed
    assert not union.authorize(attrs("update", "pods", namespace="ns", name="p")).allowed
    assert not union.authorize(attrs("update", "nodes", "status", name="node-2")).allowed


# Reads scoped by selectors (Kubernetes' AuthorizeNodeWithSelectors): a node reads only its
# own pods and its own Node; what it was refused says which selector it needs.
LIST_OWN_PODS = 'node "node-1" may list pods only with fieldSelector spec.nodeName=node-1'
LIST_OWN_NODE = 'node "node-1" may list nodes only with fieldSelector metadata.name=node-1'


@pytest.mark.parametrize(
    "attributes, reason",
    [
        pytest.param(attrs("list", "pods"), LIST_OWN_PODS, id="list-pods-without-selector"),
        pytest.param(
            attrs("watch", "pods", namespace="ns"),
            'node "node-1" may watch pods only with fieldSelector spec.nodeName=node-1',
            id="watch-pods-without-selector",
        ),
        pytest.param(attrs("list", "pods", fields="spec.nodeName=node-2"), LIST_OWN_PODS, id="another-nodes-pods"),
        pytest.param(attrs("list", "pods", fields="spec.nodeName!=node-2"), LIST_OWN_PODS, id="not-equals"),
        pytest.param(attrs("list", "pods", fields="spec.nodeName="), LIST_OWN_PODS, id="unbound-pods"),
        pytest.param(attrs("list", "pods", fields="status.phase=Running"), LIST_OWN_PODS, id="other-field"),
        pytest.param(
            attrs("list", "pods", labels="spec.nodeName=node-1"), LIST_OWN_PODS, id="label-selector-does-not-scope"
        ),
        pytest.param(
            attrs("list", "pods", fields="spec.nodeName"),
            f'{LIST_OWN_PODS} (its fieldSelector does not parse: invalid field selector term "spec.nodeName": '
            "expected FIELD=VALUE, FIELD==VALUE or FIELD!=VALUE)",
            id="unparsable",
        ),
        pytest.param(attrs("list", "nodes"), LIST_OWN_NODE, id="list-nodes-without-selector"),
        pytest.param(attrs("list", "nodes", fields="metadata.name=node-2"), LIST_OWN_NODE, id="list-another-node"),
        pytest.param(attrs("list", "nodes", fields="metadata.name!=node-2"), LIST_OWN_NODE, id="list-nodes-but-one"),
        pytest.param(
            attrs("watch", "nodes", fields="spec.unschedulable=false"),
            'node "node-1" may watch nodes only with fieldSelector metadata.name=node-1',
            id="watch-nodes-other-field",
        ),
        pytest.param(
            attrs("get", "nodes", name="node-2"),
            'node "node-1" may get only its own Node "node-1", not "node-2"',
            id="get-another-node",
        ),
    ],
)
def test_a_node_reads_only_its_own_pods_and_node(attributes: RequestAttributes, reason: str) -> None:
    verdict = NodeAuthorizer(fake_registries()).authorize(attributes)
    assert verdict == Verdict(Decision.NO_OPINION, reason)


def test_a_selector_the_registry_would_refuse_scopes_nothing() -> None:
    # The registry refuses it as INVALID_ARGUMENT; authorization, first, only does not allow it.
    verdict = NodeAuthorizer(fake_registries()).authorize(attrs("list", "pods", fields="spec.nodeName=node-1,bogus=x"))
    assert verdict.decision is Decision.NO_OPINION
    assert verdict.reason.startswith(
        f'{LIST_OWN_PODS} (its fieldSelector does not parse: field label "bogus" not supported in field selector'
    )


def test_what_a_node_may_not_read_is_refused_naming_the_selector_it_needs() -> None:
    union = UnionAuthorizer([NodeAuthorizer(fake_registries()), NoOpinion()])
    verdict = union.authorize(attrs("list", "pods"))
    assert not verdict.allowed and verdict.reason == LIST_OWN_PODS


@pytest.fixture
def pods_of_nodes() -> dict[str, Any]:
    registries = fake_registries()
    for name, node in (("mine", "node-1"), ("theirs", "node-2"), ("pending", "")):
        registries[PODS.name].cache.put(make_pod(name, "ns", node=node))
    return registries


def test_a_node_gets_only_pods_bound_to_itself(pods_of_nodes: dict[str, Any]) -> None:
    authorizer = NodeAuthorizer(pods_of_nodes)
    assert authorizer.authorize(attrs("get", "pods", namespace="ns", name="mine")).allowed
    # Whether the pod exists, and where it runs, is not told: that is what the node may not read.
    for name in ("theirs", "pending", "missing"):
        verdict = authorizer.authorize(attrs("get", "pods", namespace="ns", name=name))
        assert verdict == Verdict(
            Decision.NO_OPINION,
            f'node "node-1" may get only pods bound to itself (spec.nodeName=node-1), and pod "ns/{name}" is not one '
            "of them",
        )
    # A pod of another namespace with the name of one of its own is another pod.
    assert not authorizer.authorize(attrs("get", "pods", namespace="other", name="mine")).allowed


def test_a_pod_bound_to_the_node_may_be_read_when_bound(pods_of_nodes: dict[str, Any]) -> None:
    authorizer = NodeAuthorizer(pods_of_nodes)
    get_pending = attrs("get", "pods", namespace="ns", name="pending")
    assert not authorizer.authorize(get_pending).allowed
    pods_of_nodes[PODS.name].cache.put(make_pod("pending", "ns", node="node-1"))
    assert authorizer.authorize(get_pending).allowed


@pytest.mark.parametrize("verb", ["list", "watch"])
def test_a_node_lists_one_pod_by_name_when_it_is_bound_to_itself(pods_of_nodes: dict[str, Any], verb: str) -> None:
    # As Kubernetes, which takes a list's name from its metadata.name=<name> term.
    authorizer = NodeAuthorizer(pods_of_nodes)
    assert authorizer.authorize(attrs(verb, "pods", namespace="ns", fields="metadata.name=mine")).allowed
    verdict = authorizer.authorize(attrs(verb, "pods", namespace="ns", fields="metadata.name=theirs"))
    assert verdict == Verdict(
        Decision.NO_OPINION,
        f'node "node-1" may {verb} only pods bound to itself (spec.nodeName=node-1), and pod "ns/theirs" is not one '
        "of them",
    )
    # Across namespaces a name is no one pod.
    assert not authorizer.authorize(attrs(verb, "pods", fields="metadata.name=mine")).allowed


# -- NodeRestriction ----------------------------------------------------------------------


@pytest.fixture
def registries() -> dict[str, Any]:
    registries = fake_registries()
    registries[NODES.name].cache.put(make_node("node-1"))
    registries[NODES.name].cache.put(make_node("node-2"))
    return registries


def admit(
    plugin: NodeRestriction,
    operation: str,
    kind: Kind,
    obj: Any,
    old: Any = None,
    subresource: str = "",
    user: UserInfo = NODE_1,
) -> None:
    plugin.admit(AdmissionRequest(user, operation, kind, obj, old, subresource))


def refused(call: Callable[[], None], code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED) -> str:
    with pytest.raises(ApiError) as caught:
        call()
    assert caught.value.code == code, caught.value.message
    return caught.value.message


def with_owners(pod: pod_pb2.Pod, *owners: meta_pb2.OwnerReference) -> pod_pb2.Pod:
    pod.metadata.owner_references.extend(owners)
    return pod


@pytest.mark.parametrize(
    "pod",
    [
        pytest.param(with_owners(make_pod(node="node-1", mirror=True), owner("node-1")), id="owned-by-its-node"),
    ],
)
def test_a_node_creates_its_mirror_pods(registries: dict[str, Any], pod: pod_pb2.Pod) -> None:
    admit(NodeRestriction(registries), CREATE, PODS, pod)


@pytest.mark.parametrize(
    "pod, reason",
    [
        pytest.param(
            make_pod(node="node-1"),
            'node "node-1" cannot create pod "ns/p": it has no "kubernetes.io/config.mirror" annotation, '
            "and a node may create only mirror pods",
            id="not-a-mirror-pod",
        ),
        pytest.param(
            make_pod(node="node-2", mirror=True),
            'node "node-1" cannot create pod "ns/p" bound to node "node-2": '
            "a node may create only pods bound to itself",
            id="bound-to-another-node",
        ),
        pytest.param(
            make_pod(mirror=True),
            'node "node-1" cannot create pod "ns/p" that is not bound to a node: '
            "a node may create only pods bound to itself",
            id="unbound",
        ),
        pytest.param(
            with_owners(make_pod(node="node-1", mirror=True), owner("node-2")),
            'node "node-1" cannot create pod "ns/p": a node may create only pods with an owner reference to itself',
            id="owned-by-another-node",
        ),
        pytest.param(
            with_owners(make_pod(node="node-1", mirror=True), owner("node-1", kind="ReplicationController")),
            'node "node-1" cannot create pod "ns/p": a node may create only pods with an owner reference to itself',
            id="owned-by-an-rc",
        ),
        pytest.param(
            with_owners(make_pod(node="node-1", mirror=True), owner("node-1", controller=False)),
            'node "node-1" cannot create pod "ns/p": a node may create only pods with a controller owner reference '
            "to itself",
            id="owner-not-controller",
        ),
        pytest.param(
            with_owners(make_pod(node="node-1", mirror=True), owner("node-1"), owner("node-1")),
            'node "node-1" cannot create pod "ns/p": a node may create only pods with a single owner reference, '
            "to itself",
            id="two-owners",
        ),
        pytest.param(
            with_owners(make_pod(node="node-1", mirror=True), owner("node-1", uid="stale")),
            'node "node-1" cannot create pod "ns/p": its owner reference\'s uid "stale" is not node "node-1"\'s '
            '("uid-node-1")',
            id="owner-uid-stale",
        ),
    ],
)
def test_a_node_may_create_only_mirror_pods_bound_and_owned_by_itself(
    registries: dict[str, Any], pod: pod_pb2.Pod, reason: str
) -> None:
    assert refused(lambda: admit(NodeRestriction(registries), CREATE, PODS, pod)) == reason


def test_an_owner_reference_can_be_required_as_kubernetes_does(registries: dict[str, Any]) -> None:
    plugin = NodeRestriction(registries, require_owner_reference=True)
    message = refused(lambda: admit(plugin, CREATE, PODS, make_pod(node="node-1", mirror=True)))
    assert message.endswith("a node may create only pods with an owner reference to itself")
    admit(plugin, CREATE, PODS, with_owners(make_pod(node="node-1", mirror=True), owner("node-1")))


def test_the_api_servers_node_restriction_requires_the_owner_reference(registries: dict[str, Any]) -> None:
    [plugin] = admission_plugins(registries)
    assert isinstance(plugin, NodeRestriction) and plugin.require_owner_reference
    assert NodeRestriction(registries).require_owner_reference
    message = refused(lambda: admit(plugin, CREATE, PODS, make_pod(node="node-1", mirror=True)))
    assert message == (
        'node "node-1" cannot create pod "ns/p": a node may create only pods with an owner reference to itself'
    )


def test_without_the_switch_a_mirror_pod_without_an_owner_reference_is_admitted(registries: dict[str, Any]) -> None:
    plugin = NodeRestriction(registries, require_owner_reference=False)
    admit(plugin, CREATE, PODS, make_pod(node="node-1", mirror=True))


def test_an_owner_reference_to_a_node_not_registered_is_not_found(registries: dict[str, Any]) -> None:
    registries[NODES.name].cache.remove("", "node-1")
    pod = with_owners(make_pod(node="node-1", mirror=True), owner("node-1"))
    message = refused(lambda: admit(NodeRestriction(registries), CREATE, PODS, pod), grpc.StatusCode.NOT_FOUND)
    assert 'nodes "node-1" not found' in message


def test_a_node_deletes_only_pods_bound_to_itself(registries: dict[str, Any]) -> None:
    plugin = NodeRestriction(registries)
    admit(plugin, DELETE, PODS, make_pod(node="node-1", mirror=True))
    assert refused(lambda: admit(plugin, DELETE, PODS, make_pod(node="node-2"))) == (
        'node "node-1" cannot delete pod "ns/p" bound to node "node-2": a node may delete only pods bound to itself'
    )


def test_a_node_updates_no_pod_spec(registries: dict[str, Any]) -> None:
    pod = make_pod(node="node-1")
    assert refused(lambda: admit(NodeRestriction(registries), UPDATE, PODS, pod, pod)) == (
        'node "node-1" cannot update pod "ns/p": a node may only create and delete mirror pods'
    )


def test_a_node_writes_the_status_only_of_pods_bound_to_itself(registries: dict[str, Any]) -> None:
    plugin = NodeRestriction(registries)
    mine, theirs = make_pod(node="node-1"), make_pod(node="node-2")
    admit(plugin, UPDATE, PODS, mine, mine, subresource="status")
    assert refused(lambda: admit(plugin, UPDATE, PODS, theirs, theirs, subresource="status")) == (
        'node "node-1" cannot update status of pod "ns/p" bound to node "node-2": '
        "a node may update the status only of pods bound to itself"
    )
    relabelled = make_pod(node="node-1", labels={"evil": "yes"})
    assert refused(lambda: admit(plugin, UPDATE, PODS, relabelled, mine, subresource="status")) == (
        'node "node-1" cannot update labels of pod "ns/p" through its status'
    )


def test_other_callers_are_not_restricted(registries: dict[str, Any]) -> None:
    plugin = NodeRestriction(registries)
    admit(plugin, CREATE, PODS, make_pod(), user=ADMIN)
    admit(plugin, UPDATE, NODES, make_node("node-2"), make_node("node-2"), user=ADMIN)
    admit(plugin, CREATE, PODS, make_pod(), user=authenticated("system:node:node-1", []))


def test_a_node_without_a_name_is_refused(registries: dict[str, Any]) -> None:
    user = authenticated("system:node:", [SYSTEM_NODES])
    message = refused(lambda: admit(NodeRestriction(registries), CREATE, PODS, make_pod(), user=user))
    assert message == 'could not determine node from user "system:node:"'


@pytest.mark.parametrize(
    "operation, subresource, verb",
    [
        pytest.param(CREATE, "", "create", id="create"),
        pytest.param(UPDATE, "", "update", id="update"),
        pytest.param(UPDATE, "status", "update status of", id="status"),
        pytest.param(DELETE, "", "delete", id="delete"),
    ],
)
def test_a_node_writes_only_its_own_node(
    registries: dict[str, Any], operation: str, subresource: str, verb: str
) -> None:
    plugin = NodeRestriction(registries)
    admit(plugin, operation, NODES, make_node("node-1"), make_node("node-1"), subresource)
    other = make_node("node-2")
    assert refused(lambda: admit(plugin, operation, NODES, other, other, subresource)) == (
        f'node "node-1" cannot {verb} node "node-2": a node may modify only its own Node'
    )


@pytest.mark.parametrize(
    "labels, forbidden",
    [
        pytest.param({"kubernetes.io/hostname": "node-1", "kubernetes.io/os": "linux"}, [], id="kubelet-labels"),
        pytest.param({"disk": "ssd", "example.com/rack": "r1"}, [], id="own-labels"),
        pytest.param({"node.kubernetes.io/exclude": "x", "kubelet.kubernetes.io/a": "b"}, [], id="kubelet-domains"),
        pytest.param({"node-restriction.kubernetes.io/pci": "yes"}, ["node-restriction.kubernetes.io/pci"], id="nr"),
        pytest.param({"a.node-restriction.kubernetes.io/x": "1"}, ["a.node-restriction.kubernetes.io/x"], id="nr-sub"),
        pytest.param({"node-role.kubernetes.io/control-plane": ""}, ["node-role.kubernetes.io/control-plane"]),
        pytest.param({"kubernetes.io/role": "master"}, ["kubernetes.io/role"], id="kubernetes-io"),
        pytest.param({"example.k8s.io/x": "y"}, ["example.k8s.io/x"], id="k8s-io"),
    ],
)
def test_labels_a_node_may_not_give_itself(labels: dict[str, str], forbidden: list[str]) -> None:
    assert forbidden_node_labels(labels, {}) == forbidden
    # Keeping a label as an administrator set it is no change: only changes count.
    assert forbidden_node_labels(labels, labels) == []
    assert forbidden_node_labels({}, labels) == forbidden  # nor may a node remove it


def test_a_node_registers_and_updates_itself_without_steering_labels(registries: dict[str, Any]) -> None:
    plugin = NodeRestriction(registries)
    kubelet_labels = {"kubernetes.io/hostname": "node-1", "kubernetes.io/arch": "amd64"}
    admit(plugin, CREATE, NODES, make_node("node-1", labels=kubelet_labels))
    steering = make_node("node-1", labels={**kubelet_labels, "node-restriction.kubernetes.io/gpu": "yes"})
    assert refused(lambda: admit(plugin, CREATE, NODES, steering)) == (
        'node "node-1" cannot create node "node-1": it is not allowed to set the labels '
        '"node-restriction.kubernetes.io/gpu" (labels in node-restriction.kubernetes.io/ and kubernetes.io labels '
        "other than the kubelet's are for administrators to set)"
    )
    # An administrator's label stays; the node changes only what it may.
    labelled = make_node("node-1", labels={**kubelet_labels, "node-role.kubernetes.io/worker": ""})
    admit(
        plugin, UPDATE, NODES, make_node("node-1", labels={**dict(labelled.metadata.labels), "disk": "ssd"}), labelled
    )
    message = refused(lambda: admit(plugin, UPDATE, NODES, make_node("node-1", labels=kubelet_labels), labelled))
    assert 'it is not allowed to modify the labels "node-role.kubernetes.io/worker"' in message
