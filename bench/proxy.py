"""kube-proxy data path: direct to a backend vs through the proxy, side by side.

Run: python -m bench.proxy [--seconds 1] [--rounds 3]   (the userspace relay on loopback, about 35 s)
     python -m bench.proxy --pods [--modes nftables,iptables,userspace] [--scale 1000,10000]
                                    (every mode between pods, as root, about 2 min)

Three kinds of processes, all on loopback: the backends (a bulk sink and a
short request/reply server), the proxy (the real relay, the userspace mode's
Proxier and listeners, given a Service and its Endpoints directly, so no API
server is needed; clients connect to its listeners' own ports), and the client
(this process). The same client code measures the direct path and the proxied
one; the proxy runs once with splice and once with the plain copy loop.

- bulk: 1 and 8 parallel streams, each a blocking socket sending 128 KiB
  writes for --seconds; the sink reports the bytes it received, so the figure
  is end to end.
- short: connections per second for request/reply exchanges with 16 in flight
  (asyncio client: connect, send 64 bytes, read the 128-byte reply to EOF,
  close; the server closes after replying, like HTTP/1.0).

Each figure is the median of --rounds samples, the targets taking turns, so a
burst of load from elsewhere on the machine hits them alike. The CPU each
process used per GB or per exchange is printed too: on a machine with fewer
cores than busy processes (2 here, for client, proxy and backends) the ratios
are bound by the sum of those costs, and the proxy's are mostly kernel TCP work.

--pods (or --nftables) measures the modes as pods use them instead, between
"pods": two network namespaces on a bridge of the bench's own (a server running
the same backends, a client running the same client code), pod -> pod directly
against pod -> cluster IP through each mode: the real NftProxier's table, the
real IptablesProxier's chains (both in this process), and the userspace mode
(UserspaceProxier in a process of its own: the relay, reached through its
portals). Each target has backends of its own. Then the sequential latency of a
short exchange with 10, 1,000 and 10,000 services programmed (iptables up to
1,000: a full iptables-nft restore is superlinear here, 10,000 services took
140 s; userspace: 10 only, a listener per service port), and the time to
program N services x 3 endpoints from scratch (one transaction, with the CPU
the tool used, kernel included) and then to change one endpoint. With those N
services installed, 50 endpoint changes one at a time, each after a quiet
spell longer than the runner's min_sync_period (so no change waits for its rate
limit): one service's three endpoints (addresses nobody answers) swapped for a
live backend of its own in the server pod. For each, from handing the change to
the proxier (on_endpoints_event) to the runner reporting the transaction
committed (wait_installed), and to the rule working: a prober in the client pod
opens a new connection to the service's cluster IP every millisecond (each
given up after 50 ms) and the first to complete an exchange, which only the new
backend can answer, ends it; both p50 / p99 (of 50: the slowest). Everything it
makes (namespaces, bridge, veths, iptables rules and chains, tables) is removed
at the end and checked gone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

BULK_CHUNK = 128 * 1024
REQUEST = b"GET / HTTP/1.0\r\n" + b"x" * 46 + b"\r\n"  # 64 bytes
REPLY = b"HTTP/1.0 200 OK\r\n" + b"y" * 109 + b"\r\n"  # 128 bytes
SHORT_IN_FLIGHT = 16


# Backends (their own process) -------------------------------------------------------------


def _serve_bulk(listener: socket.socket) -> None:
    def sink(conn: socket.socket) -> None:
        buffer = bytearray(BULK_CHUNK)
        total = 0
        with conn:
            while True:
                n = conn.recv_into(buffer)
                if not n:
                    break
                total += n
            conn.sendall(struct.pack("!Q", total))

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=sink, args=(conn,), daemon=True).start()


class _ReplyProtocol(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= len(REQUEST):
            self.transport.write(REPLY)
            self.transport.close()


def run_backends(host: str = "127.0.0.1") -> None:
    bulk = socket.create_server((host, 0), backlog=128)
    threading.Thread(target=_serve_bulk, args=(bulk,), daemon=True).start()

    async def serve_short() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_ReplyProtocol, host, 0, backlog=4096, reuse_address=True)
        short_port = server.sockets[0].getsockname()[1]
        print(bulk.getsockname()[1], short_port, flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent goes away

    asyncio.run(serve_short())


# The proxy (its own process) ---------------------------------------------------------------


def run_proxy(bulk_port: int, short_port: int, use_splice: bool) -> None:
    from kybernetes.v1 import endpoints_pb2, meta_pb2, service_pb2

    from services.proxy.proxier import Proxier, ProxyOptions

    async def serve() -> None:
        proxier = Proxier(ProxyOptions(bind_address="127.0.0.1", use_splice=use_splice))
        for name, backend_port in (("bulk", bulk_port), ("short", short_port)):
            proxier.set_endpoints(endpoints_pb2.Endpoints(
                metadata=meta_pb2.ObjectMeta(namespace="bench", name=name),
                subsets=[endpoints_pb2.EndpointSubset(
                    addresses=[endpoints_pb2.EndpointAddress(ip="127.0.0.1")],
                    ports=[endpoints_pb2.EndpointPort(port=backend_port)],
                )],
            ))
            proxier.set_service(service_pb2.Service(
                metadata=meta_pb2.ObjectMeta(namespace="bench", name=name),
                spec=service_pb2.ServiceSpec(ports=[service_pb2.ServicePort(port=80)]),
            ))
        # The proxier has no "listening" event: a setup step, polled.
        while any(p.listener is None for p in proxier.ports.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        # Its listeners' own ports (the userspace mode's portals would send cluster IPs there).
        print(*(proxier.relay_port("bench", name) for name in ("bulk", "short")), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    from services.common.log import configure_logging
    from services.common.servicemain import run_service

    configure_logging("kube-proxy", level="warning")
    run_service(serve())  # as services.proxy.main runs it (its GC settings included)


# The client (this process) ------------------------------------------------------------------


def bulk_gbits(port: int, streams: int, seconds: float, host: str = "127.0.0.1") -> float:
    payload = b"\0" * BULK_CHUNK
    received = [0] * streams
    barrier = threading.Barrier(streams + 1)

    def stream(index: int) -> None:
        with socket.create_connection((host, port)) as sock:
            barrier.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            report = b""
            while len(report) < 8:
                chunk = sock.recv(8 - len(report))
                if not chunk:
                    raise ConnectionError("the sink closed without reporting")
                report += chunk
            received[index] = struct.unpack("!Q", report)[0]

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.monotonic()
    for thread in threads:
        thread.join()
    return sum(received) * 8 / (time.monotonic() - started) / 1e9


def short_rate(port: int, seconds: float, host: str = "127.0.0.1") -> tuple[float, int]:
    """Exchanges per second with SHORT_IN_FLIGHT at a time, and how many failed."""

    async def run() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        done = failed = 0
        deadline = loop.time() + seconds

        async def worker() -> None:
            nonlocal done, failed
            while loop.time() < deadline:
                sock = socket.socket()
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, (host, port))
                    await loop.sock_sendall(sock, REQUEST)
                    reply = b""
                    while True:
                        chunk = await loop.sock_recv(sock, 4096)
                        if not chunk:
                            break
                        reply += chunk
                    if reply == REPLY:
                        done += 1
                    else:
                        failed += 1
                except OSError:
                    failed += 1
                finally:
                    sock.close()

        started = loop.time()
        await asyncio.gather(*(worker() for _ in range(SHORT_IN_FLIGHT)))
        return done / (loop.time() - started), failed

    return asyncio.run(run())


def _cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) a process has used: pid, or this process."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spawn(*role: str) -> tuple[subprocess.Popen, list[int]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.proxy", "--role", *role],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    line = process.stdout.readline() if process.stdout else ""
    if not line:
        raise RuntimeError(f"{' '.join(role)} did not start")
    return process, [int(port) for port in line.split()]


class Target:
    """A place the client connects to: a backend directly, or a proxy in front of it."""

    def __init__(self, name: str, bulk_port: int, short_port: int, proxy: subprocess.Popen | None) -> None:
        self.name = name
        self.bulk_port = bulk_port
        self.short_port = short_port
        self.proxy = proxy
        self.samples: dict[str, list[float]] = {}
        # CPU seconds used per unit (GB or connection): proxy, client, backends.
        self.cpu: dict[str, list[tuple[float, float, float]]] = {}


def _cpu_snapshot(target: Target, backends_pid: int) -> tuple[float, float, float]:
    """CPU seconds so far of the proxy (0 for direct), the client (this process) and the backends."""
    proxy = _cpu_seconds(target.proxy.pid) if target.proxy is not None else 0.0
    return proxy, _cpu_seconds(), _cpu_seconds(backends_pid)


def _measure(target: Target, figure: str, seconds: float, backends_pid: int) -> None:
    before = _cpu_snapshot(target, backends_pid)
    started = time.monotonic()
    if figure == "short":
        value, failures = short_rate(target.short_port, seconds)
        if failures:
            raise RuntimeError(f"{failures} short exchanges failed through {target.name}")
        units = value * (time.monotonic() - started)
    else:
        value = bulk_gbits(target.bulk_port, 1 if figure == "bulk1" else 8, seconds)
        units = value * (time.monotonic() - started) / 8  # GB
    after = _cpu_snapshot(target, backends_pid)
    target.samples.setdefault(figure, []).append(value)
    target.cpu.setdefault(figure, []).append(tuple((a - b) / units for a, b in zip(after, before, strict=True)))


# Every mode between pods on a bridge -----------------------------------------------------------

LATENCY_EXCHANGES = 2000
MODES = ("nftables", "iptables", "userspace")
CLUSTER_IPS = {"nftables": "10.102.0.10", "iptables": "10.102.0.11", "userspace": "10.102.0.12"}
BULK_SERVICE_PORT, SHORT_SERVICE_PORT = 5001, 5002
# A full iptables-nft restore grows faster than the rules (1,000 services 0.8 s, 10,000 140 s here).
IPTABLES_SCALE_MAX = 1000
ROUTE_LOCALNET = Path("/proc/sys/net/ipv4/conf/all/route_localnet")


def _sh(*command: str, input_text: str | None = None, check: bool = True) -> str:
    result = subprocess.run(command, capture_output=True, text=True, input=input_text, timeout=120)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result.stdout


def latency_us(host: str, port: int, count: int) -> tuple[float, float]:
    """p50 and p99 of one exchange (connect, request, reply to EOF), one at a time, in microseconds."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(REQUEST)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        samples.append((time.perf_counter() - started) * 1e6)
        if reply != REPLY:
            raise RuntimeError(f"bad reply from {host}:{port}")
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def run_client(host: str, bulk_port: int, short_port: int, figure: str, seconds: float) -> None:
    """One sample from inside the client pod, printed as JSON."""
    cpu = _cpu_seconds()
    if figure == "latency":
        result: dict[str, Any] = {"value": latency_us(host, short_port, LATENCY_EXCHANGES)}
    elif figure == "short":
        rate, failed = short_rate(short_port, seconds, host)
        result = {"value": rate, "failed": failed}
    else:
        result = {"value": bulk_gbits(bulk_port, 1 if figure == "bulk1" else 8, seconds, host)}
    result["cpu"] = _cpu_seconds() - cpu
    print(json.dumps(result), flush=True)


