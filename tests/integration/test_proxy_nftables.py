"""kube-proxy's nftables mode on the real kernel: cluster IPs and node ports to "pods".

The pods are network namespaces (`kybtest-<id>-b1..b3`, a client `-c`) on a bridge
of the test's own (`kybt-<id>`, 10.200.<n>.0/24: outside the pod network's
10.88.0.0/16 and the service range 10.96.0.0/12), each backend running a tiny
identity server: it answers "<name> <peer address>" and then echoes. Services
get cluster IPs from 10.100.<n>.0/24, the proxy's --service-cluster-ip-range.
The clients are the host (the output hook) and the client namespace (the
prerouting hook). The proxier runs in-process, fed Service and Endpoints objects
as its informers would; one test runs the real `kube-proxy` process against the
API server and ends with `kube-proxy --cleanup`.

Safety: a watch table of the test's own counts and drops, after everything
else in postrouting, any packet still addressed into the service range or any
packet for the test's pods leaving through eth0; both counters must stay 0.
Teardown removes and then checks the absence of every table, namespace, link,
iptables rule and route the module made, and puts route_localnet back.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import grpc
import pytest

from kybernetes.v1 import endpoints_pb2, meta_pb2, proxy_pb2, proxy_pb2_grpc, service_pb2
from services.common.client import ApiClient
from services.common.resources import SERVICES
from services.proxy import nftables
from services.proxy.nftproxier import ROUTE_LOCALNET, NftOptions, NftProxier, cleanup
from tests.polling import eventually
from tools.processes import REPO, ManagedProcess, free_port, python_module_argv, wait_for_port

NAMESPACE = "nft-test"
BACKEND_PORT = 8080
WAIT = 20.0
REFUSED_WITHIN = 1.0  # seconds: a refusal is a reset, not a timeout
BACKENDS = ("b1", "b2", "b3")

IDENTITY_SERVER = r"""
import socket, sys, threading
name, port = sys.argv[1], int(sys.argv[2])
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


def sh(*command: str, check: bool = True, input_text: str | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, input=input_text, timeout=60)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result.stdout


def nft_tables() -> list[str]:
    return [line.strip() for line in sh("nft", "list", "tables").splitlines() if line.strip()]


def counter(table: str, chain: str) -> int:
    """Packets counted by the counters of one chain of a table."""
    data = json.loads(sh("nft", "-j", "list", "chain", "ip", table, chain))
    total = 0
    for item in data["nftables"]:
        for expression in item.get("rule", {}).get("expr", []):
            if "counter" in expression:
                total += expression["counter"]["packets"]
    return total


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

    @property
    def gateway(self) -> str:
        return f"10.200.{self.subnet}.1"

    @property
    def pod_cidr(self) -> str:
        return f"10.200.{self.subnet}.0/24"

    @property
    def service_cidr(self) -> str:
        return f"10.100.{self.subnet}.0/24"

    @property
    def unallocated_ip(self) -> str:
        return f"10.100.{self.subnet}.250"

    @property
    def node(self) -> str:
        return f"kybtest-{self.id}"

    @property
    def watch_table(self) -> str:
        return f"kybt-watch-{self.id}"

    def next_cluster_ip(self) -> str:
        return f"10.100.{self.subnet}.{next(self.cluster_ips)}"

    def ns_connect(self, client: str, host: str, port: int, count: int = 1, timeout: float = 3.0) -> list[dict]:
        """count connections from a namespace: {"reply": "<name> <peer>"} or {"error": ...}, with seconds."""
        out = sh("ip", "netns", "exec", self.namespaces[client], sys.executable, "-c", CLIENT,
                 host, str(port), str(count), str(timeout))
        return json.loads(out)


def _iptables_comment(net: PodNet) -> str:
    return f"kybernetes proxy nftables test {net.id}"


def _iptables_rules(net: PodNet) -> list[list[str]]:
    comment = ["-m", "comment", "--comment", _iptables_comment(net)]
    return [["FORWARD", flag, net.bridge, *comment, "-j", "ACCEPT"] for flag in ("-i", "-o")]


