"""RBAC against a real API server and etcd: the objects' CRUD and validation, authorization
of callers with their own certificates (bindings taking effect and going away at run time,
escalation refused), and the bootstrap policy reconciled into a store of its own."""

from __future__ import annotations

import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import grpc
import pytest

from kybernetes.v1 import authorization_pb2, authorization_pb2_grpc, meta_pb2, namespace_pb2, rbac_pb2
from services.apiserver.auth import bootstrap
from services.apiserver.registry import Registry, build_registries
from services.apiserver.storage import Storage
from services.apiserver.strategies import build_strategies
from services.common.client import ApiClient
from services.common.resources import CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, NAMESPACES, PODS, ROLE_BINDINGS, ROLES
from tests.conftest import EtcdServer
from tests.polling import eventually
from tools.clusterpki import ClusterPKI
from tools.processes import dev_pki

from .apihelpers import expect_error, make_pod

RBAC = "rbac.authorization.k8s.io"


def rule(verbs: list[str], resources: list[str], groups: tuple[str, ...] = ("",), names: tuple[str, ...] = ()) -> Any:
    return rbac_pb2.PolicyRule(verbs=verbs, api_groups=list(groups), resources=resources, resource_names=list(names))


def cluster_role(name: str, *rules: Any) -> rbac_pb2.ClusterRole:
    return rbac_pb2.ClusterRole(
        api_version=f"{RBAC}/v1", kind="ClusterRole", metadata=meta_pb2.ObjectMeta(name=name), rules=rules
    )


def role(name: str, namespace: str, *rules: Any) -> rbac_pb2.Role:
    return rbac_pb2.Role(metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace), rules=rules)


def role_binding(name: str, namespace: str, ref_kind: str, ref_name: str, *users: str) -> rbac_pb2.RoleBinding:
    return rbac_pb2.RoleBinding(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace),
        role_ref=rbac_pb2.RoleRef(api_group=RBAC, kind=ref_kind, name=ref_name),
        subjects=[rbac_pb2.Subject(kind="User", api_group=RBAC, name=user) for user in users],
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- the objects ----------------------------------------------------------------------------


async def test_rbac_objects_crud(api: ApiClient, namespace: str) -> None:
    name = unique("reader")
    created = await api.create(cluster_role(name, rule(["get", "list"], ["pods"])))
    assert created.metadata.uid and created.api_version == f"{RBAC}/v1" and created.kind == "ClusterRole"
    fetched = await api.get(CLUSTER_ROLES, name, "")
    assert list(fetched.rules[0].verbs) == ["get", "list"]
    fetched.rules.append(rule(["watch"], ["pods"]))
    updated = await api.update(fetched)
    assert len(updated.rules) == 2
    assert name in [item.metadata.name for item in (await api.list(CLUSTER_ROLES)).items]

    await api.create(role("local", namespace, rule(["get"], ["services"])))
    made = await api.create(role_binding("b", namespace, "Role", "local", "jane"))
    assert made.role_ref.api_group == RBAC and made.metadata.namespace == namespace
    assert [b.metadata.name for b in (await api.list(ROLE_BINDINGS, namespace)).items] == ["b"]

    binding = rbac_pb2.ClusterRoleBinding(
        metadata=meta_pb2.ObjectMeta(name=unique("crb")),
        role_ref=rbac_pb2.RoleRef(kind="ClusterRole", name=name),  # apiGroup defaulted
        subjects=[rbac_pb2.Subject(kind="Group", name="devs")],
    )
    stored = await api.create(binding)
    assert stored.role_ref.api_group == RBAC
    await api.delete(CLUSTER_ROLE_BINDINGS, stored.metadata.name, "")
    await api.delete(ROLES, "local", namespace)
    await api.delete(CLUSTER_ROLES, name, "")
    await expect_error(grpc.StatusCode.NOT_FOUND, api.get(CLUSTER_ROLES, name, ""))


async def test_validation_errors_name_the_field(api: ApiClient, namespace: str) -> None:
    to_a_role = rbac_pb2.ClusterRoleBinding(
        metadata=meta_pb2.ObjectMeta(name=unique("bad")),
        role_ref=rbac_pb2.RoleRef(api_group=RBAC, kind="Role", name="x"),
        subjects=[rbac_pb2.Subject(kind="User", name="jane")],
    )
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(to_a_role))
    assert "roleRef.kind" in message and '"Role"' in message

    no_verbs = role("r", namespace, rbac_pb2.PolicyRule(api_groups=[""], resources=["pods"]))
    assert "rules[0].verbs" in await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(no_verbs))

    odd_subject = role_binding("s", namespace, "ClusterRole", "view", "jane")
    odd_subject.subjects[0].kind = "Robot"
    assert "subjects[0].kind" in await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(odd_subject))

    in_a_namespace = cluster_role(unique("namespaced"), rule(["get"], ["pods"]))
    in_a_namespace.metadata.namespace = namespace
    assert "metadata.namespace" in await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(in_a_namespace))