PROBE_INTERVAL, PROBE_GIVE_UP, PROBE_TIMEOUT = 0.001, 0.05, 10.0


def run_probe() -> None:
    """In the client pod: for each `host port` line, new connections to host:port every PROBE_INTERVAL
    (each given up after PROBE_GIVE_UP) until one completes an exchange; prints "probing" once the first
    is on its way, then the monotonic time the first exchange completed ("timeout" if none did)."""
    print("ready", flush=True)
    for line in sys.stdin:
        host, port = line.split()
        selector = selectors.DefaultSelector()
        pending: dict[socket.socket, float] = {}
        next_attempt = started = time.monotonic()
        result = "timeout"
        try:
            while time.monotonic() < started + PROBE_TIMEOUT:
                now = time.monotonic()
                if now >= next_attempt:
                    sock = socket.socket()
                    sock.setblocking(False)
                    sock.connect_ex((host, int(port)))
                    selector.register(sock, selectors.EVENT_WRITE)
                    pending[sock] = now
                    if next_attempt == started:
                        print("probing", flush=True)
                    next_attempt = now + PROBE_INTERVAL
                for sock in [s for s, at in pending.items() if now - at > PROBE_GIVE_UP]:
                    selector.unregister(sock)
                    sock.close()
                    del pending[sock]
                for key, _ in selector.select(max(0.0, next_attempt - time.monotonic())):
                    sock = key.fileobj  # type: ignore[assignment]
                    selector.unregister(sock)
                    del pending[sock]
                    with sock:
                        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                            continue
                        sock.setblocking(True)
                        sock.settimeout(2)
                        try:
                            sock.sendall(REQUEST)
                            reply = b""
                            while chunk := sock.recv(4096):
                                reply += chunk
                        except OSError:
                            continue
                    if reply == REPLY:
                        result = repr(time.monotonic())
                        break
                if result != "timeout":
                    break
        finally:
            for sock in pending:
                sock.close()
            selector.close()
        print(result, flush=True)


