"""kube-dns's records and answering, as tables over a hand-built index: no sockets, no API."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import pytest

from kybernetes.v1 import endpoints_pb2, meta_pb2, pod_pb2, service_pb2
from services.dns.answer import FORWARD, MalformedQuery, answer, parse_query
from services.dns.forwarder import Forwarder, Upstream, parse_upstream, upstreams_from_resolv_conf
from services.dns.records import NO_RECORDS, RecordIndex, service_records
from services.dns.server import DnsServer
from services.dns.throttle import Throttle

ZONE = dns.name.from_text("cluster.local")


def service(name: str, cluster_ip: str, *ports: tuple[str, int, str], namespace: str = "default"):
    return service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace),
        spec=service_pb2.ServiceSpec(
            cluster_ip=cluster_ip,
            ports=[service_pb2.ServicePort(name=n, port=p, protocol=proto) for n, p, proto in ports],
        ),
    )


def address(ip: str, *, hostname: str = "", pod: str = "") -> endpoints_pb2.EndpointAddress:
    ref = pod_pb2.ObjectReference(kind="Pod", name=pod) if pod else None
    return endpoints_pb2.EndpointAddress(ip=ip, hostname=hostname, target_ref=ref)


def endpoints(name: str, ready, not_ready=(), ports=(("http", 8080, "TCP"),), namespace: str = "default"):
    return endpoints_pb2.Endpoints(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace),
        subsets=[
            endpoints_pb2.EndpointSubset(
                addresses=list(ready),
                not_ready_addresses=list(not_ready),
                ports=[endpoints_pb2.EndpointPort(name=n, port=p, protocol=proto) for n, p, proto in ports],
            )
        ],
    )


WEB = service("web", "10.96.0.10", ("http", 80, "TCP"), ("dns", 53, "UDP"))
DB = service("db", "None", ("http", 80, "TCP"))
DB_ENDPOINTS = endpoints(
    "db",
    ready=[address("10.1.0.1", hostname="db-0", pod="db-0"), address("10.1.0.2", pod="db-abc")],
    not_ready=[address("10.1.0.3", pod="db-zzz")],
)
EMPTY = service("empty", "None", ("http", 80, "TCP"))
PENDING = service("pending", "", ("http", 80, "TCP"))  # no cluster IP allocated yet
V6 = service("v6", "fd00::10", ("http", 80, "TCP"), namespace="other")
UNNAMED = service("unnamed", "10.96.0.11", ("", 80, "TCP"))


def build_index(*, ready: bool = True, endpoint_pod_names: bool = False) -> RecordIndex:
    index = RecordIndex("cluster.local", ttl=5, serial=1)
    for svc, eps in ((WEB, None), (DB, DB_ENDPOINTS), (EMPTY, None), (PENDING, None), (V6, None), (UNNAMED, None)):
        records = service_records(svc, eps, index.zone, endpoint_pod_names=endpoint_pod_names)
        index.replace((svc.metadata.namespace, svc.metadata.name), records)
    index.ready = ready
    return index


INDEX = build_index()


def ask(name: str, rdtype: str = "A", index: RecordIndex = INDEX, rdclass: str = "IN"):
    return answer(dns.message.make_query(name, rdtype, rdclass), index)


def texts(section) -> set[str]:
    return {f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {rdata}" for rrset in section for rdata in rrset}


def answers(response) -> set[str]:
    return {rdata.to_text() for rrset in response.answer for rdata in rrset}


SVC = "svc.cluster.local."


@pytest.mark.parametrize(
    "name, rdtype, expected",
    [
        pytest.param(f"web.default.{SVC}", "A", {"10.96.0.10"}, id="cluster-ip-a"),
        pytest.param("WeB.DEFAULT.Svc.Cluster.Local.", "A", {"10.96.0.10"}, id="case-insensitive"),
        pytest.param(f"db.default.{SVC}", "A", {"10.1.0.1", "10.1.0.2"}, id="headless-ready-only"),
        pytest.param(f"db-0.db.default.{SVC}", "A", {"10.1.0.1"}, id="headless-endpoint-by-hostname"),
        pytest.param(f"10-1-0-2.db.default.{SVC}", "A", {"10.1.0.2"}, id="headless-endpoint-by-dashed-ip"),
        pytest.param(f"v6.other.{SVC}", "AAAA", {"fd00::10"}, id="ipv6-cluster-ip"),
        pytest.param(
            f"_http._tcp.web.default.{SVC}", "SRV", {"0 100 80 web.default.svc.cluster.local."}, id="srv-tcp"
        ),
        pytest.param(f"_dns._udp.web.default.{SVC}", "SRV", {"0 100 53 web.default.svc.cluster.local."}, id="srv-udp"),
        pytest.param(
            f"_HTTP._TCP.db.default.{SVC}", "SRV",
            {"0 50 8080 db-0.db.default.svc.cluster.local.", "0 50 8080 10-1-0-2.db.default.svc.cluster.local."},
            id="srv-headless-per-endpoint",
        ),
        pytest.param("10.0.96.10.in-addr.arpa.", "PTR", {"web.default.svc.cluster.local."}, id="ptr-cluster-ip"),
        pytest.param("1.0.1.10.in-addr.arpa.", "PTR", {"db-0.db.default.svc.cluster.local."}, id="ptr-endpoint"),
        pytest.param(
            dns.reversename.from_address("fd00::10").to_text(), "PTR", {"v6.other.svc.cluster.local."}, id="ptr-ipv6"
        ),
        pytest.param(f"web.default.{SVC}", "ANY", {"10.96.0.10"}, id="any"),
    ],
)
def test_records_answer_authoritatively(name, rdtype, expected):
    response = ask(name, rdtype)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA and response.flags & dns.flags.QR
    assert answers(response) == expected
    for rrset in response.answer:
        assert rrset.ttl == 5
        assert rrset.name.to_text() == dns.name.from_text(name).to_text()  # the question's own spelling
    assert response.question[0].name.to_text() == dns.name.from_text(name).to_text()


@pytest.mark.parametrize(
    "name, rdtype",
    [
        pytest.param(f"nothing.default.{SVC}", "A", id="unknown-service"),
        pytest.param(f"web.nowhere.{SVC}", "A", id="unknown-namespace"),
        pytest.param(f"pending.default.{SVC}", "A", id="no-cluster-ip-yet"),
        pytest.param(f"_http._tcp.pending.default.{SVC}", "SRV", id="no-cluster-ip-no-srv"),
        pytest.param(f"_http._udp.web.default.{SVC}", "SRV", id="srv-wrong-protocol"),
        pytest.param(f"_nope._tcp.web.default.{SVC}", "SRV", id="srv-unknown-port"),
        pytest.param(f"10-1-0-3.db.default.{SVC}", "A", id="not-ready-endpoint"),
        pytest.param(f"x.web.default.{SVC}", "A", id="below-a-service"),
        pytest.param("example.com.default.svc.cluster.local.", "A", id="search-path-expansion"),
        pytest.param("pod.cluster.local.", "A", id="pods-not-served"),
    ],
)
def test_missing_names_are_nxdomain_with_the_soa(name, rdtype):
    response = ask(name, rdtype)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    assert response.answer == []
    [soa] = response.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.name == ZONE and soa.ttl == 5
    assert soa[0].mname.to_text() == "ns.dns.cluster.local." and soa[0].minimum == 5


@pytest.mark.parametrize(
    "name, rdtype",
    [
        pytest.param(f"web.default.{SVC}", "AAAA", id="ipv4-service-aaaa"),
        pytest.param(f"web.default.{SVC}", "TXT", id="other-type"),
        pytest.param(f"web.default.{SVC}", "SRV", id="srv-at-the-service-name"),
        pytest.param(f"_tcp.web.default.{SVC}", "SRV", id="empty-non-terminal-proto"),
        pytest.param(f"default.{SVC}", "A", id="namespace"),
        pytest.param(SVC, "A", id="svc"),
        pytest.param("cluster.local.", "A", id="apex"),
        pytest.param(f"empty.default.{SVC}", "A", id="headless-without-ready-endpoints"),
        pytest.param(f"unnamed.default.{SVC}", "SRV", id="unnamed-port-no-srv"),
    ],
)
def test_existing_names_without_that_type_are_nodata(name, rdtype):
    response = ask(name, rdtype)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert response.answer == []
    assert [rrset.rdtype for rrset in response.authority] == [dns.rdatatype.SOA]


def test_soa_at_the_apex():
    response = ask("cluster.local.", "SOA")
    assert response.rcode() == dns.rcode.NOERROR
    [soa] = response.answer
    assert soa[0].serial == INDEX.serial and soa[0].rname.to_text() == "hostmaster.cluster.local."


def test_srv_answers_carry_the_targets_addresses():
    response = ask(f"_http._tcp.db.default.{SVC}", "SRV")
    assert texts(response.additional) == {
        "db-0.db.default.svc.cluster.local. A 10.1.0.1",
        "10-1-0-2.db.default.svc.cluster.local. A 10.1.0.2",
    }
    response = ask(f"_http._tcp.web.default.{SVC}", "SRV")
    assert texts(response.additional) == {"web.default.svc.cluster.local. A 10.96.0.10"}


def test_endpoint_pod_names_name_endpoints_without_hostname_by_pod():
    index = build_index(endpoint_pod_names=True)
    assert answers(ask(f"db-abc.db.default.{SVC}", index=index)) == {"10.1.0.2"}
    assert answers(ask(f"db-0.db.default.{SVC}", index=index)) == {"10.1.0.1"}  # hostname still wins
    assert ask(f"10-1-0-2.db.default.{SVC}", index=index).rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(
    "name, rdtype",
    [
        pytest.param("example.test.", "A", id="other-domain"),
        pytest.param("localhost.", "A", id="single-label"),
        pytest.param("cluster.local.example.test.", "A", id="zone-as-prefix"),
        pytest.param("notcluster.local.", "A", id="zone-as-suffix-of-a-label"),
        pytest.param("8.8.8.8.in-addr.arpa.", "PTR", id="unknown-reverse-falls-through"),
        pytest.param("3.0.1.10.in-addr.arpa.", "PTR", id="not-ready-endpoint-reverse"),
        pytest.param("10.0.96.10.in-addr.arpa.", "A", id="cluster-ip-reverse-name-other-type"),
    ],
)
def test_names_outside_the_cluster_are_forwarded(name, rdtype):
    assert ask(name, rdtype) is FORWARD


def test_before_the_first_snapshot_cluster_names_are_servfail_not_nxdomain():
    index = build_index(ready=False)
    for name in (f"web.default.{SVC}", f"nothing.default.{SVC}"):
        response = ask(name, index=index)
        assert response.rcode() == dns.rcode.SERVFAIL and not response.flags & dns.flags.AA
    assert ask("example.test.", index=index) is FORWARD


@pytest.mark.parametrize(
    "rdtype, rdclass, rcode",
    [
        pytest.param("A", "CH", dns.rcode.REFUSED, id="chaos-class"),
        pytest.param("AXFR", "IN", dns.rcode.REFUSED, id="zone-transfer"),
        pytest.param("IXFR", "IN", dns.rcode.REFUSED, id="incremental-transfer"),
    ],
)
def test_what_the_zone_does_not_serve_is_refused(rdtype, rdclass, rcode):
    assert ask(f"web.default.{SVC}", rdtype, rdclass=rdclass).rcode() == rcode


# -- malformed input ------------------------------------------------------------


def header(ident: int = 0x1234, flags: int = dns.flags.RD, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


GOOD = dns.message.make_query(f"web.default.{SVC}", "A").to_wire()


@pytest.mark.parametrize(
    "wire, replied",
    [
        pytest.param(b"", False, id="empty"),
        pytest.param(b"\x12\x34\x01", False, id="shorter-than-a-header"),
        pytest.param(header(flags=dns.flags.QR) + GOOD[12:], False, id="a-response"),
        pytest.param(header(), True, id="question-count-without-question"),
        pytest.param(header() + b"\x03web\x00\x00", True, id="question-cut-short"),
        pytest.param(header() + b"\xc0\x0c\x00\x01\x00\x01", True, id="compression-pointer-loop"),
        pytest.param(header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", True, id="bad-label-type"),
        pytest.param(GOOD + b"junk", True, id="trailing-junk"),
        pytest.param(header(an=5) + GOOD[12:], True, id="claims-answers-it-lacks"),
        pytest.param(bytes(range(256)) * 2, True, id="noise"),
    ],
)
def test_malformed_packets_get_formerr_or_are_dropped(wire, replied):
    with pytest.raises(MalformedQuery) as caught:
        parse_query(wire)
    if not replied:
        assert caught.value.reply is None
        return
    reply = dns.message.from_wire(caught.value.reply)
    assert reply.id == struct.unpack_from("!H", wire)[0]
    assert reply.rcode() == dns.rcode.FORMERR and reply.flags & dns.flags.QR


def test_a_good_packet_parses():
    query = parse_query(GOOD)
    assert query.question[0].name == dns.name.from_text(f"web.default.{SVC}")


def test_header_problems_in_a_parsed_query():
    two = dns.message.make_query(f"web.default.{SVC}", "A")
    two.question.append(two.question[0])
    assert answer(parse_query(two.to_wire()), INDEX).rcode() == dns.rcode.FORMERR

    none = dns.message.Message()
    assert answer(parse_query(none.to_wire()), INDEX).rcode() == dns.rcode.FORMERR

    notify = dns.message.make_query(f"web.default.{SVC}", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert answer(parse_query(notify.to_wire()), INDEX).rcode() == dns.rcode.NOTIMP

    future_edns = dns.message.make_query(f"web.default.{SVC}", "A", use_edns=1)
    assert answer(parse_query(future_edns.to_wire()), INDEX).rcode() == dns.rcode.BADVERS


# -- the index under change -----------------------------------------------------------------


def test_updates_replace_a_services_records_and_deletes_leave_nothing_behind():
    index = RecordIndex(serial=7)
    key = ("default", "web")
    assert index.replace(key, service_records(WEB, None, index.zone)) and index.serial == 8
    assert not index.replace(key, service_records(WEB, None, index.zone)) and index.serial == 8  # no change
    index.ready = True

    moved = service("web", "10.96.0.99", ("https", 443, "TCP"))
    index.replace(key, service_records(moved, None, index.zone))
    assert answers(ask(f"web.default.{SVC}", index=index)) == {"10.96.0.99"}
    assert ask("10.0.96.10.in-addr.arpa.", "PTR", index=index) is FORWARD  # the old PTR is gone
    assert answers(ask("99.0.96.10.in-addr.arpa.", "PTR", index=index)) == {"web.default.svc.cluster.local."}
    assert ask(f"_http._tcp.web.default.{SVC}", "SRV", index=index).rcode() == dns.rcode.NXDOMAIN
    assert answers(ask(f"_https._tcp.web.default.{SVC}", "SRV", index=index)) == {
        "0 100 443 web.default.svc.cluster.local."
    }

    assert index.remove(key) and len(index) == 0
    for name in (f"web.default.{SVC}", f"default.{SVC}", SVC):
        assert ask(name, index=index).rcode() == dns.rcode.NXDOMAIN, name
    assert ask("99.0.96.10.in-addr.arpa.", "PTR", index=index) is FORWARD
    assert ask("cluster.local.", "SOA", index=index).rcode() == dns.rcode.NOERROR  # the apex always exists


def test_two_services_sharing_an_address_share_its_reverse_name_until_one_goes():
    index = RecordIndex()
    index.ready = True
    index.replace(("a", "one"), service_records(service("one", "10.96.0.5", namespace="a"), None, index.zone))
    index.replace(("b", "two"), service_records(service("two", "10.96.0.5", namespace="b"), None, index.zone))
    ptr = "5.0.96.10.in-addr.arpa."
    assert answers(ask(ptr, "PTR", index=index)) == {"one.a.svc.cluster.local.", "two.b.svc.cluster.local."}
    index.remove(("a", "one"))
    assert answers(ask(ptr, "PTR", index=index)) == {"two.b.svc.cluster.local."}
    assert ask(f"a.{SVC}", index=index).rcode() == dns.rcode.NXDOMAIN
    assert ask(f"b.{SVC}", index=index).rcode() == dns.rcode.NOERROR


def test_headless_endpoints_come_and_go():
    index = RecordIndex()
    index.ready = True
    key = ("default", "db")
    index.replace(key, service_records(DB, None, index.zone))
    assert ask(f"db.default.{SVC}", index=index).rcode() == dns.rcode.NOERROR  # exists, no address yet
    index.replace(key, service_records(DB, DB_ENDPOINTS, index.zone))
    assert answers(ask(f"db.default.{SVC}", index=index)) == {"10.1.0.1", "10.1.0.2"}
    one = endpoints("db", ready=[address("10.1.0.2")], not_ready=[address("10.1.0.1", hostname="db-0")])
    index.replace(key, service_records(DB, one, index.zone))
    assert answers(ask(f"db.default.{SVC}", index=index)) == {"10.1.0.2"}
    assert ask(f"db-0.db.default.{SVC}", index=index).rcode() == dns.rcode.NXDOMAIN
    assert answers(ask(f"_http._tcp.db.default.{SVC}", "SRV", index=index)) == {
        "0 100 8080 10-1-0-2.db.default.svc.cluster.local."
    }


@pytest.mark.parametrize(
    "svc",
    [
        pytest.param(PENDING, id="no-cluster-ip"),
        pytest.param(service("bad", "not-an-ip"), id="unreadable-cluster-ip"),
        pytest.param(service("x" * 64, "10.96.0.1"), id="name-too-long-for-a-label"),
    ],
)
def test_services_that_cannot_have_records(svc):
    assert service_records(svc, None, ZONE) == NO_RECORDS


# -- replies on the wire (the server's encoding, without sockets) --------------------------


def test_a_reply_too_big_for_udp_is_truncated_and_whole_over_tcp():
    index = RecordIndex()
    index.ready = True
    many = endpoints("big", ready=[address(f"10.2.{i // 250}.{i % 250 + 1}") for i in range(100)])
    index.replace(("default", "big"), service_records(service("big", "None"), many, index.zone))
    server = DnsServer(index, Forwarder([]))
    query = dns.message.make_query(f"big.default.{SVC}", "A")

    udp = dns.message.from_wire(server.handle_locally(query.to_wire(), "test", udp=True))
    assert udp.flags & dns.flags.TC and len(query.to_wire()) <= 512

    edns = dns.message.make_query(f"big.default.{SVC}", "A", use_edns=0, payload=4096)
    wire = server.handle_locally(edns.to_wire(), "test", udp=True)
    assert len(wire) <= 1232 and dns.message.from_wire(wire).flags & dns.flags.TC

    tcp = dns.message.from_wire(server.handle_locally(query.to_wire(), "test", udp=False))
    assert not tcp.flags & dns.flags.TC and len(answers(tcp)) == 100


def test_the_server_hands_back_queries_to_forward_and_formerr_for_garbage():
    server = DnsServer(INDEX, Forwarder([]))
    query = dns.message.make_query("example.test.", "A")
    outcome = server.handle_locally(query.to_wire(), "test", udp=True)
    assert isinstance(outcome, dns.message.Message) and outcome.question == query.question
    reply = server.handle_locally(header(ident=7), "test", udp=True)
    assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR
    assert server.handle_locally(b"\x00", "test", udp=True) is None
    assert (server.queries, server.malformed, server.answered) == (3, 2, 0)


# -- upstream configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("10.0.0.2", Upstream("10.0.0.2", 53), id="ip"),
        pytest.param("10.0.0.2:5353", Upstream("10.0.0.2", 5353), id="ip-port"),
        pytest.param("fd00::2", Upstream("fd00::2", 53), id="ipv6"),
        pytest.param("[fd00::2]:5353", Upstream("fd00::2", 5353), id="ipv6-port"),
    ],
)
def test_upstream_addresses(text, expected):
    assert parse_upstream(text) == expected


@pytest.mark.parametrize("text", ["dns.example", "10.0.0.2:0", "10.0.0.2:x", "[fd00::2", "[fd00::2]x"])
def test_bad_upstream_addresses(text):
    with pytest.raises(ValueError):
        parse_upstream(text)


def test_default_upstreams_are_resolv_conf_without_loopback(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example\nnameserver 127.0.0.53\nnameserver 10.9.9.9\nnameserver ::1\nnameserver fd00::9\n")
    assert upstreams_from_resolv_conf(str(conf)) == [Upstream("10.9.9.9"), Upstream("fd00::9")]
    assert upstreams_from_resolv_conf(str(tmp_path / "missing")) == []


def test_the_log_throttle():
    now = [100.0]
    throttle = Throttle(per_second=2, clock=lambda: now[0])
    assert [throttle.allow() for _ in range(4)] == [True, True, False, False]
    now[0] = 101.0
    assert throttle.allow() and throttle.take_suppressed() == 2 and throttle.take_suppressed() == 0


def test_edns_queries_get_edns_answers():
    query = dns.message.make_query(f"web.default.{SVC}", "A", use_edns=0, payload=4096)
    response = answer(query, INDEX)
    assert response.edns == 0 and response.payload == 1232
    assert answers(response) == {"10.96.0.10"}
    assert response.answer[0].rdclass == dns.rdataclass.IN
