"""Replication end to end: API server (scheduler, endpoints, node lifecycle), replicator and
two real kubelets simulating two nodes on this machine's Docker daemon."""

from __future__ import annotations

import asyncio
import collections
import uuid

import docker
import grpc
import pytest

from kybernetes.v1 import meta_pb2, pod_pb2, replication_controller_pb2, service_pb2
from services.common.client import ApiClient
from services.common.resources import ENDPOINTS, NODES, PODS
from services.kubelet.naming import LABEL_CONTAINER_NAME, LABEL_POD_UID
from tests.integration.apihelpers import httpd_container, make_rc
from tests.integration.control_helpers import ControlPlane, pods_in
from tests.integration.kubelet_helpers import KubeletProcess, remove_node_containers
from tests.polling import eventually

pytestmark = pytest.mark.docker

GRACE = 4  # --node-monitor-grace-period: the kubelets heartbeat every second
EVICTION = 4  # --pod-eviction-timeout
TIMEOUT = 90  # generous bound for Docker to start or replace pods
API_WAIT = 30  # bound for the API's view (endpoints) to follow the pods
# A check that meets an API error (say an object not there yet) is not done yet.
NOT_YET = (grpc.aio.AioRpcError,)


@pytest.fixture(scope="module")
def cluster():
    suffix = uuid.uuid4().hex[:6]
    nodes = [f"e2e-rep-{suffix}-a", f"e2e-rep-{suffix}-b"]
    plane = ControlPlane(
        "scheduler,endpoints,nodelifecycle",
        f"--node-monitor-grace-period={GRACE}",
        f"--pod-eviction-timeout={EVICTION}",
        replicator=True,
    )
    kubelets: dict[str, KubeletProcess] = {}
    try:
        for node in nodes:
            kubelets[node] = KubeletProcess(node, server=plane.address)
        yield plane, kubelets
    finally:
        for kubelet in kubelets.values():
            kubelet.cleanup()
        for node in nodes:
            remove_node_containers(node)  # also what a kubelet stopped for good left running
        plane.stop()


def web_rc(namespace: str, replicas: int) -> replication_controller_pb2.ReplicationController:
    container = httpd_container(["httpd", "-f", "-p", "8080", "-h", "/"])
    return make_rc("web", namespace, {"app": "web"}, replicas, container=container, grace_seconds=1)


def running_ready(pod: pod_pb2.Pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions
    )


def spread_of(api: ApiClient, namespace: str, expected: dict[str, int]):
    """The live pods (not being deleted) per node: a dead node's evicted pods stay, terminating,
    until its kubelet comes back to finish them (as in Kubernetes), and do not count."""

    async def check():
        pods = [p for p in await pods_in(api, namespace, "app=web") if not p.metadata.HasField("deletion_timestamp")]
        ready = [p for p in pods if running_ready(p)]
        placed = collections.Counter(p.spec.node_name for p in ready)
        assert len(pods) == sum(expected.values()) and placed == expected, f"ready pods per node: {dict(placed)}"
        return pods

    return check


def endpoints_match(api: ApiClient, namespace: str):
    """The service's ready addresses are exactly the IPs of the running, ready pods."""

    async def check():
        pods = [p for p in await pods_in(api, namespace, "app=web") if running_ready(p)]
        try:
            endpoints = await api.get(ENDPOINTS, "web", namespace)
        except grpc.aio.AioRpcError as error:
            raise AssertionError("no endpoints") from error
        listed = sorted((a.ip, a.target_ref.name) for s in endpoints.subsets for a in s.addresses)
        wanted = sorted((p.status.pod_ip, p.metadata.name) for p in pods)
        ports = {(p.port, p.name) for s in endpoints.subsets for p in s.ports}
        assert listed == wanted and len(listed) == 6 and ports == {(8080, "http")}, (
            f"listed {listed}, ready pods {wanted}"
        )
        return endpoints

    return check


async def serves_http(ip: str) -> bool:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, 8080), 5)
    try:
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        return status_line.startswith(b"HTTP/1.")
    finally:
        writer.close()


