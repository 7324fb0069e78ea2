"""The kubelets' default pod bridge (kyb0) around a test session.

The integration (and some e2e) tests run real kubelets in the host's network namespace on the
kubelet's default bridge, kyb0, with the shared range 10.88.0.0/16: the first kubelet makes the
bridge, gives it the gateway address and inserts its iptables rules (podnetwork.py), and, as
Docker leaves docker0, no kubelet removes them when it stops. The `shared_pod_bridge` fixture
(tests/conftest.py) snapshots kyb0 when the session starts and, at its end, removes what the
session made: the whole bridge with its rules and address pool when it made the bridge, else
only the addresses, rules and route_localnet it added; then asserts that nothing of it is left.

Other test sessions may run on the same machine at once: while a kubelet of this network
namespace still runs on the bridge (or a pod's veth is still attached) nothing is removed, and a
bridge the tests made is marked (its alias) so that the session that is still using it removes
it at its end.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from services.kubelet.podnetwork import DEFAULT_BRIDGE, DEFAULT_STATE_DIR

# The alias of a kyb0 the test suite made, for whichever session ends last to remove it.
TEST_MARK = "kybernetes test suite"
RULE_TABLES = ("filter", "nat")


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def bridge_exists(bridge: str = DEFAULT_BRIDGE) -> bool:
    return Path(f"/sys/class/net/{bridge}").exists()


def bridge_addresses(bridge: str = DEFAULT_BRIDGE) -> set[str]:
    """The bridge's IPv4 addresses (`10.88.0.1/16`); empty when there is no bridge."""
    shown = _run("ip", "-j", "-4", "addr", "show", "dev", bridge)
    if shown.returncode != 0 or not shown.stdout.strip():
        return set()
    return {f"{a['local']}/{a['prefixlen']}" for link in json.loads(shown.stdout) for a in link.get("addr_info", [])}


def bridge_rules(bridge: str = DEFAULT_BRIDGE) -> set[tuple[str, str]]:
    """The kubelet's iptables rules for the bridge (found by their comment): (table, `-A ...` line)."""
    comment = f"kybernetes pod network {bridge}\""
    found = set()
    for table in RULE_TABLES:
        saved = _run("iptables-save", "-t", table).stdout
        found |= {(table, line) for line in saved.splitlines() if line.startswith("-A ") and comment in line}
    return found


def _sysfs(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def kubelets_on(bridge: str = DEFAULT_BRIDGE) -> list[int]:
    """Live kubelet processes in this network namespace whose pod bridge is `bridge`."""
    own = os.stat("/proc/self/ns/net").st_ino
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().decode(errors="replace").split("\0")
            namespace = os.stat(Path(entry.path, "ns", "net")).st_ino
        except OSError:
            continue
        if namespace != own or not any(a == "services.kubelet.main" or a.endswith("/kubelet") for a in argv[:3]):
            continue
        used = DEFAULT_BRIDGE
        for index, arg in enumerate(argv):
            if arg == "--pod-bridge" and index + 1 < len(argv):
                used = argv[index + 1]
            elif arg.startswith("--pod-bridge="):
                used = arg.partition("=")[2]
        if used == bridge:
            found.append(int(entry.name))
    return found


def _parent(pid: int) -> int | None:
    try:
        # /proc/<pid>/stat: "pid (comm) state ppid ...", comm may hold spaces and parentheses.
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def in_use(bridge: str = DEFAULT_BRIDGE) -> bool:
    """A kubelet still runs on the bridge, or a pod's veth is still attached to it."""
    try:
        ports = os.listdir(f"/sys/class/net/{bridge}/brif")
    except OSError:
        ports = []
    return bool(ports or kubelets_on(bridge))


@dataclass(frozen=True)
class BridgeState:
    """What there was of the bridge when the session started."""

    exists: bool
    alias: str | None
    addresses: frozenset[str]
    rules: frozenset[tuple[str, str]]
    route_localnet: str | None
    pool_dir: bool

    @property
    def made_by_tests(self) -> bool:
        return not self.exists or self.alias == TEST_MARK


def snapshot(bridge: str = DEFAULT_BRIDGE) -> BridgeState:
    exists = bridge_exists(bridge)
    return BridgeState(
        exists=exists,
        alias=_sysfs(f"/sys/class/net/{bridge}/ifalias") if exists else None,
        addresses=frozenset(bridge_addresses(bridge)),
        rules=frozenset(bridge_rules(bridge)),
        route_localnet=_sysfs(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet"),
        pool_dir=Path(DEFAULT_STATE_DIR, bridge).exists(),
    )


def _delete_rule(table: str, line: str) -> None:
    _run("iptables", "-w", "-t", table, *shlex.split(line.replace("-A", "-D", 1)))


def restore(before: BridgeState, bridge: str = DEFAULT_BRIDGE) -> list[str]:
    """Removes what the session made of the bridge; what is left of it that should not be
    (empty when all is clean, or when another session's kubelet still uses the bridge)."""
    if not bridge_exists(bridge) and not bridge_rules(bridge):
        return []
    own = [pid for pid in kubelets_on(bridge) if _parent(pid) == os.getpid()]
    if own:
        return [f"kubelet process {pid} started by this session, still running" for pid in own]
    if in_use(bridge):
        if before.made_by_tests and bridge_exists(bridge):
            _run("ip", "link", "set", "dev", bridge, "alias", TEST_MARK)
        return []
    pool = Path(DEFAULT_STATE_DIR, bridge)
    if before.made_by_tests:
        _run("ip", "link", "del", bridge)
        for table, line in bridge_rules(bridge):
            _delete_rule(table, line)
        if pool.is_dir() and not any(pool.iterdir()):
            pool.rmdir()
        left = [f"bridge {bridge}"] if bridge_exists(bridge) else []
        return left + [f"iptables -t {table} {line}" for table, line in sorted(bridge_rules(bridge))]
    for address in bridge_addresses(bridge) - before.addresses:
        _run("ip", "addr", "del", address, "dev", bridge)
    for table, line in bridge_rules(bridge) - before.rules:
        _delete_rule(table, line)
    route_localnet = Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet")
    if before.route_localnet is not None and _sysfs(str(route_localnet)) != before.route_localnet:
        route_localnet.write_text(before.route_localnet + "\n")
    if not before.pool_dir and pool.is_dir() and not any(pool.iterdir()):
        pool.rmdir()
    return [f"address {a} on {bridge}" for a in sorted(bridge_addresses(bridge) - before.addresses)] + [
        f"iptables -t {table} {line}" for table, line in sorted(bridge_rules(bridge) - before.rules)
    ]
