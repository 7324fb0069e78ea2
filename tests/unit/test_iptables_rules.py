"""The iptables proxier's pure part: Services and Endpoints -> chains -> `iptables-restore` scripts.

No kernel here. Each script is replayed on a small model of the nat and filter
tables (`Tables`) that refuses what `iptables-restore --noflush` refuses (a
jump to a missing chain, `-D` of a rule that is not there, `-X` of a chain
that is not empty or still referenced) and commits each table on its own, as
the real one does; the model's final content must equal the desired rules, so
the scripts are checked for order as well as for content. The model prints
itself as `iptables-save` does, so full rebuilds read it back as the runner
reads the kernel.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction

import pytest

from kybernetes.v1 import endpoints_pb2, service_pb2
from services.proxy import iptables
from services.proxy.iptables import FILTER, NAT, Config, Installed, Present
from services.proxy.ruleset import EMPTY, Rules, merge, script

from .proxy_objects import endpoints, service

CONFIG = Config(node="test-node", service_cidr="10.96.0.0/12", node_ips=("192.168.1.10",))
TAG = CONFIG.tag
BUILTIN_TARGETS = {"ACCEPT", "DROP", "RETURN", "REJECT", "DNAT", "MARK", "MASQUERADE"}
BUILTINS = {
    NAT: ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    FILTER: ("INPUT", "FORWARD", "OUTPUT"),
}


# Builders ------------------------------------------------------------------------------------


def rules(svc: service_pb2.Service, eps: endpoints_pb2.Endpoints | None = None, config: Config = CONFIG) -> Rules:
    return iptables.service_rules(svc, eps, config)


KEY = ("default", "web")
NAT_SERVICES = iptables.container(NAT, CONFIG.services)
FILTER_SERVICES = iptables.container(FILTER, CONFIG.services)
WEB_MATCH = "-d 10.96.0.10/32 -p tcp -m tcp --dport 80"


_TARGET = re.compile(r"(?:^|\s)-j (\S+)")


def target(rule: str) -> str:
    match = _TARGET.search(rule)
    return match.group(1) if match else ""


# A model of the tables -----------------------------------------------------------------------


class Tables:
    """Applies `iptables-restore --noflush` scripts as the real one does, refusing what it refuses."""

    def __init__(self) -> None:
        self.chains: dict[str, dict[str, list[str]]] = {
            table: {name: [] for name in names} for table, names in BUILTINS.items()
        }

    def apply(self, text: str) -> None:
        table, work = "", None
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:]
                work = {name: list(rules) for name, rules in self.chains[table].items()}
            elif line == "COMMIT":
                assert work is not None
                self.chains[table] = work  # each table commits on its own
                work = None
            else:
                assert work is not None, f"outside a table: {line}"
                self._line(table, work, line)
        assert work is None, "no COMMIT"

    def _line(self, table: str, chains: dict[str, list[str]], line: str) -> None:
        if line.startswith(":"):
            name = line[1:].split()[0]
            assert len(name) <= 28, f"chain name too long: {name}"
            chains[name] = []  # declared: created, or flushed
            return
        verb, chain, rule = (line.split(" ", 2) + [""])[:3]
        if verb == "-X":
            assert chain in chains and not chains[chain], f"-X of a missing or non-empty chain: {chain}"
            assert chain not in BUILTINS[table]
            del chains[chain]
            referenced = [r for rules in chains.values() for r in rules if target(r) == chain]
            assert not referenced, f"deleted chain still referenced: {chain}"
            return
        assert chain in chains, f"{verb} on a missing chain: {line}"
        jump = target(rule)
        assert jump in BUILTIN_TARGETS or jump in chains, f"jump to a missing chain: {line}"
        if verb == "-A":
            chains[chain].append(rule)
        elif verb == "-I":
            chains[chain].insert(0, rule)
        elif verb == "-D":
            assert rule in chains[chain], f"-D of a rule that is not there: {line}"
            chains[chain].remove(rule)
        else:
            raise AssertionError(f"unknown command: {line}")

    def save(self) -> str:
        """As `iptables-save` prints it."""
        lines = []
        for table in (FILTER, NAT):
            lines.append(f"*{table}")
            for name in self.chains[table]:
                lines.append(f":{name} {'ACCEPT' if name in BUILTINS[table] else '-'} [0:0]")
            for name, chain_rules in self.chains[table].items():
                lines += [f"-A {name} {rule}" for rule in chain_rules]
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def present(self, config: Config = CONFIG) -> Present:
        return iptables.parse_save(self.save(), config)

    def ours(self, table: str, config: Config = CONFIG) -> dict[str, list[str]]:
        return {name: rules for name, rules in self.chains[table].items() if config.pattern.match(name)}


def expect_tables(model: Tables, desired: dict, config: Config = CONFIG) -> None:
    """The model holds the skeleton, the services' chains and elements, and each jump once."""
    merged = merge(desired.values())
    for table, (chains, skeleton_rules) in iptables.skeleton(config).items():
        ours = model.ours(table, config)
        service_chains = {name for name in ours if name not in chains}
        assert service_chains == (set(merged.chains) if table == NAT else set())
        for name in service_chains:
            assert ours[name] == list(merged.chains[name]), name
        for name in chains:
            wanted = [rule.split(" ", 2)[2] for rule in skeleton_rules if rule.startswith(f"-A {name} ")]
            elements = sorted(
                f"{key} {value}" for (where, key), value in merged.elements.items() if where == f"{table} {name}"
            )
            assert sorted(ours[name]) == sorted(wanted + elements), name
    for jump in iptables.jumps(config):
        found = [r for r in model.chains[jump.table][jump.chain] if target(r) == jump.target]
        assert found == [jump.rule], (jump, found)


