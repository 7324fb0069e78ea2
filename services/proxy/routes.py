"""Pod routes, flannel's host-gw mode: every other node's podCIDR via that node's InternalIP.

Pods reach pods on other nodes by IP with no NAT and no tunnel: each node holds one route
per other node, `<its spec.podCIDR> via <its InternalIP>`, so a packet for a pod on node B
leaves node A straight for B, whose bridge delivers it. That needs B's address to be on a
network A is attached to (a next hop must be on-link): a node off every network of this
host gets no route (skipped and logged), which makes the whole thing inert when nodes
report loopback addresses (every node of a one-kernel cluster).

Three parts, as every reconciler on services/common/runtime:

- `plan(nodes, own_node_name, current_routes, connected_networks) -> [RouteAction]`, pure
  (`desired_routes` then `diff`), tested with tables (tests/unit/test_proxy_routes.py).
- `RouteApplier`: the only I/O, through `ip`: reads our routes (`ip -4 -j route show proto
  75`) and the host's networks (`ip -4 -j addr show`), writes with one `ip -batch -`.
- `PodRoutes`: a controller on an Informer of Nodes; every event that could change a route
  queues one key on a WorkQueue, so a burst of events is one sync, a failed sync is retried
  with the queue's back-off, and a periodic resync puts back routes someone deleted.

Which routes are ours is told by their route protocol (`ROUTE_PROTOCOL`), never by their
destination: we delete and replace only routes carrying it, so a route someone else made to
another network is never touched. Routes stay when the proxy stops (a restarting proxy must
not cut pods off other nodes); `kube-proxy --cleanup` removes them (`RouteApplier.remove_all`).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

from kybernetes.v1 import node_pb2
from services.common.log import get_logger
from services.common.runtime import WorkQueue, run_workers
from services.common.runtime.informer import Informer

from .syncrunner import SyncError, read_tool, run_tool

# The route protocol that marks a route as ours (`ip route ... proto 75`): the kernel keeps it
# with the route and filters on it (`show proto 75`, and a delete that names it matches only
# routes carrying it). 75 (0x4b, "K") is in neither the kernel's RTPROT_* list
# (include/uapi/linux/rtnetlink.h) nor iproute2's /etc/iproute2/rt_protos, nor among the
# numbers routing daemons commonly claim (zebra 11, bird 12, babel 42, openr 99, FRR's 186-198),
# so no other program's routes look like ours.
ROUTE_PROTOCOL = 75
NODE_INTERNAL_IP = "InternalIP"
# Longest name or value a log line quotes (node names and addresses are anyone's text).
_SHOWN = 80
_SYNC_KEY = "pod-routes"  # the one key of the work queue: every sync is of all routes

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address
IPv4Interface = ipaddress.IPv4Interface


# --- the decision ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """A route of ours as the kernel holds it (gateway None: it has none, e.g. multipath)."""

    destination: IPv4Network
    gateway: IPv4Address | None


@dataclass(frozen=True)
class ReplaceRoute:
    """Add the route, or change its gateway (`previous`: the gateway it had, None if new).

    `replace`, not `add`: it also takes over a route to the same podCIDR that someone else left
    (the cluster's pod range is the cluster's to route), and it never fails on "exists"."""

    destination: IPv4Network
    gateway: IPv4Address
    node: str
    previous: IPv4Address | None = None

    def command(self) -> str:
        return f"route replace {self.destination} via {self.gateway} proto {ROUTE_PROTOCOL}"


@dataclass(frozen=True)
class DeleteRoute:
    """Delete one route of ours (naming its gateway, so a route changed meanwhile is left alone)."""

    destination: IPv4Network
    gateway: IPv4Address | None

    def command(self) -> str:
        via = f" via {self.gateway}" if self.gateway is not None else ""
        return f"route del {self.destination}{via} proto {ROUTE_PROTOCOL}"


RouteAction = Union[ReplaceRoute, DeleteRoute]


@dataclass(frozen=True)
class DesiredRoute:
    gateway: IPv4Address
    node: str


@dataclass(frozen=True)
class Desired:
    routes: dict[IPv4Network, DesiredRoute] = field(default_factory=dict)
    # Node name -> why it has no route (for a log line when it changes).
    skipped: dict[str, str] = field(default_factory=dict)


def shorten(value: str, limit: int = _SHOWN) -> str:
    return value if len(value) <= limit else f"{value[:limit]}…({len(value) - limit} more)"


def _pod_cidr(text: str) -> IPv4Network | str:
    """The node's podCIDR as a network, or why it cannot be routed. Host bits are dropped, as
    the node range allocator and Kubernetes read it."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return f"podCIDR {shorten(text)!r} is not a network"
    if not isinstance(network, IPv4Network):
        return f"podCIDR {network} is IPv6 (routes are IPv4 only)"
    if network.is_loopback or network.is_multicast or network.is_link_local or network.is_reserved \
            or network.is_unspecified or network.prefixlen == 0:
        return f"podCIDR {network} is not a unicast range that can be routed"
    return network


