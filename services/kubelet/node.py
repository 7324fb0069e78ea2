"""The kubelet's Node object: registered at start, its status posted when it changes.

Registration creates the Node (or, when it exists, keeps its spec and labels
and refreshes its status). Then, as Kubernetes' kubelet with node leases
(KEP-589), every --node-status-frequency the kubelet computes the status and
posts it only when it differs from the stored Node's (heartbeat times aside:
e.g. the node lifecycle controller marked it Unknown, or the node turned
Ready), or when --node-status-report-frequency (5 minutes) has passed since
the last post. The heartbeat proper is the node's Lease (nodelease.py): a
status write fans out to every watcher of Nodes (every proxy), a lease renewal
only to the controllers. An unreachable API server is retried, and the
kubelet runs its pods meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from importlib import metadata
from typing import Any, Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import node_pb2
from services.common.log import get_logger
from services.common.quantity import format_cpu_millis, format_memory_bytes
from services.common.runtime import Backoff
from services.common.resources import NODES
from services.common.timestamps import now_timestamp

log = get_logger(module="kubelet.node")

MAX_PODS = "110"
# Kubernetes' nodeStatusUpdateRetry: a heartbeat that meets a concurrent write tries again.
CONFLICT_RETRIES = 5
# Kubernetes' nodeStatusReportFrequency: the status is posted at least this often.
DEFAULT_REPORT_FREQUENCY = 300.0
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}


def host_memory_bytes(meminfo: str = "/proc/meminfo") -> int:
    try:
        with open(meminfo, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def kubelet_version() -> str:
    try:
        return "v" + metadata.version("kybernetes")
    except metadata.PackageNotFoundError:
        return "v0.0.0"


def os_image() -> str:
    """The host's distribution, as Kubernetes' nodeInfo.osImage: /etc/os-release's PRETTY_NAME."""
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        return ""
    return release.get("PRETTY_NAME") or release.get("NAME", "")


def _condition_view(condition: node_pb2.NodeCondition) -> tuple[str, str, str, str, tuple[int, int]]:
    stamp = condition.last_transition_time
    return condition.type, condition.status, condition.reason, condition.message, (stamp.seconds, stamp.nanos)


def status_changed(desired: node_pb2.NodeStatus, stored: node_pb2.NodeStatus) -> bool:
    """Whether what this kubelet would post differs from the stored status (Kubernetes'
    nodeStatusHasChanged): its own conditions compared without their heartbeat times,
    and the fields it sets; conditions other components own are not its to compare."""
    own = {condition.type for condition in desired.conditions}
    mine = sorted(_condition_view(c) for c in desired.conditions)
    theirs = sorted(_condition_view(c) for c in stored.conditions if c.type in own)
    if mine != theirs:
        return True
    compared = node_pb2.NodeStatus()
    compared.CopyFrom(stored)
    del compared.conditions[:]
    wanted = node_pb2.NodeStatus()
    wanted.CopyFrom(desired)
    del wanted.conditions[:]
    # What other components write into the status is not compared (none today but conditions).
    return wanted.SerializeToString(deterministic=True) != compared.SerializeToString(deterministic=True)


def build_node_status(
    *, node_ip: str, hostname: str, kubelet_port: int, runtime_version: str, memory_bytes: int | None = None
) -> node_pb2.NodeStatus:
    """Capacity (the host's cpu and memory), addresses, endpoint and versions."""
    memory = host_memory_bytes() if memory_bytes is None else memory_bytes
    capacity = {
        "cpu": format_cpu_millis((os.cpu_count() or 1) * 1000),
        "memory": format_memory_bytes(memory),
        "pods": MAX_PODS,
    }
    status = node_pb2.NodeStatus()
    status.capacity.update(capacity)
    status.allocatable.update(capacity)
    status.addresses.extend([
        node_pb2.NodeAddress(type="InternalIP", address=node_ip),
        node_pb2.NodeAddress(type="Hostname", address=hostname),
    ])
    status.daemon_endpoints.kubelet_endpoint.port = kubelet_port
    status.node_info.CopyFrom(node_pb2.NodeSystemInfo(
        kubelet_version=kubelet_version(),
        container_runtime_version=f"docker://{runtime_version}" if runtime_version else "docker",
        operating_system=platform.system().lower(),
        architecture=_ARCHITECTURES.get(platform.machine(), platform.machine()),
        kernel_version=platform.release(),
        os_image=os_image(),
    ))
    return status


