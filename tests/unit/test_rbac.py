"""RBAC as Kubernetes has it: rule matching, bindings by scope and subject, escalation
prevention, the bootstrap policy and the access review service; from objects alone."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Iterable

import grpc
import pytest

from kybernetes.v1 import authorization_pb2, meta_pb2, rbac_pb2
from services.apiserver.auth import bootstrap, rbac, review
from services.apiserver.auth.admission import CREATE, DELETE, UPDATE, AdmissionRequest
from services.apiserver.auth.attributes import ALLOW, NO_OPINION, Decision, RequestAttributes, UnionAuthorizer, Verdict
from services.apiserver.auth.context import set_current_user
from services.apiserver.errors import ApiError
from services.common.identity import (
    APISERVER,
    CONTROLLER_MANAGER_USER,
    SYSTEM_AUTHENTICATED,
    SYSTEM_MASTERS,
    UserInfo,
    authenticated,
)
from services.common.resources import ALL_KINDS, CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, ROLE_BINDINGS, ROLES, Kind

RBAC = "rbac.authorization.k8s.io"

# -- fakes of the registries' watch caches -------------------------------------------------


class FakeCache:
    """What the authorizer reads of a WatchCache: objects(), get() and on_change()."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self._objects: dict[tuple[str, str], Any] = {}
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def objects(self) -> list[Any]:
        return list(self._objects.values())

    def get(self, namespace: str, name: str) -> Any | None:
        return self._objects.get((namespace if self.kind.namespaced else "", name))

    def put(self, obj: Any) -> None:
        self._objects[(obj.metadata.namespace, obj.metadata.name)] = obj
        for listener in self._listeners:
            listener()

    def remove(self, namespace: str, name: str) -> None:
        del self._objects[(namespace, name)]
        for listener in self._listeners:
            listener()


class FakeRegistry:
    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.cache = FakeCache(kind)


def registries_with(*objects: Any) -> dict[str, Any]:
    registries = {kind.name: FakeRegistry(kind) for kind in ALL_KINDS}
    by_message = {kind.message: kind for kind in ALL_KINDS}
    for obj in objects:
        registries[by_message[type(obj)].name].cache.put(obj)
    return registries


def policy_rule(verbs: str, groups: str = "", resources: str = "", urls: str = "", names: str = "") -> Any:
    split = lambda text: text.split(",") if text else []  # noqa: E731
    return rbac_pb2.PolicyRule(
        verbs=split(verbs),
        api_groups=groups.split(",") if resources else [],
        resources=split(resources),
        non_resource_urls=split(urls),
        resource_names=split(names),
    )


def role(name: str, namespace: str, *rules: Any) -> rbac_pb2.Role:
    return rbac_pb2.Role(metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace), rules=rules)


def cluster_role(name: str, *rules: Any) -> rbac_pb2.ClusterRole:
    return rbac_pb2.ClusterRole(metadata=meta_pb2.ObjectMeta(name=name), rules=rules)


def subjects(*specs: str) -> list[rbac_pb2.Subject]:
    """ "User:alice", "Group:devs", "ServiceAccount:ns/name" (or "ServiceAccount:name")."""
    found = []
    for spec in specs:
        kind, _, name = spec.partition(":")
        namespace = ""
        if kind == "ServiceAccount" and "/" in name:
            namespace, name = name.split("/", 1)
        found.append(rbac_pb2.Subject(kind=kind, name=name, namespace=namespace))
    return found


def cluster_binding(name: str, role_name: str, *specs: str) -> rbac_pb2.ClusterRoleBinding:
    return rbac_pb2.ClusterRoleBinding(
        metadata=meta_pb2.ObjectMeta(name=name),
        role_ref=rbac_pb2.RoleRef(api_group=RBAC, kind="ClusterRole", name=role_name),
        subjects=subjects(*specs),
    )


def binding(name: str, namespace: str, ref: str, *specs: str) -> rbac_pb2.RoleBinding:
    """ref: "Role/name" or "ClusterRole/name"."""
    ref_kind, _, ref_name = ref.partition("/")
    return rbac_pb2.RoleBinding(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace),
        role_ref=rbac_pb2.RoleRef(api_group=RBAC, kind=ref_kind, name=ref_name),
        subjects=subjects(*specs),
    )


def user(name: str, *groups: str) -> UserInfo:
    return UserInfo(name, tuple(groups))


def request(
    who: UserInfo, verb: str, resource: str, namespace: str = "", *, name: str = "", group: str = ""
) -> RequestAttributes:
    base, _, subresource = resource.partition("/")
    return RequestAttributes(who, verb, base, subresource, namespace, name, group)


def allowed(authorizer: Any, attributes: RequestAttributes) -> bool:
    return bool(authorizer.authorize(attributes).allowed)


# -- rule matching (Kubernetes' TestRuleMatches) -------------------------------------------


def rule_of(**fields: Any) -> rbac.Rule:
    return rbac.Rule.of(rbac_pb2.PolicyRule(**fields))


ANYONE = user("u")


