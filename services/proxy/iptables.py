"""The iptables data path's rules, pure: Services and Endpoints in, `iptables-restore` text out.

`--proxy-mode=iptables`, a fallback for kernels without nftables, modelled on
Kubernetes' iptables proxier (pkg/proxy/iptables/proxier.go). No I/O here:
`iptproxier.py` runs `iptables-save` and `iptables-restore --noflush`; this
module decides what they say, and is tested with tables (tests/unit/
test_iptables_rules.py). IPv4 only, as the nftables mode.

Chains of the proxy's own
-------------------------
Every chain name ends with a tag of the node (`-<6 characters>` of a hash of
its name) so that the proxies of `NODES=3 make up`, three on one kernel, never
rewrite each other's chains; the reasoning of the nftables mode's per-node
tables holds for the built-in chains' jumps too: the first node's nat chain
that DNATs a connection wins, and every filter check runs after DNAT. Names
stay within iptables' 28 characters. With tag T:

    nat    PREROUTING, OUTPUT -> KYB-SERVICES-T      cluster IP:port -> KYB-SVC-…-T;
                                                     node IP -> KYB-NODEPORTS-T
           KYB-NODEPORTS-T                           node port -> KYB-EXT-…-T
           POSTROUTING -> KYB-POSTROUTING-T          masquerade marked packets only
           KYB-MARK-MASQ-T                           sets the mark (0x4000, as Kubernetes)
    filter FORWARD, OUTPUT -> KYB-FIREWALL-T         (every packet)
             new: KYB-SERVICES-T                     a service port with no endpoint
             new: KYB-CLUSTER-IPS-T                  a cluster IP, at a port it lacks
             the service range -> KYB-UNALLOCATED-T  (any other address in it)
           INPUT (new) -> KYB-EXTERNAL-T             a node port with no endpoint
           KYB-NO-ENDPOINTS-T, KYB-UNKNOWN-PORT-T    TCP reset, else ICMP port unreachable
           KYB-UNALLOCATED-T                         TCP reset, else ICMP host unreachable

Per service port with ready endpoints (hash: 12 characters of the port's name):

    KYB-SVC-…   -m addrtype --src-type LOCAL -j KYB-MARK-MASQ-T    (the host's own connections)
                -m recent --name KYB-SEP-… --rcheck --seconds 10800 --reap -j KYB-SEP-…
                                                                   (ClientIP affinity only)
                -m statistic --mode random --probability 0.3333333333 -j KYB-SEP-…1
                -m statistic --mode random --probability 0.5000000000 -j KYB-SEP-…2
                -j KYB-SEP-…3                          (round robin: --mode nth --every 3 / 2)
    KYB-SEP-…   -s <endpoint>/32 -j KYB-MARK-MASQ-T                (hairpin)
                -p tcp [-m recent --name KYB-SEP-… --set] -j DNAT --to-destination <endpoint>
    KYB-EXT-…   -j KYB-MARK-MASQ-T; -j KYB-SVC-…                  (node ports: replies come back to us)

The same semantics as the nftables mode, refusals included: a packet for the
service range never reaches the default route. Two differences iptables
imposes: the lists are linear (per new connection, not per packet: the filter
lists are behind `--ctstate NEW`), and a rule another program inserts in
FORWARD or OUTPUT before the proxy's jump (ours are inserted first) can accept
what the jump would refuse, where an nftables table's drop is final.

Programming
-----------
The shared chains hold one rule per service port ("elements": key = the match,
value = the target, as map elements in the nftables mode), so the bookkeeping
of `ruleset.Installed` applies unchanged, and one `iptables-restore --noflush`
carries a sync: a changed service's chains are declared (`:CHAIN - [0:0]`
flushes them) and refilled, its element rules deleted (`-D`, by their text) and
appended, its stale chains flushed and then deleted (`-X`). A full rebuild
(start-up, after a refused transaction, after the probe found the rules gone)
first reads `iptables-save`: it declares every chain, inserts the built-in
chains' jumps that are missing (and removes duplicates: idempotent), and
deletes this node's chains that are no longer wanted. Each table is committed
on its own (iptables-restore's COMMIT), filter first: nat's DNATs never exist
without filter's refusals.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from kybernetes.v1 import endpoints_pb2, service_pb2

from . import ruleset
from .nftables import (
    BALANCE_RANDOM,
    BALANCE_ROUND_ROBIN,
    CLIENT_IP_AFFINITY,
    DEFAULT_AFFINITY_TIMEOUT,
    DEFAULT_SERVICE_CIDR,
    MASQUERADE_MARK,
    cluster_ip,
    ports_to_program,
    skip_reason,
)
from .ruleset import EMPTY, ElementKey, Rules

NAT = "nat"
FILTER = "filter"
TABLES = (FILTER, NAT)  # the order of a transaction's sections: refusals before translations
BUILTIN_CHAINS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
# iptables' limit on a chain name (XT_EXTENSION_MAXNAMELEN - 1).
MAX_CHAIN = 28
TAG_LENGTH = 6
HASH_LENGTH = 12
PREFIX = "KYB-"


def node_tag(node: str) -> str:
    """The suffix of every chain of the proxy of `node`: 6 characters of a hash of its name."""
    return base64.b32encode(hashlib.sha256(node.encode()).digest())[:TAG_LENGTH].decode()


def _digest(ident: str) -> str:
    return base64.b32encode(hashlib.sha256(ident.encode()).digest())[:HASH_LENGTH].decode()


def _comment(text: str) -> str:
    return '-m comment --comment "' + re.sub(r"[^A-Za-z0-9._:/ -]", "_", text)[:200] + '"'


@dataclass(frozen=True)
class Config:
    """What every rule depends on besides the objects: fixed for a proxier's life."""

    node: str
    service_cidr: str = DEFAULT_SERVICE_CIDR
    node_ips: tuple[str, ...] = ("127.0.0.1",)
    balance: str = BALANCE_RANDOM
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT

    def __post_init__(self) -> None:
        ipaddress.IPv4Network(self.service_cidr)  # raises ValueError
        for address in self.node_ips:
            ipaddress.IPv4Address(address)
        if self.balance not in (BALANCE_RANDOM, BALANCE_ROUND_ROBIN):
            raise ValueError(f"balance must be {BALANCE_RANDOM} or {BALANCE_ROUND_ROBIN}, not {self.balance!r}")
        if self.affinity_timeout < 1:
            raise ValueError("affinity timeout must be at least 1 second")

    @property
    def tag(self) -> str:
        return node_tag(self.node)

    def chain(self, base: str) -> str:
        return f"{PREFIX}{base}-{self.tag}"

    def service_chain(self, kind: str, ident: str) -> str:
        return f"{PREFIX}{kind}-{_digest(ident)}-{self.tag}"

    @property
    def loopback_node_ip(self) -> bool:
        return any(ipaddress.IPv4Address(address).is_loopback for address in self.node_ips)

    @property
    def pattern(self) -> re.Pattern[str]:
        """The names of this node's chains."""
        return re.compile(rf"^{PREFIX}[A-Z0-9-]+-{re.escape(self.tag)}$")

    # The skeleton's chains.
    @property
    def services(self) -> str:
        return self.chain("SERVICES")

    @property
    def nodeports(self) -> str:
        return self.chain("NODEPORTS")

    @property
    def postrouting(self) -> str:
        return self.chain("POSTROUTING")

    @property
    def mark_masq(self) -> str:
        return self.chain("MARK-MASQ")

    @property
    def firewall(self) -> str:
        return self.chain("FIREWALL")

    @property
    def cluster_ips(self) -> str:
        return self.chain("CLUSTER-IPS")

    @property
    def external(self) -> str:
        return self.chain("EXTERNAL")

    @property
    def no_endpoints(self) -> str:
        return self.chain("NO-ENDPOINTS")

    @property
    def unknown_port(self) -> str:
        return self.chain("UNKNOWN-PORT")

    @property
    def unallocated(self) -> str:
        return self.chain("UNALLOCATED")


