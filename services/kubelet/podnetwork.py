"""The pod network, kubenet style: the kubelet wires each pod sandbox itself.

The infra container is created with Docker's networking disabled (a fresh
network namespace with only `lo`), and the kubelet gives it an `eth0`: one
end of a veth pair whose other end joins the node's bridge, an address from
the pod CIDR, and a default route through the bridge. Docker's own bridge
networking re-executes dockerd twice per sandbox (its libnetwork-setkey hook
and "set-ipv6") and costs about half of the CPU Docker spends starting a
two-container pod here; this costs a few milliseconds.

Addresses come from a host-local pool (as CNI's host-local IPAM): one file
per address, created exclusively, naming its owner. Every kubelet on the host
shares the pool, so simulated nodes on one machine never hand out the same
address, and a restarted kubelet finds its pods' addresses again.

The pod range is the Node's `spec.podCIDR` (the API server's range allocator
gives every node its own /24 of the cluster range), so the network is
configured once the kubelet has read it; until then no pod gets an address
and the node reports NotReady, as Kubernetes' kubenet does. A kubelet without
an API server uses --pod-cidr. Pod traffic is masqueraded only when it leaves
the cluster range (--non-masquerade-cidr): a pod on another node sees the
sender's own address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from services.common.clusternet import DEFAULT_CLUSTER_CIDR
from services.common.log import get_logger

log = get_logger()

DEFAULT_POD_CIDR = "10.88.0.0/16"
DEFAULT_BRIDGE = "kyb0"
DEFAULT_STATE_DIR = "/var/lib/kybernetes/networks"
# The interface name of the pod's end of the veth pair, as Kubernetes pods see it.
POD_INTERFACE = "eth0"
# An allocation younger than this may belong to a sandbox still being made.
GC_MIN_AGE = 60.0
# Where the range comes from with an API server.
NODE_POD_CIDR = "the Node's spec.podCIDR"
# Files the kubelet writes for every pod on its network, by path in the container.
HOSTS_PATH = "/etc/hosts"
RESOLV_CONF_PATH = "/etc/resolv.conf"


class PodNetworkError(Exception):
    """The pod network could not be set up (a command failed, the pool is full)."""


@dataclass(frozen=True)
class Allocation:
    address: str
    node: str
    pod_uid: str


def read_allocations(directory: Path) -> list[Allocation]:
    """The allocations recorded in one bridge's pool directory."""
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            address = ipaddress.IPv4Address(entry.name)
            node, _, pod_uid = Path(entry.path).read_text().strip().partition(" ")
        except (ValueError, OSError):
            continue
        found.append(Allocation(str(address), node, pod_uid))
    return found


