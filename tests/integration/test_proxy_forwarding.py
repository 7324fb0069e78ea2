"""The userspace relay's data path against echo backends on loopback (no API server, no Docker).

The relay (the Proxier, without its portals: userspace.py adds those, and
test_proxy_userspace.py tests the cluster IP path) is driven with Service and
Endpoints objects directly, as its informers would, and clients connect to the
local port its listener took for each service port (`serve_service` returns it).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import subprocess
import sys
import time
from typing import Awaitable, Callable

import pytest

from kybernetes.v1 import endpoints_pb2, meta_pb2, proxy_pb2, proxy_pb2_grpc, service_pb2
from services.proxy.proxier import Proxier, ProxyOptions
from services.proxy.status import StatusServer
from tests.polling import eventually
from services.common.transport import ServingCertificate, aio_channel
from tools.processes import dev_pki, free_port

NAMESPACE = "proxy-test"
LOOPBACK = "127.0.0.1"
WAIT = 20.0  # seconds: everything here is in-process on loopback


# Builders ------------------------------------------------------------------------------------


def make_service(name: str, *ports: tuple[str, int, str], affinity: str = "") -> service_pb2.Service:
    """ports: (name, port, protocol)."""
    return service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=name),
        spec=service_pb2.ServiceSpec(
            ports=[service_pb2.ServicePort(name=n, port=p, protocol=proto) for n, p, proto in ports],
            session_affinity=affinity,
        ),
    )


def make_endpoints(
    name: str, backend_ports: list[int], port_name: str = "", ip: str = LOOPBACK
) -> endpoints_pb2.Endpoints:
    """One ready address (ip) per backend port, as the endpoints controller writes pods with different target ports."""
    return endpoints_pb2.Endpoints(
        metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=name),
        subsets=[
            endpoints_pb2.EndpointSubset(
                addresses=[endpoints_pb2.EndpointAddress(ip=ip)],
                ports=[endpoints_pb2.EndpointPort(name=port_name, port=port)],
            )
            for port in backend_ports
        ],
    )


# Backends ------------------------------------------------------------------------------------


class TcpBackend:
    """An asyncio server (on loopback unless told); handler(reader, writer) serves one connection."""

    def __init__(
        self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], host: str = LOOPBACK
    ) -> None:
        self.handler = handler
        self.host = host
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections = 0

    async def start(self) -> "TcpBackend":
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, self.host, self.port or 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def name_handler(name: bytes):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name)
        await writer.drain()

    return handler


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echoes until the client's EOF, then closes: answers to a half-closed client."""
    while True:
        chunk = await reader.read(256 * 1024)
        if not chunk:
            break
        writer.write(chunk)
        await writer.drain()


async def named_echo_handler_factory(name: bytes):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name + b":")
        await echo_handler(reader, writer)

    return handler


async def exchange(port: int, payload: bytes = b"", timeout: float = 30.0) -> bytes:
    """Connects, sends payload, shuts the write side, returns everything read until EOF."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), timeout)
    try:
        if payload:
            writer.write(payload)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def refused_port() -> int:
    """A loopback port nothing listens on (connects are refused)."""
    return free_port()


# Fixtures ------------------------------------------------------------------------------------


@pytest.fixture
async def proxier(request):
    use_splice = getattr(request, "param", "splice") != "copy"
    instance = Proxier(
        ProxyOptions(
            bind_address=LOOPBACK, connect_timeout=0.5, udp_idle_timeout=0.5,
            bind_retry_initial=0.05, bind_retry_max=0.2, use_splice=use_splice,
        )
    )
    yield instance
    await instance.shutdown(grace=0.5)


@pytest.fixture
async def backends():
    started: list[TcpBackend] = []

    async def start(handler) -> TcpBackend:
        backend = await TcpBackend(handler).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


async def serve_service(
    proxier: Proxier, service: service_pb2.Service, endpoints: endpoints_pb2.Endpoints | None
) -> int:
    """Applies service (+ endpoints), waits until every one of its ports listens, and returns
    the relay's port for its first service port."""
    if endpoints is not None:
        proxier.set_endpoints(endpoints)
    proxier.set_service(service)
    name = service.metadata.name
    await eventually(
        lambda: all(p.listener is not None for k, p in proxier.ports.items() if k[1] == name),
        what=f"service {name} listening",
        timeout=WAIT,
    )
    return relay_port(proxier, name, service.spec.ports[0].name)


