"""kube-dns as users run it (`python -m services.dns.main`) against a real API server over real etcd.

Network safety: every packet stays on loopback. kube-dns listens on 127.0.0.1 and forwards to a
fake upstream resolver on 127.0.0.1 (never to /etc/resolv.conf's servers: `--upstream` is always
given); the service and endpoint addresses below are only data in DNS answers.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import socketserver
import subprocess
import threading
from typing import Iterator

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import dns.rrset
import pytest

from kybernetes.v1 import endpoints_pb2, meta_pb2, service_pb2
from services.common.client import ApiClient
from services.common.resources import ENDPOINTS, SERVICES
from tests.polling import eventually
from tools.processes import REPO, ManagedProcess, free_port, python_module_argv, wait_for_port

LOOPBACK = "127.0.0.1"
WAIT = 10.0  # seconds for a change in the API to show in DNS (it takes milliseconds)
SVC = "svc.cluster.local."
BIG_ANSWER = 40  # A records in the fake upstream's answer for big.example.test: over 512 bytes


# -- a fake upstream resolver on loopback --------------------------------------------------


def upstream_reply(wire: bytes, *, tcp: bool) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    question = query.question[0]
    name = question.name.to_text().lower()
    if name == "example.test." and question.rdtype == dns.rdatatype.A:
        response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", "192.0.2.1"))
    elif name == "big.example.test." and question.rdtype == dns.rdatatype.A:
        if tcp:
            addresses = [f"192.0.2.{i + 1}" for i in range(BIG_ANSWER)]
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", "A", addresses))
        else:
            response.flags |= dns.flags.TC  # "ask me over TCP"
    else:
        response.set_rcode(dns.rcode.NXDOMAIN)
    return response.to_wire()


class FakeUpstream:
    """A resolver on 127.0.0.1 (UDP and TCP, one port) that records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str]] = []  # (transport, name, type)
        upstream = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                wire, sock = self.request
                upstream.record("udp", wire)
                sock.sendto(upstream_reply(wire, tcp=False), self.client_address)

        class Tcp(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                length = int.from_bytes(self.rfile.read(2), "big")
                wire = self.rfile.read(length)
                upstream.record("tcp", wire)
                reply = upstream_reply(wire, tcp=True)
                self.wfile.write(len(reply).to_bytes(2, "big") + reply)

        self.udp = socketserver.ThreadingUDPServer((LOOPBACK, 0), Udp)
        self.port = self.udp.server_address[1]
        self.tcp = socketserver.ThreadingTCPServer((LOOPBACK, self.port), Tcp)
        self._threads = [
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            for server in (self.udp, self.tcp)
        ]
        for thread in self._threads:
            thread.start()

    def record(self, transport: str, wire: bytes) -> None:
        question = dns.message.from_wire(wire).question[0]
        self.asked.append((transport, question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)))

    def close(self) -> None:
        for server in (self.udp, self.tcp):
            server.shutdown()
            server.server_close()


# -- kube-dns --------------------------------------------------------------------------


class KubeDns(ManagedProcess):
    def __init__(self, server: str, upstream_port: int) -> None:
        self.port = free_port()
        super().__init__(
            "kube-dns",
            python_module_argv(
                "services.dns.main",
                "--server", server,
                "--listen", f"{LOOPBACK}:{self.port}",
                "--upstream", f"{LOOPBACK}:{upstream_port}",
                "--upstream-timeout", "1",
            ),
        )
        try:
            wait_for_port(self.port, self.process, timeout=30)
        except Exception:
            self.stop()
            raise

    async def ask(self, name: str, rdtype: str = "A", *, tcp: bool = False, **query_args) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, **query_args)
        if tcp:
            return await dns.asyncquery.tcp(query, LOOPBACK, timeout=3, port=self.port)
        return await dns.asyncquery.udp(query, LOOPBACK, timeout=3, port=self.port)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def kube_dns(apiserver, upstream) -> Iterator[KubeDns]:
    process = KubeDns(apiserver.address, upstream.port)
    yield process
    code = process.stop()
    assert code == 0, f"kube-dns exited {code} on SIGTERM:\n{process.log_tail()}"


def answers(response: dns.message.Message) -> set[str]:
    return {rdata.to_text() for rrset in response.answer for rdata in rrset}


async def resolves(
    kube_dns: KubeDns, name: str, rdtype: str, expected: set[str], *, rcode: int = dns.rcode.NOERROR, tcp: bool = False
) -> dns.message.Message:
    """Polls until kube-dns answers `name` with exactly `expected` (and `rcode`)."""

    async def check() -> dns.message.Message:
        response = await kube_dns.ask(name, rdtype, tcp=tcp)
        seen = (dns.rcode.to_text(response.rcode()), answers(response))
        assert seen == (dns.rcode.to_text(rcode), expected), f"{seen}\n{kube_dns.log_tail(10)}"
        return response

    return await eventually(check, timeout=WAIT, what=f"{name} {rdtype}", retry_on=(dns.exception.Timeout,))


