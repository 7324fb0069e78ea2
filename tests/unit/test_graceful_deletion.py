"""Graceful deletion's decisions in the API server, without etcd: what a Delete does to the
stored object (registry.plan_deletion), a pod's grace period (Kubernetes' CheckGracefulDelete),
the update that finalizes a deletion, and the finalizer rules."""

from __future__ import annotations

import copy
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import meta_pb2, pod_pb2, service_pb2
from services.apiserver.errors import ApiError
from services.apiserver.registry import plan_deletion, removed_by_update, validate_finalizers
from services.apiserver.strategies import bind_pod, pod_grace_period, strategy_for
from services.common.resources import PODS, SERVICES

NOW = Timestamp(seconds=1_800_000_000)
POD_PERIOD = strategy_for(PODS).graceful_delete_period
SERVICE_PERIOD = strategy_for(SERVICES).graceful_delete_period


def pod(
    node: str = "node-1", phase: str = "Running", spec_grace: int | None = 30, *, finalizers: tuple[str, ...] = (),
    marked_at: int | None = None, marked_grace: int | None = None, annotations: dict[str, str] | None = None,
) -> pod_pb2.Pod:
    made = pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(
            name="web", namespace="default", uid="uid-1", generation=1, finalizers=list(finalizers),
            annotations=annotations or {},
        ),
        spec=pod_pb2.PodSpec(containers=[pod_pb2.Container(name="c", image="busybox")], node_name=node),
        status=pod_pb2.PodStatus(phase=phase),
    )
    if spec_grace is not None:
        made.spec.termination_grace_period_seconds = spec_grace
    if marked_at is not None:
        made.metadata.deletion_timestamp.seconds = marked_at
    if marked_grace is not None:
        made.metadata.deletion_grace_period_seconds = marked_grace
    return made


def service(*, finalizers: tuple[str, ...] = (), marked_at: int | None = None) -> service_pb2.Service:
    made = service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(name="svc", namespace="default", generation=1, finalizers=list(finalizers))
    )
    if marked_at is not None:
        made.metadata.deletion_timestamp.seconds = marked_at
        made.metadata.deletion_grace_period_seconds = 0
    return made


T = NOW.seconds


def outcome(obj: Any, requested: int | None, period=POD_PERIOD) -> Any:
    """"now", "pending", or (deletionTimestamp seconds, grace, generation) of the marked object."""
    before = copy.deepcopy(obj)
    decision = plan_deletion(obj, requested, period, NOW)
    assert obj == before, "plan_deletion changed its input"
    if decision.now:
        assert decision.marked is None
        return "now"
    if decision.marked is None:
        return "pending"
    meta = decision.marked.metadata
    return (meta.deletion_timestamp.seconds, meta.deletion_grace_period_seconds, meta.generation)


@pytest.mark.parametrize(
    ("obj", "requested", "expected"),
    [
        # A bound pod: marked with the request's grace, else its own; the first marking bumps the generation.
        pytest.param(pod(), None, (T + 30, 30, 2), id="bound-pod-its-own-grace"),
        pytest.param(pod(spec_grace=None), None, (T + 30, 30, 2), id="bound-pod-default-30"),
        pytest.param(pod(spec_grace=7), 3, (T + 3, 3, 2), id="bound-pod-the-requests-grace"),
        pytest.param(pod(), -4, (T + 1, 1, 2), id="negative-means-1"),
        pytest.param(pod(), 0, "now", id="force"),
        pytest.param(pod(spec_grace=0), None, "now", id="spec-grace-0"),
        pytest.param(pod(node=""), 30, "now", id="unbound-pod"),
        pytest.param(pod(phase="Succeeded"), None, "now", id="succeeded-pod"),
        pytest.param(pod(phase="Failed"), 30, "now", id="failed-pod"),
        pytest.param(
            pod(annotations={"kubernetes.io/config.mirror": "hash"}), None, "now", id="mirror-pod-its-kubelet-remakes"
        ),
        # A graceful deletion under way: only a shorter grace changes it, moving the deadline by the difference.
        pytest.param(pod(marked_at=T + 20, marked_grace=30), None, "pending", id="again-pending"),
        pytest.param(pod(marked_at=T + 20, marked_grace=30), 30, "pending", id="again-same-grace"),
        pytest.param(pod(marked_at=T + 20, marked_grace=30), 60, "pending", id="again-longer"),
        pytest.param(pod(marked_at=T + 20, marked_grace=30), 5, (T - 5, 5, 1), id="again-shorter"),
        pytest.param(pod(marked_at=T + 20, marked_grace=30), 0, "now", id="again-force"),
        # Finalizers: only marked (grace 0), whatever the grace; removed by the update that empties them.
        pytest.param(pod(node="", finalizers=("a.io/x",)), None, (T, 0, 2), id="unbound-pod-with-finalizer"),
        pytest.param(pod(finalizers=("a.io/x",)), None, (T + 30, 30, 2), id="bound-pod-with-finalizer"),
        pytest.param(
            pod(finalizers=("a.io/x",), marked_at=T + 20, marked_grace=30), 0, (T - 10, 0, 1),
            id="kubelets-delete-of-a-finalized-pod",
        ),
        pytest.param(
            pod(finalizers=("a.io/x",), marked_at=T - 5, marked_grace=0), 0, (T - 5, 0, 1),
            id="finalized-again-keeps-the-time",
        ),
        pytest.param(pod(marked_at=T - 5, marked_grace=0), None, "now", id="marked-no-grace-no-finalizers"),
    ],
)
def test_pod_deletion(obj, requested, expected) -> None:
    assert outcome(obj, requested) == expected