def container(table: str, chain: str) -> str:
    """An element's container: a chain of the skeleton, with its table."""
    return f"{table} {chain}"


# From objects to rules -------------------------------------------------------------------------


def service_rules(
    service: service_pb2.Service, endpoints: endpoints_pb2.Endpoints | None, config: Config
) -> Rules:
    """The service's share of the chains; EMPTY-like (with the reason) for a service with no cluster IP."""
    namespace, name = service.metadata.namespace, service.metadata.name
    ip = cluster_ip(service)
    if ip is None:
        return Rules(skipped=(skip_reason(service),))
    affinity = service.spec.session_affinity == CLIENT_IP_AFFINITY
    chains: dict[str, tuple[str, ...]] = {}
    elements: dict[ElementKey, str] = {
        (container(FILTER, config.cluster_ips), f"-d {ip}/32"):
            f"{_comment(f'{namespace}/{name} cluster IP')} -j {config.unknown_port}",
    }
    to_program, skipped = ports_to_program(service, endpoints)
    ports = [port.programmed(service, ip, affinity) for port in to_program]
    for port in to_program:
        proto, node_port, backends, ident = port.proto, port.node_port, port.backends, port.ident
        described = f"{namespace}/{name}:{port.label}"
        ip_match = f"-d {ip}/32 -p {proto} -m {proto} --dport {port.port.port}"
        node_match = f"-p {proto} -m {proto} --dport {node_port}"
        if not backends:
            refuse = f"{_comment(f'{described} has no endpoints')} -j {config.no_endpoints}"
            elements[(container(FILTER, config.services), ip_match)] = refuse
            if node_port:
                for node_ip in config.node_ips:
                    elements[(container(FILTER, config.external), f"-d {node_ip}/32 {node_match}")] = refuse
            continue
        service_chain = config.service_chain("SVC", ident)
        endpoint_chains = []
        affinity_checks = []
        for backend_ip, backend_port in backends:
            chain = config.service_chain("SEP", f"{ident}__{backend_ip}/{backend_port}")
            endpoint_chains.append(chain)
            remember = f"-m recent --name {chain} --set " if affinity else ""
            if affinity:
                affinity_checks.append(
                    f"-m recent --name {chain} --rcheck --seconds {config.affinity_timeout} --reap -j {chain}"
                )
            chains[chain] = (
                f"-s {backend_ip}/32 -j {config.mark_masq}",
                f"-p {proto} {remember}-j DNAT --to-destination {backend_ip}:{backend_port}",
            )
        chains[service_chain] = (
            f"-m addrtype --src-type LOCAL -j {config.mark_masq}",
            *affinity_checks,
            *_pick(endpoint_chains, config.balance),
        )
        elements[(container(NAT, config.services), ip_match)] = (
            f"{_comment(f'{described} cluster IP')} -j {service_chain}"
        )
        if node_port:
            external_chain = config.service_chain("EXT", ident)
            chains[external_chain] = (f"-j {config.mark_masq}", f"-j {service_chain}")
            elements[(container(NAT, config.nodeports), node_match)] = (
                f"{_comment(f'{described} node port')} -j {external_chain}"
            )
    return Rules(chains=chains, elements=elements, ports=tuple(ports), skipped=tuple(skipped))


