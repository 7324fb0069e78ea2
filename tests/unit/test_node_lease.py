"""Node leases (KEP-589) on their own: the kubelet's Lease renewal and when it posts its
NodeStatus, the heartbeat the node lifecycle controller and the scheduler read, and what
a node's identity may do to Leases; against fakes, with a fake clock."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import coordination_pb2, meta_pb2, node_pb2, pod_pb2
from services.apiserver.auth.admission import CREATE, DELETE, UPDATE, AdmissionRequest
from services.apiserver.auth.attributes import Decision, RequestAttributes
from services.apiserver.auth.node import NodeAuthorizer, NodeRestriction
from services.apiserver.errors import ApiError
from services.apiserver.nodelifecycle import (
    MarkNodeUnknown,
    Observed,
    lease_renew_time,
    node_heartbeat,
    plan_node_lifecycle,
)
from services.apiserver.scheduler.cache import SchedulerCache
from services.common.identity import SYSTEM_NODES, authenticated
from services.common.resources import ALL_KINDS, LEASES, NODES, Kind
from services.kubelet.node import NodeStatusReporter, status_changed
from services.kubelet.nodelease import NODE_LEASE_NAMESPACE, NodeLease, renew_interval, renewed_lease

NOW = 1_800_000_000.0
GRACE = 20.0
EVICTION = 30.0


def stamp(epoch: float) -> Timestamp:
    return Timestamp(seconds=int(epoch), nanos=int((epoch % 1) * 1e9))


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


def lease(name: str = "n1", renewed: float | None = NOW, rv: int = 5) -> coordination_pb2.Lease:
    result = coordination_pb2.Lease(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=NODE_LEASE_NAMESPACE, resource_version=rv),
    )
    result.spec.holder_identity = name
    if renewed is not None:
        result.spec.renew_time.CopyFrom(stamp(renewed))
    return result


def node(name: str = "n1", *, ready: str = "True", heartbeat: float | None = NOW - 1) -> node_pb2.Node:
    result = node_pb2.Node(metadata=meta_pb2.ObjectMeta(name=name, uid=f"uid-{name}", creation_timestamp=stamp(0)))
    condition = result.status.conditions.add(type="Ready", status=ready)
    if heartbeat is not None:
        condition.last_heartbeat_time.CopyFrom(stamp(heartbeat))
    return result


# -- the renewal (pure) --------------------------------------------------------------------


def test_a_new_lease_is_held_by_the_node_renewed_now_and_owned_by_its_node() -> None:
    made = renewed_lease(None, "n1", 40, stamp(NOW), "uid-1")
    assert (made.api_version, made.kind) == ("coordination.k8s.io/v1", "Lease")
    assert (made.metadata.namespace, made.metadata.name) == ("kube-node-lease", "n1")
    assert (made.spec.holder_identity, made.spec.lease_duration_seconds) == ("n1", 40)
    assert made.spec.renew_time == stamp(NOW)
    [owner] = made.metadata.owner_references
    assert (owner.api_version, owner.kind, owner.name, owner.uid) == ("v1", "Node", "n1", "uid-1")


def test_a_renewal_keeps_the_version_read_and_the_owner_and_moves_only_the_renew_time() -> None:
    first = renewed_lease(None, "n1", 40, stamp(NOW), "uid-1")
    first.metadata.resource_version = 9
    again = renewed_lease(first, "n1", 40, stamp(NOW + 10), "uid-1")
    assert again.metadata.resource_version == 9
    assert again.spec.renew_time == stamp(NOW + 10)
    assert list(again.metadata.owner_references) == list(first.metadata.owner_references)
    assert first.spec.renew_time == stamp(NOW)  # the input is a copy


def test_the_owner_is_added_once_the_node_is_known_and_follows_a_node_registered_again() -> None:
    unowned = renewed_lease(None, "n1", 40, stamp(NOW), None)
    assert not unowned.metadata.owner_references
    owned = renewed_lease(unowned, "n1", 40, stamp(NOW), "uid-1")
    assert [ref.uid for ref in owned.metadata.owner_references] == ["uid-1"]
    reregistered = renewed_lease(owned, "n1", 40, stamp(NOW), "uid-2")
    assert [ref.uid for ref in reregistered.metadata.owner_references] == ["uid-2"]


@pytest.mark.parametrize(
    ("duration", "status_frequency", "interval"),
    [(40, None, 10.0), (40, 10.0, 10.0), (40, 1.0, 1.0), (20, 10.0, 5.0)],
)
def test_renewed_every_quarter_of_the_duration_or_the_status_frequency_if_sooner(
    duration: int, status_frequency: float | None, interval: float
) -> None:
    assert renew_interval(duration, status_frequency) == interval


# -- the renewal against a fake API -------------------------------------------------------------


class FakeLeases:
    """One namespace of leases with optimistic concurrency, and errors to inject."""

    def __init__(self) -> None:
        self.stored: dict[str, coordination_pb2.Lease] = {}
        self.errors: list[grpc.StatusCode] = []
        self.calls: list[str] = []
        self.version = 1

    def _fail(self) -> None:
        if self.errors:
            raise rpc_error(self.errors.pop(0))

    async def get(self, kind: Kind, name: str, namespace: str) -> Any:
        self.calls.append("get")
        assert (kind, namespace) == (LEASES, NODE_LEASE_NAMESPACE)
        self._fail()
        if name not in self.stored:
            raise rpc_error(grpc.StatusCode.NOT_FOUND)
        return self.stored[name]

    def _store(self, obj: coordination_pb2.Lease) -> coordination_pb2.Lease:
        self.version += 1
        copy = coordination_pb2.Lease()
        copy.CopyFrom(obj)
        copy.metadata.resource_version = self.version
        self.stored[obj.metadata.name] = copy
        return copy

    async def create(self, obj: coordination_pb2.Lease) -> Any:
        self.calls.append("create")
        self._fail()
        if obj.metadata.name in self.stored:
            raise rpc_error(grpc.StatusCode.ALREADY_EXISTS)
        return self._store(obj)

    async def update(self, obj: coordination_pb2.Lease) -> Any:
        self.calls.append("update")
        self._fail()
        current = self.stored.get(obj.metadata.name)
        if current is None:
            raise rpc_error(grpc.StatusCode.NOT_FOUND)
        if current.metadata.resource_version != obj.metadata.resource_version:
            raise rpc_error(grpc.StatusCode.ABORTED)
        return self._store(obj)


async def test_the_lease_is_created_then_renewed_by_updates_of_the_copy_last_written() -> None:
    api = FakeLeases()
    renewer = NodeLease(api, "n1", node_uid=lambda: "uid-1")
    first = await renewer.sync()
    assert api.calls == ["get", "create"] and first.spec.holder_identity == "n1"
    second = await renewer.sync()
    third = await renewer.sync()
    assert api.calls == ["get", "create", "update", "update"]  # no read before each renewal
    assert third.metadata.resource_version > second.metadata.resource_version
    assert renewer.renewals == 3


async def test_a_conflict_reads_the_lease_again_and_renews_it() -> None:
    api = FakeLeases()
    renewer = NodeLease(api, "n1")
    await renewer.sync()
    other = coordination_pb2.Lease()
    other.CopyFrom(api.stored["n1"])
    api._store(other)  # someone else wrote it: our copy is stale
    api.calls.clear()
    renewed = await renewer.sync()
    assert api.calls == ["update", "get", "update"]
    assert renewed.spec.holder_identity == "n1"


async def test_an_unreachable_api_is_an_error_for_the_loop_to_back_off_on() -> None:
    api = FakeLeases()
    api.errors = [grpc.StatusCode.UNAVAILABLE]
    renewer = NodeLease(api, "n1")
    with pytest.raises(grpc.aio.AioRpcError):
        await renewer.sync()
    await renewer.sync()  # the next period reads it again and creates it
    assert api.calls == ["get", "get", "create"]


async def test_a_lease_deleted_under_the_kubelet_is_created_again() -> None:
    api = FakeLeases()
    renewer = NodeLease(api, "n1")
    await renewer.sync()
    del api.stored["n1"]
    api.calls.clear()
    await renewer.sync()
    assert api.calls == ["update", "get", "create"] and "n1" in api.stored


# -- when the kubelet posts its NodeStatus --------------------------------------------------


def desired_status(ready: str = "True", since: float = NOW - 100) -> node_pb2.NodeStatus:
    status = node_pb2.NodeStatus()
    status.capacity["cpu"] = "2"
    status.conditions.add(
        type="Ready", status=ready, reason="KubeletReady", last_heartbeat_time=stamp(NOW),
        last_transition_time=stamp(since),
    )
    return status


def test_a_newer_heartbeat_alone_is_no_change() -> None:
    stored = desired_status()
    stored.conditions[0].last_heartbeat_time.CopyFrom(stamp(NOW - 250))
    assert not status_changed(desired_status(), stored)


def test_conditions_others_own_are_not_compared() -> None:
    stored = desired_status()
    stored.conditions.add(type="NetworkUnavailable", status="False")
    assert not status_changed(desired_status(), stored)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: setattr(s.conditions[0], "status", "Unknown"), id="marked-unknown-by-node-lifecycle"),
        pytest.param(lambda s: setattr(s.conditions[0], "reason", "NodeStatusUnknown"), id="reason"),
        pytest.param(lambda s: s.capacity.update({"cpu": "4"}), id="capacity"),
        pytest.param(lambda s: s.conditions.pop(), id="no-ready-condition"),
    ],
)
def test_what_the_kubelet_sets_differing_is_a_change(change: Any) -> None:
    stored = desired_status()
    change(stored)
    assert status_changed(desired_status(), stored)


class FakeNodes:
    def __init__(self, stored: node_pb2.Node) -> None:
        self.stored = stored
        self.calls: list[str] = []

    async def get(self, kind: Kind, name: str, namespace: str) -> Any:
        self.calls.append("get")
        return self.stored

    async def update_status(self, obj: node_pb2.Node) -> Any:
        self.calls.append("update_status")
        stored = node_pb2.Node()
        stored.CopyFrom(self.stored)
        stored.status.CopyFrom(obj.status)
        self.stored = stored
        return stored


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def reporter(api: FakeNodes, clock: Clock, stored: Any) -> NodeStatusReporter:
    result = NodeStatusReporter(
        api, "n1", node_ip="10.0.0.1", hostname="h", kubelet_port=0, runtime_version="fake", frequency=10.0,
        report_frequency=300.0, stored_node=stored, clock=clock,
    )
    result._registered = True
    return result


async def test_the_status_is_posted_when_due_or_changed_and_not_every_period() -> None:
    clock = Clock()
    api = FakeNodes(node())
    view: dict[str, Any] = {}
    kubelet = reporter(api, clock, lambda: view.get("node"))
    assert await kubelet.sync()  # never posted: now
    view["node"] = api.stored
    for clock.now in (10.0, 20.0, 290.0):
        assert not await kubelet.sync()
    assert api.calls == ["get", "update_status"]  # nothing read or written meanwhile
    clock.now = 300.0
    assert await kubelet.sync()  # the report frequency
    # The node lifecycle controller marked it Unknown: the next period corrects it.
    marked = node_pb2.Node()
    marked.CopyFrom(api.stored)
    marked.status.conditions[0].status = "Unknown"
    view["node"] = marked
    clock.now = 310.0
    assert await kubelet.sync()
    assert api.stored.status.conditions[0].status == "True"
    assert kubelet.node_uid == "uid-n1"


async def test_without_a_view_of_the_node_it_is_read_to_decide() -> None:
    clock = Clock()
    api = FakeNodes(node())
    kubelet = reporter(api, clock, None)
    await kubelet.sync()
    api.calls.clear()
    clock.now = 10.0
    assert not await kubelet.sync()
    assert api.calls == ["get"]


# -- the heartbeat the control plane reads ------------------------------------------------------


@pytest.mark.parametrize(
    ("status_heartbeat", "renewed", "expected"),
    [
        (NOW - 1, None, NOW - 1),
        (NOW - 200, NOW - 2, NOW - 2),
        (NOW - 2, NOW - 200, NOW - 2),
        (None, NOW - 3, NOW - 3),
        (None, None, None),
    ],
)
def test_the_heartbeat_is_the_later_of_the_lease_and_the_status(
    status_heartbeat: float | None, renewed: float | None, expected: float | None
) -> None:
    assert node_heartbeat(node(heartbeat=status_heartbeat), renewed) == expected


def test_a_lease_without_a_renew_time_says_nothing() -> None:
    assert lease_renew_time(lease(renewed=None)) is None and lease_renew_time(None) is None
    assert lease_renew_time(lease(renewed=NOW)) == NOW


@pytest.mark.parametrize(
    ("nodes", "renewals", "expected"),
    [
        pytest.param([node(heartbeat=NOW - 250)], {"n1": NOW - 5}, [], id="old-status-renewed-lease-stays"),
        pytest.param(
            [node(heartbeat=NOW - 250)], {"n1": NOW - GRACE - 1}, ["n1"], id="old-status-stale-lease-unknown"
        ),
        pytest.param([node(heartbeat=NOW - 250)], {}, ["n1"], id="old-status-no-lease-unknown"),
        pytest.param([node(heartbeat=NOW - 1)], {"n1": NOW - 250}, [], id="fresh-status-old-lease-stays"),
        pytest.param(
            [node("n1", heartbeat=NOW - 250), node("n2", heartbeat=NOW - 250)],
            {"n1": NOW - 1, "n3": NOW - 1},
            ["n2"],
            id="only-the-node-whose-lease-stopped",
        ),
    ],
)
def test_plan_takes_the_leases(nodes: list, renewals: dict, expected: list) -> None:
    plan = plan_node_lifecycle(Observed(nodes, {}, {}, renewals), NOW, GRACE, EVICTION)
    assert [a.node.metadata.name for a in plan.actions if isinstance(a, MarkNodeUnknown)] == expected


def test_an_unknown_node_whose_lease_is_renewed_again_keeps_its_pods_until_its_status_says_ready() -> None:
    unknown = node(ready="Unknown", heartbeat=NOW - 250)
    plan = plan_node_lifecycle(Observed([unknown], {}, {}, {"n1": NOW - 1}), NOW, GRACE, EVICTION)
    assert plan.actions == []  # no second mark; the kubelet's status write turns it Ready


def test_the_scheduler_leaves_heartbeats_to_node_lifecycle_and_reads_the_ready_condition() -> None:
    cache = SchedulerCache()
    # An old heartbeat under Ready=True (an API server restart held the renewals back): ready
    # until node lifecycle, which reads the Leases, marks it Unknown.
    cache.set_node(node(heartbeat=NOW - 250))
    assert cache.nodes["n1"].ready
    cache.set_node(node(ready="Unknown", heartbeat=NOW - 1))
    assert not cache.nodes["n1"].ready


# -- what a node's identity may do to Leases -------------------------------------------------


def node_user(name: str) -> Any:
    return authenticated(f"system:node:{name}", [SYSTEM_NODES])


def lease_attrs(verb: str, name: str, namespace: str = NODE_LEASE_NAMESPACE, user: str = "n1") -> RequestAttributes:
    return RequestAttributes(node_user(user), verb, "leases", "", namespace, name, "coordination.k8s.io")


@pytest.mark.parametrize("verb", ["get", "create", "update", "delete"])
def test_a_node_may_use_its_own_lease(verb: str) -> None:
    assert NodeAuthorizer({}).authorize(lease_attrs(verb, "n1")).decision is Decision.ALLOW


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        pytest.param(
            lease_attrs("update", "n2"), 'node "n1" may update only its own Lease "kube-node-lease/n1", not "n2"',
            id="another-nodes-lease",
        ),
        pytest.param(
            lease_attrs("get", "n1", namespace="kube-system"),
            'node "n1" may access leases only in namespace "kube-node-lease"', id="another-namespace",
        ),
        pytest.param(
            lease_attrs("list", ""), 'node "n1" may only get, create, update, patch or delete its own Lease',
            id="list",
        ),
        pytest.param(
            lease_attrs("watch", ""), 'node "n1" may only get, create, update, patch or delete its own Lease',
            id="watch",
        ),
    ],
)
def test_a_node_may_not_touch_other_leases(attributes: RequestAttributes, reason: str) -> None:
    verdict = NodeAuthorizer({}).authorize(attributes)
    assert (verdict.decision, verdict.reason) == (Decision.NO_OPINION, reason)


class _Registry:
    def __init__(self, kind: Kind) -> None:
        self.kind = kind


def lease_request(operation: str, name: str, namespace: str = NODE_LEASE_NAMESPACE) -> AdmissionRequest:
    obj = lease(name)
    obj.metadata.namespace = namespace
    return AdmissionRequest(
        user=node_user("n1"), operation=operation, kind=LEASES, obj=obj, old=obj if operation == UPDATE else None,
    )


@pytest.mark.parametrize("operation", [CREATE, UPDATE, DELETE])
def test_node_restriction_admits_only_the_nodes_own_lease(operation: str) -> None:
    plugin = NodeRestriction({kind.name: _Registry(kind) for kind in ALL_KINDS})
    plugin.admit(lease_request(operation, "n1"))
    with pytest.raises(ApiError) as refused:
        plugin.admit(lease_request(operation, "n2"))
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert str(refused.value.message) == (
        f'node "n1" cannot {operation.lower()} lease "kube-node-lease/n2": a node may write only its own Lease '
        '"kube-node-lease/n1"'
    )
    with pytest.raises(ApiError):
        plugin.admit(lease_request(operation, "n1", namespace="default"))


def test_nodes_are_untouched_by_lease_rules() -> None:
    # A node's Node and its Lease share the name; the Node rules are unchanged.
    assert NodeAuthorizer({}).authorize(
        RequestAttributes(node_user("n1"), "update", NODES.plural, "status", "", "n1")
    ).decision is Decision.ALLOW


def test_with_the_controllers_index_a_ready_node_is_passed_without_reading_its_pods() -> None:
    class Unread(dict):
        def get(self, *args: Any) -> Any:
            raise AssertionError("the pods of a Ready node were read")

    back = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name="a", namespace="default"))
    back.spec.node_name = "n1"
    back.status.conditions.add(type="Ready", status="False", reason="NodeNotReady")
    observed = Observed([node(heartbeat=NOW - 1)], Unread(), {}, {}, marked_by_node={"n1": [back]})
    plan = plan_node_lifecycle(observed, NOW, GRACE, EVICTION)
    assert [(type(a).__name__, a.pod.metadata.name) for a in plan.actions] == [("RestorePodReady", "a")]
