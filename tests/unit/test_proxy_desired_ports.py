"""How the proxy reads a Service and its Endpoints into the ports it forwards."""

from __future__ import annotations

import pytest

from kybernetes.v1 import endpoints_pb2, meta_pb2, service_pb2

from services.proxy.proxier import desired_ports, endpoint_count, skipped_ports


def service(*ports: dict, affinity: str = "") -> service_pb2.Service:
    return service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(namespace="ns", name="web"),
        spec=service_pb2.ServiceSpec(
            ports=[service_pb2.ServicePort(**port) for port in ports], session_affinity=affinity,
        ),
    )


def endpoints(*subsets: tuple[list[str], list[dict], list[str]]) -> endpoints_pb2.Endpoints:
    return endpoints_pb2.Endpoints(
        metadata=meta_pb2.ObjectMeta(namespace="ns", name="web"),
        subsets=[
            endpoints_pb2.EndpointSubset(
                addresses=[endpoints_pb2.EndpointAddress(ip=ip) for ip in ready],
                not_ready_addresses=[endpoints_pb2.EndpointAddress(ip=ip) for ip in not_ready],
                ports=[endpoints_pb2.EndpointPort(**port) for port in ports],
            )
            for ready, ports, not_ready in subsets
        ]
    )


def summary(svc, eps):
    return [(s.port_name, s.protocol, s.port, list(s.backends), s.client_ip_affinity) for s in desired_ports(svc, eps)]


@pytest.mark.parametrize(
    "svc, eps, expected",
    [
        pytest.param(
            service({"port": 80}),
            endpoints((["10.0.0.2", "10.0.0.1"], [{"port": 8080}], [])),
            [("", "TCP", 80, [("10.0.0.1", 8080), ("10.0.0.2", 8080)], False)],
            id="single-unnamed-port-sorted-backends",
        ),
        pytest.param(
            service({"port": 80}),
            None,
            [("", "TCP", 80, [], False)],
            id="no-endpoints-yet-still-listens",
        ),
        pytest.param(
            service({"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}),
            endpoints((["10.0.0.1"], [{"name": "dns", "port": 5353}, {"name": "http", "port": 8080}], [])),
            [
                ("http", "TCP", 80, [("10.0.0.1", 8080)], False),
                ("dns", "UDP", 53, [("10.0.0.1", 5353)], False),
            ],
            id="ports-matched-by-name",
        ),
        pytest.param(
            service({"name": "http", "port": 80}),
            endpoints((["10.0.0.1"], [{"name": "metrics", "port": 9090}], [])),
            [("http", "TCP", 80, [], False)],
            id="endpoint-port-of-another-name-ignored",
        ),
        pytest.param(
            service({"port": 80}),
            endpoints((["10.0.0.1"], [{"port": 8080}], ["10.0.0.9"])),
            [("", "TCP", 80, [("10.0.0.1", 8080)], False)],
            id="not-ready-addresses-excluded",
        ),
        pytest.param(
            service({"port": 80}),
            endpoints((["10.0.0.1"], [{"port": 8080}], []), (["10.0.0.2"], [{"port": 9090}], [])),
            [("", "TCP", 80, [("10.0.0.1", 8080), ("10.0.0.2", 9090)], False)],
            id="subsets-with-different-target-ports",
        ),
        pytest.param(
            service({"port": 80}, affinity="ClientIP"),
            endpoints((["10.0.0.1"], [{"port": 8080}], [])),
            [("", "TCP", 80, [("10.0.0.1", 8080)], True)],
            id="client-ip-affinity",
        ),
        pytest.param(
            service({"port": 80, "protocol": "tcp"}),
            None,
            [("", "TCP", 80, [], False)],
            id="protocol-case-insensitive",
        ),
        pytest.param(
            service({"name": "a", "port": 80, "protocol": "SCTP"}, {"name": "b", "port": 0}, {"name": "c", "port": 81}),
            None,
            [("c", "TCP", 81, [], False)],
            id="unsupported-protocol-and-zero-port-skipped",
        ),
        pytest.param(
            service({"port": 80}),
            endpoints((["10.0.0.1", "10.0.0.1", ""], [{"port": 8080}], [])),
            [("", "TCP", 80, [("10.0.0.1", 8080)], False)],
            id="duplicate-and-empty-ips-dropped",
        ),
    ],
)
def test_desired_ports(svc, eps, expected):
    assert summary(svc, eps) == expected


def test_skipped_ports_name_the_reason():
    reasons = skipped_ports(service({"name": "a", "port": 80, "protocol": "SCTP"}, {"name": "b", "port": 70000}))
    assert reasons == ["a: protocol SCTP is not supported", "b: port 70000 is out of range"]


def test_endpoint_count_is_that_of_the_best_served_port():
    svc = service({"name": "a", "port": 80}, {"name": "b", "port": 81})
    eps = endpoints((["10.0.0.1", "10.0.0.2"], [{"name": "a", "port": 1}, {"name": "b", "port": 2}], ["10.0.0.3"]),
                    (["10.0.0.4"], [{"name": "a", "port": 1}], []))
    assert endpoint_count(desired_ports(svc, eps)) == 3
    assert endpoint_count(desired_ports(svc, None)) == 0