def _free_subnet() -> int:
    routes = sh("ip", "-4", "route", "show", "table", "all")
    candidates = [n for n in range(1, 255) if f"10.200.{n}." not in routes and f"10.100.{n}." not in routes]
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
        f"add rule ip {net.watch_table} leak ip daddr {net.service_cidr} counter drop\n"
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
    if f"10.200.{net.subnet}." in sh("ip", "-4", "route", "show", "table", "all"):
        problems.append("route left")
    return problems


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


def read_text(path: str | os.PathLike) -> str:
    with open(path) as file:
        return file.read().strip()


# The proxier under test ----------------------------------------------------------------------


def make_options(net: PodNet, **overrides: Any) -> NftOptions:
    options = NftOptions(
        node_name=net.node, service_cidr=net.service_cidr, node_ips=(net.gateway, "127.0.0.1"),
        min_sync_period=0.01, sync_period=0.3, retry_initial=0.05, retry_max=0.5,
    )
    for name, value in overrides.items():
        setattr(options, name, value)
    return options


@pytest.fixture
async def proxier(testnet: PodNet):
    instance = NftProxier(make_options(testnet))
    instance.mark_synced()
    task = asyncio.create_task(instance.run(), name="nft-proxier")
    yield instance
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await cleanup(instance.table)
    assert f"table ip {instance.table}" not in nft_tables()


def make_service(
    net: PodNet, name: str, *, node_port: int = 0, affinity: str = "", cluster_ip: str | None = None
) -> service_pb2.Service:
    return service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=name),
        spec=service_pb2.ServiceSpec(
            cluster_ip=cluster_ip or net.next_cluster_ip(),
            type="NodePort" if node_port else "ClusterIP",
            session_affinity=affinity,
            ports=[service_pb2.ServicePort(name="http", port=80, protocol="TCP", node_port=node_port)],
        ),
    )


def make_endpoints(net: PodNet, name: str, backends: list[str] | tuple[str, ...], *,
                   namespace: str = NAMESPACE) -> endpoints_pb2.Endpoints:
    return endpoints_pb2.Endpoints(
        metadata=meta_pb2.ObjectMeta(namespace=namespace, name=name),
        subsets=[endpoints_pb2.EndpointSubset(
            addresses=[endpoints_pb2.EndpointAddress(ip=net.addresses[b]) for b in backends],
            ports=[endpoints_pb2.EndpointPort(name="http", port=BACKEND_PORT, protocol="TCP")],
        )] if backends else [],
    )


async def serve(proxier: NftProxier, net: PodNet, name: str, backends: tuple[str, ...] = BACKENDS,
                **service_args: Any) -> service_pb2.Service:
    service = make_service(net, name, **service_args)
    proxier.on_endpoints_event("ADDED", make_endpoints(net, name, backends))
    proxier.on_service_event("ADDED", service)
    await proxier.wait_installed(timeout=WAIT)
    return service


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


# Tests ---------------------------------------------------------------------------------------


async def test_cluster_ip_reaches_a_backend_from_the_host_and_from_a_pod(proxier, testnet):
    service = await serve(proxier, testnet, "one", ("b1",))
    ip = service.spec.cluster_ip
    # The host's own connection is masqueraded: the pod sees the bridge's address.
    assert await host_connect(ip, 80) == f"b1 {testnet.gateway}"
    # A pod's connection keeps its source address (only hairpin and node ports are masqueraded).
    [result] = await asyncio.to_thread(testnet.ns_connect, "c", ip, 80)
    assert result.get("reply") == f"b1 {testnet.addresses['c']}", result
    listed = sh("nft", "list", "table", "ip", proxier.table)
    assert f"{ip} . tcp . 80 : goto service-" in listed
    [port] = proxier.status()
    assert port.listening and list(port.endpoints) == [f"{testnet.addresses['b1']}:{BACKEND_PORT}"]
    details = proxier.status_details()
    assert details["mode"] == "nftables" and details["services"] == "1" and details["endpoints"] == "1"
    assert "last-sync" in details and "last-sync-error" not in details


async def test_thirty_connections_spread_over_three_backends(proxier, testnet):
    ip = (await serve(proxier, testnet, "three")).spec.cluster_ip
    host_replies = [await host_connect(ip, 80) for _ in range(30)]
    pod_replies = [r["reply"] for r in await asyncio.to_thread(testnet.ns_connect, "c", ip, 80, 30)]
    for replies in (host_replies, pod_replies):
        counts = {name: names(replies).count(name) for name in BACKENDS}
        assert all(count > 0 for count in counts.values()) and sum(counts.values()) == 30, counts


