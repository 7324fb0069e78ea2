"""What a pod's and a node's status mean: phases, readiness and conditions, defined once.

The scheduler, the endpoints and node-lifecycle controllers, the replicator,
the kubelet and kubecfg all ask the same questions ("is this pod over?", "is
it ready?", "is this node ready?"); they ask them here so that they agree.
"""

from __future__ import annotations

from typing import Iterable, Protocol, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import node_pb2, pod_pb2

PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
UNKNOWN = "Unknown"
TERMINATED_PHASES = (SUCCEEDED, FAILED)

# Condition types, as Kubernetes names them.
READY = "Ready"
CONTAINERS_READY = "ContainersReady"
INITIALIZED = "Initialized"
POD_SCHEDULED = "PodScheduled"

TRUE, FALSE = "True", "False"


class _Condition(Protocol):
    type: str
    status: str


ConditionT = TypeVar("ConditionT", bound=_Condition)


def find_condition(conditions: Iterable[ConditionT], type_: str) -> ConditionT | None:
    """The condition of that type in a repeated conditions field, if any."""
    for condition in conditions:
        if condition.type == type_:
            return condition
    return None


def is_terminated(pod: pod_pb2.Pod) -> bool:
    """Succeeded or Failed: the pod will never run again."""
    return pod.status.phase in TERMINATED_PHASES


def is_being_deleted(pod: pod_pb2.Pod) -> bool:
    return pod.metadata.HasField("deletion_timestamp")


def is_active(pod: pod_pb2.Pod) -> bool:
    """Not finished and not on its way out (what counts toward a controller's replicas)."""
    return not is_terminated(pod) and not is_being_deleted(pod)


def pod_ready_condition(pod: pod_pb2.Pod) -> pod_pb2.PodCondition | None:
    return find_condition(pod.status.conditions, READY)


def has_ready_condition(pod: pod_pb2.Pod) -> bool:
    """The pod's Ready condition is True (whatever its phase)."""
    condition = pod_ready_condition(pod)
    return condition is not None and condition.status == TRUE


def is_pod_ready(pod: pod_pb2.Pod) -> bool:
    """Running with Ready=True: the pod may take traffic."""
    return pod.status.phase == RUNNING and has_ready_condition(pod)


def is_pod_available(pod: pod_pb2.Pod, min_ready_seconds: int, now: float) -> bool:
    """Ready for at least min_ready_seconds."""
    condition = pod_ready_condition(pod)
    if condition is None or condition.status != TRUE:
        return False
    if min_ready_seconds <= 0:
        return True
    since = condition.last_transition_time.seconds
    return since > 0 and now - since >= min_ready_seconds


def set_pod_condition(
    pod: pod_pb2.Pod, type_: str, status: str, reason: str, message: str, now: Timestamp
) -> pod_pb2.PodCondition:
    """Sets a condition in place; its transition time moves only when its status changes."""
    condition = find_condition(pod.status.conditions, type_)
    if condition is None:
        condition = pod.status.conditions.add(type=type_)
    if condition.status != status or not condition.HasField("last_transition_time"):
        condition.last_transition_time.CopyFrom(now)
    condition.status, condition.reason, condition.message = status, reason, message
    return condition


def seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def node_ready_condition(node: node_pb2.Node) -> node_pb2.NodeCondition | None:
    return find_condition(node.status.conditions, READY)


def last_heartbeat(node: node_pb2.Node) -> float | None:
    """When the node's kubelet last posted its Ready condition (epoch seconds), if ever."""
    condition = node_ready_condition(node)
    if condition is None or not condition.HasField("last_heartbeat_time"):
        return None
    return seconds(condition.last_heartbeat_time)


def node_condition_ready(node: node_pb2.Node) -> bool:
    """The node's Ready condition says True, whatever its age: staleness is turned into
    Ready=Unknown by the node-lifecycle controller, which is an event the others see."""
    condition = node_ready_condition(node)
    return condition is not None and condition.status == TRUE


def is_node_ready(node: node_pb2.Node, now: float, grace_period: float) -> bool:
    """Ready=True, posted within the grace period: the node may take work."""
    if not node_condition_ready(node):
        return False
    heartbeat = last_heartbeat(node)
    return heartbeat is not None and now - heartbeat <= grace_period
