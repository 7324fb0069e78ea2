"""The nftables proxier's pure part: Services and Endpoints -> rules -> `nft -f` scripts
(and the userspace mode's portals, the same table with the relay as the destination).

No kernel here. Each script is also replayed on a small model of an nftables
table (`TableModel`) that refuses what nft would refuse (a jump to a missing
chain, deleting a chain something still references, adding an element twice),
and the model's final content must equal the desired rules: so the diffs are
checked for order as well as for content.
"""

from __future__ import annotations

import random
import re

import pytest

from kybernetes.v1 import endpoints_pb2, service_pb2
from services.proxy import nftables
from services.proxy.nftables import (
    CLUSTER_IPS,
    EMPTY,
    NO_ENDPOINT_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    Config,
    Installed,
    Rules,
)

from .proxy_objects import endpoints, service

TABLE = "kybernetes-test-node"
CONFIG = Config(table=TABLE, service_cidr="10.96.0.0/12", node_ips=("192.168.1.10",))


# Builders ------------------------------------------------------------------------------------


def rules(svc: service_pb2.Service, eps: endpoints_pb2.Endpoints | None = None, config: Config = CONFIG) -> Rules:
    return nftables.service_rules(svc, eps, config)


KEY = ("default", "web")
WEB_PORT = "10.96.0.10 . tcp . 80"
REJECTED_WEB = {(CLUSTER_IPS, "10.96.0.10"): "", (NO_ENDPOINT_SERVICES, WEB_PORT): "goto reject-no-endpoints"}


# A model of the table ------------------------------------------------------------------------


_REF = re.compile(r"(?:goto|jump) ([A-Za-z][\w/.\-]*)|@([A-Za-z][\w/.\-]*)")
_CMD = re.compile(r"^(add|delete|flush) (table|chain|rule|set|map|element) ip (\S+)(?: (\S+))?(?: (.*))?$")


def _refs(text: str) -> set[str]:
    return {a or b for a, b in _REF.findall(text)}


class TableModel:
    """Applies nft commands as nft would, refusing what nft refuses."""

    def __init__(self) -> None:
        self.exists = False
        self.chains: dict[str, list[str]] = {}
        self.sets: dict[str, str] = {}
        self.elements: dict[tuple[str, str], str] = {}

    def apply(self, text: str) -> None:
        # One transaction: all or nothing.
        saved = (self.exists, {k: list(v) for k, v in self.chains.items()}, dict(self.sets), dict(self.elements))
        try:
            for line in text.splitlines():
                self._command(line)
        except AssertionError:
            self.exists, self.chains, self.sets, self.elements = saved
            raise

    def _referenced(self, name: str) -> bool:
        in_rules = any(name in _refs(rule) for rules in self.chains.values() for rule in rules)
        return in_rules or any(name in _refs(value) for value in self.elements.values())

    def _command(self, line: str) -> None:
        match = _CMD.match(line)
        assert match, f"unparsed command: {line}"
        verb, kind, table, name, rest = match.groups()
        assert table == TABLE
        if kind == "table":
            if verb == "add":
                self.exists = True
            else:
                assert self.exists, "delete of a missing table"
                self.exists = False
                self.chains, self.sets, self.elements = {}, {}, {}
            return
        assert self.exists, f"no table for: {line}"
        assert name is not None
        if kind == "chain":
            if verb == "add":
                assert name not in self.chains, f"chain added twice: {name}"
                self.chains[name] = []
            elif verb == "flush":
                assert name in self.chains, f"flush of a missing chain: {name}"
                self.chains[name] = []
            else:
                assert name in self.chains and not self.chains[name], f"delete of a missing or non-empty chain: {name}"
                del self.chains[name]
                assert not self._referenced(name), f"deleted chain still referenced: {name}"
        elif kind == "rule":
            assert name in self.chains, f"rule for a missing chain: {name}"
            assert rest
            for ref in _refs(rest):
                assert ref in self.chains or ref in self.sets, f"rule refers to missing {ref}: {line}"
            self.chains[name].append(rest)
        elif kind in ("set", "map"):
            if verb == "add":
                assert name not in self.sets, f"set added twice: {name}"
                self.sets[name] = rest or ""
            else:
                assert name in self.sets, f"delete of a missing set: {name}"
                del self.sets[name]
                assert not self._referenced(name), f"deleted set still referenced: {name}"
        elif kind == "element":
            assert name in self.sets, f"element of a missing set: {name}"
            assert rest and rest.startswith("{ ") and rest.endswith(" }")
            for entry in rest[2:-2].split(", "):
                key, _, value = entry.partition(" : ")
                if verb == "add":
                    assert (name, key) not in self.elements, f"element added twice: {name} {key}"
                    for ref in _refs(value):
                        assert ref in self.chains, f"element refers to missing chain {ref}"
                    self.elements[(name, key)] = value
                else:
                    assert (name, key) in self.elements, f"delete of a missing element: {name} {key}"
                    del self.elements[(name, key)]

    def service_part(self) -> tuple[dict[str, tuple[str, ...]], dict[tuple[str, str], str], set[str]]:
        """What the services put in: chains, elements and sets beyond the skeleton's."""
        skeleton = TableModel()
        declarations, skeleton_rules = nftables.skeleton(CONFIG)
        skeleton.apply("\n".join(["add table ip " + TABLE, *declarations[1:], *skeleton_rules]))
        chains = {k: tuple(v) for k, v in self.chains.items() if k not in skeleton.chains}
        elements = {k: v for k, v in self.elements.items() if k not in skeleton.elements}
        return chains, elements, set(self.sets) - set(skeleton.sets)