async def test_removed_endpoint_gets_no_new_connections_and_open_ones_carry_on(proxier, testnet):
    ip = (await serve(proxier, testnet, "shrink")).spec.cluster_ip
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

    proxier.on_endpoints_event("MODIFIED", make_endpoints(testnet, "shrink", ("b2", "b3")))
    await proxier.wait_installed(timeout=WAIT)
    replies = names([await host_connect(ip, 80) for _ in range(30)])
    assert "b1" not in replies and set(replies) == {"b2", "b3"}

    reader, writer = opened[0]
    writer.write(b"still there?\n")
    assert await asyncio.wait_for(reader.readline(), 5) == b"still there?\n"
    writer.close()


async def test_service_without_endpoints_is_refused_at_once(proxier, testnet):
    service = await serve(proxier, testnet, "empty", ())
    ip = service.spec.cluster_ip
    before = counter(proxier.table, nftables.REJECT_NO_ENDPOINTS)
    assert await host_refused(ip, 80) < REFUSED_WITHIN
    results = await asyncio.to_thread(testnet.ns_connect, "c", ip, 80, 10)
    assert all(r.get("error") == "ConnectionRefusedError" and r["seconds"] < REFUSED_WITHIN for r in results), results
    assert counter(proxier.table, nftables.REJECT_NO_ENDPOINTS) >= before + 11
    [port] = proxier.status()
    assert port.listening and list(port.endpoints) == []

    # Endpoints arrive: served at once.
    proxier.on_endpoints_event("MODIFIED", make_endpoints(testnet, "empty", ("b2",)))
    await proxier.wait_installed(timeout=WAIT)
    assert await host_connect(ip, 80) == f"b2 {testnet.gateway}"


async def test_unallocated_service_address_is_refused_and_never_leaves(proxier, testnet):
    service = await serve(proxier, testnet, "known", ("b1",))
    table = proxier.table
    unallocated_before = counter(table, nftables.REJECT_UNALLOCATED)
    unknown_port_before = counter(table, nftables.REJECT_UNKNOWN_PORT)

    assert await host_refused(testnet.unallocated_ip, 80) < REFUSED_WITHIN
    results = await asyncio.to_thread(testnet.ns_connect, "c", testnet.unallocated_ip, 80, 3)
    assert all(r.get("error") == "ConnectionRefusedError" and r["seconds"] < REFUSED_WITHIN for r in results), results
    # A port the service does not have, on its cluster IP.
    assert await host_refused(service.spec.cluster_ip, 81) < REFUSED_WITHIN
    # UDP into the range: dropped on the way out, which the sender sees as EPERM.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(PermissionError):
        sock.sendto(b"x", (testnet.unallocated_ip, 53))

    assert counter(table, nftables.REJECT_UNALLOCATED) >= unallocated_before + 5
    assert counter(table, nftables.REJECT_UNKNOWN_PORT) >= unknown_port_before + 1
    # The safety net behind every other rule saw nothing.
    assert counter(testnet.watch_table, "leak") == 0


async def test_hairpin_a_pod_reaching_its_own_service_lands_on_itself(proxier, testnet):
    ip = (await serve(proxier, testnet, "hairpin", ("b1",))).spec.cluster_ip
    results = await asyncio.to_thread(testnet.ns_connect, "b1", ip, 80, 3)
    # Masqueraded to the bridge's address, or b1 would answer itself around the reverse NAT.
    assert [r.get("reply") for r in results] == [f"b1 {testnet.gateway}"] * 3, results


async def test_node_port_on_the_node_address(proxier, testnet):
    node_port = random.randrange(30000, 32768)
    await serve(proxier, testnet, "nodeport", node_port=node_port)
    # From a pod (and so from outside the node): the node's address on the bridge.
    results = await asyncio.to_thread(testnet.ns_connect, "c", testnet.gateway, node_port, 12)
    replies = [r.get("reply", r.get("error")) for r in results]
    assert set(names(replies)) <= set(BACKENDS) and len(set(names(replies))) >= 2, replies
    # Masqueraded, so the reply comes back through the node.
    assert all(reply.split()[1] == testnet.gateway for reply in replies)
    # From the node itself, on the loopback node address (route_localnet).
    assert names([await host_connect("127.0.0.1", node_port)])[0] in BACKENDS
    assert read_text(ROUTE_LOCALNET) == "1"

    # No endpoints: refused at once on the node port too.
    proxier.on_endpoints_event("MODIFIED", make_endpoints(testnet, "nodeport", ()))
    await proxier.wait_installed(timeout=WAIT)
    [result] = await asyncio.to_thread(testnet.ns_connect, "c", testnet.gateway, node_port)
    assert result.get("error") == "ConnectionRefusedError" and result["seconds"] < REFUSED_WITHIN, result


