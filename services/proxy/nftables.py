"""The nftables data path's rules, pure: Services and Endpoints in, `nft -f` script text out.

Modelled on Kubernetes' nftables proxier (pkg/proxy/nftables/proxier.go). No I/O
here: `nftproxier.py` runs the scripts; this module decides what they say, and
is tested with tables (tests/unit/test_nft_rules.py).

The table
---------
One `ip` table per proxy, named after its node (`kybernetes-<node>`): IPv4 only
(the pod and service ranges are IPv4; an IPv6 cluster IP or endpoint is skipped).
A table per node, not one shared name, so that the proxies of `NODES=3 make up`,
three on one kernel, never overwrite each other's rules. Each programs the same
cluster IPs, and that is harmless: netfilter consults a hook's nat chains only
until one of them has bound the connection's NAT, so the first table to DNAT
wins and the others see the endpoint's address. Every filter check below runs
after DNAT, so one table's checks never reject what another table translated.
Node ports match only the node's own addresses (`--node-ip`), so each node's
port answers with its own table.

    map  service-ips            cluster IP . protocol . port  -> goto service chain
    map  service-nodeports      protocol . node port          -> goto external chain
    map  no-endpoint-services   cluster IP . protocol . port  -> goto reject-no-endpoints
    map  no-endpoint-nodeports  protocol . node port          -> goto reject-no-endpoints
    set  cluster-ips            every cluster IP (a port it lacks is refused)
    set  nodeport-ips           the node's addresses
    nat-prerouting, nat-output (dstnat, -100)  -> services: the two verdict maps
    nat-postrouting (srcnat, 100)              -> masquerading: marked packets only
    filter-forward, filter-output (0)          -> refuse what no service matched
    filter-input (0)                           -> refuse node ports with no endpoint

Per service port with ready endpoints, chains named after it (`service-<hash>-
ns/name/tcp/port`, the hash keeps names unique once sanitised and truncated):

    service-…   fib saddr type local jump mark-for-masquerade    (the host's own connections)
                ip saddr @affinity-<endpoint> goto endpoint-…    (ClientIP affinity only)
                numgen random mod 3 == 0 goto endpoint-…1        (the pick: 1/3, then 1/2 of
                numgen random mod 2 == 0 goto endpoint-…2         the rest, then the rest;
                goto endpoint-…3                                  see _pick)
    endpoint-…  ip saddr <endpoint> jump mark-for-masquerade     (hairpin: a pod reaching itself)
                update @affinity-<endpoint> { ip saddr }          (ClientIP affinity only)
                meta l4proto tcp dnat to <endpoint>:<port>
    external-…  jump mark-for-masquerade; goto service-…          (node ports: replies come back to us)

The pick is `numgen random` by default, as Kubernetes (`numgen inc`, round robin,
on request; its counters restart when the chain is rewritten). Kubernetes picks
with one `numgen random mod N vmap {…}`, but the kernel names each anonymous map
by scanning every set of the table: loading 10,000 services x 3 endpoints took
31 s here, 3.8 s without them (see `_pick`). So up to 32 endpoints the pick is
a cascade of rules, as iptables' statistic rules, and a verdict map beyond.

Marked packets are masqueraded in postrouting: a hairpin connection would
otherwise be answered by the pod to itself, around the reverse NAT. Two things
the node must provide, as for Kubernetes: bridge-nf-call-iptables=1 (a pod's
reply to another pod on its bridge then passes conntrack and is un-DNATed), and
hairpin mode on each pod's bridge port (with bridge netfilter, a connection
DNATed back to its own pod leaves by the port it came in by).

Refusals, in the filter chains so they see addresses after DNAT: a service port
with no ready endpoint gets a TCP reset (ICMP port unreachable for UDP) at
once; so does a port its cluster IP lacks; any other address in the service
range (`--service-cluster-ip-range`) gets a reset or ICMP host unreachable, in
the output and forward paths and for every packet, not only new connections: a
packet for a cluster IP never reaches the default route. Resets, not only ICMP,
because the kernel rate-limits the ICMP errors it sends to a pod (6, then one a
second), and a client should see "refused", not a timeout. Each refusal chain
counts what it refused.

Node ports on a loopback node address (the default 127.0.0.1) need the kernel's
route_localnet (set by the runner, as Kubernetes' iptables mode does); the table
then also drops packets from outside to 127.0.0.0/8 and any loopback-sourced
packet leaving by another interface.

The userspace mode's table
--------------------------
`--proxy-mode=userspace` uses the same table and skeleton (refusals, node
ports on --node-ip, the unallocated range), with a `portal-…` chain per service
port instead of the service and endpoint chains: `dnat to <relay address>:<relay
port>` (`redirect` when the relay listens on 0.0.0.0), as Kubernetes 1.0's
userspace proxier's iptables portals. The relay (proxier.py) then picks the
endpoint, skipping one that refuses. A relay on 127.0.0.1 (the default) is
reached from a pod's bridge through route_localnet, with the guards above.
Both modes name the table after the node, so switching a node's mode replaces
it in the first transaction.

Diffing
-------
`service_rules` gives each service its own share of the table (chains, sets,
map elements), with names no other service uses. `ruleset.Installed` holds what
the last successful transaction left, per service; `plan` compares a batch of
changed services with it and `diff_commands` writes only the difference: new
sets and chains, changed chains flushed and refilled, map elements deleted and
added, stale chains flushed then deleted, stale sets deleted, in an order in
which nothing is deleted while still referenced. `full_commands` rebuilds the
whole table in one transaction (`add table; delete table; add table …`): the
start-up adoption and the resync after a failed transaction. Nothing is
committed to `Installed` until the transaction succeeded. Two services claiming
one map key (the same cluster IP, port and protocol, or node port) keep the
first claimant's; the other is reported and retried once the key is released.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Mapping

from kybernetes.v1 import endpoints_pb2, service_pb2

from . import ruleset
from .ruleset import EMPTY, ElementKey, Plan, ProgrammedPort, Rules, ServiceKey, merge, script

__all__ = [
    "EMPTY", "Config", "ElementKey", "Installed", "NftWriter", "Plan", "ProgrammedPort", "Rules", "ServiceKey",
    "cleanup_commands", "cluster_ip", "diff_commands", "full_commands", "merge", "ready_backends", "script",
    "service_rules", "skeleton", "table_name",
]

RelayPorts = Mapping[tuple[str, str], int]  # (service port name, protocol) -> the relay's local port

SUPPORTED_PROTOCOLS = ("TCP", "UDP")
CLIENT_IP_AFFINITY = "ClientIP"
HEADLESS = "None"
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, as Kubernetes' sessionAffinityConfig default
BALANCE_RANDOM = "random"
BALANCE_ROUND_ROBIN = "round-robin"
# The packet mark bit that asks for masquerading, as Kubernetes uses it.
MASQUERADE_MARK = 0x4000
# Chain and set names: nftables allows 256 bytes; leave room.
MAX_NAME = 200
# Endpoints up to which a service chain picks with a cascade of rules rather than a verdict map.
CASCADE_MAX = 32
# Elements per `add element` command: keeps lines of a 10,000-service script reasonable.
ELEMENTS_PER_COMMAND = 1000

# Fixed names of the table's skeleton.
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
CLUSTER_IPS = "cluster-ips"
NODEPORT_IPS = "nodeport-ips"
REJECT_NO_ENDPOINTS = "reject-no-endpoints"
REJECT_UNKNOWN_PORT = "reject-unknown-port"
REJECT_UNALLOCATED = "reject-unallocated"
MARK_FOR_MASQUERADE = "mark-for-masquerade"
LOOPBACK_GUARD_COUNTER = "loopback-guard"


def table_name(node: str) -> str:
    """The table of the proxy of `node`: `kybernetes-<node>`, sanitised for nft."""
    return "kybernetes-" + (_sanitize(node.lower())[:60] or "node")


def _sanitize(text: str) -> str:
    # nft identifiers: a letter first, then letters, digits, '/', '-', '_', '.'.
    return re.sub(r"[^A-Za-z0-9/._-]", "_", text)


def _hashed(prefix: str, ident: str) -> str:
    digest = base64.b32encode(hashlib.sha256(ident.encode()).digest())[:8].decode()
    return f"{prefix}-{digest}-{_sanitize(ident)}"[:MAX_NAME]


@dataclass(frozen=True)
class Config:
    """What every rule depends on besides the objects: fixed for a proxier's life.

    `portal_address` set makes it the userspace mode's table: each service port
    goes to the relay's local port on that address instead of to its endpoints
    (`0.0.0.0`: `redirect`, to the address the packet arrived on)."""

    table: str
    service_cidr: str = DEFAULT_SERVICE_CIDR
    node_ips: tuple[str, ...] = ("127.0.0.1",)
    balance: str = BALANCE_RANDOM
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    portal_address: str = ""

    def __post_init__(self) -> None:
        ipaddress.IPv4Network(self.service_cidr)  # raises ValueError
        for address in self.node_ips:
            ipaddress.IPv4Address(address)
        if self.portal_address:
            ipaddress.IPv4Address(self.portal_address)
        if self.balance not in (BALANCE_RANDOM, BALANCE_ROUND_ROBIN):
            raise ValueError(f"balance must be {BALANCE_RANDOM} or {BALANCE_ROUND_ROBIN}, not {self.balance!r}")
        if self.affinity_timeout < 1:
            raise ValueError("affinity timeout must be at least 1 second")

    @property
    def loopback_node_ip(self) -> bool:
        return any(ipaddress.IPv4Address(address).is_loopback for address in self.node_ips)

    @property
    def loopback_portal(self) -> bool:
        return bool(self.portal_address) and ipaddress.IPv4Address(self.portal_address).is_loopback

    @property
    def route_localnet(self) -> bool:
        """Whether the rules send packets from other interfaces to 127.0.0.0/8 (node ports on a
        loopback node IP, or the relay on loopback), which needs route_localnet and its guards."""
        return self.loopback_node_ip or self.loopback_portal


# From objects to rules -------------------------------------------------------------------------


def ready_backends(endpoints: endpoints_pb2.Endpoints | None, port_name: str) -> list[tuple[str, int]]:
    """The ready IPv4 addresses and ports of the endpoint port named like the service port."""
    found: set[tuple[str, int]] = set()
    if endpoints is None:
        return []
    for subset in endpoints.subsets:
        for endpoint_port in subset.ports:
            if endpoint_port.name != port_name or not 0 < endpoint_port.port < 65536:
                continue
            for address in subset.addresses:
                try:
                    ip = ipaddress.IPv4Address(address.ip)
                except ValueError:
                    continue
                found.add((str(ip), endpoint_port.port))
    return sorted(found, key=lambda backend: (int(ipaddress.IPv4Address(backend[0])), backend[1]))


def cluster_ip(service: service_pb2.Service) -> str | None:
    """The service's IPv4 cluster IP, or None: headless, not allocated yet, or IPv6."""
    text = service.spec.cluster_ip
    if not text or text == HEADLESS:
        return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        return None