def install(book: Installed, model: Tables, changed: dict, *, full: bool = False):
    plan = book.plan_full(changed, model.present(book.config)) if full else book.plan(changed)
    model.apply(plan.script)
    book.commit(plan)
    return plan


def started(desired: dict | None = None) -> tuple[Installed, Tables]:
    book, model = Installed(CONFIG), Tables()
    install(book, model, desired or {}, full=True)
    return book, model


# service_rules: one service's share --------------------------------------------------------


def test_a_service_with_endpoints():
    share = rules(service(), endpoints(["10.88.0.3", "10.88.0.2"]))
    svc_chain = target(share.elements[(NAT_SERVICES, WEB_MATCH)])
    assert re.fullmatch(rf"KYB-SVC-[A-Z2-7]{{12}}-{TAG}", svc_chain)
    assert share.elements[(NAT_SERVICES, WEB_MATCH)].startswith('-m comment --comment "default/web:http cluster IP"')
    assert share.elements[(iptables.container(FILTER, CONFIG.cluster_ips), "-d 10.96.0.10/32")].endswith(
        f"-j {CONFIG.unknown_port}"
    )
    assert len(share.elements) == 2
    picks = share.chains[svc_chain]
    first, second = (target(rule) for rule in picks[1:])
    assert picks == (
        f"-m addrtype --src-type LOCAL -j {CONFIG.mark_masq}",
        f"-m statistic --mode random --probability 0.5000000000 -j {first}",
        f"-j {second}",
    )
    assert share.chains[first] == (
        f"-s 10.88.0.2/32 -j {CONFIG.mark_masq}", "-p tcp -j DNAT --to-destination 10.88.0.2:8080",
    )
    assert share.chains[second][1] == "-p tcp -j DNAT --to-destination 10.88.0.3:8080"
    [port] = share.ports
    assert (port.cluster_ip, port.port) == ("10.96.0.10", 80)
    assert port.endpoints == (("10.88.0.2", 8080), ("10.88.0.3", 8080))


NO_ENDPOINTS = f'-m comment --comment "default/web:http has no endpoints" -j {CONFIG.no_endpoints}'