async def test_a_bindings_role_ref_cannot_change(api: ApiClient, namespace: str) -> None:
    stored = await api.create(role_binding("fixed", namespace, "ClusterRole", "view", "jane"))
    stored.role_ref.name = "edit"
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.update(stored))
    assert "roleRef" in message and "cannot change" in message
    # Subjects may change.
    stored.role_ref.name = "view"
    stored.subjects.add(kind="User", api_group=RBAC, name="joe")
    assert len((await api.update(stored)).subjects) == 2


async def test_namespaces_are_objects(api: ApiClient) -> None:
    name = unique("ns")
    created = await api.create(namespace_pb2.Namespace(metadata=meta_pb2.ObjectMeta(name=name)))
    assert created.status.phase == "Active"
    assert name in [ns.metadata.name for ns in (await api.list(NAMESPACES)).items]
    await api.delete(NAMESPACES, name, "")


# -- callers with their own identity --------------------------------------------------------


@pytest.fixture
async def as_user(api_address: str, cluster_pki: ClusterPKI) -> AsyncIterator[Any]:
    clients: list[ApiClient] = []

    def connect(user: str, *groups: str) -> ApiClient:
        client = ApiClient(api_address, credentials=cluster_pki.client_credentials(user, groups))
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


async def test_a_binding_takes_effect_and_its_removal_too(api: ApiClient, as_user: Any, namespace: str) -> None:
    user = unique("jane")
    jane = as_user(user)
    message = await expect_error(grpc.StatusCode.PERMISSION_DENIED, jane.list(PODS, namespace))
    assert f'user "{user}" cannot list resource "pods" in namespace "{namespace}"' in message
    assert "RBAC: no role bound" in message

    viewer = unique("viewer")
    await api.create(cluster_role(viewer, rule(["get", "list", "watch"], ["pods"])))
    try:
        await api.create(role_binding("jane-views", namespace, "ClusterRole", viewer, user))
        # Within a second: the server's RBAC index follows its watch caches.
        await eventually(_allowed(lambda: jane.list(PODS, namespace)), what="the binding to take effect", timeout=1)
        # What it grants, where it grants it, and nothing more.
        await expect_error(grpc.StatusCode.PERMISSION_DENIED, jane.create(make_pod("p", namespace)))
        await expect_error(grpc.StatusCode.PERMISSION_DENIED, jane.list(PODS, f"{namespace}-other"))
        await expect_error(grpc.StatusCode.PERMISSION_DENIED, jane.list(PODS))  # every namespace

        await api.delete(ROLE_BINDINGS, "jane-views", namespace)
        await eventually(_denied(lambda: jane.list(PODS, namespace)), what="the removal to take effect", timeout=1)
    finally:
        await api.delete(CLUSTER_ROLES, viewer, "")


def _allowed(make_call: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[bool]]:
    """A check for eventually(): a fresh call made by make_call succeeds."""
    return _outcome(make_call, want_allowed=True)


def _denied(make_call: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[bool]]:
    """A check for eventually(): a fresh call made by make_call is refused PERMISSION_DENIED."""
    return _outcome(make_call, want_allowed=False)


def _outcome(make_call: Callable[[], Awaitable[Any]], *, want_allowed: bool) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            await make_call()
            return want_allowed
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.PERMISSION_DENIED:
                raise
            return not want_allowed

    return check


