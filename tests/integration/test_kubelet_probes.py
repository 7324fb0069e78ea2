"""Liveness probes restart containers; readiness probes un-ready them."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from kybernetes.v1 import pod_pb2
from services.common.resources import PODS
from tests.integration.kubelet_helpers import (
    KubeletProcess,
    container,
    container_status,
    make_pod,
)
from tests.polling import eventually

pytestmark = pytest.mark.docker


def _condition(pod: pod_pb2.Pod, kind: str) -> str:
    for condition in pod.status.conditions:
        if condition.type == kind:
            return condition.status
    return ""


async def test_failing_exec_liveness_probe_restarts_the_container(kubelet: KubeletProcess) -> None:
    # Healthy for two seconds, then the probe's file goes away.
    main = container(
        "main", "sh", "-c",
        "trap 'exit 0' TERM; mkdir -p /tmp; touch /tmp/healthy; sleep 2; rm /tmp/healthy; while true; do sleep 1; done",
    )
    main.liveness_probe.CopyFrom(pod_pb2.Probe(
        exec=pod_pb2.ExecAction(command=["cat", "/tmp/healthy"]), period_seconds=1, failure_threshold=2,
    ))
    await kubelet.submit(make_pod("live", main))

    async def restarted() -> pod_pb2.ContainerStatus | None:
        status = container_status(await kubelet.get_pod("live"), "main")
        return status if status is not None and status.restart_count >= 1 and status.state.HasField("running") else None

    status = await eventually(restarted, what="restart after liveness failure")
    assert status.last_state.HasField("terminated")
    assert "liveness_probe_failed_restarting" in kubelet.log_text()


async def test_tcp_liveness_probe_keeps_a_listening_container_alive(kubelet: KubeletProcess) -> None:
    main = container("main", "sh", "-c", "exec nc -ll -p 9000 -e cat")
    # The first probe waits a second: probed at once, it can beat nc to listen(2)
    # (seen: 1 ms after start), and with a threshold of 1 that is a restart.
    main.liveness_probe.CopyFrom(pod_pb2.Probe(
        tcp_socket=pod_pb2.TCPSocketAction(port="9000"), initial_delay_seconds=1, period_seconds=1,
        failure_threshold=1,
    ))
    await kubelet.submit(make_pod("tcp", main))

    async def probed_a_while() -> pod_pb2.ContainerStatus | None:
        status = container_status(await kubelet.get_pod("tcp"), "main")
        return status if status is not None and status.ready else None

    await eventually(probed_a_while, what="container running")
    # Several probe periods pass without a restart. A fixed wait: a successful probe is not logged.
    await asyncio.sleep(4)
    assert container_status(await kubelet.get_pod("tcp"), "main").restart_count == 0


async def test_failing_readiness_probe_unreadies_without_restarting(kubelet: KubeletProcess) -> None:
    # Serves /ready for a few seconds, then stops serving it (HTTP 404).
    web = container(
        "web", "sh", "-c",
        "mkdir -p /tmp; echo ok > /tmp/ready; httpd -p 8080 -h /tmp; sleep 5; rm /tmp/ready; "
        "trap 'exit 0' TERM; while true; do sleep 1; done",
        ports=[pod_pb2.ContainerPort(name="http", container_port=8080)],
    )
    web.readiness_probe.CopyFrom(pod_pb2.Probe(
        http_get=pod_pb2.HTTPGetAction(path="/ready", port="http"), period_seconds=1, failure_threshold=1,
    ))
    other = container("other", "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done")
    await kubelet.submit(make_pod("ready", web, other))

    async def ready() -> pod_pb2.Pod | None:
        pod = await kubelet.get_pod("ready")
        return pod if pod is not None and _condition(pod, "Ready") == "True" else None

    pod = await eventually(ready, what="pod Ready")
    assert container_status(pod, "web").ready and container_status(pod, "other").ready

    async def unready() -> pod_pb2.Pod | None:
        pod = await kubelet.get_pod("ready")
        return pod if pod is not None and _condition(pod, "Ready") == "False" else None

    pod = await eventually(unready, what="pod not Ready")
    web_status = container_status(pod, "web")
    assert not web_status.ready and web_status.state.HasField("running")
    assert web_status.restart_count == 0
    assert container_status(pod, "other").ready
    assert pod.status.phase == "Running"
    assert _condition(pod, "ContainersReady") == "False"


async def test_a_restarted_kubelet_keeps_a_ready_pod_ready_until_probed_again(apiserver, api, node_name, namespace):
    """Kubernetes' kubelet starts every readiness probe unready after a restart (kubernetes#78733):
    the pod's endpoints leave every service until the first probe. Ours keeps what it reported
    for the same container; a failing probe still unreadies it after its threshold."""
    kubelet = KubeletProcess(node_name, server=apiserver.address)
    try:
        web = container("web", "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done")
        # The first probe after a start comes late: without the rule the pod would be unready till then.
        web.readiness_probe.CopyFrom(pod_pb2.Probe(
            exec=pod_pb2.ExecAction(command=["true"]), initial_delay_seconds=8, period_seconds=30,
        ))
        pod = make_pod("steady", web, namespace=namespace)
        pod.spec.node_name = node_name
        await api.create(pod)

        async def ready() -> bool:
            stored = await api.get(PODS, "steady", namespace)
            assert _condition(stored, "Ready") == "True", stored.status
            return True

        await eventually(ready, what="the pod Ready", timeout=40, retry_on=(grpc.aio.AioRpcError,))
        kubelet.kill()
        kubelet.start()
        # For the probe's initial delay after the restart, its status stays Ready.
        for _ in range(12):
            stored = await api.get(PODS, "steady", namespace)
            assert _condition(stored, "Ready") == "True", stored.status
            await asyncio.sleep(0.5)
    finally:
        kubelet.cleanup()