def expect_table(model: TableModel, desired: dict) -> None:
    merged = nftables.merge(desired.values())
    chains, elements, sets = model.service_part()
    assert chains == dict(merged.chains)
    assert elements == dict(merged.elements)
    assert sets == set(merged.sets)


def install(book: Installed, model: TableModel, changed: dict, *, full: bool = False) -> nftables.Plan:
    plan = book.plan_full(changed) if full else book.plan(changed)
    model.apply(plan.script)
    book.commit(plan)
    return plan


# service_rules: one service's share --------------------------------------------------------


def test_a_service_with_endpoints():
    share = rules(service(), endpoints(["10.88.0.3", "10.88.0.2"]))
    service_chain = share.elements[(SERVICE_IPS, WEB_PORT)].removeprefix("goto ")
    assert service_chain.startswith("service-") and service_chain.endswith("-default/web/tcp/http")
    assert share.elements[(CLUSTER_IPS, "10.96.0.10")] == ""
    assert len(share.elements) == 2
    picks = share.chains[service_chain]
    assert picks[0] == "fib saddr type local jump mark-for-masquerade"
    assert re.fullmatch(r"numgen random mod 2 == 0 goto endpoint-\S+10\.88\.0\.2/8080", picks[1]), picks
    assert re.fullmatch(r"goto endpoint-\S+10\.88\.0\.3/8080", picks[2]), picks
    assert len(picks) == 3
    endpoint_chains = {name: rules for name, rules in share.chains.items() if name.startswith("endpoint-")}
    assert sorted(endpoint_chains.values()) == [
        ("ip saddr 10.88.0.2 jump mark-for-masquerade", "meta l4proto tcp dnat to 10.88.0.2:8080"),
        ("ip saddr 10.88.0.3 jump mark-for-masquerade", "meta l4proto tcp dnat to 10.88.0.3:8080"),
    ]
    assert share.sets == {}
    [port] = share.ports
    assert (port.cluster_ip, port.port, port.protocol, port.endpoints) == (
        "10.96.0.10", 80, "TCP", (("10.88.0.2", 8080), ("10.88.0.3", 8080))
    )