@pytest.mark.parametrize(
    ("rule", "attributes", "expected"),
    [
        # star verb, exact match other
        (rule_of(verbs=["*"], api_groups=["g1"], resources=["r1"]), ("verb1", "r1", "g1"), True),
        (rule_of(verbs=["*"], api_groups=["g1"], resources=["r1"]), ("verb1", "r1", "g2"), False),
        (rule_of(verbs=["*"], api_groups=["g1"], resources=["r1"]), ("verb2", "r2", "g1"), False),
        # star group
        (rule_of(verbs=["verb1"], api_groups=["*"], resources=["r1"]), ("verb1", "r1", "g2"), True),
        (rule_of(verbs=["verb1"], api_groups=["*"], resources=["r1"]), ("verb2", "r1", "g2"), False),
        # star resource
        (rule_of(verbs=["verb1"], api_groups=["g1"], resources=["*"]), ("verb1", "r2", "g1"), True),
        (rule_of(verbs=["verb1"], api_groups=["g1"], resources=["*"]), ("verb1", "r2/sub", "g1"), True),
        (rule_of(verbs=["verb1"], api_groups=["g1"], resources=["*"]), ("verb1", "r2", "g2"), False),
        # tuple expansion
        (rule_of(verbs=["v1", "v2"], api_groups=["g1", "g2"], resources=["r1", "r2"]), ("v2", "r2", "g2"), True),
        # a resource does not match its subresources, nor a subresource its resource
        (rule_of(verbs=["*"], api_groups=["*"], resources=["pods"]), ("get", "pods/status", ""), False),
        (rule_of(verbs=["*"], api_groups=["*"], resources=["pods/status"]), ("get", "pods", ""), False),
        (rule_of(verbs=["*"], api_groups=["*"], resources=["pods/status"]), ("get", "pods/status", ""), True),
        (rule_of(verbs=["*"], api_groups=["*"], resources=["pods/status"]), ("get", "pods/log", ""), False),
        # "*/status": that subresource of every resource
        (rule_of(verbs=["get"], api_groups=[""], resources=["*/status"]), ("get", "pods/status", ""), True),
        (rule_of(verbs=["get"], api_groups=[""], resources=["*/status"]), ("get", "nodes/status", ""), True),
        (rule_of(verbs=["get"], api_groups=[""], resources=["*/status"]), ("get", "pods", ""), False),
        (rule_of(verbs=["get"], api_groups=[""], resources=["*/status"]), ("get", "pods/log", ""), False),
        # "pods/*" is no wildcard to the authorizer (only to the escalation check's Covers)
        (rule_of(verbs=["get"], api_groups=[""], resources=["pods/*"]), ("get", "pods/log", ""), False),
        # verbs and groups are exact and case-sensitive
        (rule_of(verbs=["get"], api_groups=[""], resources=["pods"]), ("GET", "pods", ""), False),
        (rule_of(verbs=["get"], api_groups=[""], resources=["pods"]), ("get", "Pods", ""), False),
        (rule_of(verbs=["get"], api_groups=[""], resources=["roles"]), ("get", "roles", RBAC), False),
        # a rule without API groups matches nothing
        (rule_of(verbs=["get"], resources=["pods"]), ("get", "pods", ""), False),
    ],
)
def test_rule_matching(rule: rbac.Rule, attributes: tuple[str, str, str], expected: bool) -> None:
    verb, resource, group = attributes
    assert rbac.rule_allows(request(ANYONE, verb, resource, "ns", group=group), rule) is expected


@pytest.mark.parametrize(
    ("names", "requested", "expected"),
    [
        ([], "", True),  # no names: every object, and list/watch/create
        ([], "web", True),
        (["web"], "web", True),
        (["web"], "db", False),
        (["web"], "", False),  # a named rule never allows a list, a watch or a create
    ],
)
def test_resource_names(names: list[str], requested: str, expected: bool) -> None:
    rule = rule_of(verbs=["get"], api_groups=[""], resources=["pods"], resource_names=names)
    assert rbac.rule_allows(request(ANYONE, "get", "pods", "ns", name=requested), rule) is expected


@pytest.mark.parametrize(
    ("rule_urls", "url", "expected"),
    [
        (["*"], "/foo/bar/one", True),
        (["/foo/*"], "/foo", False),
        (["/foo/*"], "/foo/bar", True),
        (["/apis"], "/apis", True),
        (["/apis"], "/api/v1", False),
    ],
)
def test_non_resource_urls(rule_urls: list[str], url: str, expected: bool) -> None:
    assert rbac.non_resource_url_matches(rule_of(verbs=["get"], non_resource_urls=rule_urls), url) is expected


# -- bindings: scope and subjects (Kubernetes' TestAuthorizer) -------------------------------


def test_rolebinding_to_clusterrole_grants_only_in_its_namespace() -> None:
    authorizer = rbac.RBACAuthorizer(
        registries_with(
            cluster_role("admin", policy_rule("*", "*", "*")),
            binding("b", "ns1", "ClusterRole/admin", "User:admin", "Group:admins"),
        )
    )
    for who in (user("admin"), user("admin", "group1"), user("joe", "admins"), user("joe", "group1", "admins")):
        assert allowed(authorizer, request(who, "watch", "Foobar", "ns1"))
    for who in (user("admin"), user("admin", "admins")):
        assert not allowed(authorizer, request(who, "get", "pods", "ns2"))
        assert not allowed(authorizer, request(who, "get", "nodes", ""))  # cluster scope: RoleBindings do not count
    assert not allowed(authorizer, request(user("joe"), "get", "pods", "ns1"))


def test_rolebinding_to_role_uses_the_role_of_its_own_namespace() -> None:
    authorizer = rbac.RBACAuthorizer(
        registries_with(
            role("reader", "ns1", policy_rule("get,list", "", "pods")),
            role("reader", "ns2", policy_rule("*", "", "*")),
            binding("b", "ns1", "Role/reader", "User:alice"),
        )
    )
    alice = user("alice")
    assert allowed(authorizer, request(alice, "list", "pods", "ns1"))
    assert not allowed(authorizer, request(alice, "delete", "pods", "ns1"))  # ns2's role is not ns1's
    assert not allowed(authorizer, request(alice, "list", "pods", "ns2"))


