"""The kubelet's Node object: registered at start, Ready heartbeat after.

Registration creates the Node (or, when it exists, keeps its spec and labels
and refreshes its status); every --node-status-frequency the kubelet sends
the status again with a fresh Ready heartbeat. An unreachable API server is
retried, and the kubelet runs its pods meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import platform
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
    ) -> None:
        self.client = client
        self.node_name = node_name
        self.frequency = frequency
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
            await self.client.create(node)
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
            node.metadata.resource_version = stored.metadata.resource_version
            own = {condition.type for condition in node.status.conditions}
            node.status.conditions.extend(c for c in stored.status.conditions if c.type not in own)
            try:
                await self.client.update_status(node)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.ABORTED or attempt == CONFLICT_RETRIES - 1:
                    raise

    async def run(self) -> None:
        # Retries come quicker than heartbeats, never slower.
        backoff = Backoff(min(0.5, self.frequency), self.frequency)
        while True:
            try:
                if not self._registered:
                    await self.register()
                else:
                    await self.heartbeat()
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
