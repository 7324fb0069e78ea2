"""Admission rules on objects themselves: where an Endpoints object may point.

An Endpoints object decides where every node's proxy relays a service's traffic, so it must
not point at the nodes themselves. Addresses that mean "this host" or its link (loopback,
link-local, unspecified) are refused for everyone by validation (validate_endpoints, as
Kubernetes' ValidateNonSpecialIP). A node's own address is refused here, unless the writer
is the endpoints controller (`system:kube-controller-manager`) or an administrator
(`system:masters`): the controller puts one there for a pod on the host's network, but a
user who could would have every proxy relay the service to whatever listens on that node
(its kubelet, its etcd), from anywhere in the cluster.

The other object rule of this layer, that a pod's spec cannot change but for its images
(so an update cannot give a running pod a hostPath mount), is validation too:
validation.validate_pod_update, from the pod strategy's validate_update.
"""

from __future__ import annotations

import ipaddress
from typing import Mapping

import grpc

from services.common.identity import CONTROLLER_MANAGER_USER, SYSTEM_MASTERS
from services.common.resources import ENDPOINTS, NODES
from services.common.validation import show_value

from ..errors import ApiError
from ..registry import Registry
from .admission import CREATE, UPDATE, AdmissionPlugin, AdmissionRequest

# Kubernetes' identity of the controller manager, which runs the endpoints controller.

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def canonical_ip(text: str) -> IPAddress | None:
    """text as the address the kernel connects to (::ffff:10.0.0.5 is 10.0.0.5), or None
    when it is not an IP address (a node's Hostname address)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class EndpointsNodeAddresses:
    """Refuses Endpoints addresses that are a Node's status.addresses, but from the endpoints
    controller and administrators. Node addresses come from the Node watch cache, indexed
    again after any change to it."""

    name = "EndpointsNodeAddresses"

    def __init__(self, registries: Mapping[str, Registry]) -> None:
        self.nodes = registries[NODES.name].cache
        self._index: dict[IPAddress, str] | None = None
        self.nodes.on_change(self._forget_index)

    def _forget_index(self) -> None:
        self._index = None

    def node_of(self, address: IPAddress) -> str | None:
        """The node whose address this is, if any."""
        if self._index is None:
            index: dict[IPAddress, str] = {}
            for node in sorted(self.nodes.objects(), key=lambda n: n.metadata.name):
                for node_address in node.status.addresses:
                    ip = canonical_ip(node_address.address)
                    if ip is not None:
                        index.setdefault(ip, node.metadata.name)
            self._index = index
        return self._index.get(address)

    def admit(self, request: AdmissionRequest) -> None:
        if request.kind.name != ENDPOINTS.name or request.operation not in (CREATE, UPDATE):
            return
        user = request.user
        if user.name == CONTROLLER_MANAGER_USER or user.in_group(SYSTEM_MASTERS):
            return
        endpoints = request.obj
        # An update that leaves the addresses and ports as they are adds no new target (a
        # label change of the controller's object); any change is checked whole, since a
        # node address the controller put there with one port must not get another.
        if (
            request.operation == UPDATE
            and request.old is not None
            and list(request.old.subsets) == list(endpoints.subsets)
        ):
            return
        for i, subset in enumerate(endpoints.subsets):
            for field, json_name in (("addresses", "addresses"), ("not_ready_addresses", "notReadyAddresses")):
                for j, address in enumerate(getattr(subset, field)):
                    ip = canonical_ip(address.ip)
                    node = self.node_of(ip) if ip is not None else None
                    if node is None:
                        continue
                    raise ApiError(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"endpoints {show_value(endpoints.metadata.name)} in namespace "
                        f"{show_value(endpoints.metadata.namespace)}: subsets[{i}].{json_name}[{j}].ip: "
                        f"{show_value(address.ip)} is an address of node {show_value(node)}; user "
                        f"{show_value(user.name)} may not point a service at a node (only the endpoints "
                        "controller and administrators may)",
                    )


def admission_plugins(registries: Mapping[str, Registry]) -> list[AdmissionPlugin]:
    return [EndpointsNodeAddresses(registries)]
