"""The behaviour every kube-proxy mode gives a pod, against the real kernel; shared by the mode files.

test_proxy_nftables.py, test_proxy_iptables.py and test_proxy_userspace.py each
name their mode (a `mode` fixture) and import the fixtures and the `test_*`
functions of this module, so the same tests run against all three; each file
adds the tests of what is its mode's own.

The pods are network namespaces (`kybtest-<id>-b1..b3`, a client `-c`) on a bridge
of the test's own (`kybt-<id>`, 10.200.<n>.0/24: outside the pod network's
10.88.0.0/16 and the service range 10.96.0.0/12), each backend running a tiny
identity server: it answers "<name> <peer address>" (then echoes; over UDP too).
Services get cluster IPs from 10.150.<n>.0/24, the proxy's --service-cluster-ip-range:
outside 10.96.0.0/12, where a `make up` cluster's proxy on the same kernel would
refuse them too (which table's filter hook refuses first depends on the order
the hooks were registered in; the client sees the same, the counters do not).
The process test needs addresses the API server accepts: 10.100.<n>.0/24.
The clients are the host (the output hook) and the client namespace (the
prerouting hook). The proxier runs in-process (`Harness`), fed Service and
Endpoints objects as its informers would; one test runs the real `kube-proxy`
process against the API server and ends with `kube-proxy --cleanup`.

Where the modes differ, each test asserts the mode's documented behaviour:
- the source a backend sees: the pod's own address in the kernel modes (only
  hairpin, node port and host connections are masqueraded, to the node's
  address on the bridge); always the node's address in userspace mode (the
  relay's own connection);
- the spread: a random pick in the kernel modes (each backend gets some), an
  exact rotation in userspace mode;
- an endpoint that refuses: the kernel modes send it its share, refused; the
  userspace relay skips it and the client never notices.

Safety: a watch table of the test's own counts and drops, after everything
else in postrouting, any packet still addressed into the service range or any
packet for the test's pods leaving through eth0; both counters must stay 0.
Teardown removes and then checks the absence of every table, chain, namespace,
link, iptables rule and route the module made, and puts route_localnet back.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

from kybernetes.v1 import endpoints_pb2, meta_pb2, proxy_pb2, proxy_pb2_grpc, service_pb2
from services.common.client import ApiClient
from services.common.transport import aio_channel
from services.common.resources import SERVICES
from services.proxy import iptables, nftables
from services.proxy.iptproxier import IptablesOptions, IptablesProxier, cleanup_chains
from services.proxy.nftproxier import ROUTE_LOCALNET, NftOptions, NftProxier, cleanup
from services.proxy.proxier import ProxyOptions
from services.proxy.userspace import UserspaceProxier
from tests.polling import eventually
from tools.processes import (
    REPO,
    ManagedProcess,
    component_security_flags,
    dev_pki,
    free_port,
    python_module_argv,
    wait_for_port,
)

__all__ = [  # what each mode file collects: the fixtures and the shared tests
    "proxier",
    "testnet",
    "test_cluster_ip_reaches_a_backend_from_the_host_and_from_a_pod",
    "test_thirty_connections_spread_over_three_backends",
    "test_removed_endpoint_gets_no_new_connections_and_open_ones_carry_on",
    "test_service_without_endpoints_is_refused_at_once",
    "test_unallocated_service_address_is_refused_and_never_leaves",
    "test_hairpin_a_pod_reaching_its_own_service_lands_on_itself",
    "test_node_port_on_the_node_address",
    "test_client_ip_affinity_pins_each_client",
    "test_an_endpoint_that_refuses",
    "test_udp_through_the_cluster_ip",
    "test_a_refused_transaction_leads_to_a_full_rebuild",
    "test_deleted_or_flushed_rules_are_rebuilt",
    "test_a_burst_of_1000_endpoint_changes_makes_few_transactions",
    "test_kube_proxy_process_follows_the_api_server_and_cleans_up",
]

NAMESPACE = "proxy-modes-test"
BACKEND_PORT = 8080
WAIT = 20.0
REFUSED_WITHIN = 1.0  # seconds: a refusal is a reset, not a timeout
BACKENDS = ("b1", "b2", "b3")
KERNEL_MODES = ("nftables", "iptables")

IDENTITY_SERVER = r"""
import socket, sys, threading
name, port = sys.argv[1], int(sys.argv[2])
def datagrams():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    while True:
        data, peer = udp.recvfrom(65536)
        udp.sendto(f"{name} {peer[0]} ".encode() + data, peer)