def skip_reason(service: service_pb2.Service) -> str:
    """Why a service gets no rules (cluster_ip() gave None); every mode says it the same way."""
    text = service.spec.cluster_ip
    if text == HEADLESS:
        return "headless"
    return f"cluster IP {text} is not IPv4" if text else "no cluster IP yet"


@dataclass(frozen=True)
class PortToProgram:
    """One service port a data path programs, as every mode reads it."""

    port: service_pb2.ServicePort
    protocol: str  # "TCP" / "UDP"
    proto: str  # the same in lower case, as rules spell it
    label: str  # the name, else the number: for messages
    node_port: int  # 0: none
    backends: list[tuple[str, int]]  # ready (ip, port), sorted
    ident: str  # namespace/name/proto/port name-or-number: what chain names hash

    def programmed(self, service: service_pb2.Service, ip: str, affinity: bool) -> ProgrammedPort:
        return ProgrammedPort(
            namespace=service.metadata.namespace, service=service.metadata.name, port_name=self.port.name,
            protocol=self.protocol, cluster_ip=ip, port=self.port.port, node_port=self.node_port,
            endpoints=tuple(self.backends), affinity=affinity,
        )


def ports_to_program(
    service: service_pb2.Service, endpoints: endpoints_pb2.Endpoints | None
) -> tuple[list[PortToProgram], list[str]]:
    """The service's ports with their ready backends, and why the others are skipped
    (one walk, so that every mode programs and refuses the same ports)."""
    namespace, name = service.metadata.namespace, service.metadata.name
    ports: list[PortToProgram] = []
    skipped: list[str] = []
    for service_port in service.spec.ports:
        protocol = (service_port.protocol or "TCP").upper()
        label = service_port.name or str(service_port.port)
        if protocol not in SUPPORTED_PROTOCOLS:
            skipped.append(f"{label}: protocol {protocol} is not supported")
            continue
        if not 0 < service_port.port < 65536:
            skipped.append(f"{label}: port {service_port.port} is out of range")
            continue
        proto = protocol.lower()
        ports.append(PortToProgram(
            port=service_port, protocol=protocol, proto=proto, label=label,
            node_port=service_port.node_port if 0 < service_port.node_port < 65536 else 0,
            backends=ready_backends(endpoints, service_port.name),
            ident=f"{namespace}/{name}/{proto}/{service_port.name or service_port.port}",
        ))
    return ports, skipped


