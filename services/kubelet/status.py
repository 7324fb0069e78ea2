"""A pod's status from what Docker reports and what the kubelet decided (pure).

Phase and conditions follow Kubernetes' kubelet (getPhase): a container that
never started keeps the pod Pending; a pod whose containers have all stopped is
Succeeded or Failed only when its restartPolicy will not bring them back.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import pod_pb2
from services.common.podutil import (
    CONTAINERS_READY,
    FAILED,
    FALSE,
    INITIALIZED,
    PENDING,
    POD_SCHEDULED,
    READY,
    RUNNING,
    SUCCEEDED,
    TERMINATED_PHASES,
    TRUE,
)

from .containers import CREATED, ContainerInfo

# Waiting reasons, as Kubernetes spells them.
CONTAINER_CREATING = "ContainerCreating"
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"
CREATE_CONTAINER_ERROR = "CreateContainerError"
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
# A pod whose sandbox could not be made (the pod's reason; its containers wait in ContainerCreating).
CREATE_POD_SANDBOX_ERROR = "CreatePodSandboxError"
# A pod on the pod network of a node that has no pod range yet (Kubernetes' NetworkNotReady).
NETWORK_NOT_READY = "NetworkNotReady"

def container_id_uri(docker_id: str) -> str:
    """A container's ID as its status shows it (Kubernetes' <runtime>://<id>)."""
    return f"docker://{docker_id}"


RESTART_ALWAYS = "Always"
RESTART_ON_FAILURE = "OnFailure"
RESTART_NEVER = "Never"


def restart_policy(pod: pod_pb2.Pod) -> str:
    return pod.spec.restart_policy or RESTART_ALWAYS


def should_restart(policy: str, info: ContainerInfo) -> bool:
    """Whether an exited container is brought back under the pod's restartPolicy."""
    if policy == RESTART_ALWAYS:
        return True
    if policy == RESTART_ON_FAILURE:
        return info.exit_code != 0
    return False


def timestamp(seconds: float) -> Timestamp:
    value = Timestamp()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


@dataclass
class ContainerObservation:
    """What the kubelet knows of one spec container."""

    spec: pod_pb2.Container
    # The newest Docker container for it, and the one before (for lastState).
    current: ContainerInfo | None = None
    previous: ContainerInfo | None = None
    # Why the kubelet holds it back when it is not running: (reason, message),
    # e.g. CrashLoopBackOff during a back-off, ErrImageNeverPull.
    waiting: tuple[str, str] | None = None
    # The readiness probe's verdict (True when there is no readiness probe).
    ready: bool = False


def terminated_state(info: ContainerInfo) -> pod_pb2.ContainerStateTerminated:
    if info.oom_killed:
        reason = "OOMKilled"
    elif info.failed_to_start:
        reason = "ContainerCannotRun"
    elif info.exit_code == 0:
        reason = "Completed"
    else:
        reason = "Error"
    state = pod_pb2.ContainerStateTerminated(
        exit_code=info.exit_code if info.exit_code is not None else -1,
        reason=reason,
        message=info.error,
        container_id=container_id_uri(info.id),
    )
    exit_code = info.exit_code or 0
    if exit_code > 128 and not info.failed_to_start:
        state.signal = exit_code - 128
    if info.started_at is not None:
        state.started_at.CopyFrom(timestamp(info.started_at))
    if info.finished_at is not None:
        state.finished_at.CopyFrom(timestamp(info.finished_at))
    return state