async def test_client_ip_affinity_pins_each_client(proxier, testnet):
    ip = (await serve(proxier, testnet, "sticky", affinity="ClientIP")).spec.cluster_ip
    host_replies = names([await host_connect(ip, 80) for _ in range(15)])
    pod_replies = names([r["reply"] for r in await asyncio.to_thread(testnet.ns_connect, "c", ip, 80, 15)])
    assert len(set(host_replies)) == 1, host_replies
    assert len(set(pod_replies)) == 1, pod_replies
    listed = sh("nft", "list", "table", "ip", proxier.table)
    assert testnet.addresses["c"] in listed  # the client pod is in an affinity set
    # Its endpoint gone, the client is pinned anew to one of the others.
    pinned = pod_replies[0]
    rest = tuple(b for b in BACKENDS if b != pinned)
    proxier.on_endpoints_event("MODIFIED", make_endpoints(testnet, "sticky", rest))
    await proxier.wait_installed(timeout=WAIT)
    again = names([r["reply"] for r in await asyncio.to_thread(testnet.ns_connect, "c", ip, 80, 10)])
    assert len(set(again)) == 1 and again[0] in rest, again


async def test_a_burst_of_1000_endpoint_changes_makes_few_transactions(testnet):
    proxier = NftProxier(make_options(testnet, min_sync_period=0.05))
    proxier.mark_synced()
    task = asyncio.create_task(proxier.run())
    try:
        ip = (await serve(proxier, testnet, "burst", ("b1",))).spec.cluster_ip
        start = proxier.stats.transactions
        subsets = [("b1",), ("b2",), ("b1", "b2"), ("b2", "b3"), ("b1", "b2", "b3"), ()]
        started = time.monotonic()
        for change in range(999):
            # As a watch stream delivers a burst: one event at a time, the loop free between them.
            proxier.on_endpoints_event("MODIFIED", make_endpoints(testnet, "burst", subsets[change % len(subsets)]))
            await asyncio.sleep(0)
        proxier.on_endpoints_event("MODIFIED", make_endpoints(testnet, "burst", ("b3",)))
        await proxier.wait_installed(timeout=WAIT)
        burst = proxier.stats.transactions - start
        print(f"\n1,000 endpoint changes in a burst: {burst} transactions, {time.monotonic() - started:.3f} s")
        assert burst <= 3
        assert names([await host_connect(ip, 80) for _ in range(5)]) == ["b3"] * 5

        # Spread over about half a second: bounded by the min sync period (50 ms), not by the changes.
        start = proxier.stats.transactions
        started = time.monotonic()
        for change in range(1000):
            proxier.on_endpoints_event("MODIFIED", make_endpoints(testnet, "burst", subsets[change % len(subsets)]))
            if change % 10 == 9:
                await asyncio.sleep(0.005)
        elapsed = time.monotonic() - started
        proxier.on_endpoints_event("MODIFIED", make_endpoints(testnet, "burst", ("b2",)))
        await proxier.wait_installed(timeout=WAIT)
        spread = proxier.stats.transactions - start
        print(f"1,000 endpoint changes over {elapsed:.2f} s: {spread} transactions")
        assert spread <= elapsed / 0.05 + 3
        assert names([await host_connect(ip, 80) for _ in range(5)]) == ["b2"] * 5
        assert proxier.stats.failures == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await cleanup(proxier.table)
    assert f"table ip {proxier.table}" not in nft_tables()


