"""Node lifecycle's decision on its own: which nodes to mark, which pods to mark, restore or evict, and when."""

from __future__ import annotations

import pytest
from google.protobuf import timestamp_pb2

from kybernetes.v1 import coordination_pb2, meta_pb2, node_pb2, pod_pb2
from services.apiserver.nodelifecycle import (
    MESSAGE_NEVER_UPDATED,
    REASON_NEVER_UPDATED,
    REASON_POD_NODE_NOT_READY,
    REASON_STATUS_UNKNOWN,
    CollectLease,
    EvictPod,
    MarkNodeUnknown,
    MarkPodNotReady,
    NodeLifecycleController,
    Observed,
    RestorePodReady,
    node_marked_unknown,
    plan_node_lifecycle,
    pod_marked_not_ready,
    pod_ready_restored,
    probe,
)

NOW = 1_800_000_000.0
GRACE = 20.0
EVICTION = 30.0


def stamp(epoch: float) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(epoch))


def node(
    name: str = "n1",
    *,
    ready: str | None = "True",
    heartbeat_age: float | None = 1.0,
    transition_age: float | None = None,
    created_age: float = 1000.0,
) -> node_pb2.Node:
    result = node_pb2.Node(metadata=meta_pb2.ObjectMeta(name=name, creation_timestamp=stamp(NOW - created_age)))
    if ready is not None:
        condition = result.status.conditions.add(type="Ready", status=ready)
        if heartbeat_age is not None:
            condition.last_heartbeat_time.CopyFrom(stamp(NOW - heartbeat_age))
        if transition_age is not None:
            condition.last_transition_time.CopyFrom(stamp(NOW - transition_age))
    return result


def pod(name: str, node_name: str = "n1", *, ready: str = "True", reason: str = "") -> pod_pb2.Pod:
    result = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name=name, namespace="default", resource_version=7))
    result.spec.node_name = node_name
    result.status.phase = "Running"
    result.status.conditions.add(type="Ready", status=ready, reason=reason)
    result.status.container_statuses.add(name="web", ready=True)
    return result


def describe(actions: list) -> list[tuple[str, str]]:
    names = []
    for action in actions:
        target = action.node if isinstance(action, MarkNodeUnknown) else action.pod
        names.append((type(action).__name__, target.metadata.name))
    return names


@pytest.mark.parametrize(
    ("nodes", "pods", "expected"),
    [
        pytest.param([node()], {"n1": [pod("a")]}, [], id="heartbeating-node-nothing-to-do"),
        pytest.param(
            [node(heartbeat_age=GRACE + 1)], {"n1": [pod("a")]}, [("MarkNodeUnknown", "n1")],
            id="stale-heartbeat-marks-node-unknown-first-pods-later",
        ),
        pytest.param(
            [node(ready=None, created_age=GRACE + 1)], {}, [("MarkNodeUnknown", "n1")],
            id="never-posted-and-older-than-grace",
        ),
        pytest.param([node(ready=None, created_age=5)], {}, [], id="never-posted-but-young"),
        pytest.param(
            [node(ready="Unknown", heartbeat_age=GRACE + 5, transition_age=5)],
            {"n1": [pod("a"), pod("b", ready="False")]},
            [("MarkPodNotReady", "a")],
            id="unknown-node-pods-marked-not-ready-once",
        ),
        pytest.param(
            [node(ready="Unknown", heartbeat_age=GRACE + 50, transition_age=EVICTION)],
            {"n1": [pod("a"), pod("b", ready="False")]},
            [("EvictPod", "a"), ("EvictPod", "b")],
            id="not-ready-for-eviction-timeout-evicts-every-pod",
        ),
        pytest.param(
            [node(ready="False", heartbeat_age=1, transition_age=EVICTION - 1)],
            {"n1": [pod("a")]},
            [("MarkPodNotReady", "a")],
            id="kubelet-says-not-ready-pods-follow",
        ),
        pytest.param(
            [node()],
            {"n1": [pod("a", ready="False", reason=REASON_POD_NODE_NOT_READY), pod("b", ready="False")]},
            [("RestorePodReady", "a")],
            id="node-back-restores-only-pods-we-marked",
        ),
        pytest.param(
            [node("n1"), node("n2", heartbeat_age=GRACE + 1)],
            {"n1": [pod("a")], "n2": [pod("b", "n2")]},
            [("MarkNodeUnknown", "n2")],
            id="one-node-of-two-goes-silent",
        ),
    ],
)
def test_plan(nodes: list, pods: dict, expected: list) -> None:
    plan = plan_node_lifecycle(Observed(nodes, pods), NOW, GRACE, EVICTION)
    assert describe(plan.actions) == expected