def test_clusterrolebinding_grants_in_every_namespace_and_at_cluster_scope() -> None:
    authorizer = rbac.RBACAuthorizer(
        registries_with(
            cluster_role("node-reader", policy_rule("get,list,watch", "", "nodes,pods")),
            cluster_binding("b", "node-reader", "Group:ops"),
        )
    )
    ops = user("bob", "ops")
    assert allowed(authorizer, request(ops, "list", "nodes"))
    assert allowed(authorizer, request(ops, "get", "pods", "anywhere"))
    assert not allowed(authorizer, request(ops, "delete", "pods", "anywhere"))
    assert not allowed(authorizer, request(user("bob"), "list", "nodes"))


def test_service_account_subjects() -> None:
    authorizer = rbac.RBACAuthorizer(
        registries_with(
            cluster_role("reader", policy_rule("get", "", "pods")),
            # A RoleBinding's service account without a namespace is in the binding's namespace.
            binding("local", "ns1", "ClusterRole/reader", "ServiceAccount:builder"),
            binding("remote", "ns1", "ClusterRole/reader", "ServiceAccount:other/deployer"),
            # A ClusterRoleBinding's must name its namespace, else it matches no one.
            cluster_binding("everywhere", "reader", "ServiceAccount:ci/runner", "ServiceAccount:nowhere"),
            cluster_binding("all-sas", "reader", "Group:system:serviceaccounts:team"),
        )
    )
    builder = user(rbac.service_account_username("ns1", "builder"), *rbac.service_account_groups("ns1"))
    assert allowed(authorizer, request(builder, "get", "pods", "ns1"))
    assert not allowed(authorizer, request(builder, "get", "pods", "ns2"))
    deployer = user(rbac.service_account_username("other", "deployer"))
    assert allowed(authorizer, request(deployer, "get", "pods", "ns1"))
    assert not allowed(authorizer, request(deployer, "get", "pods", "other"))
    runner = user("system:serviceaccount:ci:runner")
    assert allowed(authorizer, request(runner, "get", "pods", "x"))
    assert not allowed(authorizer, request(user("system:serviceaccount::nowhere"), "get", "pods", "x"))
    assert not allowed(authorizer, request(user("nowhere"), "get", "pods", "x"))
    team_sa = user("system:serviceaccount:team:x", *rbac.service_account_groups("team"))
    assert allowed(authorizer, request(team_sa, "get", "pods", "x"))
    # A user named like a service account is not one unless the name matches exactly.
    assert not allowed(authorizer, request(user("system:serviceaccount:ns1:builder2"), "get", "pods", "ns1"))


def test_system_masters_is_allowed_everything_without_any_binding() -> None:
    authorizer = rbac.RBACAuthorizer(registries_with())
    admin = user("kubernetes-admin", SYSTEM_MASTERS, SYSTEM_AUTHENTICATED)
    assert allowed(authorizer, request(admin, "delete", "nodes", name="node-1"))
    assert allowed(authorizer, request(admin, "escalate", "clusterroles", group=RBAC))
    assert not allowed(authorizer, request(user("kubernetes-admin"), "get", "pods", "default"))


def test_denial_is_no_opinion_saying_no_role_grants_it_with_missing_roles_named() -> None:
    authorizer = rbac.RBACAuthorizer(
        registries_with(
            cluster_role("view", policy_rule("get", "", "pods")),
            binding("ok", "ns1", "ClusterRole/view", "User:carol"),
            binding("dangling", "ns1", "ClusterRole/gone", "User:carol"),
            binding("bad-role", "ns1", "Role/missing", "User:carol"),
        )
    )
    verdict = authorizer.authorize(request(user("carol"), "create", "pods", "ns1"))
    assert verdict.decision is Decision.NO_OPINION
    assert verdict.reason.startswith("RBAC: no role bound to the user or its groups allows it; ")
    assert 'clusterrole.rbac.authorization.k8s.io "gone" not found' in verdict.reason
    assert 'role.rbac.authorization.k8s.io "missing" not found' in verdict.reason
    allowed_verdict = authorizer.authorize(request(user("carol"), "get", "pods", "ns1"))
    assert allowed_verdict.reason == 'RBAC: allowed by RoleBinding "ok/ns1" of ClusterRole "view" to User "carol"'
    # A binding that does not apply to the caller contributes no error.
    assert authorizer.authorize(request(user("dave"), "get", "pods", "ns1")).reason.count("not found") == 0


def test_the_index_follows_the_caches_lazily() -> None:
    registries = registries_with(cluster_role("view", policy_rule("get,list,watch", "", "pods")))
    authorizer = rbac.RBACAuthorizer(registries)
    erin = user("erin", SYSTEM_AUTHENTICATED)
    assert not allowed(authorizer, request(erin, "list", "pods", "ns1"))
    registries["RoleBinding"].cache.put(binding("grant", "ns1", "ClusterRole/view", "User:erin"))
    assert allowed(authorizer, request(erin, "list", "pods", "ns1"))
    # A role's rules changing changes what its bindings grant.
    registries["ClusterRole"].cache.put(cluster_role("view", policy_rule("get", "", "pods")))
    assert not allowed(authorizer, request(erin, "list", "pods", "ns1"))
    registries["RoleBinding"].cache.remove("ns1", "grant")
    assert not allowed(authorizer, request(erin, "get", "pods", "ns1"))
    # Between changes nothing is rebuilt.
    index = authorizer.index
    authorizer.authorize(request(erin, "get", "pods", "ns1"))
    assert authorizer.index is index


