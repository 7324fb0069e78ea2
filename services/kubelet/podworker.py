"""One worker per pod: makes Docker match the pod's spec, one sync at a time.

A sync reads the container cache (no Docker call when nothing is to change),
kills what must go (containers no longer in the spec, a changed spec, a failed
liveness probe, a changed or dead sandbox), then starts what is missing or to
be restarted under the restartPolicy and the back-off, garbage-collects old
dead containers and publishes the pod's status. Workers of different pods run
concurrently, so one slow pod never holds up another.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

from kybernetes.v1 import pod_pb2
from services.common.log import get_logger

from services.common.runtime.backoff import Backoff
from .containers import CREATED, ContainerCache, ContainerInfo
from .dockerspec import ContainerConfigError, container_request, host_ports, infra_request, pod_hostname
from .naming import (
    INFRA_CONTAINER_NAME,
    LABEL_POD_IP,
    container_hash,
    container_labels,
    docker_name,
    grace_period_seconds,
    sandbox_hash,
)
from .podnetwork import PodNetwork, PodNetworkError
from .probes import ProbeManager
from .runtime import DockerRuntime, ImageMissingError, RuntimeCallError, call_priority
from .status import (
    CONTAINER_CREATING,
    CRASH_LOOP_BACK_OFF,
    CREATE_CONTAINER_CONFIG_ERROR,
    CREATE_CONTAINER_ERROR,
    ERR_IMAGE_NEVER_PULL,
    FAILED,
    RESTART_NEVER,
    RESTART_ON_FAILURE,
    SUCCEEDED,
    ContainerObservation,
    compute_pod_status,
    restart_policy,
    should_restart,
)
from .volumes import VolumeError, VolumeManager

# Dead containers kept per spec container besides the newest one: the previous
# run, for lastState and `logs --previous`.
DEAD_CONTAINERS_KEPT = 1
SANDBOX_ERROR_REASON = "CreatePodSandboxError"


@dataclass
class NodeContext:
    """What every pod worker of this kubelet shares."""

    node: str
    node_ip: str
    pause_image: str
    runtime: DockerRuntime
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


@dataclass
class _CreateFailure:
    reason: str
    message: str
    failed_at: float
    spec_hash: str


def pod_key(pod: pod_pb2.Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


class PodWorker:
    def __init__(
        self, context: NodeContext, uid: str, on_finished: Callable[[str], None], priority: int = 0
    ) -> None:
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
        self._create_failures: dict[str, _CreateFailure] = {}
        self._sandbox_failure: _CreateFailure | None = None
        # Containers killed because their spec changed or their sandbox went:
        # they come back whatever the restartPolicy says.
        self._replacing: set[str] = set()
        self._start_time: float | None = None
        self._pod_ip = ""
        self._last_status: pod_pb2.PodStatus | None = None
        self._log = get_logger(module="kubelet.podworker", pod_uid=uid)

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
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        call_priority.set(self.priority)
        failures = 0
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
                    else:
                        await self._sync(pod)
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception:
                    failures += 1
                    retry = min(30.0, 0.5 * 2 ** min(failures, 6))
                    self._log.exception("pod_sync_failed", retry_in=retry)
                    self.poke_at(time.time() + retry)
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._on_finished(self.uid)

    # --- sync ----------------------------------------------------------------------------

    async def _sync(self, pod: pod_pb2.Pod) -> None:
        context = self.context
        if pod.status.phase in (SUCCEEDED, FAILED) and not context.cache.for_pod(self.uid):
            # Over before this kubelet started, and its containers are gone:
            # never run it again; its recorded status stands.
            return
        if self._start_time is None:
            if pod.status.HasField("start_time"):
                self._start_time = pod.status.start_time.ToNanoseconds() / 1e9
            else:
                existing = context.cache.for_pod(self.uid)
                self._start_time = min((c.created_at for c in existing), default=time.time())
        grace = grace_period_seconds(pod)
        spec_names = {container.name for container in pod.spec.containers}

        # 1. Kill what must go.
        containers = context.cache.for_pod(self.uid)
        doomed = [c for c in containers if not c.is_infra and c.container_name not in spec_names]
        if doomed:
            self._log.info("removing_containers_not_in_spec", containers=sorted({c.container_name for c in doomed}))
            await self._kill_all(doomed, grace)
            await self._remove_all(doomed)
        await self._kill_changed(pod, grace)
        await self._handle_sandbox_change(pod, grace)

        sandbox = self._running_sandbox()
        if sandbox is not None and sandbox.on_pod_network and not self._wired(sandbox):
            # Started but never wired (the kubelet stopped in between): wire it or replace it.
            await self._attach_or_stop(sandbox, time.time())

        # 2. Decide, per container, what to do.
        now = time.time()
        to_start, waiting, wake_at = self._plan(pod, now)

        # 3. Start what is missing, in a sandbox (a new one if none runs).
        if to_start:
            retry_at = await self._start_missing(pod, to_start, waiting, now)
            if retry_at is not None:
                wake_at = min(wake_at or retry_at, retry_at)
        sandbox = self._running_sandbox()
        if sandbox is not None and not sandbox.on_pod_network and not sandbox.ip_address:
            # Not read when it started (a failed inspect): read it now.
            sandbox = await context.runtime.inspect(sandbox.id)
        if sandbox is not None and sandbox.pod_ip:
            self._pod_ip = sandbox.pod_ip

        # 4. A pod that is over keeps no sandbox (and so frees its host ports).
        sandbox = self._running_sandbox()
        if sandbox is not None and self._finished(pod):
            self._log.info("pod_completed_stopping_sandbox")
            await context.runtime.stop(sandbox, grace)

        # 5. Old dead containers.
        await self._collect_garbage()

        if wake_at is not None and wake_at != float("inf"):
            self.poke_at(wake_at)
        self._publish(pod, waiting)

    def _containers_by_name(self) -> dict[str, list[ContainerInfo]]:
        by_name: dict[str, list[ContainerInfo]] = defaultdict(list)
        for info in self.context.cache.for_pod(self.uid):
            by_name[info.container_name].append(info)
        return by_name

    def _running_sandbox(self) -> ContainerInfo | None:
        infras = self._containers_by_name().get(INFRA_CONTAINER_NAME, [])
        running = [info for info in infras if info.running]
        return running[-1] if running else None

    async def _kill_changed(self, pod: pod_pb2.Pod, grace: int) -> None:
        """Running containers whose spec changed or whose liveness probe failed."""
        by_name = self._containers_by_name()
        kills: list[ContainerInfo] = []
        for spec in pod.spec.containers:
            attempts = by_name.get(spec.name, [])
            running = [info for info in attempts if info.running]
            if not running:
                continue
            # Duplicates (from a crash between start and record) are killed too.
            for extra in running[:-1]:
                self._log.warning("killing_duplicate_container", container=spec.name, id=extra.id[:12])
                kills.append(extra)
            current = running[-1]
            if current is not attempts[-1]:
                kills.append(current)
                continue
            if current.spec_hash != container_hash(spec):
                self._log.info("container_spec_changed_restarting", container=spec.name)
                self._replacing.add(spec.name)
                kills.append(current)
                continue
            failure = self.context.probes.liveness_failure(current.id)
            if failure is not None:
                self._log.info("liveness_probe_failed_restarting", container=spec.name, detail=failure)
                kills.append(current)
        await self._kill_all(kills, grace)

    async def _handle_sandbox_change(self, pod: pod_pb2.Pod, grace: int) -> None:
        """A sandbox that died or no longer matches the pod takes its containers with it."""
        by_name = self._containers_by_name()
        infras = by_name.get(INFRA_CONTAINER_NAME, [])
        sandbox = infras[-1] if infras and infras[-1].running else None
        expected = sandbox_hash(pod)
        app_containers = [info for name, infos in by_name.items() if name != INFRA_CONTAINER_NAME for info in infos]
        running_apps = [info for info in app_containers if info.running]
        if sandbox is not None and sandbox.spec_hash == expected:
            # Several running sandboxes: keep the newest.
            await self._kill_all([info for info in infras if info.running and info is not sandbox], 0)
            return
        if sandbox is None and not running_apps:
            return  # nothing runs: the plan decides whether a new sandbox is due
        if sandbox is not None:
            self._log.info("pod_sandbox_changed_restarting_pod")
        else:
            self._log.info("pod_sandbox_gone_restarting_pod")
        policy = restart_policy(pod)
        for spec in pod.spec.containers:
            attempts = by_name.get(spec.name, [])
            current = attempts[-1] if attempts else None
            if policy == RESTART_NEVER and current is not None:
                continue  # a pod that must not restart stays as it ended
            if policy == RESTART_ON_FAILURE and current is not None and current.exited and current.exit_code == 0:
                continue
            self._replacing.add(spec.name)
        await self._kill_all(running_apps, grace)
        if sandbox is not None:
            await self._kill_all([sandbox], grace)

    def _plan(
        self, pod: pod_pb2.Pod, now: float
    ) -> tuple[list[pod_pb2.Container], dict[str, tuple[str, str]], float | None]:
        context = self.context
        policy = restart_policy(pod)
        by_name = self._containers_by_name()
        to_start: list[pod_pb2.Container] = []
        waiting: dict[str, tuple[str, str]] = {}
        wake_at: float | None = None
        for spec in pod.spec.containers:
            attempts = by_name.get(spec.name, [])
            current = attempts[-1] if attempts else None
            spec_hash = container_hash(spec)
            key = (self.uid, spec.name, spec_hash)
            failure = self._create_failures.get(spec.name)
            if failure is not None and failure.spec_hash != spec_hash:
                self._create_failures.pop(spec.name)  # a new spec: try it now
                failure = None
            if current is not None and current.running:
                continue
            if current is not None and current.state == CREATED:
                to_start.append(spec)  # left behind between create and start
                continue
            if current is not None and current.exited and spec.name not in self._replacing:
                if not should_restart(policy, current):
                    continue
                if current.ran_for() >= context.backoff.reset_after:
                    context.backoff.reset(key)
                delay = context.backoff.delay(key)
                ready_at = (current.finished_at or now) + delay
                if now < ready_at:
                    waiting[spec.name] = (
                        CRASH_LOOP_BACK_OFF,
                        f"back-off {delay:g}s restarting failed container={spec.name} pod={pod_key(pod)}",
                    )
                    wake_at = min(wake_at or ready_at, ready_at)
                    continue
            if failure is not None:
                retry_at = failure.failed_at + context.backoff.delay(key)
                if now < retry_at:
                    waiting[spec.name] = (failure.reason, failure.message)
                    wake_at = min(wake_at or retry_at, retry_at)
                    continue
            to_start.append(spec)
        return to_start, waiting, wake_at

    def _finished(self, pod: pod_pb2.Pod) -> bool:
        """No container runs and none will run again."""
        policy = restart_policy(pod)
        by_name = self._containers_by_name()
        for spec in pod.spec.containers:
            attempts = by_name.get(spec.name, [])
            if not attempts:
                return False
            current = attempts[-1]
            if not current.exited or spec.name in self._replacing or should_restart(policy, current):
                return False
        return True

    # --- sandbox ---------------------------------------------------------------------

    def _sandbox_message(self) -> str:
        if self._sandbox_failure is None:
            return ""
        return f"failed to create pod sandbox: {self._sandbox_failure.message}"

    def _sandbox_retry_at(self) -> float:
        failure = self._sandbox_failure
        assert failure is not None
        key = (self.uid, INFRA_CONTAINER_NAME, failure.spec_hash)
        return failure.failed_at + self.context.backoff.delay(key)

    async def _create_sandbox(self, pod: pod_pb2.Pod, now: float) -> ContainerInfo | None:
        """Creates (does not start) the pod's infra container; None when it
        cannot be made now (the failure is recorded)."""
        context = self.context
        expected = sandbox_hash(pod)
        key = (self.uid, INFRA_CONTAINER_NAME, expected)
        if self._sandbox_failure is not None:
            if self._sandbox_failure.spec_hash == expected and now < self._sandbox_retry_at():
                return None
        infras = self._containers_by_name().get(INFRA_CONTAINER_NAME, [])
        current = infras[-1] if infras else None
        if current is not None and current.state == CREATED:
            if current.spec_hash == expected:
                return current  # made before a crash, never started: start it
            await context.runtime.remove(current)
            attempt = current.restart_count
        else:
            attempt = current.restart_count + 1 if current is not None else 0
        name = docker_name(context.node, pod.metadata.namespace, pod.metadata.name, INFRA_CONTAINER_NAME, self.uid, attempt)
        labels = container_labels(context.node, pod, context.source_of(pod), INFRA_CONTAINER_NAME, expected, attempt)
        on_pod_network = context.network is not None and not host_ports(pod)
        try:
            if on_pod_network:
                labels[LABEL_POD_IP] = await context.network.address_for(self.uid)  # type: ignore[union-attr]
            request = infra_request(
                pod, name=name, labels=labels, pause_image=context.pause_image, node_ip=context.node_ip,
                runtime_default_seccomp=context.runtime_default_seccomp, network_disabled=on_pod_network,
            )
            return await context.runtime.create(request)
        except (ImageMissingError, RuntimeCallError, PodNetworkError, OSError) as error:
            message = f'pause image "{context.pause_image}" is not present' if isinstance(error, ImageMissingError) else str(error)
            return self._sandbox_failed(key, expected, message, now)

    def _wired(self, sandbox: ContainerInfo) -> bool:
        network = self.context.network
        return network is not None and network.attached(sandbox.id)

    async def _attach_or_stop(self, sandbox: ContainerInfo, now: float) -> bool:
        """Wires a running sandbox into the pod network before any app container
        starts in it; one that cannot be wired is removed, and the failure
        recorded and retried with back-off like any sandbox failure."""
        context = self.context
        try:
            if context.network is None:
                raise PodNetworkError("the kubelet's pod network is off (--network-plugin=docker)")
            inspected = await context.runtime.inspect(sandbox.id)
            if inspected is None or not inspected.running or not inspected.pid:
                raise PodNetworkError("the sandbox stopped before its network was set up")
            await context.network.attach(sandbox.id, inspected.pid, sandbox.pod_ip)
        except Exception as error:  # any failure leaves a sandbox no container can use
            await context.runtime.remove(sandbox)
            key = (self.uid, INFRA_CONTAINER_NAME, sandbox.spec_hash)
            self._sandbox_failed(key, sandbox.spec_hash, f"pod network: {error}", now)
            return False
        self._log.info("pod_sandbox_started", id=sandbox.id[:12], ip=sandbox.pod_ip)
        return True

    async def _start_sandbox(self, info: ContainerInfo, now: float) -> ContainerInfo | None:
        """Starts a created infra container; None when it did not start (recorded)."""
        context = self.context
        key = (self.uid, INFRA_CONTAINER_NAME, info.spec_hash)
        try:
            info = await context.runtime.start(info)
        except RuntimeCallError as error:
            return self._sandbox_failed(key, info.spec_hash, str(error), now)
        if not info.running:
            await context.runtime.remove(info)
            return self._sandbox_failed(key, info.spec_hash, info.error or f"exited with {info.exit_code}", now)
        if info.on_pod_network and not await self._attach_or_stop(info, now):
            return None
        if self._sandbox_failure is not None:
            context.backoff.reset(key)
            self._sandbox_failure = None
        return info

    async def _start_missing(
        self, pod: pod_pb2.Pod, to_start: list[pod_pb2.Container], waiting: dict[str, tuple[str, str]], now: float
    ) -> float | None:
        """Creates and starts the containers of to_start, with a new sandbox when
        none runs; when to sync again for what could not start (None: no need).

        Docker's calls for one pod overlap where Docker allows it: the app
        containers are created while the new sandbox starts (they only need its
        id). On the pod network they start once the sandbox is wired; on
        Docker's bridge they start while its IP is read."""
        sandbox = self._running_sandbox()
        new_sandbox: ContainerInfo | None = None
        if sandbox is None:
            new_sandbox = await self._create_sandbox(pod, now)
            if new_sandbox is None:
                return self._sandbox_not_ready(to_start, waiting)
        joined = sandbox or new_sandbox  # the sandbox the containers join
        assert joined is not None
        managed_files: dict[str, str] = {}
        if joined.on_pod_network and self.context.network is not None:
            managed_files = await self.context.network.write_pod_files(
                self.context.volumes.pod_dir(self.uid), joined.pod_ip, pod_hostname(pod)
            )
        creating = self._create_containers(pod, to_start, joined.id, waiting, managed_files)
        if new_sandbox is not None:
            started, creation = await asyncio.gather(
                self._start_sandbox(new_sandbox, now), creating, return_exceptions=True
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
            return self._sandbox_not_ready(to_start, waiting)
        steps = [self._run_container(spec, info) for spec, info in created]
        # Docker's bridge: read the pod IP while the containers start.
        inspect_sandbox = new_sandbox is not None and not sandbox.on_pod_network
        if inspect_sandbox:
            steps.append(self.context.runtime.inspect(sandbox.id))
        results = await asyncio.gather(*steps, return_exceptions=True)
        for result, (spec, _) in zip(results, created):
            if isinstance(result, BaseException):
                self._log.error("container_start_failed", container=spec.name, error=repr(result))
                retry_at = min(retry_at or float("inf"), time.time() + 1.0)
        if inspect_sandbox:
            inspected = results[-1]
            if isinstance(inspected, BaseException):
                self._log.warning("pod_sandbox_inspect_failed", error=repr(inspected))
                retry_at = min(retry_at or float("inf"), time.time() + 1.0)  # the next sync reads the IP
            else:
                self._log.info("pod_sandbox_started", id=sandbox.id[:12], ip=inspected.ip_address if inspected else "")
        return retry_at

    def _sandbox_not_ready(self, specs: list[pod_pb2.Container], waiting: dict[str, tuple[str, str]]) -> float | None:
        for spec in specs:
            waiting.setdefault(spec.name, (CONTAINER_CREATING, self._sandbox_message()))
        return self._sandbox_retry_at() if self._sandbox_failure is not None else None

    def _sandbox_failed(self, key: tuple, spec_hash: str, message: str, now: float) -> None:
        self.context.backoff.record_failure(key, now)
        self._sandbox_failure = _CreateFailure(SANDBOX_ERROR_REASON, message, now, spec_hash)
        self._log.warning("pod_sandbox_failed", error=message, retry_in=self.context.backoff.delay(key))
        return None

    # --- containers --------------------------------------------------------------------

    async def _prepare_volumes(
        self, pod: pod_pb2.Pod, to_start: list[pod_pb2.Container], waiting: dict[str, tuple[str, str]]
    ) -> dict[str, str] | None:
        try:
            return await self.context.volumes.prepare(pod)
        except (VolumeError, OSError) as error:
            now = time.time()
            for spec in to_start:
                waiting[spec.name] = self._record_create_failure(spec, CREATE_CONTAINER_CONFIG_ERROR, str(error), now)
                retry_at = self._create_retry_at(spec)
                if retry_at is not None:
                    self.poke_at(retry_at)
            self._log.warning("pod_volumes_failed", error=str(error))
            return None

    def _record_create_failure(self, spec: pod_pb2.Container, reason: str, message: str, now: float) -> tuple[str, str]:
        spec_hash = container_hash(spec)
        self.context.backoff.record_failure((self.uid, spec.name, spec_hash), now)
        self._create_failures[spec.name] = _CreateFailure(reason, message, now, spec_hash)
        return reason, message

    def _create_retry_at(self, spec: pod_pb2.Container) -> float | None:
        failure = self._create_failures.get(spec.name)
        if failure is None:
            return None
        return failure.failed_at + self.context.backoff.delay((self.uid, spec.name, failure.spec_hash))

    async def _create_containers(
        self, pod: pod_pb2.Pod, specs: list[pod_pb2.Container], sandbox_id: str, waiting: dict[str, tuple[str, str]],
        managed_files: dict[str, str],
    ) -> tuple[float | None, list[tuple[pod_pb2.Container, ContainerInfo]]]:
        """Prepares the volumes and creates the containers (joined to sandbox_id);
        when to retry what could not be created, and what was."""
        retry_at: float | None = None
        volume_paths = await self._prepare_volumes(pod, specs, waiting)
        if volume_paths is None:
            return None, []  # recorded; the worker wakes itself for the retry
        results = await asyncio.gather(
            *(self._create_container(pod, spec, sandbox_id, volume_paths, managed_files) for spec in specs),
            return_exceptions=True,
        )
        created: list[tuple[pod_pb2.Container, ContainerInfo]] = []
        for spec, result in zip(specs, results):
            if isinstance(result, ContainerInfo):
                created.append((spec, result))
                continue
            if isinstance(result, BaseException):
                self._log.error("container_create_failed", container=spec.name, error=repr(result))
                at: float | None = time.time() + 1.0
            else:
                waiting[spec.name] = result
                at = self._create_retry_at(spec)
            if at is not None:
                retry_at = min(retry_at or at, at)
        return retry_at, created

    async def _create_container(
        self, pod: pod_pb2.Pod, spec: pod_pb2.Container, sandbox_id: str, volume_paths: dict[str, str],
        managed_files: dict[str, str],
    ) -> ContainerInfo | tuple[str, str]:
        """Creates one container; (reason, message) when it could not be created."""
        context = self.context
        attempts = self._containers_by_name().get(spec.name, [])
        current = attempts[-1] if attempts else None
        spec_hash = container_hash(spec)
        key = (self.uid, spec.name, spec_hash)
        now = time.time()
        if (
            current is not None and current.state == CREATED and current.spec_hash == spec_hash
            and current.sandbox_id == sandbox_id
        ):
            info = current  # made before a crash, never started: start it
        else:
            if current is not None and current.state == CREATED:
                await context.runtime.remove(current)
            restarted = current is not None and current.state != CREATED
            attempt = current.restart_count + (1 if restarted else 0) if current is not None else 0
            if restarted and spec.name not in self._replacing:
                context.backoff.record_failure(key, now)
            name = docker_name(context.node, pod.metadata.namespace, pod.metadata.name, spec.name, self.uid, attempt)
            labels = container_labels(context.node, pod, context.source_of(pod), spec.name, spec_hash, attempt)
            try:
                request = container_request(
                    pod, spec, name=name, labels=labels, infra_id=sandbox_id, volume_paths=volume_paths,
                    runtime_default_seccomp=context.runtime_default_seccomp, managed_files=managed_files,
                )
                info = await context.runtime.create(request)
            except ImageMissingError:
                message = f'Container image "{spec.image}" is not present with pull policy of Never'
                self._log.warning("container_image_missing", container=spec.name, image=spec.image)
                return self._record_create_failure(spec, ERR_IMAGE_NEVER_PULL, message, now)
            except ContainerConfigError as error:
                self._log.warning("container_config_invalid", container=spec.name, error=str(error))
                return self._record_create_failure(spec, CREATE_CONTAINER_CONFIG_ERROR, str(error), now)
            except RuntimeCallError as error:
                self._log.warning("container_create_failed", container=spec.name, error=str(error))
                return self._record_create_failure(spec, CREATE_CONTAINER_ERROR, str(error), now)
        self._create_failures.pop(spec.name, None)
        return info

    async def _run_container(self, spec: pod_pb2.Container, info: ContainerInfo) -> None:
        """Starts a created container; a start Docker refuses leaves it exited with Docker's error."""
        # Cleared only now: a container created for a sandbox that then failed
        # to start is removed, and must still come back as a replacement.
        self._replacing.discard(spec.name)
        info = await self.context.runtime.start(info)
        if info.running:
            self._log.info("container_started", container=spec.name, id=info.id[:12], restart_count=info.restart_count)
        else:
            self._log.warning(
                "container_start_failed", container=spec.name, exit_code=info.exit_code, error=info.error or None
            )

    async def _kill_all(self, infos: list[ContainerInfo], grace: float) -> None:
        running = [info for info in infos if info.running]
        if running:
            await asyncio.gather(*(self.context.runtime.stop(info, grace) for info in running))

    async def _remove_all(self, infos: list[ContainerInfo]) -> None:
        if infos:
            await asyncio.gather(*(self.context.runtime.remove(info) for info in infos))

    async def _collect_garbage(self) -> None:
        """Keeps, per container, the newest attempt and DEAD_CONTAINERS_KEPT dead ones before it."""
        doomed: list[ContainerInfo] = []
        for name, attempts in self._containers_by_name().items():
            dead = [info for info in attempts[:-1] if info.exited]
            keep = 0 if name == INFRA_CONTAINER_NAME else DEAD_CONTAINERS_KEPT
            doomed.extend(dead[: max(0, len(dead) - keep)])
        await self._remove_all(doomed)

    # --- status ------------------------------------------------------------------------

    def _publish(self, pod: pod_pb2.Pod, waiting: dict[str, tuple[str, str]]) -> None:
        context = self.context
        by_name = self._containers_by_name()
        observations = []
        current_ids: set[str] = set()
        sandbox = self._running_sandbox()
        for spec in pod.spec.containers:
            attempts = by_name.get(spec.name, [])
            current = attempts[-1] if attempts else None
            previous = attempts[-2] if len(attempts) > 1 else None
            ready = False
            if current is not None and current.running:
                current_ids.add(current.id)
                if sandbox is not None:
                    context.probes.ensure(pod, spec, current, self._pod_ip)
                ready = context.probes.is_ready(spec, current.id)
            observations.append(ContainerObservation(
                spec=spec, current=current, previous=previous, waiting=waiting.get(spec.name), ready=ready,
            ))
        context.probes.forget_pod(self.uid, keep=current_ids)
        reason = message = ""
        if self._sandbox_failure is not None and sandbox is None:
            reason, message = SANDBOX_ERROR_REASON, self._sandbox_failure.message
        status = compute_pod_status(
            pod, observations, pod_ip=self._pod_ip, host_ip=context.node_ip, start_time=self._start_time,
            now=time.time(), previous=self._last_status or (pod.status if pod.HasField("status") else None),
            reason=reason, message=message,
        )
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
            grace = grace_period_seconds(self._last_pod) if self._last_pod is not None else max(
                (c.grace_period for c in containers), default=0
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
        if context.network is not None:
            await context.network.release(self.uid)
        if containers:
            self._log.info("pod_removed")
        return True