def container_status(observation: ContainerObservation) -> pod_pb2.ContainerStatus:
    spec = observation.spec
    current = observation.current
    previous = observation.previous
    status = pod_pb2.ContainerStatus(name=spec.name, image=spec.image)
    last: ContainerInfo | None = previous if previous is not None and previous.exited else None
    if current is None or current.state == CREATED:
        reason, message = observation.waiting or (CONTAINER_CREATING, "")
        status.state.waiting.reason = reason
        status.state.waiting.message = message
    elif current.running:
        status.state.running.SetInParent()
        if current.started_at is not None:
            status.state.running.started_at.CopyFrom(timestamp(current.started_at))
        status.ready = observation.ready
        status.started = True
    elif observation.waiting is not None:
        # Exited and to be restarted: waiting, with the run that ended as lastState.
        status.state.waiting.reason, status.state.waiting.message = observation.waiting
        last = current
    else:
        status.state.terminated.CopyFrom(terminated_state(current))
    if last is not None:
        status.last_state.terminated.CopyFrom(terminated_state(last))
    if current is not None:
        status.restart_count = current.restart_count
        status.container_id = container_id_uri(current.id)
        status.image_id = current.image_id
    elif previous is not None:
        status.restart_count = previous.restart_count
    return status


def pod_phase(policy: str, statuses: list[pod_pb2.ContainerStatus]) -> str:
    waiting = running = stopped = succeeded = 0
    for status in statuses:
        state = status.state
        if state.HasField("running"):
            running += 1
        elif state.HasField("terminated"):
            stopped += 1
            if state.terminated.exit_code == 0:
                succeeded += 1
        elif status.last_state.HasField("terminated"):
            stopped += 1  # waiting to restart after a run
        else:
            waiting += 1
    if waiting > 0:
        return PENDING
    if running > 0:
        return RUNNING
    if stopped > 0:
        if policy == RESTART_ALWAYS:
            return RUNNING
        if stopped == succeeded:
            return SUCCEEDED
        if policy == RESTART_NEVER:
            return FAILED
        return RUNNING
    return PENDING


def _condition(
    kind: str, ok: bool, previous: pod_pb2.PodStatus | None, now: float, reason: str = "", message: str = ""
) -> pod_pb2.PodCondition:
    value = TRUE if ok else FALSE
    condition = pod_pb2.PodCondition(
        type=kind, status=value, reason="" if ok else reason, message="" if ok else message
    )
    transition = None
    if previous is not None:
        for old in previous.conditions:
            if old.type == kind and old.status == value and old.HasField("last_transition_time"):
                transition = old.last_transition_time
    if transition is not None:
        condition.last_transition_time.CopyFrom(transition)
    else:
        condition.last_transition_time.CopyFrom(timestamp(float(int(now))))
    return condition


def compute_pod_status(
    pod: pod_pb2.Pod,
    observations: list[ContainerObservation],
    *,
    pod_ip: str,
    host_ip: str,
    start_time: float | None,
    now: float,
    previous: pod_pb2.PodStatus | None = None,
    reason: str = "",
    message: str = "",
) -> pod_pb2.PodStatus:
    statuses = [container_status(observation) for observation in observations]
    phase = pod_phase(restart_policy(pod), statuses)
    status = pod_pb2.PodStatus(phase=phase, host_ip=host_ip, pod_ip=pod_ip, reason=reason, message=message)
    if start_time is not None:
        status.start_time.CopyFrom(timestamp(float(int(start_time))))
    status.container_statuses.extend(statuses)
    unready = [s.name for s in statuses if not s.ready]
    containers_ready = bool(statuses) and not unready
    unready_message = f"containers with unready status: [{' '.join(unready)}]"
    terminal = phase in TERMINATED_PHASES
    status.conditions.extend([
        _condition(INITIALIZED, True, previous, now),
        _condition(
            READY, containers_ready and not terminal, previous, now,
            reason="PodCompleted" if terminal else "ContainersNotReady",
            message="" if terminal else unready_message,
        ),
        _condition(
            CONTAINERS_READY, containers_ready and not terminal, previous, now,
            reason="PodCompleted" if terminal else "ContainersNotReady",
            message="" if terminal else unready_message,
        ),
        _condition(POD_SCHEDULED, True, previous, now),
    ])
    return status