def test_a_call_reads_only_the_callers_bindings() -> None:
    objects: list[Any] = [cluster_role("view", policy_rule("get", "", "pods"))]
    objects += [binding(f"b{i}", f"ns{i}", "ClusterRole/view", f"User:user{i}") for i in range(5000)]
    objects += [cluster_binding(f"c{i}", "view", f"Group:group{i}") for i in range(5000)]
    authorizer = rbac.RBACAuthorizer(registries_with(*objects))
    caller = user("user42", "group7", SYSTEM_AUTHENTICATED)
    grants = authorizer.index.grants_for(caller, "ns42")
    assert [g.binding for g in grants] == [("ClusterRoleBinding", "", "c7"), ("RoleBinding", "ns42", "b42")]
    started = time.perf_counter()
    for _ in range(10_000):
        authorizer.authorize(request(caller, "list", "pods", "ns42"))
    assert time.perf_counter() - started < 1.0  # 10,000 bindings, yet microseconds per call


def test_each_binding_counts_once_per_caller() -> None:
    authorizer = rbac.RBACAuthorizer(
        registries_with(
            cluster_role("view", policy_rule("get", "", "pods")),
            cluster_binding("both", "view", "User:frank", "Group:devs", "Group:devs"),
        )
    )
    assert len(authorizer.index.grants_for(user("frank", "devs"), "")) == 1


# -- covers (Kubernetes' policy comparator) ---------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "servant", "covered"),
    [
        (policy_rule("*", "*", "*"), policy_rule("get", "", "pods"), True),
        (policy_rule("get,list", "", "pods"), policy_rule("get", "", "pods"), True),
        (policy_rule("get", "", "pods"), policy_rule("get,list", "", "pods"), False),
        (policy_rule("get", "", "pods/*"), policy_rule("get", "", "pods/log"), True),
        (policy_rule("get", "", "pods/*"), policy_rule("get", "", "pods"), False),
        (policy_rule("get", "", "pods", names="a,b"), policy_rule("get", "", "pods", names="a"), True),
        (policy_rule("get", "", "pods", names="a"), policy_rule("get", "", "pods"), False),
        (policy_rule("get", "", "pods"), policy_rule("get", "", "pods", names="a"), True),
        (policy_rule("*", urls="/api/*"), policy_rule("get", urls="/api/v1"), True),
        (policy_rule("*", urls="/api/*"), policy_rule("get", urls="/apis"), False),
        (policy_rule("get", "*", "*"), policy_rule("get", urls="/api"), False),
    ],
)
def test_covers(owner: Any, servant: Any, covered: bool) -> None:
    ok, missing = rbac.covers([rbac.Rule.of(owner)], [servant])
    assert ok is covered
    assert bool(missing) is not covered


# -- escalation prevention ---------------------------------------------------------------------


def escalation(*objects: Any) -> tuple[rbac.EscalationCheck, dict[str, Any]]:
    registries = registries_with(*objects)
    union = UnionAuthorizer([rbac.RBACAuthorizer(registries)])
    [plugin] = rbac.admission_plugins(registries, union)
    assert isinstance(plugin, rbac.EscalationCheck)
    return plugin, registries


def admission(who: UserInfo, obj: Any, operation: str = CREATE, old: Any = None) -> AdmissionRequest:
    kinds = {ROLES.message: ROLES, CLUSTER_ROLES.message: CLUSTER_ROLES, ROLE_BINDINGS.message: ROLE_BINDINGS}
    kinds[CLUSTER_ROLE_BINDINGS.message] = CLUSTER_ROLE_BINDINGS
    return AdmissionRequest(who, operation, kinds[type(obj)], obj, old)


def refused(plugin: rbac.EscalationCheck, req: AdmissionRequest) -> ApiError:
    with pytest.raises(ApiError) as caught:
        plugin.admit(req)
    return caught.value


NS_ADMIN = [
    cluster_role("pod-admin", policy_rule("get,list,create,delete", "", "pods")),
    cluster_role("rbac-writer", policy_rule("create,update", RBAC, "roles,rolebindings,clusterroles")),
    binding("admin", "team", "ClusterRole/pod-admin", "User:alice"),
    binding("rbac", "team", "ClusterRole/rbac-writer", "User:alice"),
]
ALICE = authenticated("alice", [])


def test_a_role_with_only_held_rules_may_be_made() -> None:
    plugin, _ = escalation(*NS_ADMIN)
    plugin.admit(admission(ALICE, role("reader", "team", policy_rule("get,list", "", "pods"))))


def test_a_role_with_rules_not_held_is_refused_naming_user_and_what_is_missing() -> None:
    plugin, _ = escalation(*NS_ADMIN)
    error = refused(plugin, admission(ALICE, role("r", "team", policy_rule("get,update", "", "pods,services"))))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.message.startswith(
        'roles.rbac.authorization.k8s.io "r" is forbidden in namespace "team": user "alice" '
        '(groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held: '
    )
    assert '{APIGroups:[""], Resources:["pods"], Verbs:["update"]}' in error.message
    assert '{APIGroups:[""], Resources:["services"], Verbs:["get" "update"]}' in error.message
    assert '"escalate" on roles.rbac.authorization.k8s.io' in error.message
    # Held in her namespace, not elsewhere nor cluster-wide.
    refused(plugin, admission(ALICE, role("reader", "other", policy_rule("get", "", "pods"))))
    refused(plugin, admission(ALICE, cluster_role("reader", policy_rule("get", "", "pods"))))


def test_wildcards_must_be_held_as_wildcards() -> None:
    plugin, _ = escalation(*NS_ADMIN)
    for rule in (policy_rule("*", "", "pods"), policy_rule("get", "*", "pods"), policy_rule("get", "", "*")):
        refused(plugin, admission(ALICE, role("wild", "team", rule)))