@pytest.mark.parametrize(
    "svc, eps, expected_elements, chains",
    [
        pytest.param(
            service(), None,
            REJECTED_WEB,
            0, id="no-endpoints-object-rejects",
        ),
        pytest.param(
            service(), endpoints([], not_ready=["10.88.0.2"]),
            REJECTED_WEB,
            0, id="only-not-ready-endpoints-rejects",
        ),
        pytest.param(
            service(ports=(("http", 80, "TCP", 30080),)), None,
            {
                (CLUSTER_IPS, "10.96.0.10"): "",
                (NO_ENDPOINT_SERVICES, "10.96.0.10 . tcp . 80"): "goto reject-no-endpoints",
                (NO_ENDPOINT_NODEPORTS, "tcp . 30080"): "goto reject-no-endpoints",
            },
            0, id="node-port-without-endpoints-rejects",
        ),
        pytest.param(
            service(ports=(("http", 80, "TCP", 0),)), endpoints(["10.88.0.2"], (("other", 8080),)),
            REJECTED_WEB,
            0, id="endpoint-port-of-another-name-is-not-ours",
        ),
        pytest.param(
            service(ports=(("dns", 53, "UDP", 0), ("sctp", 99, "SCTP", 0))), endpoints(["10.88.0.2"], (("dns", 53),)),
            {(CLUSTER_IPS, "10.96.0.10"): ""}, 2, id="udp-served-sctp-skipped",
        ),
        pytest.param(service(cluster_ip="None"), endpoints(["10.88.0.2"]), {}, 0, id="headless-skipped"),
        pytest.param(service(cluster_ip=""), endpoints(["10.88.0.2"]), {}, 0, id="no-cluster-ip-yet-skipped"),
        pytest.param(service(cluster_ip="fd00::10"), endpoints(["10.88.0.2"]), {}, 0, id="ipv6-skipped"),
        pytest.param(
            service(), endpoints(["fd00::2", "10.88.0.2"]), {(CLUSTER_IPS, "10.96.0.10"): ""}, 2,
            id="ipv6-endpoint-ignored",
        ),
    ],
)
def test_service_rules_table(svc, eps, expected_elements, chains):
    share = rules(svc, eps)
    got = {k: v for k, v in share.elements.items() if k[0] != SERVICE_IPS}
    assert got == expected_elements
    assert len(share.chains) == chains


def test_skipped_reasons():
    assert rules(service(cluster_ip="None")).skipped == ("headless",)
    assert rules(service(cluster_ip="")).skipped == ("no cluster IP yet",)
    assert rules(service(ports=(("s", 9, "SCTP", 0),))).skipped == ("s: protocol SCTP is not supported",)
    assert rules(service(cluster_ip="None")).empty


def test_node_port_goes_through_an_external_chain_that_masquerades():
    share = rules(service(ports=(("http", 80, "TCP", 30080),)), endpoints(["10.88.0.2"]))
    external = share.elements[(SERVICE_NODEPORTS, "tcp . 30080")].removeprefix("goto ")
    service_chain = share.elements[(SERVICE_IPS, WEB_PORT)].removeprefix("goto ")
    assert external.startswith("external-")
    assert share.chains[external] == ("jump mark-for-masquerade", f"goto {service_chain}")


def test_client_ip_affinity_uses_a_set_per_endpoint():
    config = Config(table=TABLE, affinity_timeout=600)
    share = rules(service(affinity="ClientIP"), endpoints(["10.88.0.2", "10.88.0.3"]), config)
    assert len(share.sets) == 2
    for name, (kind, declaration) in share.sets.items():
        assert name.startswith("affinity-") and kind == "set"
        assert declaration == "{ type ipv4_addr; flags dynamic,timeout; timeout 600s; }"
    service_chain = next(name for name in share.chains if name.startswith("service-"))
    lookups = share.chains[service_chain][1:3]
    for lookup in lookups:
        affinity_set, endpoint_chain = re.fullmatch(r"ip saddr @(\S+) goto (\S+)", lookup).groups()
        assert affinity_set in share.sets
        assert share.chains[endpoint_chain][1] == f"update @{affinity_set} {{ ip saddr }}"
    # Masquerade marks come before the lookups, so a pinned host connection is still masqueraded.
    assert share.chains[service_chain][0].startswith("fib saddr type local")
    assert share.chains[service_chain][-2].startswith("numgen random mod 2 == 0 goto endpoint-")


def _picks(count: int, balance: str = "random") -> list[str]:
    ips = [f"10.88.{i // 250}.{i % 250 + 1}" for i in range(count)]
    share = rules(service(), endpoints(ips), Config(table=TABLE, balance=balance))
    service_chain = next(name for name in share.chains if name.startswith("service-"))
    return [re.sub(r"endpoint-\S+__", "", rule) for rule in share.chains[service_chain][1:]]


