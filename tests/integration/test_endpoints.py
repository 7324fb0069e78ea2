"""The endpoints controller inside a real API server over real etcd; the test plays the kubelet."""

from __future__ import annotations

import grpc
import pytest

from kybernetes.v1 import endpoints_pb2, meta_pb2, service_pb2
from services.common.client import ApiClient
from services.common.resources import ENDPOINTS, NODES, PODS, SERVICES
from tests.polling import eventually

from .apihelpers import make_pod, make_service
from .control_helpers import API_WAIT, ControlPlane, add_node, heartbeat, set_pod_status


@pytest.fixture(scope="module")
def plane():
    control = ControlPlane("endpoints")
    yield control
    control.stop()


@pytest.fixture
def api_address(plane) -> str:
    return plane.address


def web_pod(name: str, namespace: str, labels: dict[str, str] | None = None, node: str = "n1", http_port: int = 8080):
    pod = make_pod(name, namespace, labels if labels is not None else {"app": "web"}, node=node)
    pod.spec.containers[0].ports.add(name="http", container_port=http_port)
    return pod


def summary(endpoints: endpoints_pb2.Endpoints) -> list[tuple]:
    """(ready pod names, not-ready pod names, ports) per subset."""
    return [
        (
            [a.target_ref.name for a in subset.addresses],
            [a.target_ref.name for a in subset.not_ready_addresses],
            [(p.name, p.port, p.protocol) for p in subset.ports],
        )
        for subset in endpoints.subsets
    ]


def endpoints_become(api: ApiClient, namespace: str, name: str, expected: list[tuple]):
    async def check():
        try:
            endpoints = await api.get(ENDPOINTS, name, namespace)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise AssertionError("no endpoints yet") from error
            raise
        assert summary(endpoints) == expected, str(summary(endpoints))
        return endpoints

    return check


async def test_endpoints_follow_pods_as_they_come_ready_change_labels_and_go(api, namespace):
    service = make_service("web", namespace, {"app": "web"})
    service.spec.ports[0].target_port = "http"
    await api.create(service)
    await api.create(web_pod("a", namespace))
    await api.create(web_pod("b", namespace))
    await api.create(web_pod("starting", namespace))  # no IP yet: not listed at all
    await api.create(web_pod("other", namespace, {"app": "db"}))
    await set_pod_status(api, namespace, "a", ip="10.1.0.1")
    await set_pod_status(api, namespace, "b", ip="10.1.0.2", ready=False)
    await set_pod_status(api, namespace, "other", ip="10.1.0.9")

    endpoints = await eventually(
        endpoints_become(api, namespace, "web", [(["a"], ["b"], [("", 8080, "TCP")])]),
        what="a ready, b not",
        **API_WAIT,
    )
    address = endpoints.subsets[0].addresses[0]
    assert (address.ip, address.node_name, address.target_ref.kind) == ("10.1.0.1", "n1", "Pod")
    assert address.target_ref.uid == (await api.get(PODS, "a", namespace)).metadata.uid

    await set_pod_status(api, namespace, "b", ip="10.1.0.2", ready=True)
    await eventually(
        endpoints_become(api, namespace, "web", [(["a", "b"], [], [("", 8080, "TCP")])]),
        what="b ready",
        **API_WAIT,
    )

    relabelled = await api.get(PODS, "a", namespace)
    relabelled.metadata.labels["app"] = "debug"
    await api.update(relabelled)
    await eventually(
        endpoints_become(api, namespace, "web", [(["b"], [], [("", 8080, "TCP")])]),
        what="a relabelled away",
        **API_WAIT,
    )

    await set_pod_status(api, namespace, "b", phase="Failed", ip="10.1.0.2", ready=False)
    await eventually(
        endpoints_become(api, namespace, "web", []),
        what="a finished pod to leave",
        **API_WAIT,
    )

    await set_pod_status(api, namespace, "starting", ip="10.1.0.3")
    await eventually(
        endpoints_become(api, namespace, "web", [(["starting"], [], [("", 8080, "TCP")])]),
        what="starting",
        **API_WAIT,
    )
    await api.delete(PODS, "starting", namespace)
    await eventually(
        endpoints_become(api, namespace, "web", []),
        what="a deleted pod to leave",
        **API_WAIT,
    )