threading.Thread(target=datagrams, daemon=True).start()
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", port))
server.listen(256)
print("ready", flush=True)
def serve(conn, peer):
    with conn:
        conn.sendall(f"{name} {peer[0]}\n".encode())
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)
while True:
    conn, peer = server.accept()
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
"""

CLIENT = r"""
import json, socket, sys, time
host, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
results = []
for _ in range(count):
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
        results.append({"reply": data.decode().strip(), "seconds": time.monotonic() - started})
    except OSError as error:
        results.append({"error": type(error).__name__, "seconds": time.monotonic() - started})
print(json.dumps(results))
"""


UDP_CLIENT = r"""
import json, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
results = []
for index in range(count):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.connect((host, port))  # replies must come from the address asked
        try:
            sock.send(f"ping{index}".encode())
            results.append({"reply": sock.recv(65536).decode()})
        except OSError as error:
            results.append({"error": type(error).__name__})
print(json.dumps(results))
"""


def sh(*command: str, check: bool = True, input_text: str | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, input=input_text, timeout=60)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result.stdout


def nft_tables() -> list[str]:
    return [line.strip() for line in sh("nft", "list", "tables").splitlines() if line.strip()]


def counter(table: str, chain: str) -> int:
    """Packets counted by the counters of one chain of an nftables table."""
    data = json.loads(sh("nft", "-j", "list", "chain", "ip", table, chain))
    total = 0
    for item in data["nftables"]:
        for expression in item.get("rule", {}).get("expr", []):
            if "counter" in expression:
                total += expression["counter"]["packets"]
    return total


def iptables_packets(table: str, chain: str) -> int:
    """Packets matched by the rules of one iptables chain."""
    lines = sh("iptables", "-w", "-t", table, "-L", chain, "-v", "-x", "-n").splitlines()[2:]
    return sum(int(line.split()[0]) for line in lines if line.strip())


def iptables_lines(tag: str) -> list[str]:
    """The lines of `iptables-save` that name a chain of the node with this tag."""
    return [line for line in sh("iptables-save").splitlines() if tag in line]


# The test network ----------------------------------------------------------------------------


@dataclass
class PodNet:
    id: str
    subnet: int
    bridge: str
    namespaces: dict[str, str]  # short name -> netns name
    addresses: dict[str, str]  # short name -> address
    veths: list[str]
    servers: list[subprocess.Popen] = field(default_factory=list)
    cluster_ips: Iterator[int] = field(default_factory=lambda: iter(range(10, 200)))
    api_cluster_ips: Iterator[int] = field(default_factory=lambda: iter(range(10, 200)))

    @property
    def gateway(self) -> str:
        return f"10.200.{self.subnet}.1"

    @property
    def pod_cidr(self) -> str:
        return f"10.200.{self.subnet}.0/24"

    @property
    def service_cidr(self) -> str:
        return f"10.150.{self.subnet}.0/24"

    @property
    def api_service_cidr(self) -> str:
        """Cluster IPs in the API server's default range (the process test's)."""
        return f"10.100.{self.subnet}.0/24"

    @property
    def unallocated_ip(self) -> str:
        return f"10.150.{self.subnet}.250"

    @property
    def node(self) -> str:
        return f"kybtest-{self.id}"

    @property
    def watch_table(self) -> str:
        return f"kybt-watch-{self.id}"

    def next_cluster_ip(self) -> str:
        return f"10.150.{self.subnet}.{next(self.cluster_ips)}"

    def next_api_cluster_ip(self) -> str:
        return f"10.100.{self.subnet}.{next(self.api_cluster_ips)}"

    def ns_connect(self, client: str, host: str, port: int, count: int = 1, timeout: float = 3.0) -> list[dict]:
        """count connections from a namespace: {"reply": "<name> <peer>"} or {"error": ...}, with seconds."""
        out = sh("ip", "netns", "exec", self.namespaces[client], sys.executable, "-c", CLIENT,
                 host, str(port), str(count), str(timeout))
        return json.loads(out)

    def ns_datagrams(self, client: str, host: str, port: int, count: int = 1) -> list[dict]:
        """count datagrams from a namespace, each from a new socket: {"reply": ...} or {"error": ...}."""
        out = sh("ip", "netns", "exec", self.namespaces[client], sys.executable, "-c", UDP_CLIENT,
                 host, str(port), str(count))
        return json.loads(out)


def _iptables_comment(net: PodNet) -> str:
    return f"kybernetes proxy test {net.id}"


def _iptables_rules(net: PodNet) -> list[list[str]]:
    comment = ["-m", "comment", "--comment", _iptables_comment(net)]
    return [["FORWARD", flag, net.bridge, *comment, "-j", "ACCEPT"] for flag in ("-i", "-o")]


def _free_subnet() -> int:
    routes = sh("ip", "-4", "route", "show", "table", "all")
    candidates = [n for n in range(1, 255) if not any(f"10.{b}.{n}." in routes for b in (200, 150, 100))]
    return random.choice(candidates)


def _plan_net() -> PodNet:
    test_id = uuid.uuid4().hex[:6]
    subnet = _free_subnet()
    return PodNet(
        id=test_id, subnet=subnet, bridge=f"kybt-{test_id}",
        namespaces={name: f"kybtest-{test_id}-{name}" for name in (*BACKENDS, "c")},
        addresses={name: f"10.200.{subnet}.{10 + i}" for i, name in enumerate((*BACKENDS, "c"))},
        veths=[f"kt{test_id}{name}" for name in (*BACKENDS, "c")],
    )


def _make_net(net: PodNet) -> None:
    sh("ip", "link", "add", net.bridge, "type", "bridge")
    sh("ip", "addr", "add", f"{net.gateway}/24", "dev", net.bridge)
    sh("ip", "link", "set", net.bridge, "up")
    # Docker sets FORWARD's policy to DROP; bridged and routed pod traffic passes FORWARD (as the kubelet's kyb0).
    for rule in _iptables_rules(net):
        sh("iptables", "-w", "-I", *rule)
    for (name, netns), veth in zip(net.namespaces.items(), net.veths, strict=True):
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("ip", "link", "set", veth, "master", net.bridge, "up")
        # As Kubernetes' kubelet does (--hairpin-mode=hairpin-veth): with bridge-nf-call-iptables,
        # a pod's connection DNATed back to itself leaves the bridge by the port it came in by.
        sh("ip", "link", "set", veth, "type", "bridge_slave", "hairpin", "on")
        sh("ip", "-n", netns, "addr", "add", f"{net.addresses[name]}/24", "dev", "eth0")
        sh("ip", "-n", netns, "link", "set", "eth0", "up")
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        sh("ip", "-n", netns, "route", "add", "default", "via", net.gateway)
    for name in BACKENDS:
        server = subprocess.Popen(
            ["ip", "netns", "exec", net.namespaces[name], sys.executable, "-c", IDENTITY_SERVER, name,
             str(BACKEND_PORT)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        net.servers.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    # The safety net: after every other postrouting chain, nothing for the service range or
    # for our pods may go on, and nothing for our pods may leave by eth0.
    sh("nft", "-f", "-", input_text=(
        f"add table ip {net.watch_table}\n"
        f"add chain ip {net.watch_table} leak {{ type filter hook postrouting priority 300; policy accept; }}\n"
        f"add rule ip {net.watch_table} leak ip daddr {{ {net.service_cidr}, {net.api_service_cidr} }} counter drop\n"
        f"add rule ip {net.watch_table} leak oifname \"eth0\" ip daddr {net.pod_cidr} counter drop\n"
    ))


def _teardown(net: PodNet) -> list[str]:
    """Removes everything; returns what could not be removed."""
    problems = []
    for server in net.servers:  # started by us: ended by their pid
        server.kill()
        server.wait(10)
    for veth in net.veths:
        sh("ip", "link", "del", veth, check=False)
    for netns in net.namespaces.values():
        sh("ip", "netns", "del", netns, check=False)
    sh("ip", "link", "del", net.bridge, check=False)
    for rule in _iptables_rules(net):
        sh("iptables", "-w", "-D", *rule, check=False)
    sh("nft", "delete", "table", "ip", net.watch_table, check=False)
    links = sh("ip", "-br", "link")
    problems += [f"link {name} left" for name in [net.bridge, *net.veths] if name in links]
    problems += [f"netns {name} left" for name in net.namespaces.values() if name in sh("ip", "netns", "list")]
    if _iptables_comment(net) in sh("iptables", "-w", "-S", "FORWARD"):
        problems.append("iptables rule left")
    problems += [f"nft {table} left" for table in nft_tables() if net.id in table]
    problems += [f"iptables: {line}" for line in iptables_lines(iptables.node_tag(net.node))]
    if any(f"10.{b}.{net.subnet}." in sh("ip", "-4", "route", "show", "table", "all") for b in (200, 150, 100)):
        problems.append("route left")
    return problems


def read_text(path: str | os.PathLike) -> str:
    with open(path) as file:
        return file.read().strip()


@pytest.fixture(scope="module")
def testnet() -> Iterator[PodNet]:
    route_localnet = read_text(ROUTE_LOCALNET)
    assert read_text("/proc/sys/net/ipv4/ip_forward") == "1", "IP forwarding is off (the kubelet turns it on)"
    net = _plan_net()
    try:
        _make_net(net)
        yield net
        # Nothing reached the safety net: the proxy's own rules refused it all first.
        assert counter(net.watch_table, "leak") == 0, sh("nft", "list", "table", "ip", net.watch_table)
    finally:
        problems = _teardown(net)
        with open(ROUTE_LOCALNET, "w") as file:
            file.write(route_localnet + "\n")
        assert read_text(ROUTE_LOCALNET) == route_localnet
        assert problems == []


# The proxier under test ----------------------------------------------------------------------


def make_service(
    net: PodNet, name: str, *, node_port: int = 0, affinity: str = "", cluster_ip: str | None = None,
    udp: bool = False,
) -> service_pb2.Service:
    ports = [service_pb2.ServicePort(name="http", port=80, protocol="TCP", node_port=node_port)]
    if udp:
        ports.append(service_pb2.ServicePort(name="dns", port=53, protocol="UDP"))
    return service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=name),
        spec=service_pb2.ServiceSpec(
            cluster_ip=cluster_ip or net.next_cluster_ip(),
            type="NodePort" if node_port else "ClusterIP",
            session_affinity=affinity,
            ports=ports,
        ),
    )


def make_endpoints(net: PodNet, name: str, backends: list[str] | tuple[str, ...], *,
                   namespace: str = NAMESPACE, refusing: tuple[str, ...] = ()) -> endpoints_pb2.Endpoints:
    """Ready endpoints on the backends' port; `refusing` ones at a port nothing listens on."""
    subsets = []
    for addresses, port in ((backends, BACKEND_PORT), (refusing, BACKEND_PORT + 1)):
        if addresses:
            subsets.append(endpoints_pb2.EndpointSubset(
                addresses=[endpoints_pb2.EndpointAddress(ip=net.addresses[b]) for b in addresses],
                ports=[endpoints_pb2.EndpointPort(name="http", port=port, protocol="TCP"),
                       endpoints_pb2.EndpointPort(name="dns", port=port, protocol="UDP")],
            ))
    return endpoints_pb2.Endpoints(metadata=meta_pb2.ObjectMeta(namespace=namespace, name=name), subsets=subsets)


