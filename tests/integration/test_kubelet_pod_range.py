"""A kubelet with an API server takes its pods' range from its Node (spec.podCIDR).

Until the Node has a range the node is NotReady and a pod bound to it waits
(NetworkNotReady, no back-off); once the range is set the node turns Ready and
the pod starts with an address from it, on a bridge of the node's own whose
traffic leaves masqueraded only when it is not for the cluster's pod range.
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import uuid
from typing import Iterator

import pytest

from kybernetes.v1 import node_pb2, pod_pb2
from services.common.client import ApiClient
from services.common.podutil import find_condition
from services.common.resources import NODES, PODS
from tests.integration.kubelet_helpers import KubeletProcess, make_pod, sleeper
from tests.polling import eventually

from .control_helpers import API_WAIT, ControlPlane

POD_RANGE = "10.244.231.0/24"


@pytest.fixture
def plane() -> Iterator[ControlPlane]:
    # No range allocator: the test gives the node its range, as an administrator would
    # with --allocate-node-cidrs=false.
    plane = ControlPlane("")
    yield plane
    plane.stop()


@pytest.fixture
def bridge() -> Iterator[str]:
    """A bridge of the test's own (the shared one keeps the other tests' range); removed after,
    with the kubelet's rules for it."""
    name = f"kybt{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["ip", "link", "del", name], capture_output=True)
    for table, chain in (("filter", "FORWARD"), ("nat", "POSTROUTING")):
        rules = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
        for line in rules.splitlines():
            if line.startswith(f"-A {chain} ") and f"kybernetes pod network {name}" in line:
                subprocess.run(["iptables", "-w", "-t", table, *shlex.split(line.replace("-A", "-D", 1))], check=False)
    leftovers = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert name not in leftovers
    assert subprocess.run(["ip", "link", "show", name], capture_output=True).returncode != 0


def output_of(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def ready_condition(node: node_pb2.Node) -> node_pb2.NodeCondition | None:
    return find_condition(node.status.conditions, "Ready")


@pytest.mark.docker
async def test_pods_wait_for_the_node_range_then_take_addresses_from_it(plane, node_name, namespace, bridge):
    kubelet = KubeletProcess(node_name, "--pod-bridge", bridge, server=plane.address, pod_cidr=None)
    api = ApiClient(plane.address, timeout=10)
    try:
        async def not_ready() -> bool:
            condition = ready_condition(await api.get(NODES, node_name))
            assert condition is not None and condition.status == "False", condition
            assert "pod range" in condition.message, condition.message
            return True

        await eventually(not_ready, what="the node NotReady for want of a pod range", **API_WAIT)
        pod = make_pod("waits", sleeper(), namespace=namespace)
        pod.spec.node_name = node_name
        await api.create(pod)

        async def waiting() -> bool:
            stored: pod_pb2.Pod = await api.get(PODS, "waits", namespace)
            assert stored.status.reason == "NetworkNotReady", stored.status
            return True

        await eventually(waiting, what="the pod waiting for the network", **API_WAIT)

        node = await api.get(NODES, node_name)
        node.spec.pod_cidr = POD_RANGE
        await api.update(node)

        async def running() -> str:
            stored: pod_pb2.Pod = await api.get(PODS, "waits", namespace)
            assert stored.status.phase == "Running" and stored.status.pod_ip, stored.status
            return stored.status.pod_ip

        pod_ip = await eventually(running, what="the pod running once the range is set", **API_WAIT)
        assert pod_ip.startswith("10.244.231."), pod_ip
        condition = ready_condition(await api.get(NODES, node_name))
        assert condition is not None and condition.status == "True", condition

        addresses = await asyncio.to_thread(output_of, "ip", "-4", "-o", "addr", "show", "dev", bridge)
        assert "10.244.231.1/24" in addresses
        nat = await asyncio.to_thread(output_of, "iptables-save", "-t", "nat")
        masquerade = [line for line in nat.splitlines() if f"kybernetes pod network {bridge}" in line]
        assert masquerade and all("! -d 10.244.0.0/16" in line for line in masquerade), masquerade
    finally:
        await api.close()
        kubelet.cleanup()