@pytest.mark.parametrize(
    "count, balance, expected",
    [
        pytest.param(1, "random", ["goto 10.88.0.1/8080"], id="one-endpoint-no-pick"),
        pytest.param(3, "random", [
            "numgen random mod 3 == 0 goto 10.88.0.1/8080",
            "numgen random mod 2 == 0 goto 10.88.0.2/8080",
            "goto 10.88.0.3/8080",
        ], id="cascade-each-one-third"),
        pytest.param(2, "round-robin", [
            "numgen inc mod 2 == 0 goto 10.88.0.1/8080", "goto 10.88.0.2/8080",
        ], id="round-robin-numgen-inc"),
        pytest.param(nftables.CASCADE_MAX + 1, "random", [
            "numgen random mod 33 vmap { " + ", ".join(
                f"{i} : goto 10.88.0.{i + 1}/8080" for i in range(nftables.CASCADE_MAX + 1)
            ) + " }",
        ], id="many-endpoints-verdict-map"),
    ],
)
def test_the_pick(count, balance, expected):
    assert _picks(count, balance) == expected


def test_the_cascade_is_uniform():
    """Rule i takes 1/(mod) of what reaches it: every endpoint gets 1/N."""
    from fractions import Fraction

    for count in range(2, nftables.CASCADE_MAX + 1):
        reaching, shares = Fraction(1), []
        for rule in _picks(count):
            match = re.fullmatch(r"numgen random mod (\d+) == 0 goto \S+", rule)
            taken = reaching / int(match.group(1)) if match else reaching
            shares.append(taken)
            reaching -= taken
        assert shares == [Fraction(1, count)] * count


def test_names_are_valid_nft_identifiers_and_unique():
    odd = service(name="Web_Svc.v2", namespace="team:a", ports=(("", 80, "TCP", 0),))
    share = rules(odd, endpoints(["10.88.0.2"], (("", 8080),), name="Web_Svc.v2", namespace="team:a"))
    for name in [*share.chains, *share.sets]:
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9/._-]*", name) and len(name) <= nftables.MAX_NAME
    long_name = "x" * 250
    a = rules(service(name=long_name + "a"), endpoints(["10.88.0.2"], name=long_name + "a"))
    b = rules(service(name=long_name + "b"), endpoints(["10.88.0.2"], name=long_name + "b"))
    assert not set(a.chains) & set(b.chains)


def test_table_name_follows_the_node():
    assert nftables.table_name("node-1") == "kybernetes-node-1"
    assert nftables.table_name("Host_A:1") == "kybernetes-host_a_1"
    assert nftables.table_name("node-1") != nftables.table_name("node-2")


def test_config_refuses_bad_values():
    with pytest.raises(ValueError):
        Config(table=TABLE, service_cidr="10.96.0.1/12")
    with pytest.raises(ValueError):
        Config(table=TABLE, node_ips=("fd00::1",))
    with pytest.raises(ValueError):
        Config(table=TABLE, balance="least-conn")


# The skeleton and full scripts ---------------------------------------------------------------


def test_full_script_replaces_the_table_atomically():
    book = Installed(CONFIG)
    plan = book.plan_full({KEY: rules(service(), endpoints(["10.88.0.2"]))})
    lines = plan.commands
    assert lines[:3] == [f"add table ip {TABLE}", f"delete table ip {TABLE}", lines[2]]
    assert lines[2].startswith(f"add table ip {TABLE} {{ comment")
    text = plan.script
    assert "type nat hook prerouting priority -100" in text and "type nat hook output priority -100" in text
    assert "type filter hook forward priority 0" in text and "type filter hook output priority 0" in text
    assert f"add rule ip {TABLE} cluster-ips-check ip daddr 10.96.0.0/12 goto reject-unallocated" in text
    assert f"add element ip {TABLE} nodeport-ips {{ 192.168.1.10 }}" in text
    assert "route_localnet" not in text  # the node IP is not loopback
    model = TableModel()
    model.apply(text)
    book.commit(plan)
    expect_table(model, book.by_service)
    assert book.adopted


