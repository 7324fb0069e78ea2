"""`kubecfg auth can-i` and `kubecfg auth whoami`, as kubectl's.

    kubecfg auth can-i create pods -n team           kubecfg auth can-i get pods/log
    kubecfg auth can-i list nodes --as jane           kubecfg auth can-i '*' '*' --all-namespaces
    kubecfg auth whoami -o yaml

can-i prints `yes` or `no` and exits 0 or 1. It asks the API server's Authorization service:
a SelfSubjectAccessReview about the caller, or with --as a SubjectAccessReview about that
user (which needs "create" on subjectaccessreviews). RESOURCE is a kind's name, plural,
singular or short name ("po"), optionally with a subresource ("pods/log") or an API group
("roles.rbac.authorization.k8s.io"); the object's name comes as its own argument.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Sequence, TypeVar

import grpc
import yaml

from kybernetes.v1 import authorization_pb2, authorization_pb2_grpc

from services.common.resources import ALL_KINDS, API_VERSION

from .commands import Context, rpc
from .errors import CommandError
from .tabwriter import format_table

# Resources the server answers for that are not kinds: (API group, namespaced).
REVIEW_RESOURCES: dict[str, tuple[str, bool]] = {
    "selfsubjectaccessreviews": ("authorization.k8s.io", False),
    "subjectaccessreviews": ("authorization.k8s.io", False),
    "selfsubjectreviews": ("authentication.k8s.io", False),
    "certificatesigningrequests": ("certificates.k8s.io", False),
}
REVIEW_SHORT_NAMES = {"csr": "certificatesigningrequests"}
ALL_RESOURCES = "*"
WHOAMI_OUTPUTS = ("json", "yaml")
T = TypeVar("T")


def _group_of(api_version: str) -> str:
    return "" if api_version == API_VERSION else api_version.rpartition("/")[0]


@dataclass(frozen=True)
class ResourceSpec:
    """What a can-i RESOURCE argument names."""

    resource: str
    subresource: str = ""
    group: str = ""
    namespaced: bool = True
    known: bool = True  # the server serves it (else kubectl's warning is printed)


def parse_resource(arg: str, subresource: str = "") -> ResourceSpec:
    """`pods`, `po`, `pods/log`, `roles.rbac.authorization.k8s.io`, `*`; subresource from --subresource."""
    text, slash, sub = arg.partition("/")
    if slash:
        if not sub or "/" in sub:
            raise CommandError(f'error: "{arg}": give RESOURCE or RESOURCE/SUBRESOURCE (the name is its own argument)')
        if subresource and subresource != sub:
            raise CommandError(f'error: "{arg}" names subresource "{sub}" and --subresource "{subresource}"')
        subresource = sub
    if text == ALL_RESOURCES:
        return ResourceSpec(ALL_RESOURCES, subresource)
    text = text.lower()
    name, dot, group = text.partition(".")
    names = (text, name) if dot else (text,)  # "roles.rbac.authorization.k8s.io", else "roles"
    for candidate in names:
        for kind in ALL_KINDS:
            if candidate in kind.names() or candidate == kind.name.lower():
                kind_group = _group_of(kind.api_version)
                if candidate == text or group == kind_group:
                    return ResourceSpec(kind.plural, subresource, kind_group, kind.namespaced)
        plural = REVIEW_SHORT_NAMES.get(candidate, candidate)
        if plural in REVIEW_RESOURCES:
            review_group, namespaced = REVIEW_RESOURCES[plural]
            if candidate == text or group == review_group:
                return ResourceSpec(plural, subresource, review_group, namespaced)
    if dot:
        return ResourceSpec(name, subresource, group, known=False)
    return ResourceSpec(text, subresource, known=False)


def add_parser(verbs: Any, common: Sequence[argparse.ArgumentParser]) -> None:
    """`kubecfg auth ...` on the top-level parser's subcommands."""
    auth = verbs.add_parser("auth", parents=list(common), help="inspect authorization: can-i, whoami")
    actions = auth.add_subparsers(dest="auth_command", metavar="COMMAND", parser_class=type(auth))
    actions.required = True

    can_i = actions.add_parser(
        "can-i",
        parents=common,
        help="check whether an action is allowed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Not "verb": that is the top-level command's dest, which main() dispatches on.
    can_i.add_argument(
        "access_verb", metavar="VERB", help="get, list, watch, create, update, delete, bind, escalate, ..."
    )
    can_i.add_argument("resource", metavar="RESOURCE", help="pods, po, pods/log, roles.rbac.authorization.k8s.io, *")
    can_i.add_argument("name", metavar="NAME", nargs="?", default="", help="one object by name")
    can_i.add_argument("-A", "--all-namespaces", action="store_true", help="in every namespace (cluster-wide)")
    can_i.add_argument("--subresource", default="", help="a subresource, as pods/SUBRESOURCE")
    can_i.add_argument("--as", dest="as_user", default="", metavar="USER", help="ask for this user instead")
    can_i.add_argument(
        "--as-group", dest="as_groups", action="append", default=[], metavar="GROUP", help="with --as: a group"
    )
    can_i.add_argument("-q", "--quiet", action="store_true", help="print nothing: the exit code answers")

    whoami = actions.add_parser("whoami", parents=common, help="show who the API server takes you for")
    whoami.add_argument("-o", "--output", default="", choices=WHOAMI_OUTPUTS)


@dataclass(frozen=True)
class CanIRequest:
    verb: str
    resource: ResourceSpec
    name: str = ""
    namespace: str = ""
    as_user: str = ""
    as_groups: tuple[str, ...] = ()


def can_i_request(ctx: Context, args: argparse.Namespace) -> CanIRequest:
    if args.as_groups and not args.as_user:
        raise CommandError("error: requesting groups without impersonating a user: give --as USER with --as-group")
    if args.resource.startswith("/"):
        raise CommandError("error: non-resource URLs are not served by this API server: give a RESOURCE")
    spec = parse_resource(args.resource, args.subresource)
    if not spec.known:
        group = f" in group '{spec.group}'" if spec.group else ""
        print(f"Warning: the server doesn't have a resource type '{spec.resource}'{group}", file=ctx.err)
    if args.all_namespaces or not spec.namespaced:
        # A cluster-scoped resource is authorized cluster-wide whatever -n says.
        if not spec.namespaced and ctx.namespace_given and not args.all_namespaces:
            print(f"Warning: resource '{spec.resource}' is not namespace scoped", file=ctx.err)
        namespace = ""
    else:
        namespace = ctx.namespace
    return CanIRequest(args.access_verb, spec, args.name, namespace, args.as_user, tuple(args.as_groups))


def access_review(request: CanIRequest) -> authorization_pb2.SubjectAccessReview:
    spec = request.resource
    return authorization_pb2.SubjectAccessReview(
        spec=authorization_pb2.SubjectAccessReviewSpec(
            resource_attributes=authorization_pb2.ResourceAttributes(
                namespace=request.namespace,
                verb=request.verb,
                group=spec.group,
                resource=spec.resource,
                subresource=spec.subresource,
                name=request.name,
            ),
            user=request.as_user,
            groups=list(request.as_groups),
        )
    )


def answer_line(status: authorization_pb2.SubjectAccessReviewStatus) -> str:
    """`yes`, `no`, or `no - REASON` for an explicit denial. Unlike kubectl, the reason
    of a plain "no rule allows it" is left out: this server always gives one."""
    if status.allowed:
        return "yes"
    if status.denied and status.reason:
        return f"no - {status.reason}"
    return "no"


async def _ask(ctx: Context, call: Awaitable[T]) -> T:
    try:
        return await rpc(ctx, call)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise CommandError(
                f"error: the API server at {ctx.client.server} does not serve kybernetes.v1.Authorization "
                "(an older server?)"
            ) from None
        raise


async def can_i(ctx: Context, args: argparse.Namespace) -> None:
    request = can_i_request(ctx, args)
    stub = authorization_pb2_grpc.AuthorizationStub(ctx.client.channel)
    review = access_review(request)
    timeout = ctx.client.timeout
    if request.as_user:
        answer = await _ask(ctx, stub.CreateSubjectAccessReview(review, timeout=timeout))
    else:
        answer = await _ask(ctx, stub.CreateSelfSubjectAccessReview(review, timeout=timeout))
    if not args.quiet:
        ctx.say(answer_line(answer.status))
    if not answer.status.allowed:
        ctx.failed = True  # exit code 1, as kubectl


def _go_list(values: Sequence[str]) -> str:
    """A list as Go's %v prints a []string: [a b]."""
    return "[" + " ".join(values) + "]"


def whoami_table(user: authorization_pb2.UserInfo) -> str:
    rows = [["ATTRIBUTE", "VALUE"], ["Username", user.username]]
    if user.uid:
        rows.append(["UID", user.uid])
    if user.groups:
        rows.append(["Groups", _go_list(user.groups)])
    return format_table(rows)


def self_subject_review(user: authorization_pb2.UserInfo) -> dict[str, Any]:
    """kubectl's `auth whoami -o json` document (authentication.k8s.io SelfSubjectReview)."""
    info: dict[str, Any] = {"username": user.username}
    if user.uid:
        info["uid"] = user.uid
    if user.groups:
        info["groups"] = list(user.groups)
    return {
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "status": {"userInfo": info},
    }


async def whoami(ctx: Context, args: argparse.Namespace) -> None:
    stub = authorization_pb2_grpc.AuthorizationStub(ctx.client.channel)
    user = await _ask(ctx, stub.WhoAmI(authorization_pb2.SelfSubjectReviewRequest(), timeout=ctx.client.timeout))
    if args.output == "json":
        ctx.out.write(json.dumps(self_subject_review(user), indent=4) + "\n")
    elif args.output == "yaml":
        ctx.out.write(yaml.safe_dump(self_subject_review(user), sort_keys=False, default_flow_style=False))
    else:
        ctx.say(whoami_table(user))


async def run(ctx: Context, args: argparse.Namespace) -> None:
    if args.auth_command == "can-i":
        await can_i(ctx, args)
    elif args.auth_command == "whoami":
        await whoami(ctx, args)
