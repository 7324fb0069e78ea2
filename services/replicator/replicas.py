"""The replication equation, free of I/O: which pods count, which to create, which to delete first.

A replication controller owns the pods whose controller owner reference names
its uid. Of those, the live ones (not Succeeded or Failed, not being deleted)
count against spec.replicas. New pods come from the template; when there are
too many, the least useful go first: unscheduled, then pending, then not ready,
then the ones that restart most, then the newest.
"""

from __future__ import annotations

import time

from kybernetes.v1 import meta_pb2, pod_pb2, replication_controller_pb2
from services.common.podutil import has_ready_condition, is_pod_available
from services.common.resources import API_VERSION, FOREGROUND_FINALIZER, REPLICATION_CONTROLLERS
from services.common.selectors import LabelSelector

CREATED_BY_ANNOTATION = "kybernetes.io/created-by"
_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}

ReplicationController = replication_controller_pb2.ReplicationController


def controller_ref(pod: pod_pb2.Pod) -> meta_pb2.OwnerReference | None:
    for ref in pod.metadata.owner_references:
        if ref.controller:
            return ref
    return None


def rc_controller_ref(pod: pod_pb2.Pod) -> meta_pb2.OwnerReference | None:
    """The pod's controller reference when its controller is a replication controller."""
    ref = controller_ref(pod)
    if ref is not None and ref.kind == REPLICATION_CONTROLLERS.name:
        return ref
    return None


def owner_reference(rc: ReplicationController) -> meta_pb2.OwnerReference:
    return meta_pb2.OwnerReference(
        api_version=API_VERSION,
        kind=REPLICATION_CONTROLLERS.name,
        name=rc.metadata.name,
        uid=rc.metadata.uid,
        controller=True,
    )


def new_pod(rc: ReplicationController) -> pod_pb2.Pod:
    """A pod from the controller's template, named `<rc>-<random>` by the API server."""
    template = rc.spec.template
    pod = pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(
            generate_name=f"{rc.metadata.name}-",
            namespace=rc.metadata.namespace,
            labels=template.metadata.labels,
            annotations=template.metadata.annotations,
            owner_references=[owner_reference(rc)],
        ),
    )
    pod.metadata.annotations[CREATED_BY_ANNOTATION] = rc.metadata.name
    pod.spec.CopyFrom(template.spec)
    pod.spec.node_name = ""  # a template never binds its copies; the scheduler does
    return pod


def is_being_deleted(rc: ReplicationController) -> bool:
    """An API server deleting a controller with propagation Orphan marks it first, then
    releases its pods: a controller in that state must neither adopt nor create."""
    return rc.metadata.HasField("deletion_timestamp")


def in_foreground_deletion(rc: ReplicationController) -> bool:
    return is_being_deleted(rc) and FOREGROUND_FINALIZER in rc.metadata.finalizers


def foreground_plan(rc: ReplicationController, pods: list[pod_pb2.Pod]) -> tuple[list[pod_pb2.Pod], bool]:
    """A foreground deletion of the controller, as Kubernetes' garbage collector does it:
    (its pods to delete now, whether its finalizer may go: none of its pods is left, not
    even a terminating one). Pure: `pods` are those of the controller's namespace."""
    uid = rc.metadata.uid
    owned = [pod for pod in pods if (ref := controller_ref(pod)) is not None and ref.uid == uid]
    return [pod for pod in owned if not pod.metadata.HasField("deletion_timestamp")], not owned


def without_finalizer(rc: ReplicationController, finalizer: str) -> ReplicationController:
    updated = ReplicationController()
    updated.CopyFrom(rc)
    kept = [name for name in updated.metadata.finalizers if name != finalizer]
    del updated.metadata.finalizers[:]
    updated.metadata.finalizers.extend(kept)
    return updated


def selector_of(rc: ReplicationController) -> LabelSelector:
    return LabelSelector.from_map(rc.spec.selector)


def _restarts(pod: pod_pb2.Pod) -> int:
    return max((status.restart_count for status in pod.status.container_statuses), default=0)


def _created(pod: pod_pb2.Pod) -> tuple[int, int]:
    stamp = pod.metadata.creation_timestamp
    return (stamp.seconds, stamp.nanos)


def deletion_order(pods: list[pod_pb2.Pod]) -> list[pod_pb2.Pod]:
    """The pods in the order a scale-down should delete them (first = first to go)."""

    def rank(pod: pod_pb2.Pod) -> tuple:
        seconds, nanos = _created(pod)
        return (
            1 if pod.spec.node_name else 0,  # unscheduled first
            _PHASE_RANK.get(pod.status.phase, 0),  # then pending, unknown, running
            1 if has_ready_condition(pod) else 0,  # then not ready
            -_restarts(pod),  # then the ones that crash most
            -seconds,  # then the newest
            -nanos,
            pod.metadata.name,
        )

    return sorted(pods, key=rank)


def replica_diff(rc: ReplicationController, active: list[pod_pb2.Pod]) -> int:
    """Pods to create (positive) or delete (negative)."""
    wanted = rc.spec.replicas if rc.spec.HasField("replicas") else 1
    return wanted - len(active)


def compute_status(
    rc: ReplicationController, active: list[pod_pb2.Pod], now: float | None = None
) -> replication_controller_pb2.ReplicationControllerStatus:
    now = time.time() if now is None else now
    template_labels = rc.spec.template.metadata.labels
    return replication_controller_pb2.ReplicationControllerStatus(
        replicas=len(active),
        fully_labeled_replicas=sum(
            1 for pod in active if all(pod.metadata.labels.get(k) == v for k, v in template_labels.items())
        ),
        ready_replicas=sum(1 for pod in active if has_ready_condition(pod)),
        available_replicas=sum(1 for pod in active if is_pod_available(pod, rc.spec.min_ready_seconds, now)),
        observed_generation=rc.metadata.generation,
    )
