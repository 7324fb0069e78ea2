"""Shared pieces of the control-plane tests (scheduler, endpoints, node lifecycle, replicator).

Each test module runs its own etcd and API server (with the controllers it
tests), so no other test's leftovers are scheduled, evicted or counted. There
is no kubelet: tests play its part through the API, writing node heartbeats
and pod status (running, IP, Ready) the way a kubelet would.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
import time
from typing import Any, Iterable

import grpc
from google.protobuf import timestamp_pb2

from kybernetes.v1 import meta_pb2, node_pb2, pod_pb2
from services.common.client import ApiClient
from services.common.resources import NODES, PODS
from services.common.runtime.informer import Informer
from tools.processes import ApiServerProcess, EtcdProcess, ManagedProcess, python_module_argv

FAR_GRACE = "--node-monitor-grace-period=3600"  # nodes stay ready without heartbeats
# How these tests wait (`eventually(check, what=..., **API_WAIT)`): the control plane
# acts within a second or two; an object a check reads may not exist yet (an RPC error).
API_WAIT: dict[str, Any] = {"timeout": 30, "interval": 0.1, "retry_on": (grpc.aio.AioRpcError,)}
# A replicator started after another was killed waits for its lease to run out: 4 s here,
# not Kubernetes' 15 s; the renew deadline outlasts an API server restart.
REPLICATOR_LEASE = (
    "--leader-elect-lease-duration=4s", "--leader-elect-renew-deadline=3s", "--leader-elect-retry-period=0.5s"
)


class ControlPlane:
    """A private etcd, an API server with the given controllers, and optionally a replicator."""

    def __init__(self, controllers: str, *extra_args: str, replicator: bool = False) -> None:
        self.workdir = tempfile.mkdtemp(prefix="kyb-control-")
        self.etcd = EtcdProcess(f"{self.workdir}/etcd")
        self.extra_args = (f"--controllers={controllers}", *extra_args)
        self.apiserver: ApiServerProcess | None = None
        self.replicator: ManagedProcess | None = None
        self.port = 0
        self._apiserver_starts = 0
        self._replicator_starts = 0
        try:
            self.start_apiserver()
            if replicator:
                self.start_replicator()
        except Exception:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_apiserver(self) -> None:
        """Starts the API server (again on the same port after a stop)."""
        self._apiserver_starts += 1
        self.apiserver = ApiServerProcess(
            self.etcd.endpoint,
            *self.extra_args,
            port=self.port or None,
            log_path=f"{self.workdir}/apiserver-{self._apiserver_starts}.log",
        )
        self.port = self.apiserver.port

    def stop_apiserver(self) -> None:
        if self.apiserver is not None:
            self.apiserver.stop()
            self.apiserver = None

    def start_replicator(self, *args: str) -> None:
        self._replicator_starts += 1
        self.replicator = ManagedProcess(
            "replicator",
            python_module_argv(
                "services.replicator.main", "--server", self.address, "--resync-period", "5", *REPLICATOR_LEASE, *args
            ),
            f"{self.workdir}/replicator-{self._replicator_starts}.log",
        )

    def kill_replicator(self) -> None:
        if self.replicator is not None:
            self.replicator.kill()
            self.replicator = None

    def stop_replicator(self) -> int | None:
        if self.replicator is None:
            return None
        code = self.replicator.stop()
        self.replicator = None
        return code

    def logs(self) -> str:
        """Every log this control plane wrote, for a failing test's output."""
        import pathlib

        parts = []
        for path in sorted(pathlib.Path(self.workdir).glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-6000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        self.stop_replicator()
        self.stop_apiserver()
        self.etcd.stop()
        if os.environ.get("KYB_KEEP_CONTROL_LOGS"):
            print(f"control plane logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


async def kubecfg(address: str, namespace: str, *args: str) -> str:
    """Runs the kubecfg CLI as a user would; returns its output (fails on a non-zero exit)."""
    process = await asyncio.create_subprocess_exec(
        *python_module_argv("services.kubecfg.main", "--server", address, "--namespace", namespace, *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise AssertionError(f"kubecfg {' '.join(args)} exited {process.returncode}: {err.decode()}")
    return out.decode()


# -- playing the kubelet ---------------------------------------------------------------


def stamp(epoch: float | None = None) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(time.time() if epoch is None else epoch))


async def heartbeat(api: ApiClient, name: str, status: str = "True") -> node_pb2.Node:
    """Posts the node's Ready condition with a fresh heartbeat, as its kubelet does."""
    node = await api.get(NODES, name)
    now = stamp()
    for condition in node.status.conditions:
        if condition.type == "Ready":
            if condition.status != status:
                condition.last_transition_time.CopyFrom(now)
            condition.status = status
            condition.reason = "KubeletReady" if status == "True" else "KubeletNotReady"
            condition.message = ""
            condition.last_heartbeat_time.CopyFrom(now)
            break
    else:
        node.status.conditions.add(
            type="Ready", status=status, reason="KubeletReady", last_heartbeat_time=now, last_transition_time=now
        )
    return await api.update_status(node)


async def add_node(
    api: ApiClient,
    name: str,
    *,
    labels: dict[str, str] | None = None,
    allocatable: dict[str, str] | None = None,
    ready: str | None = "True",
    unschedulable: bool = False,
) -> node_pb2.Node:
    node = node_pb2.Node(
        metadata=meta_pb2.ObjectMeta(name=name, labels=labels or {}),
        spec=node_pb2.NodeSpec(unschedulable=unschedulable),
    )
    await api.create(node)
    node = await api.get(NODES, name)
    node.status.allocatable.update(allocatable or {"cpu": "4", "memory": "8Gi"})
    node.status.capacity.update(allocatable or {"cpu": "4", "memory": "8Gi"})
    await api.update_status(node)
    if ready is not None:
        return await heartbeat(api, name, ready)
    return node


class Heartbeats:
    """Keeps posting fresh heartbeats for some nodes until stopped (an async context manager)."""

    def __init__(self, api: ApiClient, names: Iterable[str], interval: float = 0.5) -> None:
        self.api = api
        self.names = set(names)
        self.interval = interval
        self._task: asyncio.Task | None = None

    async def _beat(self) -> None:
        while True:
            for name in list(self.names):
                try:
                    await heartbeat(self.api, name)
                except grpc.aio.AioRpcError:
                    pass  # e.g. the API server is restarting
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> "Heartbeats":
        self._task = asyncio.create_task(self._beat(), name="test-heartbeats")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def set_pod_status(
    api: ApiClient, namespace: str, name: str, *, phase: str = "Running", ip: str = "", ready: bool = True
) -> pod_pb2.Pod:
    """Writes what a kubelet reports for a started pod (fresh read, so it never races a stale copy)."""
    for _ in range(10):
        pod = await api.get(PODS, name, namespace)
        pod.status.phase = phase
        if ip:
            pod.status.pod_ip = ip
            pod.status.host_ip = "127.0.0.1"
        kept = [c for c in pod.status.conditions if c.type != "Ready"]
        del pod.status.conditions[:]
        pod.status.conditions.extend(kept)
        pod.status.conditions.add(type="Ready", status="True" if ready else "False", last_transition_time=stamp())
        del pod.status.container_statuses[:]
        for container in pod.spec.containers:
            status = pod.status.container_statuses.add(name=container.name, image=container.image, ready=ready)
            if phase == "Running":
                status.state.running.started_at.CopyFrom(stamp())
        try:
            return await api.update_status(pod)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ABORTED:
                raise
    raise AssertionError(f"could not write the status of {namespace}/{name}")


class FakeKubelets:
    """Plays the kubelets of some nodes: marks each pod bound to one of them running and ready,
    with an IP of its own (once; a stopped kubelet is one removed from `nodes`)."""

    def __init__(self, api: ApiClient, namespace: str, nodes: Iterable[str] | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self.nodes = set(nodes) if nodes is not None else None  # None: every node
        self.addresses = (f"10.20.{i // 250}.{i % 250 + 1}" for i in itertools.count())
        self.started: set[str] = set()

    async def start_bound_pods(self) -> None:
        for pod in await pods_in(self.api, self.namespace):
            name, node = pod.metadata.name, pod.spec.node_name
            if not node or name in self.started or (self.nodes is not None and node not in self.nodes):
                continue
            try:
                await set_pod_status(self.api, self.namespace, name, ip=next(self.addresses))
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            self.started.add(name)


async def pods_in(api: ApiClient, namespace: str, selector: str = "") -> list[pod_pb2.Pod]:
    return list((await api.list(PODS, namespace, label_selector=selector)).items)


def ready_condition(pod: pod_pb2.Pod) -> str:
    for condition in pod.status.conditions:
        if condition.type == "Ready":
            return condition.status
    return ""


class PodCreations:
    """Records every pod that appears in a namespace (an informer that resumes across
    API server restarts), so a test can tell that no extra pod was ever created."""

    def __init__(self, api: ApiClient, namespace: str) -> None:
        self.names: list[str] = []
        self.informer = Informer(api, PODS, namespace=namespace, retry_initial=0.05, retry_max=0.5)
        self.informer.add_handler(self._record)
        self._task: asyncio.Task | None = None

    def _record(self, event_type: str, pod: pod_pb2.Pod, old: Any) -> None:
        if event_type == "ADDED":
            self.names.append(pod.metadata.name)

    async def __aenter__(self) -> "PodCreations":
        self._task = asyncio.create_task(self.informer.run(), name="test-pod-creations")
        await self.informer.wait_synced(10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
