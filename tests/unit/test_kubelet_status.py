"""Pod status computation: phase, container states and conditions."""

from __future__ import annotations

from kybernetes.v1 import pod_pb2
from services.common import podutil
from services.kubelet.containers import CREATED, EXITED, RUNNING, ContainerInfo
from services.kubelet.naming import LABEL_CONTAINER_NAME, LABEL_POD_UID, LABEL_RESTART_COUNT
from services.kubelet.status import (
    CREATE_POD_SANDBOX_ERROR,
    ContainerObservation,
    compute_pod_status,
    container_status,
    pod_phase,
)

NOW = 1_800_000_000.0


def _pod(*names: str, policy: str = "Always") -> pod_pb2.Pod:
    pod = pod_pb2.Pod()
    pod.metadata.name = "p"
    pod.metadata.namespace = "default"
    pod.spec.restart_policy = policy
    for name in names:
        pod.spec.containers.add(name=name, image="busybox")
    return pod


def _info(name: str, state: str, *, attempt: int = 0, exit_code: int | None = None, error: str = "",
          oom: bool = False, started: float | None = NOW - 10, finished: float | None = None) -> ContainerInfo:
    return ContainerInfo(
        id=f"{name}-{attempt}", name=f"kyb_{name}_{attempt}",
        labels={LABEL_CONTAINER_NAME: name, LABEL_POD_UID: "u", LABEL_RESTART_COUNT: str(attempt)},
        state=state, created_at=NOW - 20, exit_code=exit_code, error=error, oom_killed=oom,
        started_at=started, finished_at=finished if finished is not None else (NOW - 1 if state == EXITED else None),
    )


def _status(pod: pod_pb2.Pod, *observations: ContainerObservation, previous=None) -> pod_pb2.PodStatus:
    return compute_pod_status(pod, list(observations), pod_ip="172.17.0.9", host_ip="127.0.0.1",
                              start_time=NOW - 30, now=NOW, previous=previous)


def test_running_ready_pod() -> None:
    pod = _pod("a")
    status = _status(pod, ContainerObservation(pod.spec.containers[0], current=_info("a", RUNNING), ready=True))
    assert status.phase == "Running"
    assert status.pod_ip == "172.17.0.9" and status.host_ip == "127.0.0.1"
    assert status.start_time.seconds == int(NOW - 30)
    conditions = {c.type: c.status for c in status.conditions}
    assert conditions == {"Initialized": "True", "Ready": "True", "ContainersReady": "True", "PodScheduled": "True"}
    container = status.container_statuses[0]
    assert container.state.running.started_at.seconds == int(NOW - 10)
    assert container.ready and container.started
    assert container.container_id == "docker://a-0"


def test_not_yet_created_container_keeps_the_pod_pending() -> None:
    pod = _pod("a", "b")
    status = _status(
        pod,
        ContainerObservation(pod.spec.containers[0], current=_info("a", RUNNING), ready=True),
        ContainerObservation(pod.spec.containers[1], waiting=("ErrImageNeverPull", "no image")),
    )
    assert status.phase == "Pending"
    waiting = status.container_statuses[1].state.waiting
    assert (waiting.reason, waiting.message) == ("ErrImageNeverPull", "no image")
    ready = [c for c in status.conditions if c.type == "Ready"][0]
    assert ready.status == "False" and ready.reason == "ContainersNotReady"
    assert ready.message == "containers with unready status: [b]"


def test_created_but_not_started_is_container_creating() -> None:
    pod = _pod("a")
    status = _status(pod, ContainerObservation(pod.spec.containers[0], current=_info("a", CREATED, started=None)))
    assert status.container_statuses[0].state.waiting.reason == "ContainerCreating"
    assert status.phase == "Pending"


def test_crash_loop_is_waiting_with_last_state_and_running_phase() -> None:
    pod = _pod("a")
    observation = ContainerObservation(
        pod.spec.containers[0], current=_info("a", EXITED, attempt=3, exit_code=2),
        previous=_info("a", EXITED, attempt=2, exit_code=2), waiting=("CrashLoopBackOff", "back-off 4s"),
    )
    status = _status(pod, observation)
    container = status.container_statuses[0]
    assert container.state.waiting.reason == "CrashLoopBackOff"
    assert container.last_state.terminated.exit_code == 2
    assert container.last_state.terminated.container_id == "docker://a-3"
    assert container.restart_count == 3
    assert status.phase == "Running"


