"""kube-proxy's userspace data path: the relay, on the cluster IP path through the kernel's portals.

As Kubernetes 1.0's userspace proxier: the relay (proxier.py) listens on a
local port of its own per service port, on --bind-address, and the kernel
sends each service's `clusterIP:port` (and node port on --node-ip) there, so
clients use the same addresses in every mode. The portals are an nftables
table of the node's own (the nftables mode's table, skeleton and runner, with a
`dnat to <bind address>:<relay port>` per service port instead of the endpoint
chains; `redirect` for 0.0.0.0); a service port with no ready endpoint is
refused by the kernel at once, as in the kernel modes.

The bind address defaults to 127.0.0.1: the relay then answers only what the
portals bring it, never a client that found its port from the network; a pod's
packets DNATed from its bridge to 127.0.0.1 need route_localnet, which the
runner turns on, with the nftables mode's guards (nothing from outside to
127.0.0.0/8 unless we DNATed it, no loopback source leaving). The node address
would work too but exposes the relay's ports to anything that reaches the node.

What stays the relay's: it picks the endpoint (round robin, ClientIP affinity)
and skips one that refuses or does not answer; the backend sees the node's
address (the relay's connection), for pods and the host alike.

A service that goes loses its portal first and its listeners once the portal
is out of the kernel: a client connecting in between would otherwise be reset
by a listener closing with the connection in its queue.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from kybernetes.v1 import endpoints_pb2, proxy_pb2, service_pb2

from .nftables import cluster_ip
from .nftproxier import NftOptions, NftProxier
from .proxier import Proxier, ProxyOptions


class UserspaceProxier:
    """The relay and its portals, behind kube-proxy's informers."""

    mode = "userspace"

    def __init__(self, relay: ProxyOptions, portals: NftOptions) -> None:
        self.relay = Proxier(relay, on_change=self._relay_changed)
        self.portals = NftProxier(
            replace(portals, portal_address=relay.bind_address), relay_ports=self.relay.relay_ports
        )
        self.table = self.portals.table
        self._retiring: set[asyncio.Task] = set()  # strong references, as asyncio wants

    def _relay_changed(self, key: tuple[str, str]) -> None:
        self.portals.mark_dirty(key)

    # Informer handlers ----------------------------------------------------

    def on_service_event(self, event_type: str, service: service_pb2.Service, old: Any = None) -> None:
        self.portals.on_service_event(event_type, service, old)
        if event_type != "DELETED" and cluster_ip(service) is not None:
            self.relay.on_service_event(event_type, service, old)
            return
        # Gone, or no cluster IP (headless, not allocated yet): no portal leads to a listener.
        key = (service.metadata.namespace, service.metadata.name)
        if key in self.relay.services:
            task = asyncio.create_task(self._retire(service), name=f"retire-{'/'.join(key)}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, service: service_pb2.Service) -> None:
        """Closes the service's listeners once the kernel no longer sends clients there."""
        await self.portals.wait_installed()
        key = (service.metadata.namespace, service.metadata.name)
        current = self.portals.services.get(key)
        if current is None or cluster_ip(current) is None:  # not back meanwhile
            self.relay.on_service_event("DELETED", service)

    def on_endpoints_event(self, event_type: str, endpoints: endpoints_pb2.Endpoints, old: Any = None) -> None:
        self.relay.on_endpoints_event(event_type, endpoints, old)
        self.portals.on_endpoints_event(event_type, endpoints, old)

    def mark_synced(self) -> None:
        self.portals.mark_synced()

    async def run(self) -> None:
        """The portals' runner (the listeners run on their own)."""
        await self.portals.run()

    async def wait_installed(self, timeout: float | None = None) -> None:
        """Returns once the portals hold every change so far (tests, benchmarks)."""
        await self.portals.wait_installed(timeout)

    # Reading --------------------------------------------------------------

    def status(self) -> list[proxy_pb2.ProxiedPortStatus]:
        """The relay's ports and counters; `listening` once the listener is bound and its portal programmed."""
        portals = {(p.namespace, p.service, p.port_name): p for p in self.portals.status()}
        result = []
        for port in self.relay.status():
            portal = portals.get((port.namespace, port.service, port.port_name))
            if port.listening and (portal is None or not portal.listening):
                port.listening = False
                port.error = portal.error if portal is not None else "no portal"
            result.append(port)
        return result

    def status_details(self) -> dict[str, str]:
        details = self.portals.status_details()
        details.update(self.relay.status_details())
        return details

    def active_connections(self) -> int:
        return self.relay.active_connections()

    async def shutdown(self, grace: float) -> None:
        """Closes the relay (open connections get `grace`); the portals stay, refusing until a restart."""
        for task in list(self._retiring):
            task.cancel()
        await self.relay.shutdown(grace)
        await self.portals.shutdown(grace)
