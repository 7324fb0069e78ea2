"""What each service puts in cluster DNS, and the index the answering reads.

The rules are CoreDNS's kubernetes plugin's (ZONE is the cluster domain, `cluster.local`):

- A service with a cluster IP (`spec.clusterIP` an address):
    `<svc>.<ns>.svc.ZONE`                    A (AAAA for IPv6) -> the cluster IP
    `_<port>._<proto>.<svc>.<ns>.svc.ZONE`   SRV 0 100 <port> `<svc>.<ns>.svc.ZONE`, per named port
    the cluster IP's reverse name            PTR -> `<svc>.<ns>.svc.ZONE`
- A headless service (`spec.clusterIP` "None"), from the READY addresses of its Endpoints
  (`subsets[].addresses`; never `notReadyAddresses`):
    `<svc>.<ns>.svc.ZONE`                    A/AAAA -> every ready address
    `<ep>.<svc>.<ns>.svc.ZONE`               A/AAAA -> that address; <ep> is the address's
                                             hostname, else (endpoint_pod_names) its pod's name,
                                             else its IP dashed (`10-1-2-3`)
    `_<port>._<proto>.<svc>.<ns>.svc.ZONE`   SRV 0 <100/n> <endpoint port> `<ep>.<svc>.<ns>.svc.ZONE`,
                                             one per ready address and named endpoint port
    the address's reverse name               PTR -> `<ep>.<svc>.<ns>.svc.ZONE`
  With no ready address the service's name still exists (NODATA, not NXDOMAIN).
- A service with neither (its cluster IP not allocated yet) has no records: NXDOMAIN.

`service_records` is pure. `RecordIndex` keeps, per service, what it contributed, so an event
replaces exactly that service's records: the cost of an update is that service's size, never
the cluster's. Queries are dict reads keyed by `dns.name.Name`, whose equality and hash ignore
case. Names that only have names below them (`<ns>.svc.ZONE`, `_tcp.<svc>.<ns>.svc.ZONE`) are
counted, so they exist and answer NODATA rather than NXDOMAIN (RFC 8020).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from typing import Iterable, Mapping

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV

from kybernetes.v1 import endpoints_pb2, service_pb2

DEFAULT_DOMAIN = "cluster.local"
DEFAULT_TTL = 5
HEADLESS = "None"
IN = dns.rdataclass.IN
# CoreDNS's SOA timers for the cluster zone (the minimum, i.e. negative TTL, is the record TTL).
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 7200, 1800, 86400
_SERIAL_MAX = 0xFFFFFFFF

ServiceKey = tuple[str, str]  # (namespace, name)
Record = tuple[dns.name.Name, dns.rdata.Rdata]  # (owner, data)
RdataSets = Mapping[dns.rdatatype.RdataType, tuple[dns.rdata.Rdata, ...]]
_Contributions = dict[dns.rdatatype.RdataType, dict[ServiceKey, list[dns.rdata.Rdata]]]  # type -> service -> data


@dataclass(frozen=True)
class ServiceRecords:
    """What one service puts in DNS: its records, and names that exist even without one
    (a headless service with no ready endpoint)."""

    records: tuple[Record, ...] = ()
    names: tuple[dns.name.Name, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.records or self.names)


NO_RECORDS = ServiceRecords()


def _name(labels: Iterable[str], zone: dns.name.Name) -> dns.name.Name | None:
    """`labels` + zone; None when a label cannot be a DNS label (empty, over 63 bytes)."""
    try:
        return dns.name.Name([label.encode() for label in labels]).concatenate(zone)
    except (dns.exception.DNSException, UnicodeError):
        return None


def _address_rdata(ip: str) -> dns.rdata.Rdata | None:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.version == 4:
        return A(IN, dns.rdatatype.A, str(address))
    return AAAA(IN, dns.rdatatype.AAAA, str(address))


def _ptr(ip: str, target: dns.name.Name) -> Record | None:
    try:
        return dns.reversename.from_address(ip), PTR(IN, dns.rdatatype.PTR, target)
    except (ValueError, dns.exception.DNSException):
        return None


def _srv_owner(port_name: str, protocol: str, service_name: dns.name.Name) -> dns.name.Name | None:
    if not port_name:
        return None  # an unnamed port has no SRV name
    try:
        return dns.name.Name([f"_{port_name}".encode(), f"_{(protocol or 'TCP').lower()}".encode()]).concatenate(
            service_name
        )
    except (dns.exception.DNSException, UnicodeError):
        return None


def dashed_ip(ip: str) -> str:
    """An address as one DNS label, as CoreDNS spells it: 10.1.2.3 -> 10-1-2-3, fd00::1 -> fd00--1."""
    return ip.replace(".", "-").replace(":", "-")


def endpoint_label(address: endpoints_pb2.EndpointAddress, *, endpoint_pod_names: bool = False) -> str:
    """The first label of a headless endpoint's own name."""
    if address.hostname:
        return address.hostname
    if endpoint_pod_names and address.target_ref.kind == "Pod" and address.target_ref.name:
        return address.target_ref.name
    return dashed_ip(address.ip)