def test_escalate_lets_a_caller_write_any_role() -> None:
    plugin, _ = escalation(
        *NS_ADMIN,
        cluster_role("escalator", policy_rule("escalate", RBAC, "roles")),
        binding("esc", "team", "ClusterRole/escalator", "User:alice"),
    )
    plugin.admit(admission(ALICE, role("anything", "team", policy_rule("*", "*", "*"))))
    refused(plugin, admission(ALICE, role("anything", "elsewhere", policy_rule("*", "*", "*"))))


def test_binding_a_role_whose_rules_are_held_is_allowed_in_that_namespace_only() -> None:
    plugin, _ = escalation(*NS_ADMIN, cluster_role("view", policy_rule("get,list", "", "pods")))
    plugin.admit(admission(ALICE, binding("bob-view", "team", "ClusterRole/view", "User:bob")))
    error = refused(plugin, admission(ALICE, binding("bob-view", "prod", "ClusterRole/view", "User:bob")))
    assert 'rolebindings.rbac.authorization.k8s.io "bob-view" is forbidden in namespace "prod"' in error.message
    assert '"bind" on clusterroles.rbac.authorization.k8s.io "view"' in error.message
    refused(plugin, admission(ALICE, cluster_binding("bob-view", "view", "User:bob")))


def test_binding_a_role_with_more_than_is_held_is_refused_unless_bind_is_allowed() -> None:
    plugin, _ = escalation(
        *NS_ADMIN,
        cluster_role("edit", policy_rule("get,list,create,update,delete", "", "pods,services")),
    )
    req = admission(ALICE, binding("bob-edit", "team", "ClusterRole/edit", "User:bob"))
    assert '{APIGroups:[""], Resources:["services"]' in refused(plugin, req).message
    plugin, _ = escalation(
        *NS_ADMIN,
        cluster_role("edit", policy_rule("get,list,create,update,delete", "", "pods,services")),
        cluster_role(
            "binder",
            rbac_pb2.PolicyRule(verbs=["bind"], api_groups=[RBAC], resources=["clusterroles"], resource_names=["edit"]),
        ),
        binding("may-bind", "team", "ClusterRole/binder", "User:alice"),
    )
    plugin.admit(req)
    missing = refused(plugin, admission(ALICE, binding("bob-x", "team", "ClusterRole/pod-admin-plus", "User:bob")))
    assert missing.code == grpc.StatusCode.NOT_FOUND


def test_binding_a_missing_role_is_not_found_naming_the_role() -> None:
    plugin, _ = escalation(*NS_ADMIN)
    error = refused(plugin, admission(ALICE, binding("b", "team", "Role/nope", "User:bob")))
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert 'roleRef.name: role.rbac.authorization.k8s.io "nope" not found in namespace "team"' == error.message


def test_masters_deletes_and_owner_reference_updates_are_never_checked() -> None:
    plugin, _ = escalation()
    plugin.admit(admission(APISERVER, cluster_role("x", policy_rule("*", "*", "*"))))
    plugin.admit(admission(user("root", SYSTEM_MASTERS), cluster_role("x", policy_rule("*", "*", "*"))))
    big = role("big", "team", policy_rule("*", "*", "*"))
    plugin.admit(admission(ALICE, big, DELETE))
    owned = rbac_pb2.Role()
    owned.CopyFrom(big)
    owned.metadata.owner_references.add(kind="Thing", name="owner", uid="u1")
    plugin.admit(admission(ALICE, owned, UPDATE, old=big))
    relabelled = rbac_pb2.Role()
    relabelled.CopyFrom(big)
    relabelled.metadata.labels["x"] = "y"
    refused(plugin, admission(ALICE, relabelled, UPDATE, old=big))


def test_non_resource_urls_are_checked_against_the_callers_rules() -> None:
    plugin, _ = escalation(
        cluster_role("health", policy_rule("get", urls="/healthz/*")),
        cluster_binding("h", "health", "User:alice"),
    )
    plugin.admit(admission(ALICE, cluster_role("h2", policy_rule("get", urls="/healthz/etcd"))))
    refused(plugin, admission(ALICE, cluster_role("h3", policy_rule("get", urls="/metrics"))))


def test_other_kinds_are_not_checked() -> None:
    from kybernetes.v1 import pod_pb2
    from services.common.resources import PODS

    plugin, _ = escalation()
    plugin.admit(AdmissionRequest(ALICE, CREATE, PODS, pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name="p"))))


# -- the bootstrap policy -------------------------------------------------------------------------


def bootstrap_authorizer() -> rbac.RBACAuthorizer:
    return rbac.RBACAuthorizer(
        registries_with(
            *bootstrap.cluster_roles(),
            *bootstrap.cluster_role_bindings(),
            *bootstrap.namespace_roles(),
            *bootstrap.namespace_role_bindings(),
        )
    )


COORDINATION = "coordination.k8s.io"


CONTROLLERS = authenticated(CONTROLLER_MANAGER_USER, [])
SCHEDULER = authenticated(bootstrap.KUBE_SCHEDULER, [])
PROXY = authenticated(bootstrap.KUBE_PROXY, [])
DNS = authenticated(bootstrap.KUBE_DNS, [])
KUBELET_CLIENT = authenticated(bootstrap.APISERVER_KUBELET_CLIENT, [])
BOOTSTRAPPER = authenticated("system:bootstrap:abcdef", ["system:bootstrappers"])