def _pick(endpoint_chains: list[str], balance: str) -> list[str]:
    """The rules that send a new connection to one of the endpoint chains, each as likely: the
    i-th takes 1/(N-i) of what reaches it (random), or every (N-i)-th (round robin)."""
    count = len(endpoint_chains)
    rules = []
    for index, chain in enumerate(endpoint_chains[:-1]):
        if balance == BALANCE_ROUND_ROBIN:
            rules.append(f"-m statistic --mode nth --every {count - index} --packet 0 -j {chain}")
        else:
            rules.append(f"-m statistic --mode random --probability {1 / (count - index):.10f} -j {chain}")
    return [*rules, f"-j {endpoint_chains[-1]}"]


# The skeleton ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Jump:
    """A rule in a built-in chain that sends packets to one of ours."""

    table: str
    chain: str
    matches: str
    target: str

    @property
    def rule(self) -> str:
        return f"{self.matches} -j {self.target}".strip()


def jumps(config: Config) -> list[Jump]:
    node = f"kybernetes proxy {config.node}"
    portals = _comment(f"{node}: service portals")
    firewall = _comment(f"{node}: service firewall")
    return [
        Jump(NAT, "PREROUTING", portals, config.services),
        Jump(NAT, "OUTPUT", portals, config.services),
        Jump(NAT, "POSTROUTING", _comment(f"{node}: masquerading"), config.postrouting),
        Jump(FILTER, "FORWARD", firewall, config.firewall),
        Jump(FILTER, "OUTPUT", firewall, config.firewall),
        Jump(FILTER, "INPUT", f"-m conntrack --ctstate NEW {_comment(f'{node}: node ports')}", config.external),
    ]