async def test_named_target_ports_are_resolved_per_pod(api, namespace):
    service = service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(name="web", namespace=namespace, labels={"team": "a"}),
        spec=service_pb2.ServiceSpec(
            selector={"app": "web"},
            ports=[
                service_pb2.ServicePort(name="http", port=80, target_port="http"),
                service_pb2.ServicePort(name="metrics", port=9090, target_port="9100"),
            ],
        ),
    )
    await api.create(service)
    await api.create(web_pod("old", namespace, http_port=8080))
    await api.create(web_pod("new", namespace, http_port=8081))
    await api.create(make_pod("bare", namespace, {"app": "web"}, node="n1"))  # has no port named http
    for index, name in enumerate(("old", "new", "bare")):
        await set_pod_status(api, namespace, name, ip=f"10.2.0.{index + 1}")

    endpoints = await eventually(
        endpoints_become(
            api,
            namespace,
            "web",
            [
                (["old"], [], [("http", 8080, "TCP"), ("metrics", 9100, "TCP")]),
                (["new"], [], [("http", 8081, "TCP"), ("metrics", 9100, "TCP")]),
                (["bare"], [], [("metrics", 9100, "TCP")]),
            ],
        ),
        what="one subset per set of resolved ports",
        **API_WAIT,
    )
    assert dict(endpoints.metadata.labels) == {"team": "a"}


async def test_pods_on_a_node_that_is_not_ready_are_not_ready(api, namespace):
    node = f"{namespace}-node"
    await add_node(api, node)
    try:
        await api.create(make_service("web", namespace, {"app": "web"}))
        await api.create(make_pod("p", namespace, {"app": "web"}, node=node))
        await set_pod_status(api, namespace, "p", ip="10.3.0.1")
        await eventually(
            endpoints_become(api, namespace, "web", [(["p"], [], [("", 80, "TCP")])]),
            what="p ready",
            **API_WAIT,
        )

        await heartbeat(api, node, "Unknown")
        await eventually(
            endpoints_become(api, namespace, "web", [([], ["p"], [("", 80, "TCP")])]),
            what="p not ready",
            **API_WAIT,
        )
        await heartbeat(api, node, "True")
        await eventually(
            endpoints_become(api, namespace, "web", [(["p"], [], [("", 80, "TCP")])]),
            what="p ready again",
            **API_WAIT,
        )
    finally:
        await api.delete(NODES, node)


async def test_endpoints_are_recreated_if_deleted_and_removed_with_their_service(api, namespace):
    await api.create(make_service("web", namespace, {"app": "web"}))
    await eventually(
        endpoints_become(api, namespace, "web", []),
        what="empty endpoints for a service with no pods",
        **API_WAIT,
    )

    await api.delete(ENDPOINTS, "web", namespace)
    await eventually(
        endpoints_become(api, namespace, "web", []),
        what="the endpoints to be put back",
        **API_WAIT,
    )

    await api.delete(SERVICES, "web", namespace)

    async def gone():
        try:
            await api.get(ENDPOINTS, "web", namespace)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error.code().name
            return True
        raise AssertionError("the endpoints are still there")

    await eventually(
        gone, what="the endpoints to go with their service", **API_WAIT
    )


async def test_a_service_without_selector_keeps_hand_made_endpoints(api, namespace):
    service = make_service("external", namespace, {})
    await api.create(service)
    manual = endpoints_pb2.Endpoints(
        metadata=meta_pb2.ObjectMeta(name="external", namespace=namespace),
        subsets=[
            endpoints_pb2.EndpointSubset(
                addresses=[endpoints_pb2.EndpointAddress(ip="192.0.2.10")],
                ports=[endpoints_pb2.EndpointPort(port=5432)],
            )
        ],
    )
    created = await api.create(manual)
    # A pod in the namespace triggers the controller; it must still leave these alone.
    await api.create(make_service("web", namespace, {"app": "web"}))
    await api.create(make_pod("p", namespace, {"app": "web"}, node="n1"))
    await set_pod_status(api, namespace, "p", ip="10.4.0.1")
    await eventually(
        endpoints_become(api, namespace, "web", [(["p"], [], [("", 80, "TCP")])]),
        what="web's endpoints",
        **API_WAIT,
    )
    kept = await api.get(ENDPOINTS, "external", namespace)
    assert kept.metadata.resource_version == created.metadata.resource_version
