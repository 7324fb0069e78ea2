"""The pod worker's decision (podactions.compute_pod_actions), as tables.

Every case is a pod spec, the containers the cache reports, what the worker
remembers and the back-off it has recorded, at a fixed time; the expectation
is a compact rendering of the whole answer (anything not listed is empty).
Every call is also checked to leave its inputs as they were.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from kybernetes.v1 import pod_pb2
from services.common.runtime.backoff import Backoff
from services.kubelet.containers import CREATED, EXITED, RUNNING, ContainerInfo
from services.kubelet.naming import (
    INFRA_CONTAINER_NAME,
    LABEL_CONTAINER_HASH,
    LABEL_CONTAINER_NAME,
    LABEL_POD_IP,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
    LABEL_RESTART_COUNT,
    container_hash,
    sandbox_hash,
)
from services.kubelet.podactions import (
    CreateFailure,
    PodActions,
    PodWorkerState,
    backoff_key,
    compute_pod_actions,
    compute_termination,
    is_terminating,
    terminal_pod_status,
    termination_grace_period,
)

NOW = 1_800_000_000.0
UID = "uid-1"
INITIAL, MAXIMUM = 10.0, 300.0  # the back-off: 10 s doubling to 5 min; healthy again after 5 min of running


# --- building the inputs ----------------------------------------------------------------


def _pod(*names: str, policy: str = "Always", image: str = "busybox", port: int = 0) -> pod_pb2.Pod:
    pod = pod_pb2.Pod()
    pod.metadata.namespace, pod.metadata.name, pod.metadata.uid = "default", "web", UID
    pod.spec.restart_policy = policy
    for name in names or ("web",):
        container = pod.spec.containers.add(name=name, image=image)
        if port:
            container.ports.add(container_port=port)
    return pod


POD = _pod("web")
POD_TWO = _pod("web", "side")


def _spec(pod: pod_pb2.Pod, name: str) -> pod_pb2.Container:
    return next(spec for spec in pod.spec.containers if spec.name == name)


def _app(
    name: str, state: str = RUNNING, *, attempt: int = 0, pod: pod_pb2.Pod = POD_TWO, exit_code: int | None = None,
    started: float | None = NOW - 60, finished: float | None = None, spec_hash: str | None = None,
    sandbox: str = "POD-0", created: float | None = None,
) -> ContainerInfo:
    """An app container; its spec hash is the one of `name` in `pod` unless given."""
    if spec_hash is None:
        spec_hash = container_hash(_spec(pod, name)) if any(c.name == name for c in pod.spec.containers) else "gone"
    if state == EXITED and exit_code is None:
        exit_code = 0
    if state == EXITED and finished is None:
        finished = NOW - 1
    if state == CREATED:
        started = None
    return ContainerInfo(
        id=f"{name}-{attempt}", name=f"kyb_{name}_{attempt}",
        labels={
            LABEL_POD_UID: UID, LABEL_POD_NAMESPACE: "default", LABEL_POD_NAME: "web", LABEL_CONTAINER_NAME: name,
            LABEL_CONTAINER_HASH: spec_hash, LABEL_RESTART_COUNT: str(attempt),
        },
        state=state, created_at=created if created is not None else NOW - 100 + attempt, exit_code=exit_code,
        started_at=started, finished_at=finished, sandbox_id=sandbox,
    )


def _sandbox(
    state: str = RUNNING, *, attempt: int = 0, pod: pod_pb2.Pod = POD_TWO, spec_hash: str | None = None,
    pod_ip: str = "",
) -> ContainerInfo:
    labels = {
        LABEL_POD_UID: UID, LABEL_POD_NAMESPACE: "default", LABEL_POD_NAME: "web",
        LABEL_CONTAINER_NAME: INFRA_CONTAINER_NAME,
        LABEL_CONTAINER_HASH: spec_hash if spec_hash is not None else sandbox_hash(pod),
        LABEL_RESTART_COUNT: str(attempt),
    }
    if pod_ip:
        labels[LABEL_POD_IP] = pod_ip
    return ContainerInfo(
        id=f"POD-{attempt}", name=f"kyb_POD_{attempt}", labels=labels, state=state,
        created_at=NOW - 200 + attempt, exit_code=0 if state == EXITED else None,
        started_at=None if state == CREATED else NOW - 120, finished_at=NOW - 2 if state == EXITED else None,
        ip_address="172.17.0.9" if state == RUNNING and not pod_ip else "",
    )


def _key(name: str, pod: pod_pb2.Pod = POD_TWO) -> tuple[str, str, str]:
    if name == INFRA_CONTAINER_NAME:
        return backoff_key(UID, name, sandbox_hash(pod))
    return backoff_key(UID, name, container_hash(_spec(pod, name)))


def _failure(reason: str, message: str, *, ago: float, spec_hash: str) -> CreateFailure:
    return CreateFailure(reason=reason, message=message, failed_at=NOW - ago, spec_hash=spec_hash)


@dataclass
class Case:
    pod: pod_pb2.Pod
    containers: list[ContainerInfo]
    expected: dict[str, Any]
    state: PodWorkerState = field(default_factory=PodWorkerState)
    failures: dict[tuple[str, str, str], int] = field(default_factory=dict)  # back-off failures already recorded
    now: float = NOW
    liveness: dict[str, str] = field(default_factory=dict)
    wired: frozenset[str] = frozenset()


# --- deciding, and reading the answer ---------------------------------------------------------


def _decide(case: Case) -> PodActions:
    backoff = Backoff(INITIAL, MAXIMUM)
    for key, count in case.failures.items():
        for _ in range(count):
            backoff.record_failure(key, NOW - 1000)
    pod_before = pod_pb2.Pod()
    pod_before.CopyFrom(case.pod)
    containers_before = copy.deepcopy(case.containers)
    state_before = copy.deepcopy(case.state)
    entries_before = {key: backoff.failures(key) for key in case.failures}
    actions = compute_pod_actions(
        case.pod, list(case.containers), case.state, case.now, backoff,
        liveness_failures=case.liveness, wired_sandboxes=case.wired,
    )
    # A decision, not an action: nothing it was given has changed.
    assert case.pod == pod_before
    assert case.containers == containers_before
    assert case.state == state_before
    assert {key: backoff.failures(key) for key in case.failures} == entries_before
    assert len(backoff) == len(case.failures)
    # The same inputs, the same answer (the containers in any order).
    again = compute_pod_actions(
        case.pod, list(reversed(case.containers)), case.state, case.now, backoff,
        liveness_failures=case.liveness, wired_sandboxes=case.wired,
    )
    assert again == actions
    return actions


def _render(actions: PodActions) -> dict[str, Any]:
    """The answer in a few words; empty fields are left out."""
    out: dict[str, Any] = {}
    if actions.kill:
        out["kill"] = [
            f"{kill.container.id}:{kill.reason}" + (f" ({kill.detail})" if kill.detail else "") for kill in actions.kill
        ]
    if actions.remove:
        out["remove"] = [info.id for info in actions.remove]
    if actions.replace:
        out["replace"] = sorted(actions.replace)
    if actions.sandbox_restart is not None:
        restart = actions.sandbox_restart
        out["sandbox_restart"] = {
            "reason": str(restart.reason),
            "kill": [info.id for info in restart.containers],
            "sandbox": restart.sandbox.id if restart.sandbox is not None else None,
            "replace": sorted(restart.replace),
        }
    if actions.surplus_sandboxes:
        out["surplus_sandboxes"] = [info.id for info in actions.surplus_sandboxes]
    if actions.wire_sandbox is not None:
        out["wire_sandbox"] = actions.wire_sandbox.id
    if actions.create_sandbox is not None:
        creation = actions.create_sandbox
        words = [f"attempt={creation.attempt}"]
        if creation.reuse is not None:
            words.append(f"reuse={creation.reuse.id}")
        if creation.remove is not None:
            words.append(f"remove={creation.remove.id}")
        if creation.clears_failure:
            words.append("clears_failure")
        out["create_sandbox"] = " ".join(words)
    if actions.start:
        starts = []
        for start in actions.start:
            words = [start.name, f"attempt={start.attempt}"]
            if start.reuse is not None:
                words.append(f"reuse={start.reuse.id}")
            if start.remove is not None:
                words.append(f"remove={start.remove.id}")
            if start.record_restart:
                words.append("record_restart")
            starts.append(" ".join(words))
        out["start"] = starts
    if actions.waiting:
        out["waiting"] = dict(actions.waiting)
    if actions.backoff_resets:
        out["backoff_resets"] = [key[1] for key in actions.backoff_resets]
    if actions.forget_create_failures:
        out["forget_create_failures"] = sorted(actions.forget_create_failures)
    if actions.wake_at is not None:
        out["wake_in"] = actions.wake_at - NOW
    if actions.stop_sandbox is not None:
        out["stop_sandbox"] = actions.stop_sandbox.id
    if actions.garbage:
        out["garbage"] = [info.id for info in actions.garbage]
    return out


def _check(case: Case) -> PodActions:
    actions = _decide(case)
    assert _render(actions) == case.expected
    return actions


# --- starting ------------------------------------------------------------------------------


START_CASES = [
    pytest.param(Case(POD_TWO, [], {
        "create_sandbox": "attempt=0",
        "start": ["web attempt=0", "side attempt=0"],
    }), id="first-start-new-sandbox-and-every-container"),
    pytest.param(Case(POD_TWO, [_sandbox(), _app("web"), _app("side")], {}), id="running-pod-nothing-to-do"),
    pytest.param(Case(POD_TWO, [_sandbox(), _app("web")], {
        "start": ["side attempt=0"],
    }), id="missing-container-joins-the-running-sandbox"),
    pytest.param(Case(POD_TWO, [_sandbox(), _app("web"), _app("side", CREATED)], {
        "start": ["side attempt=0 reuse=side-0"],
    }), id="created-never-started-is-started"),
    pytest.param(Case(POD_TWO, [_sandbox(attempt=1), _app("web", sandbox="POD-1"), _app("side", CREATED)], {
        "start": ["side attempt=0 remove=side-0"],
    }), id="created-for-an-older-sandbox-is-remade"),
    pytest.param(Case(POD_TWO, [_sandbox(), _app("web"), _app("side", CREATED, spec_hash="old")], {
        "start": ["side attempt=0 remove=side-0"],
    }), id="created-for-an-older-spec-is-remade"),
    pytest.param(Case(POD_TWO, [
        _sandbox(EXITED), _sandbox(CREATED, attempt=1), _app("web", CREATED, sandbox="POD-1"),
    ], {
        "create_sandbox": "attempt=1 reuse=POD-1",
        "start": ["web attempt=0 reuse=web-0", "side attempt=0"],
        "garbage": ["POD-0"],
    }), id="created-sandbox-and-container-left-by-a-crash-are-started"),
    pytest.param(Case(POD_TWO, [_sandbox(CREATED, spec_hash="old")], {
        "create_sandbox": "attempt=0 remove=POD-0",
        "start": ["web attempt=0", "side attempt=0"],
    }), id="created-sandbox-of-an-older-spec-is-remade"),
    pytest.param(Case(POD, [_sandbox(pod=POD, pod_ip="10.88.0.5")], {
        "wire_sandbox": "POD-0",  # first: nothing starts in it before it is wired
    }), id="sandbox-on-the-pod-network-not-wired"),
    pytest.param(Case(POD, [_sandbox(pod=POD, pod_ip="10.88.0.5")], {
        "start": ["web attempt=0"],
    }, wired=frozenset({"POD-0"})), id="sandbox-on-the-pod-network-wired"),
]


@pytest.mark.parametrize("case", START_CASES)
def test_start(case: Case) -> None:
    _check(case)


# --- restart policy and back-off --------------------------------------------------------------


def _exited(policy: str, exit_code: int) -> Case:
    pod = _pod("web", policy=policy)
    return Case(pod, [_sandbox(pod=pod), _app("web", EXITED, pod=pod, exit_code=exit_code)], {})


RESTART_CASES = [
    pytest.param("Always", 0, {"start": ["web attempt=1 record_restart"]}, id="always-exit-0-restarts"),
    pytest.param("Always", 1, {"start": ["web attempt=1 record_restart"]}, id="always-exit-1-restarts"),
    pytest.param("OnFailure", 0, {"stop_sandbox": "POD-0"}, id="onfailure-exit-0-succeeded-sandbox-stopped"),
    pytest.param("OnFailure", 1, {"start": ["web attempt=1 record_restart"]}, id="onfailure-exit-1-restarts"),
    pytest.param("Never", 0, {"stop_sandbox": "POD-0"}, id="never-exit-0-succeeded-sandbox-stopped"),
    pytest.param("Never", 1, {"stop_sandbox": "POD-0"}, id="never-exit-1-failed-sandbox-stopped"),
]


@pytest.mark.parametrize(("policy", "exit_code", "expected"), RESTART_CASES)
def test_restart_policy(policy: str, exit_code: int, expected: dict[str, Any]) -> None:
    case = _exited(policy, exit_code)
    case.expected = expected
    _check(case)


def test_finished_pod_without_a_sandbox_has_nothing_to_do() -> None:
    pod = _pod("web", policy="Never")
    _check(Case(pod, [_sandbox(EXITED, pod=pod), _app("web", EXITED, pod=pod, exit_code=1)], {}))


BACKOFF_MESSAGE = "back-off {}s restarting failed container=web pod=default/web"

BACKOFF_CASES = [
    pytest.param(Case(POD, [_sandbox(pod=POD), _app("web", EXITED, pod=POD, exit_code=1, finished=NOW - 5)], {
        "waiting": {"web": ("CrashLoopBackOff", BACKOFF_MESSAGE.format(20))},
        "wake_in": 15.0,
    }, failures={_key("web", POD): 2}), id="crash-loop-back-off-waits"),
    pytest.param(Case(POD, [_sandbox(pod=POD), _app("web", EXITED, pod=POD, exit_code=1, finished=NOW - 20)], {
        "start": ["web attempt=1 record_restart"],
    }, failures={_key("web", POD): 2}), id="crash-loop-back-off-over-restarts"),
    pytest.param(Case(POD, [_sandbox(pod=POD), _app("web", EXITED, pod=POD, exit_code=1, finished=NOW - 5)], {
        "waiting": {"web": ("CrashLoopBackOff", BACKOFF_MESSAGE.format(300))},
        "wake_in": 295.0,
    }, failures={_key("web", POD): 9}), id="back-off-is-capped"),
    pytest.param(Case(POD, [
        _sandbox(pod=POD),
        _app("web", EXITED, pod=POD, exit_code=1, started=NOW - MAXIMUM - 10, finished=NOW - 1),
    ], {
        "backoff_resets": ["web"],
        "start": ["web attempt=1 record_restart"],
    }, failures={_key("web", POD): 5}), id="back-off-reset-after-a-good-run"),
    pytest.param(Case(POD, [
        _sandbox(pod=POD),
        _app("web", EXITED, pod=POD, exit_code=1, started=NOW - MAXIMUM + 10, finished=NOW - 1),
    ], {
        "waiting": {"web": ("CrashLoopBackOff", BACKOFF_MESSAGE.format(160))},
        "wake_in": 159.0,
    }, failures={_key("web", POD): 5}), id="back-off-kept-after-a-short-run"),
    pytest.param(Case(POD, [
        _sandbox(pod=POD),
        _app("web", EXITED, pod=POD, exit_code=1, finished=NOW - 3),
    ], {
        "waiting": {"web": ("CrashLoopBackOff", BACKOFF_MESSAGE.format(10))},
        "wake_in": 7.0,
    }, failures={_key("web", POD): 1, backoff_key(UID, "web", "older-spec"): 6}), id="back-off-is-per-spec-hash"),
]


@pytest.mark.parametrize("case", BACKOFF_CASES)
def test_back_off(case: Case) -> None:
    _check(case)


# --- killing ---------------------------------------------------------------------------------


KILL_CASES = [
    pytest.param(Case(_pod("web", policy="Never"), [
        _sandbox(pod=_pod("web", policy="Never")), _app("web", pod=_pod("web", policy="Never"), spec_hash="old"),
    ], {
        "kill": ["web-0:SpecChanged"],
        "replace": ["web"],
    }), id="spec-changed-kill-and-replace-even-under-never"),
    pytest.param(Case(POD, [
        _sandbox(pod=POD), _app("web", pod=POD), _app("side", EXITED, pod=POD), _app("side", attempt=1, pod=POD),
    ], {
        "kill": ["side-1:NotInSpec"],
        "remove": ["side-0", "side-1"],
    }), id="container-removed-from-spec-killed-and-removed"),
    pytest.param(Case(POD, [_sandbox(pod=POD), _app("web", pod=POD)], {
        "kill": ["web-0:LivenessFailed (HTTP probe failed with statuscode: 500)"],
    }, liveness={"web-0": "HTTP probe failed with statuscode: 500"}), id="liveness-failure-kill"),
    pytest.param(Case(POD, [_sandbox(pod=POD), _app("web", pod=POD, created=NOW - 50), _app("web", pod=POD)], {
        "kill": ["web-0:Duplicate"],
    }), id="duplicate-running-containers-kill-the-older"),
    pytest.param(Case(POD, [
        _sandbox(pod=POD), _app("web", pod=POD), _app("web", EXITED, attempt=1, pod=POD),
    ], {
        "kill": ["web-0:Superseded"],  # what starts is decided once it is dead
    }), id="running-attempt-older-than-the-newest-kill"),
    pytest.param(Case(POD, [_sandbox(pod=POD), _sandbox(attempt=1, pod=POD), _app("web", pod=POD, sandbox="POD-1")], {
        "surplus_sandboxes": ["POD-0"],
    }), id="several-running-sandboxes-keep-the-newest"),
]


@pytest.mark.parametrize("case", KILL_CASES)
def test_kill(case: Case) -> None:
    _check(case)


@pytest.mark.parametrize(("policy", "replaced"), [
    pytest.param("Always", ["side", "web"], id="always-every-container"),
    pytest.param("OnFailure", ["web"], id="onfailure-not-the-one-that-succeeded"),
    pytest.param("Never", [], id="never-none"),
])
def test_sandbox_died_kills_apps_then_recreates_it(policy: str, replaced: list[str]) -> None:
    pod = _pod("web", "side", policy=policy)
    died = Case(pod, [_sandbox(EXITED, pod=pod), _app("web", pod=pod), _app("side", EXITED, pod=pod, exit_code=0)], {
        "sandbox_restart": {"reason": "SandboxGone", "kill": ["web-0"], "sandbox": None, "replace": replaced},
    })
    actions = _check(died)
    assert actions.sandbox_restart is not None

    # Once killed (a SIGTERM'd container exits 143), the next decision starts a new sandbox
    # with the containers being replaced: no back-off, whatever the policy.
    state = died.state.with_replacing(actions.sandbox_restart.replace)
    killed = _app("web", EXITED, pod=pod, exit_code=143)
    after = Case(pod, [_sandbox(EXITED, pod=pod), killed, _app("side", EXITED, pod=pod, exit_code=0)], {}, state=state)
    if replaced:
        after.expected = {
            "create_sandbox": "attempt=1",
            "start": [f"{name} attempt=1" for name in ("web", "side") if name in replaced],
        }
    _check(after)


def test_sandbox_spec_changed_kills_apps_and_sandbox() -> None:
    _check(Case(POD, [_sandbox(pod=POD, spec_hash="old-ports"), _app("web", pod=POD)], {
        "sandbox_restart": {"reason": "SandboxChanged", "kill": ["web-0"], "sandbox": "POD-0", "replace": ["web"]},
    }))
    # A new port changes the sandbox's hash.
    with_port = _pod("web", port=8080)
    _check(Case(with_port, [_sandbox(pod=POD), _app("web", pod=with_port)], {
        "sandbox_restart": {"reason": "SandboxChanged", "kill": ["web-0"], "sandbox": "POD-0", "replace": ["web"]},
    }))


def test_spec_change_replaced_after_the_kill_whatever_the_policy() -> None:
    pod = _pod("web", policy="Never")
    first = _check(Case(pod, [_sandbox(pod=pod), _app("web", pod=pod, spec_hash="old")], {
        "kill": ["web-0:SpecChanged"], "replace": ["web"],
    }))
    state = PodWorkerState().with_replacing(first.replace)
    _check(Case(pod, [_sandbox(pod=pod), _app("web", EXITED, pod=pod, exit_code=137, spec_hash="old")], {
        "start": ["web attempt=1"],  # a replacement: no back-off failure recorded
    }, state=state, failures={_key("web", pod): 3}))


# --- failures the worker remembers -------------------------------------------------------------


SANDBOX_FAILED = _failure("CreatePodSandboxError", "port is already allocated", ago=2, spec_hash=sandbox_hash(POD))
NEVER_PULL = 'Container image "busybox" is not present with pull policy of Never'

FAILURE_CASES = [
    pytest.param(Case(POD, [], {
        "waiting": {"web": ("ContainerCreating", "failed to create pod sandbox: port is already allocated")},
        "wake_in": 8.0,
    }, state=PodWorkerState(sandbox_failure=SANDBOX_FAILED), failures={_key("POD", POD): 1}),
        id="sandbox-failed-in-back-off-containers-wait"),
    pytest.param(Case(POD, [], {
        "create_sandbox": "attempt=0 clears_failure",
        "start": ["web attempt=0"],
    }, state=PodWorkerState(sandbox_failure=SANDBOX_FAILED), failures={_key("POD", POD): 1}, now=NOW + 8),
        id="sandbox-failed-back-off-over-retry"),
    pytest.param(Case(POD, [], {
        "create_sandbox": "attempt=0 clears_failure",
        "start": ["web attempt=0"],
    }, state=PodWorkerState(sandbox_failure=_failure("CreatePodSandboxError", "x", ago=2, spec_hash="old")),
        failures={backoff_key(UID, "POD", "old"): 4}), id="sandbox-failed-for-an-older-spec-retry-now"),
    pytest.param(Case(POD, [_sandbox(pod=POD)], {
        "waiting": {"web": ("ErrImageNeverPull", NEVER_PULL)},
        "wake_in": 7.0,
    }, state=PodWorkerState(create_failures={
        "web": _failure("ErrImageNeverPull", NEVER_PULL, ago=3, spec_hash=container_hash(_spec(POD, "web"))),
    }), failures={_key("web", POD): 1}), id="create-failure-in-back-off-waits"),
    pytest.param(Case(POD, [_sandbox(pod=POD)], {
        "start": ["web attempt=0"],
    }, state=PodWorkerState(create_failures={
        "web": _failure("ErrImageNeverPull", NEVER_PULL, ago=10, spec_hash=container_hash(_spec(POD, "web"))),
    }), failures={_key("web", POD): 1}), id="create-failure-back-off-over-retry"),
    pytest.param(Case(POD, [_sandbox(pod=POD)], {
        "forget_create_failures": ["web"],
        "start": ["web attempt=0"],
    }, state=PodWorkerState(create_failures={
        "web": _failure("ErrImageNeverPull", NEVER_PULL, ago=1, spec_hash="an-older-spec"),
    }), failures={backoff_key(UID, "web", "an-older-spec"): 5}), id="new-spec-after-a-create-failure-try-now"),
    pytest.param(Case(POD, [_sandbox(pod=POD), _app("web", pod=POD)], {
        "forget_create_failures": ["web"],
    }, state=PodWorkerState(create_failures={
        "web": _failure("ErrImageNeverPull", NEVER_PULL, ago=1, spec_hash="an-older-spec"),
    })), id="create-failure-of-an-older-spec-forgotten-while-running"),
    pytest.param(Case(POD_TWO, [_sandbox(), _app("web", EXITED, exit_code=2, finished=NOW - 4)], {
        "waiting": {
            "web": ("CrashLoopBackOff", BACKOFF_MESSAGE.format(10)),
            "side": ("CreateContainerConfigError", "volume data: no such directory"),
        },
        "wake_in": 6.0,
    }, state=PodWorkerState(create_failures={
        "side": _failure("CreateContainerConfigError", "volume data: no such directory", ago=1,
                         spec_hash=container_hash(_spec(POD_TWO, "side"))),
    }), failures={_key("web"): 1, _key("side"): 2}), id="wake-at-the-earliest-back-off-end"),
]


@pytest.mark.parametrize("case", FAILURE_CASES)
def test_remembered_failures(case: Case) -> None:
    _check(case)


# --- garbage ---------------------------------------------------------------------------------


def test_garbage_keeps_the_newest_and_one_dead_per_container_and_no_dead_sandbox() -> None:
    containers = [
        _sandbox(EXITED), _sandbox(EXITED, attempt=1), _sandbox(attempt=2),
        *(_app("web", EXITED, attempt=attempt, exit_code=1) for attempt in range(4)),
        _app("web", attempt=4, sandbox="POD-2"),
        _app("side", EXITED), _app("side", attempt=1, sandbox="POD-2"),
    ]
    _check(Case(POD_TWO, containers, {"garbage": ["POD-0", "POD-1", "web-0", "web-1", "web-2"]}))


def test_newest_dead_sandbox_is_kept() -> None:
    _check(Case(POD, [_sandbox(EXITED, pod=POD), _sandbox(EXITED, attempt=1, pod=POD), _app("web", EXITED, pod=POD)], {
        "garbage": ["POD-0"],
        "create_sandbox": "attempt=2",
        "start": ["web attempt=1 record_restart"],
    }))


def test_state_changes_are_new_values() -> None:
    state = PodWorkerState()
    failure = _failure("ErrImageNeverPull", NEVER_PULL, ago=1, spec_hash="h")
    changed = state.with_replacing(["web"]).with_create_failure("web", failure).with_sandbox_failure(failure)
    assert state == PodWorkerState()
    assert changed.replacing == {"web"} and changed.create_failures == {"web": failure}
    assert changed.replaced("web").replacing == frozenset()
    assert changed.without_create_failures(["web"]).create_failures == {}
    assert changed.without_create_failures(["other"]) is changed
    assert changed.with_sandbox_failure(None).sandbox_failure is None


def test_back_off_records_are_the_restarts() -> None:
    pod = _pod("web", "side")
    actions = _decide(Case(pod, [
        _sandbox(pod=pod), _app("web", EXITED, pod=pod, exit_code=1), _app("side", EXITED, pod=pod),
    ], {}, state=PodWorkerState(replacing=frozenset({"side"}))))
    assert actions.backoff_records == (_key("web", pod),)


def test_one_step_at_a_time_the_sandbox_is_judged_after_the_container_kills() -> None:
    """A failed liveness probe and a dead sandbox at once: the kill comes first, and
    whether the killed container comes back with the new sandbox depends on how it ended."""
    pod = _pod("web", policy="OnFailure")
    first = _check(Case(pod, [_sandbox(EXITED, pod=pod), _app("web", pod=pod)], {
        "kill": ["web-0:LivenessFailed (probe failed)"],
    }, liveness={"web-0": "probe failed"}))
    assert first.sandbox_restart is None and not first.start

    # It exited 0 on SIGTERM: it succeeded, OnFailure leaves it be, and nothing else runs.
    _check(Case(pod, [_sandbox(EXITED, pod=pod), _app("web", EXITED, pod=pod, exit_code=0)], {}))
    # It was killed (143): restarted under the back-off like any failure, in a new sandbox.
    _check(Case(pod, [_sandbox(EXITED, pod=pod), _app("web", EXITED, pod=pod, exit_code=143)], {
        "create_sandbox": "attempt=1",
        "start": ["web attempt=1 record_restart"],
    }))


# --- termination: a pod the API server is deleting ------------------------------------------------------


def _terminating(pod: pod_pb2.Pod, *, spec_grace: int | None = 30, deletion_grace: int | None = 30) -> pod_pb2.Pod:
    marked = copy.deepcopy(pod)
    if spec_grace is not None:
        marked.spec.termination_grace_period_seconds = spec_grace
    marked.metadata.deletion_timestamp.seconds = int(NOW) + (deletion_grace or 0)
    if deletion_grace is not None:
        marked.metadata.deletion_grace_period_seconds = deletion_grace
    return marked


@pytest.mark.parametrize(
    ("spec_grace", "deletion_grace", "previous", "expected"),
    [
        pytest.param(30, 30, None, 30, id="the-deletions"),
        pytest.param(30, 5, None, 5, id="a-shorter-deletion"),
        pytest.param(30, 0, None, 30, id="deletion-0-means-the-specs"),
        pytest.param(7, None, None, 7, id="no-deletion-grace-the-specs"),
        pytest.param(None, None, None, 30, id="the-default"),
        pytest.param(30, 30, 4, 4, id="never-longer-than-one-given-before"),
        pytest.param(30, 2, 4, 2, id="shorter-than-before"),
    ],
)
def test_termination_grace_period(spec_grace, deletion_grace, previous, expected) -> None:
    pod = _terminating(POD, spec_grace=spec_grace, deletion_grace=deletion_grace)
    assert is_terminating(pod) and not is_terminating(POD)
    assert termination_grace_period(pod, previous) == expected


@pytest.mark.parametrize(
    ("containers", "kill", "kill_sandboxes"),
    [
        pytest.param([_sandbox(), _app("web"), _app("side")], ["side-0", "web-0"], [], id="apps-first"),
        pytest.param(
            [_sandbox(), _app("web", EXITED), _app("side", EXITED, exit_code=143)], [], ["POD-0"],
            id="then-the-sandbox",
        ),
        pytest.param(
            [_sandbox(EXITED), _app("web", EXITED), _app("side", EXITED, exit_code=137)], [], [],
            id="stopped",
        ),
        pytest.param([], [], [], id="never-started"),
        # A container that crashed and waits for its restart is not restarted: only what runs is killed.
        pytest.param([_sandbox(), _app("web", EXITED, exit_code=1), _app("side")], ["side-0"], [], id="crashed-one"),
    ],
)
def test_compute_termination(containers, kill, kill_sandboxes) -> None:
    pod = _terminating(POD_TWO, deletion_grace=12)
    before = copy.deepcopy(containers)
    step = compute_termination(pod, containers)
    assert step.grace == 12
    assert sorted(info.id for info in step.kill) == kill
    assert [info.id for info in step.kill_sandboxes] == kill_sandboxes
    assert step.stopped == (not kill and not kill_sandboxes)
    assert containers == before


def _status(*containers: tuple[str, str, int], ready: str = "False") -> pod_pb2.PodStatus:
    """A status with (name, state, exit code) per container and a Ready condition."""
    status = pod_pb2.PodStatus(phase="Running")
    for name, state, exit_code in containers:
        entry = status.container_statuses.add(name=name)
        if state == "terminated":
            entry.state.terminated.exit_code = exit_code
            entry.state.terminated.reason = "Completed" if exit_code == 0 else "Error"
        elif state == "waiting":
            entry.state.waiting.reason = "ContainerCreating"
        else:
            entry.state.running.SetInParent()
            entry.ready = True
    for kind in ("Ready", "ContainersReady"):
        condition = status.conditions.add(type=kind, status=ready, reason="ContainersNotReady")
        condition.last_transition_time.seconds = 100
    return status


@pytest.mark.parametrize(
    ("status", "phase", "unknown"),
    [
        pytest.param(_status(("web", "terminated", 0), ("side", "terminated", 0)), "Succeeded", [], id="all-exit-0"),
        pytest.param(_status(("web", "terminated", 0), ("side", "terminated", 143)), "Failed", [], id="one-failed"),
        pytest.param(_status(("web", "terminated", 137)), "Failed", [], id="killed"),
        pytest.param(_status(("web", "waiting", 0)), "Failed", ["web"], id="never-started"),
        pytest.param(_status(("web", "running", 0), ready="True"), "Failed", ["web"], id="lost-while-running"),
    ],
)
def test_terminal_pod_status(status, phase, unknown) -> None:
    before = copy.deepcopy(status)
    final = terminal_pod_status(status, NOW)
    assert status == before
    assert final.phase == phase
    assert all(s.state.HasField("terminated") and not s.ready for s in final.container_statuses)
    lost = [s.name for s in final.container_statuses if s.state.terminated.reason == "ContainerStatusUnknown"]
    assert lost == unknown
    assert all(s.state.terminated.exit_code == 137 for s in final.container_statuses if s.name in unknown)
    for condition in final.conditions:
        assert (condition.status, condition.reason) == ("False", "PodCompleted")
        was_ready = any(c.type == condition.type and c.status == "True" for c in status.conditions)
        assert condition.last_transition_time.seconds == (int(NOW) if was_ready else 100)