@pytest.mark.parametrize(
    "svc, eps, filter_elements, chains",
    [
        pytest.param(
            service(), None, {(FILTER_SERVICES, WEB_MATCH): NO_ENDPOINTS}, 0, id="no-endpoints-object-rejects"
        ),
        pytest.param(
            service(ports=(("http", 80, "TCP", 30080),)), endpoints([]),
            {
                (FILTER_SERVICES, WEB_MATCH): NO_ENDPOINTS,
                (iptables.container(FILTER, CONFIG.external), "-d 192.168.1.10/32 -p tcp -m tcp --dport 30080"):
                    NO_ENDPOINTS,
            },
            0, id="node-port-without-endpoints-rejected-on-the-node-ip",
        ),
        pytest.param(
            service(), endpoints(["10.88.0.2"], (("other", 8080),)),
            {(FILTER_SERVICES, WEB_MATCH): NO_ENDPOINTS}, 0, id="endpoint-port-of-another-name-is-not-ours",
        ),
        pytest.param(
            service(ports=(("dns", 53, "UDP", 0), ("sctp", 99, "SCTP", 0))), endpoints(["10.88.0.2"], (("dns", 53),)),
            {}, 2, id="udp-served-sctp-skipped",
        ),
        pytest.param(service(cluster_ip="None"), endpoints(["10.88.0.2"]), None, 0, id="headless-skipped"),
        pytest.param(service(cluster_ip=""), endpoints(["10.88.0.2"]), None, 0, id="no-cluster-ip-yet-skipped"),
        pytest.param(service(cluster_ip="fd00::10"), endpoints(["10.88.0.2"]), None, 0, id="ipv6-skipped"),
        pytest.param(service(), endpoints(["fd00::2", "10.88.0.2"]), {}, 2, id="ipv6-endpoint-ignored"),
    ],
)
def test_service_rules_table(svc, eps, filter_elements, chains):
    share = rules(svc, eps)
    if filter_elements is None:
        assert share.empty and share.skipped
        return
    got = {k: v for k, v in share.elements.items() if k[0] in (FILTER_SERVICES, f"{FILTER} {CONFIG.external}")}
    assert got == filter_elements
    assert len(share.chains) == chains


def test_udp_endpoint_chain_dnats_udp():
    share = rules(service(ports=(("dns", 53, "UDP", 0),)), endpoints(["10.88.0.2"], (("dns", 5353),)))
    [sep] = [name for name in share.chains if name.startswith("KYB-SEP-")]
    assert share.chains[sep][1] == "-p udp -j DNAT --to-destination 10.88.0.2:5353"
    assert (NAT_SERVICES, "-d 10.96.0.10/32 -p udp -m udp --dport 53") in share.elements


def test_node_port_goes_through_an_external_chain_that_masquerades():
    share = rules(service(ports=(("http", 80, "TCP", 30080),)), endpoints(["10.88.0.2"]))
    external = target(share.elements[(iptables.container(NAT, CONFIG.nodeports), "-p tcp -m tcp --dport 30080")])
    svc_chain = target(share.elements[(NAT_SERVICES, WEB_MATCH)])
    assert external.startswith("KYB-EXT-")
    assert share.chains[external] == (f"-j {CONFIG.mark_masq}", f"-j {svc_chain}")


def test_client_ip_affinity_uses_the_recent_match_per_endpoint():
    config = Config(node="test-node", affinity_timeout=600)
    share = rules(service(affinity="ClientIP"), endpoints(["10.88.0.2", "10.88.0.3"]), config)
    svc_chain = next(name for name in share.chains if name.startswith("KYB-SVC-"))
    checks = share.chains[svc_chain][1:3]
    for check in checks:
        sep = target(check)
        assert check == f"-m recent --name {sep} --rcheck --seconds 600 --reap -j {sep}"
        assert share.chains[sep][1].startswith(f"-p tcp -m recent --name {sep} --set -j DNAT")
    # The masquerade mark comes first, so a pinned host connection is still masqueraded.
    assert share.chains[svc_chain][0].startswith("-m addrtype --src-type LOCAL")


def _picks(count: int, balance: str = "random") -> list[str]:
    ips = [f"10.88.{i // 250}.{i % 250 + 1}" for i in range(count)]
    share = rules(service(), endpoints(ips), Config(node="test-node", balance=balance))
    svc_chain = next(name for name in share.chains if name.startswith("KYB-SVC-"))
    return [re.sub(r"KYB-SEP-\S+", "SEP", rule) for rule in share.chains[svc_chain][1:]]