def test_pods_on_a_node_that_does_not_exist_are_evicted_after_the_timeout() -> None:
    pods = {"ghost": [pod("a", "ghost")]}
    first = plan_node_lifecycle(Observed([], pods), NOW, GRACE, EVICTION)
    assert first.actions == [] and first.missing_since == {"ghost": NOW}
    almost = plan_node_lifecycle(Observed([], pods, first.missing_since), NOW + EVICTION - 1, GRACE, EVICTION)
    assert almost.actions == [] and almost.missing_since == {"ghost": NOW}
    due = plan_node_lifecycle(Observed([], pods, almost.missing_since), NOW + EVICTION, GRACE, EVICTION)
    # No kubelet will finish a graceful deletion there: the eviction is forced.
    assert due.actions == [EvictPod(pods["ghost"][0], "node ghost does not exist", force=True)]


def test_pods_already_terminating_are_not_evicted_again() -> None:
    stale = node(ready="Unknown", heartbeat_age=1000, transition_age=1000)
    terminating = pod("a")
    terminating.metadata.deletion_timestamp.seconds = int(NOW)
    plan = plan_node_lifecycle(Observed([stale], {"n1": [terminating, pod("b")]}), NOW, GRACE, EVICTION)
    assert [action.pod.metadata.name for action in plan.actions if isinstance(action, EvictPod)] == ["b"]


def test_a_missing_node_that_appears_or_loses_its_pods_is_forgotten() -> None:
    pods = {"late": [pod("a", "late")]}
    first = plan_node_lifecycle(Observed([], pods), NOW, GRACE, EVICTION)
    assert first.missing_since == {"late": NOW}
    appeared = plan_node_lifecycle(Observed([node("late")], pods, first.missing_since), NOW + 1, GRACE, EVICTION)
    assert appeared.missing_since == {} and appeared.actions == []
    emptied = plan_node_lifecycle(Observed([], {"late": []}, first.missing_since), NOW + 1, GRACE, EVICTION)
    assert emptied.missing_since == {}


def test_eviction_names_how_long_the_node_was_not_ready() -> None:
    stale = node(ready="Unknown", heartbeat_age=100, transition_age=42)
    plan = plan_node_lifecycle(Observed([stale], {"n1": [pod("a")]}), NOW, GRACE, EVICTION)
    assert plan.actions == [EvictPod(pod("a"), "node n1 has been not ready for 42s")]


def test_plan_does_not_touch_its_inputs() -> None:
    nodes = [node(heartbeat_age=GRACE + 1)]
    pods = {"n1": [pod("a")]}
    before = ([n.SerializeToString() for n in nodes], [p.SerializeToString() for p in pods["n1"]])
    plan_node_lifecycle(Observed(nodes, pods), NOW, GRACE, EVICTION)
    assert before == ([n.SerializeToString() for n in nodes], [p.SerializeToString() for p in pods["n1"]])


def test_marking_a_node_unknown_keeps_its_heartbeat_and_says_why() -> None:
    stale = node(heartbeat_age=GRACE + 1)
    updated = node_marked_unknown(stale, NOW)
    condition = updated.status.conditions[0]
    assert (condition.status, condition.reason) == ("Unknown", REASON_STATUS_UNKNOWN)
    assert condition.last_transition_time.seconds == int(NOW)
    assert condition.last_heartbeat_time == stale.status.conditions[0].last_heartbeat_time
    assert stale.status.conditions[0].status == "True"  # the input is a copy


def test_a_node_that_never_posted_gets_a_condition_dated_at_its_creation() -> None:
    silent = node(ready=None, created_age=100)
    condition = node_marked_unknown(silent, NOW).status.conditions[0]
    assert (condition.status, condition.reason, condition.message) == (
        "Unknown", REASON_NEVER_UPDATED, MESSAGE_NEVER_UPDATED
    )
    assert condition.last_heartbeat_time == silent.metadata.creation_timestamp


def test_pod_marks_and_restores() -> None:
    marked = pod_marked_not_ready(pod("a"), "n1", NOW)
    condition = marked.status.conditions[0]
    assert (condition.status, condition.reason, condition.message) == (
        "False", REASON_POD_NODE_NOT_READY, "node n1 is not ready"
    )
    restored = pod_ready_restored(marked, NOW + 5).status.conditions[0]
    assert (restored.status, restored.reason) == ("True", "")
    unready = pod("b")
    unready.status.container_statuses[0].ready = False
    not_restored = pod_ready_restored(pod_marked_not_ready(unready, "n1", NOW), NOW).status.conditions[0]
    assert (not_restored.status, not_restored.reason) == ("False", "ContainersNotReady")