def relay_port(proxier: Proxier, service: str, port_name: str = "") -> int:
    port = proxier.relay_port(NAMESPACE, service, port_name)
    assert port, f"{service}/{port_name} does not listen"
    return port


def port_status(proxier: Proxier, service: str, port_name: str = "") -> proxy_pb2.ProxiedPortStatus:
    return proxier.ports[(NAMESPACE, service, port_name)].status()


# Round robin, skipping, live changes ----------------------------------------------------------


async def test_rotates_across_three_backends(proxier, backends):
    names = [b"alpha", b"bravo", b"charlie"]
    started = [await backends(name_handler(name)) for name in names]
    port = await serve_service(
        proxier, make_service("rr", ("", 80, "TCP")), make_endpoints("rr", [b.port for b in started])
    )

    replies = [await exchange(port) for _ in range(30)]

    assert sorted(set(replies)) == names
    assert all(replies.count(name) == 10 for name in names)
    # In turn, not merely balanced in total.
    assert replies[:3] == [replies[3], replies[4], replies[5]] and len(set(replies[:3])) == 3
    status = port_status(proxier, "rr")
    assert status.connections_total == 30 and status.connect_failures == 0
    assert sorted(status.endpoints) == sorted(f"127.0.0.1:{b.port}" for b in started)


async def test_dead_backend_is_skipped_with_no_failed_client_connection(proxier, backends):
    alive = [await backends(name_handler(b"one")), await backends(name_handler(b"two"))]
    dead_port = refused_port()
    port = await serve_service(
        proxier, make_service("skip", ("", 80, "TCP")),
        make_endpoints("skip", [alive[0].port, dead_port, alive[1].port]),
    )

    replies = await asyncio.gather(*(exchange(port) for _ in range(40)))

    assert set(replies) == {b"one", b"two"}, "every client got an answer from a live backend"
    assert port_status(proxier, "skip").connect_failures >= 1


async def test_backend_that_times_out_on_connect_is_skipped(proxier, backends):
    alive = await backends(name_handler(b"alive"))
    # A listener that never accepts, with its one-slot backlog filled: further
    # SYNs are dropped, so connecting to it hangs until our connect timeout.
    stuck = socket.socket()
    stuck.bind((LOOPBACK, 0))
    stuck.listen(0)
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(stuck.getsockname())
            fillers.append(filler)
        port = await serve_service(
            proxier, make_service("slow", ("", 80, "TCP")),
            make_endpoints("slow", [stuck.getsockname()[1], alive.port]),
        )
        replies = [await exchange(port) for _ in range(4)]
        assert replies == [b"alive"] * 4
        assert port_status(proxier, "slow").connect_failures >= 1
    finally:
        for filler in fillers:
            filler.close()
        stuck.close()


async def test_no_reachable_backend_resets_the_client(proxier):
    port = await serve_service(proxier, make_service("none", ("", 80, "TCP")), make_endpoints("none", [refused_port()]))
    with pytest.raises(ConnectionResetError):
        await exchange(port, b"hello")
    empty_port = await serve_service(proxier, make_service("empty", ("", 80, "TCP")), None)
    with pytest.raises(ConnectionResetError):
        await exchange(empty_port, b"hello")


