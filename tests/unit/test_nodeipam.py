"""The node range allocator's decision on its own (which Node gets which range, who waits,
what is ignored), its writes against a fake API, and the NodePodCIDR admission rules."""

from __future__ import annotations

import ipaddress
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from kybernetes.v1 import meta_pb2, node_pb2
from services.apiserver.auth.admission import CREATE, UPDATE, AdmissionRequest
from services.apiserver.errors import ApiError
from services.apiserver.nodeipam import (
    NETWORK_UNAVAILABLE,
    REASON_NO_CIDR,
    AssignCIDR,
    ClearNoCIDR,
    ClusterRanges,
    MarkNoCIDR,
    NodeIpamController,
    NodePodCIDR,
    Reservation,
    node_cleared_no_cidr,
    node_marked_no_cidr,
    plan_node_ranges,
)
from services.common.identity import SYSTEM_MASTERS, authenticated
from services.common.resources import NODES

from .test_noderestriction import fake_registries

NOW = 1_800_000_000.0
CLUSTER = "10.244.0.0/16"


def node(
    name: str,
    cidr: str = "",
    *,
    age: int = 0,
    uid: str = "",
    condition: tuple[str, str] | None = None,
) -> node_pb2.Node:
    """A Node created `age` seconds before the others of age 0 (older: larger)."""
    result = node_pb2.Node(
        metadata=meta_pb2.ObjectMeta(
            name=name,
            uid=uid or f"uid-{name}",
            resource_version=5,
            creation_timestamp=timestamp_pb2.Timestamp(seconds=int(NOW) - age),
        ),
        spec=node_pb2.NodeSpec(pod_cidr=cidr),
    )
    result.status.conditions.add(type="Ready", status="True")
    if condition is not None:
        status, reason = condition
        result.status.conditions.add(type=NETWORK_UNAVAILABLE, status=status, reason=reason)
    return result


NO_CIDR = ("True", REASON_NO_CIDR)