async def test_a_refused_transaction_leads_to_a_full_rebuild(proxier, testnet):
    ip = (await serve(proxier, testnet, "tampered", ("b1",))).spec.cluster_ip
    full_before = proxier.stats.full_syncs
    # Someone removes our element behind our back: the next incremental delete of it fails.
    sh("nft", "delete", "element", "ip", proxier.table, nftables.SERVICE_IPS, f"{{ {ip} . tcp . 80 }}")
    proxier.on_endpoints_event("MODIFIED", make_endpoints(testnet, "tampered", ()))
    await proxier.wait_installed(timeout=WAIT)
    assert proxier.stats.failures == 1 and proxier.stats.full_syncs == full_before + 1
    assert await host_refused(ip, 80) < REFUSED_WITHIN
    proxier.on_endpoints_event("MODIFIED", make_endpoints(testnet, "tampered", ("b2",)))
    await proxier.wait_installed(timeout=WAIT)
    assert await host_connect(ip, 80) == f"b2 {testnet.gateway}"


@pytest.mark.parametrize("damage", ["delete table", "flush table"])
async def test_a_deleted_or_flushed_table_is_rebuilt(proxier, testnet, damage):
    ip = (await serve(proxier, testnet, f"rebuilt-{damage.split()[0]}", ("b3",))).spec.cluster_ip
    full_before = proxier.stats.full_syncs
    sh("nft", *damage.split(), "ip", proxier.table)
    # Within --sync-period (0.3 s here), without any change to sync.
    await eventually(lambda: proxier.stats.full_syncs > full_before, what="table rebuilt", timeout=WAIT)
    assert await host_connect(ip, 80) == f"b3 {testnet.gateway}"
    assert await host_refused(testnet.unallocated_ip, 80) < REFUSED_WITHIN


# The real process ----------------------------------------------------------------------------


async def test_kube_proxy_process_follows_the_api_server_and_cleans_up(apiserver, testnet):
    node = f"{testnet.node}-proc"
    table = nftables.table_name(node)
    status_port = free_port()
    api = ApiClient(apiserver.address)
    proxy = ManagedProcess("proxy-nft", python_module_argv(
        "services.proxy.main", "--proxy-mode", "nftables", "--server", apiserver.address,
        "--node-name", node, "--node-ip", testnet.gateway,
        "--service-cluster-ip-range", testnet.service_cidr, "--status-listen", f"127.0.0.1:{status_port}",
    ))
    try:
        wait_for_port(status_port, proxy.process, timeout=30)
        namespace = f"t-{uuid.uuid4().hex[:10]}"
        service = make_service(testnet, "web")
        service.metadata.namespace = namespace
        service.spec.selector["app"] = "web"
        created = await api.create(service)
        assert created.spec.cluster_ip == service.spec.cluster_ip
        await api.create(make_endpoints(testnet, "web", BACKENDS, namespace=namespace))
        ip = service.spec.cluster_ip

        async def programmed() -> proxy_pb2.ProxyStatus:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{status_port}") as channel:
                call = proxy_pb2_grpc.ProxyStub(channel).Status(proxy_pb2.ProxyStatusRequest(), timeout=10)
                status = await call
                trailers = dict(await call.trailing_metadata())
            ports = [p for p in status.ports if p.namespace == namespace]
            assert len(ports) == 1 and ports[0].listening and len(ports[0].endpoints) == 3, status
            assert trailers["kybernetes-mode"] == "nftables" and trailers["kybernetes-table"] == f"ip {table}"
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

        # SIGTERM: the table stays (a restarting proxy leaves traffic flowing).
        proxy.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proxy.process.wait, 30) == 0
        assert f"table ip {table}" in nft_tables()
        assert "nft_table_synced" in proxy.log_text()
    finally:
        proxy.stop()
        await api.close()
        result = await asyncio.to_thread(
            subprocess.run, python_module_argv("services.proxy.main", "--cleanup", "--node-name", node),
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert "cleanup_done" in result.stderr
    assert f"table ip {table}" not in nft_tables()


def test_cleanup_without_a_table_succeeds():
    node = f"kybtest-{uuid.uuid4().hex[:6]}-none"
    result = subprocess.run(
        python_module_argv("services.proxy.main", "--cleanup", "--node-name", node),
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"table ip {nftables.table_name(node)}" not in nft_tables()


def test_bad_service_range_is_refused_with_its_name():
    result = subprocess.run(
        python_module_argv("services.proxy.main", "--service-cluster-ip-range", "10.96.0.1/12"),
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 2 and "--service-cluster-ip-range" in result.stderr