async def test_endpoint_change_applies_to_new_connections_and_spares_open_ones(proxier, backends):
    old = await backends(await named_echo_handler_factory(b"old"))
    new = await backends(await named_echo_handler_factory(b"new"))
    port = await serve_service(proxier, make_service("live", ("", 80, "TCP")), make_endpoints("live", [old.port]))

    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(b"before")
    assert await reader.readexactly(10) == b"old:before"

    proxier.set_endpoints(make_endpoints("live", [new.port]))

    assert (await exchange(port, b"x")).startswith(b"new:")
    # The connection opened before the change still talks to the old backend.
    writer.write(b"after")
    writer.write_eof()
    assert await reader.read() == b"after"
    writer.close()
    assert port_status(proxier, "live").endpoints == [f"127.0.0.1:{new.port}"]


async def test_service_port_change_keeps_the_listener_and_a_protocol_change_replaces_it(backends):
    """The relay listens on a port of its own: the service port's number is the portals' business."""
    backend = await backends(echo_handler)
    changes: list[tuple[str, str]] = []  # services whose listeners were bound or closed: the portals follow
    proxier = Proxier(ProxyOptions(bind_address=LOOPBACK, connect_timeout=0.5), on_change=changes.append)
    try:
        port = await serve_service(
            proxier, make_service("move", ("", 80, "TCP")), make_endpoints("move", [backend.port])
        )
        assert changes == [(NAMESPACE, "move")]
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"

        assert await serve_service(proxier, make_service("move", ("", 81, "TCP")), None) == port
        assert len(changes) == 1 and port_status(proxier, "move").port == 81

        await serve_service(proxier, make_service("move", ("", 81, "UDP")), None)
        assert port_status(proxier, "move").protocol == "UDP" and len(changes) == 3  # closed, bound anew
        with pytest.raises(ConnectionRefusedError):
            await exchange(port)
        # The connection opened before carries on.
        writer.write(b"still here")
        writer.write_eof()
        assert await reader.read() == b"still here"
        writer.close()
    finally:
        await proxier.shutdown(grace=0.5)


async def test_deleted_service_closes_its_listener_and_open_connections_finish(proxier, backends):
    backend = await backends(echo_handler)
    port = await serve_service(proxier, make_service("gone", ("", 80, "TCP")), make_endpoints("gone", [backend.port]))
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"

    proxier.delete_service(NAMESPACE, "gone")

    with pytest.raises(ConnectionRefusedError):
        await exchange(port)
    writer.write(b"still here")
    writer.write_eof()
    assert await reader.read() == b"still here"
    writer.close()
    assert (NAMESPACE, "gone", "") not in proxier.ports


