"""kybernetes.v1.Authorization: access reviews and "who am I", as Kubernetes serves them.

- CreateSelfSubjectAccessReview (authorization.k8s.io SelfSubjectAccessReview): may the
  caller do this? What `kubecfg auth can-i` asks.
- CreateSubjectAccessReview (SubjectAccessReview): may this other user do it? Only for
  callers allowed to create subjectaccessreviews, since the answer tells what anyone holds.
- WhoAmI (authentication.k8s.io SelfSubjectReview): the caller as it was authenticated.

Each asks the server's authorizer, the one every request passes, so an answer is what a
real request would get. As in Kubernetes, creating a review is itself authorized: the
bootstrap policy's `system:basic-user` lets every authenticated caller review itself.
"""

from __future__ import annotations

import grpc

from kybernetes.v1 import authorization_pb2, authorization_pb2_grpc
from services.common.identity import ANONYMOUS_USER, SYSTEM_UNAUTHENTICATED, UserInfo, authenticated
from services.common.log import get_logger

from .attributes import Authorizer, Decision, RequestAttributes, Verdict
from .context import current_user

log = get_logger()

AUTHORIZATION_GROUP = "authorization.k8s.io"
AUTHENTICATION_GROUP = "authentication.k8s.io"
AUTHORIZATION_API_VERSION = f"{AUTHORIZATION_GROUP}/v1"


class ReviewError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def attributes_of(spec: authorization_pb2.SubjectAccessReviewSpec, user: UserInfo) -> RequestAttributes:
    """The request a review describes; INVALID_ARGUMENT naming the field it lacks."""
    if not spec.HasField("resource_attributes"):
        raise ReviewError(grpc.StatusCode.INVALID_ARGUMENT, "spec.resourceAttributes: Required value")
    resource = spec.resource_attributes
    for field, value in (("verb", resource.verb), ("resource", resource.resource)):
        if not value:
            raise ReviewError(grpc.StatusCode.INVALID_ARGUMENT, f"spec.resourceAttributes.{field}: Required value")
    return RequestAttributes(
        user=user,
        verb=resource.verb,
        resource=resource.resource,
        subresource=resource.subresource,
        namespace=resource.namespace,
        name=resource.name,
        api_group=resource.group,
    )


def reviewed_user(spec: authorization_pb2.SubjectAccessReviewSpec) -> UserInfo:
    """The user a SubjectAccessReview asks about. A named user gets the group every
    authenticated user has (system:unauthenticated for the anonymous user), as when
    kubectl impersonates it with --as."""
    if not spec.user and not spec.groups:
        raise ReviewError(
            grpc.StatusCode.INVALID_ARGUMENT, "spec.user: Invalid value: at least one of user or groups must be given"
        )
    groups = list(spec.groups)
    if spec.user == ANONYMOUS_USER:
        return UserInfo(spec.user, tuple(dict.fromkeys([*groups, SYSTEM_UNAUTHENTICATED])))
    if spec.user:
        return authenticated(spec.user, groups)
    return UserInfo("", tuple(dict.fromkeys(groups)))


def _review(
    kind: str, request: authorization_pb2.SubjectAccessReview, verdict: Verdict
) -> authorization_pb2.SubjectAccessReview:
    answer = authorization_pb2.SubjectAccessReview()
    answer.CopyFrom(request)
    answer.api_version, answer.kind = AUTHORIZATION_API_VERSION, kind
    answer.status.CopyFrom(
        authorization_pb2.SubjectAccessReviewStatus(
            allowed=verdict.allowed, denied=verdict.decision is Decision.DENY, reason=verdict.reason
        )
    )
    return answer


class AuthorizationServicer(authorization_pb2_grpc.AuthorizationServicer):
    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    def _require(self, caller: UserInfo, verb: str, resource: str, group: str) -> None:
        """PERMISSION_DENIED unless the caller may `verb` the review resource itself."""
        attributes = RequestAttributes(caller, verb, resource, api_group=group)
        verdict = self.authorizer.authorize(attributes)
        if not verdict.allowed:
            reason = f": {verdict.reason}" if verdict.reason else ""
            raise ReviewError(
                grpc.StatusCode.PERMISSION_DENIED,
                f'{attributes.describe()} in API group "{group}"{reason}',
            )

    async def CreateSelfSubjectAccessReview(
        self, request: authorization_pb2.SubjectAccessReview, context: grpc.aio.ServicerContext
    ) -> authorization_pb2.SubjectAccessReview:
        caller = current_user()
        try:
            if request.spec.user or request.spec.groups:
                field = "spec.user" if request.spec.user else "spec.groups"
                raise ReviewError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{field}: Forbidden: a self review answers for the caller; "
                    "ask CreateSubjectAccessReview about another user",
                )
            self._require(caller, "create", "selfsubjectaccessreviews", AUTHORIZATION_GROUP)
            verdict = self.authorizer.authorize(attributes_of(request.spec, caller))
        except ReviewError as error:
            await context.abort(error.code, str(error))
        return _review("SelfSubjectAccessReview", request, verdict)

    async def CreateSubjectAccessReview(
        self, request: authorization_pb2.SubjectAccessReview, context: grpc.aio.ServicerContext
    ) -> authorization_pb2.SubjectAccessReview:
        caller = current_user()
        try:
            self._require(caller, "create", "subjectaccessreviews", AUTHORIZATION_GROUP)
            user = reviewed_user(request.spec)
            verdict = self.authorizer.authorize(attributes_of(request.spec, user))
        except ReviewError as error:
            await context.abort(error.code, str(error))
        log.debug("subject_access_review", caller=caller.name, user=user.name, allowed=verdict.allowed)
        return _review("SubjectAccessReview", request, verdict)

    async def WhoAmI(
        self, request: authorization_pb2.SelfSubjectReviewRequest, context: grpc.aio.ServicerContext
    ) -> authorization_pb2.UserInfo:
        caller = current_user()
        try:
            self._require(caller, "create", "selfsubjectreviews", AUTHENTICATION_GROUP)
        except ReviewError as error:
            await context.abort(error.code, str(error))
        return authorization_pb2.UserInfo(username=caller.name, uid=caller.uid, groups=list(caller.groups))
