"""Node IPAM: the node range allocator (Kubernetes' nodeipam controller, its RangeAllocator).

Every Node gets a pod range, `spec.podCIDR`: the lowest free subnet of `--node-cidr-mask-size`
bits (a /24 by default) of `--cluster-cidr` (10.244.0.0/16 by default). The allocation is the
Node itself, nothing else is stored: every pass rebuilds the set of taken ranges from all
Nodes, occupying the ranges Nodes already have before handing any out (as Kubernetes' does
when it starts), so an API server restart reassigns nothing, and a deleted Node's range is
free on the next pass. The lowest free range is taken (not Kubernetes' round-robin cursor)
so that the choice depends on the Nodes alone, not on what one process happened to see.

When no range is left, a waiting Node gets `NetworkUnavailable=True` (reason
`NoCIDRAvailable`) through UpdateStatus; when a range is freed, the oldest waiting Node
gets it and the condition is taken back. Values that a Node holds but that this allocator
would never have given (outside the cluster CIDR, another mask size, overlapping another
Node's) are logged and left alone: podCIDR may be set only once, so the Node keeps it.

Each pass is `plan_node_ranges(nodes, cluster_cidr, mask, reserved=...) -> Plan`, pure and
table-tested; `apply` performs the writes. A range handed out is reserved in memory until
the Node shows it, so that a pass that runs before the informer has seen a write does not
hand the same range to another Node. One controller per process writes; the admission
plugin below refuses an overlapping or out-of-range podCIDR from anyone else.

`NodePodCIDR` (admission, in every API server): a Node's podCIDR must be a network address,
inside the cluster CIDR and exactly the node mask size (when the server knows them), must
not overlap another Node's, and may not change once set. It reads the Node watch cache, so
two writers racing within the cache's lag can still both pass; the allocator, the one writer
that matters, never races itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable, Mapping, Union

import grpc

from kybernetes.v1 import node_pb2
from services.common.clusternet import DEFAULT_CLUSTER_CIDR
from services.common.log import get_logger
from services.common.podutil import TRUE, find_condition
from services.common.resources import NODES
from services.common.runtime import Backoff, Manager
from services.common.runtime.informer import Informer
from services.common.timestamps import timestamp_at
from services.common.validation import FieldError, forbidden, invalid as invalid_value, show_value

from .auth.admission import CREATE, UPDATE, AdmissionPlugin, AdmissionRequest
from .errors import invalid

if TYPE_CHECKING:  # the standalone controllers process need not load the storage layer
    from .registry import Registry

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

DEFAULT_NODE_CIDR_MASK_SIZE = 24
# Kubernetes' cidrset limit: a cluster CIDR cut into at most 2^16 node ranges.
MAX_NODE_RANGE_BITS = 16

NETWORK_UNAVAILABLE = "NetworkUnavailable"
REASON_NO_CIDR = "NoCIDRAvailable"
_WRITE_CONCURRENCY = 16

log = get_logger(controller="nodeipam")


# --- the ranges ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterRanges:
    """The cluster CIDR cut into node ranges of `mask` bits, numbered from 0."""

    cluster: IPNetwork
    mask: int

    @classmethod
    def parse(cls, cluster_cidr: str | IPNetwork, mask: int) -> ClusterRanges:
        """ValueError naming the flag when the pair cannot be allocated from."""
        if isinstance(cluster_cidr, str):
            try:
                cluster: IPNetwork = ipaddress.ip_network(cluster_cidr.strip(), strict=True)
            except ValueError as error:
                raise ValueError(
                    f"--cluster-cidr {show_value(cluster_cidr)}: not a network address ({error})"
                ) from None
        else:
            cluster = cluster_cidr
        if not cluster.prefixlen <= mask <= cluster.max_prefixlen:
            raise ValueError(
                f"--node-cidr-mask-size {mask}: must be between the cluster CIDR's prefix length "
                f"({cluster.prefixlen}, {cluster}) and {cluster.max_prefixlen}"
            )
        if mask - cluster.prefixlen > MAX_NODE_RANGE_BITS:
            raise ValueError(
                f"--node-cidr-mask-size {mask}: would cut --cluster-cidr {cluster} into 2^{mask - cluster.prefixlen} "
                f"ranges; at most 2^{MAX_NODE_RANGE_BITS} (a mask at most {MAX_NODE_RANGE_BITS} bits longer)"
            )
        return cls(cluster, mask)

    @property
    def size(self) -> int:
        return 1 << (self.mask - self.cluster.prefixlen)

    @property
    def _host_bits(self) -> int:
        return self.cluster.max_prefixlen - self.mask

    def subnet(self, index: int) -> IPNetwork:
        first = int(self.cluster.network_address) + (index << self._host_bits)
        return ipaddress.ip_network((first, self.mask))

    def slots(self, network: IPNetwork) -> range:
        """The node ranges `network` overlaps (empty when none: outside, or another IP family)."""
        cluster = self.cluster
        if network.version != cluster.version or not network.overlaps(cluster):
            return range(0)
        base = int(cluster.network_address)
        first = max(int(network.network_address), base) - base
        last = min(int(network.broadcast_address), int(cluster.broadcast_address)) - base
        return range(first >> self._host_bits, (last >> self._host_bits) + 1)

    def describe(self) -> str:
        return f"{self.cluster} in /{self.mask}s"


def parse_cidr(text: str) -> IPNetwork | None:
    """A stored podCIDR as a network (host bits dropped, as Kubernetes reads it), or None."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


