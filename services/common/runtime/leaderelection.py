"""Leader election through a Lease object, as client-go's leaderelection package does it.

Where two copies of a controller run (the controllers in each API server, two replicators),
only the holder of a `Lease` (coordination.k8s.io/v1, in kube-system) acts; the others wait
to take over. The rules (client-go's tryAcquireOrRenew, LeaseLock):

- A candidate creates the lease naming itself, or takes it over (an update guarded by the
  resourceVersion it read: ABORTED means another candidate won) once it is free (holder
  "", released) or expired (`renewTime + leaseDurationSeconds` has passed).
- The leader renews (renewTime = now) every retry period. If it cannot renew within the
  renew deadline of its last renewal, or finds the lease held by another, it stops acting
  at once: the work it leads is cancelled and `run` returns. The renew deadline is shorter
  than the lease duration, so a leader that cannot reach the API stops before anyone may
  take over.
- On a clean shutdown the leader stops its work and then releases the lease (holder "",
  a one-second duration), so that a standby takes over at once (ReleaseOnCancel).

The decision is a pure function, `decide(lease, identity, now, config) -> Decision` (plain
data, table-tested with a fake clock); `LeaderElector` only does the I/O around it.
Expiry is judged on the lease's own renewTime against this machine's clock: the copies of
a controller are expected to run on hosts with synchronised clocks (client-go instead
measures lease duration from when it last saw the record change, which tolerates skew).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import math
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import coordination_pb2, meta_pb2
from services.common.client import ApiClient
from services.common.flags import boolean, positive_duration
from services.common.log import get_logger
from services.common.resources import LEASES

Lease = coordination_pb2.Lease

# Kubernetes' defaults (kube-controller-manager's --leader-elect-* flags).
DEFAULT_LEASE_DURATION = 15.0
DEFAULT_RENEW_DEADLINE = 10.0
DEFAULT_RETRY_PERIOD = 2.0
DEFAULT_LEASE_NAMESPACE = "kube-system"
# client-go's JitterFactor: the renew deadline must leave room for more than one retry.
JITTER_FACTOR = 1.2
# A candidate's retries are spread by up to this fraction of the retry period, so that
# standbys that started together do not all ask at the same instant.
RETRY_JITTER = 0.2
# The duration a released lease says: a standby may take it at once anyway (no holder).
RELEASED_LEASE_DURATION_SECONDS = 1


@dataclass(frozen=True)
class LeaderElectionConfig:
    """Which lease, and the timings (seconds) of client-go's LeaderElectionConfig."""

    name: str
    namespace: str = DEFAULT_LEASE_NAMESPACE
    lease_duration: float = DEFAULT_LEASE_DURATION
    renew_deadline: float = DEFAULT_RENEW_DEADLINE
    retry_period: float = DEFAULT_RETRY_PERIOD
    # This copy's name among the candidates; "" picks a new one per process (default_identity).
    identity: str = ""

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def lease_duration_seconds(self) -> int:
        """What the lease records (whole seconds, as Kubernetes'): never shorter than promised."""
        return max(1, math.ceil(self.lease_duration))

    def problems(self) -> list[str]:
        """What is wrong with these timings, worded for the --leader-elect-* flags (client-go's checks)."""
        found = []
        if not self.name:
            found.append("--leader-elect-resource-name: required")
        for flag, value in (
            ("--leader-elect-lease-duration", self.lease_duration),
            ("--leader-elect-renew-deadline", self.renew_deadline),
            ("--leader-elect-retry-period", self.retry_period),
        ):
            if value <= 0:
                found.append(f"{flag}: must be greater than 0, not {value:g}")
        if found:
            return found
        if self.lease_duration <= self.renew_deadline:
            found.append(
                f"--leader-elect-lease-duration ({self.lease_duration:g}s) must be greater than "
                f"--leader-elect-renew-deadline ({self.renew_deadline:g}s)"
            )
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            found.append(
                f"--leader-elect-renew-deadline ({self.renew_deadline:g}s) must be greater than "
                f"{JITTER_FACTOR:g} x --leader-elect-retry-period ({self.retry_period:g}s)"
            )
        return found


def default_identity() -> str:
    """This process among the candidates: host name, pid and a random part (a restarted
    process is a new candidate, never mistaken for the holder it replaces)."""
    return f"{socket.gethostname()}_{os.getpid()}_{secrets.token_hex(4)}"


# -- the decision (pure) --------------------------------------------------------------------


