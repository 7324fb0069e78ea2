"""The pod routes' decision (services/proxy/routes.py): which other node's podCIDR goes via which
address, what is skipped and why, what changes; the parsers of `ip -j`; and the controller
against a fake `ip`: one sync per burst, retried after a failure, never deleting before synced."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any, Iterable, Sequence

import pytest

from kybernetes.v1 import meta_pb2, node_pb2
from services.proxy.routes import (
    ROUTE_PROTOCOL,
    DeleteRoute,
    PodRoutes,
    ReplaceRoute,
    Route,
    RouteAction,
    RouteError,
    desired_routes,
    parse_connected,
    parse_routes,
    plan,
)
from tests.polling import eventually

net = ipaddress.IPv4Network
ip = ipaddress.IPv4Address
iface = ipaddress.IPv4Interface

OWN = "node-a"
# This host: its LAN and its own pods' bridge.
LAN = iface("192.168.10.1/24")
BRIDGE = iface("10.244.0.1/24")
CONNECTED = [LAN, BRIDGE]


def node(name: str, pod_cidr: str = "", *addresses: str, hostname: str = "") -> node_pb2.Node:
    result = node_pb2.Node(metadata=meta_pb2.ObjectMeta(name=name), spec=node_pb2.NodeSpec(pod_cidr=pod_cidr))
    for address in addresses:
        result.status.addresses.add(type="InternalIP", address=address)
    if hostname:
        result.status.addresses.add(type="Hostname", address=hostname)
    return result


def replace(cidr: str, gateway: str, name: str, previous: str | None = None) -> ReplaceRoute:
    return ReplaceRoute(net(cidr), ip(gateway), name, ip(previous) if previous else None)


def route(cidr: str, gateway: str | None) -> Route:
    return Route(net(cidr), ip(gateway) if gateway else None)


def apply_to(routes: Iterable[Route], actions: Sequence[RouteAction]) -> list[Route]:
    """What the kernel holds after the actions (our routes only), as `ip` would leave it."""
    held = list(routes)
    for action in actions:
        if isinstance(action, DeleteRoute):
            held.remove(Route(action.destination, action.gateway))
        else:
            held = [r for r in held if r.destination != action.destination or r.gateway != action.previous]
            held.append(Route(action.destination, action.gateway))
    return held


OWN_NODE = node(OWN, "10.244.0.0/24", "192.168.10.1")


def test_adds_a_route_per_other_node():
    nodes = [OWN_NODE, node("node-b", "10.244.1.0/24", "192.168.10.2"), node("node-c", "10.244.2.0/24", "192.168.10.3")]
    assert plan(nodes, OWN, [], CONNECTED) == [
        replace("10.244.1.0/24", "192.168.10.2", "node-b"),
        replace("10.244.2.0/24", "192.168.10.3", "node-c"),
    ]


def test_commands_carry_our_protocol():
    assert replace("10.244.1.0/24", "192.168.10.2", "b").command() == (
        f"route replace 10.244.1.0/24 via 192.168.10.2 proto {ROUTE_PROTOCOL}"
    )
    assert DeleteRoute(net("10.244.1.0/24"), ip("192.168.10.2")).command() == (
        f"route del 10.244.1.0/24 via 192.168.10.2 proto {ROUTE_PROTOCOL}"
    )
    assert DeleteRoute(net("10.244.1.0/24"), None).command() == f"route del 10.244.1.0/24 proto {ROUTE_PROTOCOL}"


def test_a_changed_address_replaces_the_gateway():
    nodes = [node("node-b", "10.244.1.0/24", "192.168.10.7")]
    current = [route("10.244.1.0/24", "192.168.10.2")]
    assert plan(nodes, OWN, current, CONNECTED) == [replace("10.244.1.0/24", "192.168.10.7", "node-b", "192.168.10.2")]


def test_a_removed_node_loses_its_route_and_nothing_else_is_touched():
    nodes = [node("node-b", "10.244.1.0/24", "192.168.10.2")]
    current = [route("10.244.1.0/24", "192.168.10.2"), route("10.244.3.0/24", "192.168.10.4")]
    assert plan(nodes, OWN, current, CONNECTED) == [DeleteRoute(net("10.244.3.0/24"), ip("192.168.10.4"))]


def test_a_node_being_deleted_keeps_its_route_until_it_is_gone():
    leaving = node("node-b", "10.244.1.0/24", "192.168.10.2")
    leaving.metadata.deletion_timestamp.seconds = 1
    assert plan([leaving], OWN, [route("10.244.1.0/24", "192.168.10.2")], CONNECTED) == []


def test_own_node_is_skipped():
    # Even on another network of ours and with a podCIDR clear of our bridge.
    own = node(OWN, "10.244.9.0/24", "192.168.10.9")
    assert plan([own], OWN, [], CONNECTED) == []
    assert OWN not in desired_routes([own], OWN, CONNECTED).skipped


def test_a_node_without_a_pod_cidr_or_address_is_skipped_and_says_why():
    nodes = [node("node-b", "", "192.168.10.2"), node("node-c", "10.244.2.0/24"),
             node("node-d", "10.244.3.0/24", hostname="node-d.example")]
    desired = desired_routes(nodes, OWN, CONNECTED)
    assert desired.routes == {}
    assert desired.skipped == {
        "node-b": "no podCIDR yet",
        "node-c": "no IPv4 InternalIP in status.addresses",
        "node-d": "no IPv4 InternalIP in status.addresses",
    }
    assert plan(nodes, OWN, [], CONNECTED) == []


def test_an_off_link_gateway_is_skipped():
    nodes = [node("node-b", "10.244.1.0/24", "192.168.99.2"), node("node-c", "10.244.2.0/24", "127.0.0.1")]
    desired = desired_routes(nodes, OWN, CONNECTED)
    assert desired.routes == {}
    assert "on no network of this host" in desired.skipped["node-b"]
    assert "on no network of this host" in desired.skipped["node-c"]
    # An off-link gateway also removes a route it had.
    current = [route("10.244.1.0/24", "192.168.10.2")]
    assert plan(nodes, OWN, current, CONNECTED) == [DeleteRoute(net("10.244.1.0/24"), ip("192.168.10.2"))]


def test_the_first_on_link_internal_ip_is_the_gateway():
    nodes = [node("node-b", "10.244.1.0/24", "fd00::2", "172.31.0.2", "192.168.10.2", "192.168.10.3")]
    assert plan(nodes, OWN, [], CONNECTED) == [replace("10.244.1.0/24", "192.168.10.2", "node-b")]


def test_loopback_networks_are_never_connected():
    # Every node on loopback (one kernel): inert.
    nodes = [node("node-b", "10.244.1.0/24", "127.0.0.2")]
    assert plan(nodes, OWN, [], [iface("127.0.0.1/8")]) == []


def test_a_node_on_this_host_is_skipped():
    # A node sharing this kernel (its address is ours): its pods are on our bridges already.
    desired = desired_routes([node("node-b", "10.244.1.0/24", "192.168.10.1")], OWN, CONNECTED)
    assert desired.routes == {}
    assert desired.skipped["node-b"] == "InternalIP 192.168.10.1 is an address of this host"


def test_a_pod_cidr_overlapping_a_network_of_this_host_is_never_routed():
    nodes = [
        node("node-b", "10.244.0.0/24", "192.168.10.2"),  # our bridge's
        node("node-c", "10.244.0.0/16", "192.168.10.3"),  # containing it
        node("node-d", "192.168.10.128/25", "192.168.10.4"),  # inside our LAN
        node("node-e", "0.0.0.0/0", "192.168.10.5"),  # everything
    ]
    desired = desired_routes(nodes, OWN, CONNECTED)
    assert desired.routes == {}
    assert desired.skipped["node-b"] == "podCIDR 10.244.0.0/24 overlaps 10.244.0.0/24, a network of this host"
    assert "overlaps 10.244.0.0/24" in desired.skipped["node-c"]
    assert "overlaps 192.168.10.0/24" in desired.skipped["node-d"]
    assert "not a unicast range" in desired.skipped["node-e"]


def test_a_pod_cidr_overlapping_this_nodes_is_never_routed():
    # Our bridge may not be up yet; the Node says which range is ours.
    own = node(OWN, "10.244.5.0/24", "192.168.10.1")
    desired = desired_routes([own, node("node-b", "10.244.5.0/24", "192.168.10.2")], OWN, [LAN])
    assert desired.routes == {}
    assert "this node's podCIDR 10.244.5.0/24" in desired.skipped["node-b"]


def test_a_duplicate_pod_cidr_goes_to_the_lowest_name_in_any_order():
    nodes = [node("node-z", "10.244.1.0/24", "192.168.10.26"), node("node-b", "10.244.1.0/24", "192.168.10.2"),
             node("node-m", "10.244.0.0/23", "192.168.10.13"), node("node-c", "10.244.1.128/25", "192.168.10.3")]
    expected = [replace("10.244.1.0/24", "192.168.10.2", "node-b")]
    lan_only = [LAN]
    assert plan(nodes, OWN, [], lan_only) == expected
    assert plan(list(reversed(nodes)), OWN, [], lan_only) == expected
    skipped = desired_routes(nodes, OWN, lan_only).skipped
    assert skipped == {
        "node-c": "podCIDR 10.244.1.128/25 overlaps node node-b's, which keeps the route",
        "node-m": "podCIDR 10.244.0.0/23 overlaps node node-b's, which keeps the route",
        "node-z": "podCIDR 10.244.1.0/24 overlaps node node-b's, which keeps the route",
    }
    # The route stays with node-b while it is there, and does not flap when the others change.
    assert plan(nodes, OWN, [route("10.244.1.0/24", "192.168.10.2")], lan_only) == []


def test_ipv6_is_ignored():
    nodes = [node("node-b", "fd00:10:244:1::/64", "192.168.10.2"), node("node-c", "10.244.2.0/24", "fd00::3")]
    desired = desired_routes(nodes, OWN, CONNECTED)
    assert desired.routes == {}
    assert "IPv6" in desired.skipped["node-b"]
    assert desired.skipped["node-c"] == "no IPv4 InternalIP in status.addresses"


def test_a_pod_cidr_with_host_bits_is_read_as_its_network():
    assert plan([node("node-b", "10.244.1.7/24", "192.168.10.2")], OWN, [], CONNECTED) == [
        replace("10.244.1.0/24", "192.168.10.2", "node-b")
    ]


def test_garbage_is_skipped_not_raised():
    nodes = [node("node-b", "not-a-cidr", "192.168.10.2"), node("node-c", "10.244.2.0/24", "not-an-ip"),
             node("node-d", "224.0.0.0/24", "192.168.10.4"), node("node-e", "x" * 5000, "192.168.10.5")]
    desired = desired_routes(nodes, OWN, CONNECTED)
    assert desired.routes == {}
    assert set(desired.skipped) == {"node-b", "node-c", "node-d", "node-e"}
    assert len(desired.skipped["node-e"]) < 200  # a value quoted is cut short


def test_duplicates_of_ours_are_cleaned_up():
    nodes = [node("node-b", "10.244.1.0/24", "192.168.10.2")]
    current = [route("10.244.1.0/24", "192.168.10.2"), route("10.244.1.0/24", "192.168.10.9")]
    assert plan(nodes, OWN, current, CONNECTED) == [DeleteRoute(net("10.244.1.0/24"), ip("192.168.10.9"))]


@pytest.mark.parametrize("current", [
    [],
    [route("10.244.1.0/24", "192.168.10.9"), route("10.244.7.0/24", "192.168.10.7"), route("10.244.8.0/24", None)],
    [route("10.244.2.0/24", "192.168.10.3"), route("10.244.2.0/24", "192.168.10.4")],
])
def test_idempotent(current):
    nodes = [OWN_NODE, node("node-b", "10.244.1.0/24", "192.168.10.2"), node("node-c", "10.244.2.0/24", "192.168.10.3"),
             node("node-d", "10.244.3.0/24", "10.9.9.9"), node("node-e", "10.244.1.0/24", "192.168.10.5")]
    actions = plan(nodes, OWN, current, CONNECTED)
    assert actions
    after = apply_to(current, actions)
    assert sorted(after, key=str) == sorted(
        [route("10.244.1.0/24", "192.168.10.2"), route("10.244.2.0/24", "192.168.10.3")], key=str
    )
    assert plan(nodes, OWN, after, CONNECTED) == []


def test_deletions_come_before_replacements():
    nodes = [node("node-b", "10.244.9.0/24", "192.168.10.2")]
    actions = plan(nodes, OWN, [route("10.244.1.0/24", "192.168.10.2")], CONNECTED)
    assert [type(a) for a in actions] == [DeleteRoute, ReplaceRoute]


# --- `ip -j` ---------------------------------------------------------------------------------


def test_parse_routes():
    text = (
        '[{"dst":"10.244.1.0/24","gateway":"10.239.1.3","dev":"kyb0","flags":[]},'
        '{"dst":"10.244.2.0/24","nexthops":[{"gateway":"10.239.1.4"}],"flags":[]},'
        '{"dst":"default","gateway":"10.239.1.1","flags":[]},'
        '{"dst":"10.244.3.1","gateway":"10.239.1.5","flags":[]},'
        '{"dst":"fe80::/64","flags":[]}]'
    )
    assert parse_routes(text) == [
        route("10.244.1.0/24", "10.239.1.3"), route("10.244.2.0/24", None), route("0.0.0.0/0", "10.239.1.1"),
        route("10.244.3.1/32", "10.239.1.5"),
    ]
    assert parse_routes("") == [] and parse_routes("[]") == []


def test_parse_connected_keeps_up_non_loopback_ipv4():
    text = """[
      {"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],
       "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
      {"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],
       "addr_info":[{"family":"inet","local":"10.239.1.2","prefixlen":24,"scope":"global"},
                    {"family":"inet","local":"10.239.2.2","prefixlen":24,"scope":"global"}]},
      {"ifname":"eth1","flags":["BROADCAST","MULTICAST"],
       "addr_info":[{"family":"inet","local":"10.239.3.2","prefixlen":24,"scope":"global"}]},
      {"ifname":"cbr0","flags":["BROADCAST","MULTICAST","UP"],
       "addr_info":[{"family":"inet","local":"10.244.0.1","prefixlen":24,"scope":"global"}]}
    ]"""
    assert parse_connected(text) == [iface("10.239.1.2/24"), iface("10.239.2.2/24"), iface("10.244.0.1/24")]


# --- the controller --------------------------------------------------------------------------


class FakeInformer:
    def __init__(self, nodes: Iterable[node_pb2.Node] = ()) -> None:
        self.nodes = {n.metadata.name: n for n in nodes}
        self.handlers: list[Any] = []
        self._synced = asyncio.Event()

    def add_handler(self, handler: Any) -> None:
        self.handlers.append(handler)

    def list(self) -> list[node_pb2.Node]:
        return list(self.nodes.values())

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def sync(self) -> None:
        self._synced.set()

    def event(self, event_type: str, new: node_pb2.Node) -> None:
        old = self.nodes.get(new.metadata.name)
        if event_type == "DELETED":
            self.nodes.pop(new.metadata.name, None)
        else:
            self.nodes[new.metadata.name] = new
        for handler in self.handlers:
            handler(event_type, new, old if event_type == "MODIFIED" else None)


class FakeApplier:
    """The kernel in memory; `fail` makes the next applies fail."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self.routes = list(routes)
        self.applies: list[list[RouteAction]] = []
        self.reads = 0
        self.fail = 0

    async def current_routes(self) -> list[Route]:
        self.reads += 1
        return list(self.routes)

    async def connected_networks(self) -> list[ipaddress.IPv4Interface]:
        return list(CONNECTED)

    async def apply(self, actions: Sequence[RouteAction]) -> None:
        if not actions:
            return
        if self.fail:
            self.fail -= 1
            raise RouteError("RTNETLINK answers: Operation not permitted")
        self.applies.append(list(actions))
        self.routes = apply_to(self.routes, actions)


async def started(informer: FakeInformer, applier: FakeApplier, **options: Any) -> tuple[PodRoutes, asyncio.Task]:
    controller = PodRoutes(informer, OWN, applier, **options)  # type: ignore[arg-type]
    return controller, asyncio.create_task(controller.run())


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nothing_is_deleted_before_the_informer_is_synced():
    informer = FakeInformer()
    applier = FakeApplier([route("10.244.1.0/24", "192.168.10.2")])
    controller, task = await started(informer, applier)
    try:
        informer.event("ADDED", node("node-c", "10.244.2.0/24", "192.168.10.3"))
        await asyncio.sleep(0.2)
        assert applier.reads == 0 and applier.applies == []
        informer.nodes["node-b"] = node("node-b", "10.244.1.0/24", "192.168.10.2")
        informer.sync()
        await eventually(lambda: controller.stats.syncs >= 1, timeout=5)
        assert applier.applies == [[replace("10.244.2.0/24", "192.168.10.3", "node-c")]]
    finally:
        await stop(task)


async def test_a_burst_of_events_is_one_sync_and_heartbeats_are_none():
    informer = FakeInformer([OWN_NODE])
    informer.sync()
    applier = FakeApplier()
    controller, task = await started(informer, applier, coalesce=0.1)
    try:
        await eventually(lambda: controller.stats.syncs == 1, timeout=5)
        for index in range(1, 51):
            informer.event("ADDED", node(f"node-{index:02}", f"10.244.{index}.0/24", f"192.168.10.{index + 1}"))
        await eventually(lambda: controller.stats.syncs >= 2, timeout=5)
        await asyncio.sleep(0.3)
        assert controller.stats.syncs == 2
        assert len(applier.applies) == 1 and len(applier.applies[0]) == 50
        # A heartbeat (status conditions) changes nothing a route depends on: no sync.
        beat = node_pb2.Node()
        beat.CopyFrom(informer.nodes["node-01"])
        beat.status.conditions.add(type="Ready", status="True")
        informer.event("MODIFIED", beat)
        await asyncio.sleep(0.3)
        assert controller.stats.syncs == 2
        # A node removed: its route goes.
        informer.event("DELETED", informer.nodes["node-07"])
        await eventually(lambda: controller.stats.syncs == 3, timeout=5)
        assert applier.applies[-1] == [DeleteRoute(net("10.244.7.0/24"), ip("192.168.10.8"))]
    finally:
        await stop(task)


async def test_a_failed_apply_is_retried_and_a_deleted_route_comes_back_on_resync():
    informer = FakeInformer([node("node-b", "10.244.1.0/24", "192.168.10.2")])
    informer.sync()
    applier = FakeApplier()
    applier.fail = 2
    controller, task = await started(informer, applier, retry_initial=0.05, retry_max=0.1, resync_period=0.5)
    try:
        await eventually(lambda: applier.routes == [route("10.244.1.0/24", "192.168.10.2")], timeout=5)
        assert controller.stats.failures == 2 and controller.stats.last_error == ""
        applier.routes = []  # someone deleted it
        await eventually(lambda: applier.routes == [route("10.244.1.0/24", "192.168.10.2")], timeout=5)
        assert not task.done()
    finally:
        await stop(task)
