"""Shared pieces of the kubelet's integration tests: a kubelet process, pod
builders, and cleanup of every container labelled with a test's node.

The fixtures built on them (`node_name`, `kubelet`) are in conftest.py; waiting
is `tests.polling.eventually`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import docker
import grpc

from kybernetes.v1 import kubelet_pb2, kubelet_pb2_grpc, pod_pb2
from services.common.transport import ClientCredentials, aio_channel
from services.kubelet.podnetwork import release_node_addresses
from tests.conftest import BUSYBOX_IMAGE, PAUSE_IMAGE
from tools.processes import ManagedProcess, component_security_flags, dev_pki, free_port, wait_for_port

NODE_LABEL = "io.kybernetes.node"

# Short periods so that tests see changes quickly.
# The simulated nodes of these tests share the host's network namespace, so they share one
# bridge and address pool (as before nodes had ranges of their own); None takes the
# Node's podCIDR from the API server's range allocator, as make up's kubelets do.
SHARED_POD_CIDR = "10.88.0.0/16"
FAST_FLAGS = [
    "--file-check-frequency", "1s",
    "--http-check-frequency", "1s",
    "--sync-frequency", "2s",
    "--node-status-frequency", "1s",
    "--restart-backoff-initial", "1s",
    "--restart-backoff-max", "4s",
]


def docker_client() -> docker.DockerClient:
    return docker.from_env()


def node_containers(node: str, *, all: bool = True) -> list[dict[str, Any]]:
    """Docker's view of a node's containers (summaries)."""
    client = docker_client()
    try:
        return client.api.containers(all=all, filters={"label": f"{NODE_LABEL}={node}"})
    finally:
        client.close()


def remove_node_containers(node: str) -> None:
    client = docker_client()
    try:
        for summary in client.api.containers(all=True, filters={"label": f"{NODE_LABEL}={node}"}):
            try:
                client.api.remove_container(summary["Id"], force=True)
            except docker.errors.NotFound:
                pass
    finally:
        client.close()


class KubeletProcess:
    """`python -m services.kubelet.main` as users run it."""

    def __init__(
        self,
        node: str,
        *extra_args: str,
        server: str | None = None,
        root_dir: str | None = None,
        node_ip: str = "127.0.0.1",
        pod_cidr: str | None = SHARED_POD_CIDR,
    ) -> None:
        self.node = node
        self.pod_cidr = pod_cidr
        self.extra_args = list(extra_args)
        self.server = server
        self.node_ip = node_ip
        self.root_dir = root_dir or tempfile.mkdtemp(prefix=f"kyb-kubelet-{node}-")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.root_dir, "kubelet.log")
        self.process: ManagedProcess | None = None
        self._channel: grpc.aio.Channel | None = None
        self.start()

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "services.kubelet.main",
            "--node-name", self.node,
            "--listen", self.address,
            "--root-dir", self.root_dir,
            "--pause-image", PAUSE_IMAGE,
            "--node-ip", self.node_ip,
            *FAST_FLAGS,
            *(["--pod-cidr", self.pod_cidr] if self.pod_cidr else []),
            *self.extra_args,
        ]
        # Its node's identity and serving certificate from the session's CA, as make up does;
        # without --server only the serving half (a kubeconfig would make it an API client).
        security = component_security_flags("kubelet", node=self.node, addresses=(self.node_ip,))
        if self.server:
            argv += [*security, "--server", self.server]
        else:
            argv += security[2:]
        return argv

    def start(self) -> None:
        self.process = ManagedProcess(
            f"kubelet-{self.node}", self.argv(), self.log_path, env={"KYBERNETES_LOG_LEVEL": "debug"}
        )
        try:
            wait_for_port(self.port, self.process.process, timeout=30)
        except Exception:
            print(self.log_text()[-4000:], file=sys.stderr)
            raise

    def kill(self) -> None:
        """SIGKILL: no chance to clean anything up."""
        assert self.process is not None
        self.process.kill()

    def stop(self) -> int | None:
        return self.process.stop() if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def log_text(self) -> str:
        return Path(self.log_path).read_text(errors="replace") if os.path.exists(self.log_path) else ""

    def stub(self) -> kubelet_pb2_grpc.KubeletStub:
        """A stub on a channel of the running event loop."""
        return kubelet_pb2_grpc.KubeletStub(self.channel())

    def channel(self, credentials: ClientCredentials | None = None) -> grpc.aio.Channel:
        """A channel to the kubelet's API as the session's admin (or `credentials`)."""
        return aio_channel(self.address, credentials or dev_pki().credentials("admin"))

    async def list_pods(self) -> list[pod_pb2.Pod]:
        async with self.channel() as channel:
            stub = kubelet_pb2_grpc.KubeletStub(channel)
            response = await stub.ListPods(kubelet_pb2.KubeletListPodsRequest(), timeout=10)
            return list(response.items)

    async def get_pod(self, name: str, namespace: str = "default") -> pod_pb2.Pod | None:
        static_name = name if name.endswith(f"-{self.node}") else f"{name}-{self.node}"
        for pod in await self.list_pods():
            if pod.metadata.namespace == namespace and pod.metadata.name in (name, static_name):
                return pod
        return None

    async def submit(self, pod: pod_pb2.Pod) -> pod_pb2.Pod:
        async with self.channel() as channel:
            return await kubelet_pb2_grpc.KubeletStub(channel).SubmitPod(pod, timeout=10)

    async def delete(self, name: str, namespace: str = "default") -> pod_pb2.Pod:
        async with self.channel() as channel:
            request = kubelet_pb2.StaticPodRequest(namespace=namespace, name=name)
            return await kubelet_pb2_grpc.KubeletStub(channel).DeleteStaticPod(request, timeout=10)

    def cleanup(self) -> None:
        self.stop()
        remove_node_containers(self.node)
        release_node_addresses({self.node})
        # A test that failed may leave a Memory emptyDir (tmpfs) mounted.
        with open("/proc/mounts") as mounts:
            for line in mounts:
                mount_point = line.split()[1]
                if mount_point.startswith(self.root_dir + "/"):
                    subprocess.run(["umount", mount_point], check=False)
        shutil.rmtree(self.root_dir, ignore_errors=True)


def unique_node(prefix: str = "kt") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def container(name: str, *command: str, image: str = BUSYBOX_IMAGE, **fields: Any) -> pod_pb2.Container:
    spec = pod_pb2.Container(name=name, image=image, command=list(command), **fields)
    return spec


def make_pod(
    name: str,
    *containers: pod_pb2.Container,
    namespace: str = "default",
    restart_policy: str = "",
    grace: int = 1,
    volumes: list[pod_pb2.Volume] | None = None,
    labels: dict[str, str] | None = None,
) -> pod_pb2.Pod:
    pod = pod_pb2.Pod(api_version="v1", kind="Pod")
    pod.metadata.name = name
    pod.metadata.namespace = namespace
    pod.metadata.labels.update(labels or {})
    pod.spec.containers.extend(containers)
    pod.spec.restart_policy = restart_policy
    pod.spec.termination_grace_period_seconds = grace
    pod.spec.volumes.extend(volumes or [])
    return pod


def sleeper(name: str = "main") -> pod_pb2.Container:
    """A container that runs until stopped, and stops at once on SIGTERM."""
    return container(name, "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done")


def container_status(pod: pod_pb2.Pod | None, name: str) -> pod_pb2.ContainerStatus | None:
    if pod is None:
        return None
    for status in pod.status.container_statuses:
        if status.name == name:
            return status
    return None


def is_running(pod: pod_pb2.Pod | None) -> bool:
    return (
        pod is not None
        and pod.status.phase == "Running"
        and bool(pod.status.container_statuses)
        and all(s.state.HasField("running") for s in pod.status.container_statuses)
    )