async def test_bind_address_not_there_yet_is_retried(backends):
    """A --bind-address the node does not have yet (say, its address comes up later): reported, retried."""
    backend = await backends(name_handler(b"ok"))
    address = f"10.255.{random.randrange(256)}.{random.randrange(1, 255)}"
    relay = Proxier(ProxyOptions(bind_address=address, bind_retry_initial=0.05, bind_retry_max=0.2))
    added = False
    try:
        relay.set_endpoints(make_endpoints("later", [backend.port]))
        relay.set_service(make_service("later", ("", 80, "TCP")))
        status = port_status(relay, "later")
        assert not status.listening and address in status.error and "assign" in status.error

        await asyncio.to_thread(subprocess.run, ["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
        added = True
        await eventually(lambda: port_status(relay, "later").listening, what="bind retried", timeout=WAIT)
        assert port_status(relay, "later").error == ""
        reader, writer = await asyncio.open_connection(address, relay.relay_port(NAMESPACE, "later"))
        assert await reader.read() == b"ok"
        writer.close()
    finally:
        await relay.shutdown(grace=0.5)
        if added:
            await asyncio.to_thread(subprocess.run, ["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=True)
    shown = await asyncio.to_thread(subprocess.run, ["ip", "-4", "addr", "show", "dev", "lo"], capture_output=True,
                                    text=True)
    assert address not in shown.stdout


async def test_client_ip_affinity_pins_the_client(proxier, backends):
    started = [await backends(name_handler(name)) for name in (b"a", b"b", b"c")]
    port = await serve_service(
        proxier, make_service("sticky", ("", 80, "TCP"), affinity="ClientIP"),
        make_endpoints("sticky", [b.port for b in started]),
    )
    replies = {await exchange(port) for _ in range(9)}
    assert len(replies) == 1

    # Turning affinity off spreads the same client again.
    proxier.set_service(make_service("sticky", ("", 80, "TCP")))
    assert {await exchange(port) for _ in range(9)} == {b"a", b"b", b"c"}


async def test_ports_matched_by_name_in_a_multi_port_service(proxier, backends):
    web = await backends(name_handler(b"web"))
    admin = await backends(name_handler(b"admin"))
    endpoints = endpoints_pb2.Endpoints(
        metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name="multi"),
        subsets=[endpoints_pb2.EndpointSubset(
            addresses=[endpoints_pb2.EndpointAddress(ip=LOOPBACK)],
            ports=[endpoints_pb2.EndpointPort(name="admin", port=admin.port),
                   endpoints_pb2.EndpointPort(name="web", port=web.port)],
        )],
    )
    await serve_service(proxier, make_service("multi", ("web", 80, "TCP"), ("admin", 81, "TCP")), endpoints)
    web_port, admin_port = relay_port(proxier, "multi", "web"), relay_port(proxier, "multi", "admin")
    assert web_port != admin_port
    assert await exchange(web_port) == b"web"
    assert await exchange(admin_port) == b"admin"


# Data path -----------------------------------------------------------------------------------


@pytest.mark.parametrize("proxier", ["splice", "copy"], indirect=True)
@pytest.mark.parametrize("size", [5, 3 * 1024 * 1024])
async def test_half_closed_client_gets_the_whole_reply(proxier, backends, size):
    backend = await backends(echo_handler)
    port = await serve_service(proxier, make_service("half", ("", 80, "TCP")), make_endpoints("half", [backend.port]))
    payload = os.urandom(size)

    # The backend answers only after the client's EOF: the proxy must pass the
    # client's shutdown on and keep the other direction open.
    reply = await exchange(port, payload)

    assert reply == payload
    status = port_status(proxier, "half")
    assert status.bytes_in == size and status.bytes_out == size


@pytest.mark.parametrize("proxier", ["splice", "copy"], indirect=True)
async def test_100_megabytes_arrive_intact_both_ways(proxier, backends):
    backend = await backends(echo_handler)
    port = await serve_service(proxier, make_service("bulk", ("", 80, "TCP")), make_endpoints("bulk", [backend.port]))
    block = os.urandom(1024 * 1024)
    chunks = 100

    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    sent_hash = hashlib.sha256()

    async def send() -> None:
        for index in range(chunks):
            chunk = index.to_bytes(8, "big") + block[8:]  # every MiB differs: order is checked too
            sent_hash.update(chunk)
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()

    async def receive() -> tuple[int, str]:
        received_hash = hashlib.sha256()
        total = 0
        while chunk := await reader.read(1024 * 1024):
            received_hash.update(chunk)
            total += len(chunk)
        return total, received_hash.hexdigest()

    _, (total, digest) = await asyncio.wait_for(asyncio.gather(send(), receive()), 120)
    writer.close()

    assert total == chunks * len(block)
    assert digest == sent_hash.hexdigest()
    status = port_status(proxier, "bulk")
    assert status.bytes_in == status.bytes_out == chunks * len(block)


@pytest.mark.parametrize("proxier", ["splice", "copy"], indirect=True)
async def test_slow_reader_holds_back_the_writer(proxier):
    """Back-pressure: while the client reads nothing, the backend's writes stall
    after a bounded amount (socket buffers and one pipe), then all of it arrives."""
    written = 0
    stalled = asyncio.Event()
    total = 200 * 1024 * 1024
    chunk = os.urandom(256 * 1024)

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        while written < total:
            writer.write(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 1.0)
            except asyncio.TimeoutError:
                stalled.set()
                await writer.drain()
            written += len(chunk)

    backend = await TcpBackend(flood).start()
    try:
        port = await serve_service(
            proxier, make_service("slow", ("", 80, "TCP")), make_endpoints("slow", [backend.port])
        )
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        await asyncio.wait_for(stalled.wait(), 60)
        held = written
        # Kernel socket buffers (a few MiB each here) plus one pipe or one copy buffer.
        assert held < 64 * 1024 * 1024, f"{held} bytes went out while the client read nothing"
        received = 0
        while received < total:
            data = await asyncio.wait_for(reader.read(1024 * 1024), 60)
            assert data, "the stream ended early"
            received += len(data)
        assert received == total
        writer.close()
    finally:
        await backend.stop()


async def test_reset_by_the_backend_resets_the_client(proxier):
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    backend = await TcpBackend(reset).start()
    try:
        port = await serve_service(proxier, make_service("rst", ("", 80, "TCP")), make_endpoints("rst", [backend.port]))
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(b"ping")
        with pytest.raises(ConnectionResetError):
            data = await asyncio.wait_for(reader.read(), 10)
            # Either the reset surfaces at once, or as EOF then an error on write.
            assert data == b""
            writer.write(b"more")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b"more")
            await writer.drain()
        writer.close()
        await eventually(
            lambda: port_status(proxier, "rst").connections_active == 0, what="connection closed", timeout=WAIT
        )
    finally:
        await backend.stop()


GREETER = """
import socket, sys
listener = socket.create_server(("127.0.0.1", 0), backlog=256)
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    conn.sendall(b"220 ready")
    conn.close()
"""


async def test_backend_that_speaks_first_is_heard(proxier):
    """A backend (its own process) that greets and closes as soon as it accepts:
    its bytes may arrive together with the news that the connect completed."""
    greeter = await asyncio.create_subprocess_exec(
        sys.executable, "-c", GREETER, stdout=asyncio.subprocess.PIPE,
    )
    try:
        backend_port = int(await asyncio.wait_for(greeter.stdout.readline(), 30))
        port = await serve_service(
            proxier, make_service("greet", ("", 80, "TCP")), make_endpoints("greet", [backend_port])
        )
        # Stall every loop turn a little, so the greeting usually lands before
        # the proxy hears that its connect completed.
        loop = asyncio.get_running_loop()
        stalling = True

        def stall() -> None:
            time.sleep(0.002)
            if stalling:
                loop.call_soon(stall)

        loop.call_soon(stall)

        async def hear_greeting() -> bytes:
            # The client says nothing and keeps its side open, as SMTP clients do.
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            try:
                return await asyncio.wait_for(reader.readexactly(9), 10)
            finally:
                writer.close()

        try:
            for _ in range(3):
                replies = await asyncio.gather(*(hear_greeting() for _ in range(20)))
                assert replies == [b"220 ready"] * 20
        finally:
            stalling = False
    finally:
        greeter.kill()
        await greeter.wait()


async def test_many_concurrent_connections_all_complete(proxier, backends):
    started = [await backends(echo_handler) for _ in range(3)]
    port = await serve_service(
        proxier, make_service("many", ("", 80, "TCP")), make_endpoints("many", [b.port for b in started])
    )

    payloads = [os.urandom(100 + i) for i in range(300)]
    replies = await asyncio.gather(*(exchange(port, p) for p in payloads))

    assert replies == payloads
    await eventually(
        lambda: port_status(proxier, "many").connections_active == 0, what="connections closed", timeout=WAIT
    )
    assert port_status(proxier, "many").connections_total == 300
    assert sum(b.connections for b in started) == 300


# UDP -----------------------------------------------------------------------------------------


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, name: bytes) -> None:
        self.name = name

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(self.name + b":" + data, addr)


async def udp_request(port: int, payloads: list[bytes], timeout: float = 10.0) -> list[bytes]:
    """Sends each payload from one client socket and returns the replies, in order."""
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr) -> None:
            replies.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(LOOPBACK, port))
    try:
        out = []
        for payload in payloads:
            transport.sendto(payload)
            out.append(await asyncio.wait_for(replies.get(), timeout))
        return out
    finally:
        transport.close()