def cluster_ip_service(name: str, namespace: str, cluster_ip: str) -> service_pb2.Service:
    return service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace),
        spec=service_pb2.ServiceSpec(
            cluster_ip=cluster_ip,
            selector={"app": name},
            ports=[
                service_pb2.ServicePort(name="http", port=80, protocol="TCP"),
                service_pb2.ServicePort(name="dns", port=53, protocol="UDP"),
            ],
        ),
    )


def hand_endpoints(name: str, namespace: str, ready: list[tuple[str, str]], not_ready: list[tuple[str, str]]):
    """Endpoints as an operator writes them for a service without a selector: (ip, hostname) pairs."""
    return endpoints_pb2.Endpoints(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace),
        subsets=[
            endpoints_pb2.EndpointSubset(
                addresses=[endpoints_pb2.EndpointAddress(ip=ip, hostname=host) for ip, host in ready],
                not_ready_addresses=[endpoints_pb2.EndpointAddress(ip=ip, hostname=host) for ip, host in not_ready],
                ports=[endpoints_pb2.EndpointPort(name="http", port=8080, protocol="TCP")],
            )
        ],
    )


# -- tests ---------------------------------------------------------------------------------


def random_cluster_ip() -> str:
    """A hand-picked address in the API server's default --service-cluster-ip-range (10.96.0.0/12)
    that no other test (the API server is shared by the session) is likely to have taken."""
    return f"10.{random.randint(97, 110)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def reverse(ip: str) -> str:
    return dns.reversename.from_address(ip).to_text()


async def test_cluster_ip_service_a_srv_ptr_follow_updates_and_delete(api: ApiClient, namespace: str, kube_dns):
    # A cluster IP set by hand is kept as given (the API server checks it is in range and free).
    first_ip = random_cluster_ip()
    created = await api.create(cluster_ip_service("web", namespace, first_ip))
    assert created.spec.cluster_ip == first_ip
    name = f"web.{namespace}.{SVC}"

    response = await resolves(kube_dns, name, "A", {first_ip})
    assert response.flags & dns.flags.AA and response.answer[0].ttl == 5
    await resolves(kube_dns, name, "A", {first_ip}, tcp=True)
    await resolves(kube_dns, name.upper(), "A", {first_ip})  # names are case-insensitive
    await resolves(kube_dns, f"_http._tcp.{name}", "SRV", {f"0 100 80 {name}"})
    await resolves(kube_dns, f"_dns._udp.{name}", "SRV", {f"0 100 53 {name}"})
    await resolves(kube_dns, reverse(first_ip), "PTR", {name})
    nodata = await resolves(kube_dns, name, "AAAA", set())
    assert [rrset.rdtype for rrset in nodata.authority] == [dns.rdatatype.SOA]

    # spec.clusterIP is immutable; the ports are not.
    service = await api.get(SERVICES, "web", namespace)
    service.spec.ports[0].port = 8080
    service.spec.ports.add(name="metrics", port=9090, protocol="TCP")
    await api.update(service)
    await resolves(kube_dns, f"_http._tcp.{name}", "SRV", {f"0 100 8080 {name}"})
    await resolves(kube_dns, f"_metrics._tcp.{name}", "SRV", {f"0 100 9090 {name}"})

    await api.delete(SERVICES, "web", namespace)
    gone = await resolves(kube_dns, name, "A", set(), rcode=dns.rcode.NXDOMAIN)
    assert gone.flags & dns.flags.AA and [rrset.rdtype for rrset in gone.authority] == [dns.rdatatype.SOA]
    await resolves(kube_dns, f"_http._tcp.{name}", "SRV", set(), rcode=dns.rcode.NXDOMAIN)
    # The address's reverse name is no longer the cluster's: it goes upstream (NXDOMAIN there).
    await resolves(kube_dns, reverse(first_ip), "PTR", set(), rcode=dns.rcode.NXDOMAIN)

    # Made again, with the address the API server picks.
    recreated = await api.create(cluster_ip_service("web", namespace, ""))
    second_ip = recreated.spec.cluster_ip
    assert second_ip and second_ip != first_ip
    await resolves(kube_dns, name, "A", {second_ip})
    await resolves(kube_dns, reverse(second_ip), "PTR", {name})


