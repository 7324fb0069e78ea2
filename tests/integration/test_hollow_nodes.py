"""Fifty hollow nodes and 1,500 pods, end to end (issue 16's test; correctness, not speed).

A real control plane (etcd, the API server with the range allocator, scheduler,
endpoints and node lifecycle controllers, and the replicator) serves 50 hollow
nodes run by one process (tools/hollownodes.py: the real kubelet and proxy on a
fake runtime and a recording data path). Replication controllers totalling
1,500 pods are created at a steady rate; then every pod must be Running on a
hollow node with an address from its node's range, each service's endpoints
must list exactly its pods, and an API server restart must lose nothing and
create nothing. The figures (pods/s scheduled, time to all Running) are
printed, not asserted: speed targets live in bench/.

KYB_HOLLOW_NODES and KYB_HOLLOW_PODS_PER_NODE change the size (e.g. a quick 5 x 10 run).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import time
from typing import Any

import grpc
import pytest

from kybernetes.v1 import pod_pb2
from services.common.client import ApiClient
from services.common.resources import ENDPOINTS, NODES, PODS, REPLICATION_CONTROLLERS
from services.common.runtime.informer import Informer
from tests.polling import eventually
from tools.processes import ManagedProcess, python_module_argv

from .apihelpers import make_rc, make_service
from .control_helpers import ControlPlane, PodCreations, ready_condition

NODES_COUNT = int(os.environ.get("KYB_HOLLOW_NODES", "50"))
PODS_PER_NODE = int(os.environ.get("KYB_HOLLOW_PODS_PER_NODE", "30"))
RC_COUNT = 10
PODS_PER_RC = NODES_COUNT * PODS_PER_NODE // RC_COUNT
TOTAL_PODS = PODS_PER_RC * RC_COUNT
PREFIX = "hollow-"
# One RC created every this many seconds: a steady rate, as the density test's.
RC_INTERVAL = 0.5
WAIT: dict[str, Any] = {"interval": 0.5, "retry_on": (grpc.aio.AioRpcError,)}


@pytest.fixture(scope="module")
def plane():
    control = ControlPlane("nodeipam,scheduler,endpoints,nodelifecycle", replicator=True)
    yield control
    control.stop()


@pytest.fixture
def api_address(plane) -> str:
    return plane.address


@pytest.fixture(scope="module")
def hollow(plane):
    process = ManagedProcess(
        "hollownodes",
        python_module_argv(
            "tools.hollownodes", "--nodes", str(NODES_COUNT), "--server", plane.address, "--node-prefix", PREFIX,
            "--proxies", "--report-every", "2",
        ),
        f"{plane.workdir}/hollownodes.log",
    )
    yield process
    code = process.stop()
    if code not in (0, None):
        print(process.log_tail(40))


def summary(process: ManagedProcess) -> dict[str, int]:
    """The hollow process's last summary line, as numbers."""
    lines = [line for line in process.log_text().splitlines() if line.startswith("hollow_nodes ")]
    if not lines:
        return {}
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", lines[-1])}


class PodTimes:
    """When each pod was seen created, bound and Running (a watch, as a user would see it)."""

    def __init__(self, api: ApiClient, namespace: str) -> None:
        self.created: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.informer = Informer(api, PODS, namespace=namespace, retry_initial=0.05, retry_max=0.5)
        self.informer.add_handler(self._seen)

    def _seen(self, event_type: str, pod: pod_pb2.Pod, old: Any) -> None:
        uid, now = pod.metadata.uid, time.monotonic()
        self.created.setdefault(uid, now)
        if pod.spec.node_name:
            self.bound.setdefault(uid, now)
        if pod.status.phase == "Running":
            self.running.setdefault(uid, now)


async def all_pods(api: ApiClient, namespace: str) -> list[pod_pb2.Pod]:
    pods: list[pod_pb2.Pod] = []
    token = ""
    while True:
        page = await api.list(PODS, namespace, limit=500, continue_token=token)
        pods.extend(page.items)
        token = page.metadata.continue_token
        if not token:
            return pods


