"""The kubelet's host ports: what a pod asks for, the nft table that publishes it
(pure), and the manager's bookkeeping (sockets that hold the ports, coalesced
transactions) with a fake nft."""

from __future__ import annotations

import asyncio
import socket

import pytest

from kybernetes.v1 import pod_pb2
from services.kubelet.containers import ContainerInfo
from services.kubelet.hostports import (
    LABEL_HOST_PORTS,
    MAP_ANY,
    MAP_SPECIFIC,
    TABLE_PREFIX,
    HostPort,
    HostPortError,
    HostPortManager,
    PortMapping,
    Published,
    chain_name,
    cleanup_commands,
    decode_mappings,
    encode_mappings,
    needs_route_localnet,
    open_failure,
    pod_port_mappings,
    resolve,
    table_commands,
    table_name,
)
from services.kubelet.naming import (
    INFRA_CONTAINER_NAME,
    LABEL_CONTAINER_NAME,
    LABEL_POD_IP,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
)
from tools.processes import free_port

TABLE = "kyb-hostports-node-1"


def _pod(*ports: pod_pb2.ContainerPort, host_network: bool = False) -> pod_pb2.Pod:
    pod = pod_pb2.Pod()
    pod.metadata.namespace, pod.metadata.name = "default", "web"
    pod.spec.host_network = host_network
    pod.spec.containers.add(name="main", image="busybox").ports.extend(ports)
    pod.spec.containers.add(name="side", image="busybox").ports.add(container_port=9090)
    return pod


def _published(address: str, port: int, pod_ip: str = "10.88.0.5", protocol: str = "tcp",
               container_port: int = 80, pod: str = "default/web") -> Published:
    return Published(HostPort(address, protocol, port), pod_ip, container_port, pod)


# --- what a pod asks for ---------------------------------------------------------------------


def test_a_pods_host_ports_are_read_from_every_container_and_a_host_network_pod_has_none():
    ports = (
        pod_pb2.ContainerPort(container_port=80, host_port=8080),
        pod_pb2.ContainerPort(container_port=53, host_port=5353, protocol="UDP", host_ip="127.0.0.5"),
        pod_pb2.ContainerPort(container_port=9000),
    )
    assert pod_port_mappings(_pod(*ports)) == (
        PortMapping("", "TCP", 8080, 80),
        PortMapping("127.0.0.5", "UDP", 5353, 53),
    )
    assert pod_port_mappings(_pod(*ports, host_network=True)) == ()


def test_the_label_carries_the_mappings_and_a_bad_one_is_refused():
    mappings = (PortMapping("", "TCP", 8080, 80), PortMapping("0.0.0.0", "SCTP", 9, 9))
    assert decode_mappings(encode_mappings(mappings)) == tuple(sorted(mappings))
    for bad in ("not json", '[["", "TCP", "x", 80]]', '[["", "TCP"]]', "{}"):
        with pytest.raises(ValueError, match=LABEL_HOST_PORTS):
            decode_mappings(bad)


@pytest.mark.parametrize(
    "host_ip, expected",
    [
        ("", HostPort("127.0.0.2", "tcp", 8080)),  # the node's IP
        ("127.0.0.9", HostPort("127.0.0.9", "tcp", 8080)),  # only that address
        ("0.0.0.0", HostPort("0.0.0.0", "tcp", 8080)),  # every address of the node
        ("::", HostPort("0.0.0.0", "tcp", 8080)),
    ],
)
def test_a_mapping_listens_on_its_host_ip_else_the_node_ip(host_ip, expected):
    assert resolve(PortMapping(host_ip, "TCP", 8080, 80), "127.0.0.2") == expected


