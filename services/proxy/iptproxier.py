"""kube-proxy's iptables data path: keeps this node's chains in step with the informers.

The rules are in `iptables.py` (pure); the runner is the nftables mode's
(`syncrunner.py`): coalesced transactions, adoption on start, a full rebuild
with back-off after a refused one, a probe every --sync-period. A transaction
is one `iptables-restore --noflush`; a full rebuild reads `iptables-save` first
(to add only the built-in chains' jumps that are missing and delete chains no
longer wanted), as Kubernetes' iptables proxier does.

The chains outlive the process, as the nftables table does; `kube-proxy
--cleanup` deletes them (`cleanup_chains`) and their jumps.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Awaitable, Callable

from services.common.log import get_logger

from . import iptables, nftables
from .iptables import Config, Present
from .ruleset import Plan, Rules, ServiceKey
from .syncrunner import KernelOptions, SyncError, SyncRunner, prepare_host, read_tool, run_tool

IPTABLES_RESTORE = "/usr/sbin/iptables-restore"
IPTABLES_SAVE = "/usr/sbin/iptables-save"

RunRestore = Callable[[str], Awaitable[None]]


class IptablesError(SyncError):
    """iptables-restore refused a script (its message), or iptables could not be run."""


def binary(name: str, fallback: str) -> str:
    return shutil.which(name) or fallback


def available() -> bool:
    return bool(shutil.which("iptables-restore") and shutil.which("iptables-save"))


async def run_restore(script: str, *, restore: str | None = None) -> None:
    """One `iptables-restore --noflush` (one commit per table); IptablesError if refused."""
    argv = [restore or binary("iptables-restore", IPTABLES_RESTORE), "-w", "5", "--noflush"]
    await run_tool(argv, script, IptablesError)


async def read_present(config: Config, *, save: str | None = None) -> Present:
    """This node's chains and jumps, from `iptables-save` (nat and filter)."""
    text = await read_tool([save or binary("iptables-save", IPTABLES_SAVE)], IptablesError)
    return iptables.parse_save(text, config)


async def cleanup_chains(node: str, *, restore: str | None = None, save: str | None = None) -> int:
    """Deletes the node's chains and the jumps to them; returns how many chains there were."""
    present = await read_present(Config(node=node), save=save)
    commands = iptables.cleanup_commands(present)
    if commands:
        await run_restore(nftables.script(commands), restore=restore)
    return sum(len(chains) for chains in present.chains.values())


@dataclass
class IptablesOptions(KernelOptions):
    iptables_restore: str = ""  # default: on PATH, else /usr/sbin
    iptables_save: str = ""

    def config(self) -> Config:
        return Config(
            node=self.node_name,
            service_cidr=self.service_cidr,
            node_ips=self.node_ips,
            balance=self.balance,
            affinity_timeout=max(1, round(self.affinity_timeout)),
        )


class IptablesProxier(SyncRunner):
    """The iptables data path behind kube-proxy's informers."""

    mode = "iptables"
    synced_event = "iptables_synced"
    failed_event = "iptables_sync_failed"
    retry_event = "iptables_sync_retry"
    missing_event = "iptables_rules_missing_or_flushed"

    def __init__(self, options: IptablesOptions, *, restore: RunRestore | None = None) -> None:
        self.options = options
        self.config = options.config()
        self.tag = self.config.tag
        super().__init__(
            iptables.Installed(self.config), options, get_logger(chains=f"{iptables.PREFIX}*-{self.tag}")
        )
        self._restore: RunRestore = restore or (
            lambda text: run_restore(text, restore=options.iptables_restore or None)
        )

    def describe(self) -> dict[str, str]:
        return {"chains": f"{iptables.PREFIX}*-{self.tag}", "node-ip": ",".join(self.config.node_ips)}

    def _rules(self, key: ServiceKey) -> Rules:
        service = self.services.get(key)
        if service is None:
            return iptables.EMPTY
        return iptables.service_rules(service, self.endpoints.get(key), self.config)

    async def _apply(self, plan: Plan) -> None:
        await self._restore(plan.script)

    async def _read_present(self) -> Present:
        return await read_present(self.config, save=self.options.iptables_save or None)

    async def _intact(self) -> bool:
        try:
            present = await self._read_present()
        except SyncError as error:
            self._log.warning("iptables_probe_failed", error=str(error))
            return False
        problems = iptables.missing(present, self.config)
        if problems:
            self._log.info("iptables_rules_changed", missing="; ".join(problems[:5]))
        return not problems

    def _prepare_host(self) -> None:
        prepare_host(
            self._log, route_localnet=self.config.loopback_node_ip and self.options.set_route_localnet,
            reason="node ports on a loopback node IP",
        )

    async def _clean_other_modes(self) -> None:
        """The nftables (or userspace) mode's table of this node would DNAT before our chains."""
        if not (self.options.clean_other_modes and self.options.node_name and shutil.which("nft")):
            return
        table = nftables.table_name(self.options.node_name)
        try:
            await run_tool(
                [shutil.which("nft") or "nft", "-f", "-"], nftables.script(nftables.cleanup_commands(table)), SyncError
            )
        except SyncError as error:  # no nf_tables in this kernel: nothing to clean
            self._log.debug("nft_cleanup_skipped", table=f"ip {table}", error=str(error))

    async def shutdown(self, grace: float) -> None:
        """Leaves the chains in place: service traffic keeps flowing while the proxy restarts."""
        self._log.info("iptables_rules_left_in_place", cleanup="kube-proxy --cleanup")