async def test_escalation_is_refused_and_bind_or_held_rules_allow_it(
    api: ApiClient, as_user: Any, namespace: str
) -> None:
    user = unique("lead")
    lead = as_user(user)
    limited, wide = unique("limited"), unique("wide")
    await api.create(
        cluster_role(
            limited,
            rule(["get", "list", "create", "delete"], ["pods"]),
            rule(["create", "update", "delete"], ["roles", "rolebindings"], groups=(RBAC,)),
        )
    )
    await api.create(cluster_role(wide, rule(["*"], ["pods", "services"])))
    try:
        await api.create(role_binding("lead", namespace, "ClusterRole", limited, user))
        await eventually(_allowed(lambda: lead.list(PODS, namespace)), what="the lead's binding", timeout=2)

        # A Role with held rules, then one with more.
        await lead.create(role("pod-reader", namespace, rule(["get", "list"], ["pods"])))
        message = await expect_error(
            grpc.StatusCode.PERMISSION_DENIED,
            lead.create(role("too-much", namespace, rule(["get", "update"], ["pods", "services"]))),
        )
        assert f'user "{user}"' in message and "attempting to grant RBAC permissions not currently held" in message
        assert '{APIGroups:[""], Resources:["services"], Verbs:["get" "update"]}' in message

        # Binding a role whose rules are held; binding a wider one is refused...
        await lead.create(role_binding("bob-reads", namespace, "Role", "pod-reader", "bob"))
        message = await expect_error(
            grpc.StatusCode.PERMISSION_DENIED,
            lead.create(role_binding("bob-all", namespace, "ClusterRole", wide, "bob")),
        )
        assert f'"bind" on clusterroles.{RBAC} "{wide}"' in message
        # ... until the lead may bind that role.
        binder = unique("binder")
        await api.create(cluster_role(binder, rule(["bind"], ["clusterroles"], groups=(RBAC,), names=(wide,))))
        try:
            await api.create(role_binding("lead-binds", namespace, "ClusterRole", binder, user))
            bob_all = role_binding("bob-all", namespace, "ClusterRole", wide, "bob")
            await eventually(_allowed(lambda: lead.create(bob_all)), what="bind to be allowed", timeout=2)
        finally:
            await api.delete(CLUSTER_ROLES, binder, "")
    finally:
        await api.delete(CLUSTER_ROLES, limited, "")
        await api.delete(CLUSTER_ROLES, wide, "")


async def test_access_reviews_answer_for_the_caller(api: ApiClient, as_user: Any, namespace: str) -> None:
    user = unique("asker")
    asker = as_user(user)
    stub = authorization_pb2_grpc.AuthorizationStub(asker.channel)
    review = authorization_pb2.SubjectAccessReview(
        spec=authorization_pb2.SubjectAccessReviewSpec(
            resource_attributes=authorization_pb2.ResourceAttributes(namespace=namespace, verb="list", resource="pods")
        )
    )
    try:
        answer = await stub.CreateSelfSubjectAccessReview(review)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip("the API server does not serve kybernetes.v1.Authorization yet")
        if error.code() == grpc.StatusCode.PERMISSION_DENIED:
            pytest.skip("the bootstrap policy (system:basic-user) is not reconciled at start yet")
        raise
    assert not answer.status.allowed
    me = await stub.WhoAmI(authorization_pb2.SelfSubjectReviewRequest())
    assert me.username == user and "system:authenticated" in me.groups
    await expect_error(grpc.StatusCode.PERMISSION_DENIED, stub.CreateSubjectAccessReview(review))


async def test_the_authorization_service_over_grpc(registries: dict[str, Registry]) -> None:
    """The servicer as the server registers it: statuses and messages as a client sees them.
    With no authenticating interceptor in front, the caller is the API server itself."""
    from services.apiserver.auth.review import AuthorizationServicer
    from services.apiserver.auth.setup import build_authorizer

    server = grpc.aio.server()
    authorization_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationServicer(build_authorizer(registries)), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = authorization_pb2_grpc.AuthorizationStub(channel)
            review = authorization_pb2.SubjectAccessReview(
                spec=authorization_pb2.SubjectAccessReviewSpec(
                    resource_attributes=authorization_pb2.ResourceAttributes(verb="delete", resource="nodes")
                )
            )
            answer = await stub.CreateSelfSubjectAccessReview(review)
            assert answer.status.allowed and answer.kind == "SelfSubjectAccessReview"
            review.spec.user = "jane"
            message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, stub.CreateSelfSubjectAccessReview(review))
            assert message.startswith("spec.user:")
            answer = await stub.CreateSubjectAccessReview(review)  # caches not running: no bindings
            assert not answer.status.allowed and "RBAC: no role bound" in answer.status.reason
            me = await stub.WhoAmI(authorization_pb2.SelfSubjectReviewRequest())
            assert me.username == "system:apiserver" and "system:masters" in me.groups
    finally:
        await server.stop(None)


# -- the bootstrap policy -------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_etcd() -> Iterator[EtcdServer]:
    """An etcd of its own: the bootstrap objects are cluster-wide, and these tests edit them."""
    server = EtcdServer()
    yield server
    server.stop()


@pytest.fixture
async def registries(own_etcd: EtcdServer) -> AsyncIterator[dict[str, Registry]]:
    storage = Storage([own_etcd.endpoint], credentials=dev_pki().etcd_client_credentials())
    await storage.connect()
    try:
        yield build_registries(build_strategies().values(), storage)
    finally:
        await storage.close()