# --- the decision ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AssignCIDR:
    node: node_pb2.Node
    cidr: str


@dataclass(frozen=True)
class MarkNoCIDR:
    node: node_pb2.Node
    message: str


@dataclass(frozen=True)
class ClearNoCIDR:
    node: node_pb2.Node


Action = Union[AssignCIDR, MarkNoCIDR, ClearNoCIDR]


@dataclass(frozen=True)
class Reservation:
    """A range handed to a Node (by uid) that the Node does not show yet; `written` once the
    update succeeded (the informer has yet to deliver it: nothing to do but wait)."""

    uid: str
    cidr: str
    written: bool = False


@dataclass(frozen=True)
class Problem:
    """A stored podCIDR this allocator would not have given, and what is done about it."""

    node: str
    cidr: str
    reason: str


@dataclass(frozen=True)
class Plan:
    actions: list[Action]
    # The reservations to keep for the next pass.
    reserved: dict[str, Reservation]
    problems: list[Problem]
    assigned: int  # node ranges taken
    free: int  # node ranges left


def marked_no_cidr(node: node_pb2.Node) -> bool:
    condition = find_condition(node.status.conditions, NETWORK_UNAVAILABLE)
    return condition is not None and condition.status == TRUE and condition.reason == REASON_NO_CIDR


def _age_order(node: node_pb2.Node) -> tuple[int, int, str]:
    stamp = node.metadata.creation_timestamp
    return (stamp.seconds, stamp.nanos, node.metadata.name)


def exhausted_message(ranges: ClusterRanges) -> str:
    return (
        f"no pod range left for this node: the cluster CIDR {ranges.cluster} is full "
        f"(all {ranges.size} /{ranges.mask} ranges are assigned)"
    )


def plan_node_ranges(
    nodes: Iterable[node_pb2.Node],
    cluster_cidr: str | IPNetwork,
    mask: int,
    *,
    reserved: Mapping[str, Reservation] | None = None,
) -> Plan:
    """One pass over every Node; pure. Oldest Nodes first: they occupy first (so of two
    Nodes holding one range, the younger is the one reported), and get ranges first."""
    ranges = ClusterRanges.parse(cluster_cidr, mask)
    reserved = reserved or {}
    taken: dict[int, str] = {}  # node range index -> the Node holding it
    actions: list[Action] = []
    problems: list[Problem] = []
    waiting: list[node_pb2.Node] = []
    for node in sorted(nodes, key=_age_order):
        if not node.spec.pod_cidr:
            waiting.append(node)
            continue
        if marked_no_cidr(node):
            actions.append(ClearNoCIDR(node))
        reason = _occupy(ranges, taken, node.metadata.name, node.spec.pod_cidr)
        if reason:
            problems.append(Problem(node.metadata.name, node.spec.pod_cidr, reason))
    kept: dict[str, Reservation] = {}
    unassigned: list[node_pb2.Node] = []
    # Ranges already handed out come before new ones, so that no older Node takes them.
    for node in waiting:
        name = node.metadata.name
        reservation = reserved.get(name)
        network = parse_cidr(reservation.cidr) if reservation is not None else None
        slots = ranges.slots(network) if network is not None else range(0)
        if reservation is None or reservation.uid != node.metadata.uid or len(slots) != 1 or slots[0] in taken:
            unassigned.append(node)  # a new Node of that name, or its range went to another meanwhile
            continue
        taken[slots[0]] = name
        kept[name] = reservation
        if not reservation.written:
            actions.append(AssignCIDR(node, reservation.cidr))
    candidate = 0
    for node in unassigned:
        while candidate < ranges.size and candidate in taken:
            candidate += 1
        if candidate < ranges.size:
            cidr = str(ranges.subnet(candidate))
            taken[candidate] = node.metadata.name
            kept[node.metadata.name] = Reservation(node.metadata.uid, cidr)
            actions.append(AssignCIDR(node, cidr))
        elif not marked_no_cidr(node):
            actions.append(MarkNoCIDR(node, exhausted_message(ranges)))
    return Plan(actions, kept, problems, assigned=len(taken), free=ranges.size - len(taken))


