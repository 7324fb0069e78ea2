"""Leader election without an API server: the decision table-tested with a fake clock (who
creates, takes over, renews, waits or stops; what each write says), the timings' checks and
flags, and the loop against an in-memory lease store (a leader cut off stops by its renew
deadline, release hands over at once, a new term after a loss)."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import coordination_pb2, meta_pb2
from services.common.runtime.leaderelection import (
    Action,
    LeaderElectionConfig,
    LeaderElector,
    add_leader_election_flags,
    check_leader_election_flags,
    decide,
    default_identity,
    expires_at,
    leader_election_config,
    released,
    seconds_of,
    timestamp_of,
)
from services.common.validation import validate_lease

ME, OTHER = "host-a_101_aaaa", "host-b_202_bbbb"
NOW = 1_700_000_100.25
CONFIG = LeaderElectionConfig(name="kube-controller-manager")  # 15 s / 10 s / 2 s


def lease(
    holder: str = OTHER, renewed_ago: float | None = 1.0, duration: int | None = 15, transitions: int | None = 3
) -> coordination_pb2.Lease:
    spec = coordination_pb2.LeaseSpec(holder_identity=holder, acquire_time=Timestamp(seconds=1_700_000_000))
    if renewed_ago is not None:
        spec.renew_time.CopyFrom(timestamp_of(NOW - renewed_ago))
    if duration is not None:
        spec.lease_duration_seconds = duration
    if transitions is not None:
        spec.lease_transitions = transitions
    return coordination_pb2.Lease(
        api_version="coordination.k8s.io/v1",
        kind="Lease",
        metadata=meta_pb2.ObjectMeta(name="kube-controller-manager", namespace="kube-system", resource_version=42),
        spec=spec,
    )


# (id, lease, leading, last renew (seconds before NOW, None: none), action, reason part)
CASES: list[tuple[str, Any, bool, float | None, Action, str]] = [
    ("no-lease-create", None, False, None, Action.CREATE, "no lease"),
    ("free-lease-released", lease(holder=""), False, None, Action.ACQUIRE, "released"),
    ("own-lease-renew", lease(holder=ME), True, 2.0, Action.RENEW, "held by us"),
    ("own-lease-not-leading-new-term", lease(holder=ME), False, None, Action.ACQUIRE, "held by us, not leading"),
    ("live-foreign-lease-wait", lease(renewed_ago=14.9), False, None, Action.WAIT, f"held by {OTHER}"),
    ("expired-foreign-lease-takeover", lease(renewed_ago=15.0), False, None, Action.ACQUIRE, "expired"),
    ("expiry-from-the-lease-duration-recorded", lease(renewed_ago=6.0, duration=5), False, None, Action.ACQUIRE, ""),
    ("no-duration-recorded-uses-ours", lease(renewed_ago=14.0, duration=None), False, None, Action.WAIT, ""),
    ("never-renewed-is-expired", lease(renewed_ago=None), False, None, Action.ACQUIRE, "expired"),
    ("renew-deadline-passed-stop", lease(holder=ME), True, 10.0, Action.STOP, "renew deadline"),
    ("renew-deadline-passed-stop-even-if-unread", None, True, 12.0, Action.STOP, "renew deadline"),
    ("leader-finds-lease-taken-stop", lease(renewed_ago=0.5), True, 2.0, Action.STOP, f"taken by {OTHER}"),
    ("leader-finds-lease-released-stop", lease(holder=""), True, 2.0, Action.STOP, "released"),
    ("leader-finds-lease-deleted-recreates", None, True, 2.0, Action.CREATE, "no lease"),
]


@pytest.mark.parametrize(
    ("observed", "leading", "renewed_ago", "action", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(observed: Any, leading: bool, renewed_ago: float | None, action: Action, reason: str) -> None:
    last_renew = None if renewed_ago is None else NOW - renewed_ago
    decision = decide(observed, ME, NOW, CONFIG, leading=leading, last_renew=last_renew)
    assert decision.action is action, decision
    assert reason in decision.reason
    assert decision.writes == (action in (Action.CREATE, Action.ACQUIRE, Action.RENEW))
    if decision.lease is not None:
        assert validate_lease(decision.lease) == []


def test_wait_says_who_holds_it_and_for_how_long() -> None:
    decision = decide(lease(renewed_ago=5.0), ME, NOW, CONFIG)
    assert decision.holder == OTHER
    assert decision.expires_in == pytest.approx(10.0, abs=1e-5)


def test_a_fake_clock_walks_a_standby_from_wait_to_takeover() -> None:
    observed = lease(renewed_ago=0.0)
    actions = [decide(observed, ME, NOW + t, CONFIG).action for t in (0.0, 2.0, 14.0, 14.99, 15.0, 20.0)]
    assert actions == [Action.WAIT] * 4 + [Action.ACQUIRE] * 2


def test_create_names_us_from_now_with_no_transition() -> None:
    written = decide(None, ME, NOW, CONFIG).lease
    assert written is not None
    assert (written.metadata.namespace, written.metadata.name) == ("kube-system", "kube-controller-manager")
    assert (written.api_version, written.kind) == ("coordination.k8s.io/v1", "Lease")
    spec = written.spec
    assert spec.holder_identity == ME and spec.lease_duration_seconds == 15 and spec.lease_transitions == 0
    assert seconds_of(spec.acquire_time) == seconds_of(spec.renew_time) == pytest.approx(NOW, abs=1e-6)


def test_takeover_counts_a_transition_and_keeps_the_resource_version_as_guard() -> None:
    written = decide(lease(renewed_ago=30.0, transitions=3), ME, NOW, CONFIG).lease
    assert written is not None
    assert written.metadata.resource_version == 42  # the update is guarded by what was read
    assert written.spec.holder_identity == ME and written.spec.lease_transitions == 4
    assert seconds_of(written.spec.acquire_time) == pytest.approx(NOW, abs=1e-6)
    # A lease that never recorded transitions starts counting from 0.
    first = decide(lease(holder="", transitions=None), ME, NOW, CONFIG).lease
    assert first is not None and first.spec.lease_transitions == 1


def test_renewal_moves_only_renew_time() -> None:
    held = lease(holder=ME, renewed_ago=2.0)
    written = decide(held, ME, NOW, CONFIG, leading=True, last_renew=NOW - 2.0).lease
    assert written is not None
    assert written.spec.acquire_time == held.spec.acquire_time
    assert written.spec.lease_transitions == 3
    assert seconds_of(written.spec.renew_time) == pytest.approx(NOW, abs=1e-6)


def test_release_leaves_no_holder_so_a_standby_takes_over_at_once() -> None:
    held = lease(holder=ME, renewed_ago=1.0, transitions=7)
    given_up = released(held, NOW)
    assert given_up.spec.holder_identity == ""
    assert given_up.spec.lease_duration_seconds == 1 and given_up.spec.lease_transitions == 7
    assert given_up.metadata.resource_version == 42
    decision = decide(given_up, OTHER, NOW + 0.01, CONFIG)
    assert decision.action is Action.ACQUIRE and decision.lease is not None
    assert decision.lease.spec.lease_transitions == 8


def test_expires_at_uses_the_recorded_duration() -> None:
    assert expires_at(lease(renewed_ago=0.0, duration=7), CONFIG) == pytest.approx(NOW + 7, abs=1e-5)
    assert expires_at(lease(renewed_ago=None), CONFIG) == float("-inf")


@pytest.mark.parametrize("epoch", [0.0, 1.9999999, 1_700_000_000.123456, 1_700_000_000.9999996])
def test_timestamps_keep_microseconds(epoch: float) -> None:
    ts = timestamp_of(epoch)
    assert 0 <= ts.nanos < 1_000_000_000 and ts.nanos % 1000 == 0
    assert seconds_of(ts) == pytest.approx(epoch, abs=1e-6)


@pytest.mark.parametrize(
    ("timings", "problem"),
    [
        ((15, 10, 2), None),
        ((2, 1.5, 0.3), None),
        ((10, 10, 2), "must be greater than --leader-elect-renew-deadline"),
        ((15, 2.4, 2), "must be greater than 1.2 x --leader-elect-retry-period"),
        ((15, 10, 0), "--leader-elect-retry-period: must be greater than 0"),
    ],
)
def test_config_problems(timings: tuple[float, float, float], problem: str | None) -> None:
    duration, deadline, retry = timings
    config = LeaderElectionConfig("x", lease_duration=duration, renew_deadline=deadline, retry_period=retry)
    found = config.problems()
    assert (found == []) if problem is None else any(problem in p for p in found), found


def test_recorded_duration_is_whole_seconds_never_shorter() -> None:
    longer = LeaderElectionConfig("x", lease_duration=1.5, renew_deadline=1, retry_period=0.3)
    assert longer.lease_duration_seconds == 2
    shorter = LeaderElectionConfig("x", lease_duration=0.2, renew_deadline=0.1, retry_period=0.05)
    assert shorter.lease_duration_seconds == 1


def test_identities_differ_per_elector() -> None:
    first, second = default_identity(), default_identity()
    assert first != second and len(first) <= 253


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="test")
    add_leader_election_flags(result, default_name="kube-replicator")
    return result


def test_flags_default_to_kubernetes_timings() -> None:
    config = leader_election_config(parser().parse_args([]))
    assert config == LeaderElectionConfig("kube-replicator", "kube-system", 15.0, 10.0, 2.0)


def test_flags_take_durations_and_can_turn_election_off() -> None:
    args = parser().parse_args(
        [
            "--leader-elect-lease-duration=2s",
            "--leader-elect-renew-deadline=1500ms",
            "--leader-elect-retry-period=0.3",
            "--leader-elect-resource-name=mine",
        ]
    )
    assert leader_election_config(args) == LeaderElectionConfig("mine", "kube-system", 2.0, 1.5, 0.3)
    assert leader_election_config(parser().parse_args(["--leader-elect=false"])) is None
    assert leader_election_config(parser().parse_args(["--leader-elect"])) is not None


def test_a_stable_identity_from_the_flag_names_the_elector() -> None:
    args = parser().parse_args(["--leader-elect-identity=host-1_kube-replicator"])
    config = leader_election_config(args)
    assert config is not None and config.identity == "host-1_kube-replicator"
    assert LeaderElector(object(), config).identity == "host-1_kube-replicator"  # type: ignore[arg-type]
    # Without it, each process is a new candidate.
    unnamed = leader_election_config(parser().parse_args([]))
    assert unnamed is not None
    assert LeaderElector(object(), unnamed).identity != LeaderElector(object(), unnamed).identity  # type: ignore[arg-type]


def test_flags_that_cannot_work_together_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    p = parser()
    args = p.parse_args(["--leader-elect-lease-duration=5s", "--leader-elect-renew-deadline=6s"])
    with pytest.raises(SystemExit) as exit_info:
        check_leader_election_flags(p, args)
    assert exit_info.value.code == 2
    assert "--leader-elect-lease-duration (5s) must be greater than" in capsys.readouterr().err
    # Off: the timings are not checked (they are not used).
    check_leader_election_flags(p, p.parse_args(["--leader-elect=false", "--leader-elect-renew-deadline=60s"]))


# -- the loop, against an in-memory lease store (real time, short timings) ---------------------

# Whole seconds: a lease records its duration in seconds.
FAST = LeaderElectionConfig("fast", lease_duration=1.0, renew_deadline=0.5, retry_period=0.05)


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


class LeaseStore:
    """One lease with the API server's optimistic concurrency (ABORTED on a stale resourceVersion)."""

    def __init__(self) -> None:
        self.lease: coordination_pb2.Lease | None = None
        self.revision = 0
        self.writes: list[str] = []  # holder after each write

    def put(self, lease: coordination_pb2.Lease) -> coordination_pb2.Lease:
        self.revision += 1
        stored = coordination_pb2.Lease()
        stored.CopyFrom(lease)
        stored.metadata.resource_version = self.revision
        self.lease = stored
        self.writes.append(stored.spec.holder_identity)
        result = coordination_pb2.Lease()
        result.CopyFrom(stored)
        return result


