"""The replication equation on its own: new pods, scale-down order, status."""

from __future__ import annotations

import pytest
from google.protobuf import timestamp_pb2

from kybernetes.v1 import meta_pb2, pod_pb2, replication_controller_pb2
from services.common.podutil import is_active
from services.replicator.replicas import (
    CREATED_BY_ANNOTATION,
    compute_status,
    deletion_order,
    foreground_plan,
    new_pod,
    rc_controller_ref,
    replica_diff,
    without_finalizer,
)


def rc(replicas: int | None = 3, min_ready_seconds: int = 0) -> replication_controller_pb2.ReplicationController:
    controller = replication_controller_pb2.ReplicationController(
        metadata=meta_pb2.ObjectMeta(name="web", namespace="prod", uid="rc-uid", generation=4),
        spec=replication_controller_pb2.ReplicationControllerSpec(
            selector={"app": "web"},
            min_ready_seconds=min_ready_seconds,
            template=pod_pb2.PodTemplateSpec(
                metadata=meta_pb2.ObjectMeta(labels={"app": "web", "tier": "frontend"}, annotations={"team": "a"}),
                spec=pod_pb2.PodSpec(
                    containers=[pod_pb2.Container(name="main", image="busybox", command=["httpd"])],
                    restart_policy="Always",
                    node_selector={"disk": "ssd"},
                ),
            ),
        ),
    )
    if replicas is not None:
        controller.spec.replicas = replicas
    return controller


def pod(
    name: str,
    *,
    node: str = "n1",
    phase: str = "Running",
    ready: bool = True,
    created: int = 1000,
    restarts: int = 0,
    labels: dict[str, str] | None = None,
    ready_since: int = 0,
) -> pod_pb2.Pod:
    p = pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(
            name=name,
            namespace="prod",
            uid=f"uid-{name}",
            labels=labels if labels is not None else {"app": "web", "tier": "frontend"},
            creation_timestamp=timestamp_pb2.Timestamp(seconds=created),
        ),
        spec=pod_pb2.PodSpec(node_name=node),
        status=pod_pb2.PodStatus(phase=phase),
    )
    p.status.conditions.add(
        type="Ready",
        status="True" if ready else "False",
        last_transition_time=timestamp_pb2.Timestamp(seconds=ready_since),
    )
    p.status.container_statuses.add(name="main", restart_count=restarts)
    return p


def test_new_pod_comes_from_the_template_with_owner_and_annotation():
    created = new_pod(rc())
    meta = created.metadata
    assert meta.name == "" and meta.generate_name == "web-"
    assert meta.namespace == "prod"
    assert dict(meta.labels) == {"app": "web", "tier": "frontend"}
    assert dict(meta.annotations) == {"team": "a", CREATED_BY_ANNOTATION: "web"}
    ref = rc_controller_ref(created)
    assert (ref.kind, ref.name, ref.uid, ref.controller, ref.api_version) == (
        "ReplicationController", "web", "rc-uid", True, "v1"
    )
    assert created.spec == rc().spec.template.spec
    assert created.spec.node_name == ""


def test_new_pods_do_not_share_state_with_the_template():
    controller = rc()
    created = new_pod(controller)
    created.metadata.labels["extra"] = "x"
    created.spec.containers[0].image = "other"
    assert "extra" not in controller.spec.template.metadata.labels
    assert controller.spec.template.spec.containers[0].image == "busybox"


@pytest.mark.parametrize(
    ("replicas", "live", "diff"),
    [
        pytest.param(3, 0, 3, id="create-all"),
        pytest.param(3, 3, 0, id="steady"),
        pytest.param(3, 5, -2, id="too-many"),
        pytest.param(0, 2, -2, id="scale-to-zero"),
        pytest.param(None, 0, 1, id="unset-means-one"),
    ],
)
def test_replica_diff(replicas, live, diff):
    assert replica_diff(rc(replicas), [pod(f"p{i}") for i in range(live)]) == diff


@pytest.mark.parametrize(
    ("phase", "active"),
    [("Pending", True), ("Running", True), ("Unknown", True), ("Succeeded", False), ("Failed", False)],
)
def test_finished_pods_do_not_count(phase, active):
    assert is_active(pod("p", phase=phase)) is active


def test_pod_being_deleted_does_not_count():
    p = pod("p")
    p.metadata.deletion_timestamp.seconds = 5
    assert not is_active(p)


def test_scale_down_order():
    pods = [
        pod("old-ready", created=100),
        pod("new-ready", created=900),
        pod("crashy", created=100, restarts=5),
        pod("not-ready", ready=False, created=100),
        pod("pending", phase="Pending", ready=False, created=100),
        pod("unscheduled", node="", phase="Pending", ready=False, created=50),
    ]
    assert [p.metadata.name for p in deletion_order(pods)] == [
        "unscheduled", "pending", "not-ready", "crashy", "new-ready", "old-ready"
    ]


def test_scale_down_order_is_deterministic_on_ties():
    pods = [pod("b"), pod("a"), pod("c")]
    assert [p.metadata.name for p in deletion_order(pods)] == ["a", "b", "c"]
    assert [p.metadata.name for p in deletion_order(list(reversed(pods)))] == ["a", "b", "c"]


def test_status_counts_replicas_ready_available_and_labels():
    pods = [
        pod("a", ready_since=1000),
        pod("b", ready_since=1090),  # ready, but not for min_ready_seconds yet
        pod("c", ready=False),
        pod("d", labels={"app": "web"}, ready_since=1000),  # matches the selector, lacks a template label
    ]
    status = compute_status(rc(min_ready_seconds=30), pods, now=1100)
    assert (status.replicas, status.ready_replicas, status.available_replicas, status.fully_labeled_replicas) == (
        4, 3, 2, 3
    )
    assert status.observed_generation == 4


def test_a_foreground_deletion_deletes_the_owned_pods_then_lets_the_finalizer_go():
    controller = rc()
    owned = [pod("a"), pod("b")]
    for p in owned:
        p.metadata.owner_references.add(uid="rc-uid", name="web", kind="ReplicationController", controller=True)
    stranger = pod("c")
    stranger.metadata.owner_references.add(uid="other-uid", name="api", kind="ReplicationController", controller=True)
    owned[1].metadata.deletion_timestamp.seconds = 2000  # already terminating: not deleted again
    doomed, finished = foreground_plan(controller, [*owned, stranger, pod("orphan")])
    assert [p.metadata.name for p in doomed] == ["a"] and not finished
    doomed, finished = foreground_plan(controller, [owned[1], stranger])
    assert doomed == [] and not finished  # a terminating pod still holds the controller
    assert foreground_plan(controller, [stranger]) == ([], True)


def test_without_finalizer_keeps_the_others():
    controller = rc()
    controller.metadata.finalizers.extend(["example.com/keep", "foregroundDeletion"])
    assert list(without_finalizer(controller, "foregroundDeletion").metadata.finalizers) == ["example.com/keep"]
    assert list(controller.metadata.finalizers) == ["example.com/keep", "foregroundDeletion"]
