"""One worker per pod: makes Docker match the pod's spec, one sync at a time.

The worker is the executor of podactions.compute_pod_actions (the decision,
pure): a sync reads the container cache (no Docker call when nothing is to
change), asks what to do, and applies it in steps — kill what must go (the
containers, then the sandbox), wire an unwired sandbox, start what is missing
(a new sandbox if none runs), stop the sandbox of a pod that is over, remove
old dead containers — asking again after each step that changed something,
then publishes the pod's status. What only an attempt can tell (a container
or sandbox that could not be made or started) is recorded in the worker's
state and the back-off, where the next decision sees it. Workers of different
pods run concurrently, so one slow pod never holds up another.

A pod the API server is deleting (deletionTimestamp set) is terminated instead
of synced: its app containers get SIGTERM and, after the deletion's grace
period, SIGKILL; then its sandbox; its host ports and address are released; its final status
(terminal phase) is published, and then the kubelet removes the pod from the
API (NodeContext.pod_terminated; the status manager sends the status first).
A shorter grace from a second Delete hurries the kill under way. Everything is
derived from the pod and Docker again on each pass, so a kubelet restarted in
the middle finishes the job. The containers stay (stopped) until the pod is
gone from the API, then the teardown removes them with its volumes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import stat
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Sequence

from kybernetes.v1 import pod_pb2
from services.common.events import NORMAL, WARNING, NullRecorder, Recorder, reference
from services.common.log import get_logger
from services.common.podutil import is_terminated
from services.common.runtime.backoff import Backoff

from .containers import ContainerCache, ContainerInfo
from .dockerspec import (
    ContainerConfigError,
    container_request,
    fs_group,
    infra_request,
    localhost_profile_path,
    localhost_profiles,
    needs_image_user,
    pod_hostname,
)
from .hostports import (
    LABEL_HOST_PORTS,
    HostPortError,
    HostPortManager,
    encode_mappings,
    pod_port_mappings,
    sandbox_mappings,
)
from .naming import (
    INFRA_CONTAINER_NAME,
    LABEL_POD_IP,
    container_labels,
    docker_name,
    grace_period_seconds,
)
from .podactions import (
    BackoffKey,
    ContainerStart,
    CreateFailure,
    KillReason,
    PodActions,
    PodWorkerState,
    SandboxCreation,
    Waiting,
    backoff_key,
    compute_pod_actions,
    compute_termination,
    containers_by_name,
    is_terminating,
    pod_key,
    running_sandbox,
    sandbox_retry_at,
    sandbox_waiting,
    terminal_pod_status,
    termination_grace_period,
)
from .podnetwork import PodNetwork, PodNetworkError
from .probes import ProbeManager
from .resolvconf import DNS_CLUSTER_FIRST, DNS_DEFAULT, PodDns, dns_policy
from .runtime import ContainerRuntime, ImageMissingError, RuntimeCallError, call_priority
from .status import (
    CRASH_LOOP_BACK_OFF,
    CREATE_CONTAINER_CONFIG_ERROR,
    CREATE_CONTAINER_ERROR,
    CREATE_POD_SANDBOX_ERROR,
    NETWORK_NOT_READY,
    ERR_IMAGE_NEVER_PULL,
    ContainerObservation,
    compute_pod_status,
    container_id_uri,
)
from .volumes import VolumeError, VolumeManager


def reported_ready(pod: pod_pb2.Pod, container_id: str) -> bool:
    """Whether the pod's status, as last reported (by this kubelet before it restarted), had this
    very container ready."""
    uri = container_id_uri(container_id)
    return any(status.ready and status.container_id == uri for status in pod.status.container_statuses)


@dataclass
class NodeContext:
    """What every pod worker of this kubelet shares."""

    node: str
    node_ip: str
    pause_image: str
    runtime: ContainerRuntime
    cache: ContainerCache
    volumes: VolumeManager
    probes: ProbeManager
    backoff: Backoff
    # publish_status(uid, pod, status): the pod's newly computed status.
    publish_status: Callable[[str, pod_pb2.Pod, pod_pb2.PodStatus], None]
    # The source a pod came from ("api", "file", "http", "server"), for labels.
    source_of: Callable[[pod_pb2.Pod], str]
    # Docker's default seccomp profile for every container; off: Unconfined,
    # Kubernetes' default (the kubelet's --seccomp-default).
    runtime_default_seccomp: bool = False
    # The kubelet's own pod network; None: Docker's bridge for every sandbox.
    network: PodNetwork | None = None
    # The host ports of the pods on that network (the kubelet's DNAT table and the sockets
    # that hold them); None with Docker's bridge, where Docker publishes them.
    hostports: HostPortManager | None = None
    # service_environment(pod): the service variables of its containers, computed
    # at each container's creation (envvars.py); may raise ContainerConfigError.
    service_environment: Callable[[pod_pb2.Pod], Awaitable[dict[str, str]]] | None = None
    # pod_dns(pod): its DNS settings (resolvconf.py); None: the node's resolv.conf.
    pod_dns: Callable[[pod_pb2.Pod], Awaitable[PodDns]] | None = None
    # pod_terminated(uid, pod): a pod the API server is deleting has stopped and its
    # final status is published: remove it from the API (after that status).
    pod_terminated: Callable[[str, pod_pb2.Pod], None] | None = None
    # The kubelet's events (Created, Started, Killing, BackOff, Failed...).
    recorder: Recorder = NullRecorder()
    # Each pod is synced again this long (plus up to half as much again, at random) after
    # its last sync, whatever changed; 0: only when something changes.
    resync_interval: float = 0.0


# As Kubernetes' pod workers (workerResyncIntervalJitterFactor): each pod's periodic sync
# falls at its own time, so that a node's pods (and a thousand nodes started together) do
# not all sync at once.
RESYNC_JITTER = 0.5


def resync_delay(interval: float, rng: random.Random | None = None) -> float:
    """How long until a pod's periodic sync: interval .. interval * (1 + RESYNC_JITTER)."""
    return interval * (1 + RESYNC_JITTER * (rng or random).random())