def test_what_the_ipv4_pod_network_cannot_publish_is_refused_with_a_reason():
    with pytest.raises(HostPortError, match="hostIP ::1 is IPv6"):
        resolve(PortMapping("::1", "TCP", 8080, 80), "127.0.0.1")
    with pytest.raises(HostPortError, match="not an IP address"):
        resolve(PortMapping("", "TCP", 8080, 80), "node-a")
    with pytest.raises(HostPortError, match="protocol"):
        resolve(PortMapping("", "ICMP", 8080, 80), "127.0.0.1")


def test_ports_conflict_on_one_address_or_against_every_address():
    web = HostPort("127.0.0.2", "tcp", 80)
    assert web.conflicts(HostPort("127.0.0.2", "tcp", 80))
    assert web.conflicts(HostPort("0.0.0.0", "tcp", 80)) and HostPort("0.0.0.0", "tcp", 80).conflicts(web)
    assert not web.conflicts(HostPort("127.0.0.3", "tcp", 80))  # another simulated node
    assert not web.conflicts(HostPort("127.0.0.2", "udp", 80))
    assert not web.conflicts(HostPort("127.0.0.2", "tcp", 81))


def test_a_port_that_cannot_be_had_is_reported_as_kubernetes_does():
    message = open_failure(HostPort("127.0.0.1", "tcp", 8080), "default/web-node-1", "address already in use")
    assert message == (
        "cannot open hostport 8080 for pod web-node-1_default: "
        "listen tcp 127.0.0.1:8080: bind: address already in use"
    )


# --- the table -------------------------------------------------------------------------------


def test_table_names_are_per_node_and_fit_nfts_limits():
    assert table_name("node-1") == "kyb-hostports-node-1"
    assert table_name("Node_A b") == "kyb-hostports-node_a_b"
    long_a, long_b = "n" * 200 + "a", "n" * 200 + "b"
    assert table_name(long_a) != table_name(long_b)
    assert all(len(table_name(name)) <= 80 and table_name(name).startswith(TABLE_PREFIX) for name in (long_a, long_b))


def test_nothing_to_publish_is_no_table():
    commands, duplicates = table_commands(TABLE, [], loopback_guards=True)
    assert commands == cleanup_commands(TABLE) == [f"add table ip {TABLE}", f"delete table ip {TABLE}"]
    assert duplicates == []


def test_the_table_replaces_whatever_was_there_in_one_transaction():
    commands, _ = table_commands(TABLE, [_published("127.0.0.2", 8080)], loopback_guards=False)
    # "add" first, so that "delete" succeeds whether or not the table exists.
    assert commands[:3] == [f"add table ip {TABLE}", f"delete table ip {TABLE}", commands[2]]
    assert commands[2].startswith(f"add table ip {TABLE} {{")
    assert sum(command.startswith(f"delete table ip {TABLE}") for command in commands) == 1


def test_a_host_port_is_a_map_element_and_a_chain_that_dnats_to_the_pod():
    entry = _published("127.0.0.2", 8080, pod_ip="10.88.0.5", container_port=80, pod="default/web")
    commands, _ = table_commands(TABLE, [entry], loopback_guards=False)
    t = f"ip {TABLE}"
    chain = chain_name(entry.host)
    assert chain == "hostport-127.0.0.2-tcp-8080"
    # Packets from outside and the node's own connections, looked up by address . protocol . port.
    assert f"add chain {t} prerouting {{ type nat hook prerouting priority -99; policy accept; }}" in commands
    assert f"add chain {t} output {{ type nat hook output priority -99; policy accept; }}" in commands
    assert f"add rule {t} prerouting jump hostports" in commands
    assert f"add rule {t} output jump hostports" in commands
    assert f"add rule {t} hostports ip daddr . meta l4proto . th dport vmap @{MAP_SPECIFIC}" in commands
    assert f"add element {t} {MAP_SPECIFIC} {{ 127.0.0.2 . tcp . 8080 : goto {chain} }}" in commands
    rules = [command.removeprefix(f"add rule {t} {chain} ") for command in commands
             if command.startswith(f"add rule {t} {chain} ")]
    assert rules == [
        # Hairpin: the pod reaching itself through its own host port is masqueraded...
        'ip saddr 10.88.0.5 meta mark set meta mark | 0x2000 comment "hairpin"',
        # ...and so is the node reaching it from a loopback address.
        "ip saddr 127.0.0.0/8 meta mark set meta mark | 0x2000 comment \"from the node's loopback\"",
        'meta l4proto tcp dnat to 10.88.0.5:80 comment "default/web 127.0.0.2:8080/TCP"',
    ]
    assert f"add rule {t} masquerading meta mark & 0x2000 == 0 return" in commands
    assert f"add rule {t} masquerading masquerade fully-random" in commands