@pytest.mark.parametrize(
    "count, balance, expected",
    [
        pytest.param(1, "random", ["-j SEP"], id="one-endpoint-no-pick"),
        pytest.param(3, "random", [
            "-m statistic --mode random --probability 0.3333333333 -j SEP",
            "-m statistic --mode random --probability 0.5000000000 -j SEP",
            "-j SEP",
        ], id="random-cascade"),
        pytest.param(3, "round-robin", [
            "-m statistic --mode nth --every 3 --packet 0 -j SEP",
            "-m statistic --mode nth --every 2 --packet 0 -j SEP",
            "-j SEP",
        ], id="round-robin-nth"),
    ],
)
def test_the_pick(count, balance, expected):
    assert _picks(count, balance) == expected


def test_the_cascade_is_uniform():
    """Rule i takes 1/(N-i) of what reaches it: every endpoint gets 1/N (up to the printed digits)."""
    for count in range(2, 40):
        reaching, shares = Fraction(1), []
        for rule in _picks(count):
            match = re.search(r"--probability (\S+)", rule)
            taken = reaching * Fraction(match.group(1)) if match else reaching
            shares.append(taken)
            reaching -= taken
        assert all(abs(share - Fraction(1, count)) < Fraction(1, 10**8) for share in shares), count


def test_chain_names_fit_iptables_and_are_per_node():
    odd = service(name="Web_Svc.v2", namespace="team-a", ports=(("", 80, "TCP", 30080),))
    eps = endpoints(["10.88.0.2"], (("", 8080),), name="Web_Svc.v2", namespace="team-a")
    share = rules(odd, eps)
    names = list(share.chains)
    for chains, _ in iptables.skeleton(CONFIG).values():
        names += chains
    for name in names:
        assert re.fullmatch(r"KYB-[A-Z0-9-]+", name) and len(name) <= iptables.MAX_CHAIN and name.endswith(TAG)
    other = rules(odd, eps, Config(node="other-node"))
    assert not set(share.chains) & set(other.chains)
    assert iptables.node_tag("node-1") != iptables.node_tag("node-2")
    assert not CONFIG.pattern.match(Config(node="other-node").services)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError):
        Config(node="n", service_cidr="10.96.0.1/12")
    with pytest.raises(ValueError):
        Config(node="n", node_ips=("fd00::1",))
    with pytest.raises(ValueError):
        Config(node="n", balance="least-conn")


# The skeleton, full scripts, what the kernel holds -----------------------------------------------


def test_full_script_refusals_before_translations_and_jumps_inserted_once():
    book = Installed(CONFIG)
    plan = book.plan_full({KEY: rules(service(), endpoints(["10.88.0.2"]))}, Present())
    lines = plan.commands
    assert lines[0] == "*filter" and lines.index("*nat") > lines.index("COMMIT")
    inserts = [line for line in lines if line.startswith("-I ")]
    assert len(inserts) == 6 and {line.split()[1] for line in inserts} == {
        "PREROUTING", "OUTPUT", "POSTROUTING", "FORWARD", "INPUT",
    }
    assert f"-A {CONFIG.firewall} -d 10.96.0.0/12 -j {CONFIG.unallocated}" in lines
    assert "route_localnet" not in plan.script  # the node IP is not loopback
    model = Tables()
    model.apply(plan.script)
    book.commit(plan)
    expect_tables(model, book.by_service)
    assert book.adopted and iptables.missing(model.present(), CONFIG) == []