class PodWorker:
    def __init__(self, context: NodeContext, uid: str, on_finished: Callable[[str], None], priority: int = 0) -> None:
        self.context = context
        self.uid = uid
        # Docker calls of pods that came first go first (see runtime.call_priority).
        self.priority = priority
        self.pod: pod_pb2.Pod | None = None
        # The last desired version seen, for the grace period of a teardown.
        self._last_pod: pod_pb2.Pod | None = None
        self._on_finished = on_finished
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._task: asyncio.Task | None = None
        # Create failures, the sandbox's failure, containers being replaced.
        self._state = PodWorkerState()
        self._start_time: float | None = None
        self._pod_ip = ""
        self._last_status: pod_pb2.PodStatus | None = None
        # Termination: the grace period its kills were given (only ever shortened), the
        # task that hurries a kill under way when a second Delete shortens it, and
        # whether the pod has been reported terminated.
        self._kill_grace: int | None = None
        self._killing = False
        self._hurry: asyncio.Task | None = None
        self._terminated = False
        self._log = get_logger(module="kubelet.podworker", pod_uid=uid)

    # --- events ------------------------------------------------------------------------

    def _event(self, type: str, reason: str, message: str, container: str = "", pod: pod_pb2.Pod | None = None) -> None:
        """An event on the pod, or on one of its containers (fieldPath spec.containers{name})."""
        pod = pod or self._last_pod
        if pod is None:
            return
        ref = reference(pod)
        if container:
            ref.field_path = f"spec.containers{{{container}}}"
        self.context.recorder.event_on(ref, type, reason, message)

    # --- driving -----------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"pod-{self.uid}")
        return self._task

    def update(self, pod: pod_pb2.Pod | None) -> None:
        """The desired version of the pod; None when it must go."""
        self.pod = pod
        if pod is not None:
            self._last_pod = pod
            self._log = get_logger(module="kubelet.podworker", pod=pod_key(pod), pod_uid=self.uid)
            if is_terminating(pod) and self._killing and self._kill_grace is not None:
                grace = termination_grace_period(pod, self._kill_grace)
                if grace < self._kill_grace:
                    self._hurry_kill(grace)
        self.poke()

    def poke(self) -> None:
        self._wake.set()

    def poke_at(self, when: float) -> None:
        """Syncs again at `when` (wall clock), e.g. when a back-off ends."""
        if self._timer is not None and self._timer_at <= when and self._timer_at > time.time():
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = when
        self._timer = loop.call_later(max(0.0, when - time.time()), self.poke)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._hurry is not None:
            self._hurry.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        call_priority.set(self.priority)
        # A sync that raised (a bug, or Docker misbehaving) is retried: 1 s, doubling to 30 s.
        sync_backoff = Backoff(1.0, 30.0)
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                pod = self.pod
                try:
                    if pod is None:
                        if await self._teardown():
                            if self.pod is None:
                                return
                    elif is_terminating(pod):
                        await self._terminate(pod)
                    else:
                        await self._sync(pod)
                    sync_backoff.reset()
                    if self.pod is not None and self.context.resync_interval > 0:
                        self.poke_at(time.time() + resync_delay(self.context.resync_interval))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    retry = sync_backoff.failure()
                    self._log.exception("pod_sync_failed", retry_in=retry)
                    self.poke_at(time.time() + retry)
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._on_finished(self.uid)

    # --- sync ----------------------------------------------------------------------------

    def _note_start_time(self, pod: pod_pb2.Pod) -> None:
        if self._start_time is None:
            if pod.status.HasField("start_time"):
                self._start_time = pod.status.start_time.ToNanoseconds() / 1e9
            else:
                existing = self.context.cache.for_pod(self.uid)
                self._start_time = min((c.created_at for c in existing), default=time.time())

    async def _sync(self, pod: pod_pb2.Pod) -> None:
        context = self.context
        if is_terminated(pod) and not context.cache.for_pod(self.uid):
            # Over before this kubelet started, and its containers are gone:
            # never run it again; its recorded status stands.
            return
        self._note_start_time(pod)
        grace = grace_period_seconds(pod)

        # 1. Kill what must go: the containers, then (judged on what that left) the sandbox.
        now = time.time()
        actions = self._decide(pod, now)
        if actions.kills_containers:
            await self._kill_containers(actions, grace)
            now = time.time()
            actions = self._decide(pod, now)
        if actions.kills_sandbox:
            await self._kill_sandbox(actions, grace)
            now = time.time()
            actions = self._decide(pod, now)
        if actions.wire_sandbox is not None:
            # Started but never wired (the kubelet stopped in between): wire it or replace it.
            await self._attach_or_stop(actions.wire_sandbox, now)
            now = time.time()
            actions = self._decide(pod, now)

        # 2. Start what is missing, in a sandbox (a new one if none runs).
        for key in actions.backoff_resets:
            context.backoff.reset(key)
        self._state = self._state.without_create_failures(actions.forget_create_failures)
        waiting = dict(actions.waiting)
        for name, (reason, _) in waiting.items():
            if reason == CRASH_LOOP_BACK_OFF:
                self._event(
                    WARNING, "BackOff", f"Back-off restarting failed container {name} in pod {pod_key(pod)}", name, pod
                )
        wake_at = actions.wake_at
        if actions.start:
            retry_at = await self._start_missing(pod, actions, waiting, now)
            if retry_at is not None:
                wake_at = min(wake_at or retry_at, retry_at)
            actions = self._decide(pod, time.time())
        sandbox = actions.sandbox
        if sandbox is not None and pod.spec.host_network:
            # The host's network (the sandbox hash says the running sandbox has it):
            # the pod's address is the node's, as Kubernetes reports it.
            self._pod_ip = context.node_ip
        else:
            if sandbox is not None and not sandbox.on_pod_network and not sandbox.ip_address:
                # Not read when it started (a failed inspect): read it now.
                sandbox = await context.runtime.inspect(sandbox.id)
                actions = self._decide(pod, time.time())
            if sandbox is not None and sandbox.pod_ip:
                self._pod_ip = sandbox.pod_ip

        # 3. A pod that is over keeps no sandbox (and so frees its host ports).
        if actions.stop_sandbox is not None:
            self._log.info("pod_completed_stopping_sandbox")
            await context.runtime.stop(actions.stop_sandbox, grace)
            if context.hostports is not None:
                await context.hostports.remove(self.uid)
            actions = self._decide(pod, time.time())

        # 4. Old dead containers.
        await self._remove_all(list(actions.garbage))

        if wake_at is not None and wake_at != float("inf"):
            self.poke_at(wake_at)
        self._publish(pod, waiting)

    def _decide(self, pod: pod_pb2.Pod, now: float) -> PodActions:
        """compute_pod_actions on the cache as it is now."""
        context = self.context
        containers = context.cache.for_pod(self.uid)
        liveness: dict[str, str] = {}
        for info in containers:
            if info.running and not info.is_infra:
                failure = context.probes.liveness_failure(info.id)
                if failure is not None:
                    liveness[info.id] = failure
        wired = frozenset(
            info.id
            for info in containers
            if info.is_infra and info.running and info.on_pod_network and self._wired(info)
        )
        return compute_pod_actions(
            pod, containers, self._state, now, context.backoff, liveness_failures=liveness, wired_sandboxes=wired
        )

    async def _kill_containers(self, actions: PodActions, grace: int) -> None:
        """Step 1: containers not in the spec (killed, then removed), then the other kills."""
        if actions.remove:
            self._log.info(
                "removing_containers_not_in_spec", containers=sorted({c.container_name for c in actions.remove})
            )
            not_in_spec = [kill.container for kill in actions.kill if kill.reason == KillReason.NOT_IN_SPEC]
            await self._kill_all(not_in_spec, grace)
            await self._remove_all(list(actions.remove))
        kills = [kill for kill in actions.kill if kill.reason != KillReason.NOT_IN_SPEC]
        for kill in kills:
            name = kill.container.container_name
            if kill.reason == KillReason.DUPLICATE:
                self._log.warning("killing_duplicate_container", container=name, id=kill.container.id[:12])
                self._event(NORMAL, "Killing", f"Stopping container {name}: a duplicate", name)
            elif kill.reason == KillReason.SPEC_CHANGED:
                self._log.info("container_spec_changed_restarting", container=name)
                self._event(NORMAL, "Killing", f"Container {name} definition changed, will be restarted", name)
            elif kill.reason == KillReason.LIVENESS_FAILED:
                self._log.info("liveness_probe_failed_restarting", container=name, detail=kill.detail)
                self._event(NORMAL, "Killing", f"Container {name} failed liveness probe, will be restarted", name)
        self._state = self._state.with_replacing(actions.replace)
        await self._kill_all([kill.container for kill in kills], grace)

    async def _kill_sandbox(self, actions: PodActions, grace: int) -> None:
        """Step 2: a sandbox that died or no longer matches the pod takes its containers with it."""
        # Several running sandboxes: keep the newest.
        await self._kill_all(list(actions.surplus_sandboxes), 0)
        restart = actions.sandbox_restart
        if restart is None:
            return
        if restart.reason == KillReason.SANDBOX_CHANGED:
            self._log.info("pod_sandbox_changed_restarting_pod")
        else:
            self._log.info("pod_sandbox_gone_restarting_pod")
        self._state = self._state.with_replacing(restart.replace)
        await self._kill_all(list(restart.containers), grace)
        if restart.sandbox is not None:
            await self._kill_all([restart.sandbox], grace)

    # --- sandbox ---------------------------------------------------------------------

    async def _create_sandbox(self, pod: pod_pb2.Pod, plan: SandboxCreation, now: float) -> ContainerInfo | None:
        """Creates (does not start) the pod's infra container; None when it
        cannot be made now (the failure is recorded)."""
        context = self.context
        if plan.reuse is not None:
            return plan.reuse  # made before a crash, never started: start it
        network = context.network
        if network is not None and not network.configured and not pod.spec.host_network:
            # No back-off: the kubelet pokes every worker once the node's range is known.
            message = "network is not ready: the node has no pod range (spec.podCIDR) yet"
            failure = CreateFailure(NETWORK_NOT_READY, message, now, plan.spec_hash)
            self._state = self._state.with_sandbox_failure(failure)
            self._log.info("pod_network_not_ready_waiting")
            return None
        if plan.remove is not None:
            await context.runtime.remove(plan.remove)
        namespace, name = pod.metadata.namespace, pod.metadata.name
        docker = docker_name(context.node, namespace, name, INFRA_CONTAINER_NAME, self.uid, plan.attempt)
        labels = container_labels(
            context.node, pod, context.source_of(pod), INFRA_CONTAINER_NAME, plan.spec_hash, plan.attempt
        )
        # On the pod network, host ports or not (the kubelet publishes them: hostports.py),
        # unless it uses the host's network (no address of its own, nothing to wire).
        network = context.network if not pod.spec.host_network else None
        try:
            if network is not None:
                mappings = pod_port_mappings(pod)
                if mappings:
                    # Held from now on, so that a port another process has fails the sandbox
                    # before Docker makes anything; the label tells a restarted kubelet.
                    if context.hostports is None:
                        raise HostPortError("host ports need the kubelet's host port manager")
                    await context.hostports.reserve(self.uid, pod_key(pod), mappings)
                    labels[LABEL_HOST_PORTS] = encode_mappings(mappings)
                labels[LABEL_POD_IP] = await network.address_for(self.uid)
            dns = await self._sandbox_dns(pod) if network is None else None
            request = infra_request(
                pod,
                name=docker,
                labels=labels,
                pause_image=context.pause_image,
                node_ip=context.node_ip,
                runtime_default_seccomp=context.runtime_default_seccomp,
                network_disabled=network is not None,
                dns=dns,
            )
            return await context.runtime.create(request)
        except (
            ImageMissingError, RuntimeCallError, PodNetworkError, HostPortError, ContainerConfigError, OSError
        ) as error:
            # ContainerConfigError: a securityContext the sandbox cannot be made with.
            if isinstance(error, ImageMissingError):
                message = f'pause image "{context.pause_image}" is not present'
            else:
                message = str(error)
            self._sandbox_failed(plan.backoff_key, plan.spec_hash, message, now)
            return None

    async def _sandbox_dns(self, pod: pod_pb2.Pod) -> PodDns | None:
        """The DNS settings Docker writes into a sandbox it networks itself.

        On the host's network, ClusterFirst means the node's resolver, as in
        Kubernetes (only ClusterFirstWithHostNet asks for the cluster DNS
        there); with no dnsConfig to add, Docker's own copy of the node's
        resolv.conf is that, loopback name servers included (they answer in the
        host's network namespace)."""
        pod_dns = self.context.pod_dns
        if pod_dns is None:
            return None
        if pod.spec.host_network and dns_policy(pod) in (DNS_CLUSTER_FIRST, DNS_DEFAULT):
            if not pod.spec.HasField("dns_config"):
                return None
            as_default = pod_pb2.Pod()
            as_default.CopyFrom(pod)
            as_default.spec.dns_policy = DNS_DEFAULT
            return await pod_dns(as_default)
        return await pod_dns(pod)

    def _wired(self, sandbox: ContainerInfo) -> bool:
        network = self.context.network
        return network is not None and network.attached(sandbox.id)

    async def _attach_or_stop(self, sandbox: ContainerInfo, now: float) -> bool:
        """Wires a running sandbox into the pod network, and publishes its host
        ports, before any app container starts in it; one that cannot be wired
        is removed, and the failure recorded and retried with back-off like any
        sandbox failure."""
        context = self.context
        try:
            if context.network is None:
                raise PodNetworkError("the kubelet's pod network is off (--network-plugin=docker)")
            inspected = await context.runtime.inspect(sandbox.id)
            if inspected is None or not inspected.running or not inspected.pid:
                raise PodNetworkError("the sandbox stopped before its network was set up")
            await context.network.attach(sandbox.id, inspected.pid, sandbox.pod_ip)
            if context.hostports is not None:
                # The ports this sandbox was made with (its label): none drops an older
                # sandbox's, if the pod's ports changed.
                await context.hostports.publish(
                    self.uid, sandbox.pod_key, sandbox.pod_ip, sandbox_mappings(sandbox)
                )
        except Exception as error:  # any failure leaves a sandbox no container can use
            await context.runtime.remove(sandbox)
            key = backoff_key(self.uid, INFRA_CONTAINER_NAME, sandbox.spec_hash)
            message = str(error) if isinstance(error, HostPortError) else f"pod network: {error}"
            self._sandbox_failed(key, sandbox.spec_hash, message, now)
            return False
        self._log.info("pod_sandbox_started", id=sandbox.id[:12], ip=sandbox.pod_ip)
        return True

    async def _start_sandbox(self, info: ContainerInfo, plan: SandboxCreation, now: float) -> ContainerInfo | None:
        """Starts a created infra container; None when it did not start (recorded)."""
        context = self.context
        try:
            info = await context.runtime.start(info)
        except RuntimeCallError as error:
            self._sandbox_failed(plan.backoff_key, info.spec_hash, str(error), now)
            return None
        if not info.running:
            await context.runtime.remove(info)
            self._sandbox_failed(plan.backoff_key, info.spec_hash, info.error or f"exited with {info.exit_code}", now)
            return None
        if info.on_pod_network and not await self._attach_or_stop(info, now):
            return None
        if plan.clears_failure:
            context.backoff.reset(plan.backoff_key)
            self._state = self._state.with_sandbox_failure(None)
        return info

    async def _start_missing(
        self, pod: pod_pb2.Pod, actions: PodActions, waiting: dict[str, Waiting], now: float
    ) -> float | None:
        """Creates and starts the containers of actions.start, with a new sandbox
        when none runs; when to sync again for what could not start (None: no need).

        Docker's calls for one pod overlap where Docker allows it: the app
        containers are created while the new sandbox starts (they only need its
        id). On the pod network they start once the sandbox is wired; on
        Docker's bridge they start while its IP is read."""
        starts = actions.start
        sandbox = actions.sandbox
        new_sandbox: ContainerInfo | None = None
        creation_plan = actions.create_sandbox
        if sandbox is None:
            assert creation_plan is not None  # decided with the starts when no sandbox runs
            new_sandbox = await self._create_sandbox(pod, creation_plan, now)
            if new_sandbox is None:
                return self._sandbox_not_ready(starts, waiting)
        joined = sandbox or new_sandbox  # the sandbox the containers join
        assert joined is not None
        managed_files: dict[str, str] = {}
        if joined.on_pod_network and self.context.network is not None:
            pod_dns = self.context.pod_dns
            resolv_conf = (await pod_dns(pod)).resolv_conf() if pod_dns is not None else None
            managed_files = await self.context.network.write_pod_files(
                self.context.volumes.pod_dir(self.uid), joined.pod_ip, pod_hostname(pod), resolv_conf
            )
        creating = self._create_containers(pod, starts, joined.id, waiting, managed_files)
        if new_sandbox is not None:
            assert creation_plan is not None
            started, creation = await asyncio.gather(
                self._start_sandbox(new_sandbox, creation_plan, now), creating, return_exceptions=True
            )
            if isinstance(creation, BaseException):
                raise creation
            if isinstance(started, BaseException):
                raise started
            sandbox = started
        else:
            creation = await creating
        retry_at, created = creation
        if sandbox is None:
            # The sandbox did not start: containers made to join it cannot run.
            await self._remove_all([info for _, info in created])
            return self._sandbox_not_ready(starts, waiting)
        steps: list[Awaitable[object]] = [self._run_container(start, info) for start, info in created]
        # Docker's bridge: read the pod IP while the containers start (the host's network has none to read).
        inspect_sandbox = new_sandbox is not None and not sandbox.on_pod_network and not pod.spec.host_network
        if new_sandbox is not None and pod.spec.host_network:
            self._log.info("pod_sandbox_started", id=sandbox.id[:12], host_network=True)
        if inspect_sandbox:
            steps.append(self.context.runtime.inspect(sandbox.id))
        results = await asyncio.gather(*steps, return_exceptions=True)
        for result, (start, _) in zip(results, created, strict=False):  # the inspect's result comes last
            if isinstance(result, BaseException):
                self._log.error("container_start_failed", container=start.name, error=repr(result))
                retry_at = min(retry_at or float("inf"), time.time() + 1.0)
        if inspect_sandbox:
            inspected = results[-1]
            if isinstance(inspected, BaseException):
                self._log.warning("pod_sandbox_inspect_failed", error=repr(inspected))
                retry_at = min(retry_at or float("inf"), time.time() + 1.0)  # the next sync reads the IP
            else:
                ip = inspected.ip_address if isinstance(inspected, ContainerInfo) else ""
                self._log.info("pod_sandbox_started", id=sandbox.id[:12], ip=ip)
        return retry_at

    def _sandbox_not_ready(self, starts: Sequence[ContainerStart], waiting: dict[str, Waiting]) -> float | None:
        failure = self._state.sandbox_failure
        for start in starts:
            waiting.setdefault(start.name, sandbox_waiting(failure))
        return sandbox_retry_at(self.uid, failure, self.context.backoff) if failure is not None else None

    def _sandbox_failed(self, key: BackoffKey, spec_hash: str, message: str, now: float) -> None:
        self.context.backoff.record_failure(key, now)
        self._state = self._state.with_sandbox_failure(CreateFailure(CREATE_POD_SANDBOX_ERROR, message, now, spec_hash))
        self._log.warning("pod_sandbox_failed", error=message, retry_in=self.context.backoff.delay(key))
        self._event(WARNING, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {message}")

    # --- containers --------------------------------------------------------------------

    async def _prepare_volumes(
        self, pod: pod_pb2.Pod, starts: Sequence[ContainerStart], waiting: dict[str, Waiting]
    ) -> dict[str, str] | None:
        try:
            paths = await self.context.volumes.prepare(pod)
            group = fs_group(pod)
            if group is not None:
                empty_dirs = [paths[volume.name] for volume in pod.spec.volumes if not volume.HasField("host_path")]
                await asyncio.to_thread(apply_fs_group, empty_dirs, group)
            return paths
        except (VolumeError, OSError) as error:
            now = time.time()
            for start in starts:
                waiting[start.name] = self._record_create_failure(start, CREATE_CONTAINER_CONFIG_ERROR, str(error), now)
                retry_at = self._create_retry_at(start)
                if retry_at is not None:
                    self.poke_at(retry_at)
            self._log.warning("pod_volumes_failed", error=str(error))
            return None

    def _record_create_failure(self, start: ContainerStart, reason: str, message: str, now: float) -> Waiting:
        self.context.backoff.record_failure(start.backoff_key, now)
        self._state = self._state.with_create_failure(start.name, CreateFailure(reason, message, now, start.spec_hash))
        self._event(WARNING, "Failed", f"Error: {reason}: {message}", start.name)
        return reason, message

    def _create_retry_at(self, start: ContainerStart) -> float | None:
        failure = self._state.create_failures.get(start.name)
        if failure is None:
            return None
        return failure.failed_at + self.context.backoff.delay(backoff_key(self.uid, start.name, failure.spec_hash))

    async def _create_containers(
        self,
        pod: pod_pb2.Pod,
        starts: Sequence[ContainerStart],
        sandbox_id: str,
        waiting: dict[str, Waiting],
        managed_files: dict[str, str],
    ) -> tuple[float | None, list[tuple[ContainerStart, ContainerInfo]]]:
        """Prepares the volumes and creates the containers (joined to sandbox_id);
        when to retry what could not be created, and what was."""
        retry_at: float | None = None
        volume_paths = await self._prepare_volumes(pod, starts, waiting)
        if volume_paths is None:
            return None, []  # recorded; the worker wakes itself for the retry
        results = await asyncio.gather(
            *(self._create_container(pod, start, sandbox_id, volume_paths, managed_files) for start in starts),
            return_exceptions=True,
        )
        created: list[tuple[ContainerStart, ContainerInfo]] = []
        for start, result in zip(starts, results, strict=True):
            if isinstance(result, ContainerInfo):
                created.append((start, result))
                continue
            if isinstance(result, BaseException):
                self._log.error("container_create_failed", container=start.name, error=repr(result))
                at: float | None = time.time() + 1.0
            else:
                waiting[start.name] = result
                at = self._create_retry_at(start)
            if at is not None:
                retry_at = min(retry_at or at, at)
        return retry_at, created

    async def _create_container(
        self,
        pod: pod_pb2.Pod,
        start: ContainerStart,
        sandbox_id: str,
        volume_paths: dict[str, str],
        managed_files: dict[str, str],
    ) -> ContainerInfo | Waiting:
        """Creates one container; (reason, message) when it could not be created."""
        context = self.context
        now = time.time()
        if start.reuse is not None:
            info = start.reuse  # made before a crash, never started: start it
        else:
            if start.remove is not None:
                await context.runtime.remove(start.remove)
            if start.record_restart:
                context.backoff.record_failure(start.backoff_key, now)
            spec = start.spec
            namespace, pod_name = pod.metadata.namespace, pod.metadata.name
            name = docker_name(context.node, namespace, pod_name, spec.name, self.uid, start.attempt)
            labels = container_labels(
                context.node, pod, context.source_of(pod), spec.name, start.spec_hash, start.attempt
            )
            try:
                service_env = await context.service_environment(pod) if context.service_environment else None
                # Read only when runAsNonRoot must be checked against it: one inspect of the image.
                image_user = await context.runtime.image_user(spec.image) if needs_image_user(pod, spec) else None
                profiles = await self._seccomp_profiles(pod, spec)
                request = container_request(
                    pod,
                    spec,
                    name=name,
                    labels=labels,
                    infra_id=sandbox_id,
                    volume_paths=volume_paths,
                    runtime_default_seccomp=context.runtime_default_seccomp,
                    managed_files=managed_files,
                    service_env=service_env,
                    image_user=image_user,
                    seccomp_profiles=profiles,
                )
                info = await context.runtime.create(request)
                self._event(NORMAL, "Created", f"Created container: {spec.name}", spec.name, pod)
            except SeccompProfileError as error:
                self._log.warning("container_seccomp_profile_unusable", container=spec.name, error=str(error))
                return self._record_create_failure(start, CREATE_CONTAINER_ERROR, str(error), now)
            except ImageMissingError:
                message = f'Container image "{spec.image}" is not present with pull policy of Never'
                self._log.warning("container_image_missing", container=spec.name, image=spec.image)
                return self._record_create_failure(start, ERR_IMAGE_NEVER_PULL, message, now)
            except ContainerConfigError as error:
                self._log.warning("container_config_invalid", container=spec.name, error=str(error))
                return self._record_create_failure(start, CREATE_CONTAINER_CONFIG_ERROR, str(error), now)
            except RuntimeCallError as error:
                self._log.warning("container_create_failed", container=spec.name, error=str(error))
                return self._record_create_failure(start, CREATE_CONTAINER_ERROR, str(error), now)
        self._state = self._state.without_create_failures([start.name])
        return info

    async def _seccomp_profiles(self, pod: pod_pb2.Pod, spec: pod_pb2.Container) -> dict[str, str]:
        """The Localhost seccomp profiles the container uses, read from the kubelet's
        seccomp directory (<root-dir>/seccomp) at each creation, as Kubernetes does."""
        profiles: dict[str, str] = {}
        for profile in localhost_profiles(pod, spec):
            path = localhost_profile_path(self.context.volumes.root_dir, profile)
            profiles[profile] = await asyncio.to_thread(read_seccomp_profile, path)
        return profiles

    async def _run_container(self, start: ContainerStart, info: ContainerInfo) -> None:
        """Starts a created container; a start Docker refuses leaves it exited with Docker's error."""
        # Cleared only now: a container created for a sandbox that then failed
        # to start is removed, and must still come back as a replacement.
        self._state = self._state.replaced(start.name)
        info = await self.context.runtime.start(info)
        if info.running:
            self._log.info("container_started", container=start.name, id=info.id[:12], restart_count=info.restart_count)
            self._event(NORMAL, "Started", f"Started container {start.name}", start.name)
        else:
            self._log.warning(
                "container_start_failed", container=start.name, exit_code=info.exit_code, error=info.error or None
            )
            self._event(WARNING, "Failed", f"Error: {info.error or f'exit code {info.exit_code}'}", start.name)

    async def _kill_all(self, infos: list[ContainerInfo], grace: float) -> None:
        running = [info for info in infos if info.running]
        if running:
            await asyncio.gather(*(self.context.runtime.stop(info, grace) for info in running))

    async def _remove_all(self, infos: list[ContainerInfo]) -> None:
        if infos:
            await asyncio.gather(*(self.context.runtime.remove(info) for info in infos))

    # --- termination ---------------------------------------------------------------------

    async def _terminate(self, pod: pod_pb2.Pod) -> None:
        """Stops a pod the API server is deleting (Kubernetes' SyncTerminatingPod): its app
        containers (SIGTERM, the deletion's grace, SIGKILL), then its sandbox; then releases
        its address, publishes its final status and asks for its removal from the API."""
        context = self.context
        step = compute_termination(pod, context.cache.for_pod(self.uid), self._kill_grace)
        if not step.stopped:
            self._terminated = False
            context.probes.forget_pod(self.uid)
            if self._kill_grace is None:
                self._log.info(
                    "pod_terminating", grace_period=step.grace, running=len(step.kill) or len(step.kill_sandboxes)
                )
                for info in step.kill:
                    name = info.container_name
                    self._event(NORMAL, "Killing", f"Stopping container {name}", name, pod)
            self._kill_grace = step.grace
            self._killing = True
            try:
                if step.kill:
                    await self._kill_all(list(step.kill), step.grace)
                    step = compute_termination(pod, context.cache.for_pod(self.uid), self._kill_grace)
                if step.kill_sandboxes and not step.kill:
                    await self._kill_all(list(step.kill_sandboxes), step.grace)
            finally:
                self._killing = False
            step = compute_termination(pod, context.cache.for_pod(self.uid), self._kill_grace)
            if not step.stopped:
                self.poke_at(time.time() + 1.0)  # something would not stop (or restarted): again soon
                return
        if self._terminated:
            return  # reported already; the pod's removal from the API ends the worker
        # Its host ports' rules go before its address: the address may go to another pod next.
        if context.hostports is not None:
            await context.hostports.remove(self.uid)
        if context.network is not None:
            await context.network.release(self.uid)
        context.probes.forget_pod(self.uid)
        if not is_terminated(pod):
            # A pod the API shows terminal has had its final status (by this kubelet
            # before a restart): computing it again from what is left could only lose detail.
            self._note_start_time(pod)
            self._pod_ip = self._pod_ip or pod.status.pod_ip
            self._publish(pod, {}, terminal=True)
        self._terminated = True
        self._log.info("pod_terminated")
        if context.pod_terminated is not None:
            context.pod_terminated(self.uid, pod)

    def _hurry_kill(self, grace: int) -> None:
        """A second Delete shortened the grace while the pod's containers are being stopped:
        they get the shorter one now (SIGTERM again, then SIGKILL when it ends)."""
        self._kill_grace = grace
        running = [info for info in self.context.cache.for_pod(self.uid) if info.running and not info.is_infra]
        self._log.info("pod_termination_hurried", grace_period=grace, containers=len(running))
        previous = self._hurry
        if previous is not None and not previous.done():
            previous.cancel()
        self._hurry = asyncio.get_running_loop().create_task(
            self._kill_quietly(running, grace), name=f"pod-{self.uid}-hurry"
        )

    async def _kill_quietly(self, infos: list[ContainerInfo], grace: float) -> None:
        try:
            await self._kill_all(infos, grace)
        except Exception:  # the kill under way goes on; the next pass sees what still runs
            self._log.exception("pod_termination_hurry_failed")

    # --- status ------------------------------------------------------------------------

    def _publish(self, pod: pod_pb2.Pod, waiting: dict[str, Waiting], *, terminal: bool = False) -> None:
        """Computes and publishes the pod's status; terminal: its final one (the pod has stopped
        for good), in which nothing restarts and the phase is Succeeded or Failed."""
        context = self.context
        by_name = containers_by_name(context.cache.for_pod(self.uid))
        observations = []
        current_ids: set[str] = set()
        sandbox = running_sandbox(by_name)
        for spec in pod.spec.containers:
            attempts = by_name.get(spec.name, [])
            current = attempts[-1] if attempts else None
            previous = attempts[-2] if len(attempts) > 1 else None
            ready = False
            if current is not None and current.running:
                current_ids.add(current.id)
                if sandbox is not None and not terminal:
                    ready_before = reported_ready(pod, current.id)
                    context.probes.ensure(pod, spec, current, self._pod_ip, ready_before=ready_before)
                ready = context.probes.is_ready(spec, current.id)
            observations.append(
                ContainerObservation(
                    spec=spec,
                    current=current,
                    previous=previous,
                    waiting=waiting.get(spec.name),
                    ready=ready,
                )
            )
        context.probes.forget_pod(self.uid, keep=current_ids)
        reason = message = ""
        failure = self._state.sandbox_failure
        if failure is not None and sandbox is None:
            reason, message = failure.reason, failure.message
        status = compute_pod_status(
            pod,
            observations,
            pod_ip=self._pod_ip,
            host_ip=context.node_ip,
            start_time=self._start_time,
            now=time.time(),
            previous=self._last_status or (pod.status if pod.HasField("status") else None),
            reason=reason,
            message=message,
        )
        if terminal:
            status = terminal_pod_status(status, time.time())
        self._last_status = status
        context.publish_status(self.uid, pod, status)

    def current_status(self) -> pod_pb2.PodStatus | None:
        return self._last_status

    # --- teardown ----------------------------------------------------------------------

    async def _teardown(self) -> bool:
        """Stops and removes everything of the pod; True when nothing is left."""
        context = self.context
        containers = context.cache.for_pod(self.uid)
        if containers:
            grace = (
                termination_grace_period(self._last_pod, self._kill_grace)
                if self._last_pod is not None
                else max((c.grace_period for c in containers), default=0)
            )
            self._log.info("pod_stopping", containers=len(containers), grace_period=grace)
            apps = [c for c in containers if not c.is_infra]
            await self._kill_all(apps, grace)
            await self._kill_all([c for c in containers if c.is_infra], grace)
            await self._remove_all(context.cache.for_pod(self.uid))
        context.probes.forget_pod(self.uid)
        context.backoff.forget(lambda key: isinstance(key, tuple) and key[0] == self.uid)
        await context.volumes.cleanup(self.uid)
        left = context.cache.for_pod(self.uid)
        if left:
            self.poke_at(time.time() + 1.0)
            return False
        if context.hostports is not None:
            await context.hostports.remove(self.uid)
        if context.network is not None:
            await context.network.release(self.uid)
        if containers:
            self._log.info("pod_removed")
        return True


# --- pod-level security on the node --------------------------------------------------


class SeccompProfileError(Exception):
    """A Localhost seccomp profile could not be read or is not JSON (Kubernetes: CreateContainerError)."""


def read_seccomp_profile(path: str) -> str:
    """A profile's JSON, checked here so that a bad file is a clear waiting
    message rather than Docker's start error."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
        json.loads(text)
    except OSError as error:
        raise SeccompProfileError(f"cannot load seccomp profile {path!r}: {error.strerror or error}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise SeccompProfileError(f"cannot load seccomp profile {path!r}: not JSON: {error}") from None
    return text


def apply_fs_group(paths: Iterable[str], gid: int) -> None:
    """Kubernetes' SetVolumeOwnership for emptyDir volumes: everything in them
    owned by the fsGroup, readable and writable by the group, directories
    setgid so that what the containers create later gets the group too.

    A volume whose top directory is already set up is not walked again (as
    fsGroupChangePolicy OnRootMismatch): this runs whenever the pod's
    containers are made, and what they wrote since has the group already.
    Symlinks are not followed, nor their targets' modes changed."""
    for root in paths:
        info = os.lstat(root)
        if info.st_gid == gid and info.st_mode & stat.S_ISGID:
            continue
        for directory, subdirectories, files in os.walk(root):
            _set_group(directory, gid)
            # Symlinks to directories are listed with the directories, and not walked into.
            links = [name for name in subdirectories if os.path.islink(os.path.join(directory, name))]
            for name in [*files, *links]:
                _set_group(os.path.join(directory, name), gid)


def _set_group(path: str, gid: int) -> None:
    info = os.lstat(path)
    os.lchown(path, -1, gid)
    if stat.S_ISLNK(info.st_mode):
        return
    mode = stat.S_IMODE(info.st_mode) | 0o660
    if stat.S_ISDIR(info.st_mode):
        mode |= 0o110 | stat.S_ISGID
    os.chmod(path, mode)
