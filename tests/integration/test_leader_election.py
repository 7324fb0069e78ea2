"""Leader election through Lease objects against a real API server and etcd.

Electors in this process (one API client each) on one lease; two replicator processes
(`python -m services.replicator.main`, as system:kube-controller-manager) on one replication
controller; two API servers whose in-process controllers share one lease. Timings are short
(lease 2 s, renew deadline 1.5 s, retry 0.3 s); takeover times are measured and printed (run
with -s to see them), and bounded only loosely: this machine is shared.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Iterator

import pytest

from kybernetes.v1 import coordination_pb2
from services.common.client import ApiClient
from services.common.resources import ENDPOINTS, LEASES, PODS
from services.common.runtime.leaderelection import LeaderElectionConfig, LeaderElector
from tests.polling import eventually
from tools.processes import ApiServerProcess, ManagedProcess, component_security_flags, python_module_argv

from .apihelpers import make_rc, make_service
from .control_helpers import API_WAIT, ControlPlane, PodCreations, kubecfg, pods_in

SYSTEM = "kube-system"
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 2.0, 1.5, 0.3
SHORT_LEASE_FLAGS = (
    f"--leader-elect-lease-duration={LEASE_DURATION}s",
    f"--leader-elect-renew-deadline={RENEW_DEADLINE}s",
    f"--leader-elect-retry-period={RETRY_PERIOD}s",
)
# What one retry of a standby can take beyond the lease's expiry: its (jittered) retry
# period and a round trip, with room for a busy two-core machine.
SLACK = 1.5


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    control = ControlPlane("")
    yield control
    control.stop()


@pytest.fixture
def api_address(plane: ControlPlane) -> str:
    return plane.address


def config(name: str) -> LeaderElectionConfig:
    return LeaderElectionConfig(
        name=name, lease_duration=LEASE_DURATION, renew_deadline=RENEW_DEADLINE, retry_period=RETRY_PERIOD
    )


class Work:
    """Led work that records when it runs; `acting` counts the electors acting right now."""

    acting = 0
    overlaps = 0

    def __init__(self) -> None:
        self.started: list[float] = []
        self.stopped: list[float] = []

    async def __call__(self) -> None:
        Work.acting += 1
        if Work.acting > 1:
            Work.overlaps += 1
        self.started.append(time.monotonic())
        try:
            await asyncio.Event().wait()
        finally:
            Work.acting -= 1
            self.stopped.append(time.monotonic())


class Candidate:
    """An elector with an API client of its own, running `Work` as a task."""

    def __init__(
        self, address: str, lease: str, *, release_on_cancel: bool = True, forever: bool = False, identity: str = "",
        election: LeaderElectionConfig | None = None,
    ) -> None:
        self.client = ApiClient(address)
        self.elector = LeaderElector(
            self.client, election or config(lease), release_on_cancel=release_on_cancel, identity=identity
        )
        self.work = Work()
        run = self.elector.run_forever if forever else self.elector.run
        self.task: asyncio.Task[Any] = asyncio.create_task(run(self.work))

    @property
    def identity(self) -> str:
        return self.elector.identity

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.close()


@pytest.fixture
async def candidates(plane: ControlPlane) -> AsyncIterator[list[Candidate]]:
    made: list[Candidate] = []
    Work.acting = Work.overlaps = 0
    yield made
    for candidate in made:
        await candidate.stop()


async def wait_started(*works: Work, timeout: float = 15.0) -> float:
    """When the first of works started (monotonic), waiting for it."""

    def started() -> float | None:
        times = [w.started[-1] for w in works if w.started]
        return min(times) if times else None

    return float(await eventually(started, what="a candidate to lead", timeout=timeout, interval=0.02))


async def lease_holder(api: ApiClient, name: str) -> str:
    lease: coordination_pb2.Lease = await api.get(LEASES, name, SYSTEM)
    return lease.spec.holder_identity


def pid_of(identity: str) -> int:
    """The pid in a default identity (host_pid_random); 0 for none (a released lease)."""
    parts = identity.rsplit("_", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0


async def test_two_electors_on_one_lease_exactly_one_leads(
    plane: ControlPlane, api: ApiClient, candidates: list[Candidate], unique_name: str
) -> None:
    first = Candidate(plane.address, unique_name)
    second = Candidate(plane.address, unique_name)
    candidates += [first, second]
    await wait_started(first.work, second.work)
    await asyncio.sleep(3 * RETRY_PERIOD + LEASE_DURATION)  # renewals, and the standby's retries
    leaders = [c for c in (first, second) if c.elector.is_leader]
    assert len(leaders) == 1 and Work.acting == 1 and Work.overlaps == 0
    [leader] = leaders
    assert len(leader.work.started) == 1 and not leader.work.stopped  # never lost it
    lease: coordination_pb2.Lease = await api.get(LEASES, unique_name, SYSTEM)
    assert lease.spec.holder_identity == leader.identity
    assert lease.spec.lease_duration_seconds == 2 and lease.spec.lease_transitions == 0
    assert time.time() - (lease.spec.renew_time.seconds + lease.spec.renew_time.nanos / 1e9) < LEASE_DURATION

    table = await kubecfg(plane.address, SYSTEM, "get", "leases")
    header, *rows = table.splitlines()
    assert header.split() == ["NAME", "HOLDER", "AGE"]
    assert [unique_name, leader.identity] in [row.split()[:2] for row in rows], table
    described = await kubecfg(plane.address, SYSTEM, "describe", "lease", unique_name)
    assert f"Holder Identity:         {leader.identity}" in described, described


async def test_the_standby_takes_over_within_the_lease_duration_when_the_leader_dies(
    plane: ControlPlane, api: ApiClient, candidates: list[Candidate], unique_name: str
) -> None:
    # The leader neither renews nor releases any more: as after a kill -9.
    leader = Candidate(plane.address, unique_name, release_on_cancel=False)
    candidates.append(leader)
    await wait_started(leader.work)
    standby = Candidate(plane.address, unique_name)
    candidates.append(standby)
    await asyncio.sleep(2 * RETRY_PERIOD)
    assert not standby.work.started
    leader.task.cancel()
    await asyncio.gather(leader.task, return_exceptions=True)
    died = time.monotonic()
    assert await lease_holder(api, unique_name) == leader.identity  # not released
    took_over = await wait_started(standby.work) - died
    print(f"\ntakeover after the leader died: {took_over:.2f} s (lease {LEASE_DURATION:g} s, retry {RETRY_PERIOD:g} s)")
    assert took_over <= LEASE_DURATION + RETRY_PERIOD + SLACK
    assert Work.overlaps == 0
    lease: coordination_pb2.Lease = await api.get(LEASES, unique_name, SYSTEM)
    assert lease.spec.holder_identity == standby.identity and lease.spec.lease_transitions == 1


async def test_a_copy_restarted_under_its_stable_identity_leads_again_at_once(
    plane: ControlPlane, api: ApiClient, candidates: list[Candidate], unique_name: str
) -> None:
    # What a supervisor's restart after a kill -9 looks like (--leader-elect-identity): the
    # lease still names the dead copy, which was this identity, so no one else can be leading.
    # A long lease: waiting it out would outlast wait_started's 15 s.
    long = LeaderElectionConfig(unique_name, lease_duration=60, renew_deadline=40, retry_period=RETRY_PERIOD)
    identity = "host-1_kube-replicator"
    dead = Candidate(plane.address, unique_name, release_on_cancel=False, identity=identity, election=long)
    candidates.append(dead)
    await wait_started(dead.work)
    dead.task.cancel()
    await asyncio.gather(dead.task, return_exceptions=True)
    died = time.monotonic()
    restarted = Candidate(plane.address, unique_name, identity=identity, election=long)
    candidates.append(restarted)
    back = await wait_started(restarted.work) - died
    print(f"\nleading again after a restart under the same identity: {back:.2f} s (lease 60 s)")
    assert await lease_holder(api, unique_name) == identity
    assert Work.overlaps == 0


async def test_a_clean_release_hands_over_at_once(
    plane: ControlPlane, api: ApiClient, candidates: list[Candidate], unique_name: str
) -> None:
    leader = Candidate(plane.address, unique_name)
    candidates.append(leader)
    await wait_started(leader.work)
    standby = Candidate(plane.address, unique_name)
    candidates.append(standby)
    await asyncio.sleep(2 * RETRY_PERIOD)
    assert not standby.work.started
    await leader.stop()  # cancelled: stops its work, then releases the lease
    released = time.monotonic()
    assert leader.work.stopped and leader.work.stopped[0] <= released
    took_over = await wait_started(standby.work) - released
    print(f"\ntakeover after a clean release: {took_over:.2f} s (lease {LEASE_DURATION:g} s, retry {RETRY_PERIOD:g} s)")
    assert took_over < LEASE_DURATION  # did not wait for the lease to run out
    assert await lease_holder(api, unique_name) == standby.identity


async def test_a_leader_cut_off_from_the_api_stops_by_its_renew_deadline(
    plane: ControlPlane, api: ApiClient, candidates: list[Candidate], unique_name: str
) -> None:
    leader = Candidate(plane.address, unique_name, forever=True)
    candidates.append(leader)
    await wait_started(leader.work)
    cut = time.monotonic()
    plane.stop_apiserver()
    try:
        await eventually(lambda: leader.work.stopped, what="the leader to stop acting", timeout=10, interval=0.02)
        stopped = leader.work.stopped[0] - cut
        print(f"\nleader stopped acting {stopped:.2f} s after its API server began to stop "
              f"(renew deadline {RENEW_DEADLINE:g} s)")
        assert stopped <= RENEW_DEADLINE + 0.5
        assert not leader.elector.is_leader
    finally:
        plane.start_apiserver()
    # Back: the lease still names it, so it leads again (a new term).
    await eventually(lambda: len(leader.work.started) == 2, what="the leader to lead again", **API_WAIT)
    assert Work.overlaps == 0


# -- replicator processes ---------------------------------------------------------------------


def start_replicator(plane: ControlPlane, index: int) -> ManagedProcess:
    return ManagedProcess(
        f"replicator-{index}",
        python_module_argv(
            "services.replicator.main",
            "--server", plane.address,
            "--resync-period", "5",
            *component_security_flags("replicator"),
            *SHORT_LEASE_FLAGS,
        ),
        f"{plane.workdir}/replicator-ha-{index}.log",
    )


def live(pods: list[Any]) -> list[Any]:
    return [p for p in pods if not p.metadata.HasField("deletion_timestamp")]


async def test_two_replicators_never_both_act_and_the_standby_takes_over_a_kill_9(
    plane: ControlPlane, api: ApiClient, namespace: str
) -> None:
    replicators = [start_replicator(plane, 1)]
    try:
        holder = await eventually(
            lambda: lease_holder(api, "kube-replicator"), what="a replicator to lead", **API_WAIT
        )
        assert pid_of(holder) == replicators[0].pid
        replicators.append(start_replicator(plane, 2))
        await eventually(
            lambda: "leader_observed" in replicators[1].log_text(), what="the second to stand by", **API_WAIT
        )
        leader, standby = replicators
        async with PodCreations(api, namespace) as creations:
            await api.create(make_rc("web", namespace, {"app": "web"}, replicas=3))

            async def three() -> list[Any]:
                pods = live(await pods_in(api, namespace, "app=web"))
                assert len(pods) == 3, f"{len(pods)} live pods"
                return pods

            pods = await eventually(three, what="3 pods", **API_WAIT)
            await asyncio.sleep(LEASE_DURATION)  # several renewals, and every retry of the standby
            assert len(creations.names) == 3, creations.names  # created once, not once per replicator
            assert "controllers_synced" not in standby.log_text()  # the standby never started its manager

            leader.kill()  # -9: no release
            killed = time.monotonic()
            await api.delete(PODS, pods[0].metadata.name, namespace)  # work for the new leader

            async def taken() -> str:
                identity = await lease_holder(api, "kube-replicator")
                assert pid_of(identity) == standby.pid, identity
                return identity

            await eventually(taken, what="the standby to take the lease", timeout=30, interval=0.05)
            took_over = time.monotonic() - killed
            await eventually(three, what="the replica count restored", **API_WAIT)
            restored = time.monotonic() - killed
            print(f"\nreplicator kill -9: lease taken over after {took_over:.2f} s, "
                  f"pod replaced after {restored:.2f} s (lease {LEASE_DURATION:g} s)")
            assert took_over <= LEASE_DURATION + RETRY_PERIOD + SLACK
            await asyncio.sleep(1.0)
            assert len(creations.names) == 4, creations.names  # the 3, and one replacement
        assert "leader_acquired" in standby.log_text()
    finally:
        for process in replicators:
            process.stop()


# -- API servers' in-process controllers ------------------------------------------------------------


@pytest.fixture
def ha_plane() -> Iterator[ControlPlane]:
    """A control plane of its own: its API server runs the endpoints controller."""
    control = ControlPlane("endpoints", *SHORT_LEASE_FLAGS)
    yield control
    control.stop()


async def test_two_api_servers_serve_while_only_one_runs_the_controllers(
    ha_plane: ControlPlane, namespace: str
) -> None:
    first = ha_plane.apiserver
    assert first is not None
    first_pid = first.pid
    second = ApiServerProcess(
        ha_plane.etcd.endpoint,
        "--controllers=endpoints",
        *SHORT_LEASE_FLAGS,
        log_path=f"{ha_plane.workdir}/apiserver-second.log",
    )
    try:
        async with ApiClient(ha_plane.address) as first_api, ApiClient(second.address) as second_api:
            holder = await eventually(
                lambda: lease_holder(first_api, "kube-controller-manager"),
                what="the controllers to elect a leader",
                **API_WAIT,
            )
            assert pid_of(holder) == first_pid
            # Both serve, the standby's controllers waiting.
            await second_api.list(PODS, namespace)
            await asyncio.sleep(LEASE_DURATION)
            assert pid_of(await lease_holder(second_api, "kube-controller-manager")) == first_pid
            assert "leader_observed" in second.log_text()

            signalled = time.monotonic()
            ha_plane.stop_apiserver()  # SIGTERM: its controllers stop and release the lease
            stopped = time.monotonic()

            async def taken() -> str:
                identity = await lease_holder(second_api, "kube-controller-manager")
                assert pid_of(identity) == second.pid, identity
                return identity

            await eventually(taken, what="the second server's controllers to lead", timeout=30, interval=0.05)
            took_over = time.monotonic() - signalled
            print(f"\ncontrollers handed over within {took_over:.2f} s of SIGTERM to the first API server "
                  f"(which took {stopped - signalled:.2f} s to exit)")
            # Released on the way out (not left to expire).
            assert "leader_released" in first.log_text()
            assert took_over < LEASE_DURATION + (stopped - signalled)
            # And they act: the endpoints controller (now in the second server) makes a service's endpoints.
            await second_api.create(make_service("web", namespace, {"app": "web"}))
            await eventually(
                lambda: second_api.get(ENDPOINTS, "web", namespace), what="endpoints from the new leader", **API_WAIT
            )
    finally:
        second.stop()