def service_rules(
    service: service_pb2.Service, endpoints: endpoints_pb2.Endpoints | None, config: Config,
    relay_ports: RelayPorts | None = None,
) -> Rules:
    """The service's share of the table; EMPTY for a service with no cluster IP.

    With `config.portal_address` (userspace mode), `relay_ports` says where the
    relay listens for each service port; a port with endpoints but no relay
    port yet is refused, as one without endpoints."""
    ip = cluster_ip(service)
    if ip is None:
        return Rules(skipped=(skip_reason(service),))
    affinity = service.spec.session_affinity == CLIENT_IP_AFFINITY
    chains: dict[str, tuple[str, ...]] = {}
    sets: dict[str, tuple[str, str]] = {}
    elements: dict[ElementKey, str] = {(CLUSTER_IPS, ip): ""}
    to_program, skipped = ports_to_program(service, endpoints)
    ports = [port.programmed(service, ip, affinity) for port in to_program]
    for port in to_program:
        proto, node_port, backends, ident = port.proto, port.node_port, port.backends, port.ident
        ip_key = (SERVICE_IPS, f"{ip} . {proto} . {port.port.port}")
        node_key = (SERVICE_NODEPORTS, f"{proto} . {node_port}")
        relay_port = (relay_ports or {}).get((port.port.name, port.protocol), 0) if config.portal_address else 0
        if not backends or (config.portal_address and not relay_port):
            elements[(NO_ENDPOINT_SERVICES, ip_key[1])] = f"goto {REJECT_NO_ENDPOINTS}"
            if node_port:
                elements[(NO_ENDPOINT_NODEPORTS, node_key[1])] = f"goto {REJECT_NO_ENDPOINTS}"
            continue
        if config.portal_address:
            # The relay picks the endpoint; the kernel only brings the connection to it.
            portal_chain = _hashed("portal", ident)
            chains[portal_chain] = (_portal_rule(config.portal_address, proto, relay_port),)
            elements[ip_key] = f"goto {portal_chain}"
            if node_port:
                elements[node_key] = f"goto {portal_chain}"
            continue
        service_chain = _hashed("service", ident)
        endpoint_chains = []
        affinity_lookups = []
        for backend_ip, backend_port in backends:
            endpoint_ident = f"{ident}__{backend_ip}/{backend_port}"
            chain = _hashed("endpoint", endpoint_ident)
            endpoint_chains.append(chain)
            rules = [f"ip saddr {backend_ip} jump {MARK_FOR_MASQUERADE}"]
            if affinity:
                affinity_set = _hashed("affinity", endpoint_ident)
                sets[affinity_set] = (
                    "set", f"{{ type ipv4_addr; flags dynamic,timeout; timeout {config.affinity_timeout}s; }}"
                )
                affinity_lookups.append(f"ip saddr @{affinity_set} goto {chain}")
                rules.append(f"update @{affinity_set} {{ ip saddr }}")
            rules.append(f"meta l4proto {proto} dnat to {backend_ip}:{backend_port}")
            chains[chain] = tuple(rules)
        chains[service_chain] = (
            f"fib saddr type local jump {MARK_FOR_MASQUERADE}",
            *affinity_lookups,
            *_pick(endpoint_chains, "random" if config.balance == BALANCE_RANDOM else "inc"),
        )
        elements[ip_key] = f"goto {service_chain}"
        if node_port:
            external_chain = _hashed("external", ident)
            chains[external_chain] = (f"jump {MARK_FOR_MASQUERADE}", f"goto {service_chain}")
            elements[node_key] = f"goto {external_chain}"
    return Rules(chains=chains, sets=sets, elements=elements, ports=tuple(ports), skipped=tuple(skipped))