@pytest.mark.parametrize(
    ("obj", "requested", "expected"),
    [
        pytest.param(service(), 30, "now", id="no-graceful-deletion"),
        pytest.param(service(finalizers=("a.io/x",)), 30, (T, 0, 2), id="with-finalizer-marked"),
        pytest.param(service(finalizers=("a.io/x",), marked_at=T - 9), None, (T - 9, 0, 1), id="marked-again"),
        # An RC's Orphan delete marks it with no grace: the next attempt removes it.
        pytest.param(service(marked_at=T - 1), None, "now", id="marked-without-finalizers"),
    ],
)
def test_other_kinds_deletion(obj, requested, expected) -> None:
    assert outcome(obj, requested, SERVICE_PERIOD) == expected


@pytest.mark.parametrize(
    ("old", "finalizers", "removed"),
    [
        pytest.param(pod(finalizers=("a.io/x",), marked_at=T, marked_grace=0), (), True, id="emptied-no-grace"),
        pytest.param(pod(finalizers=("a.io/x", "a.io/y"), marked_at=T, marked_grace=0), ("a.io/y",), False,
                     id="one-left"),
        pytest.param(pod(finalizers=("a.io/x",)), (), False, id="not-being-deleted"),
        # A pod still terminating is removed by its kubelet's Delete, not by the update.
        pytest.param(pod(finalizers=("a.io/x",), marked_at=T + 30, marked_grace=30), (), False, id="grace-left"),
        pytest.param(service(finalizers=("a.io/x",), marked_at=T), (), True, id="service"),
    ],
)
def test_removed_by_update(old, finalizers, removed) -> None:
    updated = copy.deepcopy(old)
    del updated.metadata.finalizers[:]
    updated.metadata.finalizers.extend(finalizers)
    assert removed_by_update(updated, old) is removed


def test_finalizer_rules() -> None:
    standard = ["example.com/hold", "orphan", "foregroundDeletion"]
    assert validate_finalizers(meta_pb2.ObjectMeta(finalizers=standard)) == []
    [bad] = validate_finalizers(meta_pb2.ObjectMeta(finalizers=["ok.io/a", "bad name"]))
    assert bad.path == "metadata.finalizers[1]"
    old = meta_pb2.ObjectMeta(finalizers=["a.io/x"])
    assert validate_finalizers(meta_pb2.ObjectMeta(finalizers=["a.io/x", "a.io/y"]), old) == []
    old.deletion_timestamp.seconds = T
    [added] = validate_finalizers(meta_pb2.ObjectMeta(finalizers=["a.io/x", "a.io/y"]), old)
    assert added.path == "metadata.finalizers" and "a.io/y" in added.reason
    assert validate_finalizers(meta_pb2.ObjectMeta(), old) == []  # removing is always allowed
    [many] = validate_finalizers(meta_pb2.ObjectMeta(finalizers=[f"a.io/f{i}" for i in range(65)]))
    assert many.path == "metadata.finalizers"


@pytest.mark.parametrize(
    ("obj", "requested", "grace"),
    [
        pytest.param(pod(), None, 30, id="its-own"),
        pytest.param(pod(spec_grace=None), None, 30, id="default"),
        pytest.param(pod(), 2, 2, id="requested"),
        pytest.param(pod(node=""), 10, 0, id="unbound"),
        pytest.param(pod(phase="Succeeded"), 10, 0, id="finished"),
    ],
)
def test_pod_grace_period(obj, requested, grace) -> None:
    assert pod_grace_period(obj, requested) == grace


def test_a_pod_being_deleted_is_never_bound() -> None:
    doomed = pod(node="", finalizers=("a.io/x",), marked_at=T, marked_grace=0)
    binding = pod_pb2.Binding(
        metadata=meta_pb2.ObjectMeta(name="web"), target=pod_pb2.ObjectReference(kind="Node", name="node-1")
    )
    with pytest.raises(ApiError) as error:
        bind_pod(doomed, binding, "default", NOW)
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "being deleted" in error.value.message
