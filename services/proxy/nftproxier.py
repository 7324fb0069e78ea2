"""kube-proxy's nftables data path: keeps this node's table in step with the informers.

The rules themselves are in `nftables.py` (pure); the sync runner (coalesced
transactions, adoption on start, full rebuild with back-off after a refused
transaction, a probe every --sync-period) is `syncrunner.py`, shared with the
iptables mode. This module runs `nft -f` (an asyncio subprocess, one
transaction a batch, as Kubernetes' knftables does). The probe lists one small
chain: a table left without its rules would no longer refuse cluster IPs,
which then follow the default route.

The same runner, with `NftOptions.portal_address`, programs the userspace
mode's portals (userspace.py): the same table and skeleton, each service port
sent to the relay's local port.

The table outlives the process on purpose: a restarting proxy leaves service
traffic flowing, and adopts the table on start. `kube-proxy --cleanup` deletes
it (`cleanup`).
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from typing import Awaitable, Callable

from services.common.log import get_logger

from . import iptproxier, nftables
from .nftables import Config, RelayPorts
from .ruleset import Plan, Rules, ServiceKey
from .syncrunner import (
    BRIDGE_NF_CALL_IPTABLES,
    ROUTE_LOCALNET,
    KernelOptions,
    SyncError,
    SyncRunner,
    SyncStats,
    prepare_host,
    run_tool,
)

__all__ = [
    "BRIDGE_NF_CALL_IPTABLES", "NFT", "ROUTE_LOCALNET", "NftError", "NftOptions", "NftProxier", "SyncStats",
    "cleanup", "nft_binary", "run_nft", "table_intact",
]

NFT = "/usr/sbin/nft"

RunNft = Callable[[str], Awaitable[None]]


class NftError(SyncError):
    """nft refused a script (its message), or could not be run."""


def nft_binary() -> str:
    return shutil.which("nft") or NFT


async def run_nft(script: str, *, nft: str | None = None) -> None:
    """Runs `script` as one `nft -f` transaction; NftError with nft's message if refused."""
    await run_tool([nft or nft_binary(), "-f", "-"], script, NftError)


async def table_intact(table: str, *, nft: str | None = None) -> bool:
    """Whether `ip <table>` is there with its rules (listing one small chain, not the whole
    table: 0.02 s with 10,000 services where the table takes seconds)."""
    try:
        process = await asyncio.create_subprocess_exec(
            nft or nft_binary(), "list", "chain", "ip", table, "services",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return False
    out, _ = await process.communicate()
    return process.returncode == 0 and f"@{nftables.SERVICE_IPS}".encode() in out


async def cleanup(table: str, *, nft: str | None = None) -> None:
    """Deletes the proxy's table (if there is one)."""
    await run_nft(nftables.script(nftables.cleanup_commands(table)), nft=nft)


@dataclass
class NftOptions(KernelOptions):
    table: str = ""  # default: nftables.table_name(node_name)
    nft: str = ""  # default: nft on PATH, else /usr/sbin/nft
    # The userspace mode: service ports go to the relay on this address (see nftables.Config).
    portal_address: str = ""

    def config(self) -> Config:
        return Config(
            table=self.table or nftables.table_name(self.node_name),
            service_cidr=self.service_cidr,
            node_ips=self.node_ips,
            balance=self.balance,
            affinity_timeout=max(1, round(self.affinity_timeout)),
            portal_address=self.portal_address,
        )


class NftProxier(SyncRunner):
    """The nftables data path behind kube-proxy's informers (or the userspace mode's portals)."""

    mode = "nftables"
    synced_event = "nft_table_synced"
    failed_event = "nft_sync_failed"
    retry_event = "nft_sync_retry"
    missing_event = "nft_table_missing_or_flushed"

    def __init__(
        self, options: NftOptions, *, nft: RunNft | None = None,
        relay_ports: Callable[[ServiceKey], RelayPorts] | None = None,
    ) -> None:
        self.options = options
        self.config = options.config()
        self.table = self.config.table
        if self.config.portal_address:
            self.mode = "userspace"
        super().__init__(nftables.Installed(self.config), options, get_logger(table=self.table))
        self._nft: RunNft = nft or (lambda text: run_nft(text, nft=options.nft or None))
        self._relay_ports = relay_ports

    def describe(self) -> dict[str, str]:
        return {"table": f"ip {self.table}"}

    def _rules(self, key: ServiceKey) -> Rules:
        service = self.services.get(key)
        if service is None:
            return nftables.EMPTY
        relay_ports = self._relay_ports(key) if self._relay_ports is not None else None
        return nftables.service_rules(service, self.endpoints.get(key), self.config, relay_ports)

    async def _apply(self, plan: Plan) -> None:
        await self._nft(plan.script)

    async def _intact(self) -> bool:
        return await table_intact(self.table, nft=self.options.nft or None)

    def _prepare_host(self) -> None:
        prepare_host(
            self._log, route_localnet=self.config.route_localnet and self.options.set_route_localnet,
            reason="the relay on loopback" if self.config.loopback_portal else "node ports on a loopback node IP",
        )

    async def _clean_other_modes(self) -> None:
        """The iptables mode's chains of this node would DNAT beside our table."""
        if not (self.options.clean_other_modes and self.options.node_name and iptproxier.available()):
            return
        try:
            removed = await iptproxier.cleanup_chains(self.options.node_name)
        except SyncError as error:
            self._log.warning("iptables_cleanup_failed", error=str(error))
            return
        if removed:
            self._log.info("iptables_chains_removed", chains=removed, reason=f"now in {self.mode} mode")

    async def shutdown(self, grace: float) -> None:
        """Leaves the table in place: service traffic keeps flowing while the proxy restarts."""
        self._log.info("nft_table_left_in_place", table=f"ip {self.table}", cleanup="kube-proxy --cleanup")
