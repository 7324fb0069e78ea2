"""The kubelet with an API server: runs the pods bound to its node, reports
their status, registers and heartbeats its Node, mirrors its static pods."""

from __future__ import annotations

import asyncio
from typing import Iterator

import docker
import grpc
import pytest

from kybernetes.v1 import meta_pb2, pod_pb2
from services.common.client import ApiClient
from services.common.resources import LEASES, NODES, PODS
from tests.integration.kubelet_helpers import (
    KubeletProcess,
    container,
    container_status,
    is_running,
    make_pod,
    node_containers,
    sleeper,
)
from tests.polling import eventually
from tools.processes import ApiServerProcess

pytestmark = pytest.mark.docker

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@pytest.fixture
def api_kubelet(apiserver: ApiServerProcess, node_name: str) -> Iterator[KubeletProcess]:
    process = KubeletProcess(node_name, server=apiserver.address)
    yield process
    process.cleanup()


@pytest.fixture
async def client(apiserver: ApiServerProcess):
    api = ApiClient(apiserver.address, timeout=10)
    yield api
    await api.close()


async def _api_pod(client: ApiClient, namespace: str, name: str) -> pod_pb2.Pod | None:
    try:
        return await client.get(PODS, name, namespace)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def _bound_pod(name: str, namespace: str, node: str, *containers: pod_pb2.Container, **kwargs) -> pod_pb2.Pod:
    pod = make_pod(name, *containers, namespace=namespace, **kwargs)
    pod.spec.node_name = node
    return pod


async def test_node_is_registered_and_heartbeats(api_kubelet: KubeletProcess, client: ApiClient) -> None:
    async def registered():
        try:
            node = await client.get(NODES, api_kubelet.node)
        except grpc.aio.AioRpcError:
            return None
        return node if node.status.conditions else None

    node = await eventually(registered, what="node registered")
    assert node.status.capacity["cpu"] and node.status.capacity["memory"]
    assert node.status.allocatable["cpu"] == node.status.capacity["cpu"]
    addresses = {address.type: address.address for address in node.status.addresses}
    assert addresses["InternalIP"] == "127.0.0.1" and addresses["Hostname"]
    assert node.status.daemon_endpoints.kubelet_endpoint.port == api_kubelet.port
    assert node.status.node_info.container_runtime_version.startswith("docker://")
    ready = [c for c in node.status.conditions if c.type == "Ready"][0]
    assert ready.status == "True"

    # The heartbeat is the node's Lease (KEP-589): renewed, while the status is posted only
    # when it changes (or every --node-status-report-frequency).
    async def lease_renewed_at() -> float | None:
        lease = await client.get(LEASES, api_kubelet.node, "kube-node-lease")
        return lease.spec.renew_time.ToMicroseconds() / 1e6 if lease.spec.holder_identity else None

    first_beat = await eventually(lease_renewed_at, what="the node's lease", retry_on=(grpc.aio.AioRpcError,))

    async def beat_again():
        renewed = await lease_renewed_at()
        return renewed if renewed is not None and renewed > first_beat else None

    await eventually(beat_again, what="a later lease renewal")
    still = [c for c in (await client.get(NODES, api_kubelet.node)).status.conditions if c.type == "Ready"][0]
    assert (still.status, still.last_transition_time) == ("True", ready.last_transition_time)


async def test_bound_pod_runs_and_its_status_is_reported(
    api_kubelet: KubeletProcess, client: ApiClient, namespace: str
) -> None:
    web = container("web", "sh", "-c", "exec httpd -f -p 8080 -h /")
    await client.create(_bound_pod("web", namespace, api_kubelet.node, web, sleeper("side")))

    # The status arrives through the API's watch, as other components see it.
    options = meta_pb2.ListOptions(namespace=namespace, send_initial_events=True)
    call = client.watch(PODS, options)
    running = None
    try:
        async def watch_until_running():
            async for event in call:
                if event.type in ("ADDED", "MODIFIED") and event.object.status.phase == "Running":
                    return event.object
            return None

        running = await asyncio.wait_for(watch_until_running(), 60)
    finally:
        call.cancel()
    assert running is not None
    status = running.status
    assert status.pod_ip and status.host_ip == "127.0.0.1"
    assert status.HasField("start_time")
    assert {s.name for s in status.container_statuses} == {"web", "side"}
    for container_status_ in status.container_statuses:
        assert container_status_.state.HasField("running")
        assert container_status_.container_id.startswith("docker://")
        assert container_status_.restart_count == 0
    conditions = {c.type: c.status for c in status.conditions}
    assert conditions["Ready"] == "True" and conditions["PodScheduled"] == "True"
    # The kubelet's own list shows the same pod, with its live status.
    mine = await api_kubelet.get_pod("web", namespace=namespace)
    assert mine is not None and mine.metadata.uid == running.metadata.uid
    assert mine.status.pod_ip == status.pod_ip


