"""Applies the services and endpoints the informers report to listeners on this node.

`desired_ports` turns a Service and its Endpoints into one PortSpec per service
port (pure; tested with tables). The Proxier keeps a ServicePortProxy per
(namespace, service, port name): its balancer and counters live as long as the
service port does, while its listener follows the port number and protocol.
Changes apply at once: new connections use the new backends, open connections
carry on (a removed or moved port only stops accepting). A port that cannot be
bound is retried with back-off without holding up any other service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from typing import Any, Union

from kybernetes.v1 import endpoints_pb2, proxy_pb2, service_pb2

from services.common.log import get_logger
from services.common.runtime import Backoff

from .balancer import DEFAULT_AFFINITY_TIMEOUT, Backend, RoundRobinBalancer
from .counters import PortCounters
from .tcp import TcpListener, bind_tcp
from .udp import UdpListener, bind_udp

ServiceKey = tuple[str, str]  # (namespace, name)
PortKey = tuple[str, str, str]  # (namespace, service name, port name)
Listener = Union[TcpListener, UdpListener]

SUPPORTED_PROTOCOLS = ("TCP", "UDP")
CLIENT_IP_AFFINITY = "ClientIP"


@dataclass(frozen=True)
class PortSpec:
    """What the proxy should do for one service port."""

    namespace: str
    service: str
    port_name: str
    protocol: str
    port: int
    backends: tuple[Backend, ...]
    client_ip_affinity: bool

    @property
    def key(self) -> PortKey:
        return (self.namespace, self.service, self.port_name)

    def describe(self) -> str:
        return f"{self.port_name or '-'}:{self.port}/{self.protocol}"


def _backend_order(backend: Backend) -> tuple[Any, ...]:
    try:
        address = ipaddress.ip_address(backend[0])
        return (address.version, int(address), backend[1])
    except ValueError:
        return (9, backend[0], backend[1])


def desired_ports(service: service_pb2.Service, endpoints: endpoints_pb2.Endpoints | None) -> list[PortSpec]:
    """One PortSpec per valid service port, with the ready backends of its endpoints.

    As in Kubernetes, an endpoint port belongs to a service port of the same name
    (both empty for a single unnamed port); the endpoints controller has already
    resolved a named or numeric targetPort into EndpointPort.port.
    """
    namespace = service.metadata.namespace
    name = service.metadata.name
    affinity = service.spec.session_affinity == CLIENT_IP_AFFINITY
    specs = []
    for service_port in service.spec.ports:
        protocol = (service_port.protocol or "TCP").upper()
        if protocol not in SUPPORTED_PROTOCOLS or not 0 < service_port.port < 65536:
            continue
        backends: set[Backend] = set()
        if endpoints is not None:
            for subset in endpoints.subsets:
                for endpoint_port in subset.ports:
                    if endpoint_port.name != service_port.name or not 0 < endpoint_port.port < 65536:
                        continue
                    for address in subset.addresses:
                        if address.ip:
                            backends.add((address.ip, endpoint_port.port))
        specs.append(
            PortSpec(
                namespace=namespace,
                service=name,
                port_name=service_port.name,
                protocol=protocol,
                port=service_port.port,
                backends=tuple(sorted(backends, key=_backend_order)),
                client_ip_affinity=affinity,
            )
        )
    return specs


def skipped_ports(service: service_pb2.Service) -> list[str]:
    """Service ports the proxy cannot serve, with the reason (for the log)."""
    reasons = []
    for service_port in service.spec.ports:
        protocol = (service_port.protocol or "TCP").upper()
        if protocol not in SUPPORTED_PROTOCOLS:
            reasons.append(f"{service_port.name or service_port.port}: protocol {protocol} is not supported")
        elif not 0 < service_port.port < 65536:
            reasons.append(f"{service_port.name or '-'}: port {service_port.port} is out of range")
    return reasons


def endpoint_count(specs: tuple[PortSpec, ...] | list[PortSpec]) -> int:
    """The service's backends as a user counts them: those of its best-served port."""
    return max((len(spec.backends) for spec in specs), default=0)


@dataclass
class ProxyOptions:
    bind_address: str = "0.0.0.0"
    connect_timeout: float = 3.0
    udp_idle_timeout: float = 30.0
    affinity_timeout: float = DEFAULT_AFFINITY_TIMEOUT
    bind_retry_initial: float = 0.5
    bind_retry_max: float = 30.0
    use_splice: bool = True


