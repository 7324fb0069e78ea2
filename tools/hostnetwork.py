"""Simulated nodes as hosts: a network namespace per node on a bridge standing for the LAN.

`make up NODES=N` (N >= 2) turns this machine into a small LAN: a switch (a
bridge in a network namespace of its own, named after the LAN), the host
wired to it by a veth pair as the LAN's router at the first address, and per
node a network namespace (its own interfaces, routes, netfilter tables and
sysctls) wired to the switch by a veth pair, with the next address of the LAN
and a default route through the host. The switch has a namespace of its own
because Docker turns on bridge-nf-call-iptables in the host's: a bridge there
would run every frame between two nodes through the host's netfilter (Docker's
rules, the host proxy's table, connection tracking); in the switch's namespace
it is off, and a frame is only switched, as on a real LAN (bench.crossnode:
6 % less CPU per connection and per byte between nodes). The node's
kubelet and proxy run inside it (`nsenter --net`); Docker, whose socket is a
file, is reached from anywhere. Each kubelet makes its pod bridge inside its
namespace and each proxy its table and the routes to the other nodes' pod
ranges, exactly as on separate machines.

The host forwards between the LAN and the world, masquerading the LAN, but
never routes a pod address out: the pod range is unreachable from it except
through a node's route (the service range is its proxy's: make up runs one in
the root namespace too, which answers or refuses every service address).

Everything made here is named from the bridge and the node names, so `remove`
finds it again after a crash; a namespace's own contents (bridges, veths,
tables, routes) go with the namespace.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass

from services.common.clusternet import DEFAULT_CLUSTER_CIDR

DEFAULT_BRIDGE = "kyb-lan"
# The bridge inside the switch's namespace, and the switch's end of the host's wire.
SWITCH_BRIDGE = "lan"
SWITCH_HOST_PORT = "host"
# Clear of the pod range (10.244.0.0/16), the services (10.96.0.0/12), the static-pod bridge
# (10.88.0.0/16) and Docker's bridges (172.17.0.0/16 and up).
DEFAULT_NETWORK = "10.240.0.0/24"
NETNS_DIR = "/run/netns"
# A metric above anything a real route carries: a more specific or equal route always wins.
GUARD_METRIC = 4242


class HostNetworkError(Exception):
    """A command that sets up or removes the host network failed."""


def run(*command: str, ok_if: tuple[str, ...] = ()) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        if any(text in message for text in ok_if):
            return ""
        raise HostNetworkError(f"{shlex.join(command)}: {message or f'exit {result.returncode}'}")
    return result.stdout


@dataclass(frozen=True)
class HostNetwork:
    bridge: str = DEFAULT_BRIDGE
    network: str = DEFAULT_NETWORK
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR

    def __post_init__(self) -> None:
        net = ipaddress.IPv4Network(self.network)
        if net.num_addresses < 4:
            raise ValueError(f"host network {self.network}: too small for the host and a node")
        if not 0 < len(self.bridge) <= 15:
            raise ValueError(f"host bridge {self.bridge!r}: must be 1 to 15 characters")

    @property
    def gateway(self) -> str:
        """The host's address on the LAN: where the nodes find the API server and the cluster DNS."""
        return str(ipaddress.IPv4Network(self.network)[1])

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.network).prefixlen

    def node_address(self, index: int) -> str:
        """Node `index` (0-based) is the LAN's address 2 + index."""
        net = ipaddress.IPv4Network(self.network)
        address = net[2 + index]
        if address == net.broadcast_address:
            raise ValueError(f"host network {self.network} has no address for node {index + 1}")
        return str(address)

    def namespace(self, node: str) -> str:
        return f"{self.bridge}-{node}"

    @property
    def switch(self) -> str:
        """The switch's network namespace (named after the LAN; the host's end of its wire too)."""
        return self.bridge

    def veth(self, node: str) -> str:
        """The host end of the node's wire (at most 15 characters, as Linux allows)."""
        return "kyv" + hashlib.sha256(self.namespace(node).encode()).hexdigest()[:11]

    def exec_prefix(self, node: str) -> list[str]:
        """How a command runs inside the node: in its network namespace, nothing else changed
        (the kubelet's tmpfs mounts must be the host's, which Docker sees)."""
        return ["nsenter", f"--net={NETNS_DIR}/{self.namespace(node)}", "--"]

    def _comment(self) -> list[str]:
        return ["-m", "comment", "--comment", f"kybernetes host network {self.bridge}"]

    def _host_rules(self) -> list[tuple[str, str, list[str]]]:
        return [
            # Docker sets FORWARD's policy to DROP: the LAN's traffic to and from the nodes.
            ("filter", "FORWARD", ["-i", self.bridge, "-j", "ACCEPT"]),
            ("filter", "FORWARD", ["-o", self.bridge, "-j", "ACCEPT"]),
            # The nodes reach the world as the host, as a home router's LAN does.
            ("nat", "POSTROUTING", ["-s", self.network, "!", "-o", self.bridge, "-j", "MASQUERADE"]),
        ]

    def _guard_route(self) -> list[str]:
        # Unreachable, never the default route: a pod address no node's route claims
        # gets an ICMP error here instead of leaving the machine.
        return ["unreachable", self.cluster_cidr, "metric", str(GUARD_METRIC)]

    # -- the host ---------------------------------------------------------------------

    def ensure_host(self) -> None:
        """The switch, the host's wire to it with the host's address, forwarding, NAT out, and
        the guard. Idempotent."""
        if os.path.exists(f"/sys/class/net/{self.bridge}/bridge"):
            run("ip", "link", "del", self.bridge)  # an older layout's bridge in the host's namespace
        run("ip", "netns", "add", self.switch, ok_if=("File exists",))
        in_switch = ("ip", "-n", self.switch)
        run(*in_switch, "link", "add", SWITCH_BRIDGE, "type", "bridge", ok_if=("File exists",))
        run(*in_switch, "link", "set", SWITCH_BRIDGE, "up")
        for table in ("iptables", "ip6tables", "arptables"):
            # Only with br_netfilter loaded do these exist; without it nothing hooks bridged frames.
            run("ip", "netns", "exec", self.switch, "sysctl", "-qw", f"net.bridge.bridge-nf-call-{table}=0",
                ok_if=("No such file", "cannot stat"))
        if not os.path.exists(f"/sys/class/net/{self.bridge}"):
            run("ip", "link", "add", self.bridge, "type", "veth", "peer", "name", SWITCH_HOST_PORT,
                "netns", self.switch)
        run(*in_switch, "link", "set", SWITCH_HOST_PORT, "master", SWITCH_BRIDGE, "up")
        run("ip", "addr", "replace", f"{self.gateway}/{self.prefixlen}", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        with open("/proc/sys/net/ipv4/ip_forward") as forward:
            if forward.read().strip() != "1":
                run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for table, chain, rule in self._host_rules():
            try:
                run("iptables", "-w", "-t", table, "-C", chain, *rule, *self._comment())
            except HostNetworkError:
                run("iptables", "-w", "-t", table, "-I", chain, "1", *rule, *self._comment())
        run("ip", "route", "replace", *self._guard_route())

    def remove_host(self) -> None:
        for table, chain, rule in self._host_rules():
            run("iptables", "-w", "-t", table, "-D", chain, *rule, *self._comment(),
                ok_if=("does a matching rule exist", "Bad rule", "No chain"))
        run("ip", "route", "del", *self._guard_route(), ok_if=("No such process",))
        run("ip", "link", "del", self.bridge, ok_if=("Cannot find device",))
        if os.path.exists(f"{NETNS_DIR}/{self.switch}"):
            run("ip", "netns", "del", self.switch, ok_if=("No such file",))

    # -- the nodes ---------------------------------------------------------------------

    def ensure_node(self, node: str, index: int) -> str:
        """The node's namespace wired to the LAN at its address; its address. Idempotent."""
        namespace, veth, address = self.namespace(node), self.veth(node), self.node_address(index)
        run("ip", "netns", "add", namespace, ok_if=("File exists",))
        in_switch = ("ip", "-n", self.switch)
        try:
            run(*in_switch, "link", "show", veth)
        except HostNetworkError:
            run(*in_switch, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        run(*in_switch, "link", "set", veth, "master", SWITCH_BRIDGE, "up")
        inside = ("ip", "-n", namespace)
        run(*inside, "addr", "replace", f"{address}/{self.prefixlen}", "dev", "eth0")
        run(*inside, "link", "set", "eth0", "up")
        run(*inside, "link", "set", "lo", "up")
        run(*inside, "route", "replace", "default", "via", self.gateway)
        # A node forwards its pods' traffic (sysctls under net/ are the namespace's own).
        run(*self.exec_prefix(node), "sysctl", "-qw", "net.ipv4.ip_forward=1")
        return address

    def remove_node(self, node: str) -> None:
        """Stops whatever still runs in the node's namespace, then deletes it (and with it
        everything inside: the pod bridge, the veths, the tables and routes)."""
        namespace = self.namespace(node)
        if not os.path.exists(f"{NETNS_DIR}/{namespace}"):
            return
        kill_namespace_processes(namespace)
        run("ip", "netns", "del", namespace, ok_if=("No such file",))
        if os.path.exists(f"{NETNS_DIR}/{self.switch}"):  # the wire's other end, if it outlived the node
            run("ip", "-n", self.switch, "link", "del", self.veth(node), ok_if=("Cannot find device",))

    def namespaces(self) -> list[str]:
        """The node namespaces on this bridge that exist now (a dead cluster's included)."""
        prefix = f"{self.bridge}-"
        try:
            return sorted(name for name in os.listdir(NETNS_DIR) if name.startswith(prefix))
        except FileNotFoundError:
            return []


def remove_commented_rules(comment: str) -> int:
    """Deletes every iptables rule (any table, any chain) carrying this comment; how many.
    The kubelet's pod network rules are found this way after its bridge is gone."""
    removed = 0
    for table in ("filter", "nat"):
        for line in run("iptables-save", "-t", table).splitlines():
            if line.startswith("-A ") and f'--comment "{comment}"' in line:
                run("iptables", "-w", "-t", table, *shlex.split("-D" + line[2:]), ok_if=("does a matching rule exist",))
                removed += 1
    return removed


def remove_pod_bridge(bridge: str) -> None:
    """A root-namespace node's pod bridge and its kubelet's rules (services/kubelet/podnetwork.py)."""
    remove_commented_rules(f"kybernetes pod network {bridge}")
    run("ip", "link", "del", bridge, ok_if=("Cannot find device",))


def kill_namespace_processes(namespace: str, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, to every process in the namespace (what a dead `up` left)."""
    def pids() -> list[int]:
        output = run("ip", "netns", "pids", namespace, ok_if=("No such file",))
        return [int(pid) for pid in output.split()]

    for pid in pids():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