class FakeStub:
    """One elector's view of the store; `down` makes every call fail as an unreachable server."""

    def __init__(self, store: LeaseStore) -> None:
        self.store = store
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE)

    async def Get(self, request: Any, timeout: float | None = None) -> coordination_pb2.Lease:
        self._check()
        if self.store.lease is None:
            raise rpc_error(grpc.StatusCode.NOT_FOUND)
        result = coordination_pb2.Lease()
        result.CopyFrom(self.store.lease)
        return result

    async def Create(self, lease: Any, timeout: float | None = None) -> coordination_pb2.Lease:
        self._check()
        if self.store.lease is not None:
            raise rpc_error(grpc.StatusCode.ALREADY_EXISTS)
        return self.store.put(lease)

    async def Update(self, lease: Any, timeout: float | None = None) -> coordination_pb2.Lease:
        self._check()
        if self.store.lease is None:
            raise rpc_error(grpc.StatusCode.NOT_FOUND)
        if lease.metadata.resource_version != self.store.revision:
            raise rpc_error(grpc.StatusCode.ABORTED)
        return self.store.put(lease)


class FakeClient:
    def __init__(self, store: LeaseStore) -> None:
        self.leases = FakeStub(store)

    def stub(self, kind: Any) -> FakeStub:
        return self.leases