def test_loopback_node_ip_adds_the_route_localnet_guards():
    declarations, skeleton_rules = nftables.skeleton(Config(table=TABLE, node_ips=("127.0.0.1",)))
    text = "\n".join(declarations + skeleton_rules)
    assert 'iifname != "lo" ip saddr != 127.0.0.0/8 ip daddr 127.0.0.0/8' in text
    assert 'oifname != "lo" ip saddr 127.0.0.0/8 counter drop' in text


def test_cleanup_deletes_the_table_whether_or_not_it_exists():
    assert nftables.cleanup_commands(TABLE) == [f"add table ip {TABLE}", f"delete table ip {TABLE}"]


# Incremental plans ---------------------------------------------------------------------------


def started(desired: dict | None = None) -> tuple[Installed, TableModel]:
    book, model = Installed(CONFIG), TableModel()
    install(book, model, desired or {}, full=True)
    return book, model


def test_new_service_adds_only_its_own_chains_and_elements():
    book, model = started()
    plan = install(book, model, {KEY: rules(service(), endpoints(["10.88.0.2"]))})
    assert not any(line.startswith(("delete", "flush")) for line in plan.commands)
    assert sum(line.startswith("add chain") for line in plan.commands) == 2
    assert [line for line in plan.commands if line.startswith("add element")] == [
        f"add element ip {TABLE} cluster-ips {{ 10.96.0.10 }}",
        f"add element ip {TABLE} service-ips {{ 10.96.0.10 . tcp . 80 : goto "
        f"{rules(service(), endpoints(['10.88.0.2'])).elements[(SERVICE_IPS, '10.96.0.10 . tcp . 80')][5:]} }}",
    ]
    expect_table(model, book.by_service)


def test_endpoint_added_adds_its_chain_and_rewrites_the_pick():
    book, model = started({KEY: rules(service(), endpoints(["10.88.0.2"]))})
    plan = install(book, model, {KEY: rules(service(), endpoints(["10.88.0.2", "10.88.0.3"]))})
    kinds = [" ".join(line.split()[:2]) for line in plan.commands]
    assert kinds == ["add chain", "flush chain", *["add rule"] * 5]
    assert not any("element" in line for line in plan.commands)
    expect_table(model, book.by_service)


def test_endpoint_removed_deletes_its_chain_after_the_pick_stops_naming_it():
    book, model = started({KEY: rules(service(), endpoints(["10.88.0.2", "10.88.0.3"]))})
    plan = install(book, model, {KEY: rules(service(), endpoints(["10.88.0.3"]))})
    lines = plan.commands
    flush_service = next(i for i, line in enumerate(lines) if line.startswith("flush chain") and "service-" in line)
    delete_endpoint = next(i for i, line in enumerate(lines) if line.startswith("delete chain"))
    assert flush_service < delete_endpoint and "10.88.0.2/8080" in plan.commands[delete_endpoint]
    expect_table(model, book.by_service)


def test_last_endpoint_gone_moves_the_port_to_the_reject_map():
    book, model = started({KEY: rules(service(), endpoints(["10.88.0.2"]))})
    plan = install(book, model, {KEY: rules(service(), endpoints([]))})
    assert f"delete element ip {TABLE} service-ips {{ 10.96.0.10 . tcp . 80 }}" in plan.commands
    assert (f"add element ip {TABLE} no-endpoint-services {{ 10.96.0.10 . tcp . 80 : goto reject-no-endpoints }}"
            in plan.commands)
    assert sum(line.startswith("delete chain") for line in plan.commands) == 2
    expect_table(model, book.by_service)
    # And back.
    install(book, model, {KEY: rules(service(), endpoints(["10.88.0.4"]))})
    expect_table(model, book.by_service)


def test_service_deleted_removes_everything_it_had():
    svc = service(ports=(("http", 80, "TCP", 30080),), affinity="ClientIP")
    book, model = started({KEY: rules(svc, endpoints(["10.88.0.2", "10.88.0.3"]))})
    plan = install(book, model, {KEY: EMPTY})
    assert not any(line.startswith("add") for line in plan.commands)
    assert model.service_part() == ({}, {}, set())
    assert KEY not in book.by_service and book.owners == {}


def test_unchanged_service_writes_nothing():
    share = rules(service(), endpoints(["10.88.0.2"]))
    book, _ = started({KEY: share})
    assert book.plan({KEY: rules(service(), endpoints(["10.88.0.2"]))}).commands == []