def test_a_second_full_rebuild_keeps_one_jump_each_and_deletes_stale_chains():
    book, model = started({KEY: rules(service(), endpoints(["10.88.0.2"])), ("default", "old"):
                           rules(service(name="old", cluster_ip="10.96.0.11"), endpoints(["10.88.0.5"], name="old"))})
    # A new proxy (nothing installed as far as it knows) adopts: one of the two services is gone.
    fresh = Installed(CONFIG)
    plan = install(fresh, model, {KEY: rules(service(), endpoints(["10.88.0.2"]))}, full=True)
    assert not any(line.startswith("-I ") for line in plan.commands)
    assert sum(line.startswith("-X ") for line in plan.commands) == 2  # old's service and endpoint chains
    expect_tables(model, fresh.by_service)
    # A jump doubled by hand is undone by the next rebuild.
    jump = iptables.jumps(CONFIG)[0]
    model.chains[jump.table][jump.chain].append(jump.rule)
    install(fresh, model, {KEY: rules(service(), endpoints(["10.88.0.2"]))}, full=True)
    expect_tables(model, fresh.by_service)


def test_loopback_node_ip_adds_the_route_localnet_guards():
    text = "\n".join(rule for _, rules_ in iptables.skeleton(Config(node="n")).values() for rule in rules_)
    assert "! -i lo ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate DNAT" in text
    assert "! -o lo -s 127.0.0.0/8 -m mark ! --mark 0x4000/0x4000" in text


SAVED = f"""# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:DOCKER-USER - [0:0]
:{CONFIG.firewall} - [0:0]
:KYB-FIREWALL-OTHERX - [0:0]
-A FORWARD -m comment --comment "kybernetes proxy test-node: service firewall" -j {CONFIG.firewall}
-A FORWARD -j DOCKER-USER
-A FORWARD -m comment --comment "kybernetes proxy other: service firewall" -j KYB-FIREWALL-OTHERX
-A {CONFIG.firewall} -d 10.96.0.0/12 -j {CONFIG.unallocated}
COMMIT
*mangle
:{CONFIG.firewall} - [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:{CONFIG.services} - [0:0]
-A PREROUTING -m comment --comment "kybernetes proxy test-node: service portals" -j {CONFIG.services}
COMMIT
"""


def test_parse_save_finds_the_node_and_nothing_else():
    present = iptables.parse_save(SAVED, CONFIG)
    assert present.chains == {FILTER: {CONFIG.firewall}, NAT: {CONFIG.services}}
    assert present.rules == {(FILTER, CONFIG.firewall): [f"-d 10.96.0.0/12 -j {CONFIG.unallocated}"]}
    assert [(chain, t) for chain, _, t in present.jumps[FILTER]] == [("FORWARD", CONFIG.firewall)]
    assert [(chain, t) for chain, _, t in present.jumps[NAT]] == [("PREROUTING", CONFIG.services)]


def test_missing_tells_a_flushed_chain_and_a_lost_jump():
    book, model = started()
    assert iptables.missing(model.present(), CONFIG) == []
    model.chains[FILTER][CONFIG.firewall] = []
    model.chains[NAT]["OUTPUT"] = []
    problems = iptables.missing(model.present(), CONFIG)
    assert f"nat OUTPUT -> {CONFIG.services}" in problems and f"filter {CONFIG.firewall} lacks rules" in problems
    install(book, model, {}, full=True)
    assert iptables.missing(model.present(), CONFIG) == []


def test_cleanup_removes_the_node_and_leaves_the_others():
    other = Config(node="other-node", service_cidr="10.96.0.0/12", node_ips=("192.168.1.11",))
    book, model = started({KEY: rules(service(), endpoints(["10.88.0.2"]))})
    other_book = Installed(other)
    install(other_book, model, {KEY: rules(service(), endpoints(["10.88.0.3"]), other)}, full=True)
    model.apply(script(iptables.cleanup_commands(model.present())))
    for table in (NAT, FILTER):
        assert model.ours(table) == {}
        assert all(CONFIG.tag not in rule for rules_ in model.chains[table].values() for rule in rules_)
    expect_tables(model, other_book.by_service, other)
    assert iptables.cleanup_commands(model.present()) == []


# Incremental plans ---------------------------------------------------------------------------


def test_new_service_adds_only_its_own_chains_and_rules():
    book, model = started()
    plan = install(book, model, {KEY: rules(service(), endpoints(["10.88.0.2"]))})
    assert not any(line.startswith(("-D", "-X", "-I")) for line in plan.commands)
    assert sum(line.startswith(":") for line in plan.commands) == 2
    expect_tables(model, book.by_service)