def _gateway(node: node_pb2.Node, connected: Sequence[IPv4Interface]) -> IPv4Address | str:
    """The first IPv4 InternalIP on a network of this host, or why there is none."""
    candidates: list[IPv4Address] = []
    for address in node.status.addresses:
        if address.type != NODE_INTERNAL_IP:
            continue
        try:
            ip = ipaddress.ip_address(address.address.strip())
        except ValueError:
            continue
        if isinstance(ip, IPv4Address):
            candidates.append(ip)
    if not candidates:
        return "no IPv4 InternalIP in status.addresses"
    own = {interface.ip for interface in connected}
    reasons = []
    for ip in candidates:
        if ip in own:
            # A node on this very kernel (or a misconfiguration): its pods are ours to reach directly.
            reasons.append(f"InternalIP {ip} is an address of this host")
        elif any(ip in interface.network for interface in connected):
            return ip
        else:
            reasons.append(f"InternalIP {ip} is on no network of this host (a gateway must be on-link)")
    return "; ".join(reasons)


def desired_routes(
    nodes: Iterable[node_pb2.Node], own_node_name: str, connected_networks: Iterable[IPv4Interface]
) -> Desired:
    """The routes this host should have: per other node, its podCIDR via its InternalIP.

    connected_networks: this host's IPv4 addresses with their prefixes (non-loopback ones;
    loopback is dropped here too). A node is skipped when it has no podCIDR yet, its podCIDR
    overlaps one of those networks (our own pod bridge, or the LAN itself) or this node's
    podCIDR, or none of its InternalIPs is on-link. Of nodes whose podCIDRs overlap (the
    admission plugin refuses that, but a value stored before it stays) the one with the lowest
    name that can be routed keeps the route, whatever order the nodes come in.
    """
    connected = [interface for interface in connected_networks if not interface.ip.is_loopback]
    networks = [interface.network for interface in connected]
    by_name = sorted(nodes, key=lambda node: node.metadata.name)
    own_cidr: IPv4Network | None = None
    for node in by_name:
        if node.metadata.name == own_node_name and node.spec.pod_cidr:
            parsed = _pod_cidr(node.spec.pod_cidr)
            own_cidr = parsed if isinstance(parsed, IPv4Network) else None
    routes: dict[IPv4Network, DesiredRoute] = {}
    # Overlaps among podCIDRs without comparing every pair (thousands of nodes, every sync):
    # the chosen podCIDRs, and every supernet of one, as (address, length) -> node. A candidate
    # contains a chosen one if it is among the supernets, is inside one if one of its own
    # supernets (or itself) was chosen.
    chosen: dict[tuple[int, int], str] = {}
    covering: dict[tuple[int, int], str] = {}
    skipped: dict[str, str] = {}
    for node in by_name:
        name = node.metadata.name
        if name == own_node_name:
            continue
        if not node.spec.pod_cidr:
            skipped[name] = "no podCIDR yet"
            continue
        cidr = _pod_cidr(node.spec.pod_cidr)
        if isinstance(cidr, str):
            skipped[name] = cidr
            continue
        local = next((network for network in networks if cidr.overlaps(network)), None)
        if local is not None:
            # Routing it away would cut off what is attached here (our own pods' bridge).
            skipped[name] = f"podCIDR {cidr} overlaps {local}, a network of this host"
            continue
        if own_cidr is not None and cidr.overlaps(own_cidr):
            skipped[name] = f"podCIDR {cidr} overlaps this node's podCIDR {own_cidr}"
            continue
        owner = covering.get(_prefix(cidr, cidr.prefixlen)) or next(
            (chosen[key] for key in _supernets(cidr, cidr.prefixlen) if key in chosen), None
        )
        if owner is not None:
            skipped[name] = f"podCIDR {cidr} overlaps node {shorten(owner)}'s, which keeps the route"
            continue
        gateway = _gateway(node, connected)
        if isinstance(gateway, str):
            skipped[name] = gateway
            continue
        routes[cidr] = DesiredRoute(gateway, name)
        chosen[_prefix(cidr, cidr.prefixlen)] = name
        for key in _supernets(cidr, cidr.prefixlen - 1):
            covering.setdefault(key, name)
    return Desired(routes, skipped)


