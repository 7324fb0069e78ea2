"""kube-proxy's nftables data path: keeps this node's table in step with the informers.

The rules themselves are in `nftables.py` (pure); this module decides when to
write them and runs `nft -f` (an asyncio subprocess, one transaction a batch,
as Kubernetes' knftables does).

The sync runner (Kubernetes' BoundedFrequencyRunner, minus the periodic full
sync): an informer event only records the object and marks its service dirty,
then wakes the runner. The runner does at most one transaction at a time; each
one carries every service that changed since the last began, and the next one
starts no sooner than `min_sync_period` after it (first change after a quiet
spell: at once). A burst of a thousand endpoint updates thus becomes a handful
of transactions. Nothing is written before both informers have their snapshot
(`mark_synced`): the first transaction adopts the table, rebuilding it whole and
atomically from the full state, so a restarted proxy never shows traffic an
empty table. After that only what changed is written. A transaction nft refuses
is logged, and the next one (after a back-off) is again a full rebuild, since
the table may not be what we think. Every `sync_period` a cheap probe checks
that the table is still there (someone may have flushed the ruleset) and
rebuilds it if not (a table left without its rules would no longer refuse
cluster IPs, which then follow the default route).

The table outlives the process on purpose: a restarting proxy leaves service
traffic flowing, and adopts the table on start. `kube-proxy --cleanup` deletes
it (`cleanup`).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from kybernetes.v1 import endpoints_pb2, proxy_pb2, service_pb2

from services.common.log import get_logger
from services.common.runtime import Backoff

from . import nftables
from .nftables import Config, Installed, Plan, Rules, ServiceKey

NFT = "/usr/sbin/nft"
ROUTE_LOCALNET = Path("/proc/sys/net/ipv4/conf/all/route_localnet")
BRIDGE_NF_CALL_IPTABLES = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")

RunNft = Callable[[str], Awaitable[None]]


class NftError(Exception):
    """nft refused a script (its message), or could not be run."""


def nft_binary() -> str:
    return shutil.which("nft") or NFT


async def run_nft(script: str, *, nft: str | None = None) -> None:
    """Runs `script` as one `nft -f` transaction; NftError with nft's message if refused."""
    try:
        process = await asyncio.create_subprocess_exec(
            nft or nft_binary(), "-f", "-",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
    except OSError as error:
        raise NftError(f"cannot run nft: {error}") from None
    _, err = await process.communicate(script.encode())
    if process.returncode != 0:
        message = err.decode(errors="replace").strip()
        raise NftError(message[-2000:] or f"nft exited with {process.returncode}")


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
class NftOptions:
    node_name: str
    service_cidr: str = nftables.DEFAULT_SERVICE_CIDR
    node_ips: tuple[str, ...] = ("127.0.0.1",)
    balance: str = nftables.BALANCE_RANDOM
    affinity_timeout: float = nftables.DEFAULT_AFFINITY_TIMEOUT
    # Kubernetes' --min-sync-period: transactions start at least this far apart.
    min_sync_period: float = 0.05
    # How often to check that the table is still there.
    sync_period: float = 30.0
    retry_initial: float = 0.5
    retry_max: float = 30.0
    table: str = ""  # default: nftables.table_name(node_name)
    nft: str = ""  # default: nft on PATH, else /usr/sbin/nft
    # Set net.ipv4.conf.all.route_localnet when a node IP is loopback (node ports on 127.0.0.1).
    set_route_localnet: bool = True

    def config(self) -> Config:
        return Config(
            table=self.table or nftables.table_name(self.node_name),
            service_cidr=self.service_cidr,
            node_ips=self.node_ips,
            balance=self.balance,
            affinity_timeout=max(1, round(self.affinity_timeout)),
        )


@dataclass
class SyncStats:
    transactions: int = 0  # successful ones
    full_syncs: int = 0
    failures: int = 0
    last_sync: float = 0.0  # wall clock of the last successful transaction
    last_duration: float = 0.0  # seconds the last transaction took (nft included)
    last_error: str = ""  # of the last failed transaction, cleared by a success


class NftProxier:
    """The nftables data path behind kube-proxy's informers."""

    mode = "nftables"

    def __init__(self, options: NftOptions, *, nft: RunNft | None = None) -> None:
        self.options = options
        self.config = options.config()
        self.table = self.config.table
        self.services: dict[ServiceKey, service_pb2.Service] = {}
        self.endpoints: dict[ServiceKey, endpoints_pb2.Endpoints] = {}
        self.installed = Installed(self.config)
        self.stats = SyncStats()
        self._nft: RunNft = nft or (lambda text: run_nft(text, nft=options.nft or None))
        self._dirty: set[ServiceKey] = set()
        self._need_full = True
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._changed = asyncio.Condition()
        self._generation = 0  # counts changes
        self._installed_generation = 0  # the changes the table holds
        self._last_start = -1e9
        self._log = get_logger(table=self.table)

    # Informer handlers (event_type, obj, old) ------------------------------

    def on_service_event(self, event_type: str, service: service_pb2.Service, old: Any = None) -> None:
        key = (service.metadata.namespace, service.metadata.name)
        if event_type == "DELETED":
            self.services.pop(key, None)
        else:
            self.services[key] = service
        self._mark(key)

    def on_endpoints_event(self, event_type: str, endpoints: endpoints_pb2.Endpoints, old: Any = None) -> None:
        key = (endpoints.metadata.namespace, endpoints.metadata.name)
        if event_type == "DELETED":
            self.endpoints.pop(key, None)
        else:
            self.endpoints[key] = endpoints
        if key in self.services or key in self.installed.by_service:
            self._mark(key)

    def _mark(self, key: ServiceKey) -> None:
        self._dirty.add(key)
        self._generation += 1
        self._wake.set()

    def mark_synced(self) -> None:
        """The informers hold their first snapshot: the runner may adopt the table."""
        self._synced.set()

    # The runner -------------------------------------------------------------

    async def run(self) -> None:
        """Keeps the table in step until cancelled."""
        await self._synced.wait()
        await asyncio.to_thread(self._prepare_host)
        backoff = Backoff(self.options.retry_initial, self.options.retry_max, jitter=0.1)
        next_probe = time.monotonic() + self.options.sync_period
        while True:
            if not self._dirty and not self._need_full:
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, next_probe - time.monotonic()))
                except TimeoutError:
                    next_probe = time.monotonic() + self.options.sync_period
                    if not await table_intact(self.table, nft=self.options.nft or None):
                        self._log.warning("nft_table_missing_or_flushed", action="full resync")
                        self._need_full = True
                    continue
            self._wake.clear()
            pause = self._last_start + self.options.min_sync_period - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            self._last_start = time.monotonic()
            if await self.sync_once():
                backoff.reset()
            else:
                delay = backoff.failure()
                self._log.info("nft_sync_retry", retry_in=round(delay, 2), failures=backoff.failures())
                await asyncio.sleep(delay)

    async def sync_once(self) -> bool:
        """One transaction carrying every change so far (a full rebuild when one is due); False if refused."""
        generation = self._generation
        dirty, self._dirty = self._dirty, set()
        full = self._need_full
        started = time.monotonic()
        plan = self._plan(full, dirty)
        if not plan.commands:  # nothing for the kernel (a change only status shows, or none)
            self.installed.commit(plan)
            self._installed_generation = generation
            await self._notify()
            return True
        try:
            await self._nft(plan.script)
        except NftError as error:
            self._dirty |= dirty
            self._need_full = True
            self.stats.failures += 1
            self.stats.last_error = str(error)
            self._log.error(
                "nft_sync_failed", full=full, services=len(plan.after), commands=len(plan.commands), error=str(error)
            )
            return False
        self.installed.commit(plan)
        self._need_full = False
        elapsed = time.monotonic() - started
        self.stats.transactions += 1
        self.stats.full_syncs += int(full)
        self.stats.last_sync = time.time()
        self.stats.last_duration = elapsed
        self.stats.last_error = ""
        self._installed_generation = generation
        if plan.released and self.installed.blocked():
            # A map key was given up: a service that wanted it tries again.
            for key in self.installed.blocked():
                self._mark(key)
        for key, reasons in plan.conflicts.items():
            self._log.warning("service_port_conflict", service="/".join(key), reasons="; ".join(reasons))
        self._log_plan(plan, elapsed)
        await self._notify()
        return True

    def _plan(self, full: bool, dirty: set[ServiceKey]) -> Plan:
        if full:
            desired = {key: self._rules(key) for key in self.services}
            return self.installed.plan_full(desired)
        return self.installed.plan({key: self._rules(key) for key in dirty})

    def _rules(self, key: ServiceKey) -> Rules:
        service = self.services.get(key)
        if service is None:
            return nftables.EMPTY
        return nftables.service_rules(service, self.endpoints.get(key), self.config)

    def _log_plan(self, plan: Plan, elapsed: float) -> None:
        services, ports, endpoints = self.installed.counts()
        if plan.full:
            self._log.info(
                "nft_table_synced", full=True, services=services, ports=ports, endpoints=endpoints,
                commands=len(plan.commands), seconds=round(elapsed, 3),
            )
            return
        for key, rules in plan.after.items():
            fields: dict[str, Any] = {
                "ports": ",".join(f"{p.port_name or '-'}:{p.port}/{p.protocol}" for p in rules.ports),
                "endpoints": max((len(p.endpoints) for p in rules.ports), default=0),
            }
            if rules.skipped:
                fields["skipped"] = "; ".join(rules.skipped)
            event = "service_removed" if key not in self.services else "service_synced"
            self._log.info(event, service="/".join(key), **fields)
        self._log.info(
            "nft_table_synced", full=False, changed=len(plan.after), services=services, endpoints=endpoints,
            commands=len(plan.commands), seconds=round(elapsed, 3),
        )

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_installed(self, timeout: float | None = None) -> None:
        """Returns once every change made so far is in the kernel (tests, benchmarks)."""
        target = self._generation

        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self._installed_generation >= target and self.installed.adopted)

        await asyncio.wait_for(reached(), timeout)

    def _prepare_host(self) -> None:
        """Kernel settings the table relies on (warned about when they cannot be had)."""
        if self.config.loopback_node_ip and self.options.set_route_localnet:
            try:
                if ROUTE_LOCALNET.read_text().strip() != "1":
                    ROUTE_LOCALNET.write_text("1\n")
                    self._log.info("route_localnet_enabled", reason="node ports on a loopback node IP")
            except OSError as error:
                self._log.warning("route_localnet_unavailable", error=str(error),
                                  effect="node ports on a loopback node IP will not answer")
        try:
            if BRIDGE_NF_CALL_IPTABLES.read_text().strip() != "1":
                self._log.warning(
                    "bridge_nf_call_iptables_off",
                    effect="a pod calling a service whose endpoint shares its bridge gets replies it drops",
                )
        except OSError:
            pass

    # Reading --------------------------------------------------------------

    def status(self) -> list[proxy_pb2.ProxiedPortStatus]:
        """One entry per service port: `listening` once its rules are in the kernel."""
        result = []
        error = self.stats.last_error
        for key in sorted(set(self.services) | set(self.installed.by_service)):
            installed = self.installed.by_service.get(key)
            pending = key in self._dirty or (self._need_full and bool(self.services))
            conflicts = "; ".join(self.installed.conflicts.get(key, ()))
            if installed is not None and not pending:
                ports, programmed = installed.ports, True
            else:
                service = self.services.get(key)
                if service is None:
                    continue
                ports = self._rules(key).ports
                programmed = False
            for port in ports:
                result.append(proxy_pb2.ProxiedPortStatus(
                    namespace=port.namespace, service=port.service, port_name=port.port_name,
                    protocol=port.protocol, port=port.port, listening=programmed,
                    error=conflicts or ("" if programmed else (f"not programmed: {error}" if error else "pending")),
                    endpoints=[f"{ip}:{number}" for ip, number in port.endpoints],
                ))
        return result

    def status_details(self) -> dict[str, str]:
        services, ports, endpoints = self.installed.counts()
        stats = self.stats
        details = {
            "mode": self.mode,
            "table": f"ip {self.table}",
            "services": str(services),
            "service-ports": str(ports),
            "endpoints": str(endpoints),
            "transactions": str(stats.transactions),
            "sync-failures": str(stats.failures),
        }
        if stats.last_sync:
            details["last-sync"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stats.last_sync))
            details["last-sync-seconds"] = f"{stats.last_duration:.3f}"
        if stats.last_error:
            details["last-sync-error"] = stats.last_error.replace("\n", " ")[:500]
        # gRPC metadata values are printable ASCII.
        return {name: value.encode("ascii", "replace").decode() for name, value in details.items()}

    def active_connections(self) -> int:
        return 0  # connections are the kernel's: conntrack, not ours to count

    # Stopping -------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Leaves the table in place: service traffic keeps flowing while the proxy restarts."""
        self._log.info("nft_table_left_in_place", table=f"ip {self.table}", cleanup="kube-proxy --cleanup")