def skeleton(config: Config) -> dict[str, tuple[list[str], list[str]]]:
    """The fixed part, per table: (chains, `-A` rules)."""
    mark = f"0x{MASQUERADE_MARK:x}"
    nat_chains = [config.services, config.nodeports, config.postrouting, config.mark_masq]
    nat_rules = [
        *(f"-A {config.services} -d {node_ip}/32 {_comment('node ports')} -j {config.nodeports}"
          for node_ip in config.node_ips),
        f"-A {config.postrouting} -m mark ! --mark {mark}/{mark} -j RETURN",
        f"-A {config.postrouting} -j MARK --xor-mark {mark}",
        f"-A {config.postrouting} {_comment('service traffic requiring SNAT')} -j MASQUERADE --random-fully",
        f"-A {config.mark_masq} -j MARK --or-mark {mark}",
    ]
    filter_chains = [
        config.firewall, config.services, config.cluster_ips, config.external,
        config.no_endpoints, config.unknown_port, config.unallocated,
    ]
    filter_rules = [
        f"-A {config.firewall} -m conntrack --ctstate NEW -j {config.services}",
        f"-A {config.firewall} -m conntrack --ctstate NEW -j {config.cluster_ips}",
        f"-A {config.firewall} -d {config.service_cidr} -j {config.unallocated}",
    ]
    for chain, what, other in (
        (config.no_endpoints, "a service port with no ready endpoint", "icmp-port-unreachable"),
        (config.unknown_port, "a port the service of the cluster IP does not have", "icmp-port-unreachable"),
        (config.unallocated, "an address in the service range no service has", "icmp-host-unreachable"),
    ):
        filter_rules += [
            f"-A {chain} -p tcp {_comment(what)} -j REJECT --reject-with tcp-reset",
            f"-A {chain} {_comment(what)} -j REJECT --reject-with {other}",
        ]
    if config.loopback_node_ip:
        # route_localnet lets 127.0.0.0/8 be routed: keep it from crossing a real interface.
        filter_rules += [
            f"-A {config.external} ! -i lo ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate DNAT "
            f"{_comment('route_localnet: outside to loopback')} -j DROP",
            f"-A {config.firewall} ! -o lo -s 127.0.0.0/8 -m mark ! --mark {mark}/{mark} -m conntrack ! --ctstate "
            f"DNAT {_comment('route_localnet: loopback source leaving')} -j DROP",
        ]
    return {NAT: (nat_chains, nat_rules), FILTER: (filter_chains, filter_rules)}


# What the kernel holds -------------------------------------------------------------------------


@dataclass
class Present:
    """This node's part of `iptables-save`: its chains and rules, and every other rule that
    jumps to one of them (the built-in chains' jumps), per table."""

    chains: dict[str, set[str]] = field(default_factory=dict)
    rules: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (table, our chain) -> rule texts
    jumps: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # table -> (chain, rule, target)


def _target(rule: str) -> str:
    try:
        tokens = shlex.split(rule)
    except ValueError:
        tokens = rule.split()
    for flag, value in zip(tokens, tokens[1:], strict=False):
        if flag in ("-j", "--jump", "-g", "--goto"):
            return value
    return ""


def parse_save(text: str, config: Config) -> Present:
    """What of this node's `iptables-save` output shows (tables other than nat and filter ignored)."""
    pattern = config.pattern
    present = Present()
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif table not in TABLES:
            continue
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if pattern.match(name):
                present.chains.setdefault(table, set()).add(name)
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            rule = rest[0] if rest else ""
            if pattern.match(chain):
                present.rules.setdefault((table, chain), []).append(rule)
            elif pattern.match(target := _target(rule)):
                present.jumps.setdefault(table, []).append((chain, rule, target))
    return present


def missing(present: Present, config: Config) -> list[str]:
    """What of the skeleton is not in the kernel (empty: intact)."""
    problems = []
    for jump in jumps(config):
        if not any(c == jump.chain and t == jump.target for c, _, t in present.jumps.get(jump.table, [])):
            problems.append(f"{jump.table} {jump.chain} -> {jump.target}")
    for table, (chains, rules) in skeleton(config).items():
        for chain in chains:
            wanted = sum(rule.startswith(f"-A {chain} ") for rule in rules)
            if chain not in present.chains.get(table, set()):
                problems.append(f"{table} {chain}")
            elif len(present.rules.get((table, chain), [])) < wanted:
                problems.append(f"{table} {chain} lacks rules")
    return problems


# From rules to scripts -------------------------------------------------------------------------