def test_a_plan_is_not_recorded_until_committed():
    book, model = started({KEY: rules(service(), endpoints(["10.88.0.2"]))})
    before = dict(book.by_service)
    book.plan({KEY: EMPTY})  # the transaction failed: never committed
    assert book.by_service == before
    # A full plan then rebuilds from scratch, whatever the kernel held.
    install(book, model, {KEY: rules(service(), endpoints(["10.88.0.3"]))}, full=True)
    expect_table(model, book.by_service)


def test_cluster_ip_changed_moves_the_elements():
    book, model = started({KEY: rules(service(), endpoints(["10.88.0.2"]))})
    plan = install(book, model, {KEY: rules(service(cluster_ip="10.96.0.20"), endpoints(["10.88.0.2"]))})
    assert f"delete element ip {TABLE} cluster-ips {{ 10.96.0.10 }}" in plan.commands
    assert f"add element ip {TABLE} cluster-ips {{ 10.96.0.20 }}" in plan.commands
    assert not any("chain" in line for line in plan.commands)
    expect_table(model, book.by_service)


def test_two_services_claiming_one_cluster_ip_port():
    other = ("default", "copy")
    first = rules(service(), endpoints(["10.88.0.2"]))
    second = rules(service(name="copy"), endpoints(["10.88.0.3"], name="copy"))
    book, model = started({KEY: first})
    plan = install(book, model, {other: second})
    assert other in plan.conflicts and "held by service default/web" in plan.conflicts[other][0]
    assert book.blocked() == {other}
    assert model.elements[(SERVICE_IPS, WEB_PORT)] == first.elements[(SERVICE_IPS, WEB_PORT)]
    # The holder goes: the key is released, and the waiting service gets it on its next sync.
    plan = install(book, model, {KEY: EMPTY})
    assert plan.released
    install(book, model, {other: second})
    assert book.blocked() == set()
    assert model.elements[(SERVICE_IPS, WEB_PORT)] == second.elements[(SERVICE_IPS, WEB_PORT)]


def test_two_services_claiming_one_node_port_in_a_full_sync():
    node_port = (("http", 80, "TCP", 30080),)
    a = rules(service(name="a", cluster_ip="10.96.0.1", ports=node_port), endpoints(["10.88.0.2"], name="a"))
    b = rules(service(name="b", cluster_ip="10.96.0.2", ports=node_port), endpoints(["10.88.0.3"], name="b"))
    book, model = Installed(CONFIG), TableModel()
    plan = install(book, model, {("default", "a"): a, ("default", "b"): b}, full=True)
    assert list(plan.conflicts) == [("default", "b")]
    assert model.elements[(SERVICE_NODEPORTS, "tcp . 30080")] == a.elements[(SERVICE_NODEPORTS, "tcp . 30080")]


def test_a_burst_of_1000_endpoint_changes_is_one_script():
    """What the runner sends after a burst: one plan from what is installed to the latest state."""
    names = [f"svc-{i}" for i in range(10)]
    desired = {
        ("default", n): rules(service(name=n, cluster_ip=f"10.96.1.{i + 1}"), endpoints(["10.88.0.2"], name=n))
        for i, n in enumerate(names)
    }
    book, model = started(desired)
    rng = random.Random(7)
    latest: dict = {}
    for _ in range(1000):
        index = rng.randrange(len(names))
        ips = sorted({f"10.88.{rng.randrange(4)}.{rng.randrange(2, 50)}" for _ip in range(rng.randrange(0, 4))})
        latest[("default", names[index])] = rules(
            service(name=names[index], cluster_ip=f"10.96.1.{index + 1}"), endpoints(ips, name=names[index])
        )
    plan = install(book, model, latest)
    assert plan.script.count("\n") == len(plan.commands)
    expect_table(model, book.by_service)