def _prefix(network: IPv4Network, length: int) -> tuple[int, int]:
    """The network's supernet of that length as (address, length)."""
    return int(network.network_address) & (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF, length


def _supernets(network: IPv4Network, longest: int) -> Iterator[tuple[int, int]]:
    """The network's supernets from length `longest` down to /0."""
    return (_prefix(network, length) for length in range(longest, -1, -1))


def diff(desired: Mapping[IPv4Network, DesiredRoute], current_routes: Iterable[Route]) -> list[RouteAction]:
    """What turns our current routes into the desired ones: deletions first, then replacements."""
    current: dict[IPv4Network, list[IPv4Address | None]] = {}
    for route in current_routes:
        gateways = current.setdefault(route.destination, [])
        if route.gateway not in gateways:
            gateways.append(route.gateway)
    deletes: list[RouteAction] = []
    replaces: list[RouteAction] = []
    for destination in sorted(current):
        want = desired.get(destination)
        gateways = current[destination]
        if want is None:
            deletes.extend(DeleteRoute(destination, gateway) for gateway in gateways)
        elif want.gateway in gateways:
            # Ours twice (another metric): keep the right one, drop the rest.
            deletes.extend(DeleteRoute(destination, gateway) for gateway in gateways if gateway != want.gateway)
    for destination in sorted(desired):
        want = desired[destination]
        gateways = current.get(destination, [])
        if want.gateway not in gateways:
            replaces.append(ReplaceRoute(destination, want.gateway, want.node, gateways[0] if gateways else None))
    return deletes + replaces


def plan(
    nodes: Iterable[node_pb2.Node],
    own_node_name: str,
    current_routes: Iterable[Route],
    connected_networks: Iterable[IPv4Interface],
) -> list[RouteAction]:
    """The actions that make this host's routes to other nodes' pods what the Nodes say."""
    return diff(desired_routes(nodes, own_node_name, connected_networks).routes, current_routes)


# --- the kernel ------------------------------------------------------------------------------


class RouteError(SyncError):
    """`ip` refused a change or could not be run (its message)."""


def parse_routes(text: str) -> list[Route]:
    """`ip -4 -j route show` output as Routes (entries it cannot read are left out)."""
    routes = []
    for entry in json.loads(text or "[]"):
        destination = entry.get("dst", "")
        try:
            network = IPv4Network("0.0.0.0/0" if destination == "default" else destination)
            gateway = IPv4Address(entry["gateway"]) if entry.get("gateway") else None
        except ValueError:
            continue
        routes.append(Route(network, gateway))
    return routes


def parse_connected(text: str) -> list[IPv4Interface]:
    """`ip -4 -j addr show` output: the IPv4 addresses (with prefixes) of the interfaces that are
    up, loopback left out: the networks a next hop can be on."""
    interfaces = []
    for link in json.loads(text or "[]"):
        flags = link.get("flags", [])
        if "LOOPBACK" in flags or "UP" not in flags:
            continue
        for info in link.get("addr_info", []):
            if info.get("family") != "inet" or info.get("scope") == "host":
                continue
            try:
                interfaces.append(IPv4Interface(f"{info['local']}/{info['prefixlen']}"))
            except (KeyError, ValueError):
                continue
    return interfaces


class RouteApplier:
    """Reads and writes our routes with `ip`, in this process's network namespace, or in a
    named one (`ip -n <netns>`: tests)."""

    def __init__(self, netns: str | None = None, ip: str = "ip") -> None:
        self.netns = netns
        self.ip = ip

    def _argv(self, *args: str) -> list[str]:
        return [self.ip, *(["-n", self.netns] if self.netns else []), *args]

    def available(self) -> bool:
        return shutil.which(self.ip) is not None

    async def current_routes(self) -> list[Route]:
        """Our routes in the main table."""
        text = await read_tool(self._argv("-4", "-j", "route", "show", "proto", str(ROUTE_PROTOCOL)), RouteError)
        try:
            return parse_routes(text)
        except (ValueError, AttributeError) as error:
            raise RouteError(f"cannot read `ip route show`: {error}") from None

    async def connected_networks(self) -> list[IPv4Interface]:
        text = await read_tool(self._argv("-4", "-j", "addr", "show"), RouteError)
        try:
            return parse_connected(text)
        except (ValueError, AttributeError) as error:
            raise RouteError(f"cannot read `ip addr show`: {error}") from None

    async def apply(self, actions: Sequence[RouteAction]) -> None:
        """All actions in one `ip` run; -force goes on past a failing line so that one bad route
        does not hold up the others (the next sync reads what happened and tries again)."""
        if not actions:
            return
        script = "".join(f"{action.command()}\n" for action in actions)
        await run_tool(self._argv("-force", "-batch", "-"), script, RouteError)

    async def remove_all(self) -> int:
        """Deletes every route of ours; how many there were."""
        routes = await self.current_routes()
        await self.apply([DeleteRoute(route.destination, route.gateway) for route in routes])
        return len(routes)


# --- the controller --------------------------------------------------------------------------


def _route_fields(node: node_pb2.Node) -> tuple[str, tuple[str, ...]]:
    """What of a Node its route depends on (heartbeats change nothing here)."""
    return node.spec.pod_cidr, tuple(a.address for a in node.status.addresses if a.type == NODE_INTERNAL_IP)


@dataclass
class RouteStats:
    syncs: int = 0
    failures: int = 0
    routes: int = 0  # ours in the kernel after the last sync
    last_error: str = ""


class PodRoutes:
    """Keeps this host's routes to the other nodes' pods in step with an Informer of Nodes.

    The informer is the caller's (kube-proxy runs and guards it); `run` waits for its first
    snapshot before touching a route, so a restarted proxy never deletes routes because its
    cache is still empty.
    """

    name = "pod-routes"

    def __init__(
        self,
        informer: Informer,
        node_name: str,
        applier: RouteApplier,
        *,
        resync_period: float = 30.0,
        coalesce: float = 0.05,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        self.informer = informer
        self.node_name = node_name
        self.applier = applier
        self.resync_period = resync_period
        self.coalesce = coalesce
        self.stats = RouteStats()
        self._queue: WorkQueue[str] = WorkQueue(retry_initial=retry_initial, retry_max=retry_max)
        self._reported: dict[str, str] = {}  # node -> the reason it has no route, as last logged
        self._log = get_logger(controller=self.name)
        informer.add_handler(self.on_node_event)

    def on_node_event(self, event_type: str, node: node_pb2.Node, old: Any = None) -> None:
        if event_type == "MODIFIED" and old is not None and _route_fields(old) == _route_fields(node):
            return
        # Not at once: the events of a burst (a snapshot, many nodes joining) arrive one by one,
        # and the earliest pending request wins, so all of them ride on one sync.
        self._queue.add_after(_SYNC_KEY, self.coalesce)

    async def run(self) -> None:
        await self.informer.wait_synced()
        self._queue.add(_SYNC_KEY)
        await run_workers(self._queue, self._sync, workers=1, name=self.name)

    async def _sync(self, key: str) -> None:
        try:
            await self.sync_once()
        finally:
            # Next check even if this one failed (the retry comes sooner: earliest wins): routes
            # someone deleted come back.
            self._queue.add_after(_SYNC_KEY, self.resync_period)

    async def sync_once(self) -> None:
        """Reads the kernel, plans, applies; RouteError (logged by the worker, retried) if `ip` fails."""
        try:
            current = await self.applier.current_routes()
            connected = await self.applier.connected_networks()
            desired = desired_routes(self.informer.list(), self.node_name, connected)
            actions = diff(desired.routes, current)
            self._report_skipped(desired.skipped)
            await self.applier.apply(actions)
        except RouteError as error:
            self.stats.failures += 1
            self.stats.last_error = str(error)
            raise
        self.stats.syncs += 1
        self.stats.routes = len(desired.routes)
        self.stats.last_error = ""
        for action in actions:
            fields = {"pod_cidr": str(action.destination)}
            if action.gateway is not None:
                fields["gateway"] = str(action.gateway)
            if isinstance(action, ReplaceRoute):
                fields["peer_node"] = shorten(action.node)
                if action.previous is not None:
                    fields["previous_gateway"] = str(action.previous)
                self._log.info("pod_route_added" if action.previous is None else "pod_route_changed", **fields)
            else:
                self._log.info("pod_route_deleted", **fields)
        if actions:
            self._log.info("pod_routes_synced", routes=len(desired.routes), changes=len(actions),
                           skipped_nodes=len(desired.skipped))

    def _report_skipped(self, skipped: Mapping[str, str]) -> None:
        """Logs why a node has no route once, and again only when the reason changes."""
        for name, reason in skipped.items():
            if self._reported.get(name) != reason:
                self._log.info("pod_route_skipped", peer_node=shorten(name), reason=shorten(reason, 300))
        self._reported = dict(skipped)
