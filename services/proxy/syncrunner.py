"""The sync runner both kernel modes share: keeps the kernel's rules in step with the informers.

Kubernetes' BoundedFrequencyRunner, minus the periodic full sync. An informer
event only records the object and marks its service dirty, then wakes the
runner. The runner does at most one transaction at a time; each carries every
service that changed since the last began, and the next one starts no sooner
than `min_sync_period` after it (first change after a quiet spell: at once). A
burst of a thousand endpoint updates thus becomes a handful of transactions.
Nothing is written before both informers have their snapshot (`mark_synced`):
the first transaction adopts the rules, rebuilding them whole from the full
state, so a restarted proxy never shows traffic an empty ruleset. After that
only what changed is written. A transaction the kernel refuses is logged, and
the next one (after a back-off) is again a full rebuild, since the kernel may
not hold what we think. Every `sync_period` a cheap probe checks that the rules
are still there (someone may have flushed them) and rebuilds them if not.

A mode subclasses `SyncRunner` with what is its own: the rules of one service
(`_rules`), running one transaction (`_apply`), the probe (`_intact`), reading
the kernel before a full rebuild if its writer needs to (`_read_present`), host
settings (`_prepare_host`) and removing another mode's leftovers of this node
(`_clean_other_modes`, once, before adopting). The nftables mode
(nftproxier.py), the iptables mode (iptproxier.py) and the userspace mode's
portals (userspace.py) run on it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kybernetes.v1 import endpoints_pb2, proxy_pb2, service_pb2

from services.common.runtime import Backoff

from . import nftables
from .ruleset import EMPTY, Installed, Plan, Rules, ServiceKey


class SyncError(Exception):
    """The kernel refused a transaction (the tool's message), or the tool could not be run."""


@dataclass
class SyncOptions:
    # Kubernetes' --min-sync-period: transactions start at least this far apart.
    min_sync_period: float = 0.05
    # How often to check that the rules are still there.
    sync_period: float = 30.0
    retry_initial: float = 0.5
    retry_max: float = 30.0


@dataclass
class KernelOptions(SyncOptions):
    """What every kernel data path (nftables, iptables, the userspace mode's portals) is told."""

    node_name: str = ""
    service_cidr: str = nftables.DEFAULT_SERVICE_CIDR
    node_ips: tuple[str, ...] = ("127.0.0.1",)
    balance: str = nftables.BALANCE_RANDOM
    affinity_timeout: float = nftables.DEFAULT_AFFINITY_TIMEOUT
    # Set net.ipv4.conf.all.route_localnet when the rules send packets to 127.0.0.0/8
    # (node ports on a loopback node IP; the userspace relay on loopback).
    set_route_localnet: bool = True
    # Delete the node's rules of the other kernel mode before adopting.
    clean_other_modes: bool = True


@dataclass
class SyncStats:
    transactions: int = 0  # successful ones
    full_syncs: int = 0
    failures: int = 0
    last_sync: float = 0.0  # wall clock of the last successful transaction
    last_duration: float = 0.0  # seconds the last transaction took (the tool included)
    last_error: str = ""  # of the last failed transaction, cleared by a success


async def run_tool(argv: list[str], stdin: str, error: type[SyncError] = SyncError) -> None:
    """Runs a rule tool (`nft -f -`, `iptables-restore`) with `stdin`; `error` with its message if it fails."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
    except OSError as failure:
        raise error(f"cannot run {argv[0]}: {failure}") from None
    _, err = await process.communicate(stdin.encode())
    if process.returncode != 0:
        message = err.decode(errors="replace").strip()
        raise error(message[-2000:] or f"{argv[0]} exited with {process.returncode}")


async def read_tool(argv: list[str], error: type[SyncError] = SyncError) -> str:
    """A rule tool's output (`iptables-save`); `error` if it fails."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
    except OSError as failure:
        raise error(f"cannot run {argv[0]}: {failure}") from None
    out, err = await process.communicate()
    if process.returncode != 0:
        message = err.decode(errors="replace").strip()
        raise error(message[-2000:] or f"{argv[0]} exited with {process.returncode}")
    return out.decode(errors="replace")


class SyncRunner:
    """Informer handlers, the coalescing runner, and status, for a kernel data path."""

    mode = ""
    # Log events (a mode names its own: `nft_table_synced`, `iptables_synced`, ...).
    synced_event = "rules_synced"
    failed_event = "sync_failed"
    retry_event = "sync_retry"
    missing_event = "rules_missing_or_flushed"

    def __init__(self, installed: Installed, options: SyncOptions, log: Any) -> None:
        self.sync_options = options
        self.installed = installed
        self.services: dict[ServiceKey, service_pb2.Service] = {}
        self.endpoints: dict[ServiceKey, endpoints_pb2.Endpoints] = {}
        self.stats = SyncStats()
        self._dirty: set[ServiceKey] = set()
        self._need_full = True
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._changed = asyncio.Condition()
        self._generation = 0  # counts changes
        self._installed_generation = 0  # the changes the kernel holds
        self._last_start = -1e9
        self._log = log

    # What a mode provides ---------------------------------------------------

    def _rules(self, key: ServiceKey) -> Rules:
        raise NotImplementedError

    async def _apply(self, plan: Plan) -> None:
        """Runs the plan's transaction; SyncError if refused."""
        raise NotImplementedError

    async def _intact(self) -> bool:
        """Whether the rules are still in the kernel (a cheap probe)."""
        raise NotImplementedError

    async def _read_present(self) -> Any:
        """What the writer needs to know of the kernel before a full rebuild (None: nothing)."""
        return None

    def _prepare_host(self) -> None:
        """Kernel settings the rules rely on (runs in a thread, once)."""

    async def _clean_other_modes(self) -> None:
        """Removes another kernel mode's rules of this node, once before adopting."""

    def describe(self) -> dict[str, str]:
        """What the rules are (`table: ip kybernetes-x`), for status and logs."""
        return {}

    # Informer handlers (event_type, obj, old) ------------------------------

    def on_service_event(self, event_type: str, service: service_pb2.Service, old: Any = None) -> None:
        key = (service.metadata.namespace, service.metadata.name)
        if event_type == "DELETED":
            self.services.pop(key, None)
        else:
            self.services[key] = service
        self.mark_dirty(key)

    def on_endpoints_event(self, event_type: str, endpoints: endpoints_pb2.Endpoints, old: Any = None) -> None:
        key = (endpoints.metadata.namespace, endpoints.metadata.name)
        if event_type == "DELETED":
            self.endpoints.pop(key, None)
        else:
            self.endpoints[key] = endpoints
        if key in self.services or key in self.installed.by_service:
            self.mark_dirty(key)

    def mark_dirty(self, key: ServiceKey) -> None:
        """The service's rules may have changed: the next transaction carries it."""
        self._dirty.add(key)
        self._generation += 1
        self._wake.set()

    def mark_synced(self) -> None:
        """The informers hold their first snapshot: the runner may adopt the rules."""
        self._synced.set()

    # The runner -------------------------------------------------------------

    async def run(self) -> None:
        """Keeps the rules in step until cancelled."""
        await self._synced.wait()
        await asyncio.to_thread(self._prepare_host)
        await self._clean_other_modes()
        options = self.sync_options
        backoff = Backoff(options.retry_initial, options.retry_max, jitter=0.1)
        next_probe = time.monotonic() + options.sync_period
        while True:
            if not self._dirty and not self._need_full:
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, next_probe - time.monotonic()))
                except TimeoutError:
                    next_probe = time.monotonic() + options.sync_period
                    if not await self._intact():
                        self._log.warning(self.missing_event, action="full resync")
                        self._need_full = True
                    continue
            self._wake.clear()
            pause = self._last_start + options.min_sync_period - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            self._last_start = time.monotonic()
            if await self.sync_once():
                backoff.reset()
            else:
                delay = backoff.failure()
                self._log.info(self.retry_event, retry_in=round(delay, 2), failures=backoff.failures())
                await asyncio.sleep(delay)

    async def sync_once(self) -> bool:
        """One transaction carrying every change so far (a full rebuild when one is due); False if refused."""
        generation = self._generation
        dirty, self._dirty = self._dirty, set()
        full = self._need_full
        started = time.monotonic()
        plan: Plan | None = None
        try:
            if full:
                present = await self._read_present()
                plan = self.installed.plan_full({key: self._rules(key) for key in self.services}, present)
            else:
                plan = self.installed.plan({key: self._rules(key) for key in dirty})
            if not plan.commands:  # nothing for the kernel (a change only status shows, or none)
                self.installed.commit(plan)
                self._installed_generation = generation
                await self._notify()
                return True
            await self._apply(plan)
        except SyncError as error:
            self._dirty |= dirty
            self._need_full = True
            self.stats.failures += 1
            self.stats.last_error = str(error)
            self._log.error(
                self.failed_event, full=full, services=len(plan.after) if plan else len(self.services),
                commands=len(plan.commands) if plan else 0, error=str(error),
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
            # An element was given up: a service that wanted it tries again.
            for key in self.installed.blocked():
                self.mark_dirty(key)
        for key, reasons in plan.conflicts.items():
            self._log.warning("service_port_conflict", service="/".join(key), reasons="; ".join(reasons))
        self._log_plan(plan, elapsed)
        await self._notify()
        return True

    def _log_plan(self, plan: Plan, elapsed: float) -> None:
        services, ports, endpoints = self.installed.counts()
        if plan.full:
            self._log.info(
                self.synced_event, full=True, services=services, ports=ports, endpoints=endpoints,
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
            self.synced_event, full=False, changed=len(plan.after), services=services, endpoints=endpoints,
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
                if key not in self.services:
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
            **self.describe(),
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

    def rules_of(self, key: ServiceKey) -> Rules:
        """The service's share as the kernel holds it (EMPTY if none)."""
        return self.installed.by_service.get(key, EMPTY)


# Host settings ---------------------------------------------------------------------------------

ROUTE_LOCALNET = Path("/proc/sys/net/ipv4/conf/all/route_localnet")
BRIDGE_NF_CALL_IPTABLES = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def prepare_host(log: Any, *, route_localnet: bool, reason: str) -> None:
    """Kernel settings the rules rely on (warned about when they cannot be had)."""
    if route_localnet:
        try:
            if ROUTE_LOCALNET.read_text().strip() != "1":
                ROUTE_LOCALNET.write_text("1\n")
                log.info("route_localnet_enabled", reason=reason)
        except OSError as error:
            log.warning("route_localnet_unavailable", error=str(error), effect=f"{reason}: will not answer")
    try:
        if BRIDGE_NF_CALL_IPTABLES.read_text().strip() != "1":
            log.warning(
                "bridge_nf_call_iptables_off",
                effect="a pod calling a service whose endpoint shares its bridge gets replies it drops",
            )
    except OSError:
        pass