def _occupy(ranges: ClusterRanges, taken: dict[int, str], name: str, stored: str) -> str:
    """Marks the node ranges a stored podCIDR covers as taken; what is wrong with it, if anything."""
    network = parse_cidr(stored)
    if network is None:
        return "not a CIDR; ignored"
    slots = ranges.slots(network)
    if not slots:
        return f"outside the cluster CIDR {ranges.cluster}; ignored"
    # Every node range it touches is taken, whatever its size: handing one of them to
    # another Node would give two Nodes one address.
    holders = sorted({taken[slot] for slot in slots if slot in taken})
    for slot in slots:
        taken.setdefault(slot, name)
    notes = []
    if not network.subnet_of(ranges.cluster):  # type: ignore[arg-type]  # same family: slots() checked
        notes.append(f"reaches outside the cluster CIDR {ranges.cluster}")
    if network.prefixlen != ranges.mask:
        notes.append(f"not a /{ranges.mask}: the {len(slots)} /{ranges.mask} range(s) it overlaps are kept from others")
    if holders:
        notes.append(f"overlaps the range of node(s) {', '.join(holders)}")
    return "; ".join(notes)


# --- what the writes carry (pure) ----------------------------------------------------------


def node_with_cidr(node: node_pb2.Node, cidr: str) -> node_pb2.Node:
    updated = node_pb2.Node()
    updated.CopyFrom(node)
    updated.spec.pod_cidr = cidr
    return updated


def node_marked_no_cidr(node: node_pb2.Node, message: str, now: float) -> node_pb2.Node:
    updated = node_pb2.Node()
    updated.CopyFrom(node)
    condition = find_condition(updated.status.conditions, NETWORK_UNAVAILABLE)
    if condition is None:
        condition = updated.status.conditions.add(type=NETWORK_UNAVAILABLE)
    if condition.status != TRUE or not condition.HasField("last_transition_time"):
        condition.last_transition_time.CopyFrom(timestamp_at(now))
    condition.status = TRUE
    condition.reason = REASON_NO_CIDR
    condition.message = message
    condition.last_heartbeat_time.CopyFrom(timestamp_at(now))
    return updated


def node_cleared_no_cidr(node: node_pb2.Node) -> node_pb2.Node:
    """Takes back our NetworkUnavailable condition (only ours: whoever wires the node's
    network may set the condition for its own reasons)."""
    updated = node_pb2.Node()
    updated.CopyFrom(node)
    kept = [c for c in updated.status.conditions if not (c.type == NETWORK_UNAVAILABLE and c.reason == REASON_NO_CIDR)]
    del updated.status.conditions[:]
    updated.status.conditions.extend(kept)
    return updated


# --- the controller ------------------------------------------------------------------------