def _portal_rule(address: str, proto: str, port: int) -> str:
    if address == "0.0.0.0":
        # To the address the packet came to (the host's own: 127.0.0.1): the relay listens on all.
        return f"meta l4proto {proto} redirect to :{port}"
    return f"meta l4proto {proto} dnat to {address}:{port}"


def _pick(endpoint_chains: list[str], numgen: str) -> list[str]:
    """The rules that send a new connection to one of the endpoint chains, each as likely.

    Up to CASCADE_MAX endpoints, a cascade as iptables' statistic rules: the i-th
    rule takes 1/(N-i) of what reaches it, so each endpoint gets 1/N (with
    `numgen inc`, each rule's own counter makes it an exact rotation). Beyond
    that, one `numgen ... vmap` with an anonymous map, as Kubernetes writes it
    for every service: the kernel names each anonymous set by scanning every set
    of the table (with sscanf), so 10,000 chains with one each took 13 s of
    kernel CPU to load here, against 0.4 s without them.
    """
    count = len(endpoint_chains)
    if count == 1:
        return [f"goto {endpoint_chains[0]}"]
    if count <= CASCADE_MAX:
        rules = [f"numgen {numgen} mod {count - i} == 0 goto {chain}" for i, chain in enumerate(endpoint_chains[:-1])]
        return [*rules, f"goto {endpoint_chains[-1]}"]
    picks = ", ".join(f"{index} : goto {chain}" for index, chain in enumerate(endpoint_chains))
    return [f"numgen {numgen} mod {count} vmap {{ {picks} }}"]