# Every call each component's code makes (verb, resource, namespace[, API group]; "ns" stands
# for any namespace), read from the code: informers List and Watch their kinds across namespaces.
COMPONENT_CALLS: dict[str, tuple[UserInfo, list[tuple[str, ...]]]] = {
    # services/apiserver/scheduler/scheduler.py: informers on pods, nodes, services; Bind;
    # UpdateStatus of an unschedulable pod.
    "scheduler": (
        SCHEDULER,
        [
            *((verb, kind, "") for verb in ("list", "watch") for kind in ("pods", "nodes", "services")),
            ("create", "pods/binding", "ns"),
            ("update", "pods/status", "ns"),
        ],
    ),
    # The controller identity runs the scheduler too, and:
    "controllers": (
        CONTROLLERS,
        [
            # scheduler
            *((verb, kind, "") for verb in ("list", "watch") for kind in ("pods", "nodes", "services")),
            ("create", "pods/binding", "ns"),
            ("update", "pods/status", "ns"),
            # endpoints_controller.py: informers on services, pods, endpoints, nodes; writes endpoints.
            *((verb, kind, "") for verb in ("list", "watch") for kind in ("services", "pods", "endpoints", "nodes")),
            ("create", "endpoints", "ns"),
            ("update", "endpoints", "ns"),
            ("delete", "endpoints", "ns"),
            # nodelifecycle.py: informers on nodes, pods; node and pod status; eviction.
            ("update", "nodes/status", ""),
            ("delete", "pods", "ns"),
            # nodeipam.py: informer on nodes; a node's spec.podCIDR; NetworkUnavailable.
            ("update", "nodes", ""),
            # services/replicator/manager.py: informers on rcs and pods; get rc; pods; rc status.
            *((verb, "replicationcontrollers", "") for verb in ("list", "watch")),
            ("get", "replicationcontrollers", "ns"),
            ("create", "pods", "ns"),
            ("update", "pods", "ns"),
            ("update", "replicationcontrollers/status", "ns"),
            # services/common/runtime/leaderelection.py: the controllers' and the replicators'
            # leases (kube-controller-manager, kube-replicator) in kube-system.
            *((verb, "leases", "kube-system", COORDINATION) for verb in ("get", "create", "update")),
            # nodelifecycle.py: informers on the nodes' Leases; the Lease of a deleted Node (after
            # a get of its owner).
            *((verb, "leases", "kube-node-lease", COORDINATION) for verb in ("list", "watch", "delete")),
            ("get", "nodes", ""),
        ],
    ),
    # services/proxy/main.py: informers on endpoints and services.
    "proxy": (PROXY, [(verb, kind, "") for verb in ("list", "watch") for kind in ("services", "endpoints")]),
    # services/dns/controller.py: informers on services and endpoints.
    "dns": (DNS, [(verb, kind, "") for verb in ("list", "watch") for kind in ("services", "endpoints")]),
    # The API server's client of kubelets (their pod listing, logs, static pods).
    "kubelet-client": (
        KUBELET_CLIENT,
        [("get", "nodes/proxy", ""), ("create", "nodes/proxy", ""), ("get", "nodes/log", "")],
    ),
}


@pytest.mark.parametrize("component", sorted(COMPONENT_CALLS))
def test_every_component_may_make_the_calls_its_code_makes(component: str) -> None:
    authorizer = bootstrap_authorizer()
    who, calls = COMPONENT_CALLS[component]
    denied = [
        call
        for call in calls
        if not allowed(authorizer, request(who, call[0], call[1], call[2], group=call[3] if len(call) > 3 else ""))
    ]
    assert denied == []


@pytest.mark.parametrize(
    ("who", "verb", "resource", "namespace", "group"),
    [
        (PROXY, "create", "pods", "ns", ""),
        (PROXY, "update", "endpoints", "ns", ""),
        (DNS, "get", "nodes", "", ""),
        (DNS, "create", "services", "ns", ""),
        (SCHEDULER, "delete", "pods", "ns", ""),
        (SCHEDULER, "update", "nodes/status", "", ""),
        (CONTROLLERS, "create", "roles", "ns", RBAC),
        (CONTROLLERS, "create", "clusterrolebindings", "", RBAC),
        (CONTROLLERS, "delete", "nodes", "", ""),
        (CONTROLLERS, "create", "nodes", "", ""),
        (CONTROLLERS, "update", "services", "ns", ""),
        (CONTROLLERS, "create", "services", "ns", ""),
        # Leases in kube-system only, and no more verbs than election uses.
        (CONTROLLERS, "get", "leases", "ns", "coordination.k8s.io"),
        (CONTROLLERS, "create", "leases", "default", "coordination.k8s.io"),
        (CONTROLLERS, "delete", "leases", "kube-system", "coordination.k8s.io"),
        (CONTROLLERS, "list", "leases", "kube-system", "coordination.k8s.io"),
        (CONTROLLERS, "get", "leases", "kube-system", ""),
        (SCHEDULER, "update", "leases", "kube-system", "coordination.k8s.io"),
        (PROXY, "get", "leases", "kube-system", "coordination.k8s.io"),
        # The nodes' Leases are read, never written, by the controllers (each node writes its own).
        (CONTROLLERS, "update", "leases", "kube-node-lease", "coordination.k8s.io"),
        (SCHEDULER, "list", "leases", "kube-system", "coordination.k8s.io"),
        (KUBELET_CLIENT, "create", "pods", "ns", ""),
        (BOOTSTRAPPER, "list", "pods", "ns", ""),
        (BOOTSTRAPPER, "create", "nodes", "", ""),
    ],
)
def test_components_get_nothing_beyond_their_calls(
    who: UserInfo, verb: str, resource: str, namespace: str, group: str
) -> None:
    assert not allowed(bootstrap_authorizer(), request(who, verb, resource, namespace, group=group))