def test_last_endpoint_gone_moves_the_port_to_the_refusals():
    book, model = started({KEY: rules(service(), endpoints(["10.88.0.2"]))})
    plan = install(book, model, {KEY: rules(service(), endpoints([]))})
    assert any(line.startswith(f"-D {CONFIG.services} {WEB_MATCH} ") for line in plan.commands)
    assert f"-A {CONFIG.services} {WEB_MATCH} {NO_ENDPOINTS}" in plan.commands
    assert sum(line.startswith("-X ") for line in plan.commands) == 2
    expect_tables(model, book.by_service)
    install(book, model, {KEY: rules(service(), endpoints(["10.88.0.4"]))})
    expect_tables(model, book.by_service)


def test_service_deleted_removes_everything_it_had():
    svc = service(ports=(("http", 80, "TCP", 30080),), affinity="ClientIP")
    book, model = started({KEY: rules(svc, endpoints(["10.88.0.2", "10.88.0.3"]))})
    install(book, model, {KEY: EMPTY})
    expect_tables(model, {})
    assert KEY not in book.by_service and book.owners == {}


def test_unchanged_service_writes_nothing():
    book, _ = started({KEY: rules(service(), endpoints(["10.88.0.2"]))})
    assert book.plan({KEY: rules(service(), endpoints(["10.88.0.2"]))}).commands == []


def test_a_refused_restore_is_not_recorded_and_a_table_commits_on_its_own():
    book, model = started({KEY: rules(service(), endpoints(["10.88.0.2"]))})
    before = dict(book.by_service)
    plan = book.plan({KEY: rules(service(), endpoints([]))})
    model.chains[NAT][CONFIG.services] = [r for r in model.chains[NAT][CONFIG.services] if WEB_MATCH not in r]
    with pytest.raises(AssertionError, match="not there"):
        model.apply(plan.script)  # filter committed, nat refused: as iptables-restore does
    assert book.by_service == before
    install(book, model, {KEY: rules(service(), endpoints([]))}, full=True)
    expect_tables(model, book.by_service)


def test_two_services_claiming_one_cluster_ip_port():
    other = ("default", "copy")
    first = rules(service(), endpoints(["10.88.0.2"]))
    second = rules(service(name="copy"), endpoints(["10.88.0.3"], name="copy"))
    book, model = started({KEY: first})
    plan = install(book, model, {other: second})
    assert other in plan.conflicts and "held by service default/web" in plan.conflicts[other][0]
    assert [r for r in model.chains[NAT][CONFIG.services] if WEB_MATCH in r] == [
        f"{WEB_MATCH} {first.elements[(NAT_SERVICES, WEB_MATCH)]}"
    ]
    plan = install(book, model, {KEY: EMPTY})
    assert plan.released
    install(book, model, {other: second})
    assert book.blocked() == set()
    expect_tables(model, {other: second})


def test_random_histories_replay_exactly():
    """Many small restores in a row, each checked against the model of the tables."""
    rng = random.Random(11)
    book, model = started()
    desired: dict = {}
    for step in range(300):
        key = ("default", f"s{rng.randrange(6)}")
        if rng.random() < 0.15:
            share = EMPTY
        else:
            ips = sorted({f"10.88.0.{rng.randrange(2, 12)}" for _ in range(rng.randrange(0, 4))})
            index = int(key[1][1:])
            ports = tuple(
                (f"p{p}", 80 + p, rng.choice(["TCP", "UDP"]), rng.choice([0, 30000 + p + 10 * index]))
                for p in range(rng.randrange(1, 3))
            )
            svc = service(name=key[1], cluster_ip=f"10.96.2.{index + 1}", ports=ports,
                          affinity=rng.choice(["", "ClientIP"]))
            share = rules(svc, endpoints(ips, tuple((f"p{p}", 9000 + p) for p in range(2)), name=key[1]))
        desired[key] = share
        full = step % 97 == 96  # now and then a full rebuild, reading the tables first
        install(book, model, dict(desired) if full else {key: share}, full=full)
        expect_tables(model, {k: v for k, v in desired.items() if not v.empty})