class Prober:
    """run_probe in the client pod, driven from here."""

    def __init__(self, net: "PodNetwork") -> None:
        self.process = subprocess.Popen(
            net.argv("client", sys.executable, "-m", "bench.proxy", "--role", "probe"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        if self._line() != "ready":
            raise RuntimeError("the prober did not start")

    def _line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def start(self, host: str, port: int) -> None:
        """Returns once the first connection is on its way."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{host} {port}\n")
        self.process.stdin.flush()
        if (line := self._line()) != "probing":
            raise RuntimeError(f"the prober: {line!r}")

    def working(self) -> float:
        """The monotonic time (this machine's clock, as here) the first exchange completed."""
        line = self._line()
        if line == "timeout" or not line:
            raise RuntimeError(f"no exchange through the changed rule within {PROBE_TIMEOUT:g} s")
        return float(line)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()  # started here: ended by its pid
            self.process.wait()


class PodNetwork:
    """A bridge of the bench's own with a server and a client pod (network namespaces)."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex[:6]
        routes = _sh("ip", "-4", "route", "show", "table", "all")
        self.subnet = random.choice([n for n in range(1, 255) if f"10.202.{n}." not in routes])
        self.bridge = f"kybb-{self.id}"
        self.gateway = f"10.202.{self.subnet}.1"
        self.pods = {"server": f"10.202.{self.subnet}.10", "client": f"10.202.{self.subnet}.11"}
        self.namespaces = {pod: f"kybbench-{self.id}-{pod}" for pod in self.pods}
        self.veths = {pod: f"kb{self.id}{pod[0]}" for pod in self.pods}
        self.watch_table = f"kybb-watch-{self.id}"
        self.service_cidr = "10.102.0.0/16"
        self.comment = f"kybernetes bench {self.id}"
        self.route_localnet = ROUTE_LOCALNET.read_text().strip()  # the userspace relay on 127.0.0.1 sets it
        self.made = True
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        for flag in ("-i", "-o"):  # Docker's FORWARD policy is DROP
            _sh("iptables", "-w", "-I", "FORWARD", flag, self.bridge, "-m", "comment", "--comment", self.comment,
                "-j", "ACCEPT")
        for pod, address in self.pods.items():
            netns, veth = self.namespaces[pod], self.veths[pod]
            _sh("ip", "netns", "add", netns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            _sh("ip", "link", "set", veth, "master", self.bridge, "up")
            _sh("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            _sh("ip", "-n", netns, "link", "set", "eth0", "up")
            _sh("ip", "-n", netns, "link", "set", "lo", "up")
            _sh("ip", "-n", netns, "route", "add", "default", "via", self.gateway)
        # A safety net behind everything: nothing for the service range or the pods goes further.
        _sh("nft", "-f", "-", input_text=(
            f"add table ip {self.watch_table}\n"
            f"add chain ip {self.watch_table} leak {{ type filter hook postrouting priority 300; policy accept; }}\n"
            f"add rule ip {self.watch_table} leak ip daddr {self.service_cidr} counter drop\n"
            f"add rule ip {self.watch_table} leak oifname \"eth0\" ip daddr 10.202.{self.subnet}.0/24 counter drop\n"
        ))

    def argv(self, pod: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[pod], *argv]

    def leaked(self) -> int:
        data = json.loads(_sh("nft", "-j", "list", "chain", "ip", self.watch_table, "leak"))
        return sum(e["counter"]["packets"] for item in data["nftables"] for e in item.get("rule", {}).get("expr", [])
                   if "counter" in e)

    def close(self) -> list[str]:
        """Removes everything; returns what is still there."""
        for veth in self.veths.values():
            _sh("ip", "link", "del", veth, check=False)
        for netns in self.namespaces.values():
            _sh("ip", "netns", "del", netns, check=False)
        _sh("ip", "link", "del", self.bridge, check=False)
        for flag in ("-i", "-o"):
            _sh("iptables", "-w", "-D", "FORWARD", flag, self.bridge, "-m", "comment", "--comment", self.comment,
                "-j", "ACCEPT", check=False)
        _sh("nft", "delete", "table", "ip", self.watch_table, check=False)
        ROUTE_LOCALNET.write_text(self.route_localnet + "\n")
        left = [name for name in [self.bridge, *self.veths.values()] if name in _sh("ip", "-br", "link")]
        left += [name for name in self.namespaces.values() if name in _sh("ip", "netns", "list")]
        left += [line for line in _sh("nft", "list", "tables").splitlines() if self.id in line]
        if self.comment in _sh("iptables", "-w", "-S", "FORWARD"):
            left.append("iptables rules")
        left += [line for line in _sh("iptables-save").splitlines() if any(tag in line for tag in self.tags)]
        return left

    def node(self, mode: str) -> str:
        """The node name of a mode's proxy: one each, so their tables and chains never meet."""
        return f"kybbench-{self.id}-{mode[:3]}"

    @property
    def tags(self) -> list[str]:
        from services.proxy.iptables import node_tag

        return [node_tag(self.node(mode)) for mode in MODES]


def _bench_objects(
    index: int, cluster_ip: str, ports: list[tuple[str, int, int]], endpoint_ips: list[str]
) -> tuple[Any, Any]:
    """Service s<index> and its Endpoints; ports: (name, service port, endpoint port)."""
    from kybernetes.v1 import endpoints_pb2, meta_pb2, service_pb2

    name = f"s{index}"
    service = service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(namespace="bench", name=name),
        spec=service_pb2.ServiceSpec(
            cluster_ip=cluster_ip, ports=[service_pb2.ServicePort(name=n, port=p) for n, p, _ in ports],
        ),
    )
    endpoints = endpoints_pb2.Endpoints(
        metadata=meta_pb2.ObjectMeta(namespace="bench", name=name),
        subsets=[endpoints_pb2.EndpointSubset(
            addresses=[endpoints_pb2.EndpointAddress(ip=ip) for ip in endpoint_ips],
            ports=[endpoints_pb2.EndpointPort(name=n, port=target) for n, _, target in ports],
        )],
    )
    return service, endpoints


def _filler(index: int, subnet: int) -> tuple[Any, Any]:
    """Service number `index` of the filler: a cluster IP in 10.102.1.0+, 3 endpoints nobody calls."""
    cluster_ip = f"10.102.{1 + index // 250}.{index % 250 + 1}"
    ips = [f"10.202.{subnet}.{100 + (index * 3 + k) % 150}" for k in range(3)]
    return _bench_objects(index + 100, cluster_ip, [("", 80, 9000)], ips)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _program(proxier: Any, objects: list[tuple[Any, Any]]) -> tuple[float, float]:
    """Feeds services and endpoints; seconds until installed and the CPU nft used."""
    cpu, started = _children_cpu(), time.monotonic()
    for service, endpoints in objects:
        proxier.on_endpoints_event("ADDED", endpoints)
        proxier.on_service_event("ADDED", service)
    await proxier.wait_installed(timeout=600)
    return time.monotonic() - started, _children_cpu() - cpu


def _make_runner(mode: str, node: str, subnet: int) -> Any:
    from services.proxy.iptproxier import IptablesOptions, IptablesProxier
    from services.proxy.nftproxier import NftOptions, NftProxier

    node_ips = (f"10.202.{subnet}.1",)
    if mode == "iptables":
        return IptablesProxier(IptablesOptions(node_name=node, service_cidr="10.102.0.0/16", node_ips=node_ips))
    return NftProxier(NftOptions(node_name=node, service_cidr="10.102.0.0/16", node_ips=node_ips))


async def _remove_rules(mode: str, node: str) -> None:
    from services.proxy import nftables
    from services.proxy.iptproxier import cleanup_chains
    from services.proxy.nftproxier import cleanup

    if mode == "iptables":
        await cleanup_chains(node)
    else:
        await cleanup(nftables.table_name(node))


CHANGES = 50


def _p50_p99_ms(samples: list[float]) -> str:
    samples = sorted(samples)
    return f"{samples[len(samples) // 2] * 1000:.0f} / {samples[int(len(samples) * 0.99)] * 1000:.0f} ms"


async def _change_latency(proxier: Any, count: int, net: "PodNetwork", prober: Prober,
                          backend_port: int) -> tuple[list[float], list[float]]:
    """CHANGES endpoint changes one at a time: seconds to committed and to working, each."""
    committed_after, working_after = [], []
    for k in range(CHANGES):
        index = 3 + k * (count - 3) // CHANGES  # a service nobody changed yet (the 3 above: 0..2)
        service, endpoints = _filler(index, net.subnet)
        del endpoints.subsets[0].addresses[:]
        endpoints.subsets[0].addresses.add(ip=net.pods["server"])
        endpoints.subsets[0].ports[0].port = backend_port
        # A quiet spell: the runner starts the change at once, as the first after one.
        await asyncio.sleep(proxier.sync_options.min_sync_period + 0.02)
        await asyncio.to_thread(prober.start, service.spec.cluster_ip, service.spec.ports[0].port)
        started = time.monotonic()
        proxier.on_endpoints_event("MODIFIED", endpoints)

        async def committed() -> float:
            await proxier.wait_installed(timeout=60)
            return time.monotonic()

        done, working = await asyncio.gather(committed(), asyncio.to_thread(prober.working))
        if working < started:  # only the new backend answers: the old endpoints are addresses nobody has
            raise RuntimeError(f"{service.spec.cluster_ip} answered before its endpoints changed")
        committed_after.append(done - started)
        working_after.append(working - started)
    return committed_after, working_after


async def _scale_from_scratch(mode: str, counts: list[int], net: "PodNetwork", prober: Prober | None = None,
                              backend_port: int = 0) -> list[str]:
    lines = []
    for count in counts:
        node = f"{net.node(mode)}-{count}"
        proxier = _make_runner(mode, node, net.subnet)
        objects = [_filler(i, net.subnet) for i in range(count)]
        for service, endpoints in objects:
            proxier.on_endpoints_event("ADDED", endpoints)
            proxier.on_service_event("ADDED", service)
        task = asyncio.create_task(proxier.run())
        cpu, started = _children_cpu(), time.monotonic()
        proxier.mark_synced()  # as at start-up: the informers' snapshot, then one full transaction
        try:
            await proxier.wait_installed(timeout=600)
            elapsed, tool_cpu = time.monotonic() - started, _children_cpu() - cpu
            change = []
            for trial in range(3):
                service, endpoints = _filler(trial, net.subnet)
                del endpoints.subsets[0].addresses[trial % 3]
                change.append((await _program(proxier, [(service, endpoints)]))[0])
            if prober is not None:
                committed, working = await _change_latency(proxier, count, net, prober, backend_port)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await _remove_rules(mode, node)
        tool = "iptables-restore" if mode == "iptables" else "nft"
        lines.append(
            f"{mode:<9} {count:>6,} services x 3 endpoints: {elapsed:6.2f} s from scratch ({tool} CPU "
            f"{tool_cpu:.2f} s, kernel included); then one endpoint change {statistics.median(change) * 1000:.0f} ms"
        )
        if prober is not None:
            lines.append(
                f"{'':<16} {CHANGES} endpoint changes, one at a time, p50 / p99: to committed (wait_installed) "
                f"{_p50_p99_ms(committed)}; to working (a new connection to the cluster IP answered by the new "
                f"backend) {_p50_p99_ms(working)}"
            )
    return lines


def run_userspace_proxy(node: str, subnet: int, server: str, bulk: int, short: int) -> None:
    """The userspace mode in a process of its own (as kube-proxy runs it), serving the bench's service."""
    from services.common.log import configure_logging
    from services.common.servicemain import run_service
    from services.proxy.nftproxier import NftOptions
    from services.proxy.proxier import ProxyOptions
    from services.proxy.userspace import UserspaceProxier

    async def serve() -> None:
        proxier = UserspaceProxier(
            ProxyOptions(bind_address="127.0.0.1"),
            NftOptions(node_name=node, service_cidr="10.102.0.0/16", node_ips=(f"10.202.{subnet}.1",)),
        )
        service, endpoints = _bench_objects(
            0, CLUSTER_IPS["userspace"], [("bulk", BULK_SERVICE_PORT, bulk), ("short", SHORT_SERVICE_PORT, short)],
            [server],
        )
        proxier.on_endpoints_event("ADDED", endpoints)
        proxier.on_service_event("ADDED", service)
        proxier.mark_synced()
        task = asyncio.create_task(proxier.run())
        await proxier.wait_installed(timeout=60)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        task.cancel()
        await proxier.shutdown(1.0)

    configure_logging("kube-proxy", level="warning")
    run_service(serve())


def pods_main(args: argparse.Namespace) -> None:
    from services.common.log import configure_logging

    configure_logging("bench", level="warning")
    counts = [int(n) for n in args.scale.split(",") if n]
    modes = [mode for mode in MODES if mode in args.modes.split(",")]
    net = PodNetwork()
    # One set of backends per target: a connection to a cluster IP, once DNATed, has
    # the same reply tuple as a direct one from the same client port, and the client
    # reuses its ports within conntrack's TIME_WAIT (120 s) at these rates. Sharing one
    # backend port, two targets' connections clash in conntrack and SYNs are dropped.
    processes: list[subprocess.Popen] = []
    cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        ports: dict[str, tuple[int, ...]] = {}
        # "changes": the live backend the endpoint changes of the programming section swap in.
        for target in ("direct", *modes, *(("changes",) if counts else ())):
            process = subprocess.Popen(
                net.argv("server", sys.executable, "-m", "bench.proxy", "--role", "backends", "0.0.0.0"),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd,
            )
            processes.append(process)
            assert process.stdout is not None
            ports[target] = tuple(int(p) for p in process.stdout.readline().split())
        relay = None
        if "userspace" in modes:
            bulk, short = ports["userspace"]
            relay = subprocess.Popen(
                [sys.executable, "-m", "bench.proxy", "--role", "userspace", net.node("userspace"), str(net.subnet),
                 net.pods["server"], str(bulk), str(short)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd,
            )
            processes.append(relay)
            assert relay.stdout is not None
            if relay.stdout.readline().strip() != "ready":
                raise RuntimeError("the userspace proxy did not start")
        asyncio.run(_pods_bench(args, net, ports, modes, relay, counts))
        leaked = net.leaked()
        if leaked:
            raise RuntimeError(f"{leaked} packets reached the safety net")
    finally:
        for process in processes:  # started here: ended by their pid
            if process.stdin:
                process.stdin.close()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for mode in modes:
            asyncio.run(_remove_rules(mode, net.node(mode)))
        left = net.close()
        if left:
            print(f"NOT CLEANED UP: {left}", file=sys.stderr)
            sys.exit(1)


async def _pods_bench(args: argparse.Namespace, net: PodNetwork, ports: dict[str, tuple[int, ...]],
                      modes: list[str], relay: subprocess.Popen | None, counts: list[int]) -> None:
    server = net.pods["server"]
    runners = {mode: _make_runner(mode, net.node(mode), net.subnet) for mode in modes if mode != "userspace"}
    tasks = [asyncio.create_task(runner.run()) for runner in runners.values()]
    for runner in runners.values():
        runner.mark_synced()
    try:
        programming: dict[tuple[str, int], tuple[float, float]] = {}
        for mode, runner in runners.items():
            bench_service = _bench_objects(
                0, CLUSTER_IPS[mode],
                [("bulk", BULK_SERVICE_PORT, ports[mode][0]), ("short", SHORT_SERVICE_PORT, ports[mode][1])],
                [server],
            )
            await _program(runner, [bench_service] + [_filler(i, net.subnet) for i in range(9)])  # 10 services

        def client(target: tuple[str, int, int], figure: str, seconds: float) -> dict[str, Any]:
            host, bulk, short = target
            out = _sh(*net.argv("client", sys.executable, "-m", "bench.proxy", "--role", "client", host, str(bulk),
                                str(short), figure, str(seconds)))
            return json.loads(out)

        targets: dict[str, tuple[str, int, int]] = {"pod -> pod": (server, ports["direct"][0], ports["direct"][1])}
        for mode in modes:
            targets[f"-> cluster IP ({mode})"] = (CLUSTER_IPS[mode], BULK_SERVICE_PORT, SHORT_SERVICE_PORT)
        for target in targets.values():
            await asyncio.to_thread(client, target, "short", 0.2)  # warm up
        width = 27
        print(f"Every mode between pods on a bridge, {os.cpu_count()} CPUs; median of {args.rounds} "
              f"samples of {args.seconds:g} s, targets interleaved\n")
        print(f"{'':<33}" + "".join(f"{name:<{width}}" for name in targets))
        figures = (("bulk1", "bulk, 1 stream", "Gbit/s"), ("bulk8", "bulk, 8 streams", "Gbit/s"),
                   ("short", f"short conns, {SHORT_IN_FLIGHT} at once", "conn/s"))
        relay_cpu: dict[str, list[float]] = {}
        for figure, label, unit in figures:
            samples: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, target in targets.items():
                    before = _cpu_seconds(relay.pid) if relay is not None and "userspace" in name else 0.0
                    started = time.monotonic()
                    result = await asyncio.to_thread(client, target, figure, args.seconds)
                    if result.get("failed"):
                        raise RuntimeError(f"{result['failed']} exchanges failed through {name}")
                    samples[name].append(result["value"])
                    if relay is not None and "userspace" in name:
                        elapsed = time.monotonic() - started
                        units = result["value"] * elapsed / (8 if unit == "Gbit/s" else 1)
                        relay_cpu.setdefault(figure, []).append((_cpu_seconds(relay.pid) - before) / units)
            direct = statistics.median(samples["pod -> pod"])
            cells = []
            for name in targets:
                value = statistics.median(samples[name])
                text = f"{value:,.1f} {unit}" if unit == "Gbit/s" else f"{value:,.0f} {unit}"
                if name != "pod -> pod":
                    text += f" {value / direct:4.0%}"
                cells.append(f"{text:<{width}}")
            print(f"{label:<33}" + "".join(cells), flush=True)
        if relay_cpu:
            print("userspace relay CPU: " + ", ".join(
                f"{figure} {statistics.median(values) * (1 if figure.startswith('bulk') else 1e6):.2f} "
                f"{'s/GB' if figure.startswith('bulk') else 'us/exchange'}" for figure, values in relay_cpu.items()
            ))

        async def latency_row(label: str, measured: set[str]) -> None:
            cells = []
            for name, target in targets.items():
                if name == "pod -> pod" or any(mode in name for mode in measured):
                    p50, p99 = (await asyncio.to_thread(client, target, "latency", 0))["value"]
                    cells.append(f"{p50:,.0f} / {p99:,.0f} us".ljust(width))
                else:
                    cells.append("-".ljust(width))
            print(f"{label:<33}" + "".join(cells), flush=True)

        await latency_row("exchange p50 / p99, 10 svcs", set(modes))
        programmed = {mode: 10 for mode in runners}
        for count in sorted({IPTABLES_SCALE_MAX, max(counts or [10_000])}):
            measured = {mode for mode in runners if mode != "iptables" or count <= IPTABLES_SCALE_MAX}
            if count <= 10 or not measured:
                continue
            for mode in sorted(measured):
                fillers = [_filler(i, net.subnet) for i in range(programmed[mode] - 1, count - 1)]
                programming[(mode, count)] = await _program(runners[mode], fillers)
                programmed[mode] = count
            await latency_row(f"exchange p50 / p99, {count:,} svcs", measured)
        for (mode, count), (seconds, cpu) in programming.items():
            print(f"({mode}: adding services up to {count:,} x 3 endpoints to the live rules: {seconds:.2f} s, "
                  f"tool CPU {cpu:.2f} s)")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for mode in runners:
            await _remove_rules(mode, net.node(mode))
    if counts:
        print("\nProgramming from scratch (one transaction), then one endpoint change; then endpoint changes "
              "one at a time (from on_endpoints_event; 'working': a connection from the client pod reaches the "
              "new backend):")
        prober = await asyncio.to_thread(Prober, net)
        try:
            for mode in runners:
                mode_counts = [n for n in counts if mode != "iptables" or n <= IPTABLES_SCALE_MAX]
                for line in await _scale_from_scratch(mode, mode_counts, net, prober, ports["changes"][1]):
                    print("  " + line, flush=True)
        finally:
            prober.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one sample (default %(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="samples per figure and target, interleaved (default %(default)s)"
    )
    parser.add_argument(
        "--pods", "--nftables", action="store_true",
        help="measure every mode between pods on a bridge instead (as root)",
    )
    parser.add_argument(
        "--modes", default=",".join(MODES),
        help="with --pods: the modes to measure beside pod -> pod (default %(default)s)",
    )
    parser.add_argument(
        "--scale", default="1000,10000",
        help="with --pods: service counts to program from scratch (default %(default)s; '' for none; "
        f"iptables up to {IPTABLES_SCALE_MAX:,})",
    )
    parser.add_argument("--role", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        if args.role[0] == "backends":
            run_backends(*args.role[1:2])
        elif args.role[0] == "client":
            host, bulk, short, figure, seconds = args.role[1:6]
            run_client(host, int(bulk), int(short), figure, float(seconds))
        elif args.role[0] == "probe":
            run_probe()
        elif args.role[0] == "userspace":
            node, subnet, server, bulk, short = args.role[1:6]
            run_userspace_proxy(node, int(subnet), server, int(bulk), int(short))
        else:
            run_proxy(int(args.role[1]), int(args.role[2]), args.role[3] == "splice")
        return
    if args.pods:
        pods_main(args)
        return

    backends, (bulk_port, short_port) = _spawn("backends")
    targets = [Target("direct", bulk_port, short_port, None)]
    try:
        for mode in ("splice", "copy"):
            proxy, (proxy_bulk, proxy_short) = _spawn("proxy", str(bulk_port), str(short_port), mode)
            targets.append(Target(f"proxy ({mode})", proxy_bulk, proxy_short, proxy))
        for target in targets:
            short_rate(target.short_port, 0.2)  # warm up: first connections, imports, caches

        print(
            f"kube-proxy data path on loopback, {os.cpu_count()} CPUs; median of {args.rounds} samples "
            f"of {args.seconds:g} s per figure, targets interleaved\n"
        )
        print(f"{'':<26}" + "".join(f"{t.name:<26}" for t in targets))
        figures = (
            ("bulk1", "bulk, 1 stream", "Gbit/s"),
            ("bulk8", "bulk, 8 streams", "Gbit/s"),
            ("short", f"short conns, {SHORT_IN_FLIGHT} at once", "conn/s"),
        )
        for figure, label, unit in figures:
            for _ in range(args.rounds):
                for target in targets:
                    _measure(target, figure, args.seconds, backends.pid)
            direct = statistics.median(targets[0].samples[figure])
            cells = []
            for target in targets:
                value = statistics.median(target.samples[figure])
                text = f"{value:,.1f} {unit}" if unit == "Gbit/s" else f"{value:,.0f} {unit}"
                if target.proxy is not None:
                    text += f" {value / direct:4.0%}"
                cells.append(f"{text:<26}")
            print(f"{label:<26}" + "".join(cells), flush=True)

        print("\nCPU used per GB (bulk) or per exchange (short): proxy / client / backends")
        for figure, label, unit in figures:
            bulk = unit == "Gbit/s"
            cells = []
            for target in targets:
                columns = [statistics.median(column) for column in zip(*target.cpu[figure], strict=True)]
                texts = [f"{c:.2f} s" if bulk else f"{c * 1e6:.0f} us" for c in columns]
                if target.proxy is None:
                    texts[0] = "-"
                cells.append(f"{' / '.join(texts):<26}")
            print(f"{label:<26}" + "".join(cells))
        sys.stdout.flush()
    finally:
        for process in [backends, *(t.proxy for t in targets if t.proxy is not None)]:
            if process.stdin:
                process.stdin.close()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


if __name__ == "__main__":
    main()
