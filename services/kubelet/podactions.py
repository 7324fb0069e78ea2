"""What a pod worker must do next, decided from what it sees (pure).

The model is the Kubernetes kubelet's computePodActions / SyncPod: one pure
function, `compute_pod_actions`, reads plain data — the pod's spec, the
containers the cache reports for it, what the worker remembers
(`PodWorkerState`), the time and the back-off delays — and returns
`PodActions`, plain data the worker (podworker.PodWorker) applies with Docker.
It does no I/O, never reads the clock and never changes its inputs: the
back-off bookkeeping it decides (a reset after a good run, a failure recorded
for a restart) and the changes to the worker's state are part of its answer.

A sync applies the answer in steps, in this order:

  1. containers: those not in the spec are killed and removed; duplicates,
     superseded attempts, changed specs and failed liveness probes are killed;
  2. the sandbox: one that died or no longer matches the pod is killed with
     its running containers (surplus sandboxes are killed at once);
  3. wiring: a sandbox that runs but was never wired into the pod network;
  4. start: a new sandbox when none runs, the containers to create and start,
     with the waiting reasons, back-off resets and when to wake;
  5. finish: the sandbox of a pod that is over is stopped; old dead
     containers are removed.

An answer holds the first of steps 1-4 that has work, because each is judged
on what the previous one left: the exit code and finish time of a container
killed in step 1 decide whether the sandbox restart of step 2 brings it back
(OnFailure) and when step 4 may restart it (its back-off runs from when it
ended). So the worker applies a step and asks again, as it always worked
through its steps on a fresh read of the cache; asking costs no Docker call.
Step 5 is reported whatever else is due, and the worker applies it last, from
the answer it gets once the other steps are done. What only an attempt can
tell — a sandbox or container that could not be made, started or wired — is
recorded by the worker in its state and the back-off, where the next answer
sees it.

A pod the API server is deleting (metadata.deletionTimestamp set) is not
synced but terminated (Kubernetes' SyncTerminatingPod): `compute_termination`
says which containers still run and the grace period they get (the
deletion's, never longer than one given before); once none runs, the worker
reports `terminal_pod_status` and the kubelet removes the pod from the API.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Hashable, Iterable, Mapping, Protocol

from kybernetes.v1 import pod_pb2
from services.common.podutil import CONTAINERS_READY, READY, TERMINATED_PHASES

from .containers import CREATED, ContainerInfo
from .dockerspec import sandbox_hash
from .naming import INFRA_CONTAINER_NAME, container_hash, grace_period_seconds
from .status import (
    CONTAINER_CREATING,
    CRASH_LOOP_BACK_OFF,
    RESTART_NEVER,
    RESTART_ON_FAILURE,
    pod_phase,
    restart_policy,
    should_restart,
)

# Dead containers kept per spec container besides the newest one: the previous
# run, for lastState and `logs --previous`. Dead sandboxes are not kept.
DEAD_CONTAINERS_KEPT = 1

# (pod uid, container name, spec hash): a new spec starts with no back-off.
# The sandbox's key has INFRA_CONTAINER_NAME and the sandbox hash.
BackoffKey = tuple[str, str, str]
# (reason, message) of a container the worker holds back.
Waiting = tuple[str, str]


def backoff_key(uid: str, container_name: str, spec_hash: str) -> BackoffKey:
    return (uid, container_name, spec_hash)


def pod_key(pod: pod_pb2.Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


class BackoffView(Protocol):
    """What the decision reads of the restart back-off (services.common.runtime.backoff.Backoff)."""

    @property
    def reset_after(self) -> float: ...

    def delay(self, key: Hashable) -> float: ...


# --- the worker's memory ---------------------------------------------------------------


@dataclass(frozen=True)
class CreateFailure:
    """A container or sandbox that could not be made, retried after its back-off."""

    reason: str
    message: str
    failed_at: float
    spec_hash: str


@dataclass(frozen=True)
class PodWorkerState:
    """What a pod worker remembers between syncs beyond what Docker shows."""

    # Containers that could not be created, by name (ErrImageNeverPull...).
    create_failures: Mapping[str, CreateFailure] = field(default_factory=dict)
    # The last sandbox that could not be made, started or wired; cleared once one starts.
    sandbox_failure: CreateFailure | None = None
    # Containers killed because their spec changed or their sandbox went: they
    # come back whatever the restartPolicy says, with no back-off.
    replacing: frozenset[str] = frozenset()

    def with_replacing(self, names: Iterable[str]) -> PodWorkerState:
        return replace(self, replacing=self.replacing | frozenset(names))

    def replaced(self, name: str) -> PodWorkerState:
        return replace(self, replacing=self.replacing - {name})

    def with_create_failure(self, name: str, failure: CreateFailure) -> PodWorkerState:
        return replace(self, create_failures={**self.create_failures, name: failure})

    def without_create_failures(self, names: Iterable[str]) -> PodWorkerState:
        gone = set(names)
        if not gone & self.create_failures.keys():
            return self
        return replace(self, create_failures={k: v for k, v in self.create_failures.items() if k not in gone})

    def with_sandbox_failure(self, failure: CreateFailure | None) -> PodWorkerState:
        return replace(self, sandbox_failure=failure)


# --- the answer --------------------------------------------------------------------------


class KillReason(StrEnum):
    NOT_IN_SPEC = "NotInSpec"
    # Several attempts of one container run (a crash between start and record): all but the newest.
    DUPLICATE = "Duplicate"
    # A running attempt with a newer (created or exited) attempt after it.
    SUPERSEDED = "Superseded"
    SPEC_CHANGED = "SpecChanged"
    LIVENESS_FAILED = "LivenessFailed"
    SANDBOX_CHANGED = "SandboxChanged"
    SANDBOX_GONE = "SandboxGone"


@dataclass(frozen=True)
class ContainerKill:
    container: ContainerInfo
    reason: KillReason
    detail: str = ""  # the liveness probe's failure


@dataclass(frozen=True)
class SandboxRestart:
    """The sandbox died or no longer matches the pod: its containers go with it (step 2)."""

    reason: KillReason  # SANDBOX_CHANGED or SANDBOX_GONE
    # The pod's running app containers, killed first; then the sandbox if it still runs.
    containers: tuple[ContainerInfo, ...]
    sandbox: ContainerInfo | None
    # Containers that come back in the new sandbox whatever the restartPolicy
    # (Never: none that ran; OnFailure: none that succeeded).
    replace: frozenset[str]


@dataclass(frozen=True)
class SandboxCreation:
    """A new sandbox for the pod (step 4), made before its containers are."""

    spec_hash: str
    attempt: int  # its restart count, in its name and labels
    # Failures are recorded under this key; it is reset once one starts after a failure.
    backoff_key: BackoffKey
    # Made before a crash and never started, for this very sandbox: start it.
    reuse: ContainerInfo | None = None
    # Made before a crash for an older pod spec: removed first.
    remove: ContainerInfo | None = None
    # The last sandbox failed: its back-off is reset once this one starts.
    clears_failure: bool = False


@dataclass(frozen=True)
class ContainerStart:
    """A container to create and start (step 4)."""

    spec: pod_pb2.Container
    spec_hash: str
    backoff_key: BackoffKey
    attempt: int = 0  # its restart count
    # Made before a crash and never started, for this spec and sandbox: just start it.
    reuse: ContainerInfo | None = None
    # Made but never started, for another spec or sandbox: removed first.
    remove: ContainerInfo | None = None
    # A restart (not a first start, not a replacement): one more back-off
    # failure, recorded when the container is made.
    record_restart: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class PodActions:
    """What to do now: the first of steps 1-4 with work, and step 5 (see the module docstring)."""

    # 1. Containers: the running ones not in the spec are killed, then every one
    #    not in the spec removed; then the other kills. `replace` joins the
    #    worker's state (a changed spec comes back whatever the restartPolicy).
    kill: tuple[ContainerKill, ...] = ()
    remove: tuple[ContainerInfo, ...] = ()
    replace: frozenset[str] = frozenset()
    # 2. The sandbox.
    sandbox_restart: SandboxRestart | None = None
    surplus_sandboxes: tuple[ContainerInfo, ...] = ()  # several run: all but the newest, no grace
    # 3. A running sandbox on the pod network that is not wired: wire it (or replace it).
    wire_sandbox: ContainerInfo | None = None
    # The sandbox the pod runs in (the newest running infra container), in every answer.
    sandbox: ContainerInfo | None = None
    # 4. Start, in `sandbox`; when none runs and containers are due, `create_sandbox` makes one.
    create_sandbox: SandboxCreation | None = None
    start: tuple[ContainerStart, ...] = ()
    waiting: Mapping[str, Waiting] = field(default_factory=dict)
    backoff_resets: tuple[BackoffKey, ...] = ()  # containers that ran long enough to be healthy again
    forget_create_failures: frozenset[str] = frozenset()  # failures of an older spec: try the new one now
    wake_at: float | None = None  # when a back-off ends
    # 5. Finish.
    stop_sandbox: ContainerInfo | None = None  # no container runs and none will run again
    garbage: tuple[ContainerInfo, ...] = ()

    @property
    def backoff_records(self) -> tuple[BackoffKey, ...]:
        return tuple(start.backoff_key for start in self.start if start.record_restart)

    @property
    def kills_containers(self) -> bool:
        return bool(self.kill or self.remove)

    @property
    def kills_sandbox(self) -> bool:
        return self.sandbox_restart is not None or bool(self.surplus_sandboxes)


# --- helpers shared with the worker --------------------------------------------------------


def containers_by_name(containers: Iterable[ContainerInfo]) -> dict[str, list[ContainerInfo]]:
    """Attempts per container name, oldest first."""
    by_name: dict[str, list[ContainerInfo]] = defaultdict(list)
    for info in sorted(containers, key=ContainerInfo.sort_key):
        by_name[info.container_name].append(info)
    return dict(by_name)


def running_sandbox(by_name: Mapping[str, list[ContainerInfo]]) -> ContainerInfo | None:
    """The newest running infra container."""
    running = [info for info in by_name.get(INFRA_CONTAINER_NAME, []) if info.running]
    return running[-1] if running else None


def sandbox_retry_at(uid: str, failure: CreateFailure, backoff: BackoffView) -> float:
    return failure.failed_at + backoff.delay(backoff_key(uid, INFRA_CONTAINER_NAME, failure.spec_hash))


def sandbox_waiting(failure: CreateFailure | None) -> Waiting:
    """The waiting state of a container whose sandbox is not there yet."""
    message = f"failed to create pod sandbox: {failure.message}" if failure is not None else ""
    return (CONTAINER_CREATING, message)


# --- the decision --------------------------------------------------------------------------


def compute_pod_actions(
    pod: pod_pb2.Pod,
    containers: Iterable[ContainerInfo],
    state: PodWorkerState,
    now: float,
    backoff: BackoffView,
    *,
    liveness_failures: Mapping[str, str] | None = None,
    wired_sandboxes: frozenset[str] = frozenset(),
) -> PodActions:
    """What to do for `pod` given its containers.

    liveness_failures: container id -> why its liveness probe fails.
    wired_sandboxes: ids of the pod's sandboxes that are wired into the pod network.
    Back-off keys use pod.metadata.uid.
    """
    by_name = containers_by_name(containers)
    sandbox = running_sandbox(by_name)
    finish = PodActions(
        sandbox=sandbox,
        stop_sandbox=sandbox if sandbox is not None and _finished(pod, by_name, state.replacing) else None,
        garbage=_garbage(by_name),
    )
    # 1. The containers.
    spec_names = {spec.name for spec in pod.spec.containers}
    not_in_spec = tuple(
        info
        for name, infos in by_name.items()
        if name != INFRA_CONTAINER_NAME and name not in spec_names
        for info in infos
    )
    kills, replacing = _container_kills(pod, by_name, liveness_failures or {})
    if not_in_spec or kills:
        doomed = tuple(ContainerKill(info, KillReason.NOT_IN_SPEC) for info in not_in_spec if info.running)
        return replace(finish, kill=doomed + kills, remove=not_in_spec, replace=replacing)
    # 2. The sandbox.
    restart, surplus = _sandbox_kills(pod, by_name)
    if restart is not None or surplus:
        return replace(finish, sandbox_restart=restart, surplus_sandboxes=surplus)
    # 3. Its wiring.
    if sandbox is not None and sandbox.on_pod_network and sandbox.id not in wired_sandboxes:
        return replace(finish, wire_sandbox=sandbox)
    # 4. Start.
    start = _start_step(pod, by_name, sandbox, state, now, backoff)
    return replace(
        finish,
        create_sandbox=start.create_sandbox,
        start=start.start,
        waiting=start.waiting,
        backoff_resets=start.backoff_resets,
        forget_create_failures=start.forget_create_failures,
        wake_at=start.wake_at,
    )


def _container_kills(
    pod: pod_pb2.Pod, by_name: Mapping[str, list[ContainerInfo]], liveness_failures: Mapping[str, str]
) -> tuple[tuple[ContainerKill, ...], frozenset[str]]:
    """Running spec containers that must stop, and those of them that come back as replacements."""
    kills: list[ContainerKill] = []
    replacing: set[str] = set()
    for spec in pod.spec.containers:
        attempts = by_name.get(spec.name, [])
        running = [info for info in attempts if info.running]
        if not running:
            continue
        kills.extend(ContainerKill(extra, KillReason.DUPLICATE) for extra in running[:-1])
        current = running[-1]
        if current is not attempts[-1]:
            kills.append(ContainerKill(current, KillReason.SUPERSEDED))
        elif current.spec_hash != container_hash(spec):
            kills.append(ContainerKill(current, KillReason.SPEC_CHANGED))
            replacing.add(spec.name)
        elif current.id in liveness_failures:
            kills.append(ContainerKill(current, KillReason.LIVENESS_FAILED, liveness_failures[current.id]))
    return tuple(kills), frozenset(replacing)


def _sandbox_kills(
    pod: pod_pb2.Pod, by_name: Mapping[str, list[ContainerInfo]]
) -> tuple[SandboxRestart | None, tuple[ContainerInfo, ...]]:
    """A sandbox that died or no longer matches the pod takes its containers with it."""
    infras = by_name.get(INFRA_CONTAINER_NAME, [])
    sandbox = infras[-1] if infras and infras[-1].running else None
    if sandbox is not None and sandbox.spec_hash == sandbox_hash(pod):
        return None, tuple(info for info in infras if info.running and info is not sandbox)
    running_apps = tuple(
        info for name, infos in by_name.items() if name != INFRA_CONTAINER_NAME for info in infos if info.running
    )
    if sandbox is None and not running_apps:
        return None, ()  # nothing runs: the start step decides whether a new sandbox is due
    policy = restart_policy(pod)
    replacing = set()
    for spec in pod.spec.containers:
        attempts = by_name.get(spec.name, [])
        current = attempts[-1] if attempts else None
        if policy == RESTART_NEVER and current is not None:
            continue  # a pod that must not restart stays as it ended
        if policy == RESTART_ON_FAILURE and current is not None and current.exited and current.exit_code == 0:
            continue
        replacing.add(spec.name)
    reason = KillReason.SANDBOX_CHANGED if sandbox is not None else KillReason.SANDBOX_GONE
    return SandboxRestart(reason, running_apps, sandbox, frozenset(replacing)), ()


@dataclass
class _StartStep:
    create_sandbox: SandboxCreation | None = None
    start: tuple[ContainerStart, ...] = ()
    waiting: dict[str, Waiting] = field(default_factory=dict)
    backoff_resets: tuple[BackoffKey, ...] = ()
    forget_create_failures: frozenset[str] = frozenset()
    wake_at: float | None = None

    def wake(self, at: float) -> None:
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)


def _start_step(
    pod: pod_pb2.Pod,
    by_name: Mapping[str, list[ContainerInfo]],
    sandbox: ContainerInfo | None,
    state: PodWorkerState,
    now: float,
    backoff: BackoffView,
) -> _StartStep:
    """Per container: start it, hold it back (and why, and until when), or leave it be."""
    uid = pod.metadata.uid
    policy = restart_policy(pod)
    step = _StartStep()
    due: list[pod_pb2.Container] = []
    resets: list[BackoffKey] = []
    forget: set[str] = set()
    for spec in pod.spec.containers:
        attempts = by_name.get(spec.name, [])
        current = attempts[-1] if attempts else None
        spec_hash = container_hash(spec)
        key = backoff_key(uid, spec.name, spec_hash)
        failure = state.create_failures.get(spec.name)
        if failure is not None and failure.spec_hash != spec_hash:
            forget.add(spec.name)  # a new spec: try it now
            failure = None
        if current is not None and current.running:
            continue
        if current is not None and current.state == CREATED:
            due.append(spec)  # left behind between create and start
            continue
        reset = False
        if current is not None and current.exited and spec.name not in state.replacing:
            if not should_restart(policy, current):
                continue
            if current.ran_for() >= backoff.reset_after:
                resets.append(key)  # it ran long enough: healthy again
                reset = True
            delay = 0.0 if reset else backoff.delay(key)
            ready_at = (current.finished_at or now) + delay
            if now < ready_at:
                step.waiting[spec.name] = (
                    CRASH_LOOP_BACK_OFF,
                    f"back-off {delay:g}s restarting failed container={spec.name} pod={pod_key(pod)}",
                )
                step.wake(ready_at)
                continue
        if failure is not None:
            retry_at = failure.failed_at + (0.0 if reset else backoff.delay(key))
            if now < retry_at:
                step.waiting[spec.name] = (failure.reason, failure.message)
                step.wake(retry_at)
                continue
        due.append(spec)
    step.backoff_resets = tuple(resets)
    step.forget_create_failures = frozenset(forget)
    if not due:
        return step

    joined_id: str | None = sandbox.id if sandbox is not None else None
    if sandbox is None:
        failure = state.sandbox_failure
        expected = sandbox_hash(pod)
        if failure is not None and failure.spec_hash == expected:
            retry_at = sandbox_retry_at(uid, failure, backoff)
            if now < retry_at:
                for spec in due:
                    step.waiting.setdefault(spec.name, sandbox_waiting(failure))
                step.wake(retry_at)
                return step
        step.create_sandbox = _sandbox_creation(uid, by_name, expected, clears_failure=failure is not None)
        reused = step.create_sandbox.reuse
        joined_id = reused.id if reused is not None else None  # a new sandbox: its id is not known yet
    step.start = tuple(_container_start(uid, spec, by_name, joined_id, state) for spec in due)
    return step


def _sandbox_creation(
    uid: str, by_name: Mapping[str, list[ContainerInfo]], expected: str, *, clears_failure: bool
) -> SandboxCreation:
    infras = by_name.get(INFRA_CONTAINER_NAME, [])
    current = infras[-1] if infras else None
    key = backoff_key(uid, INFRA_CONTAINER_NAME, expected)
    if current is not None and current.state == CREATED:
        if current.spec_hash == expected:
            return SandboxCreation(expected, current.restart_count, key, reuse=current, clears_failure=clears_failure)
        return SandboxCreation(expected, current.restart_count, key, remove=current, clears_failure=clears_failure)
    attempt = current.restart_count + 1 if current is not None else 0
    return SandboxCreation(expected, attempt, key, clears_failure=clears_failure)


def _container_start(
    uid: str,
    spec: pod_pb2.Container,
    by_name: Mapping[str, list[ContainerInfo]],
    sandbox_id: str | None,
    state: PodWorkerState,
) -> ContainerStart:
    attempts = by_name.get(spec.name, [])
    current = attempts[-1] if attempts else None
    spec_hash = container_hash(spec)
    key = backoff_key(uid, spec.name, spec_hash)
    if current is None:
        return ContainerStart(spec, spec_hash, key)
    if current.state == CREATED:
        if current.spec_hash == spec_hash and sandbox_id is not None and current.sandbox_id == sandbox_id:
            return ContainerStart(spec, spec_hash, key, current.restart_count, reuse=current)
        return ContainerStart(spec, spec_hash, key, current.restart_count, remove=current)
    return ContainerStart(
        spec, spec_hash, key, current.restart_count + 1, record_restart=spec.name not in state.replacing
    )


def _finished(pod: pod_pb2.Pod, by_name: Mapping[str, list[ContainerInfo]], replacing: frozenset[str]) -> bool:
    """No container runs and none will run again."""
    policy = restart_policy(pod)
    for spec in pod.spec.containers:
        attempts = by_name.get(spec.name, [])
        if not attempts:
            return False
        current = attempts[-1]
        if not current.exited or spec.name in replacing or should_restart(policy, current):
            return False
    return True


def _garbage(by_name: Mapping[str, list[ContainerInfo]]) -> tuple[ContainerInfo, ...]:
    """Dead attempts before the newest, per container, but the DEAD_CONTAINERS_KEPT latest of them."""
    doomed: list[ContainerInfo] = []
    for name, attempts in by_name.items():
        dead = [info for info in attempts[:-1] if info.exited]
        keep = 0 if name == INFRA_CONTAINER_NAME else DEAD_CONTAINERS_KEPT
        doomed.extend(dead[: max(0, len(dead) - keep)])
    return tuple(doomed)


# --- termination: a pod the API server is deleting -----------------------------------------

# Kubernetes' reason, message and exit code for a container with no terminated state when
# its pod is terminated (one that never started, or that the runtime lost).
CONTAINER_STATUS_UNKNOWN = "ContainerStatusUnknown"
CONTAINER_STATUS_UNKNOWN_MESSAGE = "The container could not be located when the pod was terminated"
CONTAINER_STATUS_UNKNOWN_EXIT_CODE = 137
POD_COMPLETED = "PodCompleted"


def is_terminating(pod: pod_pb2.Pod) -> bool:
    """The API server is deleting the pod: it is stopped, never started again."""
    return pod.metadata.HasField("deletion_timestamp")


def termination_grace_period(pod: pod_pb2.Pod, previous: int | None = None) -> int:
    """The grace period a terminating pod's containers get (Kubernetes' calculateEffectiveGracePeriod):
    the deletion's (metadata.deletionGracePeriodSeconds) when above 0, else the pod's
    spec.terminationGracePeriodSeconds; never longer than one given before (a second Delete
    may only shorten it)."""
    meta = pod.metadata
    if meta.HasField("deletion_grace_period_seconds") and meta.deletion_grace_period_seconds > 0:
        grace = int(meta.deletion_grace_period_seconds)
    else:
        grace = grace_period_seconds(pod)
    return grace if previous is None else min(grace, previous)


@dataclass(frozen=True)
class PodTermination:
    """What stopping a terminating pod takes now: its running app containers, all at once,
    then (once they have stopped) its running sandboxes, each SIGTERM, `grace` seconds, SIGKILL."""

    grace: int
    kill: tuple[ContainerInfo, ...] = ()
    kill_sandboxes: tuple[ContainerInfo, ...] = ()

    @property
    def stopped(self) -> bool:
        """Nothing of the pod runs: its final status can be reported and the pod removed."""
        return not self.kill and not self.kill_sandboxes


def compute_termination(
    pod: pod_pb2.Pod, containers: Iterable[ContainerInfo], previous_grace: int | None = None
) -> PodTermination:
    """The next step of stopping `pod` (pure): the app containers first, the sandbox after them."""
    grace = termination_grace_period(pod, previous_grace)
    running = [info for info in sorted(containers, key=ContainerInfo.sort_key) if info.running]
    apps = tuple(info for info in running if not info.is_infra)
    if apps:
        return PodTermination(grace, kill=apps)
    return PodTermination(grace, kill_sandboxes=tuple(info for info in running if info.is_infra))


def terminal_pod_status(status: pod_pb2.PodStatus, now: float) -> pod_pb2.PodStatus:
    """The final status of a terminated pod (a new message), as Kubernetes' kubelet reports it
    before the pod is removed (getPhase with podIsTerminal, statusManager.TerminatePod): every
    container terminated (one without a terminated state: ContainerStatusUnknown, exit code
    137), the phase Succeeded when every container exited 0, else Failed, whatever the
    restartPolicy, and the pod not ready."""
    final = pod_pb2.PodStatus()
    final.CopyFrom(status)
    for container in final.container_statuses:
        if container.state.HasField("terminated"):
            continue
        container.state.Clear()
        container.state.terminated.reason = CONTAINER_STATUS_UNKNOWN
        container.state.terminated.message = CONTAINER_STATUS_UNKNOWN_MESSAGE
        container.state.terminated.exit_code = CONTAINER_STATUS_UNKNOWN_EXIT_CODE
        container.ready = False
        container.started = False
    final.phase = pod_phase(RESTART_NEVER, list(final.container_statuses))
    if final.phase in TERMINATED_PHASES:
        for condition in final.conditions:
            if condition.type in (READY, CONTAINERS_READY):
                if condition.status != "False":
                    condition.last_transition_time.FromSeconds(int(now))
                condition.status, condition.reason, condition.message = "False", POD_COMPLETED, ""
    return final
