"""The proxy's own gRPC server: kybernetes.v1.Proxy/Status, health and reflection.

Status lists every service port the data path serves. Facts about the data
path as a whole (its mode; the nftables table or the iptables chains, the
services and endpoints it programmed, transactions, the last sync's time and
error; the userspace relay's bind address) travel as the RPC's trailing
metadata, `kybernetes-<name>` (`grpcurl -v` prints them), so the proto is the
same for every mode.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from kybernetes.v1 import proxy_pb2, proxy_pb2_grpc
from services.common.transport import ServingCertificate

from .datapath import DataPath

PROXY_SERVICE = proxy_pb2.DESCRIPTOR.services_by_name["Proxy"].full_name


class ProxyStatusServicer(proxy_pb2_grpc.ProxyServicer):
    def __init__(self, proxier: DataPath, node_name: str) -> None:
        self.proxier = proxier
        self.node_name = node_name

    async def Status(
        self, request: proxy_pb2.ProxyStatusRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.ProxyStatus:
        context.set_trailing_metadata(
            tuple((f"kybernetes-{name}", value) for name, value in sorted(self.proxier.status_details().items()))
        )
        return proxy_pb2.ProxyStatus(node_name=self.node_name, ports=self.proxier.status())


class StatusServer:
    def __init__(self, proxier: DataPath, node_name: str, serving: ServingCertificate | None = None) -> None:
        # TLS requiring a client certificate from the cluster CA: the status shows the
        # node's service rules, which only the cluster's own identities may read.
        self.serving = serving
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.health = HealthServicer()
        proxy_pb2_grpc.add_ProxyServicer_to_server(ProxyStatusServicer(proxier, node_name), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [PROXY_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )

    async def start(self, listen: str) -> int:
        """Binds listen (host:port) and serves; returns the bound port."""
        try:
            if self.serving is None:
                port = self.server.add_insecure_port(listen)
            else:
                port = self.server.add_secure_port(
                    listen, self.serving.server_credentials(require_client_certificate=True)
                )
        except RuntimeError as error:  # grpc raises RuntimeError when it cannot bind
            raise OSError(f"--status-listen: cannot bind {listen}: {error}") from None
        if port == 0:
            raise OSError(f"--status-listen: cannot bind {listen}")
        await self.server.start()
        await self._set_serving(True)
        return port

    async def _set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(PROXY_SERVICE, status)
        await self.health.set("", status)

    async def stop(self, grace: float = 1.0) -> None:
        await self._set_serving(False)
        await self.server.stop(grace)