async def test_headless_service_answers_its_ready_endpoints(api: ApiClient, namespace: str, kube_dns):
    headless = service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(name="db", namespace=namespace),
        spec=service_pb2.ServiceSpec(cluster_ip="None", ports=[service_pb2.ServicePort(name="http", port=80)]),
    )
    await api.create(headless)
    name = f"db.{namespace}.{SVC}"
    await resolves(kube_dns, name, "A", set())  # exists, no ready endpoint: NODATA

    ready, not_ready = [("10.244.7.1", "db-0"), ("10.244.7.2", "")], [("10.244.7.3", "")]
    await api.create(hand_endpoints("db", namespace, ready=ready, not_ready=not_ready))
    await resolves(kube_dns, name, "A", {"10.244.7.1", "10.244.7.2"})
    await resolves(kube_dns, f"db-0.{name}", "A", {"10.244.7.1"})
    await resolves(kube_dns, f"10-244-7-2.{name}", "A", {"10.244.7.2"})
    await resolves(kube_dns, f"10-244-7-3.{name}", "A", set(), rcode=dns.rcode.NXDOMAIN)
    srv = await resolves(
        kube_dns, f"_http._tcp.{name}", "SRV", {f"0 50 8080 db-0.{name}", f"0 50 8080 10-244-7-2.{name}"}
    )
    assert {rdata.to_text() for rrset in srv.additional for rdata in rrset} == {"10.244.7.1", "10.244.7.2"}
    await resolves(kube_dns, "1.7.244.10.in-addr.arpa.", "PTR", {f"db-0.{name}"})

    endpoints = await api.get(ENDPOINTS, "db", namespace)
    moved = hand_endpoints("db", namespace, ready=[("10.244.7.1", "db-0")], not_ready=[("10.244.7.2", "")])
    moved.metadata.CopyFrom(endpoints.metadata)
    await api.update(moved)
    await resolves(kube_dns, name, "A", {"10.244.7.1"})
    await resolves(kube_dns, f"_http._tcp.{name}", "SRV", {f"0 100 8080 db-0.{name}"})

    await api.delete(ENDPOINTS, "db", namespace)
    await resolves(kube_dns, name, "A", set())
    await api.delete(SERVICES, "db", namespace)
    await resolves(kube_dns, name, "A", set(), rcode=dns.rcode.NXDOMAIN)


async def test_other_names_are_forwarded_to_the_upstream(kube_dns, upstream: FakeUpstream):
    for tcp in (False, True):
        response = await kube_dns.ask("example.test.", tcp=tcp)
        assert answers(response) == {"192.0.2.1"} and response.rcode() == dns.rcode.NOERROR
        assert not response.flags & dns.flags.AA
    assert (await kube_dns.ask("nope.example.test.")).rcode() == dns.rcode.NXDOMAIN
    assert ("udp", "nope.example.test.", "A") in upstream.asked

    # The upstream truncates over UDP: kube-dns asks it again over TCP ...
    whole = await kube_dns.ask("big.example.test.", tcp=True)
    assert len(answers(whole)) == BIG_ANSWER
    assert ("tcp", "big.example.test.", "A") in upstream.asked
    # ... and truncates for a UDP client that cannot take it all, which retries over TCP.
    truncated = await kube_dns.ask("big.example.test.")
    assert truncated.flags & dns.flags.TC
    roomy = await kube_dns.ask("big.example.test.", use_edns=0, payload=1232)
    assert len(answers(roomy)) == BIG_ANSWER and not roomy.flags & dns.flags.TC


async def test_garbage_gets_formerr_or_nothing_and_harms_nothing(kube_dns):
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((LOOPBACK, kube_dns.port))
        for junk in (b"\x00", b"\xff" * 3, bytes(range(256))):
            sock.send(junk)
        # Only the packet long enough to hold a header gets an answer: FORMERR, its own id.
        reply = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(sock, 4096), 3))
        assert reply.rcode() == dns.rcode.FORMERR and reply.id == 0x0001

    reader, writer = await asyncio.open_connection(LOOPBACK, kube_dns.port)
    try:
        junk = b"\x12\x34" + b"\x01\x00\x00\x01" + b"\xff" * 20
        writer.write(len(junk).to_bytes(2, "big") + junk)
        length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 3), "big")
        reply = dns.message.from_wire(await reader.readexactly(length))
        assert reply.rcode() == dns.rcode.FORMERR and reply.id == 0x1234
    finally:
        writer.close()
        await writer.wait_closed()

    assert kube_dns.alive()
    assert (await kube_dns.ask("example.test.")).rcode() == dns.rcode.NOERROR
    assert "dns_malformed_query" in kube_dns.log_text()


def test_sigterm_stops_it_cleanly_and_bad_flags_are_refused(apiserver, upstream):
    process = KubeDns(apiserver.address, upstream.port)
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(30) == 0
    log = process.log_text()
    process.stop()
    assert "dns_starting" in log and "dns_stopped" in log

    result = subprocess.run(
        python_module_argv("services.dns.main", "--listen", "127.0.0.1:10053", "--upstream", "127.0.0.1:10053"),
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 2 and "forwarding loop" in result.stderr
    result = subprocess.run(
        python_module_argv("services.dns.main", "--upstream", "dns.example"),
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 2 and "is not an IP address" in result.stderr