class ServicePortProxy:
    """One service port: a balancer, counters, and a listener bound (or retrying) on its port."""

    def __init__(self, spec: PortSpec, options: ProxyOptions, retire: Any) -> None:
        self.spec = spec
        self.options = options
        self.counters = PortCounters()
        self.balancer = RoundRobinBalancer(
            spec.backends,
            client_ip_affinity=spec.client_ip_affinity,
            affinity_timeout=options.affinity_timeout,
        )
        self.listener: Listener | None = None
        self.error = ""
        self._retire = retire
        self._bind_task: asyncio.Task | None = None
        self._log = get_logger(service=f"{spec.namespace}/{spec.service}", port=spec.describe())

    def start(self) -> None:
        self._bind_task = asyncio.create_task(self._bind_until_bound(), name=f"bind-{self.spec.describe()}")

    def apply(self, spec: PortSpec) -> None:
        old = self.spec
        self.spec = spec
        self.balancer.set_backends(spec.backends)
        self.balancer.set_affinity(spec.client_ip_affinity)
        if (old.protocol, old.port) != (spec.protocol, spec.port):
            self._log = get_logger(service=f"{spec.namespace}/{spec.service}", port=spec.describe())
            self._stop_listening()
            self.start()

    def close(self) -> None:
        self._stop_listening()

    def _stop_listening(self) -> None:
        if self._bind_task is not None:
            self._bind_task.cancel()
            self._bind_task = None
        if self.listener is not None:
            self.listener.close()
            self._retire(self.listener)
            self.listener = None
        self.error = ""

    async def _bind_until_bound(self) -> None:
        spec, options = self.spec, self.options
        backoff = Backoff(options.bind_retry_initial, max(options.bind_retry_initial, options.bind_retry_max))
        address = f"{options.bind_address}:{spec.port}/{spec.protocol}"
        while True:
            try:
                self.listener = self._listen()
            except OSError as error:
                delay = backoff.failure()
                failures = backoff.failures()
                reason = error.strerror or str(error)
                self.error = f"cannot listen on {address}: {reason}"
                self._log.warning(
                    "listen_failed", address=address, error=reason, attempt=failures, retry_in=round(delay, 2)
                )
                await asyncio.sleep(delay)
                continue
            self.error = ""
            failures = backoff.failures()
            if failures:  # the normal case is already told by service_added
                self._log.info("listening", address=address, after_attempts=failures + 1)
            return

    def _listen(self) -> Listener:
        spec, options = self.spec, self.options
        listener: Listener
        if spec.protocol == "UDP":
            sock = bind_udp(options.bind_address, spec.port)
            listener = UdpListener(
                sock, self.balancer, self.counters, idle_timeout=options.udp_idle_timeout, log=self._log
            )
        else:
            sock = bind_tcp(options.bind_address, spec.port)
            listener = TcpListener(
                sock, self.balancer, self.counters,
                connect_timeout=options.connect_timeout, use_splice=options.use_splice, log=self._log,
            )
        listener.start()
        return listener

    def status(self) -> proxy_pb2.ProxiedPortStatus:
        spec, counters = self.spec, self.counters
        return proxy_pb2.ProxiedPortStatus(
            namespace=spec.namespace,
            service=spec.service,
            port_name=spec.port_name,
            protocol=spec.protocol,
            port=spec.port,
            listening=self.listener is not None,
            error=self.error,
            endpoints=[f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip, port in self.balancer.backends],
            connections_total=counters.connections_total,
            connections_active=counters.connections_active,
            connect_failures=counters.connect_failures,
            bytes_in=counters.bytes_in,
            bytes_out=counters.bytes_out,
        )