def describe(actions: list[Any]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for action in actions:
        if isinstance(action, AssignCIDR):
            out.append(("assign", action.node.metadata.name, action.cidr))
        elif isinstance(action, MarkNoCIDR):
            out.append(("mark", action.node.metadata.name))
        else:
            assert isinstance(action, ClearNoCIDR)
            out.append(("clear", action.node.metadata.name))
    return out


# -- the plan, as a table --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "cluster", "mask", "expected"),
    [
        pytest.param([], CLUSTER, 24, [], id="no-nodes"),
        pytest.param(
            [node("c", age=1), node("a", age=3), node("b", age=2)],
            CLUSTER,
            24,
            [("assign", "a", "10.244.0.0/24"), ("assign", "b", "10.244.1.0/24"), ("assign", "c", "10.244.2.0/24")],
            id="allocate-oldest-first-lowest-free",
        ),
        pytest.param(
            [node("x", age=5), node("y", age=5)],
            CLUSTER,
            24,
            [("assign", "x", "10.244.0.0/24"), ("assign", "y", "10.244.1.0/24")],
            id="same-age-by-name",
        ),
        pytest.param(
            [node("old-1", "10.244.0.0/24", age=9), node("old-2", "10.244.2.0/24", age=9), node("new")],
            CLUSTER,
            24,
            [("assign", "new", "10.244.1.0/24")],
            id="occupy-existing-first-then-fill-the-gap",
        ),
        pytest.param(
            [node("a", "10.244.0.0/24"), node("b", "10.244.1.0/24")],
            CLUSTER,
            24,
            [],
            id="restart-reassigns-nothing",
        ),
        pytest.param(
            [node("a", "10.244.1.0/24", age=9), node("new")],
            CLUSTER,
            24,
            [("assign", "new", "10.244.0.0/24")],
            id="freed-range-reused",
        ),
        pytest.param(
            [node("a", age=3), node("b", age=2), node("c", age=1)],
            "10.244.0.0/23",
            24,
            [("assign", "a", "10.244.0.0/24"), ("assign", "b", "10.244.1.0/24"), ("mark", "c")],
            id="exhausted-marks-network-unavailable",
        ),
        pytest.param(
            [node("a", "10.244.0.0/24"), node("b", "10.244.1.0/24"), node("c", condition=NO_CIDR)],
            "10.244.0.0/23",
            24,
            [],
            id="exhausted-already-marked-no-write",
        ),
        pytest.param(
            [node("c", condition=("True", "RouteNotCreated"))],
            "10.244.0.0/24",
            24,
            [("assign", "c", "10.244.0.0/24")],
            id="someone-elses-network-unavailable-does-not-block",
        ),
        pytest.param(
            [node("a", "10.244.0.0/24"), node("c", "10.244.1.0/24", condition=NO_CIDR)],
            "10.244.0.0/23",
            24,
            [("clear", "c")],
            id="range-arrived-condition-taken-back",
        ),
        pytest.param(
            [
                node("a", "10.244.0.0/24", age=9),
                node("late", age=1, condition=NO_CIDR),
                node("early", age=5, condition=NO_CIDR),
            ],
            "10.244.0.0/23",
            24,
            [("assign", "early", "10.244.1.0/24")],
            id="freed-range-goes-to-the-oldest-waiting",
        ),
        pytest.param(
            [node("a", age=2), node("b", age=1)],
            "10.244.0.0/16",
            26,
            [("assign", "a", "10.244.0.0/26"), ("assign", "b", "10.244.0.64/26")],
            id="mask-26",
        ),
        pytest.param(
            [node("a", age=2), node("b", age=1)],
            "10.0.0.0/8",
            16,
            [("assign", "a", "10.0.0.0/16"), ("assign", "b", "10.1.0.0/16")],
            id="mask-16-of-a-slash-8",
        ),
        pytest.param(
            [node("a", age=2), node("b", age=1)],
            "10.244.7.0/24",
            24,
            [("assign", "a", "10.244.7.0/24"), ("mark", "b")],
            id="mask-equal-to-cluster-one-range",
        ),
        pytest.param(
            [node("a", age=2), node("b", age=1)],
            "fd00:10:244::/56",
            64,
            [("assign", "a", "fd00:10:244::/64"), ("assign", "b", "fd00:10:244:1::/64")],
            id="ipv6",
        ),
        pytest.param(
            [node("wide", "10.244.0.0/23", age=9), node("new")],
            CLUSTER,
            24,
            [("assign", "new", "10.244.2.0/24")],
            id="wrong-mask-stored-occupies-every-range-it-touches",
        ),
        pytest.param(
            [node("narrow", "10.244.0.128/25", age=9), node("new")],
            CLUSTER,
            24,
            [("assign", "new", "10.244.1.0/24")],
            id="narrower-stored-occupies-its-whole-range",
        ),
        pytest.param(
            [node("away", "192.168.0.0/24", age=9), node("bad", "not-a-cidr", age=9), node("new")],
            CLUSTER,
            24,
            [("assign", "new", "10.244.0.0/24")],
            id="outside-and-invalid-stored-ignored",
        ),
        pytest.param(
            [node("v6", "fd00::/64", age=9), node("new")],
            CLUSTER,
            24,
            [("assign", "new", "10.244.0.0/24")],
            id="other-family-stored-ignored",
        ),
    ],
)
def test_plan(nodes: list[node_pb2.Node], cluster: str, mask: int, expected: list[tuple[str, ...]]) -> None:
    assert describe(plan_node_ranges(nodes, cluster, mask).actions) == expected


def test_plan_counts_and_reserves_what_it_hands_out() -> None:
    plan = plan_node_ranges([node("a", "10.244.0.0/24"), node("b")], "10.244.0.0/22", 24)
    assert (plan.assigned, plan.free) == (2, 2)
    assert plan.reserved == {"b": Reservation("uid-b", "10.244.1.0/24")}