def restart_count(pod: pod_pb2.Pod) -> int:
    return sum(s.restart_count for s in pod.status.container_statuses)


async def test_replication_controller_on_two_real_kubelets(cluster, namespace):
    plane, kubelets = cluster
    node_a, node_b = kubelets
    api = ApiClient(plane.address)
    try:
        await eventually(
            lambda: _both_nodes_ready(api, [node_a, node_b]), what="both kubelets to register", timeout=TIMEOUT,
            retry_on=NOT_YET,
        )
        service = service_pb2.Service(
            metadata=meta_pb2.ObjectMeta(name="web", namespace=namespace),
            spec=service_pb2.ServiceSpec(
                selector={"app": "web"}, ports=[service_pb2.ServicePort(name="http", port=80, target_port="http")]
            ),
        )
        await api.create(service)
        await api.create(web_rc(namespace, 6))

        # An RC of 6 spreads 3 and 3, and the service lists all six.
        await eventually(
            spread_of(api, namespace, {node_a: 3, node_b: 3}), what="3 running pods per node", timeout=TIMEOUT,
            retry_on=NOT_YET,
        )
        endpoints = await eventually(
            endpoints_match(api, namespace), what="endpoints of the 6 pods", timeout=API_WAIT, retry_on=NOT_YET
        )
        first_ip = endpoints.subsets[0].addresses[0].ip
        assert await serves_http(first_ip)

        # A killed container is restarted in place (same pod, restart count up).
        victim = (await pods_in(api, namespace, "app=web"))[0]
        client = docker.from_env()
        try:
            [container] = client.containers.list(
                filters={"label": [f"{LABEL_POD_UID}={victim.metadata.uid}", f"{LABEL_CONTAINER_NAME}=web"]}
            )
            await asyncio.to_thread(container.kill)
        finally:
            client.close()

        async def restarted():
            pod = await api.get(PODS, victim.metadata.name, namespace)
            return pod if restart_count(pod) > restart_count(victim) and running_ready(pod) else None

        await eventually(restarted, what="the killed container to run again", timeout=TIMEOUT, retry_on=NOT_YET)

        # A deleted pod is replaced, and the endpoints follow.
        doomed = (await pods_in(api, namespace, "app=web"))[1]
        await api.delete(PODS, doomed.metadata.name, namespace)

        async def replaced():
            pods = [p for p in await pods_in(api, namespace, "app=web") if running_ready(p)]
            names = {p.metadata.name for p in pods}
            return pods if len(pods) == 6 and doomed.metadata.name not in names else None

        await eventually(replaced, what="a replacement pod running", timeout=TIMEOUT, retry_on=NOT_YET)
        endpoints = await eventually(
            endpoints_match(api, namespace), what="endpoints without the deleted pod", timeout=API_WAIT,
            retry_on=NOT_YET,
        )
        assert doomed.metadata.name not in {a.target_ref.name for s in endpoints.subsets for a in s.addresses}

        # A kubelet stopped for good: its pods are recreated on the other node.
        kubelets[node_b].kill()
        await eventually(
            spread_of(api, namespace, {node_a: 6}), what="all 6 pods on the live node", timeout=TIMEOUT,
            retry_on=NOT_YET,
        )
        endpoints = await eventually(
            endpoints_match(api, namespace), what="endpoints on the live node only", timeout=API_WAIT,
            retry_on=NOT_YET,
        )
        assert {a.node_name for s in endpoints.subsets for a in s.addresses} == {node_a}
        condition = [c for c in (await api.get(NODES, node_b)).status.conditions if c.type == "Ready"][0]
        assert condition.status == "Unknown"
        for address in endpoints.subsets[0].addresses:
            assert await serves_http(address.ip)
    finally:
        await api.close()


async def _both_nodes_ready(api: ApiClient, names: list[str]):
    for name in names:
        try:
            node = await api.get(NODES, name)
        except grpc.aio.AioRpcError:
            return None
        if not any(c.type == "Ready" and c.status == "True" for c in node.status.conditions):
            return None
    return True
