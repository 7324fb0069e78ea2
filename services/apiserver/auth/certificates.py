"""Certificates.Sign: how a node gets its certificates (kubeadm's TLS bootstrap).

A new node holds only a short-lived bootstrap token (group system:bootstrappers). It
makes a key, sends a certificate request for `CN=system:node:<name>, O=system:nodes`,
and gets back a client certificate signed by the cluster CA, as Kubernetes' CSR
signer with its node-client auto-approver does, in one call. With that certificate it
may then ask for its serving certificate, for names and addresses its Node reports.

What is refused, and why:
- a client certificate for a name a Node already has, asked with a bootstrap token:
  otherwise anyone holding a join token could become an existing node (renewal is
  done with the node's own certificate instead);
- any subject but exactly the node's identity (no extra groups: a token must not
  mint `system:masters`);
- serving names the Node does not report (a node must not get a certificate for
  the API server's address).
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Mapping

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from kybernetes.v1 import certificates_pb2, certificates_pb2_grpc, meta_pb2, node_pb2
from services.common.identity import NODE_USER_PREFIX, SYSTEM_BOOTSTRAPPERS, SYSTEM_NODES
from services.common.log import get_logger
from services.common.pki import (
    CERTIFICATE_VALIDITY,
    CLIENT,
    SERVER,
    CertificateAuthority,
    CertificateError,
    alternative_names,
    KUBELET_CLIENT_SIGNER,
    KUBELET_SERVING_SIGNER,
)
from services.common.resources import NODES
from services.common.selectors import validate_dns1123_subdomain

from ..errors import ApiError
from ..registry import Registry
from .context import current_user

log = get_logger()

MIN_EXPIRATION = datetime.timedelta(minutes=10)


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _subject(request: x509.CertificateSigningRequest) -> tuple[str, list[str]]:
    names = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    groups = [str(a.value) for a in request.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return (str(names[0].value) if names else ""), groups


class CertificatesServicer(certificates_pb2_grpc.CertificatesServicer):
    def __init__(self, ca: CertificateAuthority | None, registries: Mapping[str, Registry]) -> None:
        self.ca = ca
        self.nodes = registries[NODES.name]

    async def Sign(
        self, request: certificates_pb2.CertificateSigningRequest, context: grpc.aio.ServicerContext
    ) -> certificates_pb2.IssuedCertificate:
        try:
            parsed, node = self._checked(request)
            certificate = self._sign(request, parsed, node, await self._stored_node(node))
        except Refused as refused:
            await context.abort(refused.code, str(refused))
        assert self.ca is not None
        return certificates_pb2.IssuedCertificate(certificate=certificate, ca_certificate=self.ca.certificate_pem)

    async def _stored_node(self, node: str) -> node_pb2.Node | None:
        """The Node the request names, read from etcd rather than the cache: a node that has
        just registered its address asks for a certificate for it the next moment."""
        try:
            return await self.nodes.get(meta_pb2.GetRequest(name=node))
        except ApiError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise Refused(error.code, error.message) from None

    def _checked(
        self, request: certificates_pb2.CertificateSigningRequest
    ) -> tuple[x509.CertificateSigningRequest, str]:
        """The parsed request and the node it names, or why it is not one this CA signs."""
        if self.ca is None:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION, "this API server has no signing CA (--cluster-signing-key-file)"
            )
        if request.signer_name not in (KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER):
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'signerName: Unsupported value: "{request.signer_name[:100]}": supported values: '
                f'"{KUBELET_CLIENT_SIGNER}", "{KUBELET_SERVING_SIGNER}"',
            )
        if request.expiration_seconds < 0:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "expirationSeconds: must be greater than or equal to 0")
        try:
            parsed = x509.load_pem_x509_csr(request.request)
        except ValueError:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "request: not a PEM certificate request") from None
        common_name, groups = _subject(parsed)
        node = common_name[len(NODE_USER_PREFIX) :] if common_name.startswith(NODE_USER_PREFIX) else ""
        reason = validate_dns1123_subdomain(node) if node else f'must be "{NODE_USER_PREFIX}<node name>"'
        if reason:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"request: subject common name: {reason}")
        if groups != [SYSTEM_NODES]:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT, f'request: subject organization must be exactly "{SYSTEM_NODES}"'
            )
        return parsed, node

    def _sign(
        self,
        request: certificates_pb2.CertificateSigningRequest,
        parsed: x509.CertificateSigningRequest,
        node: str,
        stored: node_pb2.Node | None,
    ) -> bytes:
        """Who may have it, then the certificate (the CA's own check of the request aside)."""
        assert self.ca is not None
        caller = current_user()
        names = alternative_names(parsed.extensions)
        if request.signer_name == KUBELET_CLIENT_SIGNER:
            usages = [CLIENT]
            if names:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT, "request: a client certificate has no subject alternative names"
                )
            if caller.node_name == node:
                pass  # a node renewing its own certificate
            elif caller.in_group(SYSTEM_BOOTSTRAPPERS):
                if stored is not None:
                    raise Refused(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f'user "{caller.name}" cannot get a certificate for node "{node}": a Node of that name '
                        "exists (join with a new name, or delete the Node first)",
                    )
            else:
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f'user "{caller.name}" cannot get a client certificate for node "{node}": '
                    f"only a bootstrap token or the node itself may",
                )
        else:
            usages = [SERVER]
            if caller.node_name != node:
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f'user "{caller.name}" cannot get a serving certificate for node "{node}": '
                    "only the node itself may",
                )
            allowed = self._node_names(node, stored)
            foreign = [name for name in names if name not in allowed]
            if not names or foreign:
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f'node "{node}" may get a serving certificate only for its name and the addresses its Node '
                    f"reports ({', '.join(sorted(allowed))}); asked for {', '.join(foreign[:5]) or 'nothing'}",
                )
        valid_for = CERTIFICATE_VALIDITY
        if request.expiration_seconds:
            valid_for = min(valid_for, max(MIN_EXPIRATION, datetime.timedelta(seconds=request.expiration_seconds)))
        try:
            certificate, _ = self.ca.sign_request(request.request, usages=usages, valid_for=valid_for)
        except CertificateError as error:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"request: {error}") from None
        log.info("certificate_signed", signer=request.signer_name, node=node, caller=caller.name, names=names or None)
        return certificate

    def _node_names(self, node: str, stored: node_pb2.Node | None) -> set[str]:
        allowed = {node}
        if stored is not None:
            for address in stored.status.addresses:
                try:
                    ip = ipaddress.ip_address(address.address)
                except ValueError:
                    allowed.add(address.address)  # a host name
                    continue
                if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local):
                    allowed.add(str(ip))
        return allowed