class Work:
    """Led work that records when it runs; `active` is the number of electors acting now."""

    active = 0

    def __init__(self) -> None:
        self.started: list[float] = []
        self.stopped: list[float] = []
        self.overlap = False

    async def __call__(self) -> None:
        Work.active += 1
        self.overlap = self.overlap or Work.active > 1
        self.started.append(time.monotonic())
        try:
            await asyncio.Event().wait()
        finally:
            Work.active -= 1
            self.stopped.append(time.monotonic())


async def wait_for(condition: Any, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        await asyncio.sleep(0.005)
    return time.monotonic()


def elector(store: LeaseStore, name: str, **options: Any) -> tuple[LeaderElector, FakeClient]:
    client = FakeClient(store)
    return LeaderElector(client, FAST, identity=name, **options), client  # type: ignore[arg-type]


async def test_one_leads_a_leader_cut_off_stops_at_its_deadline_and_the_standby_takes_over() -> None:
    Work.active = 0
    store = LeaseStore()
    (a, a_client), (b, _) = elector(store, "a"), elector(store, "b")
    a_work, b_work = Work(), Work()
    a_task = asyncio.create_task(a.run(a_work))
    await wait_for(lambda: a_work.started)
    b_task = asyncio.create_task(b.run(b_work))
    await asyncio.sleep(0.3)
    assert a.is_leader and not b.is_leader and not b_work.started
    assert store.lease is not None and store.lease.spec.holder_identity == "a"

    a_client.leases.down = True  # a can no longer reach the API
    cut = time.monotonic()
    assert await a_task is True  # run returns: leadership lost
    stopped = a_work.stopped[0] - cut
    assert stopped <= FAST.renew_deadline + 0.05, stopped  # stopped acting by its deadline
    await wait_for(lambda: b_work.started)
    assert b_work.started[0] - cut >= FAST.lease_duration - FAST.retry_period  # not before the lease ran out
    assert not a_work.overlap and not b_work.overlap
    assert store.lease.spec.holder_identity == "b" and store.lease.spec.lease_transitions == 1
    b_task.cancel()
    await asyncio.gather(b_task, return_exceptions=True)
    assert store.lease.spec.holder_identity == ""  # released on cancel


async def test_release_on_cancel_hands_over_at_once() -> None:
    Work.active = 0
    store = LeaseStore()
    (a, _), (b, _) = elector(store, "a"), elector(store, "b")
    a_work, b_work = Work(), Work()
    a_task = asyncio.create_task(a.run(a_work))
    await wait_for(lambda: a_work.started)
    b_task = asyncio.create_task(b.run(b_work))
    await asyncio.sleep(0.1)
    a_task.cancel()
    await asyncio.gather(a_task, return_exceptions=True)
    released_at = time.monotonic()
    assert a_work.stopped and a_work.stopped[0] <= released_at  # the work stopped before the lease went
    took_over = await wait_for(lambda: b_work.started) - released_at
    assert took_over < FAST.lease_duration / 2, took_over  # no wait for expiry
    b_task.cancel()
    await asyncio.gather(b_task, return_exceptions=True)


async def test_without_release_the_standby_waits_for_expiry() -> None:
    store = LeaseStore()
    (a, _), (b, _) = elector(store, "a", release_on_cancel=False), elector(store, "b")
    a_work, b_work = Work(), Work()
    a_task = asyncio.create_task(a.run(a_work))
    await wait_for(lambda: a_work.started)
    a_task.cancel()
    await asyncio.gather(a_task, return_exceptions=True)
    assert store.lease is not None and store.lease.spec.holder_identity == "a"
    gone = time.monotonic()
    b_task = asyncio.create_task(b.run(b_work))
    took_over = await wait_for(lambda: b_work.started) - gone
    assert FAST.lease_duration - 2 * FAST.retry_period <= took_over <= FAST.lease_duration + 0.3, took_over
    b_task.cancel()
    await asyncio.gather(b_task, return_exceptions=True)


async def test_work_that_fails_releases_and_raises() -> None:
    store = LeaseStore()
    a, _ = elector(store, "a")

    async def broken() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await a.run(broken)
    assert store.lease is not None and store.lease.spec.holder_identity == ""
    assert not a.is_leader


async def test_run_forever_campaigns_again_after_a_loss() -> None:
    Work.active = 0
    store = LeaseStore()
    a, a_client = elector(store, "a")
    work = Work()
    task = asyncio.create_task(a.run_forever(work))
    await wait_for(lambda: work.started)
    a_client.leases.down = True
    await wait_for(lambda: work.stopped)
    a_client.leases.down = False  # back: the lease still names us, so we lead again
    await wait_for(lambda: len(work.started) == 2)
    assert store.lease is not None and store.lease.spec.holder_identity == "a"
    assert store.lease.spec.lease_transitions == 1  # a new term
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_leader_whose_lease_was_taken_stops_at_its_next_renewal() -> None:
    store = LeaseStore()
    a, _ = elector(store, "a")
    work = Work()
    task = asyncio.create_task(a.run(work))
    await wait_for(lambda: work.started)
    assert store.lease is not None
    stolen = coordination_pb2.Lease()
    stolen.CopyFrom(store.lease)
    stolen.spec.holder_identity = "intruder"
    store.put(stolen)
    taken = time.monotonic()
    assert await task is True
    assert work.stopped[0] - taken <= FAST.retry_period + 0.05
    assert store.lease.spec.holder_identity == "intruder"  # not released over the new holder