class AddressPool:
    """Host-local addresses: <directory>/<address> holds "<node> <pod uid>".

    One node's view: it indexes its own allocations (read from disk once) and
    learns of other nodes' only by finding their files taken."""

    def __init__(self, directory: Path, network: ipaddress.IPv4Network, node: str) -> None:
        self.directory = directory
        self.network = network
        self.node = node
        self.gateway = next(network.hosts())
        self._size = network.num_addresses
        self._cursor = 0
        self._by_pod: dict[str, str] | None = None

    def load(self) -> dict[str, str]:
        """This node's allocations by pod uid (read from disk the first time)."""
        if self._by_pod is None:
            self._by_pod = {a.pod_uid: a.address for a in self.allocations() if a.node == self.node}
        return self._by_pod

    def allocate(self, pod_uid: str) -> str:
        """The pod's address: the one it holds, else the next free one after the
        last handed out (so a freed address is not reused at once)."""
        own = self.load()
        if pod_uid in own:
            return own[pod_uid]
        self.directory.mkdir(parents=True, exist_ok=True)
        first = int(self.network.network_address)
        for step in range(1, self._size):
            offset = (self._cursor + step) % self._size
            address = ipaddress.IPv4Address(first + offset)
            if address == self.gateway or address in (self.network.network_address, self.network.broadcast_address):
                continue
            try:
                fd = os.open(self.directory / str(address), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as file:
                file.write(f"{self.node} {pod_uid}\n")
            self._cursor = offset
            own[pod_uid] = str(address)
            return str(address)
        raise PodNetworkError(f"pod network {self.network} has no free address")

    def allocations(self) -> list[Allocation]:
        return [a for a in read_allocations(self.directory) if ipaddress.IPv4Address(a.address) in self.network]

    def find(self, pod_uid: str) -> str | None:
        return self.load().get(pod_uid)

    def release(self, pod_uid: str) -> None:
        address = self.load().pop(pod_uid, None)
        if address is not None:
            self._remove(address)

    def release_unowned(self, live_pod_uids: set[str], min_age: float = GC_MIN_AGE) -> list[Allocation]:
        """Frees addresses whose pod has no container on this host any more
        (a kubelet that died before it could free them)."""
        freed = []
        now = time.time()
        for allocation in self.allocations():
            if allocation.pod_uid in live_pod_uids:
                continue
            try:
                age = now - (self.directory / allocation.address).stat().st_mtime
            except FileNotFoundError:
                continue
            if age >= min_age:
                self._remove(allocation.address)
                if allocation.node == self.node:
                    self.load().pop(allocation.pod_uid, None)
                freed.append(allocation)
        return freed

    def _remove(self, address: str) -> None:
        try:
            os.unlink(self.directory / address)
        except FileNotFoundError:
            pass


def release_node_addresses(nodes: set[str], state_dir: str = DEFAULT_STATE_DIR) -> int:
    """Frees every address the pods of these nodes hold, in every bridge's pool
    (their cluster was torn down); how many."""
    freed = 0
    for bridge_dir in Path(state_dir).glob("*"):
        for allocation in read_allocations(bridge_dir):
            if allocation.node in nodes:
                (bridge_dir / allocation.address).unlink(missing_ok=True)
                freed += 1
    return freed


def hosts_file(pod_ip: str, hostname: str) -> str:
    """The pod's /etc/hosts, as Kubernetes' kubelet writes it."""
    return (
        "# Kubernetes-managed hosts file.\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::0\tip6-localnet\n"
        "fe00::0\tip6-mcastprefix\n"
        "fe00::1\tip6-allnodes\n"
        "fe00::2\tip6-allrouters\n"
        f"{pod_ip}\t{hostname}\n"
    )


def resolv_conf(node_resolv_conf: str) -> str:
    """The node's resolv.conf without loopback name servers: a pod's loopback is its own."""
    kept = []
    for line in node_resolv_conf.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                if ipaddress.ip_address(fields[1].split("%")[0]).is_loopback:
                    continue
            except ValueError:
                pass
        kept.append(line)
    return "\n".join(kept) + "\n" if kept else ""


def parse_pod_cidr(cidr: str, source: str) -> ipaddress.IPv4Network:
    """source: where the range came from, for the error (the flag or the Node's field)."""
    try:
        network = ipaddress.IPv4Network(cidr)
    except ValueError as error:
        raise PodNetworkError(f"{source} {cidr!r}: {error}") from None
    if network.num_addresses < 4:
        raise PodNetworkError(f"{source} {cidr!r}: too small for a gateway and pods")
    return network


def _enable_ip_forwarding() -> None:
    # Docker turns it on already; in a container /proc/sys is read-only, so write only if off.
    path = Path("/proc/sys/net/ipv4/ip_forward")
    if path.read_text().strip() != "1":
        path.write_text("1\n")


def veth_name(sandbox_id: str) -> str:
    """The host end of a sandbox's veth pair (at most 15 characters, as Linux allows)."""
    return f"kv{sandbox_id[:12]}"


async def _run(*command: str, input_text: str | None = None, ok_if: tuple[str, ...] = ()) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE if input_text is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(input_text.encode() if input_text is not None else None)
    if process.returncode != 0:
        message = err.decode(errors="replace").strip()
        if any(text in message for text in ok_if):
            return ""
        raise PodNetworkError(f"{' '.join(command)}: {message or f'exit {process.returncode}'}")
    return out.decode(errors="replace")


class PodNetwork:
    """The node's pod network: its bridge, its address pool, each sandbox's veth.

    cidr None: not configured yet (the kubelet waits for its Node's podCIDR)."""

    def __init__(self, node: str, cidr: str | None = DEFAULT_POD_CIDR, bridge: str = DEFAULT_BRIDGE,
                 state_dir: str = DEFAULT_STATE_DIR, non_masquerade_cidr: str = DEFAULT_CLUSTER_CIDR) -> None:
        if not 0 < len(bridge) <= 15:
            raise PodNetworkError(f"--pod-bridge {bridge!r}: must be 1 to 15 characters")
        try:
            self.non_masquerade = ipaddress.IPv4Network(non_masquerade_cidr)
        except ValueError as error:
            raise PodNetworkError(f"--non-masquerade-cidr {non_masquerade_cidr!r}: {error}") from None
        self.node = node
        self.bridge = bridge
        self.state_dir = state_dir
        self._pool: AddressPool | None = None
        self._log = log.bind(node=node, bridge=bridge)
        if cidr is not None:
            self._pool = self._new_pool(cidr, "--pod-cidr")

    def _new_pool(self, cidr: str, source: str) -> AddressPool:
        network = parse_pod_cidr(cidr, source)
        return AddressPool(Path(self.state_dir) / self.bridge, network, self.node)

    @property
    def configured(self) -> bool:
        return self._pool is not None

    @property
    def pool(self) -> AddressPool:
        if self._pool is None:
            raise PodNetworkError("network is not ready: this node has no pod range (spec.podCIDR) yet")
        return self._pool

    @property
    def network(self) -> ipaddress.IPv4Network:
        return self.pool.network

    @property
    def gateway(self) -> str:
        return str(self.pool.gateway)

    async def configure(self, cidr: str) -> bool:
        """Sets the pod range (the Node's podCIDR) and sets the network up; True when
        this configured it. A range that changes later is ignored (Kubernetes never
        changes a Node's podCIDR; a new one needs a new Node and a kubelet restart)."""
        if self._pool is not None:
            if str(self._pool.network) != str(parse_pod_cidr(cidr, NODE_POD_CIDR)):
                self._log.warning("pod_cidr_change_ignored", pod_cidr=str(self._pool.network), new=cidr)
            return False
        self._pool = self._new_pool(cidr, NODE_POD_CIDR)
        await self.setup()
        return True

    async def setup(self) -> None:
        """The bridge with the gateway address, forwarding, and the iptables rules
        that let pods reach each other and the world. Idempotent; kubelets
        sharing the host share the bridge."""
        network = self.network
        await _run("ip", "link", "add", self.bridge, "type", "bridge", ok_if=("File exists",))
        await _run("ip", "addr", "replace", f"{self.gateway}/{network.prefixlen}", "dev", self.bridge)
        await _run("ip", "link", "set", self.bridge, "up")
        await asyncio.to_thread(_enable_ip_forwarding)
        comment = ["-m", "comment", "--comment", f"kybernetes pod network {self.bridge}"]
        rules = [
            # Docker sets FORWARD's policy to DROP; bridged pod traffic passes FORWARD too.
            ("filter", "FORWARD", ["-i", self.bridge, "-j", "ACCEPT"]),
            ("filter", "FORWARD", ["-o", self.bridge, "-j", "ACCEPT"]),
            # Pods reach beyond the cluster as the node; to other pods, on any node, as themselves.
            ("nat", "POSTROUTING", ["-s", str(network), "!", "-d", str(self.non_masquerade), "!", "-o", self.bridge,
                                    "-j", "MASQUERADE"]),
        ]
        for table, chain, rule in rules:
            try:
                await _run("iptables", "-w", "-t", table, "-C", chain, *rule, *comment)
            except PodNetworkError:
                await _run("iptables", "-w", "-t", table, "-I", chain, "1", *rule, *comment)
        await asyncio.to_thread(self.pool.load)
        self._log.info("pod_network_ready", pod_cidr=str(network), gateway=self.gateway,
                       non_masquerade_cidr=str(self.non_masquerade))

    async def address_for(self, pod_uid: str) -> str:
        return await asyncio.to_thread(self.pool.allocate, pod_uid)

    async def release(self, pod_uid: str) -> None:
        if self._pool is None:
            return  # nothing handed out yet; an address from before a restart is collected once configured
        await asyncio.to_thread(self._pool.release, pod_uid)

    def attached(self, sandbox_id: str) -> bool:
        # By name in this process's network namespace (/sys/class/net shows the one
        # sysfs was mounted in, which is the host's for a kubelet run with nsenter --net).
        try:
            socket.if_nametoindex(veth_name(sandbox_id))
        except OSError:
            return False
        return True

    async def attach(self, sandbox_id: str, pid: int, address: str) -> None:
        """Gives the running sandbox (its process `pid`) eth0 with `address`."""
        veth = veth_name(sandbox_id)
        if self.attached(sandbox_id):
            # Left half-made by a crash: start again (the peer goes with it).
            await _run("ip", "link", "del", veth, ok_if=("Cannot find device",))
        await _run(
            "ip", "-batch", "-",
            input_text=(
                f"link add {veth} type veth peer name {POD_INTERFACE} netns {pid}\n"
                f"link set {veth} master {self.bridge} up\n"
                # Hairpin: a pod that reaches its own service and is picked as the
                # endpoint gets the packet back through its own port (Kubernetes'
                # --hairpin-mode=hairpin-veth); the bridge would otherwise drop it.
                f"link set {veth} type bridge_slave hairpin on\n"
                # The address may have served a pod that is gone: forget its old MAC,
                # or the host keeps sending to it until the entry goes stale (~30 s).
                f"neigh flush to {address} dev {self.bridge}\n"
            ),
        )
        await _run(
            "nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-batch", "-",
            input_text=(
                f"addr add {address}/{self.network.prefixlen} dev {POD_INTERFACE}\n"
                f"link set {POD_INTERFACE} up\n"
                f"route add default via {self.gateway}\n"
            ),
        )

    async def write_pod_files(
        self, pod_dir: str, pod_ip: str, hostname: str, resolv_conf_text: str | None = None
    ) -> dict[str, str]:
        """Writes the pod's hosts file and resolv.conf into its directory; their
        host paths by path in the container.

        resolv_conf_text: the pod's resolv.conf (resolvconf.py, from its dnsPolicy);
        None: the node's, less loopback name servers."""

        def write() -> dict[str, str]:
            text = resolv_conf_text
            if text is None:
                try:
                    text = resolv_conf(Path("/etc/resolv.conf").read_text())
                except OSError:
                    text = ""
            files = {HOSTS_PATH: (os.path.join(pod_dir, "etc-hosts"), hosts_file(pod_ip, hostname)),
                     RESOLV_CONF_PATH: (os.path.join(pod_dir, "resolv.conf"), text)}
            os.makedirs(pod_dir, exist_ok=True)
            for path, text in files.values():
                Path(path).write_text(text)
            return {target: path for target, (path, _) in files.items()}

        return await asyncio.to_thread(write)

    async def collect_garbage(self, live_pod_uids: set[str]) -> None:
        if self._pool is None:
            return
        for allocation in await asyncio.to_thread(self.pool.release_unowned, live_pod_uids):
            self._log.info("pod_address_released_unowned", address=allocation.address, pod_uid=allocation.pod_uid,
                           owner=allocation.node)
