"""A killed kubelet's successor adopts its pods; kubelets sharing one Docker
daemon never touch each other's containers."""

from __future__ import annotations

import asyncio

import pytest

from kybernetes.v1 import pod_pb2
from tests.integration.kubelet_helpers import (
    KubeletProcess,
    container,
    container_status,
    is_running,
    make_pod,
    node_containers,
    remove_node_containers,
    sleeper,
    unique_node,
)
from tests.polling import eventually

pytestmark = pytest.mark.docker


async def _running(kubelet: KubeletProcess, name: str) -> pod_pb2.Pod | None:
    pod = await kubelet.get_pod(name)
    return pod if is_running(pod) else None


def _container_ids(node: str) -> set[str]:
    return {c["Id"] for c in node_containers(node)}


async def test_killed_kubelet_is_replaced_and_adopts_its_pods(node_name: str) -> None:
    kubelet = KubeletProcess(node_name)
    try:
        await kubelet.submit(make_pod("steady", sleeper("a"), sleeper("b")))
        # A crash-looping pod too: its restart count must carry over.
        await kubelet.submit(make_pod("flappy", container("main", "sh", "-c", "sleep 1; exit 1")))
        await eventually(lambda: _running(kubelet, "steady"), what="pod running")

        async def flapped() -> pod_pb2.ContainerStatus | None:
            status = container_status(await kubelet.get_pod("flappy"), "main")
            return status if status is not None and status.restart_count >= 1 else None

        await eventually(flapped, what="a restart")
        before = await kubelet.get_pod("steady")
        steady_ids = {c["Id"] for c in node_containers(node_name)
                      if c["Labels"]["io.kybernetes.pod.name"] == f"steady-{node_name}"}

        kubelet.kill()
        kubelet.start()

        after = await eventually(lambda: _running(kubelet, "steady"), what="pod listed by the new kubelet")
        for name in ("a", "b"):
            assert container_status(after, name).container_id == container_status(before, name).container_id
            assert container_status(after, name).restart_count == 0
        assert after.status.pod_ip == before.status.pod_ip
        # Give the new kubelet a few resyncs: nothing of the running pod is replaced or duplicated.
        # A fixed wait: a resync that changes nothing leaves no event (log line, Docker event) to wait on.
        await asyncio.sleep(5)
        now_ids = {c["Id"] for c in node_containers(node_name)
                   if c["Labels"]["io.kybernetes.pod.name"] == f"steady-{node_name}"}
        assert now_ids == steady_ids
        running = [c for c in node_containers(node_name, all=False)
                   if c["Labels"]["io.kybernetes.pod.name"] == f"steady-{node_name}"]
        assert len(running) == 3  # infra + a + b
        flappy = container_status(await kubelet.get_pod("flappy"), "main")
        assert flappy.restart_count >= 1  # derived from the containers' labels, not from memory
    finally:
        kubelet.cleanup()


async def test_two_kubelets_on_one_daemon_never_touch_each_others_containers(node_name: str) -> None:
    other_node = unique_node()
    first = KubeletProcess(node_name)
    second = None
    try:
        await first.submit(make_pod("mine", sleeper()))
        await eventually(lambda: _running(first, "mine"), what="first kubelet's pod running")
        first_ids = _container_ids(node_name)

        # A second kubelet on the same daemon, with a pod of the same name and
        # namespace: it sees none of the first kubelet's containers as its own.
        second = KubeletProcess(other_node)
        await second.submit(make_pod("mine", sleeper()))
        await eventually(lambda: _running(second, "mine"), what="second kubelet's pod running")
        assert [p.metadata.name for p in await second.list_pods()] == [f"mine-{other_node}"]
        # A resync of each (--sync-frequency 2s). A fixed wait: a resync that changes
        # nothing leaves no event to wait on.
        await asyncio.sleep(3)
        assert _container_ids(node_name) == first_ids

        # Deleting on one node leaves the other's pod alone.
        await first.delete("mine")
        await eventually(lambda: _none_left(node_name), what="first node's containers removed")
        assert is_running(await second.get_pod("mine"))
        assert len(node_containers(other_node, all=False)) == 2

        # And the first kubelet, restarted with nothing to run, removes nothing of the second's.
        second_ids = _container_ids(other_node)
        first.kill()
        first.start()
        # Its first resync and orphan sweep; a fixed wait, as a sweep that removes nothing leaves no event.
        await asyncio.sleep(3)
        assert _container_ids(other_node) == second_ids
    finally:
        first.cleanup()
        if second is not None:
            second.cleanup()
        remove_node_containers(other_node)


async def _none_left(node: str) -> bool:
    return not node_containers(node)