def _section(table: str, lines: list[str]) -> list[str]:
    return [f"*{table}", *lines, "COMMIT"] if lines else []


def _element_rules(verb: str, items: list[tuple[ElementKey, str]], table: str) -> list[str]:
    lines = []
    for (where, key), value in sorted(items):
        element_table, chain = where.split(" ", 1)
        if element_table == table:
            lines.append(f"{verb} {chain} {key} {value}")
    return lines


def diff_commands(old: Rules, new: Rules) -> list[str]:
    """The restore script's lines that turn `old` into `new` (per-service chains are all in nat)."""
    added = sorted(new.chains.keys() - old.chains.keys())
    changed = sorted(name for name in new.chains.keys() & old.chains.keys() if new.chains[name] != old.chains[name])
    removed = sorted(old.chains.keys() - new.chains.keys())
    deletes = [(element, value) for element, value in old.elements.items() if new.elements.get(element) != value]
    adds = [(element, value) for element, value in new.elements.items() if old.elements.get(element) != value]
    commands: list[str] = []
    for table in TABLES:
        lines = []
        if table == NAT:
            # Declaring a chain flushes it (--noflush keeps everything else).
            lines += [f":{name} - [0:0]" for name in sorted([*added, *changed, *removed])]
        lines += _element_rules("-D", deletes, table)
        if table == NAT:
            for name in [*added, *changed]:
                lines += [f"-A {name} {rule}" for rule in new.chains[name]]
        lines += _element_rules("-A", adds, table)
        if table == NAT:
            lines += [f"-X {name}" for name in removed]
        commands += _section(table, lines)
    return commands


def full_commands(config: Config, rules: Rules, present: Present | None = None) -> list[str]:
    """Everything of this node, replacing whatever of it is there (per table, one commit each)."""
    present = present or Present()
    skeletons = skeleton(config)
    commands: list[str] = []
    for table in TABLES:
        chains, skeleton_rules = skeletons[table]
        wanted = set(chains) | (set(rules.chains) if table == NAT else set())
        stale = present.chains.get(table, set()) - wanted
        lines = [f":{name} - [0:0]" for name in sorted(wanted | stale)]
        expected = [jump for jump in jumps(config) if jump.table == table]
        seen: set[tuple[str, str]] = set()
        for chain, rule, target in present.jumps.get(table, []):
            if any(jump.chain == chain and jump.target == target for jump in expected) and (chain, target) not in seen:
                seen.add((chain, target))
            else:  # a duplicate, or a jump to a chain no longer wanted
                lines.append(f"-D {chain} {rule}")
        lines += [f"-I {jump.chain} {jump.rule}" for jump in expected if (jump.chain, jump.target) not in seen]
        lines += skeleton_rules
        if table == NAT:
            for name in sorted(rules.chains):
                lines += [f"-A {name} {rule}" for rule in rules.chains[name]]
        lines += _element_rules("-A", list(rules.elements.items()), table)
        lines += [f"-X {name}" for name in sorted(stale)]
        commands += _section(table, lines)
    return commands


def cleanup_commands(present: Present) -> list[str]:
    """Removes every chain of the node and every jump to them (nothing: no lines)."""
    commands: list[str] = []
    for table in (NAT, FILTER):  # translations go first: refusals stay until the end
        chains = sorted(present.chains.get(table, set()))
        lines = [f":{name} - [0:0]" for name in chains]
        lines += [f"-D {chain} {rule}" for chain, rule, _ in present.jumps.get(table, [])]
        lines += [f"-X {name}" for name in chains]
        commands += _section(table, lines)
    return commands


class IptablesWriter:
    """The iptables mode's commands for `ruleset.Installed`."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def diff(self, old: Rules, new: Rules) -> list[str]:
        return diff_commands(old, new)

    def full(self, rules: Rules, present: Any = None) -> list[str]:
        return full_commands(self.config, rules, present)


class Installed(ruleset.Installed):
    """What the last successful restore left, per service (see ruleset.Installed)."""

    def __init__(self, config: Config) -> None:
        super().__init__(IptablesWriter(config))
        self.config = config


__all__ = [
    "EMPTY", "FILTER", "NAT", "Config", "Installed", "IptablesWriter", "Jump", "Present", "cleanup_commands",
    "container", "diff_commands", "full_commands", "jumps", "missing", "node_tag", "parse_save", "service_rules",
    "skeleton",
]