def test_user_facing_roles() -> None:
    authorizer = rbac.RBACAuthorizer(
        registries_with(
            *bootstrap.cluster_roles(),
            binding("v", "team", "ClusterRole/view", "User:viewer"),
            binding("e", "team", "ClusterRole/edit", "User:editor"),
            binding("a", "team", "ClusterRole/admin", "User:admin"),
        )
    )
    viewer, editor, admin = (authenticated(name, []) for name in ("viewer", "editor", "admin"))
    for who in (viewer, editor, admin):
        for verb in ("get", "list", "watch"):
            for resource in (
                "pods",
                "pods/log",
                "pods/status",
                "services",
                "endpoints",
                "replicationcontrollers",
                "replicationcontrollers/status",
                "replicationcontrollers/scale",
            ):
                assert allowed(authorizer, request(who, verb, resource, "team")), (who.name, verb, resource)
        assert allowed(authorizer, request(who, "get", "namespaces", "team", name="team"))
        assert not allowed(authorizer, request(who, "list", "pods", "other"))
        assert not allowed(authorizer, request(who, "list", "nodes"))
        assert not allowed(authorizer, request(who, "update", "pods/status", "team"))
    for verb in ("create", "update", "delete"):
        assert not allowed(authorizer, request(viewer, verb, "pods", "team"))
        for resource in ("pods", "services", "endpoints", "replicationcontrollers", "replicationcontrollers/scale"):
            assert allowed(authorizer, request(editor, verb, resource, "team"))
            assert allowed(authorizer, request(admin, verb, resource, "team"))
        for resource in ("roles", "rolebindings"):
            assert not allowed(authorizer, request(editor, verb, resource, "team", group=RBAC))
            assert allowed(authorizer, request(admin, verb, resource, "team", group=RBAC))
    assert not allowed(authorizer, request(admin, "create", "clusterroles", "", group=RBAC))


def test_basic_user_and_masters_bindings() -> None:
    authorizer = bootstrap_authorizer()
    anyone = authenticated("someone", [])
    assert allowed(authorizer, request(anyone, "create", "selfsubjectaccessreviews", group="authorization.k8s.io"))
    assert allowed(authorizer, request(anyone, "create", "selfsubjectreviews", group="authentication.k8s.io"))
    assert not allowed(authorizer, request(anyone, "create", "subjectaccessreviews", group="authorization.k8s.io"))
    assert not allowed(authorizer, request(anyone, "list", "pods", "default"))
    assert allowed(
        authorizer, request(BOOTSTRAPPER, "create", "certificatesigningrequests", group="certificates.k8s.io")
    )
    # cluster-admin is also bound to system:masters (which the authorizer lets through anyway).
    grants = authorizer.index.grants_for(user("x", SYSTEM_MASTERS), "")
    assert [g.binding[2] for g in grants] == ["cluster-admin"]


def test_bootstrap_objects_are_valid_labelled_and_consistent() -> None:
    from services.common.validation import validate

    roles, bindings = bootstrap.cluster_roles(), bootstrap.cluster_role_bindings()
    names = [r.metadata.name for r in roles]
    assert len(set(names)) == len(names)
    local_roles, local_bindings = bootstrap.namespace_roles(), bootstrap.namespace_role_bindings()
    for obj in [*roles, *bindings, *local_roles, *local_bindings]:
        assert validate(obj) == [], obj.metadata.name
        assert obj.metadata.labels == {"kubernetes.io/bootstrapping": "rbac-defaults"}
        assert obj.metadata.annotations == {"rbac.authorization.kubernetes.io/autoupdate": "true"}
    for item in bindings:
        assert item.role_ref.name in names
    system_namespaces = {ns.metadata.name for ns in bootstrap.namespaces()}
    local_names = {(r.metadata.namespace, r.metadata.name) for r in local_roles}
    for item in local_bindings:
        assert item.metadata.namespace in system_namespaces
        assert item.role_ref.kind == "Role"
        assert (item.metadata.namespace, item.role_ref.name) in local_names
    namespaces = {ns.metadata.name: dict(ns.metadata.labels) for ns in bootstrap.namespaces()}
    assert namespaces == {
        "default": {},
        "kube-system": {"pod-security.kubernetes.io/enforce": "privileged"},
        "kube-public": {},
        "kube-node-lease": {},
    }
    for ns in bootstrap.namespaces():
        assert validate(ns) == []


def test_reconciling_a_role_adds_only_what_is_missing() -> None:
    [expected] = [r for r in bootstrap.cluster_roles() if r.metadata.name == "system:kube-dns"]
    assert bootstrap.reconciled_role(expected, expected) is None
    edited = rbac_pb2.ClusterRole()
    edited.CopyFrom(expected)
    del edited.rules[:]
    edited.rules.append(policy_rule("list", "", "services"))
    edited.rules.append(policy_rule("get", "", "pods"))  # an operator's extra rule stays
    edited.metadata.labels["mine"] = "yes"
    edited.metadata.annotations[bootstrap.AUTOUPDATE_ANNOTATION] = "true"
    desired = bootstrap.reconciled_role(expected, edited)
    assert desired is not None
    assert desired.metadata.labels["mine"] == "yes"
    assert list(desired.rules)[:2] == list(edited.rules)
    ok, missing = rbac.covers([rbac.Rule.of(r) for r in desired.rules], expected.rules)
    assert ok and missing == []
    assert bootstrap.reconciled_role(expected, desired) is None


def test_reconciling_a_binding_adds_missing_subjects() -> None:
    [expected] = [b for b in bootstrap.cluster_role_bindings() if b.metadata.name == "system:kube-scheduler"]
    assert bootstrap.reconciled_binding(expected, expected) is None
    edited = rbac_pb2.ClusterRoleBinding()
    edited.CopyFrom(expected)
    del edited.subjects[:]
    # The same subject with apiGroup left to its default counts as present.
    edited.subjects.add(kind="User", name=bootstrap.KUBE_SCHEDULER)
    edited.subjects.add(kind="User", name="someone-else")
    desired = bootstrap.reconciled_binding(expected, edited)
    assert desired is not None
    assert [s.name for s in desired.subjects] == [
        bootstrap.KUBE_SCHEDULER,
        "someone-else",
        CONTROLLER_MANAGER_USER,
    ]