def test_a_host_port_on_every_address_goes_in_the_map_checked_against_local_addresses():
    commands, _ = table_commands(TABLE, [_published("0.0.0.0", 53, protocol="udp", container_port=5353)],
                                 loopback_guards=True)
    t = f"ip {TABLE}"
    assert f"add rule {t} hostports fib daddr type local meta l4proto . th dport vmap @{MAP_ANY}" in commands
    assert f"add element {t} {MAP_ANY} {{ udp . 53 : goto hostport-any-udp-53 }}" in commands
    assert f"add rule {t} hostport-any-udp-53 meta l4proto udp dnat to 10.88.0.5:5353 comment " \
           '"default/web 0.0.0.0:53/UDP"' in commands
    assert not [command for command in commands if command.startswith(f"add element {t} {MAP_SPECIFIC} ")]


def test_loopback_host_ports_need_route_localnet_and_bring_kube_proxys_guards():
    assert needs_route_localnet([_published("127.0.0.2", 80)])
    assert needs_route_localnet([_published("0.0.0.0", 80)])  # 127.0.0.1 is one of the node's addresses
    assert not needs_route_localnet([_published("192.168.1.10", 80)])
    guarded, _ = table_commands(TABLE, [_published("127.0.0.2", 80)], loopback_guards=True)
    plain, _ = table_commands(TABLE, [_published("127.0.0.2", 80)], loopback_guards=False)
    guards = set(guarded) - set(plain)
    t = f"ip {TABLE}"
    assert (
        f'add rule {t} filter-input iifname != "lo" ip saddr != 127.0.0.0/8 ip daddr 127.0.0.0/8 '
        'ct status & dnat == 0 ct state new counter drop comment "route_localnet: outside to loopback"'
    ) in guards
    # After the masquerade (100): only loopback sources that were not masqueraded are dropped.
    assert f"add chain {t} filter-postrouting {{ type filter hook postrouting priority 110; policy accept; }}" in guards
    assert (
        f'add rule {t} filter-postrouting oifname != "lo" ip saddr 127.0.0.0/8 counter drop '
        'comment "route_localnet: loopback source leaving"'
    ) in guards


def test_two_nodes_and_two_protocols_do_not_collide_but_a_second_claim_is_left_out():
    entries = [
        _published("127.0.0.2", 8080, pod_ip="10.88.0.5", pod="default/a"),
        _published("127.0.0.3", 8080, pod_ip="10.88.0.6", pod="default/b"),
        _published("127.0.0.2", 8080, pod_ip="10.88.0.7", protocol="udp", pod="default/c"),
        _published("127.0.0.2", 8080, pod_ip="10.88.0.8", pod="default/late"),
    ]
    commands, duplicates = table_commands(TABLE, entries, loopback_guards=False)
    assert [entry.pod for entry in duplicates] == ["default/late"]
    [elements] = [command for command in commands if command.startswith(f"add element ip {TABLE} {MAP_SPECIFIC} ")]
    assert elements.count(" : goto ") == 3
    assert "10.88.0.8" not in "\n".join(commands)


# --- the manager -----------------------------------------------------------------------------