def test_exhausted_message_names_the_full_cluster_cidr() -> None:
    plan = plan_node_ranges([node("a", "10.244.0.0/24"), node("b")], "10.244.0.0/24", 24)
    [action] = plan.actions
    assert isinstance(action, MarkNoCIDR)
    assert "cluster CIDR 10.244.0.0/24 is full" in action.message


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        pytest.param(
            [node("a", "10.244.0.0/24", age=2), node("b", "10.244.0.0/24", age=1)],
            [("b", "10.244.0.0/24", "overlaps the range of node(s) a")],
            id="two-nodes-one-range-the-younger-reported",
        ),
        pytest.param(
            [node("x", "192.168.0.0/24")],
            [("x", "192.168.0.0/24", "outside the cluster CIDR 10.244.0.0/16; ignored")],
            id="outside",
        ),
        pytest.param([node("x", "nonsense")], [("x", "nonsense", "not a CIDR; ignored")], id="not-a-cidr"),
        pytest.param(
            [node("x", "10.244.4.0/23")],
            [("x", "10.244.4.0/23", "not a /24: the 2 /24 range(s) it overlaps are kept from others")],
            id="wrong-mask",
        ),
        pytest.param(
            [node("x", "10.0.0.0/8")],
            [
                (
                    "x",
                    "10.0.0.0/8",
                    "reaches outside the cluster CIDR 10.244.0.0/16; "
                    "not a /24: the 256 /24 range(s) it overlaps are kept from others",
                )
            ],
            id="covers-the-cluster",
        ),
        pytest.param([node("x", "10.244.9.0/24")], [], id="a-good-one-is-no-problem"),
    ],
)
def test_plan_reports_stored_values_it_would_not_have_given(
    nodes: list[node_pb2.Node], expected: list[tuple[str, str, str]]
) -> None:
    problems = plan_node_ranges(nodes, CLUSTER, 24).problems
    assert [(p.node, p.cidr, p.reason) for p in problems] == expected


def test_a_node_covering_the_cluster_leaves_nothing_to_hand_out() -> None:
    plan = plan_node_ranges([node("x", "10.0.0.0/8", age=9), node("new")], CLUSTER, 24)
    assert describe(plan.actions) == [("mark", "new")]


# -- reservations: ranges handed out that the informer does not show yet ----------------------


@pytest.mark.parametrize(
    ("nodes", "reserved", "expected_actions", "expected_reserved"),
    [
        pytest.param(
            [node("a", age=2), node("b", age=1)],
            {"b": Reservation("uid-b", "10.244.0.0/24")},
            [("assign", "b", "10.244.0.0/24"), ("assign", "a", "10.244.1.0/24")],
            {"b": Reservation("uid-b", "10.244.0.0/24"), "a": Reservation("uid-a", "10.244.1.0/24")},
            id="unwritten-is-written-again-and-kept-from-older-nodes",
        ),
        pytest.param(
            [node("b"), node("c")],
            {"b": Reservation("uid-b", "10.244.0.0/24", written=True)},
            [("assign", "c", "10.244.1.0/24")],
            {"b": Reservation("uid-b", "10.244.0.0/24", written=True), "c": Reservation("uid-c", "10.244.1.0/24")},
            id="written-waits-for-the-informer-and-its-range-stays-taken",
        ),
        pytest.param(
            [node("b", "10.244.0.0/24")],
            {"b": Reservation("uid-b", "10.244.0.0/24", written=True)},
            [],
            {},
            id="seen-in-the-node-dropped",
        ),
        pytest.param(
            [node("c")],
            {"b": Reservation("uid-b", "10.244.0.0/24", written=True)},
            [("assign", "c", "10.244.0.0/24")],
            {"c": Reservation("uid-c", "10.244.0.0/24")},
            id="node-deleted-range-freed",
        ),
        pytest.param(
            [node("b", uid="second")],
            {"b": Reservation("uid-b", "10.244.3.0/24")},
            [("assign", "b", "10.244.0.0/24")],
            {"b": Reservation("second", "10.244.0.0/24")},
            id="node-replaced-under-the-same-name-starts-over",
        ),
        pytest.param(
            [node("other", "10.244.0.0/24", age=9), node("b")],
            {"b": Reservation("uid-b", "10.244.0.0/24")},
            [("assign", "b", "10.244.1.0/24")],
            {"b": Reservation("uid-b", "10.244.1.0/24")},
            id="range-taken-by-another-meanwhile-picks-again",
        ),
    ],
)
def test_plan_with_reservations(
    nodes: list[node_pb2.Node],
    reserved: dict[str, Reservation],
    expected_actions: list[tuple[str, ...]],
    expected_reserved: dict[str, Reservation],
) -> None:
    plan = plan_node_ranges(nodes, CLUSTER, 24, reserved=reserved)
    assert describe(plan.actions) == expected_actions
    assert plan.reserved == expected_reserved


