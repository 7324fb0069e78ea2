"""The userspace relay: a listener per service port on this node, forwarding to its endpoints.

`desired_ports` turns a Service and its Endpoints into one PortSpec per service
port (pure; tested with tables). The Proxier keeps a ServicePortProxy per
(namespace, service, port name): its balancer and counters live as long as the
service port does, and so does its listener, on a local port of its own (the
"proxy port", picked by the kernel on --bind-address, as Kubernetes 1.0's
userspace proxier): the kernel sends the service's cluster IP and node port
there (the portals, userspace.py), so a service port's number can change
without the listener moving; only a change of protocol replaces it. Changes
apply at once: new connections use the new backends, open connections carry on
(a removed port only stops accepting). A listener that cannot be bound (the
bind address not there yet) is retried with back-off without holding up any
other service.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import time
from dataclasses import dataclass
from typing import Any, Callable, Union

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
    # Where the listeners are: loopback by default, reached only through the portals.
    bind_address: str = "127.0.0.1"
    connect_timeout: float = 3.0
    udp_idle_timeout: float = 30.0
    affinity_timeout: float = DEFAULT_AFFINITY_TIMEOUT
    bind_retry_initial: float = 0.5
    bind_retry_max: float = 30.0
    use_splice: bool = True


class ServicePortProxy:
    """One service port: a balancer, counters, and a listener bound (or retrying) on a local port."""

    def __init__(self, spec: PortSpec, options: ProxyOptions, retire: Any, changed: Callable[[], None]) -> None:
        self.spec = spec
        self.options = options
        self.counters = PortCounters()
        self.balancer = RoundRobinBalancer(
            spec.backends,
            client_ip_affinity=spec.client_ip_affinity,
            affinity_timeout=options.affinity_timeout,
        )
        self.listener: Listener | None = None
        self.relay_port = 0  # the listener's port, once bound
        self.error = ""
        self._retire = retire
        self._changed = changed  # the listener was bound or closed: the portals follow
        self._bind_task: asyncio.Task | None = None
        self._log = get_logger(service=f"{spec.namespace}/{spec.service}", port=spec.describe())

    @property
    def bound(self) -> tuple[str, int] | None:
        """(protocol, relay port) of the listener, if it listens."""
        return (self.spec.protocol, self.relay_port) if self.listener is not None else None

    def start(self) -> None:
        """Binds now if it can (so the portals know the port at once), else retries in the background."""
        try:
            self._set_listener(self._listen())
        except OSError as error:
            self._report_failure(error, attempt=1, delay=self.options.bind_retry_initial)
            self._bind_task = asyncio.create_task(self._bind_until_bound(), name=f"bind-{self.spec.describe()}")

    def apply(self, spec: PortSpec) -> None:
        old = self.spec
        self.spec = spec
        self.balancer.set_backends(spec.backends)
        self.balancer.set_affinity(spec.client_ip_affinity)
        if old.describe() != spec.describe():
            self._log = get_logger(service=f"{spec.namespace}/{spec.service}", port=spec.describe())
        if old.protocol != spec.protocol:
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
            self.relay_port = 0
            self._changed()
        self.error = ""

    def _set_listener(self, listener: Listener) -> None:
        self.listener = listener
        self.relay_port = listener.sock.getsockname()[1]
        self.error = ""
        self._changed()

    def _report_failure(self, error: OSError, *, attempt: int, delay: float) -> None:
        address = f"{self.options.bind_address}/{self.spec.protocol}"
        reason = error.strerror or str(error)
        self.error = f"cannot listen on {address}: {reason}"
        self._log.warning("listen_failed", address=address, error=reason, attempt=attempt, retry_in=round(delay, 2))

    async def _bind_until_bound(self) -> None:
        options = self.options
        backoff = Backoff(options.bind_retry_initial, max(options.bind_retry_initial, options.bind_retry_max))
        backoff.failure()  # the first attempt, in start()
        while True:
            await asyncio.sleep(backoff.delay())
            try:
                listener = self._listen()
            except OSError as error:
                backoff.failure()
                self._report_failure(error, attempt=backoff.failures(), delay=backoff.delay())
                continue
            self._set_listener(listener)
            self._log.info("listening", address=f"{options.bind_address}:{self.relay_port}",
                           after_attempts=backoff.failures() + 1)
            self._bind_task = None
            return

    def _listen(self) -> Listener:
        spec, options = self.spec, self.options
        listener: Listener
        if spec.protocol == "UDP":
            sock = bind_udp(options.bind_address, 0)
            listener = UdpListener(
                sock, self.balancer, self.counters, idle_timeout=options.udp_idle_timeout, log=self._log
            )
        else:
            sock = bind_tcp(options.bind_address, 0)
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
    """The relay of the userspace data path (`--proxy-mode=userspace`, with its portals: userspace.py)."""

    mode = "userspace"

    def __init__(
        self, options: ProxyOptions | None = None, *, on_change: Callable[[ServiceKey], None] | None = None
    ) -> None:
        self.options = options or ProxyOptions()
        # Called when a service's listeners were bound, replaced or closed.
        self._on_change = on_change or (lambda key: None)
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
                proxy = self.ports[port_key] = ServicePortProxy(
                    spec, self.options, self._retire, functools.partial(self._on_change, key)
                )
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
            "relay": ",".join(
                f"{spec.describe()}@{self.options.bind_address}:{self.ports[spec.key].relay_port}" for spec in specs
            ),
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

    def relay_ports(self, key: ServiceKey) -> dict[tuple[str, str], int]:
        """(port name, protocol) -> the local port its listener is bound to, for the service's bound ports."""
        found = {}
        for spec in self._applied.get(key, ()):
            proxy = self.ports.get(spec.key)
            bound = proxy.bound if proxy is not None else None
            if bound is not None:
                found[(spec.port_name, bound[0])] = bound[1]
        return found

    def relay_port(self, namespace: str, service: str, port_name: str = "") -> int:
        """The local port of one service port's listener (0 if it does not listen)."""
        proxy = self.ports.get((namespace, service, port_name))
        return proxy.relay_port if proxy is not None else 0

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
