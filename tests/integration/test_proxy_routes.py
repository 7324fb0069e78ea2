"""Pod routes (host-gw) from a real kube-proxy process, against a real kernel and API server.

The proxy runs inside a network namespace of the test's own (a host with one LAN, 10.239.<n>.0/24),
so the routes it makes are that namespace's and cannot reach the machine's. Nodes created through
the API with podCIDRs and InternalIPs on that LAN get a route within a second or two, a changed
address changes it, a deleted Node loses it; SIGTERM leaves the routes, `--cleanup` removes them.

The namespace has loopback of its own, so the proxy reaches the API server (on the machine's
loopback) through a relay: a listening socket made inside the namespace (a thread that enters
it with setns(2) just for the socket call) and served by this test's event loop, which connects
on to the API server from the machine's namespace. The API server's certificate names
127.0.0.1, which is what the proxy dials.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from typing import Iterator

import pytest

from kybernetes.v1 import meta_pb2, node_pb2
from services.common.client import ApiClient
from services.common.resources import NODES
from services.proxy.routes import ROUTE_PROTOCOL
from tests.polling import eventually
from tools.processes import REPO, ManagedProcess, component_security_flags

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nsenter"),
    reason="needs root, ip and nsenter (a network namespace of the test's own)",
)

START_WAIT = 60.0  # the proxy process starting (imports, TLS, first snapshot) on a busy machine
# The promise is about a second from a Node event to the kernel; the rest is slack for a loaded machine.
CHANGE_WAIT = 3.0
RESYNC = 2.0  # the proxy's --sync-period: how soon it puts back a route someone deleted
CLONE_NEWNET = 0x40000000
LAN_LINK = "kyb0"


def sh(*command: str, check: bool = True) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result.stdout


def netns_names() -> list[str]:
    return [line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()]


def free_lans(count: int) -> list[int]:
    """Third octets for 10.239.<n>.0/24 that no route on the machine mentions."""
    routes = sh("ip", "-4", "route", "show", "table", "all")
    return random.sample([n for n in range(1, 255) if f"10.239.{n}." not in routes], count)


@pytest.fixture
def netns() -> Iterator[tuple[str, int, int]]:
    """A network namespace with a LAN link (a veth pair, both ends inside) at 10.239.<n>.2/24,
    and a 10.239.<m>.0/24 on no network of the namespace nor of the machine (where a proxy of
    another test could otherwise route to it); deleted afterwards, and checked gone."""
    name = f"kybt-{uuid.uuid4().hex[:8]}"
    lan, elsewhere = free_lans(2)
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "link", "add", LAN_LINK, "type", "veth", "peer", "name", f"{LAN_LINK}-peer")
        sh("ip", "-n", name, "addr", "add", f"10.239.{lan}.2/24", "dev", LAN_LINK)
        sh("ip", "-n", name, "link", "set", f"{LAN_LINK}-peer", "up")
        sh("ip", "-n", name, "link", "set", LAN_LINK, "up")
        yield name, lan, elsewhere
    finally:
        sh("ip", "netns", "del", name, check=False)
        assert name not in netns_names(), f"network namespace {name} left behind"


def listen_in_netns(netns: str) -> socket.socket:
    """A TCP socket listening on 127.0.0.1 inside the namespace. setns(2) moves only the calling
    thread, so a thread of its own does it and ends: this process's other threads never move."""
    result: dict[str, object] = {}

    def enter_and_listen() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {netns}")
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("127.0.0.1", 0))
                sock.listen(16)
                sock.setblocking(False)
                result["socket"] = sock
            finally:
                libc.setns(own, CLONE_NEWNET)
        except BaseException as error:  # handed to the caller's thread
            result["error"] = error
        finally:
            os.close(own)
            os.close(target)

    thread = threading.Thread(target=enter_and_listen, name=f"setns-{netns}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["socket"]  # type: ignore[return-value]


class Relay:
    """Forwards connections from the namespace's 127.0.0.1:<port> to the API server."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, netns: str) -> Relay:
        sock = listen_in_netns(netns)
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._handle, sock=sock)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()


def in_netns(netns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{netns}", *argv]


def proxy_argv(netns: str, *args: str) -> list[str]:
    return in_netns(netns, sys.executable, "-m", "services.proxy.main", *args)


async def our_routes(netns: str) -> dict[str, str]:
    """The namespace's routes of our protocol: podCIDR -> gateway."""
    out = await asyncio.to_thread(sh, "ip", "-n", netns, "-4", "-j", "route", "show", "proto", str(ROUTE_PROTOCOL))
    return {entry["dst"]: entry.get("gateway", "") for entry in json.loads(out or "[]")}


def routes_are(netns: str, expected: dict[str, str]):
    async def check() -> bool:
        routes = await our_routes(netns)
        assert routes == expected, f"routes {routes}"
        return True

    return check


async def make_node(api: ApiClient, name: str, pod_cidr: str, address: str) -> None:
    await api.create(node_pb2.Node(metadata=meta_pb2.ObjectMeta(name=name), spec=node_pb2.NodeSpec(pod_cidr=pod_cidr)))
    await set_address(api, name, address)


async def set_address(api: ApiClient, name: str, address: str) -> None:
    node = await api.get(NODES, name)
    del node.status.addresses[:]
    node.status.addresses.add(type="InternalIP", address=address)
    node.status.addresses.add(type="Hostname", address=name)
    await api.update_status(node)


def pod_cidrs(count: int) -> list[str]:
    """Node ranges in the API server's cluster CIDR (10.244.0.0/16), high enough that no other
    test's Node is likely to hold one (the API refuses overlapping podCIDRs)."""
    return [f"10.244.{third}.0/24" for third in random.sample(range(200, 255), count)]


async def test_pod_routes_follow_the_nodes(apiserver, api: ApiClient, netns):
    name, lan, elsewhere = netns
    net = ipaddress.IPv4Network(f"10.239.{lan}.0/24")
    address = {host: str(net.network_address + host) for host in range(2, 10)}
    prefix = f"routes-{uuid.uuid4().hex[:6]}"
    own, b, c, far = (f"{prefix}-{short}" for short in ("own", "b", "c", "far"))
    own_cidr, b_cidr, c_cidr, far_cidr, other_cidr = pod_cidrs(5)
    relay = await Relay(apiserver.port).start(name)
    proxy: ManagedProcess | None = None
    try:
        # This node, and one whose address is on no network of the namespace: neither gets a route.
        await make_node(api, own, own_cidr, address[2])
        await make_node(api, far, far_cidr, f"10.239.{elsewhere}.10")
        proxy = ManagedProcess("proxy-routes", proxy_argv(
            name,
            "--server", f"127.0.0.1:{relay.port}",
            "--node-name", own,
            "--node-ip", address[2],
            "--sync-period", str(RESYNC),
            *component_security_flags("proxy"),
        ))
        await make_node(api, b, b_cidr, address[3])
        await eventually(routes_are(name, {b_cidr: address[3]}), what="node b's route", timeout=START_WAIT)
        assert proxy.alive(), proxy.log_tail()

        # A node joins.
        await make_node(api, c, c_cidr, address[4])
        await eventually(routes_are(name, {b_cidr: address[3], c_cidr: address[4]}),
                         what="node c's route", timeout=CHANGE_WAIT)
        # A node's address changes: its route's gateway follows.
        await set_address(api, b, address[5])
        await eventually(routes_are(name, {b_cidr: address[5], c_cidr: address[4]}),
                         what="node b's new gateway", timeout=CHANGE_WAIT)
        # A node goes: its route goes.
        await api.delete(NODES, c)
        await eventually(routes_are(name, {b_cidr: address[5]}), what="node c's route gone", timeout=CHANGE_WAIT)
        # Someone deletes our route: the periodic resync puts it back, with no Node event.
        sh("ip", "-n", name, "route", "del", b_cidr, "proto", str(ROUTE_PROTOCOL))
        await eventually(routes_are(name, {b_cidr: address[5]}), what="node b's route put back",
                         timeout=RESYNC + CHANGE_WAIT)

        log = proxy.log_text()
        assert f"peer_node={b}" in log and "pod_route_added" in log and "pod_route_changed" in log, log[-3000:]
        assert "pod_route_deleted" in log and f"peer_node={far}" in log and "on no network of this host" in log
        # Not a word of this node's own range: it is never routed.
        assert own_cidr not in log

        # SIGTERM: the routes stay (a restarting proxy must not cut pods off).
        proxy.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proxy.process.wait, 30) == 0, proxy.log_tail()
        assert await our_routes(name) == {b_cidr: address[5]}

        # --cleanup removes them, and only them.
        sh("ip", "-n", name, "route", "add", other_cidr, "via", address[7])  # someone else's (protocol boot)
        result = await asyncio.to_thread(
            subprocess.run, proxy_argv(name, "--cleanup", "--node-name", own),
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "pod_routes_removed=1" in result.stderr, result.stderr
        assert await our_routes(name) == {}
        assert other_cidr in sh("ip", "-n", name, "-4", "route", "show")
    finally:
        if proxy is not None:
            if os.environ.get("KYB_SHOW_PROXY_LOG"):
                print(proxy.log_text()[-8000:], file=sys.stderr)
            await asyncio.to_thread(proxy.stop)
        await relay.stop()
        for node in (own, b, c, far):
            with contextlib.suppress(Exception):
                await api.delete(NODES, node)