async def check_cluster(api: ApiClient, namespace: str) -> dict[str, pod_pb2.Pod]:
    """Every pod Running and Ready on a hollow node, with an address from that node's range,
    no address twice, the ranges distinct, and each service's endpoints exactly its pods."""
    listed = (await api.list(NODES)).items
    nodes = {node.metadata.name: node for node in listed if node.metadata.name.startswith(PREFIX)}
    assert len(nodes) == NODES_COUNT
    ranges = {name: ipaddress.ip_network(node.spec.pod_cidr) for name, node in nodes.items()}
    assert len(set(ranges.values())) == NODES_COUNT, "pod ranges are not distinct"
    pods = await all_pods(api, namespace)
    assert len(pods) == TOTAL_PODS, f"{len(pods)} pods, not {TOTAL_PODS}"
    by_ip: dict[str, str] = {}
    for pod in pods:
        name = pod.metadata.name
        assert pod.spec.node_name in nodes, f"{name} is on {pod.spec.node_name!r}"
        assert pod.status.phase == "Running", f"{name} is {pod.status.phase}"
        assert ready_condition(pod) == "True", f"{name} is not ready"
        assert ipaddress.ip_address(pod.status.pod_ip) in ranges[pod.spec.node_name], (
            f"{name}'s address {pod.status.pod_ip} is not in {ranges[pod.spec.node_name]}"
        )
        assert pod.status.pod_ip not in by_ip, f"{name} and {by_ip.get(pod.status.pod_ip)} share an address"
        by_ip[pod.status.pod_ip] = name
    for index in range(RC_COUNT):
        wanted = {pod.status.pod_ip for pod in pods if pod.metadata.labels["rc"] == f"rc-{index}"}
        assert len(wanted) == PODS_PER_RC
        endpoints = await api.get(ENDPOINTS, f"svc-{index}", namespace)
        listed = [address.ip for subset in endpoints.subsets for address in subset.addresses]
        assert sorted(listed) == sorted(wanted), f"svc-{index}'s endpoints differ from its pods"
        assert not any(subset.not_ready_addresses for subset in endpoints.subsets)
    return {pod.metadata.uid: pod for pod in pods}


async def test_hollow_nodes_run_every_pod_and_survive_an_api_server_restart(plane, hollow, api, namespace):
    # The nodes register, get their ranges and turn Ready.
    async def nodes_ready():
        nodes = [n for n in (await api.list(NODES)).items if n.metadata.name.startswith(PREFIX)]
        ready = [n for n in nodes if n.spec.pod_cidr and ready_condition(n) == "True"]
        assert hollow.alive(), hollow.log_tail()
        assert len(ready) == NODES_COUNT, f"{len(ready)} of {NODES_COUNT} nodes ready"
        return True

    began = time.monotonic()
    await eventually(nodes_ready, what="hollow nodes ready", timeout=60, **WAIT)
    nodes_at = time.monotonic()

    times = PodTimes(api, namespace)
    async with PodCreations(api, namespace) as creations:
        watch = asyncio.create_task(times.informer.run())
        try:
            await times.informer.wait_synced(10)
            for index in range(RC_COUNT):
                labels = {"rc": f"rc-{index}"}
                await api.create(make_service(f"svc-{index}", namespace, labels))
            created_at = time.monotonic()
            for index in range(RC_COUNT):
                labels = {"rc": f"rc-{index}"}
                await api.create(make_rc(f"rc-{index}", namespace, labels, replicas=PODS_PER_RC, grace_seconds=0))
                await asyncio.sleep(RC_INTERVAL)

            def all_running():
                assert hollow.alive(), hollow.log_tail()
                assert len(times.running) >= TOTAL_PODS, (
                    f"{len(times.created)} created, {len(times.bound)} bound, {len(times.running)} running"
                )
                return True

            await eventually(all_running, what=f"{TOTAL_PODS} pods running", timeout=240, **WAIT)
            running_at = time.monotonic()
            before = await eventually(lambda: check_cluster(api, namespace), what="the cluster as wanted",
                                      timeout=60, **WAIT)
            bound_times = sorted(times.bound.values())
            span = max(bound_times[-1] - bound_times[0], 1e-3)
            print(
                f"\nhollow nodes: {NODES_COUNT} nodes ready in {nodes_at - began:.1f}s; {TOTAL_PODS} pods "
                f"in {RC_COUNT} RCs: scheduled at {len(bound_times) / span:.0f} pods/s, all Running "
                f"{running_at - created_at:.1f}s after the first RC; {summary(hollow)}"
            )

            # An API server restart loses nothing and creates nothing.
            restart_began = time.monotonic()
            plane.stop_apiserver()
            plane.start_apiserver()

            async def same_cluster():
                after = await check_cluster(api, namespace)
                assert set(after) == set(before), "the pods changed across the restart"
                for uid, pod in after.items():
                    assert pod.spec.node_name == before[uid].spec.node_name
                    assert pod.status.pod_ip == before[uid].status.pod_ip
                return True

            await eventually(same_cluster, what="the same cluster after the restart", timeout=60, **WAIT)
            # The nodes keep their heartbeats going through the new API server.
            await eventually(nodes_ready, what="hollow nodes ready after the restart", timeout=60, **WAIT)
            for index in range(RC_COUNT):
                rc = await api.get(REPLICATION_CONTROLLERS, f"rc-{index}", namespace)
                assert rc.status.replicas == PODS_PER_RC
            await asyncio.sleep(2)  # anything a lagging controller would still do
            assert len(creations.names) == TOTAL_PODS, f"{len(creations.names)} pods were ever created"
            assert len(await all_pods(api, namespace)) == TOTAL_PODS
            print(f"hollow nodes: recovered in {time.monotonic() - restart_began:.1f}s after the API server restart; "
                  f"{summary(hollow)}")
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
    # The proxies programmed every service (theirs and the cluster's own).
    counts = summary(hollow)
    assert counts.get("proxy_services", 0) >= NODES_COUNT * RC_COUNT, counts