class NodeIpamController:
    name = "nodeipam"

    def __init__(
        self,
        *,
        cluster_cidr: str = DEFAULT_CLUSTER_CIDR,
        node_cidr_mask_size: int = DEFAULT_NODE_CIDR_MASK_SIZE,
        retry_initial: float = 0.2,
        retry_max: float = 30.0,
    ) -> None:
        self.ranges = ClusterRanges.parse(cluster_cidr, node_cidr_mask_size)
        self._reserved: dict[str, Reservation] = {}
        # Per node: failed writes back off (the runtime's Backoff) until _retry_at.
        self._backoff = Backoff(retry_initial, retry_max, jitter=0.2)
        self._retry_at: dict[str, float] = {}
        self._reported: set[Problem] = set()
        self._wakeup = asyncio.Event()
        self._writes = asyncio.Semaphore(_WRITE_CONCURRENCY)

    def setup(self, manager: Manager) -> None:
        self.client = manager.client
        self.nodes: Informer = manager.informer(NODES)
        self.nodes.add_handler(self._on_node)

    def _on_node(self, event_type: str, node: node_pb2.Node, old: node_pb2.Node | None) -> None:
        if event_type == "DELETED":
            name = node.metadata.name
            self._backoff.reset(name)
            self._retry_at.pop(name, None)
        elif (
            event_type == "MODIFIED"
            and old is not None
            and old.spec.pod_cidr == node.spec.pod_cidr
            and old.metadata.uid == node.metadata.uid
            and marked_no_cidr(old) == marked_no_cidr(node)
        ):
            return  # a heartbeat, a label: nothing this controller decides on changed
        self._wakeup.set()

    # -- the loop -------------------------------------------------------------

    async def run(self) -> None:
        first = True
        while True:
            self._wakeup.clear()
            plan = await self.sync_once(time.time())
            if first:
                first = False
                log.info(
                    "nodeipam_started",
                    cluster_cidr=str(self.ranges.cluster),
                    node_cidr_mask_size=self.ranges.mask,
                    nodes=len(self.nodes),
                    ranges_assigned=plan.assigned,
                    ranges_free=plan.free,
                )
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._next_retry_in())
            except asyncio.TimeoutError:
                pass

    async def sync_once(self, now: float) -> Plan:
        plan = plan_node_ranges(self.nodes.list(), self.ranges.cluster, self.ranges.mask, reserved=self._reserved)
        self._reserved = plan.reserved
        self._report(plan.problems)
        # Retries that are due run in this pass (or are moot); the others wait their turn.
        clock = time.monotonic()
        for name in [name for name, at in self._retry_at.items() if at <= clock]:
            del self._retry_at[name]
        await self.apply([a for a in plan.actions if a.node.metadata.name not in self._retry_at], now)
        return plan

    def _next_retry_in(self) -> float | None:
        if not self._retry_at:
            return None
        return max(0.0, min(self._retry_at.values()) - time.monotonic())

    def _report(self, problems: list[Problem]) -> None:
        """Logs each problem once, while it lasts (a pass runs on every relevant Node event)."""
        current = set(problems)
        for problem in problems:
            if problem not in self._reported:
                log.warning(
                    "node_cidr_not_allocatable", node=problem.node, pod_cidr=problem.cidr, reason=problem.reason
                )
        self._reported = current

    # -- writes ---------------------------------------------------------------

    async def apply(self, actions: list[Action], now: float) -> None:
        if actions:
            await asyncio.gather(*(self._apply_one(action, now) for action in actions))

    async def _apply_one(self, action: Action, now: float) -> None:
        node = action.node
        name = node.metadata.name
        try:
            async with self._writes:
                if isinstance(action, AssignCIDR):
                    await self.client.update(node_with_cidr(node, action.cidr))
                elif isinstance(action, MarkNoCIDR):
                    await self.client.update_status(node_marked_no_cidr(node, action.message, now))
                else:
                    await self.client.update_status(node_cleared_no_cidr(node))
        except grpc.aio.AioRpcError as error:
            self._failed(action, error)
            return
        self._backoff.reset(name)
        if isinstance(action, AssignCIDR):
            reservation = self._reserved.get(name)
            if reservation is not None and reservation.cidr == action.cidr:
                self._reserved[name] = replace(reservation, written=True)
            log.info("node_cidr_assigned", node=name, pod_cidr=action.cidr)
        elif isinstance(action, MarkNoCIDR):
            log.warning("node_cidr_unavailable", node=name, reason=REASON_NO_CIDR, message=action.message)
        else:
            log.info("node_cidr_unavailable_cleared", node=name, pod_cidr=node.spec.pod_cidr)

    def _failed(self, action: Action, error: grpc.aio.AioRpcError) -> None:
        name = action.node.metadata.name
        code = error.code()
        if isinstance(action, AssignCIDR) and code in (
            grpc.StatusCode.NOT_FOUND,  # deleted: its DELETED event frees the range
            grpc.StatusCode.FAILED_PRECONDITION,  # replaced by a new Node of that name
            grpc.StatusCode.INVALID_ARGUMENT,  # refused (e.g. the range is another Node's): pick again
        ):
            self._reserved.pop(name, None)
        elif code == grpc.StatusCode.NOT_FOUND:
            return  # gone: nothing to mark
        # ABORTED (a heartbeat moved the Node on) keeps the reservation: the same range is
        # written to the newer version, once the informer has it.
        delay = self._backoff.failure(name)
        self._retry_at[name] = time.monotonic() + delay
        level = log.info if code == grpc.StatusCode.ABORTED else log.warning
        level(
            "nodeipam_write_failed",
            node=name,
            action=type(action).__name__,
            code=code.name,
            detail=error.details(),
            retry_in=round(delay, 2),
        )