# The skeleton ----------------------------------------------------------------------------------


def skeleton(config: Config) -> tuple[list[str], list[str]]:
    """The table's fixed part: (declarations, rules), as nft commands."""
    t = f"ip {config.table}"
    mark = f"0x{MASQUERADE_MARK:x}"
    node_ips = ", ".join(config.node_ips)
    purpose = "portals to the relay" if config.portal_address else "service IPs and node ports"
    mode = "userspace" if config.portal_address else "nftables"
    declarations = [
        f"add table {t} {{ comment \"kube-proxy ({mode} mode): {purpose}\"; }}",
        f"add map {t} {SERVICE_IPS} {{ type ipv4_addr . inet_proto . inet_service : verdict; "
        f"comment \"cluster IP . protocol . port of a service port with endpoints\"; }}",
        f"add map {t} {SERVICE_NODEPORTS} {{ type inet_proto . inet_service : verdict; "
        f"comment \"protocol . node port of a service port with endpoints\"; }}",
        f"add map {t} {NO_ENDPOINT_SERVICES} {{ type ipv4_addr . inet_proto . inet_service : verdict; "
        f"comment \"service ports with no ready endpoint\"; }}",
        f"add map {t} {NO_ENDPOINT_NODEPORTS} {{ type inet_proto . inet_service : verdict; "
        f"comment \"node ports with no ready endpoint\"; }}",
        f"add set {t} {CLUSTER_IPS} {{ type ipv4_addr; comment \"every cluster IP\"; }}",
        f"add set {t} {NODEPORT_IPS} {{ type ipv4_addr; comment \"this node's addresses\"; }}",
        f"add element {t} {NODEPORT_IPS} {{ {node_ips} }}",
        f"add chain {t} nat-prerouting {{ type nat hook prerouting priority -100; policy accept; }}",
        f"add chain {t} nat-output {{ type nat hook output priority -100; policy accept; }}",
        f"add chain {t} nat-postrouting {{ type nat hook postrouting priority 100; policy accept; }}",
        f"add chain {t} filter-forward {{ type filter hook forward priority 0; policy accept; }}",
        f"add chain {t} filter-output {{ type filter hook output priority 0; policy accept; }}",
        f"add chain {t} filter-input {{ type filter hook input priority 0; policy accept; }}",
        f"add chain {t} services",
        f"add chain {t} masquerading",
        f"add chain {t} {MARK_FOR_MASQUERADE}",
        f"add chain {t} service-endpoints-check",
        f"add chain {t} nodeport-endpoints-check",
        f"add chain {t} cluster-ips-check",
        f"add chain {t} {REJECT_NO_ENDPOINTS}",
        f"add chain {t} {REJECT_UNKNOWN_PORT}",
        f"add chain {t} {REJECT_UNALLOCATED}",
    ]
    rules = [
        f"add rule {t} nat-prerouting jump services",
        f"add rule {t} nat-output jump services",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add rule {t} services ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
        f"add rule {t} services ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
        f"add rule {t} masquerading meta mark & {mark} == 0 return",
        f"add rule {t} masquerading meta mark set meta mark ^ {mark}",
        f"add rule {t} masquerading masquerade fully-random",
        f"add rule {t} {MARK_FOR_MASQUERADE} meta mark set meta mark | {mark}",
        f"add rule {t} filter-forward ct state new jump service-endpoints-check",
        f"add rule {t} filter-forward jump cluster-ips-check",
        f"add rule {t} filter-output ct state new jump service-endpoints-check",
        f"add rule {t} filter-output jump cluster-ips-check",
        f"add rule {t} filter-input ct state new jump nodeport-endpoints-check",
        f"add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}",
        f"add rule {t} nodeport-endpoints-check ip daddr @{NODEPORT_IPS} meta l4proto . th dport "
        f"vmap @{NO_ENDPOINT_NODEPORTS}",
        f"add rule {t} cluster-ips-check ip daddr @{CLUSTER_IPS} goto {REJECT_UNKNOWN_PORT}",
        f"add rule {t} cluster-ips-check ip daddr {config.service_cidr} goto {REJECT_UNALLOCATED}",
        f"add rule {t} {REJECT_NO_ENDPOINTS} counter comment \"a service port with no ready endpoint\"",
        f"add rule {t} {REJECT_NO_ENDPOINTS} meta l4proto tcp reject with tcp reset",
        f"add rule {t} {REJECT_NO_ENDPOINTS} reject",
        f"add rule {t} {REJECT_UNKNOWN_PORT} counter comment \"a port the cluster IP's service does not have\"",
        f"add rule {t} {REJECT_UNKNOWN_PORT} meta l4proto tcp reject with tcp reset",
        f"add rule {t} {REJECT_UNKNOWN_PORT} reject",
        f"add rule {t} {REJECT_UNALLOCATED} counter comment \"an address in the service range no service has\"",
        f"add rule {t} {REJECT_UNALLOCATED} meta l4proto tcp reject with tcp reset",
        f"add rule {t} {REJECT_UNALLOCATED} reject with icmp type host-unreachable",
    ]
    if config.route_localnet:
        # route_localnet lets 127.0.0.0/8 be routed: keep it from crossing a real interface.
        declarations.append(
            f"add chain {t} filter-postrouting {{ type filter hook postrouting priority 110; policy accept; }}"
        )
        rules += [
            f"add rule {t} filter-input iifname != \"lo\" ip saddr != 127.0.0.0/8 ip daddr 127.0.0.0/8 "
            f"ct status & dnat == 0 ct state new counter drop comment \"route_localnet: outside to loopback\"",
            f"add rule {t} filter-postrouting oifname != \"lo\" ip saddr 127.0.0.0/8 counter drop "
            f"comment \"route_localnet: loopback source leaving\"",
        ]
    return declarations, rules


