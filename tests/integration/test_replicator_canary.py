"""The design's canary: two controllers behind one service, each scaling on its own.

API server with the scheduler and the endpoints controller, the replicator as its
own process, two Node objects; the test plays the kubelets (running, IP, ready)."""

from __future__ import annotations

import collections

import grpc
import pytest

from services.common.resources import ENDPOINTS, NODES
from tests.polling import eventually

from .apihelpers import httpd_container, make_rc, make_service
from .control_helpers import API_WAIT, FAR_GRACE, ControlPlane, FakeKubelets, add_node, kubecfg, pods_in

STABLE = {"tier": "frontend", "stack": "prod", "canary": "no"}
CANARY = {"tier": "frontend", "stack": "prod", "canary": "yes"}
SELECTOR = "tier in (frontend), stack in (prod)"


@pytest.fixture(scope="module")
def plane():
    control = ControlPlane("scheduler,endpoints", FAR_GRACE, replicator=True)
    yield control
    control.stop()


@pytest.fixture
def api_address(plane) -> str:
    return plane.address


def frontend_rc(name: str, namespace: str, labels: dict[str, str], replicas: int):
    return make_rc(name, namespace, labels, replicas, container=httpd_container(["httpd", "-f", "-p", "8080"]))


def names_of(pods) -> set[str]:
    """The names of the pods not being deleted (with no kubelet here, a bound pod's graceful
    deletion never ends: it stays, terminating, out of the count and of the endpoints)."""
    return {p.metadata.name for p in pods if not p.metadata.HasField("deletion_timestamp")}


async def test_canary_behind_one_service(plane, api, namespace):
    nodes = [f"{namespace}-a", f"{namespace}-b"]
    for node in nodes:
        await add_node(api, node)
    kubelets = FakeKubelets(api, namespace)
    try:
        service = make_service("frontend", namespace, {"tier": "frontend", "stack": "prod"}, port=80)
        service.spec.ports[0].target_port = "http"
        await api.create(service)
        await api.create(frontend_rc("frontend", namespace, STABLE, 9))
        await api.create(frontend_rc("frontend-canary", namespace, CANARY, 1))

        def all_running(count: int):
            async def check():
                await kubelets.start_bound_pods()
                pods = [p for p in await pods_in(api, namespace, SELECTOR) if names_of([p])]
                running = [p for p in pods if p.status.phase == "Running"]
                assert len(pods) == count and len(running) == count, f"{len(running)}/{len(pods)} running"
                return pods or True  # an empty list would read as "not yet"

            return check

        pods = await eventually(
            all_running(10), what="10 frontend pods running", **API_WAIT
        )
        assert collections.Counter(p.spec.node_name for p in pods) == {nodes[0]: 5, nodes[1]: 5}
        stable = names_of(await pods_in(api, namespace, "canary=no"))
        canary = names_of(await pods_in(api, namespace, "canary=yes"))
        assert (len(stable), len(canary)) == (9, 1)
        listed = await kubecfg(plane.address, namespace, "get", "pods", "-l", SELECTOR, "-o", "name")
        assert {line.split("/")[-1] for line in listed.split()} == stable | canary

        def endpoints_cover(expected: set[str]):
            async def check():
                try:
                    endpoints = await api.get(ENDPOINTS, "frontend", namespace)
                except grpc.aio.AioRpcError as error:
                    raise AssertionError("no endpoints yet") from error
                ready = {a.target_ref.name for s in endpoints.subsets for a in s.addresses}
                ports = {(p.port, p.protocol) for s in endpoints.subsets for p in s.ports}
                assert ready == expected and ports == {(8080, "TCP")}, f"{len(ready)} ready"
                return endpoints

            return check

        await eventually(
            endpoints_cover(stable | canary),
            what="the service to cover all 10 pods",
            **API_WAIT,
        )

        # The canary scales alone: the stable pods are untouched.
        await kubecfg(plane.address, namespace, "scale", "rc", "frontend-canary", "--replicas", "2")
        await eventually(
            all_running(11), what="11 frontend pods running", **API_WAIT
        )
        assert names_of(await pods_in(api, namespace, "canary=no")) == stable
        canary = names_of(await pods_in(api, namespace, "canary=yes"))
        assert len(canary) == 2
        await eventually(
            endpoints_cover(stable | canary),
            what="the service to cover 11 pods",
            **API_WAIT,
        )

        # And so does the stable controller.
        await kubecfg(plane.address, namespace, "scale", "rc", "frontend", "--replicas", "5")
        await eventually(
            all_running(7), what="7 frontend pods", **API_WAIT
        )
        remaining_stable = names_of(await pods_in(api, namespace, "canary=no"))
        assert len(remaining_stable) == 5 and remaining_stable < stable
        assert names_of(await pods_in(api, namespace, "canary=yes")) == canary
        await eventually(
            endpoints_cover(remaining_stable | canary),
            what="the service to cover 7 pods",
            **API_WAIT,
        )
    finally:
        for node in nodes:
            await api.delete(NODES, node)
