"""The kubelet's own gRPC API (kybernetes.v1.Kubelet), with reflection and health.

ListPods shows every pod this kubelet runs, from every source, with its live
status; SubmitPod and DeleteStaticPod manage the pods of source 4; Logs
streams a container's output (what `kubecfg logs` shows).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from kybernetes.v1 import authorization_pb2, authorization_pb2_grpc, kubelet_pb2, kubelet_pb2_grpc, pod_pb2
from services.common.identity import SYSTEM_MASTERS, user_from_auth_context
from services.common.log import get_logger
from services.common.transport import ServingCertificate

from .runtime import RuntimeCallError
from .sources import SubmittedPodError

if TYPE_CHECKING:
    from .kubelet import Kubelet

log = get_logger(module="kubelet.server")

SERVICE_NAME = kubelet_pb2.DESCRIPTOR.services_by_name["Kubelet"].full_name
_SUBMIT_CODES = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "exists": grpc.StatusCode.ALREADY_EXISTS,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "not_submitted": grpc.StatusCode.FAILED_PRECONDITION,
}


# How long the API server's answer about a caller is trusted (the kubelet's
# --authorization-webhook-cache-authorized-ttl and -unauthorized-ttl defaults).
AUTHORIZED_TTL = 300.0
UNAUTHORIZED_TTL = 30.0


class CallerAuthorizer:
    """Who may use the kubelet's API: Kubernetes' kubelet authorization in webhook mode.

    The TLS layer has already required a certificate from the cluster CA. `system:masters`
    may do anything; anyone else is asked of the API server as a SubjectAccessReview on
    this node's `nodes/proxy` (pods, submit, delete) or `nodes/log` (logs) subresource,
    the answer cached. Without an API server only `system:masters` gets in."""

    def __init__(self, node_name: str, kubelet: "Kubelet") -> None:
        self.node_name = node_name
        self.kubelet = kubelet
        self._decisions: dict[tuple[str, tuple[str, ...], str, str], tuple[bool, str, float]] = {}

    async def check(self, context: grpc.aio.ServicerContext, verb: str, subresource: str) -> None:
        user = user_from_auth_context(context.auth_context())
        if user is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate from the cluster CA is required")
        assert user is not None
        if user.in_group(SYSTEM_MASTERS):
            return
        key = (user.name, user.groups, verb, subresource)
        now = time.monotonic()
        cached = self._decisions.get(key)
        if cached is None or cached[2] <= now:
            allowed, reason = await self._review(user.name, user.groups, verb, subresource)
            if len(self._decisions) > 10_000:
                self._decisions.clear()
            self._decisions[key] = (allowed, reason, now + (AUTHORIZED_TTL if allowed else UNAUTHORIZED_TTL))
        else:
            allowed, reason = cached[0], cached[1]
        if not allowed:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f'forbidden: user "{user.name}" cannot {verb} resource "nodes/{subresource}" named '
                f'"{self.node_name}"' + (f": {reason}" if reason else ""),
            )

    async def _review(self, user: str, groups: tuple[str, ...], verb: str, subresource: str) -> tuple[bool, str]:
        client = self.kubelet.client
        if client is None:
            return False, "this kubelet has no API server to ask; only system:masters may call it"
        review = authorization_pb2.SubjectAccessReview(
            spec=authorization_pb2.SubjectAccessReviewSpec(
                user=user,
                groups=list(groups),
                resource_attributes=authorization_pb2.ResourceAttributes(
                    verb=verb, resource="nodes", subresource=subresource, name=self.node_name
                ),
            )
        )
        try:
            answer = await authorization_pb2_grpc.AuthorizationStub(client.channel).CreateSubjectAccessReview(
                review, timeout=10
            )
        except grpc.aio.AioRpcError as error:
            log.warning("caller_review_failed", user=user, code=error.code().name, detail=error.details())
            return False, f"the API server could not be asked ({error.code().name})"
        return answer.status.allowed, answer.status.reason


class KubeletService(kubelet_pb2_grpc.KubeletServicer):
    def __init__(self, kubelet: "Kubelet", authorizer: CallerAuthorizer | None) -> None:
        self.kubelet = kubelet
        self.authorizer = authorizer

    async def _allow(self, context: grpc.aio.ServicerContext, verb: str, subresource: str = "proxy") -> None:
        if self.authorizer is not None:
            await self.authorizer.check(context, verb, subresource)

    async def ListPods(
        self, request: kubelet_pb2.KubeletListPodsRequest, context: grpc.aio.ServicerContext
    ) -> pod_pb2.PodList:
        await self._allow(context, "get")
        return pod_pb2.PodList(api_version="v1", kind="PodList", items=self.kubelet.list_pods())

    async def SubmitPod(self, request: pod_pb2.Pod, context: grpc.aio.ServicerContext) -> pod_pb2.Pod:
        await self._allow(context, "create")
        source = self.kubelet.server_source
        try:
            return await source.submit(request)
        except SubmittedPodError as error:
            await context.abort(_SUBMIT_CODES[error.code], str(error))
            raise  # unreachable: abort raises

    async def DeleteStaticPod(
        self, request: kubelet_pb2.StaticPodRequest, context: grpc.aio.ServicerContext
    ) -> pod_pb2.Pod:
        await self._allow(context, "delete")
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name: Required value")
        try:
            return await self.kubelet.server_source.delete(request.namespace, request.name)
        except SubmittedPodError as error:
            await context.abort(_SUBMIT_CODES[error.code], str(error))
            raise

    async def Logs(
        self, request: kubelet_pb2.PodLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kubelet_pb2.LogChunk]:
        await self._allow(context, "get", "log")
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name: Required value (the pod)")
        if request.tail_lines < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tailLines: must be greater than or equal to 0")
        namespace = request.namespace or "default"
        pod = self.kubelet.find_pod(namespace, request.name)
        if pod is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f'pod "{namespace}/{request.name}" does not run on this node'
            )
        names = [container.name for container in pod.spec.containers]
        container = request.container
        if not container:
            if len(names) != 1:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f'container: a container name must be given for pod "{pod.metadata.name}", choose one of: {names}',
                )
            container = names[0]
        elif container not in names:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'container: "{container}" is not a container of pod "{pod.metadata.name}"; choose one of: {names}',
            )
        info = self.kubelet.latest_container(pod.metadata.uid, container)
        if info is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'container "{container}" in pod "{pod.metadata.name}" has not been created yet',
            )
        try:
            async for chunk in self.kubelet.runtime.logs(
                info.id, follow=request.follow, tail_lines=request.tail_lines, timestamps=request.timestamps
            ):
                yield kubelet_pb2.LogChunk(data=chunk)
        except RuntimeCallError as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"reading logs: {error}")


class KubeletServer:
    """The kubelet's API: TLS requiring a client certificate from the cluster CA (with
    a serving certificate), callers authorized per call; plaintext only --insecure-dev."""

    def __init__(self, kubelet: "Kubelet", listen: str, serving: ServingCertificate | None = None) -> None:
        self.listen = listen
        self.serving = serving
        self.server = grpc.aio.server()
        self.health = HealthServicer()
        authorizer = CallerAuthorizer(kubelet.config.node_name, kubelet) if serving is not None else None
        kubelet_pb2_grpc.add_KubeletServicer_to_server(KubeletService(kubelet, authorizer), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self.port = 0

    async def start(self) -> int:
        if self.serving is None:
            self.port = self.server.add_insecure_port(self.listen)
        else:
            credentials = self.serving.server_credentials(require_client_certificate=True)
            self.port = self.server.add_secure_port(self.listen, credentials)
        if not self.port:
            raise RuntimeError(f"cannot listen on {self.listen}")
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info("kubelet_server_listening", address=self.listen, port=self.port)
        return self.port

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