# From rules to scripts -------------------------------------------------------------------------


def _element_commands(verb: str, table: str, items: dict[str, list[str]]) -> list[str]:
    commands = []
    for container in sorted(items):
        entries = items[container]
        for start in range(0, len(entries), ELEMENTS_PER_COMMAND):
            chunk = ", ".join(entries[start:start + ELEMENTS_PER_COMMAND])
            commands.append(f"{verb} element ip {table} {container} {{ {chunk} }}")
    return commands


def diff_commands(table: str, old: Rules, new: Rules) -> list[str]:
    """The nft commands that turn `old` into `new`, in an order nft accepts in one transaction."""
    t = f"ip {table}"
    commands: list[str] = []
    for name in sorted(new.sets.keys() - old.sets.keys()):
        kind, declaration = new.sets[name]
        commands.append(f"add {kind} {t} {name} {declaration}")
    added = sorted(new.chains.keys() - old.chains.keys())
    changed = sorted(name for name in new.chains.keys() & old.chains.keys() if new.chains[name] != old.chains[name])
    removed = sorted(old.chains.keys() - new.chains.keys())
    commands += [f"add chain {t} {name}" for name in added]
    commands += [f"flush chain {t} {name}" for name in changed]
    for name in [*added, *changed]:
        commands += [f"add rule {t} {name} {rule}" for rule in new.chains[name]]
    deletes: dict[str, list[str]] = {}
    adds: dict[str, list[str]] = {}
    for element, value in old.elements.items():
        if new.elements.get(element) != value:
            deletes.setdefault(element[0], []).append(element[1])
    for element, value in new.elements.items():
        if old.elements.get(element) != value:
            adds.setdefault(element[0], []).append(f"{element[1]} : {value}" if value else element[1])
    commands += _element_commands("delete", table, {k: sorted(v) for k, v in deletes.items()})
    commands += _element_commands("add", table, {k: sorted(v) for k, v in adds.items()})
    # Flushed first, all of them, so that no stale chain still jumps to another when deleted.
    commands += [f"flush chain {t} {name}" for name in removed]
    commands += [f"delete chain {t} {name}" for name in removed]
    for name in sorted(old.sets.keys() - new.sets.keys()):
        commands.append(f"delete {old.sets[name][0]} {t} {name}")
    return commands


def full_commands(config: Config, rules: Rules) -> list[str]:
    """The whole table, replacing whatever is there, as one transaction."""
    t = f"ip {config.table}"
    declarations, skeleton_rules = skeleton(config)
    # "add" first so that "delete" succeeds whether or not the table exists.
    commands = [f"add table {t}", f"delete table {t}", *declarations, *skeleton_rules]
    return commands + diff_commands(config.table, EMPTY, rules)


def cleanup_commands(table: str) -> list[str]:
    return [f"add table ip {table}", f"delete table ip {table}"]


class NftWriter:
    """The nftables mode's commands for `ruleset.Installed`."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def diff(self, old: Rules, new: Rules) -> list[str]:
        return diff_commands(self.config.table, old, new)

    def full(self, rules: Rules, present: Any = None) -> list[str]:
        return full_commands(self.config, rules)


class Installed(ruleset.Installed):
    """What the last successful transaction left in the table, per service (see ruleset.Installed)."""

    def __init__(self, config: Config) -> None:
        super().__init__(NftWriter(config))
        self.config = config
