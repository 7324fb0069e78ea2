"""Answering a query from the record index: pure (no I/O, no clock), table-tested without sockets.

`parse_query(wire)` is the gate from the network: it returns a parsed query, or raises
`MalformedQuery` carrying the FORMERR reply to send (or none, when the packet is too short to
have a header, or is a response: answering responses invites loops and reflection).

`answer(query, index)` then decides, as CoreDNS's kubernetes plugin does:

- a name in the cluster zone is ours (authoritative, AA):
  records of the asked type -> NOERROR with them (SRV targets' addresses in additional);
  the name exists but has no record of that type -> NOERROR, no answer, SOA in authority (NODATA);
  the name does not exist -> NXDOMAIN with the SOA in authority;
  before the informers' first snapshot -> SERVFAIL (an empty index must not deny names that exist);
  a class other than IN, or a zone transfer -> REFUSED;
- a PTR for a cluster IP or a headless endpoint's address -> its name (authoritative);
- anything else (other reverse names included, as CoreDNS's `fallthrough in-addr.arpa`) ->
  `FORWARD`: the caller asks the upstream resolvers.

Header problems: an opcode other than QUERY -> NOTIMP; not exactly one question -> FORMERR;
EDNS version above 0 -> BADVERS. Names compare case-insensitively (dns.name.Name); answers
carry the question's own spelling.
"""

from __future__ import annotations

import struct
from typing import Final

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .records import RecordIndex

HEADER_SIZE = 12
# What we advertise as our EDNS UDP payload: 1232 bytes avoids IP fragmentation (DNS Flag Day 2020).
UDP_PAYLOAD = 1232
# A UDP reply to a query without EDNS may not exceed this (RFC 1035).
CLASSIC_UDP_SIZE = 512
_OPCODE_MASK = 0x7800
_ZONE_TRANSFERS = (dns.rdatatype.AXFR, dns.rdatatype.IXFR)
_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


class Forward:
    """`answer`'s verdict for a query outside the cluster's names: ask the upstream resolvers."""

    def __repr__(self) -> str:
        return "FORWARD"


FORWARD: Final = Forward()


class MalformedQuery(Exception):
    """A packet that is not a query we can read; `reply` is what to send back (None: drop it)."""

    def __init__(self, reason: str, reply: bytes | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


def formerr_reply(ident: int, flags: int) -> bytes:
    """FORMERR for a query we could not parse, echoing its id, opcode and RD bit."""
    message = dns.message.Message(id=ident)
    message.flags = dns.flags.QR | (flags & (_OPCODE_MASK | dns.flags.RD))
    message.set_rcode(dns.rcode.FORMERR)
    return message.to_wire()


def parse_query(wire: bytes) -> dns.message.Message:
    """The query in `wire`; raises MalformedQuery (with the reply to send, if any)."""
    if len(wire) < HEADER_SIZE:
        raise MalformedQuery(f"{len(wire)} bytes: shorter than a DNS header", None)
    ident, flags = struct.unpack_from("!HH", wire)  # the header's first two fields, to reply at all
    if flags & dns.flags.QR:
        raise MalformedQuery("a response, not a query", None)
    try:
        return dns.message.from_wire(wire)
    except Exception as error:  # dnspython raises many types on garbage; none may reach the server
        raise MalformedQuery(f"{type(error).__name__}: {error}", formerr_reply(ident, flags)) from error


def error_response(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    """An empty response with `rcode` (SERVFAIL when the upstreams fail, REFUSED when overloaded)."""
    response = dns.message.make_response(query, recursion_available=True, our_payload=UDP_PAYLOAD)
    response.set_rcode(rcode)
    return response


def answer(query: dns.message.Message, index: RecordIndex) -> dns.message.Message | Forward:
    """The response to `query` (from parse_query), or FORWARD when the name is not the cluster's."""
    response = dns.message.make_response(query, recursion_available=True, our_payload=UDP_PAYLOAD)
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    if query.edns > 0:
        response.set_rcode(dns.rcode.BADVERS)
        return response
    question = query.question[0]
    qname = question.name
    if qname.is_subdomain(index.zone):
        return _authoritative(response, question, index)
    if question.rdtype == dns.rdatatype.PTR and question.rdclass == dns.rdataclass.IN:
        rdatas = index.rdatas(qname, dns.rdatatype.PTR)
        if rdatas:
            response.flags |= dns.flags.AA
            response.answer.append(dns.rrset.from_rdata_list(qname, index.ttl, rdatas))
            return response
    return FORWARD


def _authoritative(
    response: dns.message.Message, question: dns.rrset.RRset, index: RecordIndex
) -> dns.message.Message:
    qname, qtype = question.name, question.rdtype
    if not index.ready:
        response.set_rcode(dns.rcode.SERVFAIL)
        return response
    if question.rdclass != dns.rdataclass.IN or qtype in _ZONE_TRANSFERS:
        response.set_rcode(dns.rcode.REFUSED)
        return response
    response.flags |= dns.flags.AA
    if not index.exists(qname):
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(index.soa())
        return response
    if qname == index.zone and qtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
        response.answer.append(index.soa())
    node = index.node(qname)
    wanted = list(node) if qtype == dns.rdatatype.ANY else [qtype] if qtype in node else []
    for rdtype in wanted:
        response.answer.append(dns.rrset.from_rdata_list(qname, index.ttl, node[rdtype]))
    if not response.answer:
        response.authority.append(index.soa())  # NODATA
        return response
    if dns.rdatatype.SRV in wanted:
        _add_srv_targets(response, index, node[dns.rdatatype.SRV])
    return response


def _add_srv_targets(response: dns.message.Message, index: RecordIndex, srvs: tuple) -> None:
    """The targets' addresses in the additional section, saving clients a round trip."""
    for target in dict.fromkeys(srv.target for srv in srvs):
        for rdtype in _ADDRESS_TYPES:
            rdatas = index.rdatas(target, rdtype)
            if rdatas:
                response.additional.append(dns.rrset.from_rdata_list(target, index.ttl, rdatas))