# -- the ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidr", "mask", "message"),
    [
        ("10.244.0.0/33", 24, "--cluster-cidr"),
        ("10.244.1.0/16", 24, "--cluster-cidr"),  # host bits set
        ("banana", 24, "--cluster-cidr"),
        ("10.244.0.0/16", 8, "--node-cidr-mask-size 8: must be between"),
        ("10.244.0.0/16", 33, "--node-cidr-mask-size 33: must be between"),
        ("10.0.0.0/8", 25, "at most 2^16"),
    ],
)
def test_cluster_ranges_refuse_what_cannot_be_allocated_from(cidr: str, mask: int, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("^", r"\^")):
        ClusterRanges.parse(cidr, mask)


def test_cluster_ranges_number_node_ranges() -> None:
    ranges = ClusterRanges.parse("10.244.0.0/16", 24)
    assert ranges.size == 256
    assert str(ranges.subnet(255)) == "10.244.255.0/24"
    assert list(ranges.slots(ipaddress.ip_network("10.244.3.128/25"))) == [3]
    assert list(ranges.slots(ipaddress.ip_network("10.244.4.0/22"))) == [4, 5, 6, 7]
    assert list(ranges.slots(ipaddress.ip_network("10.245.0.0/24"))) == []


# -- what the writes carry --------------------------------------------------------------------


def test_marked_then_cleared() -> None:
    original = node("c", condition=("False", "RouteCreated"))
    marked = node_marked_no_cidr(original, "full", NOW)
    condition = [c for c in marked.status.conditions if c.type == NETWORK_UNAVAILABLE][0]
    assert (condition.status, condition.reason, condition.message) == ("True", REASON_NO_CIDR, "full")
    assert condition.last_transition_time.seconds == int(NOW)
    assert [c.type for c in marked.status.conditions] == ["Ready", NETWORK_UNAVAILABLE]
    assert original.status.conditions[1].status == "False"  # the informer's copy is untouched
    cleared = node_cleared_no_cidr(marked)
    assert [c.type for c in cleared.status.conditions] == ["Ready"]
    # Someone else's NetworkUnavailable is theirs to take back.
    assert len(node_cleared_no_cidr(original).status.conditions) == 2


# -- the controller's writes against a fake API -----------------------------------------------


class FakeInformer:
    def __init__(self, *nodes: node_pb2.Node) -> None:
        self.nodes = list(nodes)

    def list(self) -> list[node_pb2.Node]:
        return list(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)


class FakeError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(
            code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=f"fake {code.name}", debug_error_string=""
        )


class FakeClient:
    def __init__(self, *failures: grpc.StatusCode) -> None:
        self.failures = list(failures)
        self.updates: list[tuple[str, str]] = []
        self.status_updates: list[node_pb2.Node] = []

    async def update(self, obj: node_pb2.Node) -> node_pb2.Node:
        if self.failures:
            raise FakeError(self.failures.pop(0))
        self.updates.append((obj.metadata.name, obj.spec.pod_cidr))
        return obj

    async def update_status(self, obj: node_pb2.Node) -> node_pb2.Node:
        self.status_updates.append(obj)
        return obj


def controller(client: FakeClient, *nodes: node_pb2.Node, cluster: str = CLUSTER) -> NodeIpamController:
    result = NodeIpamController(cluster_cidr=cluster, retry_initial=0.5, retry_max=4)
    result.client = client  # type: ignore[assignment]
    result.nodes = FakeInformer(*nodes)  # type: ignore[assignment]
    return result


async def test_controller_assigns_once_and_waits_for_the_informer() -> None:
    client = FakeClient()
    ipam = controller(client, node("a"))
    await ipam.sync_once(NOW)
    await ipam.sync_once(NOW)  # the informer has not delivered the write yet: nothing again
    assert client.updates == [("a", "10.244.0.0/24")]
    assert ipam._next_retry_in() is None


async def test_controller_retries_a_conflict_with_the_same_range_after_backoff() -> None:
    client = FakeClient(grpc.StatusCode.ABORTED)
    ipam = controller(client, node("a"), node("b", age=1))
    await ipam.sync_once(NOW)
    assert client.updates == [("a", "10.244.1.0/24")]  # b (older) hit the conflict
    assert ipam._reserved["b"] == Reservation("uid-b", "10.244.0.0/24")
    delay = ipam._next_retry_in()
    assert delay is not None and 0 < delay <= 0.6
    await ipam.sync_once(NOW)  # not yet due: no write
    assert client.updates == [("a", "10.244.1.0/24")]
    ipam._retry_at["b"] = 0  # due
    await ipam.sync_once(NOW)
    assert client.updates == [("a", "10.244.1.0/24"), ("b", "10.244.0.0/24")]


