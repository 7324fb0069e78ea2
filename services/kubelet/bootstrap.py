"""A new node joins with a token: kubeadm's TLS bootstrap, done by the kubelet at start.

The node is given the API server's bearer-token address, the cluster CA and a
short-lived bootstrap token (a bootstrap kubeconfig) and nothing else. The kubelet
makes its own key, asks the API server (Certificates.Sign) for its client certificate
`system:node:<name>` in `system:nodes`, and writes a kubeconfig with it for every later
start. With that identity it registers its Node (name and address) and asks for its
serving certificate for exactly those. The private keys never leave the node.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import grpc

from kybernetes.v1 import certificates_pb2, certificates_pb2_grpc, node_pb2
from services.common import kubeconfig
from services.common.client import ApiClient
from services.common.identity import NODE_USER_PREFIX, SYSTEM_NODES
from services.common.kubeconfig import ClusterAccess
from services.common.log import get_logger
from services.common.pki import (
    KUBELET_CLIENT_SIGNER,
    KUBELET_SERVING_SIGNER,
    KeyPair,
    certificate_request,
    still_good,
)
from services.common.resources import NODES
from services.common.transport import ServingCertificate, aio_channel

log = get_logger(module="kubelet.bootstrap")

# A certificate this close to its end is asked for again at start.
RENEW_BEFORE = datetime.timedelta(days=7)
# Writes of the new Node that meet a concurrent one (the range allocator's) are tried again.
REGISTER_RETRIES = 5


class BootstrapError(RuntimeError):
    """The node could not get its certificates: what was refused, by whom."""


@dataclass(frozen=True)
class BootstrapPlan:
    bootstrap_kubeconfig: Path  # server: the token port; the CA; a bootstrap token
    kubeconfig: Path  # written here: the node's own identity
    cert_dir: Path
    server: str  # the API server's certificate port, for the written kubeconfig


def _valid(path: Path, names: tuple[str, ...] = ()) -> bool:
    return path.exists() and still_good(path.read_bytes(), renew_before=RENEW_BEFORE, names=names)


async def _sign(access: ClusterAccess, common_name: str, signer: str, names: tuple[str, ...] = ()) -> KeyPair:
    request, key = certificate_request(common_name, [SYSTEM_NODES], names)
    async with aio_channel(access.server, access.credentials) as channel:
        try:
            issued = await certificates_pb2_grpc.CertificatesStub(channel).Sign(
                certificates_pb2.CertificateSigningRequest(request=request, signer_name=signer), timeout=30
            )
        except grpc.aio.AioRpcError as error:
            raise BootstrapError(f"{signer}: {error.code().name}: {error.details()}") from None
    return KeyPair(issued.certificate, key)


async def _register(access: ClusterAccess, node_name: str, node_ip: str) -> None:
    """The Node with its address, so that the serving certificate may name it."""
    async with ApiClient.for_access(access) as client:
        node = node_pb2.Node(api_version="v1", kind="Node")
        node.metadata.name = node_name
        try:
            await client.create(node)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise BootstrapError(f"registering node {node_name}: {error.code().name}: {error.details()}") from None
        # The range allocator writes the new Node at once too: a lost race is read again.
        for attempt in range(REGISTER_RETRIES):
            current = await client.get(NODES, node_name, "")
            if any(a.address == node_ip for a in current.status.addresses):
                return
            current.status.addresses.append(node_pb2.NodeAddress(type="InternalIP", address=node_ip))
            try:
                await client.update_status(current)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.ABORTED or attempt == REGISTER_RETRIES - 1:
                    raise BootstrapError(
                        f"registering node {node_name}: {error.code().name}: {error.details()}"
                    ) from None


async def bootstrap(plan: BootstrapPlan, node_name: str, node_ip: str) -> tuple[ClusterAccess, ServingCertificate]:
    """The node's API access and serving certificate: from earlier starts when still good,
    else asked for with the bootstrap token."""
    common_name = NODE_USER_PREFIX + node_name
    client_cert = plan.cert_dir / "kubelet-client.crt"
    if plan.kubeconfig.exists() and _valid(client_cert):
        access = kubeconfig.load(plan.kubeconfig)
    else:
        token_access = kubeconfig.load(plan.bootstrap_kubeconfig)
        if token_access.credentials is None or not token_access.credentials.token:
            raise BootstrapError(f"{plan.bootstrap_kubeconfig}: needs the cluster CA and a bootstrap token")
        pair = await _sign(token_access, common_name, KUBELET_CLIENT_SIGNER)
        pair.write(plan.cert_dir, "kubelet-client")
        ca = token_access.credentials.ca_certificate
        (plan.cert_dir / "ca.crt").write_bytes(ca)
        kubeconfig.write(plan.kubeconfig, kubeconfig.render(
            cluster="kybernetes", server=plan.server, ca_certificate=ca, user=common_name,
            certificate=pair.certificate, key=pair.key,
        ))
        access = kubeconfig.load(plan.kubeconfig)
        log.info("client_certificate_obtained", node=node_name, kubeconfig=str(plan.kubeconfig))
    assert access.credentials is not None
    names = (node_name, node_ip)
    if not _valid(plan.cert_dir / "kubelet.crt", names):
        await _register(access, node_name, node_ip)
        pair = await _sign(access, common_name, KUBELET_SERVING_SIGNER, names)
        pair.write(plan.cert_dir, "kubelet")
        log.info("serving_certificate_obtained", node=node_name, names=list(names))
    serving = ServingCertificate.from_files(
        plan.cert_dir / "kubelet.crt", plan.cert_dir / "kubelet.key", None
    )
    serving = ServingCertificate(serving.certificate, serving.key, access.credentials.ca_certificate)
    return access, serving