def is_headless(service: service_pb2.Service) -> bool:
    return service.spec.cluster_ip == HEADLESS


def service_records(
    service: service_pb2.Service,
    endpoints: endpoints_pb2.Endpoints | None,
    zone: dns.name.Name,
    *,
    endpoint_pod_names: bool = False,
) -> ServiceRecords:
    """The records `service` puts in DNS (see the module docstring); deterministic order.
    `endpoints` (the service's Endpoints object, if any) matters only for a headless service."""
    name = _name((service.metadata.name, service.metadata.namespace, "svc"), zone)
    if name is None:
        return NO_RECORDS
    cluster_ip = service.spec.cluster_ip
    if cluster_ip == HEADLESS:
        return _headless_records(name, endpoints, endpoint_pod_names=endpoint_pod_names)
    address = _address_rdata(cluster_ip) if cluster_ip else None
    if address is None:
        return NO_RECORDS  # no cluster IP yet
    records: list[Record] = [(name, address)]
    for port in service.spec.ports:
        owner = _srv_owner(port.name, port.protocol, name)
        if owner is not None:
            records.append((owner, SRV(IN, dns.rdatatype.SRV, 0, 100, port.port, name)))
    ptr = _ptr(cluster_ip, name)
    if ptr is not None:
        records.append(ptr)
    return ServiceRecords(tuple(records))


