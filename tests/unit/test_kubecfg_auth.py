"""`kubecfg auth can-i` / `auth whoami`, and the tables and describe output of namespaces and
RBAC objects: argument handling and printing, without a server."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
from typing import Any

import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import authorization_pb2, meta_pb2, namespace_pb2, rbac_pb2
from services.common.resources import CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, NAMESPACES, ROLE_BINDINGS, ROLES
from services.kubecfg import auth, commands
from services.kubecfg.auth import ResourceSpec, parse_resource
from services.kubecfg.describe import describe_namespace, describe_role, describe_role_binding
from services.kubecfg.errors import CommandError
from services.kubecfg.main import build_parser
from services.kubecfg.printers import TableOptions, format_objects

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
RBAC = "rbac.authorization.k8s.io"


# -- RESOURCE arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("pods", ResourceSpec("pods")),
        ("po", ResourceSpec("pods")),
        ("Pods", ResourceSpec("pods")),
        ("pod", ResourceSpec("pods")),
        ("pods/log", ResourceSpec("pods", "log")),
        ("po/status", ResourceSpec("pods", "status")),
        ("rc/scale", ResourceSpec("replicationcontrollers", "scale")),
        ("nodes", ResourceSpec("nodes", namespaced=False)),
        ("no/proxy", ResourceSpec("nodes", "proxy", namespaced=False)),
        ("ns", ResourceSpec("namespaces", namespaced=False)),
        ("roles", ResourceSpec("roles", group=RBAC)),
        ("rolebinding", ResourceSpec("rolebindings", group=RBAC)),
        ("clusterroles", ResourceSpec("clusterroles", group=RBAC, namespaced=False)),
        ("roles.rbac.authorization.k8s.io", ResourceSpec("roles", group=RBAC)),
        (
            "clusterrolebindings.rbac.authorization.k8s.io",
            ResourceSpec("clusterrolebindings", group=RBAC, namespaced=False),
        ),
        ("subjectaccessreviews", ResourceSpec("subjectaccessreviews", group="authorization.k8s.io", namespaced=False)),
        (
            "selfsubjectaccessreviews.authorization.k8s.io",
            ResourceSpec("selfsubjectaccessreviews", group="authorization.k8s.io", namespaced=False),
        ),
        ("csr", ResourceSpec("certificatesigningrequests", group="certificates.k8s.io", namespaced=False)),
        ("*", ResourceSpec("*")),
        ("*/status", ResourceSpec("*", "status")),
        # Unknown: sent as given, with kubectl's warning.
        ("deployments", ResourceSpec("deployments", known=False)),
        ("deployments.apps", ResourceSpec("deployments", group="apps", known=False)),
        ("pods.apps", ResourceSpec("pods", group="apps", known=False)),
    ],
)
def test_resource_forms(arg: str, expected: ResourceSpec) -> None:
    assert parse_resource(arg) == expected


def test_subresource_flag_and_bad_forms() -> None:
    assert parse_resource("pods", "log") == ResourceSpec("pods", "log")
    assert parse_resource("pods/log", "log") == ResourceSpec("pods", "log")
    for arg, subresource in (("pods/log", "status"), ("pods/", ""), ("pods/a/b", "")):
        with pytest.raises(CommandError):
            parse_resource(arg, subresource)


# -- can-i --------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


class FakeClient:
    channel = object()
    timeout = 5.0
    server = "127.0.0.1:6443"


def context(namespace: str = "", *, out: io.StringIO | None = None) -> commands.Context:
    return commands.Context(
        client=FakeClient(),  # type: ignore[arg-type]
        namespace=namespace or "default",
        namespace_given=bool(namespace),
        out=out or io.StringIO(),
        err=io.StringIO(),
    )


def test_can_i_arguments() -> None:
    args = parse(
        "auth",
        "can-i",
        "create",
        "pods",
        "web",
        "-n",
        "team",
        "--as",
        "jane",
        "--as-group",
        "devs",
        "--as-group",
        "ops",
    )
    assert (args.verb, args.auth_command, args.access_verb) == ("auth", "can-i", "create")
    assert (args.resource, args.name, args.namespace, args.as_user, args.as_groups) == (
        "pods",
        "web",
        "team",
        "jane",
        ["devs", "ops"],
    )
    args = parse("-n", "team", "auth", "can-i", "list", "nodes", "-A", "-q")
    assert args.all_namespaces and args.quiet and args.namespace == "team" and args.name == ""


def test_can_i_namespaces() -> None:
    ctx = context("team")
    request = auth.can_i_request(ctx, parse("auth", "can-i", "get", "pods", "web"))
    assert (request.namespace, request.name) == ("team", "web")
    assert auth.can_i_request(context(), parse("auth", "can-i", "get", "pods")).namespace == "default"
    assert auth.can_i_request(ctx, parse("auth", "can-i", "get", "pods", "-A")).namespace == ""
    # A cluster-scoped resource is asked about cluster-wide, with kubectl's warning when -n was given.
    request = auth.can_i_request(ctx, parse("auth", "can-i", "get", "nodes"))
    assert request.namespace == ""
    assert "Warning: resource 'nodes' is not namespace scoped" in ctx.err.getvalue()
    quiet = context()
    auth.can_i_request(quiet, parse("auth", "can-i", "get", "nodes"))
    assert quiet.err.getvalue() == ""
    unknown = context()
    auth.can_i_request(unknown, parse("auth", "can-i", "get", "deployments.apps"))
    assert unknown.err.getvalue() == "Warning: the server doesn't have a resource type 'deployments' in group 'apps'\n"


def test_can_i_refuses_groups_without_a_user_and_urls() -> None:
    with pytest.raises(CommandError, match="--as USER"):
        auth.can_i_request(context(), parse("auth", "can-i", "get", "pods", "--as-group", "devs"))
    with pytest.raises(CommandError, match="non-resource URLs"):
        auth.can_i_request(context(), parse("auth", "can-i", "get", "/logs"))


def test_the_review_sent() -> None:
    request = auth.can_i_request(
        context("team"), parse("auth", "can-i", "get", "pods/log", "web", "--as", "jane", "--as-group", "devs")
    )
    review = auth.access_review(request)
    attributes = review.spec.resource_attributes
    assert (attributes.namespace, attributes.verb, attributes.group, attributes.resource) == ("team", "get", "", "pods")
    assert (attributes.subresource, attributes.name) == ("log", "web")
    assert (review.spec.user, list(review.spec.groups)) == ("jane", ["devs"])


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (authorization_pb2.SubjectAccessReviewStatus(allowed=True, reason="RBAC: allowed by x"), "yes"),
        (authorization_pb2.SubjectAccessReviewStatus(reason="RBAC: no role bound"), "no"),
        (
            authorization_pb2.SubjectAccessReviewStatus(denied=True, reason="node: not its pod"),
            "no - node: not its pod",
        ),
    ],
)
def test_answer_lines(status: Any, line: str) -> None:
    assert auth.answer_line(status) == line


class FakeAuthorizationStub:
    calls: list[tuple[str, Any]] = []
    allowed = True

    def __init__(self, channel: Any) -> None:
        pass

    async def CreateSelfSubjectAccessReview(self, review: Any, timeout: float | None = None) -> Any:
        return self._answer("self", review)

    async def CreateSubjectAccessReview(self, review: Any, timeout: float | None = None) -> Any:
        return self._answer("subject", review)

    async def WhoAmI(self, request: Any, timeout: float | None = None) -> Any:
        return authorization_pb2.UserInfo(
            username="kubernetes-admin", groups=["system:masters", "system:authenticated"]
        )

    def _answer(self, method: str, review: Any) -> Any:
        FakeAuthorizationStub.calls.append((method, review))
        answer = authorization_pb2.SubjectAccessReview()
        answer.CopyFrom(review)
        answer.status.allowed = FakeAuthorizationStub.allowed
        return answer


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> type[FakeAuthorizationStub]:
    FakeAuthorizationStub.calls = []
    FakeAuthorizationStub.allowed = True
    monkeypatch.setattr(auth.authorization_pb2_grpc, "AuthorizationStub", FakeAuthorizationStub)
    return FakeAuthorizationStub


async def test_can_i_asks_about_the_caller_or_the_user_given(stub: type[FakeAuthorizationStub]) -> None:
    ctx = context("team")
    await auth.run(ctx, parse("auth", "can-i", "create", "pods"))
    assert ctx.out.getvalue() == "yes\n" and not ctx.failed
    stub.allowed = False
    ctx = context("team")
    await auth.run(ctx, parse("auth", "can-i", "delete", "nodes", "--as", "jane"))
    assert ctx.out.getvalue() == "no\n" and ctx.failed  # exit code 1
    assert [method for method, _ in stub.calls] == ["self", "subject"]
    assert stub.calls[1][1].spec.user == "jane"
    ctx = context()
    await auth.run(ctx, parse("auth", "can-i", "delete", "nodes", "-q"))
    assert ctx.out.getvalue() == "" and ctx.failed


# -- whoami --------------------------------------------------------------------------------


def test_whoami_table_as_kubectl_prints_it() -> None:
    user = authorization_pb2.UserInfo(username="kubernetes-admin", groups=["system:masters", "system:authenticated"])
    assert auth.whoami_table(user).splitlines() == [
        "ATTRIBUTE   VALUE",
        "Username    kubernetes-admin",
        "Groups      [system:masters system:authenticated]",
    ]
    with_uid = authorization_pb2.UserInfo(username="system:node:node-1", uid="u-1")
    assert auth.whoami_table(with_uid).splitlines() == [
        "ATTRIBUTE   VALUE",
        "Username    system:node:node-1",
        "UID         u-1",
    ]


async def test_whoami_outputs(stub: type[FakeAuthorizationStub]) -> None:
    ctx = context()
    await auth.run(ctx, parse("auth", "whoami", "-o", "json"))
    document = json.loads(ctx.out.getvalue())
    assert document == {
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "status": {"userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]}},
    }
    ctx = context()
    await auth.run(ctx, parse("auth", "whoami", "-o", "yaml"))
    assert yaml.safe_load(ctx.out.getvalue()) == document
    ctx = context()
    await auth.run(ctx, parse("auth", "whoami"))
    assert ctx.out.getvalue().splitlines()[0] == "ATTRIBUTE   VALUE"


def test_auth_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("auth")
    assert exited.value.code == 1
    assert "error:" in capsys.readouterr().err


# -- tables and describe ------------------------------------------------------------------


def ago(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(NOW - dt.timedelta(seconds=seconds))
    return ts


def meta(name: str, namespace: str = "", age_seconds: float = 300, **labels: str) -> meta_pb2.ObjectMeta:
    return meta_pb2.ObjectMeta(name=name, namespace=namespace, creation_timestamp=ago(age_seconds), labels=labels)


def test_namespace_table() -> None:
    namespaces = [
        namespace_pb2.Namespace(metadata=meta("default", age_seconds=86400 * 3), status={"phase": "Active"}),
        namespace_pb2.Namespace(metadata=meta("kube-system", age_seconds=60), status={"phase": "Active"}),
    ]
    assert format_objects(NAMESPACES, namespaces, NOW, TableOptions()) == [
        "NAME          STATUS   AGE",
        "default       Active   3d",
        "kube-system   Active   60s",
    ]


def test_role_tables_show_created_at() -> None:
    roles = [rbac_pb2.ClusterRole(metadata=meta("view", age_seconds=3600))]
    assert format_objects(CLUSTER_ROLES, roles, NOW, TableOptions()) == [
        "NAME   CREATED AT",
        "view   2024-05-01T11:00:00Z",
    ]
    namespaced = [rbac_pb2.Role(metadata=meta("reader", "team", age_seconds=0))]
    assert format_objects(ROLES, namespaced, NOW, TableOptions(all_namespaces=True)) == [
        "NAMESPACE   NAME     CREATED AT",
        "team        reader   2024-05-01T12:00:00Z",
    ]


def sample_binding() -> rbac_pb2.RoleBinding:
    return rbac_pb2.RoleBinding(
        metadata=meta("read-pods", "team", age_seconds=120),
        role_ref=rbac_pb2.RoleRef(api_group=RBAC, kind="ClusterRole", name="view"),
        subjects=[
            rbac_pb2.Subject(kind="User", name="jane"),
            rbac_pb2.Subject(kind="User", name="joe"),
            rbac_pb2.Subject(kind="Group", name="devs"),
            rbac_pb2.Subject(kind="ServiceAccount", name="builder", namespace="ci"),
        ],
    )


def test_binding_tables() -> None:
    assert format_objects(ROLE_BINDINGS, [sample_binding()], NOW, TableOptions()) == [
        "NAME        ROLE               AGE",
        "read-pods   ClusterRole/view   2m",
    ]
    assert format_objects(ROLE_BINDINGS, [sample_binding()], NOW, TableOptions(wide=True)) == [
        "NAME        ROLE               AGE   USERS       GROUPS   SERVICEACCOUNTS",
        "read-pods   ClusterRole/view   2m    jane, joe   devs     ci/builder",
    ]
    cluster = rbac_pb2.ClusterRoleBinding(
        metadata=meta("cluster-admin", age_seconds=7200),
        role_ref=rbac_pb2.RoleRef(api_group=RBAC, kind="ClusterRole", name="cluster-admin"),
        subjects=[rbac_pb2.Subject(kind="Group", name="system:masters")],
    )
    assert format_objects(CLUSTER_ROLE_BINDINGS, [cluster], NOW, TableOptions()) == [
        "NAME            ROLE                        AGE",
        "cluster-admin   ClusterRole/cluster-admin   120m",
    ]


def test_describe_namespace() -> None:
    ns = namespace_pb2.Namespace(
        metadata=meta("kube-system", **{"pod-security.kubernetes.io/enforce": "privileged"}),
        status={"phase": "Active"},
    )
    assert describe_namespace(ns).splitlines() == [
        "Name:         kube-system",
        "Labels:       pod-security.kubernetes.io/enforce=privileged",
        "Annotations:  <none>",
        "Status:       Active",
        "",
        "No resource quota.",
        "",
        "No LimitRange resource.",
    ]


def test_describe_role_lists_rules_as_kubectl() -> None:
    role = rbac_pb2.ClusterRole(
        metadata=meta("mixed"),
        rules=[
            rbac_pb2.PolicyRule(verbs=["get", "list", "watch"], api_groups=[""], resources=["pods", "pods/log"]),
            rbac_pb2.PolicyRule(verbs=["create"], api_groups=[""], resources=["pods"]),
            rbac_pb2.PolicyRule(verbs=["*"], api_groups=[RBAC], resources=["roles"]),
            rbac_pb2.PolicyRule(verbs=["get"], api_groups=[""], resources=["services"], resource_names=["web"]),
            rbac_pb2.PolicyRule(verbs=["get"], non_resource_urls=["/healthz"]),
        ],
    )
    # Broken down per resource, the verbs on one resource merged, sorted as Kubernetes' String().
    assert describe_role(role).splitlines() == [
        "Name:         mixed",
        "Labels:       <none>",
        "Annotations:  <none>",
        "PolicyRule:",
        "  Resources                        Non-Resource URLs  Resource Names  Verbs",
        "  ---------                        -----------------  --------------  -----",
        "  pods                             []                 []              [get list watch create]",
        "  pods/log                         []                 []              [get list watch]",
        "  services                         []                 [web]           [get]",
        "  roles.rbac.authorization.k8s.io  []                 []              [*]",
        "                                   [/healthz]         []              [get]",
    ]


def test_describe_binding() -> None:
    assert describe_role_binding(sample_binding()).splitlines() == [
        "Name:         read-pods",
        "Labels:       <none>",
        "Annotations:  <none>",
        "Role:",
        "  Kind:  ClusterRole",
        "  Name:  view",
        "Subjects:",
        "  Kind            Name     Namespace",
        "  ----            ----     ---------",
        "  User            jane",
        "  User            joe",
        "  Group           devs",
        "  ServiceAccount  builder  ci",
    ]


def test_main_exits_0_for_yes_and_1_for_no(
    stub: type[FakeAuthorizationStub], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.common.kubeconfig import ClusterAccess
    from services.kubecfg import main as kubecfg_main

    monkeypatch.setattr(kubecfg_main, "cluster_access", lambda *args: ClusterAccess("127.0.0.1:1", None))
    assert kubecfg_main.main(["auth", "can-i", "create", "pods", "-n", "team"]) == 0
    assert capsys.readouterr().out == "yes\n"
    stub.allowed = False
    assert kubecfg_main.main(["auth", "can-i", "create", "pods", "--as", "jane"]) == 1
    assert capsys.readouterr().out == "no\n"
    assert stub.calls[0][1].spec.resource_attributes.namespace == "team"


async def test_a_server_without_the_authorization_service(monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc

    class OldServer(FakeAuthorizationStub):
        async def WhoAmI(self, request: Any, timeout: float | None = None) -> Any:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "Method not found!"
            )

    monkeypatch.setattr(auth.authorization_pb2_grpc, "AuthorizationStub", OldServer)
    with pytest.raises(CommandError, match="does not serve kybernetes.v1.Authorization"):
        await auth.run(context(), parse("auth", "whoami"))
