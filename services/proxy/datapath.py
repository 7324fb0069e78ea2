"""What kube-proxy's main and status server need of a data path, whichever mode runs.

Three implement it: `nftproxier.NftProxier` (`--proxy-mode=nftables`) and
`iptproxier.IptablesProxier` (`--proxy-mode=iptables`), cluster IPs and node
ports in the kernel, and `userspace.UserspaceProxier` (`--proxy-mode=userspace`:
a relay, `proxier.Proxier`, reached through portals in the kernel).
"""

from __future__ import annotations

from typing import Any, Protocol

from kybernetes.v1 import endpoints_pb2, proxy_pb2, service_pb2

MODES = ("nftables", "iptables", "userspace")


class DataPath(Protocol):
    mode: str

    def on_service_event(self, event_type: str, service: service_pb2.Service, old: Any = None) -> None:
        """An informer event for a Service (ADDED, MODIFIED or DELETED)."""

    def on_endpoints_event(self, event_type: str, endpoints: endpoints_pb2.Endpoints, old: Any = None) -> None:
        """An informer event for an Endpoints object."""

    def mark_synced(self) -> None:
        """Both informers hold their first snapshot."""

    async def run(self) -> None:
        """The data path's own work, until cancelled (guarded as fatal by main)."""

    async def shutdown(self, grace: float) -> None:
        """Stops serving; open connections get `grace` seconds where the mode owns them."""

    def status(self) -> list[proxy_pb2.ProxiedPortStatus]:
        """One entry per service port, for the Status RPC."""

    def status_details(self) -> dict[str, str]:
        """Mode-wide facts (mode, sync state), sent as the Status RPC's trailing metadata."""

    def active_connections(self) -> int:
        """Connections the process itself carries (0 when the kernel carries them)."""