class Proxier:
    """The userspace data path (`--proxy-mode=userspace`)."""

    mode = "userspace"

    def __init__(self, options: ProxyOptions | None = None) -> None:
        self.options = options or ProxyOptions()
        self.services: dict[ServiceKey, service_pb2.Service] = {}
        self.endpoints: dict[ServiceKey, endpoints_pb2.Endpoints] = {}
        self.ports: dict[PortKey, ServicePortProxy] = {}
        self._applied: dict[ServiceKey, tuple[PortSpec, ...]] = {}
        # Listeners that stopped accepting but may still carry open connections.
        self._retired: list[Listener] = []
        self._log = get_logger()

    # Informer handlers (event_type, obj, old) ------------------------------

    def on_service_event(self, event_type: str, service: service_pb2.Service, old: Any = None) -> None:
        if event_type == "DELETED":
            self.delete_service(service.metadata.namespace, service.metadata.name)
        else:
            self.set_service(service)

    def on_endpoints_event(self, event_type: str, endpoints: endpoints_pb2.Endpoints, old: Any = None) -> None:
        if event_type == "DELETED":
            self.delete_endpoints(endpoints.metadata.namespace, endpoints.metadata.name)
        else:
            self.set_endpoints(endpoints)

    def mark_synced(self) -> None:
        """Nothing waits for it: each service opens as soon as it is seen."""

    async def run(self) -> None:
        """Nothing to drive: listeners run on their own tasks. Waits until cancelled."""
        await asyncio.Event().wait()

    # Desired state --------------------------------------------------------

    def set_service(self, service: service_pb2.Service) -> None:
        key = (service.metadata.namespace, service.metadata.name)
        self.services[key] = service
        self._sync(key)

    def delete_service(self, namespace: str, name: str) -> None:
        self.services.pop((namespace, name), None)
        self._sync((namespace, name))

    def set_endpoints(self, endpoints: endpoints_pb2.Endpoints) -> None:
        key = (endpoints.metadata.namespace, endpoints.metadata.name)
        self.endpoints[key] = endpoints
        self._sync(key)

    def delete_endpoints(self, namespace: str, name: str) -> None:
        self.endpoints.pop((namespace, name), None)
        self._sync((namespace, name))

    def _sync(self, key: ServiceKey) -> None:
        service = self.services.get(key)
        endpoints = self.endpoints.get(key)
        specs = tuple(desired_ports(service, endpoints)) if service is not None else ()
        previous = self._applied.get(key)
        if service is None and previous is None:
            return  # endpoints of a service this proxy does not (yet) know
        if service is not None and previous == specs:
            return
        wanted = {spec.key: spec for spec in specs}
        for port_key in [k for k in self.ports if k[:2] == key and k not in wanted]:
            self.ports.pop(port_key).close()
        for port_key, spec in wanted.items():
            current = self.ports.get(port_key)
            if current is None:
                proxy = self.ports[port_key] = ServicePortProxy(spec, self.options, self._retire)
                proxy.start()
            else:
                current.apply(spec)
        log = self._log.bind(service=f"{key[0]}/{key[1]}")
        if service is None:
            self._applied.pop(key, None)
            log.info("service_removed", endpoints=endpoint_count(previous or ()))
            return
        self._applied[key] = specs
        fields: dict[str, Any] = {
            "ports": ",".join(spec.describe() for spec in specs),
            "endpoints": endpoint_count(specs),
        }
        if service.spec.session_affinity == CLIENT_IP_AFFINITY:
            fields["affinity"] = CLIENT_IP_AFFINITY
        skipped = skipped_ports(service)
        if skipped:
            fields["skipped"] = "; ".join(skipped)
        log.info("service_added" if previous is None else "service_updated", **fields)

    def _retire(self, listener: Listener) -> None:
        self._retired = [old for old in self._retired if old.connections]
        if listener.connections:
            self._retired.append(listener)

    # Reading --------------------------------------------------------------

    def status(self) -> list[proxy_pb2.ProxiedPortStatus]:
        return [self.ports[key].status() for key in sorted(self.ports)]

    def status_details(self) -> dict[str, str]:
        return {"mode": self.mode, "bind-address": self.options.bind_address}

    def active_connections(self) -> int:
        listeners = [p.listener for p in self.ports.values() if p.listener is not None] + self._retired
        return sum(len(listener.connections) for listener in listeners)

    # Stopping -------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Closes every listener, gives open connections `grace` seconds, then resets the rest."""
        for proxy in self.ports.values():
            proxy.close()
        self.ports.clear()
        self._applied.clear()
        deadline = time.monotonic() + grace
        # Connections leave their listener's set with no event to wait on (a TCP close, a UDP
        # session's idle timeout); polled for the grace period of a shutdown only.
        while self.active_connections() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        remaining = self.active_connections()
        for listener in self._retired:
            listener.abort_connections()
        self._retired.clear()
        if remaining:
            self._log.info("connections_reset_at_shutdown", connections=remaining)
