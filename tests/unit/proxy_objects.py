"""Service and Endpoints builders for the proxy's rule tables (every mode's tests use them)."""

from __future__ import annotations

from kybernetes.v1 import endpoints_pb2, meta_pb2, service_pb2


def service(
    name: str = "web",
    cluster_ip: str = "10.96.0.10",
    ports: tuple[tuple[str, int, str, int], ...] = (("http", 80, "TCP", 0),),
    *,
    affinity: str = "",
    namespace: str = "default",
) -> service_pb2.Service:
    """ports: (name, port, protocol, node port)."""
    return service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(namespace=namespace, name=name),
        spec=service_pb2.ServiceSpec(
            cluster_ip=cluster_ip,
            session_affinity=affinity,
            type="NodePort" if any(p[3] for p in ports) else "ClusterIP",
            ports=[service_pb2.ServicePort(name=n, port=p, protocol=proto, node_port=np) for n, p, proto, np in ports],
        ),
    )


def endpoints(
    ips: list[str], ports: tuple[tuple[str, int], ...] = (("http", 8080),), *, name: str = "web",
    namespace: str = "default", not_ready: list[str] | None = None,
) -> endpoints_pb2.Endpoints:
    return endpoints_pb2.Endpoints(
        metadata=meta_pb2.ObjectMeta(namespace=namespace, name=name),
        subsets=[
            endpoints_pb2.EndpointSubset(
                addresses=[endpoints_pb2.EndpointAddress(ip=ip) for ip in ips],
                not_ready_addresses=[endpoints_pb2.EndpointAddress(ip=ip) for ip in not_ready or []],
                ports=[endpoints_pb2.EndpointPort(name=n, port=p) for n, p in ports],
            )
        ],
    )