class Harness:
    """One mode's data path, in-process, with what the tests ask of each mode."""

    def __init__(self, mode: str, net: PodNet, *, bind_address: str = "127.0.0.1", **overrides: Any) -> None:
        self.mode = mode
        self.net = net
        common: dict[str, Any] = dict(
            node_name=net.node, service_cidr=net.service_cidr, node_ips=(net.gateway, "127.0.0.1"),
            min_sync_period=0.01, sync_period=0.3, retry_initial=0.05, retry_max=0.5,
        )
        common.update(overrides)
        self.proxier: NftProxier | IptablesProxier | UserspaceProxier
        if mode == "nftables":
            self.proxier = NftProxier(NftOptions(**common))
        elif mode == "iptables":
            self.proxier = IptablesProxier(IptablesOptions(**common))
        else:
            relay = ProxyOptions(bind_address=bind_address, connect_timeout=0.5, bind_retry_initial=0.05)
            self.proxier = UserspaceProxier(relay, NftOptions(**common))
        self.tag = iptables.node_tag(net.node)
        self.table = nftables.table_name(net.node)
        self._task: asyncio.Task | None = None

    @property
    def runner(self) -> NftProxier | IptablesProxier:
        """The sync runner (the userspace mode's: its portals)."""
        return self.proxier.portals if isinstance(self.proxier, UserspaceProxier) else self.proxier

    async def start(self) -> None:
        self.proxier.mark_synced()
        self._task = asyncio.create_task(self.proxier.run(), name=f"proxier-{self.mode}")

    async def halt(self) -> None:
        """Stops the runner, leaving the rules in place (as a proxy process that ended)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def stop(self) -> None:
        """Stops the proxier, removes its rules, and checks that nothing of this node is left."""
        await self.halt()
        await self.proxier.shutdown(0.5)
        await cleanup(self.table)
        await cleanup_chains(self.net.node)
        assert f"table ip {self.table}" not in nft_tables()
        assert iptables_lines(self.tag) == []

    async def wait(self) -> None:
        await self.proxier.wait_installed(timeout=WAIT)

    async def serve(self, name: str, backends: tuple[str, ...] = BACKENDS, *, refusing: tuple[str, ...] = (),
                    **service_args: Any) -> service_pb2.Service:
        service = make_service(self.net, name, **service_args)
        self.proxier.on_endpoints_event("ADDED", make_endpoints(self.net, name, backends, refusing=refusing))
        self.proxier.on_service_event("ADDED", service)
        await self.wait()
        return service

    async def set_endpoints(self, name: str, backends: tuple[str, ...]) -> None:
        self.proxier.on_endpoints_event("MODIFIED", make_endpoints(self.net, name, backends))
        await self.wait()

    def rules(self) -> str:
        if self.mode == "iptables":
            return "\n".join(iptables_lines(self.tag))
        return sh("nft", "list", "table", "ip", self.table)

    def programs(self, ip: str, port: int) -> bool:
        """Whether the kernel sends ip:port/tcp on (to the endpoints, or to the relay)."""
        if self.mode == "iptables":
            return f"-d {ip}/32 -p tcp -m tcp --dport {port} " in self.rules()
        chain = "portal-" if self.mode == "userspace" else "service-"
        return f"{ip} . tcp . {port} : goto {chain}" in self.rules()

    def refusals(self, kind: str) -> int:
        """Packets refused so far: kind is "no-endpoints", "unknown-port" or "unallocated"."""
        if self.mode == "iptables":
            return iptables_packets("filter", f"KYB-{kind.upper()}-{self.tag}")
        return counter(self.table, f"reject-{kind}")

    def pinned(self, address: str) -> bool:
        """Whether ClientIP affinity remembers the client address."""
        if self.mode == "iptables":
            recent = "/proc/net/xt_recent"
            files = [name for name in os.listdir(recent) if name.endswith(f"-{self.tag}")]
            return any(f"src={address} " in read_text(os.path.join(recent, name)) for name in files)
        if isinstance(self.proxier, UserspaceProxier):
            return any(port.balancer.pinned(address) for port in self.proxier.relay.ports.values())
        return address in self.rules()

    def tamper(self, ip: str) -> None:
        """Removes the service's cluster IP rule behind the proxier's back."""
        if self.mode == "iptables":
            prefix = f"-A KYB-SERVICES-{self.tag} -d {ip}/32 "
            [line] = [line for line in sh("iptables-save", "-t", "nat").splitlines() if line.startswith(prefix)]
            sh("iptables", "-w", "-t", "nat", "-D", *shlex.split(line)[1:])
        else:
            sh("nft", "delete", "element", "ip", self.table, nftables.SERVICE_IPS, f"{{ {ip} . tcp . 80 }}")

    def damage(self, how: str) -> None:
        """Deletes ("delete": the table, a built-in chain's jump) or flushes ("flush") the rules."""
        if self.mode != "iptables":
            sh("nft", how, "table", "ip", self.table)
            return
        config = iptables.Config(node=self.net.node)
        if how == "delete":
            jump = next(j for j in iptables.jumps(config) if (j.table, j.chain) == ("nat", "OUTPUT"))
            sh("iptables", "-w", "-t", jump.table, "-D", jump.chain, *shlex.split(jump.rule))
        else:
            sh("iptables", "-w", "-t", "filter", "-F", config.firewall)

    def seen_from(self, client: str) -> str:
        """The source address a backend sees for a connection from a pod to a cluster IP."""
        return self.net.gateway if self.mode == "userspace" else self.net.addresses[client]


@pytest.fixture
async def proxier(testnet: PodNet, mode: str):
    harness = Harness(mode, testnet)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


async def host_connect(host: str, port: int, timeout: float = 3.0) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        return (await asyncio.wait_for(reader.readline(), timeout)).decode().strip()
    finally:
        writer.close()


async def host_refused(host: str, port: int) -> float:
    """Seconds until the host's connect was refused (fails if it was not)."""
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await host_connect(host, port, timeout=5.0)
    return time.monotonic() - started


def names(replies: list[str]) -> list[str]:
    return [reply.split()[0] for reply in replies]


def spread(replies: list[str]) -> dict[str, int]:
    return {name: names(replies).count(name) for name in BACKENDS}


# The behaviour, in every mode ----------------------------------------------------------------


async def test_cluster_ip_reaches_a_backend_from_the_host_and_from_a_pod(proxier, testnet):
    service = await proxier.serve("one", ("b1",))
    ip = service.spec.cluster_ip
    # The host's own connection is masqueraded (or relayed): the pod sees the bridge's address.
    assert await host_connect(ip, 80) == f"b1 {testnet.gateway}"
    # A pod's connection keeps its source address in the kernel modes; the relay's own in userspace.
    [result] = await asyncio.to_thread(testnet.ns_connect, "c", ip, 80)
    assert result.get("reply") == f"b1 {proxier.seen_from('c')}", result
    assert proxier.programs(ip, 80)
    [port] = proxier.proxier.status()
    assert port.listening and list(port.endpoints) == [f"{testnet.addresses['b1']}:{BACKEND_PORT}"]
    details = proxier.proxier.status_details()
    assert details["mode"] == proxier.mode and details["services"] == "1" and details["endpoints"] == "1"
    assert "last-sync" in details and "last-sync-error" not in details


async def test_thirty_connections_spread_over_three_backends(proxier, testnet):
    ip = (await proxier.serve("three")).spec.cluster_ip
    host_replies = [await host_connect(ip, 80) for _ in range(30)]
    pod_replies = [r["reply"] for r in await asyncio.to_thread(testnet.ns_connect, "c", ip, 80, 30)]
    for replies in (host_replies, pod_replies):
        counts = spread(replies)
        assert sum(counts.values()) == 30, counts
        if proxier.mode == "userspace":
            assert set(counts.values()) == {10}, counts  # the relay's exact rotation
        else:
            assert all(count > 0 for count in counts.values()), counts  # a random pick


async def test_removed_endpoint_gets_no_new_connections_and_open_ones_carry_on(proxier, testnet):
    ip = (await proxier.serve("shrink")).spec.cluster_ip
    # An open connection to the backend about to go.
    opened = []
    for _ in range(60):
        reader, writer = await asyncio.open_connection(ip, 80)
        name = (await reader.readline()).decode().split()[0]
        if name == "b1":
            opened.append((reader, writer))
            break
        writer.close()
    assert opened, "no connection landed on b1"

    await proxier.set_endpoints("shrink", ("b2", "b3"))
    replies = names([await host_connect(ip, 80) for _ in range(30)])
    assert "b1" not in replies and set(replies) == {"b2", "b3"}

    reader, writer = opened[0]
    writer.write(b"still there?\n")
    assert await asyncio.wait_for(reader.readline(), 5) == b"still there?\n"
    writer.close()


async def test_service_without_endpoints_is_refused_at_once(proxier, testnet):
    service = await proxier.serve("empty", ())
    ip = service.spec.cluster_ip
    before = proxier.refusals("no-endpoints")
    assert await host_refused(ip, 80) < REFUSED_WITHIN
    results = await asyncio.to_thread(testnet.ns_connect, "c", ip, 80, 10)
    assert all(r.get("error") == "ConnectionRefusedError" and r["seconds"] < REFUSED_WITHIN for r in results), results
    assert proxier.refusals("no-endpoints") >= before + 11
    [port] = proxier.proxier.status()
    assert port.listening and list(port.endpoints) == []

    # Endpoints arrive: served at once.
    await proxier.set_endpoints("empty", ("b2",))
    assert await host_connect(ip, 80) == f"b2 {testnet.gateway}"


async def test_unallocated_service_address_is_refused_and_never_leaves(proxier, testnet):
    service = await proxier.serve("known", ("b1",))
    unallocated_before = proxier.refusals("unallocated")
    unknown_port_before = proxier.refusals("unknown-port")

    assert await host_refused(testnet.unallocated_ip, 80) < REFUSED_WITHIN
    results = await asyncio.to_thread(testnet.ns_connect, "c", testnet.unallocated_ip, 80, 3)
    assert all(r.get("error") == "ConnectionRefusedError" and r["seconds"] < REFUSED_WITHIN for r in results), results
    # A port the service does not have, on its cluster IP.
    assert await host_refused(service.spec.cluster_ip, 81) < REFUSED_WITHIN
    # UDP into the range: dropped on the way out, which the sender sees as EPERM.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(PermissionError):
        sock.sendto(b"x", (testnet.unallocated_ip, 53))

    assert proxier.refusals("unallocated") >= unallocated_before + 5
    assert proxier.refusals("unknown-port") >= unknown_port_before + 1
    # The safety net behind every other rule saw nothing.
    assert counter(testnet.watch_table, "leak") == 0


async def test_hairpin_a_pod_reaching_its_own_service_lands_on_itself(proxier, testnet):
    ip = (await proxier.serve("hairpin", ("b1",))).spec.cluster_ip
    results = await asyncio.to_thread(testnet.ns_connect, "b1", ip, 80, 3)
    # Masqueraded to the bridge's address, or b1 would answer itself around the reverse NAT
    # (userspace: the relay's connection comes from there anyway).
    assert [r.get("reply") for r in results] == [f"b1 {testnet.gateway}"] * 3, results


async def test_node_port_on_the_node_address(proxier, testnet):
    node_port = random.randrange(30000, 32768)
    await proxier.serve("nodeport", node_port=node_port)
    # From a pod (and so from outside the node): the node's address on the bridge.
    results = await asyncio.to_thread(testnet.ns_connect, "c", testnet.gateway, node_port, 12)
    replies = [r.get("reply", r.get("error")) for r in results]
    assert set(names(replies)) <= set(BACKENDS) and len(set(names(replies))) >= 2, replies
    # Masqueraded (or relayed), so the reply comes back through the node.
    assert all(reply.split()[1] == testnet.gateway for reply in replies)
    # From the node itself, on the loopback node address (route_localnet).
    assert names([await host_connect("127.0.0.1", node_port)])[0] in BACKENDS
    assert read_text(ROUTE_LOCALNET) == "1"

    # No endpoints: refused at once on the node port too.
    await proxier.set_endpoints("nodeport", ())
    [result] = await asyncio.to_thread(testnet.ns_connect, "c", testnet.gateway, node_port)
    assert result.get("error") == "ConnectionRefusedError" and result["seconds"] < REFUSED_WITHIN, result


async def test_client_ip_affinity_pins_each_client(proxier, testnet):
    ip = (await proxier.serve("sticky", affinity="ClientIP")).spec.cluster_ip
    host_replies = names([await host_connect(ip, 80) for _ in range(15)])
    pod_replies = names([r["reply"] for r in await asyncio.to_thread(testnet.ns_connect, "c", ip, 80, 15)])
    assert len(set(host_replies)) == 1, host_replies
    assert len(set(pod_replies)) == 1, pod_replies
    assert proxier.pinned(testnet.addresses["c"])  # in an affinity set, a recent list, or the relay's table
    # Its endpoint gone, the client is pinned anew to one of the others.
    pinned = pod_replies[0]
    rest = tuple(b for b in BACKENDS if b != pinned)
    await proxier.set_endpoints("sticky", rest)
    again = names([r["reply"] for r in await asyncio.to_thread(testnet.ns_connect, "c", ip, 80, 10)])
    assert len(set(again)) == 1 and again[0] in rest, again


async def test_an_endpoint_that_refuses(proxier, testnet):
    """The modes differ here, as documented: the relay skips a refusing endpoint; the kernel does not retry."""
    ip = (await proxier.serve("refusing", ("b1", "b2"), refusing=("b3",))).spec.cluster_ip
    results = await asyncio.to_thread(testnet.ns_connect, "c", ip, 80, 30)
    answered = [r["reply"] for r in results if "reply" in r]
    refused = [r for r in results if r.get("error") == "ConnectionRefusedError"]
    assert set(names(answered)) <= {"b1", "b2"}
    if proxier.mode == "userspace":
        assert len(answered) == 30, results
    else:
        assert refused and len(answered) + len(refused) == 30, results


async def test_udp_through_the_cluster_ip(proxier, testnet):
    ip = (await proxier.serve("dns", ("b2",), udp=True)).spec.cluster_ip
    results = await asyncio.to_thread(testnet.ns_datagrams, "c", ip, 53, 3)
    # The reply comes from the cluster IP (the client's connected socket accepts nothing else).
    assert [r.get("reply") for r in results] == [
        f"b2 {proxier.seen_from('c')} ping{i}" for i in range(3)
    ], results
    # No endpoints: refused (ICMP port unreachable), not sent anywhere.
    await proxier.set_endpoints("dns", ())
    [result] = await asyncio.to_thread(testnet.ns_datagrams, "c", ip, 53)
    assert result.get("error") == "ConnectionRefusedError", result


async def test_a_refused_transaction_leads_to_a_full_rebuild(proxier, testnet):
    ip = (await proxier.serve("tampered", ("b1",))).spec.cluster_ip
    stats = proxier.runner.stats
    full_before = stats.full_syncs
    # Someone removes our rule behind our back: the next incremental delete of it fails.
    proxier.tamper(ip)
    await proxier.set_endpoints("tampered", ())
    assert stats.failures == 1 and stats.full_syncs == full_before + 1
    assert await host_refused(ip, 80) < REFUSED_WITHIN
    await proxier.set_endpoints("tampered", ("b2",))
    assert await host_connect(ip, 80) == f"b2 {testnet.gateway}"


@pytest.mark.parametrize("damage", ["delete", "flush"])
async def test_deleted_or_flushed_rules_are_rebuilt(proxier, testnet, damage):
    ip = (await proxier.serve(f"rebuilt-{damage}", ("b3",))).spec.cluster_ip
    stats = proxier.runner.stats
    full_before = stats.full_syncs
    proxier.damage(damage)
    # Within --sync-period (0.3 s here), without any change to sync.
    await eventually(lambda: stats.full_syncs > full_before, what="rules rebuilt", timeout=WAIT)
    assert await host_connect(ip, 80) == f"b3 {testnet.gateway}"
    assert await host_refused(testnet.unallocated_ip, 80) < REFUSED_WITHIN


async def test_a_burst_of_1000_endpoint_changes_makes_few_transactions(testnet, mode):
    harness = Harness(mode, testnet, min_sync_period=0.05)
    runner = harness.runner
    await harness.start()
    try:
        ip = (await harness.serve("burst", ("b1",))).spec.cluster_ip
        start = runner.stats.transactions
        subsets = [("b1",), ("b2",), ("b1", "b2"), ("b2", "b3"), ("b1", "b2", "b3"), ()]
        started = time.monotonic()
        for change in range(999):
            # As a watch stream delivers a burst: one event at a time, the loop free between them.
            harness.proxier.on_endpoints_event(
                "MODIFIED", make_endpoints(testnet, "burst", subsets[change % len(subsets)])
            )
            await asyncio.sleep(0)
        await harness.set_endpoints("burst", ("b3",))
        burst = runner.stats.transactions - start
        print(f"\n{mode}: 1,000 endpoint changes in a burst: {burst} transactions, "
              f"{time.monotonic() - started:.3f} s")
        assert burst <= 3
        assert names([await host_connect(ip, 80) for _ in range(5)]) == ["b3"] * 5

        # Spread over about half a second: bounded by the min sync period (50 ms), not by the changes.
        start = runner.stats.transactions
        started = time.monotonic()
        for change in range(1000):
            harness.proxier.on_endpoints_event(
                "MODIFIED", make_endpoints(testnet, "burst", subsets[change % len(subsets)])
            )
            if change % 10 == 9:
                await asyncio.sleep(0.005)
        elapsed = time.monotonic() - started
        await harness.set_endpoints("burst", ("b2",))
        spread_over = runner.stats.transactions - start
        print(f"{mode}: 1,000 endpoint changes over {elapsed:.2f} s: {spread_over} transactions")
        assert spread_over <= elapsed / 0.05 + 3
        assert names([await host_connect(ip, 80) for _ in range(5)]) == ["b2"] * 5
        assert runner.stats.failures == 0
    finally:
        await harness.stop()


# The real process ----------------------------------------------------------------------------


def sync_event(mode: str) -> str:
    return "iptables_synced" if mode == "iptables" else "nft_table_synced"


def node_rules_left(node: str) -> list[str]:
    """What of a node's rules is in the kernel: its nftables table, its iptables lines."""
    table = f"table ip {nftables.table_name(node)}"
    return [line for line in nft_tables() if line == table] + iptables_lines(iptables.node_tag(node))


async def test_kube_proxy_process_follows_the_api_server_and_cleans_up(apiserver, testnet, mode):
    node = f"{testnet.node}-proc"
    status_port = free_port()
    api = ApiClient(apiserver.address)
    proxy = ManagedProcess(f"proxy-{mode}", python_module_argv(
        "services.proxy.main", "--proxy-mode", mode, "--server", apiserver.address,
        "--node-name", node, "--node-ip", testnet.gateway, "--connect-timeout", "1",
        "--service-cluster-ip-range", testnet.api_service_cidr, "--status-listen", f"127.0.0.1:{status_port}",
        *component_security_flags("proxy"),
    ))
    try:
        wait_for_port(status_port, proxy.process, timeout=30)
        namespace = f"t-{uuid.uuid4().hex[:10]}"
        service = make_service(testnet, "web", cluster_ip=testnet.next_api_cluster_ip())
        service.metadata.namespace = namespace
        service.spec.selector["app"] = "web"
        created = await api.create(service)
        assert created.spec.cluster_ip == service.spec.cluster_ip
        await api.create(make_endpoints(testnet, "web", BACKENDS, namespace=namespace))
        ip = service.spec.cluster_ip

        async def programmed() -> proxy_pb2.ProxyStatus:
            async with aio_channel(f"127.0.0.1:{status_port}", dev_pki().credentials("admin")) as channel:
                call = proxy_pb2_grpc.ProxyStub(channel).Status(proxy_pb2.ProxyStatusRequest(), timeout=10)
                status = await call
                trailers = dict(await call.trailing_metadata())
            ports = [p for p in status.ports if p.namespace == namespace]
            assert len(ports) == 1 and ports[0].listening and len(ports[0].endpoints) == 3, status
            assert trailers["kybernetes-mode"] == mode
            if mode == "iptables":
                assert trailers["kybernetes-chains"] == f"KYB-*-{iptables.node_tag(node)}"
            else:
                assert trailers["kybernetes-table"] == f"ip {nftables.table_name(node)}"
            return status

        await eventually(programmed, what="service programmed", timeout=WAIT)
        replies = names([await host_connect(ip, 80) for _ in range(30)])
        assert set(replies) == set(BACKENDS), replies

        # The service goes: its address is refused (unallocated), not forwarded.
        await api.delete(SERVICES, "web", namespace)

        async def refused() -> bool:
            try:
                await host_connect(ip, 80, timeout=2.0)
            except ConnectionRefusedError:
                return True
            return False

        await eventually(refused, what="the deleted service's address refused", timeout=WAIT)

        # SIGTERM: the rules stay (a restarting proxy leaves traffic flowing, or refused).
        proxy.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proxy.process.wait, 30) == 0
        assert node_rules_left(node)
        assert sync_event(mode) in proxy.log_text()
    finally:
        proxy.stop()
        await api.close()
        result = await asyncio.to_thread(
            subprocess.run, python_module_argv("services.proxy.main", "--cleanup", "--node-name", node),
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert "cleanup_done" in result.stderr
    assert node_rules_left(node) == []