class NodeStatusReporter:
    def __init__(
        self,
        client: Any,
        node_name: str,
        *,
        node_ip: str,
        hostname: str,
        kubelet_port: int,
        runtime_version: str,
        frequency: float,
        network_not_ready: Callable[[], str | None] = lambda: None,
        report_frequency: float = DEFAULT_REPORT_FREQUENCY,
        stored_node: Callable[[], node_pb2.Node | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.node_name = node_name
        self.frequency = frequency
        self.report_frequency = report_frequency
        # The Node as the API server has it (this kubelet's own-node informer); None: not
        # known, and the status is read with a Get before deciding.
        self._stored_node = stored_node
        self._clock = clock
        self._last_report: float | None = None
        # The registered Node's uid (its Lease's owner), once seen.
        self.node_uid: str | None = None
        self.reports = 0
        self._base_status = build_node_status(
            node_ip=node_ip, hostname=hostname, kubelet_port=kubelet_port, runtime_version=runtime_version,
        )
        self._network_not_ready = network_not_ready
        self._ready_since: Timestamp | None = None
        self._ready_state: bool | None = None
        self._wake = asyncio.Event()
        self._registered = False
        self._log = log.bind(node=node_name)

    def _status(self) -> node_pb2.NodeStatus:
        status = node_pb2.NodeStatus()
        status.CopyFrom(self._base_status)
        now = now_timestamp()
        not_ready = self._network_not_ready()
        ready = not_ready is None
        if self._ready_since is None or ready != self._ready_state:
            self._ready_since = now
            self._ready_state = ready
        # As Kubernetes' kubelet: NotReady while the pod network cannot be set up, so
        # nothing is scheduled to a node that could not give its pods addresses.
        status.conditions.append(node_pb2.NodeCondition(
            type="Ready", status="True" if ready else "False", reason="KubeletReady" if ready else "KubeletNotReady",
            message="kubelet is posting ready status" if ready else not_ready,
            last_heartbeat_time=now, last_transition_time=self._ready_since,
        ))
        return status

    def poke(self) -> None:
        """Sends the status now rather than at the next period (the node just turned Ready)."""
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    def _node(self) -> node_pb2.Node:
        node = node_pb2.Node(api_version="v1", kind="Node")
        node.metadata.name = self.node_name
        node.metadata.labels.update({
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": self._base_status.node_info.operating_system,
            "kubernetes.io/arch": self._base_status.node_info.architecture,
        })
        node.status.CopyFrom(self._status())
        return node

    async def register(self) -> None:
        node = self._node()
        try:
            created = await self.client.create(node)
            self.node_uid = created.metadata.uid or self.node_uid
            self._log.info("node_registered")
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            self._log.info("node_exists_updating_status")
        # Create may not take status from a client: set it explicitly.
        await self.heartbeat()
        self._registered = True

    async def heartbeat(self) -> None:
        # UpdateStatus replaces the whole status: conditions other components own (the range
        # allocator's NetworkUnavailable) are carried over from the stored Node, as
        # Kubernetes' kubelet keeps them. The write is conditional on the version read, so
        # a condition set in between is not overwritten: read again and retry.
        for attempt in range(CONFLICT_RETRIES):
            node = node_pb2.Node()
            node.metadata.name = self.node_name
            node.status.CopyFrom(self._status())
            stored = await self.client.get(NODES, self.node_name, "")
            self.node_uid = stored.metadata.uid or self.node_uid
            node.metadata.resource_version = stored.metadata.resource_version
            own = {condition.type for condition in node.status.conditions}
            node.status.conditions.extend(c for c in stored.status.conditions if c.type not in own)
            try:
                await self.client.update_status(node)
                self._last_report = self._clock()
                self.reports += 1
                return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.ABORTED or attempt == CONFLICT_RETRIES - 1:
                    raise

    def _needs_report(self) -> bool | None:
        """True: post the status; False: nothing to post; None: the stored Node is not known
        here (no informer, or not synced yet): read it to decide."""
        if self._last_report is None or self._clock() - self._last_report >= self.report_frequency:
            return True
        stored = self._stored_node() if self._stored_node is not None else None
        if stored is None:
            return None
        self.node_uid = stored.metadata.uid or self.node_uid
        return status_changed(self._status(), stored.status)

    async def sync(self) -> bool:
        """One period: posts the status if it changed or is due; True when it did."""
        needed = self._needs_report()
        if needed is None:
            stored = await self.client.get(NODES, self.node_name, "")
            self.node_uid = stored.metadata.uid or self.node_uid
            needed = status_changed(self._status(), stored.status)
        if needed:
            await self.heartbeat()
        return needed

    async def run(self) -> None:
        # Retries come quicker than heartbeats, never slower.
        backoff = Backoff(min(0.5, self.frequency), self.frequency)
        while True:
            try:
                if not self._registered:
                    await self.register()
                else:
                    await self.sync()
                backoff.reset()
                await self._sleep(self.frequency)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    self._registered = False  # deleted by someone: register again
                    self._log.warning("node_object_gone_registering_again")
                    continue
                delay = backoff.failure()
                self._log.warning("node_status_failed", code=error.code().name, detail=error.details(), retry_in=delay)
                await asyncio.sleep(delay)