async def test_changed_image_in_the_api_restarts_the_container(
    api_kubelet: KubeletProcess, client: ApiClient, namespace: str
) -> None:
    created = await client.create(_bound_pod("img", namespace, api_kubelet.node, sleeper()))

    async def running_in_api():
        pod = await _api_pod(client, namespace, "img")
        return pod if pod is not None and is_running(pod) else None

    before = await eventually(running_in_api, what="pod Running in the API")
    old_id = container_status(before, "main").container_id

    # The same image under another tag: a different image to the kubelet.
    docker_client = docker.from_env()
    docker_client.images.get(before.spec.containers[0].image).tag("kybernetes/busybox", f"kt-{namespace}")
    try:
        update = await client.get(PODS, "img", namespace)
        update.spec.containers[0].image = f"kybernetes/busybox:kt-{namespace}"
        await client.update(update)

        async def replaced():
            pod = await _api_pod(client, namespace, "img")
            status = container_status(pod, "main")
            if status is not None and status.container_id != old_id and status.state.HasField("running"):
                return pod
            return None

        after = await eventually(replaced, what="container replaced after the image changed")
        status = container_status(after, "main")
        assert status.image == f"kybernetes/busybox:kt-{namespace}"
        assert status.restart_count == 1
        assert after.metadata.uid == created.metadata.uid
    finally:
        await client.delete(PODS, "img", namespace)
        await eventually(lambda: _no_containers(api_kubelet.node), what="containers removed")
        docker_client.images.remove(f"kybernetes/busybox:kt-{namespace}")
        docker_client.close()


async def _no_containers(node: str) -> bool:
    return not node_containers(node)


async def test_pod_deleted_from_the_api_is_stopped_and_removed(
    api_kubelet: KubeletProcess, client: ApiClient, namespace: str
) -> None:
    await client.create(_bound_pod("gone", namespace, api_kubelet.node, sleeper(), sleeper("b")))
    await eventually(lambda: _kubelet_running(api_kubelet, "gone", namespace), what="pod running")
    assert len(node_containers(api_kubelet.node)) == 3
    await client.delete(PODS, "gone", namespace)
    await eventually(lambda: _no_containers(api_kubelet.node), what="containers removed")
    assert await api_kubelet.get_pod("gone", namespace=namespace) is None


async def _kubelet_running(kubelet: KubeletProcess, name: str, namespace: str) -> pod_pb2.Pod | None:
    pod = await kubelet.get_pod(name, namespace=namespace)
    return pod if is_running(pod) else None


async def test_pods_for_other_nodes_are_ignored(api_kubelet: KubeletProcess, client: ApiClient, namespace: str) -> None:
    await client.create(_bound_pod("elsewhere", namespace, api_kubelet.node + "-other", sleeper()))
    await client.create(_bound_pod("here", namespace, api_kubelet.node, sleeper()))
    await eventually(lambda: _kubelet_running(api_kubelet, "here", namespace), what="own pod running")
    assert {c["Labels"]["io.kybernetes.pod.name"] for c in node_containers(api_kubelet.node)} == {"here"}
    assert await api_kubelet.get_pod("elsewhere", namespace=namespace) is None


async def test_static_pod_is_mirrored_to_the_api(
    api_kubelet: KubeletProcess, client: ApiClient, namespace: str
) -> None:
    submitted = await api_kubelet.submit(make_pod("static", sleeper(), namespace=namespace))
    name = submitted.metadata.name

    async def mirror_running():
        pod = await _api_pod(client, namespace, name)
        return pod if pod is not None and pod.status.phase == "Running" else None

    mirror = await eventually(mirror_running, what="mirror pod with a Running status")
    assert mirror.metadata.annotations[MIRROR_ANNOTATION]
    assert mirror.spec.node_name == api_kubelet.node
    assert mirror.status.pod_ip
    # The mirror pod itself is not run: only one set of containers. A fixed wait: the
    # kubelet ignoring the mirror pod its watch brings back leaves no event to wait on.
    await asyncio.sleep(2)
    assert len(node_containers(api_kubelet.node)) == 2

    # A user deleting the mirror gets it back; deleting the static pod removes it.
    await client.delete(PODS, name, namespace)

    async def mirror_back():
        pod = await _api_pod(client, namespace, name)
        return pod if pod is not None and pod.metadata.uid != mirror.metadata.uid else None

    await eventually(mirror_back, what="mirror pod recreated")
    await api_kubelet.delete("static", namespace=namespace)

    async def mirror_gone():
        return await _api_pod(client, namespace, name) is None

    await eventually(mirror_gone, what="mirror pod deleted with its static pod")
    await eventually(lambda: _no_containers(api_kubelet.node), what="containers removed")


async def test_restarted_kubelet_adopts_api_pods(
    api_kubelet: KubeletProcess, client: ApiClient, namespace: str
) -> None:
    await client.create(_bound_pod("adopt", namespace, api_kubelet.node, sleeper()))

    async def running_in_api():
        pod = await _api_pod(client, namespace, "adopt")
        return pod if pod is not None and is_running(pod) else None

    before = await eventually(running_in_api, what="pod Running in the API")
    ids = {c["Id"] for c in node_containers(api_kubelet.node)}
    api_kubelet.kill()
    api_kubelet.start()
    await eventually(lambda: _kubelet_running(api_kubelet, "adopt", namespace), what="pod adopted")
    # A resync (--sync-frequency 2s) that must replace nothing; a fixed wait, as it leaves no event.
    await asyncio.sleep(3)
    assert {c["Id"] for c in node_containers(api_kubelet.node)} == ids
    after = await _api_pod(client, namespace, "adopt")
    assert container_status(after, "main").restart_count == 0
    assert container_status(after, "main").container_id == container_status(before, "main").container_id


async def test_static_pods_run_while_the_api_server_is_unreachable(node_name: str) -> None:
    from tools.processes import free_port

    kubelet = KubeletProcess(node_name, server=f"127.0.0.1:{free_port()}")
    try:
        await kubelet.submit(make_pod("alone", sleeper()))
        await eventually(lambda: _kubelet_running(kubelet, "alone", "default"), what="static pod running")
        assert kubelet.alive()
        assert "watch_broken" in kubelet.log_text() or "node_status_failed" in kubelet.log_text()
    finally:
        kubelet.cleanup()