class Action(str, enum.Enum):
    CREATE = "create"  # no lease: create it naming us
    ACQUIRE = "acquire"  # free or expired: take it over (guarded by its resourceVersion)
    RENEW = "renew"  # ours: move renewTime on
    WAIT = "wait"  # another holds a live lease: ask again after the retry period
    STOP = "stop"  # we led and may no longer: stop acting at once


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    # What to write for CREATE, ACQUIRE and RENEW.
    lease: Lease | None = None
    # The holder the lease names (WAIT, STOP), and for WAIT the seconds until it expires.
    holder: str = ""
    expires_in: float = 0.0

    @property
    def writes(self) -> bool:
        return self.lease is not None


def timestamp_of(epoch: float) -> Timestamp:
    # Kubernetes' MicroTime: renewals a few seconds apart need more than whole seconds.
    seconds, micros = divmod(round(epoch * 1_000_000), 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


def seconds_of(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def expires_at(lease: Lease, config: LeaderElectionConfig) -> float:
    """When the holder's claim runs out: renewTime plus the duration the lease records
    (the holder's own promise; ours when it records none). No renewTime: long ago."""
    if not lease.spec.HasField("renew_time"):
        return -math.inf
    duration = (
        lease.spec.lease_duration_seconds if lease.spec.HasField("lease_duration_seconds") else config.lease_duration
    )
    return seconds_of(lease.spec.renew_time) + duration


def _claimed(lease: Lease, identity: str, now: float, config: LeaderElectionConfig, *, acquired: bool) -> Lease:
    updated = Lease()
    updated.CopyFrom(lease)
    spec = updated.spec
    spec.holder_identity = identity
    spec.lease_duration_seconds = config.lease_duration_seconds
    spec.renew_time.CopyFrom(timestamp_of(now))
    if acquired:
        spec.acquire_time.CopyFrom(timestamp_of(now))
        spec.lease_transitions = lease.spec.lease_transitions + 1  # unset reads 0
    elif not spec.HasField("acquire_time"):
        spec.acquire_time.CopyFrom(timestamp_of(now))
    return updated


def new_lease(identity: str, now: float, config: LeaderElectionConfig) -> Lease:
    return Lease(
        api_version=LEASES.api_version,
        kind=LEASES.name,
        metadata=meta_pb2.ObjectMeta(name=config.name, namespace=config.namespace),
        spec=coordination_pb2.LeaseSpec(
            holder_identity=identity,
            lease_duration_seconds=config.lease_duration_seconds,
            acquire_time=timestamp_of(now),
            renew_time=timestamp_of(now),
            lease_transitions=0,
        ),
    )


def decide(
    lease: Lease | None,
    identity: str,
    now: float,
    config: LeaderElectionConfig,
    *,
    leading: bool = False,
    last_renew: float | None = None,
) -> Decision:
    """What `identity` does next, given the lease as read (None: there is none) at `now`
    (epoch seconds). leading/last_renew: whether it leads, and when (now's clock) its last
    renewal was written."""
    if leading and last_renew is not None and now - last_renew >= config.renew_deadline:
        return Decision(
            Action.STOP,
            f"could not renew within the renew deadline ({config.renew_deadline:g}s)",
            holder=lease.spec.holder_identity if lease is not None else "",
        )
    if lease is None:
        # Nobody holds it (or it was deleted under the leader): whoever creates it first leads.
        return Decision(Action.CREATE, "no lease", new_lease(identity, now, config))
    holder = lease.spec.holder_identity
    if holder == identity:
        if leading:
            return Decision(Action.RENEW, "held by us", _claimed(lease, identity, now, config, acquired=False))
        # Ours, yet we do not lead (a write we did not hear back from, or a term that ended
        # at the renew deadline): a new term, counted as client-go counts it.
        claimed = _claimed(lease, identity, now, config, acquired=True)
        return Decision(Action.ACQUIRE, "held by us, not leading", claimed)
    if leading:
        reason = f"lease taken by {holder}" if holder else "lease released by another"
        return Decision(Action.STOP, reason, holder=holder)
    if not holder:
        return Decision(Action.ACQUIRE, "lease released", _claimed(lease, identity, now, config, acquired=True))
    remaining = expires_at(lease, config) - now
    if remaining <= 0:
        return Decision(
            Action.ACQUIRE, f"lease of {holder} expired", _claimed(lease, identity, now, config, acquired=True)
        )
    return Decision(Action.WAIT, f"held by {holder}", holder=holder, expires_in=remaining)


def released(lease: Lease, now: float) -> Lease:
    """The lease as its holder gives it up on a clean shutdown (client-go's release):
    no holder, so a standby takes it at its next retry."""
    updated = Lease()
    updated.CopyFrom(lease)
    spec = updated.spec
    spec.holder_identity = ""
    spec.lease_duration_seconds = RELEASED_LEASE_DURATION_SECONDS
    spec.acquire_time.CopyFrom(timestamp_of(now))
    spec.renew_time.CopyFrom(timestamp_of(now))
    return updated


# -- the loop (I/O) -----------------------------------------------------------------------------

# A write that lost to another writer, or a lease that went away meanwhile: read again.
_CONFLICTS = (grpc.StatusCode.ABORTED, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.NOT_FOUND)


class LeaderElector:
    """Campaigns for one lease and runs the work it leads only while it holds it."""

    def __init__(
        self,
        client: ApiClient,
        config: LeaderElectionConfig,
        *,
        identity: str | None = None,
        release_on_cancel: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        problems = config.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self.client = client
        self.config = config
        self.identity = identity or config.identity or default_identity()
        self.release_on_cancel = release_on_cancel
        self._clock = clock
        self._leading = False
        self._last_renew: float | None = None
        self._held: Lease | None = None  # the lease as we last wrote it, while we lead
        self._observed_holder: str | None = None
        self._failing: grpc.StatusCode | None = None  # the code of the current run of failed calls
        self._log = get_logger(lease=config.lease, identity=self.identity)

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def _stub(self) -> Any:
        return self.client.stub(LEASES)

    async def run(self, work: Callable[[], Awaitable[None]]) -> bool:
        """Campaigns until this elector leads, then runs work() while it leads.

        Returns True when leadership was lost (work() cancelled at once), False when work()
        returned on its own (the lease is released); raises what work() raises. Cancelled:
        stops work() first, then releases the lease (release_on_cancel)."""
        await self._acquire()
        work_task: asyncio.Task[None] = asyncio.ensure_future(work())
        keeper = asyncio.create_task(self._keep(), name=f"lease-{self.config.name}")
        lost = False
        try:
            done, _ = await asyncio.wait({work_task, keeper}, return_when=asyncio.FIRST_COMPLETED)
            if keeper in done:
                lost = True
                reason = keeper.result()
                self._leading = False
                self._held = None
                self._log.warning("leader_lost", holder=self.identity, reason=reason)
                await _stop(work_task)  # stops acting at once
                return True
            work_task.result()  # raises what the work raised (the lease is released below)
            return False
        finally:
            ended_on_its_own = work_task.done()  # else: cancelled (a shutdown) or lost
            await _stop(work_task)
            await _stop(keeper)
            if self._leading and not lost and (self.release_on_cancel or ended_on_its_own):
                await self._release()
            self._leading = False
            self._held = None

    async def run_forever(self, work: Callable[[], Awaitable[None]]) -> None:
        """run() again after every loss (a fresh work() each term, e.g. a new Manager with
        new informers) until cancelled, or until work() returns or fails."""
        while await self.run(work):
            pass

    # -- campaigning and renewing -----------------------------------------------------------

    async def _acquire(self) -> None:
        started = self._clock()
        while True:
            decision, written = await self._attempt(leading=False)
            if written is not None:
                self._leading = True
                self._log.info(
                    "leader_acquired",
                    holder=self.identity,
                    action=decision.action.value,
                    reason=decision.reason,
                    transitions=written.spec.lease_transitions,
                    waited_s=round(self._clock() - started, 2),
                )
                return
            period = self.config.retry_period
            await asyncio.sleep(period * (1 + RETRY_JITTER * random.random()))

    async def _keep(self) -> str:
        """Renews every retry period until it cannot; returns why leadership is lost."""
        config = self.config
        while True:
            assert self._last_renew is not None
            # Every retry period; after failed attempts, wake at the deadline itself at the latest.
            left = self._last_renew + config.renew_deadline - self._clock()
            await asyncio.sleep(max(0.0, min(config.retry_period, left)))
            left = self._last_renew + config.renew_deadline - self._clock()
            if left <= 0:
                return f"could not renew within the renew deadline ({config.renew_deadline:g}s)"
            try:
                decision, _ = await asyncio.wait_for(self._attempt(leading=True), left)
            except asyncio.TimeoutError:
                return f"could not renew within the renew deadline ({config.renew_deadline:g}s)"
            if decision.action is Action.STOP:
                return decision.reason

    async def _attempt(self, *, leading: bool) -> tuple[Decision, Lease | None]:
        """One tryAcquireOrRenew: the decision, and the lease as written (None: not written).
        A leader renews from the lease it last wrote (no read); a conflict reads it again."""
        try:
            lease = self._held if leading and self._held is not None else await self._read()
            decision, written = await self._decide_and_write(lease, leading=leading)
            if written is None and decision.writes and leading:
                # Our copy was stale (another wrote it, or it was deleted): decide on what is there.
                decision, written = await self._decide_and_write(await self._read(), leading=leading)
        except grpc.aio.AioRpcError as error:
            # Once per run of failures (every retry period would flood the log while the API is away).
            log = self._log.warning if error.code() != self._failing else self._log.debug
            log("lease_call_failed", code=error.code().name, error=error.details())
            self._failing = error.code()
            return Decision(Action.WAIT, f"lease call failed: {error.code().name}"), None
        if self._failing is not None:
            self._log.info("lease_calls_recovered", after=self._failing.name)
            self._failing = None
        return decision, written

    async def _decide_and_write(self, lease: Lease | None, *, leading: bool) -> tuple[Decision, Lease | None]:
        now = self._clock()
        decision = decide(
            lease, self.identity, now, self.config, leading=leading, last_renew=self._last_renew if leading else None
        )
        if decision.lease is None:
            if decision.action is Action.WAIT:
                self._observe(decision)
            return decision, None
        timeout = self.config.renew_deadline
        try:
            if decision.action is Action.CREATE:
                written = await self._stub.Create(decision.lease, timeout=timeout)
            else:
                written = await self._stub.Update(decision.lease, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() not in _CONFLICTS:
                raise
            self._held = None
            return decision, None  # another candidate won this round
        self._held = written
        self._last_renew = now
        return decision, written

    async def _read(self) -> Lease | None:
        request = meta_pb2.GetRequest(namespace=self.config.namespace, name=self.config.name)
        try:
            lease: Lease = await self._stub.Get(request, timeout=self.config.renew_deadline)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return lease

    def _observe(self, decision: Decision) -> None:
        if decision.holder != self._observed_holder:
            self._observed_holder = decision.holder
            self._log.info("leader_observed", holder=decision.holder, expires_in_s=round(decision.expires_in, 2))

    async def _release(self) -> None:
        held = self._held
        if held is None or held.spec.holder_identity != self.identity:
            return
        try:
            await self._stub.Update(released(held, self._clock()), timeout=min(self.config.renew_deadline, 5.0))
        except grpc.aio.AioRpcError as error:
            self._log.warning("leader_release_failed", holder=self.identity, code=error.code().name)
            return
        self._log.info("leader_released", holder=self.identity)


async def _stop(task: asyncio.Future[Any]) -> None:
    """Cancels a task and waits until it has ended (its outcome is the caller's business)."""
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# -- flags ----------------------------------------------------------------------------------------


def add_leader_election_flags(parser: argparse.ArgumentParser, *, default_name: str) -> None:
    """kube-controller-manager's --leader-elect* flags."""
    group = parser.add_argument_group("leader election (one active copy among several)")
    group.add_argument(
        "--leader-elect", type=boolean, nargs="?", const=True, default=True, metavar="BOOL",
        help="act only while holding the lease (false: always act, as a lone copy) (default %(default)s)",
    )
    group.add_argument(
        "--leader-elect-lease-duration", type=positive_duration, default=DEFAULT_LEASE_DURATION, metavar="DURATION",
        help="how long standbys wait after the leader's last renewal before taking over (default %(default)ss)",
    )
    group.add_argument(
        "--leader-elect-renew-deadline", type=positive_duration, default=DEFAULT_RENEW_DEADLINE, metavar="DURATION",
        help="a leader that has not renewed for this long stops acting (default %(default)ss)",
    )
    group.add_argument(
        "--leader-elect-retry-period", type=positive_duration, default=DEFAULT_RETRY_PERIOD, metavar="DURATION",
        help="how often to renew, or to try to acquire (default %(default)ss)",
    )
    group.add_argument(
        "--leader-elect-resource-name", default=default_name, metavar="NAME",
        help=f"the Lease, in {DEFAULT_LEASE_NAMESPACE} (default %(default)s)",
    )
    # A supervisor that runs at most one process under a name (supervisord, the kubelet's static
    # pods) gives that name: a copy restarted after a crash finds the lease held by its own
    # identity and leads again at once, instead of waiting out the dead copy's lease (15 s).
    group.add_argument(
        "--leader-elect-identity", default="", metavar="NAME",
        help="this copy's name among the candidates, stable across its restarts; never give two running "
        "copies the same one (default: host name, pid and a random part)",
    )


def leader_election_config(args: argparse.Namespace) -> LeaderElectionConfig | None:
    """The election the flags ask for; None with --leader-elect=false."""
    if not args.leader_elect:
        return None
    return LeaderElectionConfig(
        name=args.leader_elect_resource_name,
        lease_duration=args.leader_elect_lease_duration,
        renew_deadline=args.leader_elect_renew_deadline,
        retry_period=args.leader_elect_retry_period,
        identity=getattr(args, "leader_elect_identity", ""),
    )


def check_leader_election_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error (exit 2) for timings that cannot work together."""
    config = leader_election_config(args)
    if config is not None and config.problems():
        parser.error("; ".join(config.problems()))