def test_phases_of_finished_pods() -> None:
    def phase(policy: str, *exit_codes: int) -> str:
        pod = _pod(*[f"c{i}" for i in range(len(exit_codes))], policy=policy)
        observations = [
            ContainerObservation(spec, current=_info(spec.name, EXITED, exit_code=code))
            for spec, code in zip(pod.spec.containers, exit_codes, strict=True)
        ]
        return _status(pod, *observations).phase

    assert phase("Never", 0, 0) == "Succeeded"
    assert phase("Never", 0, 1) == "Failed"
    assert phase("OnFailure", 0) == "Succeeded"
    assert phase("OnFailure", 1) == "Running"  # it will be restarted
    assert phase("Always", 0) == "Running"


def test_terminated_reasons_and_signal() -> None:
    spec = pod_pb2.Container(name="a", image="busybox")

    def terminated(info: ContainerInfo) -> pod_pb2.ContainerStateTerminated:
        return container_status(ContainerObservation(spec, current=info)).state.terminated

    assert terminated(_info("a", EXITED, exit_code=0)).reason == "Completed"
    assert terminated(_info("a", EXITED, exit_code=1)).reason == "Error"
    killed = terminated(_info("a", EXITED, exit_code=137, oom=True))
    assert (killed.reason, killed.signal) == ("OOMKilled", 9)
    cannot_run = terminated(_info("a", EXITED, exit_code=127, error='exec: "x": not found', started=None))
    assert cannot_run.reason == "ContainerCannotRun" and "not found" in cannot_run.message
    assert cannot_run.signal == 0 and cannot_run.exit_code == 127


def test_running_container_shows_the_previous_run_as_last_state() -> None:
    spec = pod_pb2.Container(name="a", image="busybox")
    status = container_status(ContainerObservation(
        spec, current=_info("a", RUNNING, attempt=1), previous=_info("a", EXITED, exit_code=137), ready=True,
    ))
    assert status.state.HasField("running")
    assert status.last_state.terminated.exit_code == 137
    assert status.restart_count == 1


def test_condition_transition_times_move_only_on_change() -> None:
    pod = _pod("a")
    spec = pod.spec.containers[0]
    first = compute_pod_status(pod, [ContainerObservation(spec, current=_info("a", RUNNING), ready=False)],
                               pod_ip="", host_ip="", start_time=None, now=NOW)
    later = compute_pod_status(pod, [ContainerObservation(spec, current=_info("a", RUNNING), ready=False)],
                               pod_ip="", host_ip="", start_time=None, now=NOW + 50, previous=first)
    changed = compute_pod_status(pod, [ContainerObservation(spec, current=_info("a", RUNNING), ready=True)],
                                 pod_ip="", host_ip="", start_time=None, now=NOW + 100, previous=later)

    def transition(status: pod_pb2.PodStatus, kind: str) -> int:
        return [c for c in status.conditions if c.type == kind][0].last_transition_time.seconds

    assert transition(later, "Ready") == transition(first, "Ready") == int(NOW)
    assert transition(changed, "Ready") == int(NOW + 100)
    assert transition(changed, "PodScheduled") == int(NOW)
    assert first == compute_pod_status(pod, [ContainerObservation(spec, current=_info("a", RUNNING), ready=False)],
                                       pod_ip="", host_ip="", start_time=None, now=NOW + 5, previous=first)


def test_completed_pod_is_not_ready() -> None:
    pod = _pod("a", policy="Never")
    status = _status(pod, ContainerObservation(pod.spec.containers[0], current=_info("a", EXITED, exit_code=0)))
    ready = [c for c in status.conditions if c.type == "Ready"][0]
    assert (ready.status, ready.reason) == ("False", "PodCompleted")


def test_pod_phase_of_no_containers_is_pending() -> None:
    assert pod_phase("Always", []) == "Pending"


def test_pod_whose_sandbox_failed_carries_the_reason_and_waits_creating() -> None:
    pod = _pod("a")
    waiting = ("ContainerCreating", "failed to create pod sandbox: x")
    status = compute_pod_status(
        pod, [ContainerObservation(pod.spec.containers[0], waiting=waiting)],
        pod_ip="", host_ip="127.0.0.1", start_time=NOW, now=NOW, reason=CREATE_POD_SANDBOX_ERROR, message="x",
    )
    assert (status.phase, status.reason, status.message) == (podutil.PENDING, "CreatePodSandboxError", "x")
    assert status.container_statuses[0].state.waiting.message == "failed to create pod sandbox: x"


def test_finished_phases_are_the_ones_podutil_calls_terminated() -> None:
    pod = _pod("a", policy="Never")
    for code in (0, 1):
        current = _info("a", EXITED, exit_code=code)
        finished = _status(pod, ContainerObservation(pod.spec.containers[0], current=current))
        assert finished.phase in podutil.TERMINATED_PHASES
        checked = pod_pb2.Pod(status=finished)
        assert podutil.is_terminated(checked) and not podutil.has_ready_condition(checked)