async def test_controller_picks_again_when_admission_refuses_the_range() -> None:
    client = FakeClient(grpc.StatusCode.INVALID_ARGUMENT)
    ipam = controller(client, node("a"))
    await ipam.sync_once(NOW)
    assert "a" not in ipam._reserved and "a" in ipam._retry_at


async def test_controller_marks_and_logs_when_exhausted() -> None:
    client = FakeClient()
    ipam = controller(client, node("a", "10.244.0.0/24"), node("b"), cluster="10.244.0.0/24")
    await ipam.sync_once(NOW)
    [marked] = client.status_updates
    assert marked.metadata.name == "b" and marked.status.conditions[-1].reason == REASON_NO_CIDR


# -- admission ----------------------------------------------------------------------------------

ADMIN = authenticated("admin", [SYSTEM_MASTERS])


def admission(*stored: node_pb2.Node, cluster: str | None = CLUSTER, mask: int = 24) -> NodePodCIDR:
    registries = fake_registries()
    for obj in stored:
        registries[NODES.name].cache.put(obj)
    return NodePodCIDR(registries, ClusterRanges.parse(cluster, mask) if cluster else None)


def admit(plugin: NodePodCIDR, obj: node_pb2.Node, old: node_pb2.Node | None = None, subresource: str = "") -> None:
    plugin.admit(AdmissionRequest(ADMIN, UPDATE if old is not None else CREATE, NODES, obj, old, subresource))


@pytest.mark.parametrize(
    ("cidr", "reason"),
    [
        ("10.245.0.0/24", "must be inside the cluster CIDR 10.244.0.0/16"),
        ("10.0.0.0/8", "must be inside the cluster CIDR 10.244.0.0/16"),
        ("fd00::/64", "must be inside the cluster CIDR 10.244.0.0/16"),
        ("10.244.0.0/23", "must be a /24 (the node CIDR mask size)"),
        ("10.244.3.7/24", "must be a network address (e.g. 10.244.3.0/24)"),
        ("10.244.1.0/24", 'overlaps node "a"\'s podCIDR 10.244.1.0/24'),
    ],
)
def test_admission_refuses(cidr: str, reason: str) -> None:
    plugin = admission(node("a", "10.244.1.0/24"))
    with pytest.raises(ApiError) as raised:
        admit(plugin, node("b", cidr))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == f'Node "b" is invalid: spec.podCIDR: Invalid value: "{cidr}": {reason}'


def test_admission_allows_a_free_range_and_nodes_without_one() -> None:
    plugin = admission(node("a", "10.244.1.0/24"))
    admit(plugin, node("b", "10.244.2.0/24"))
    admit(plugin, node("c"))
    admit(plugin, node("a", "10.244.1.0/24"))  # itself is no overlap


def test_podcidr_may_be_set_once() -> None:
    plugin = admission(node("a", "10.244.1.0/24"))
    admit(plugin, node("b", "10.244.2.0/24"), old=node("b"))  # "" -> a range: the allocator's write
    for changed in ("10.244.3.0/24", ""):
        with pytest.raises(ApiError) as raised:
            admit(plugin, node("b", changed), old=node("b", "10.244.2.0/24"))
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert 'spec.podCIDR: Forbidden: may not be changed once set (from "10.244.2.0/24")' in raised.value.message


def test_admission_leaves_unchanged_values_and_status_writes_alone() -> None:
    # Stored before these rules (outside the range, overlapping): a label change still goes through.
    plugin = admission(node("a", "192.168.0.0/24"), node("b", "192.168.0.0/24"))
    admit(plugin, node("b", "192.168.0.0/24"), old=node("b", "192.168.0.0/24"))
    admit(plugin, node("b", "10.244.9.0/24"), old=node("b"), subresource="status")


def test_admission_without_a_cluster_cidr_checks_only_overlap_and_immutability() -> None:
    plugin = admission(node("a", "192.168.1.0/24"), cluster=None)
    admit(plugin, node("b", "172.30.0.0/20"))
    with pytest.raises(ApiError, match="overlaps node"):
        admit(plugin, node("c", "192.168.0.0/16"))
    with pytest.raises(ApiError, match="may not be changed"):
        admit(plugin, node("a", "192.168.2.0/24"), old=node("a", "192.168.1.0/24"))