# --- admission -------------------------------------------------------------------------------


class NodePodCIDR:
    """Refuses a Node podCIDR the allocator could not stand behind: outside the cluster CIDR,
    not the node mask size or not a network address (when the server is told the cluster
    CIDR), overlapping another Node's, or changed once set. Other Nodes come from the watch cache."""

    name = "NodePodCIDR"

    def __init__(self, registries: Mapping[str, Registry], ranges: ClusterRanges | None) -> None:
        self.nodes = registries[NODES.name].cache
        self.ranges = ranges

    def admit(self, request: AdmissionRequest) -> None:
        # UpdateStatus keeps the stored spec: only Create and Update can change a podCIDR.
        if request.kind.name != NODES.name or request.operation not in (CREATE, UPDATE) or request.subresource:
            return
        node = request.obj
        cidr = node.spec.pod_cidr
        old = request.old.spec.pod_cidr if request.old is not None else ""
        if cidr == old:
            return  # unchanged (a label, cordon): a value stored before these rules stays
        errors = [forbidden("spec.podCIDR", f"may not be changed once set (from {show_value(old)})")] if old else []
        if cidr and not errors:
            errors = self._check(node.metadata.name, cidr)
        if errors:
            raise invalid(NODES.name, node.metadata.name, errors)

    def _check(self, name: str, cidr: str) -> list[FieldError]:
        network = parse_cidr(cidr)
        if network is None:
            return []  # not a CIDR at all: validation says so
        ranges = self.ranges
        if ranges is not None:
            cluster = ranges.cluster
            if network.version != cluster.version or not network.subnet_of(cluster):  # type: ignore[arg-type]
                return [invalid_value("spec.podCIDR", cidr, f"must be inside the cluster CIDR {cluster}")]
            if network.prefixlen != ranges.mask:
                return [invalid_value("spec.podCIDR", cidr, f"must be a /{ranges.mask} (the node CIDR mask size)")]
            if ipaddress.ip_interface(cidr).ip != network.network_address:
                # A host inside a range: routes and bridges need the range itself.
                return [invalid_value("spec.podCIDR", cidr, f"must be a network address (e.g. {network})")]
        # A scan: only writes that set a podCIDR (once per Node) come this far.
        for other in self.nodes.objects():
            if other.metadata.name == name or not other.spec.pod_cidr:
                continue
            theirs = parse_cidr(other.spec.pod_cidr)
            if theirs is not None and theirs.version == network.version and theirs.overlaps(network):
                return [
                    invalid_value(
                        "spec.podCIDR",
                        cidr,
                        f"overlaps node {show_value(other.metadata.name)}'s podCIDR {other.spec.pod_cidr}",
                    )
                ]
        return []


def admission_plugins(
    registries: Mapping[str, Registry], *, cluster_cidr: str | None, node_cidr_mask_size: int
) -> list[AdmissionPlugin]:
    ranges = ClusterRanges.parse(cluster_cidr, node_cidr_mask_size) if cluster_cidr else None
    return [NodePodCIDR(registries, ranges)]
