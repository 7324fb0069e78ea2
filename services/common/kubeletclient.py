"""Reaching a node's kubelet API (its Logs RPC), as kubecfg logs and the API server's
pods/log subresource both do: the address from the Node's status, a channel with the
caller's credentials (the kubelet's serving certificate is from the cluster CA)."""

from __future__ import annotations

from typing import Any, AsyncGenerator

from kybernetes.v1 import kubelet_pb2, kubelet_pb2_grpc

from .client import CHANNEL_OPTIONS
from .transport import ClientCredentials, aio_channel

# Where a kubelet serves when its node does not say (Kubernetes' port too).
DEFAULT_KUBELET_PORT = 10250


class NoKubeletAddress(LookupError):
    """A node whose status names no address for its kubelet."""


def kubelet_address(node: Any) -> str:
    """host:port of a node's kubelet, from its status (InternalIP, else Hostname)."""
    addresses = {a.type: a.address for a in node.status.addresses}
    host = addresses.get("InternalIP") or addresses.get("Hostname")
    if not host:
        raise NoKubeletAddress(f'node "{node.metadata.name}" reports no address for its kubelet')
    port = node.status.daemon_endpoints.kubelet_endpoint.port or DEFAULT_KUBELET_PORT
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


async def stream_logs(
    address: str, credentials: ClientCredentials | None, request: kubelet_pb2.PodLogsRequest
) -> AsyncGenerator[bytes, None]:
    """The container's output from the kubelet at address, chunk by chunk; the call is
    cancelled when the caller stops iterating. Raises grpc.aio.AioRpcError as the call does."""
    async with aio_channel(address, credentials, CHANNEL_OPTIONS) as channel:
        call = kubelet_pb2_grpc.KubeletStub(channel).Logs(request)
        try:
            async for chunk in call:
                yield chunk.data
        finally:
            call.cancel()