def test_random_histories_replay_exactly():
    """Many small plans in a row, each checked against the model of the table."""
    rng = random.Random(11)
    book, model = started()
    desired: dict = {}
    for step in range(300):
        key = ("default", f"s{rng.randrange(6)}")
        roll = rng.random()
        if roll < 0.15:
            share = EMPTY
        else:
            ips = sorted({f"10.88.0.{rng.randrange(2, 12)}" for _ in range(rng.randrange(0, 4))})
            ports = tuple(
                (f"p{p}", 80 + p, rng.choice(["TCP", "UDP"]), rng.choice([0, 30000 + p + 10 * int(key[1][1:])]))
                for p in range(rng.randrange(1, 3))
            )
            svc = service(name=key[1], cluster_ip=f"10.96.2.{int(key[1][1:]) + 1}", ports=ports,
                          affinity=rng.choice(["", "ClientIP"]))
            share = rules(svc, endpoints(ips, tuple((f"p{p}", 9000 + p) for p in range(2)), name=key[1]))
        desired[key] = share
        full = step % 97 == 96  # now and then a full rebuild, from every service's share
        install(book, model, dict(desired) if full else {key: share}, full=full)
        expect_table(model, desired)


# The userspace mode's portals ----------------------------------------------------------------

PORTALS = Config(table=TABLE, service_cidr="10.96.0.0/12", node_ips=("192.168.1.10",), portal_address="127.0.0.1")


def test_a_portal_sends_the_cluster_ip_and_the_node_port_to_the_relay():
    svc = service(ports=(("http", 80, "TCP", 30080), ("dns", 53, "UDP", 0)), affinity="ClientIP")
    eps = endpoints(["10.88.0.2", "10.88.0.3"], (("http", 8080), ("dns", 53)))
    share = nftables.service_rules(svc, eps, PORTALS, {("http", "TCP"): 40001, ("dns", "UDP"): 40002})
    portal = share.elements[(SERVICE_IPS, WEB_PORT)].removeprefix("goto ")
    assert portal.startswith("portal-") and share.elements[(SERVICE_NODEPORTS, "tcp . 30080")] == f"goto {portal}"
    assert share.chains[portal] == ("meta l4proto tcp dnat to 127.0.0.1:40001",)
    dns = share.elements[(SERVICE_IPS, "10.96.0.10 . udp . 53")].removeprefix("goto ")
    assert share.chains[dns] == ("meta l4proto udp dnat to 127.0.0.1:40002",)
    # The relay picks and pins: no endpoint chains, no affinity sets in the kernel.
    assert set(share.chains) == {portal, dns} and share.sets == {}
    assert [len(port.endpoints) for port in share.ports] == [2, 2]


@pytest.mark.parametrize(
    "eps, relay_ports",
    [
        pytest.param(endpoints([]), {("http", "TCP"): 40001}, id="no-endpoints"),
        pytest.param(endpoints(["10.88.0.2"]), {}, id="relay-not-listening-yet"),
        pytest.param(endpoints(["10.88.0.2"]), {("http", "UDP"): 40001}, id="relay-listening-for-another-protocol"),
    ],
)
def test_a_portal_with_nowhere_to_go_is_refused(eps, relay_ports):
    share = nftables.service_rules(service(), eps, PORTALS, relay_ports)
    assert {k: v for k, v in share.elements.items() if k[0] != SERVICE_IPS} == REJECTED_WEB
    assert share.chains == {}


def test_a_relay_on_all_addresses_is_reached_by_redirect():
    config = Config(table=TABLE, portal_address="0.0.0.0", node_ips=("192.168.1.10",))
    share = nftables.service_rules(service(), endpoints(["10.88.0.2"]), config, {("http", "TCP"): 40001})
    assert list(share.chains.values()) == [("meta l4proto tcp redirect to :40001",)]
    assert not config.route_localnet


def test_the_portal_table_has_the_same_skeleton_and_the_loopback_guards():
    declarations, skeleton_rules = nftables.skeleton(PORTALS)
    assert 'comment "kube-proxy (userspace mode): portals to the relay"' in declarations[0]
    plain_declarations, plain_rules = nftables.skeleton(CONFIG)
    assert declarations[1:] == plain_declarations[1:] + [declarations[-1]]
    # A relay on 127.0.0.1 is reached from a pod's bridge through route_localnet: guarded.
    assert PORTALS.route_localnet and not CONFIG.route_localnet
    assert skeleton_rules[:len(plain_rules)] == plain_rules
    assert any("route_localnet: outside to loopback" in rule for rule in skeleton_rules)