def _headless_records(
    name: dns.name.Name, endpoints: endpoints_pb2.Endpoints | None, *, endpoint_pod_names: bool
) -> ServiceRecords:
    addresses: list[Record] = []
    own_names: list[Record] = []
    ptrs: list[Record] = []
    srvs: list[tuple[dns.name.Name, int, dns.name.Name]] = []  # (owner, port, target)
    for subset in endpoints.subsets if endpoints is not None else ():
        for address in subset.addresses:
            rdata = _address_rdata(address.ip)
            target = _name((endpoint_label(address, endpoint_pod_names=endpoint_pod_names),), name)
            if rdata is None or target is None:
                continue
            addresses.append((name, rdata))
            own_names.append((target, rdata))
            ptr = _ptr(address.ip, target)
            if ptr is not None:
                ptrs.append(ptr)
            for port in subset.ports:
                owner = _srv_owner(port.name, port.protocol, name)
                if owner is not None:
                    srvs.append((owner, port.port, target))
    per_owner = Counter(owner for owner, _, _ in srvs)
    srv_records: list[Record] = [
        (owner, SRV(IN, dns.rdatatype.SRV, 0, max(1, 100 // per_owner[owner]), port, target))
        for owner, port, target in srvs
    ]
    records = tuple(dict.fromkeys(chain(addresses, own_names, srv_records, ptrs)))
    return ServiceRecords(records, () if records else (name,))


class RecordIndex:
    """The cluster's DNS records, by owner name and type, replaced one service at a time."""

    def __init__(self, domain: str = DEFAULT_DOMAIN, *, ttl: int = DEFAULT_TTL, serial: int = 1) -> None:
        self.zone = dns.name.from_text(domain)
        self.ttl = ttl
        self.serial = serial
        # False until the informers hold their first snapshot: an empty index must not
        # answer NXDOMAIN (resolvers would cache it).
        self.ready = False
        self._entries: dict[ServiceKey, ServiceRecords] = {}
        self._by_service: dict[dns.name.Name, _Contributions] = {}  # what each service put at each name
        self._rdatas: dict[dns.name.Name, dict[dns.rdatatype.RdataType, tuple[dns.rdata.Rdata, ...]]] = {}
        self._present: Counter[dns.name.Name] = Counter()  # names in the zone, with or without records

    def __len__(self) -> int:
        """Services with something in DNS."""
        return len(self._entries)

    def replace(self, key: ServiceKey, entry: ServiceRecords) -> bool:
        """Installs what a service puts in DNS now (NO_RECORDS when it is gone); True if it changed."""
        old = self._entries.get(key, NO_RECORDS)
        if old == entry:
            return False
        self._apply(key, old, -1)
        self._apply(key, entry, +1)
        if entry:
            self._entries[key] = entry
        else:
            self._entries.pop(key, None)
        self.serial = self.serial % _SERIAL_MAX + 1
        return True

    def remove(self, key: ServiceKey) -> bool:
        return self.replace(key, NO_RECORDS)

    def _apply(self, key: ServiceKey, entry: ServiceRecords, sign: int) -> None:
        groups: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], list[dns.rdata.Rdata]] = {}
        for owner, rdata in entry.records:
            groups.setdefault((owner, rdata.rdtype), []).append(rdata)
        for (owner, rdtype), rdatas in groups.items():
            by_type = self._by_service.setdefault(owner, {})
            by_key = by_type.setdefault(rdtype, {})
            if sign > 0:
                by_key[key] = rdatas
            else:
                by_key.pop(key, None)
            self._merge(owner, rdtype)
        for owner in dict.fromkeys(chain((owner for owner, _ in entry.records), entry.names)):
            name = owner
            while name.is_subdomain(self.zone) and name != self.zone:
                self._present[name] += sign
                if self._present[name] <= 0:
                    del self._present[name]
                name = name.parent()

    def _merge(self, owner: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> None:
        by_type = self._by_service[owner]
        by_key = by_type[rdtype]
        if by_key:
            merged = tuple(dict.fromkeys(chain.from_iterable(by_key.values())))
            self._rdatas.setdefault(owner, {})[rdtype] = merged
            return
        del by_type[rdtype]
        if not by_type:
            del self._by_service[owner]
        current = self._rdatas.get(owner)
        if current is not None:
            current.pop(rdtype, None)
            if not current:
                del self._rdatas[owner]

    # -- reading (the per-query path: dict reads only) ----------------------------

    def rdatas(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> tuple[dns.rdata.Rdata, ...]:
        return self._rdatas.get(name, {}).get(rdtype, ())

    def node(self, name: dns.name.Name) -> RdataSets:
        """Every type of record at `name` (empty when none)."""
        return self._rdatas.get(name, {})

    def exists(self, name: dns.name.Name) -> bool:
        """Whether `name`, in the cluster zone, exists (with records, or names below it)."""
        return name == self.zone or name in self._present

    def soa(self) -> dns.rrset.RRset:
        """The zone's SOA, as CoreDNS writes it: `ns.dns.ZONE hostmaster.ZONE serial 7200 1800 86400 ttl`."""
        rdata = SOA(
            IN, dns.rdatatype.SOA,
            dns.name.Name([b"ns", b"dns"]).concatenate(self.zone),
            dns.name.Name([b"hostmaster"]).concatenate(self.zone),
            self.serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, self.ttl,
        )
        return dns.rrset.from_rdata(self.zone, self.ttl, rdata)