async def test_udp_round_trip_and_per_client_sessions(proxier):
    loop = asyncio.get_running_loop()
    transports = []
    ports = []
    for name in (b"u1", b"u2"):
        transport, _ = await loop.create_datagram_endpoint(lambda n=name: UdpEcho(n), local_addr=(LOOPBACK, 0))
        transports.append(transport)
        ports.append(transport.get_extra_info("sockname")[1])
    try:
        port = await serve_service(
            proxier, make_service("dns", ("dns", 53, "UDP")), make_endpoints("dns", ports, port_name="dns")
        )

        first = await udp_request(port, [b"a", b"b", b"c"])
        second = await udp_request(port, [b"d"])

        # One client address stays on one backend for its session; the next client gets the next backend.
        backend_of_first = first[0].split(b":")[0]
        assert first == [backend_of_first + b":" + p for p in (b"a", b"b", b"c")]
        assert second[0].split(b":")[0] != backend_of_first
        status = port_status(proxier, "dns", "dns")
        assert status.protocol == "UDP" and status.connections_total == 2
        assert status.bytes_in == 4 and status.bytes_out == sum(len(r) for r in first + second)
        # Idle sessions are closed after the idle timeout (0.5 s here).
        await eventually(
            lambda: port_status(proxier, "dns", "dns").connections_active == 0, what="sessions expired", timeout=WAIT
        )
    finally:
        for transport in transports:
            transport.close()