def test_action_types_are_plain_data() -> None:
    assert MarkPodNotReady(pod("a"), "n1") == MarkPodNotReady(pod("a"), "n1")
    assert RestorePodReady(pod("a")) != RestorePodReady(pod("b"))


def test_a_heartbeat_counts_from_when_the_controller_saw_it_change() -> None:
    # A controller that starts (an API server restarted with it) while every heartbeat is old,
    # because the outage held the renewals back: a whole grace period before any node is judged.
    nodes = [node("n1", heartbeat_age=GRACE + 15), node("n2", heartbeat_age=2.0)]
    probes = probe(nodes, {}, {}, NOW)
    assert probes == {"n1": (NOW - GRACE - 15, NOW), "n2": (NOW - 2, NOW)}
    heard = {name: seen for name, (_, seen) in probes.items()}
    assert plan_node_lifecycle(Observed(nodes, {}, heard_at=heard), NOW + GRACE, GRACE, EVICTION).actions == []
    # By the heartbeats' own times, n1 would have been marked at once.
    assert isinstance(plan_node_lifecycle(Observed(nodes, {}), NOW, GRACE, EVICTION).actions[0], MarkNodeUnknown)
    # n2's lease is renewed later on; n1 stays silent: only n1 is marked, a grace period after it was first seen.
    later = NOW + GRACE + 1
    probes = probe(nodes, {"n2": later - 1}, probes, later)
    assert probes["n1"] == (NOW - GRACE - 15, NOW) and probes["n2"] == (later - 1, later)
    heard = {name: seen for name, (_, seen) in probes.items()}
    actions = plan_node_lifecycle(Observed(nodes, {}, heard_at=heard), later, GRACE, EVICTION).actions
    assert [type(a).__name__ for a in actions] == ["MarkNodeUnknown"] and actions[0].node.metadata.name == "n1"


class Listed:
    """What the controller reads of an informer: its objects and how many streams it had."""

    def __init__(self, *objects: object) -> None:
        self.objects, self.streams = list(objects), 1

    def list(self) -> list:
        return list(self.objects)


def test_after_its_view_was_interrupted_the_controller_counts_every_heartbeat_from_then() -> None:
    controller = NodeLifecycleController(grace_period=GRACE, eviction_timeout=EVICTION)
    silent = node("n1", heartbeat_age=5.0)
    controller.nodes, controller.leases = Listed(silent), Listed()  # type: ignore[assignment]
    assert controller.observe(NOW).heard_at == {"n1": NOW}
    # The API server restarts: the watches break and resume; no heartbeat arrived meanwhile.
    controller.nodes.streams = controller.leases.streams = 2  # type: ignore[attr-defined]
    resumed = NOW + GRACE + 5
    observed = controller.observe(resumed)
    assert observed.heard_at == {"n1": resumed}
    assert plan_node_lifecycle(observed, resumed, GRACE, EVICTION).actions == []
    # Nothing heard for a grace period after that: now it is the node's silence.
    later = resumed + GRACE + 1
    assert describe(plan_node_lifecycle(controller.observe(later), later, GRACE, EVICTION).actions) == [
        ("MarkNodeUnknown", "n1")
    ]


def lease(name: str, owner_uid: str = "", owner_kind: str = "Node") -> coordination_pb2.Lease:
    result = coordination_pb2.Lease(metadata=meta_pb2.ObjectMeta(name=name, namespace="kube-node-lease"))
    if owner_uid:
        result.metadata.owner_references.add(api_version="v1", kind=owner_kind, name=name, uid=owner_uid)
    return result


def test_the_lease_of_a_deleted_node_is_collected_and_only_that_one() -> None:
    live = node("n1")
    live.metadata.uid = "uid-1"
    again = node("n2")
    again.metadata.uid = "uid-2b"  # registered again under the same name: a new uid
    leases = [
        lease("n1", "uid-1"),  # its owner lives
        lease("n2", "uid-2a"),  # its owner was deleted; a Node of that name is another one
        lease("n3", "uid-3"),  # its owner was deleted
        lease("n4"),  # no owner yet (its kubelet has not seen its Node's uid): not ours to judge
    ]
    actions = plan_node_lifecycle(Observed([live, again], {}, leases=leases), NOW, GRACE, EVICTION).actions
    assert [(action.lease.metadata.name, action.owner_uid) for action in actions] == [("n2", "uid-2a"), ("n3", "uid-3")]
    assert all(isinstance(action, CollectLease) for action in actions)