async def test_reconcile_bootstrap_creates_then_changes_nothing(registries: dict[str, Registry]) -> None:
    first = await bootstrap.reconcile_bootstrap(registries)
    assert {item.action for item in first} <= {bootstrap.CREATED, bootstrap.UNCHANGED}
    second = await bootstrap.reconcile_bootstrap(registries)
    assert {item.action for item in second} == {bootstrap.UNCHANGED}
    assert [(i.kind, i.name) for i in second] == [(i.kind, i.name) for i in first]

    admin = await registries[CLUSTER_ROLES.name].get(meta_pb2.GetRequest(name="cluster-admin"))
    assert admin.metadata.labels["kubernetes.io/bootstrapping"] == "rbac-defaults"
    assert admin.metadata.annotations["rbac.authorization.kubernetes.io/autoupdate"] == "true"
    system = await registries[NAMESPACES.name].get(meta_pb2.GetRequest(name="kube-system"))
    assert system.metadata.labels["pod-security.kubernetes.io/enforce"] == "privileged"
    for name in ("default", "kube-public", "kube-node-lease"):
        await registries[NAMESPACES.name].get(meta_pb2.GetRequest(name=name))
    # Leader election's leases: a Role in kube-system, bound to the controller identity.
    locking = meta_pb2.GetRequest(namespace="kube-system", name="system::leader-locking-kube-controller-manager")
    assert [r.resources[0] for r in (await registries[ROLES.name].get(locking)).rules] == ["leases"]
    assert (await registries[ROLE_BINDINGS.name].get(locking)).subjects[0].name == "system:kube-controller-manager"


async def test_reconcile_adds_what_is_missing_unless_autoupdate_is_false(registries: dict[str, Registry]) -> None:
    await bootstrap.reconcile_bootstrap(registries)
    roles, bindings = registries[CLUSTER_ROLES.name], registries[CLUSTER_ROLE_BINDINGS.name]

    # An operator trimmed a role and a binding: reconciling restores them, keeping additions.
    dns = await roles.get(meta_pb2.GetRequest(name="system:kube-dns"))
    del dns.rules[:]
    dns.rules.append(rule(["get"], ["configmaps"]))
    await roles.update(dns)
    proxier = await bindings.get(meta_pb2.GetRequest(name="system:node-proxier"))
    del proxier.subjects[:]
    proxier.subjects.add(kind="User", api_group=RBAC, name="another-proxy")
    await bindings.update(proxier)
    # ... and protected another from reconciliation.
    view = await roles.get(meta_pb2.GetRequest(name="view"))
    view.metadata.annotations["rbac.authorization.kubernetes.io/autoupdate"] = "false"
    del view.rules[:]
    view.rules.append(rule(["get"], ["pods"]))
    view = await roles.update(view)

    done = {(i.kind, i.name): i.action for i in await bootstrap.reconcile_bootstrap(registries)}
    assert done[("ClusterRole", "system:kube-dns")] == bootstrap.UPDATED
    assert done[("ClusterRoleBinding", "system:node-proxier")] == bootstrap.UPDATED
    assert done[("ClusterRole", "view")] == bootstrap.PROTECTED

    dns = await roles.get(meta_pb2.GetRequest(name="system:kube-dns"))
    assert list(dns.rules[0].resources) == ["configmaps"]
    granted = {(verb, resource) for r in dns.rules for verb in r.verbs for resource in r.resources}
    assert {("list", "services"), ("watch", "endpoints")} <= granted
    proxier = await bindings.get(meta_pb2.GetRequest(name="system:node-proxier"))
    assert [s.name for s in proxier.subjects] == ["another-proxy", "system:kube-proxy"]
    assert (await roles.get(meta_pb2.GetRequest(name="view"))) == view

    # A binding pointing at another role is recreated pointing at its own.
    scheduler = await bindings.get(meta_pb2.GetRequest(name="system:kube-scheduler"))
    await bindings.delete(meta_pb2.DeleteRequest(name="system:kube-scheduler"))
    scheduler.role_ref.name = "view"
    scheduler.metadata.resource_version = 0
    await bindings.create(scheduler)
    done = {(i.kind, i.name): i.action for i in await bootstrap.reconcile_bootstrap(registries)}
    assert done[("ClusterRoleBinding", "system:kube-scheduler")] == bootstrap.RECREATED
    again = await bindings.get(meta_pb2.GetRequest(name="system:kube-scheduler"))
    assert again.role_ref.name == "system:kube-scheduler"