# -- the access review service ---------------------------------------------------------------------


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)


def access_review(
    verb: str,
    resource: str,
    namespace: str = "",
    *,
    user_name: str = "",
    groups: Iterable[str] = (),
    group: str = "",
    subresource: str = "",
) -> Any:
    return authorization_pb2.SubjectAccessReview(
        spec=authorization_pb2.SubjectAccessReviewSpec(
            resource_attributes=authorization_pb2.ResourceAttributes(
                namespace=namespace, verb=verb, group=group, resource=resource, subresource=subresource
            ),
            user=user_name,
            groups=list(groups),
        )
    )


def call(servicer: review.AuthorizationServicer, method: str, message: Any, caller: UserInfo) -> Any:
    async def run() -> Any:
        set_current_user(caller)
        return await getattr(servicer, method)(message, FakeContext())

    return asyncio.run(run())


def review_service() -> review.AuthorizationServicer:
    registries = registries_with(
        *bootstrap.cluster_roles(),
        *bootstrap.cluster_role_bindings(),
        binding("v", "team", "ClusterRole/view", "User:viewer"),
        cluster_role("reviewer", policy_rule("create", "authorization.k8s.io", "subjectaccessreviews")),
        cluster_binding("r", "reviewer", "User:auditor"),
    )
    return review.AuthorizationServicer(UnionAuthorizer([rbac.RBACAuthorizer(registries)]))


VIEWER = authenticated("viewer", [])


def test_self_review_answers_for_the_caller() -> None:
    service = review_service()
    answer = call(service, "CreateSelfSubjectAccessReview", access_review("list", "pods", "team"), VIEWER)
    assert answer.status.allowed and not answer.status.denied
    assert answer.kind == "SelfSubjectAccessReview" and answer.api_version == "authorization.k8s.io/v1"
    assert answer.status.reason.startswith("RBAC: allowed by RoleBinding")
    answer = call(service, "CreateSelfSubjectAccessReview", access_review("create", "pods", "team"), VIEWER)
    assert not answer.status.allowed and not answer.status.denied
    assert "RBAC: no role bound" in answer.status.reason
    log_read = access_review("get", "pods", "team", subresource="log")
    assert call(service, "CreateSelfSubjectAccessReview", log_read, VIEWER).status.allowed


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (access_review("get", "pods", user_name="viewer"), "spec.user"),
        (access_review("get", "pods", groups=["system:masters"]), "spec.groups"),
        (access_review("", "pods"), "spec.resourceAttributes.verb"),
        (access_review("get", ""), "spec.resourceAttributes.resource"),
        (authorization_pb2.SubjectAccessReview(), "spec.resourceAttributes"),
    ],
)
def test_self_review_refuses_bad_input_naming_the_field(message: Any, field: str) -> None:
    with pytest.raises(Aborted) as caught:
        call(review_service(), "CreateSelfSubjectAccessReview", message, VIEWER)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details.startswith(f"{field}:")


def test_subject_review_needs_create_on_subjectaccessreviews() -> None:
    service = review_service()
    with pytest.raises(Aborted) as caught:
        call(service, "CreateSubjectAccessReview", access_review("list", "pods", "team", user_name="x"), VIEWER)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert 'user "viewer" cannot create resource "subjectaccessreviews"' in caught.value.details
    auditor = authenticated("auditor", [])
    answer = call(
        service, "CreateSubjectAccessReview", access_review("list", "pods", "team", user_name="viewer"), auditor
    )
    assert answer.status.allowed and answer.kind == "SubjectAccessReview"
    assert answer.spec.user == "viewer"
    # A named user is an authenticated one: system:basic-user applies.
    self_review = access_review("create", "selfsubjectaccessreviews", user_name="nobody", group="authorization.k8s.io")
    assert call(service, "CreateSubjectAccessReview", self_review, auditor).status.allowed
    assert call(
        service, "CreateSubjectAccessReview", access_review("list", "nodes", groups=[SYSTEM_MASTERS]), auditor
    ).status.allowed
    with pytest.raises(Aborted) as caught:
        call(service, "CreateSubjectAccessReview", access_review("list", "pods"), auditor)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details.startswith("spec.user:")


def test_review_reports_an_explicit_denial() -> None:
    class Denier:
        def authorize(self, attributes: RequestAttributes) -> Verdict:
            if attributes.resource == "nodes":
                return Verdict(Decision.DENY, "node authorizer: no")
            return ALLOW if attributes.verb == "create" else NO_OPINION

    service = review.AuthorizationServicer(Denier())
    answer = call(service, "CreateSelfSubjectAccessReview", access_review("get", "nodes"), VIEWER)
    assert not answer.status.allowed and answer.status.denied and answer.status.reason == "node authorizer: no"


def test_whoami_returns_the_caller() -> None:
    caller = UserInfo("kubernetes-admin", (SYSTEM_MASTERS, SYSTEM_AUTHENTICATED), "uid-1")
    answer = call(review_service(), "WhoAmI", authorization_pb2.SelfSubjectReviewRequest(), caller)
    assert (answer.username, list(answer.groups), answer.uid) == (
        "kubernetes-admin",
        [SYSTEM_MASTERS, SYSTEM_AUTHENTICATED],
        "uid-1",
    )
    with pytest.raises(Aborted) as caught:
        call(review_service(), "WhoAmI", authorization_pb2.SelfSubjectReviewRequest(), user("no-groups"))
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