async def test_udp_backend_that_refuses_is_skipped(proxier):
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: UdpEcho(b"live"), local_addr=(LOOPBACK, 0))
    live_port = transport.get_extra_info("sockname")[1]
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind((LOOPBACK, 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing there: the kernel answers ICMP port unreachable
    try:
        port = await serve_service(
            proxier, make_service("udp2", ("", 53, "UDP")), make_endpoints("udp2", [dead_port, live_port])
        )
        replies = []
        for _ in range(4):
            try:
                replies += await udp_request(port, [b"x"], timeout=1.0)
            except asyncio.TimeoutError:
                replies.append(None)  # the datagram that met the dead backend is lost, as UDP may
        assert replies[-2:] == [b"live:x", b"live:x"]
        assert port_status(proxier, "udp2").connect_failures >= 1
    finally:
        transport.close()


# Status --------------------------------------------------------------------------------------


async def test_status_rpc_reports_ports_and_counters(proxier, backends):
    backend = await backends(echo_handler)
    port = await serve_service(
        proxier, make_service("stat", ("http", 80, "TCP")), make_endpoints("stat", [backend.port], port_name="http")
    )
    assert await exchange(port, b"12345") == b"12345"
    await eventually(
        lambda: port_status(proxier, "stat", "http").connections_active == 0, what="connection closed", timeout=WAIT
    )

    pki = dev_pki()
    server = StatusServer(proxier, "node-a", ServingCertificate.from_files(*pki.pair("kube-proxy"), pki.ca_file))
    status_port = await server.start(f"{LOOPBACK}:0")
    try:
        async with aio_channel(f"{LOOPBACK}:{status_port}", pki.credentials("admin")) as channel:
            status = await proxy_pb2_grpc.ProxyStub(channel).Status(proxy_pb2.ProxyStatusRequest(), timeout=10)
    finally:
        await server.stop(0)

    assert status.node_name == "node-a"
    [entry] = [p for p in status.ports if p.service == "stat"]
    # The service port, not the relay's own.
    assert (entry.namespace, entry.port_name, entry.protocol, entry.port) == (NAMESPACE, "http", "TCP", 80)
    assert entry.listening and entry.error == ""
    assert list(entry.endpoints) == [f"127.0.0.1:{backend.port}"]
    assert (entry.connections_total, entry.connections_active, entry.connect_failures) == (1, 0, 0)
    assert (entry.bytes_in, entry.bytes_out) == (5, 5)
