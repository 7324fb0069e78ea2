"""The kubelet's own gRPC API (kybernetes.v1.Kubelet), with reflection and health.

ListPods shows every pod this kubelet runs, from every source, with its live
status; SubmitPod and DeleteStaticPod manage the pods of source 4; Logs
streams a container's output (what `kubecfg logs` shows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from kybernetes.v1 import kubelet_pb2, kubelet_pb2_grpc, pod_pb2
from services.common.log import get_logger

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


class KubeletService(kubelet_pb2_grpc.KubeletServicer):
    def __init__(self, kubelet: "Kubelet") -> None:
        self.kubelet = kubelet

    async def ListPods(
        self, request: kubelet_pb2.KubeletListPodsRequest, context: grpc.aio.ServicerContext
    ) -> pod_pb2.PodList:
        return pod_pb2.PodList(api_version="v1", kind="PodList", items=self.kubelet.list_pods())

    async def SubmitPod(self, request: pod_pb2.Pod, context: grpc.aio.ServicerContext) -> pod_pb2.Pod:
        source = self.kubelet.server_source
        try:
            return await source.submit(request)
        except SubmittedPodError as error:
            await context.abort(_SUBMIT_CODES[error.code], str(error))
            raise  # unreachable: abort raises

    async def DeleteStaticPod(
        self, request: kubelet_pb2.StaticPodRequest, context: grpc.aio.ServicerContext
    ) -> pod_pb2.Pod:
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
    def __init__(self, kubelet: "Kubelet", listen: str) -> None:
        self.listen = listen
        self.server = grpc.aio.server()
        self.health = HealthServicer()
        kubelet_pb2_grpc.add_KubeletServicer_to_server(KubeletService(kubelet), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self.port = 0

    async def start(self) -> int:
        self.port = self.server.add_insecure_port(self.listen)
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