class FakeNft:
    """Records each transaction; `gate` holds them, `fail` refuses them."""

    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def __call__(self, text: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise HostPortError("nft: refused")
        self.scripts.append(text)

    @property
    def last(self) -> str:
        return self.scripts[-1]


def _manager(nft: FakeNft, node_ip: str = "127.0.0.1") -> HostPortManager:
    return HostPortManager("node-1", node_ip, "kyb0", nft=nft, set_route_localnet=False)


def _bindable(port: int, address: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


async def test_a_pods_ports_are_held_published_and_let_go_after_their_rules():
    nft = FakeNft()
    manager = _manager(nft)
    port = free_port()
    mappings = [PortMapping("", "TCP", port, 80)]
    try:
        await manager.reserve("uid-1", "default/web", mappings)
        assert not _bindable(port)  # no other process can take it now
        assert nft.scripts == []  # holding a port writes nothing
        await manager.publish("uid-1", "default/web", "10.88.0.5", mappings)
        assert f"127.0.0.1 . tcp . {port} : goto hostport-127.0.0.1-tcp-{port}" in nft.last
        await manager.publish("uid-1", "default/web", "10.88.0.5", mappings)
        assert len(nft.scripts) == 1  # nothing changed: no transaction
        await manager.remove("uid-1")
        assert nft.last == "add table ip kyb-hostports-node-1\ndelete table ip kyb-hostports-node-1\n"
        assert _bindable(port)
    finally:
        manager.close()


async def test_a_port_held_by_another_pod_or_process_fails_the_reservation_and_holds_nothing_new():
    nft = FakeNft()
    manager = _manager(nft)
    first, second = free_port(2), 0
    second = first + 1
    try:
        await manager.reserve("uid-1", "default/first", [PortMapping("", "TCP", first, 80)])
        wanted = [PortMapping("", "TCP", second, 80), PortMapping("", "TCP", first, 80)]
        with pytest.raises(HostPortError) as raised:
            await manager.reserve("uid-2", "default/second", wanted)
        assert str(raised.value) == (
            f"cannot open hostport {first} for pod second_default: "
            f"listen tcp 127.0.0.1:{first}: bind: address already in use"
        )
        assert manager.held() == {HostPort("127.0.0.1", "tcp", first): "uid-1"}
        assert _bindable(second)  # opened for the failed pod, then let go
        # Every address conflicts with the node IP's.
        with pytest.raises(HostPortError, match="address already in use"):
            await manager.reserve("uid-3", "default/any", [PortMapping("0.0.0.0", "TCP", first, 80)])
    finally:
        manager.close()
    with socket.socket() as other:  # another process's port
        other.bind(("127.0.0.1", first))
        other.listen()
        manager = _manager(nft)
        try:
            with pytest.raises(HostPortError, match=f"listen tcp 127.0.0.1:{first}: bind: address already in use"):
                await manager.reserve("uid-1", "default/web", [PortMapping("", "TCP", first, 80)])
        finally:
            manager.close()


async def test_a_connection_that_reaches_a_held_port_is_reset_not_left_hanging():
    """Before the table has the port's rule (the sandbox is being made), nothing answers."""
    manager = _manager(FakeNft())
    port = free_port()
    try:
        await manager.reserve("uid-1", "default/web", [PortMapping("", "TCP", port, 80)])

        async def exchange() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                await reader.readexactly(1)
            finally:
                writer.close()

        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(exchange(), 5)
    finally:
        manager.close()


async def test_a_host_ip_the_node_does_not_have_is_refused():
    manager = _manager(FakeNft())
    try:
        with pytest.raises(HostPortError, match="bind: cannot assign requested address"):
            await manager.reserve("uid-1", "default/web", [PortMapping("192.0.2.123", "UDP", free_port(), 53)])
    finally:
        manager.close()


async def test_changes_made_while_a_transaction_runs_go_together_in_the_next():
    nft = FakeNft()
    manager = _manager(nft)
    ports = free_port(3)
    try:
        nft.gate = asyncio.Event()
        publishes = [
            asyncio.create_task(manager.publish(f"uid-{i}", f"default/p{i}", f"10.88.0.{10 + i}",
                                                [PortMapping("", "TCP", ports + i, 80)]))
            for i in range(3)
        ]
        await asyncio.sleep(0.05)
        nft.gate.set()
        await asyncio.gather(*publishes)
        # The first transaction had only the first pod; the other two waited and went in one.
        assert len(nft.scripts) == 2
        assert all(f"10.88.0.{10 + i}" in nft.last for i in range(3))
    finally:
        manager.close()


async def test_a_port_is_let_go_only_once_a_table_without_it_is_written():
    nft = FakeNft()
    manager = _manager(nft)
    port = free_port()
    mappings = [PortMapping("", "TCP", port, 80)]
    try:
        await manager.publish("uid-1", "default/web", "10.88.0.5", mappings)
        nft.fail = True
        await manager.remove("uid-1")  # never raises: the kernel still sends the port to the pod
        assert not _bindable(port)
        nft.fail = False
        await manager.publish("uid-2", "default/other", "10.88.0.6", [PortMapping("", "UDP", port, 53)])
        assert "10.88.0.5" not in nft.last
        assert _bindable(port)
    finally:
        manager.close()


async def test_a_failed_transaction_fails_the_publish():
    nft = FakeNft()
    nft.fail = True
    manager = _manager(nft)
    try:
        with pytest.raises(HostPortError, match="refused"):
            await manager.publish("uid-1", "default/web", "10.88.0.5", [PortMapping("", "TCP", free_port(), 80)])
    finally:
        manager.close()


async def test_changed_ports_drop_the_old_rules_before_their_sockets():
    nft = FakeNft()
    manager = _manager(nft)
    old, new = free_port(2), 0
    new = old + 1
    try:
        await manager.publish("uid-1", "default/web", "10.88.0.5", [PortMapping("", "TCP", old, 80)])
        await manager.reserve("uid-1", "default/web", [PortMapping("", "TCP", new, 80)])
        assert f"tcp . {old}" not in nft.last
        assert _bindable(old) and not _bindable(new)
        # A sandbox with no host ports any more: none published, none held.
        await manager.publish("uid-1", "default/web", "10.88.0.5", [])
        assert manager.held() == {} and manager.published() == []
    finally:
        manager.close()


def _sandbox(uid: str, name: str, pod_ip: str, mappings: list[PortMapping], running: bool = True) -> ContainerInfo:
    labels = {
        LABEL_CONTAINER_NAME: INFRA_CONTAINER_NAME, LABEL_POD_UID: uid, LABEL_POD_NAMESPACE: "default",
        LABEL_POD_NAME: name, LABEL_POD_IP: pod_ip, LABEL_HOST_PORTS: encode_mappings(mappings),
    }
    return ContainerInfo(id=f"id-{uid}", name=name, labels=labels, state="running" if running else "exited",
                         created_at=0.0)


async def test_a_restarted_kubelet_rewrites_the_table_from_the_sandboxes_it_adopts():
    nft = FakeNft()
    manager = _manager(nft, node_ip="127.0.0.2")
    port = free_port()
    try:
        await manager.adopt([
            _sandbox("uid-1", "web", "10.88.0.5", [PortMapping("", "TCP", port, 80)]),
            _sandbox("uid-2", "gone", "10.88.0.6", [PortMapping("", "TCP", port + 1, 80)], running=False),
        ])
        assert f"127.0.0.2 . tcp . {port} : goto" in nft.last
        assert "10.88.0.6" not in nft.last
        assert not _bindable(port, "127.0.0.2")
    finally:
        manager.close()
    # No pod with host ports: a table left behind is deleted.
    manager = _manager(nft)
    await manager.adopt([])
    assert nft.last == "add table ip kyb-hostports-node-1\ndelete table ip kyb-hostports-node-1\n"
