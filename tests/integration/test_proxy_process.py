"""kube-proxy as users run it: its own process, flags, Status RPC, SIGTERM, and a real API server.

The userspace mode here, its relay reached through cluster IPs (its portals are
an nftables table: root); every mode's process test, with pods on a bridge, is
in proxy_behaviour.py.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import uuid
from typing import Any, Awaitable, Callable

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kybernetes.v1 import endpoints_pb2, meta_pb2, proxy_pb2, proxy_pb2_grpc, service_pb2
from services.common.client import ApiClient
from services.common.transport import aio_channel
from services.common.resources import ENDPOINTS, SERVICES
from tests.polling import eventually
from tools.processes import (
    REPO,
    ManagedProcess,
    component_security_flags,
    dev_pki,
    free_port,
    python_module_argv,
    wait_for_port,
)

from services.proxy import nftables

# Detailed assertion messages from the shared module too (before it is first imported).
pytest.register_assert_rewrite("tests.integration.proxy_behaviour")

from .proxy_behaviour import nft_tables  # noqa: E402
from .test_proxy_forwarding import LOOPBACK, TcpBackend, echo_handler, name_handler  # noqa: E402

WAIT = 30.0  # seconds for the proxy process to apply a change it watched


class ProxyProcess(ManagedProcess):
    """`kube-proxy` in userspace mode as its own process, logging to a temporary file."""

    def __init__(self, server: str, *extra: str) -> None:
        self.status_port = free_port()
        self.node = f"proxy-test-{uuid.uuid4().hex[:8]}"
        super().__init__(
            "proxy",
            python_module_argv(
                "services.proxy.main",
                "--proxy-mode", "userspace",
                "--server", server,
                "--bind-address", LOOPBACK,
                "--node-name", self.node,
                "--status-listen", f"{LOOPBACK}:{self.status_port}",
                "--connect-timeout", "1",
                *component_security_flags("proxy"),
                *extra,
            ),
        )
        try:
            wait_for_port(self.status_port, self.process, timeout=30)
        except Exception:
            self.stop()
            raise

    def clean_up(self) -> None:
        """`kube-proxy --cleanup` for the node; checks that its table is gone."""
        result = subprocess.run(
            python_module_argv("services.proxy.main", "--cleanup", "--node-name", self.node),
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert f"table ip {nftables.table_name(self.node)}" not in nft_tables()

    async def status(self) -> proxy_pb2.ProxyStatus:
        async with aio_channel(f"{LOOPBACK}:{self.status_port}", dev_pki().credentials("admin")) as channel:
            return await proxy_pb2_grpc.ProxyStub(channel).Status(proxy_pb2.ProxyStatusRequest(), timeout=10)

    async def port_status(self, namespace: str, service: str) -> proxy_pb2.ProxiedPortStatus | None:
        for port in (await self.status()).ports:
            if (port.namespace, port.service) == (namespace, service):
                return port
        return None

    async def wait_exit(self, timeout: float = 30.0) -> int:
        return await asyncio.to_thread(self.process.wait, timeout)


def test_bad_flag_is_refused_with_its_name():
    result = subprocess.run(
        python_module_argv("services.proxy.main", "--udp-idle-timeout", "0"),
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 2
    assert "--udp-idle-timeout: must be greater than 0" in result.stderr


async def test_status_health_and_sigterm_without_an_api_server():
    # Nothing listens at --server: the proxy keeps retrying its watches and still serves its status.
    proxy = ProxyProcess(f"{LOOPBACK}:{free_port()}")
    try:
        status = await proxy.status()
        assert status.node_name == proxy.node and list(status.ports) == []
        async with aio_channel(f"{LOOPBACK}:{proxy.status_port}", dev_pki().credentials("admin")) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="kybernetes.v1.Proxy"), timeout=10,
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING

        proxy.process.send_signal(signal.SIGTERM)
        assert await proxy.wait_exit() == 0
        assert "proxy_stopped" in proxy.log_text()
        # Never synced, so it never wrote a table.
        assert f"table ip {nftables.table_name(proxy.node)}" not in nft_tables()
    finally:
        proxy.stop()


def make_service(namespace: str, name: str, port: int, cluster_ip: str) -> service_pb2.Service:
    return service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(namespace=namespace, name=name),
        spec=service_pb2.ServiceSpec(
            cluster_ip=cluster_ip, selector={"app": name},
            ports=[service_pb2.ServicePort(name="http", port=port, target_port="http")],
        ),
    )


async def exchange(host: str, port: int, payload: bytes = b"", timeout: float = 30.0) -> bytes:
    """Connects, sends payload, shuts the write side, returns everything read until EOF."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        if payload:
            writer.write(payload)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def host_address() -> str:
    """A non-loopback address of this host (Endpoints may not be loopback): the source address
    of the default route, found by connecting a UDP socket, which sends nothing. A connection
    to it stays on this machine (the kernel delivers local addresses through loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        return str(probe.getsockname()[0])


def make_endpoints(namespace: str, name: str, backend_ports: list[int], ip: str) -> endpoints_pb2.Endpoints:
    return endpoints_pb2.Endpoints(
        metadata=meta_pb2.ObjectMeta(namespace=namespace, name=name),
        subsets=[
            endpoints_pb2.EndpointSubset(
                addresses=[endpoints_pb2.EndpointAddress(ip=ip)],
                ports=[endpoints_pb2.EndpointPort(name="http", port=port, protocol="TCP")],
            )
            for port in backend_ports
        ],
    )


async def test_proxy_follows_the_api_server(apiserver, namespace):
    """Services and Endpoints created through the API are served at their cluster IPs, changed and
    removed live, and SIGTERM lets an open connection finish."""
    names = [b"alpha", b"bravo", b"charlie"]
    host = host_address()
    backends = [await TcpBackend(name_handler(name), host).start() for name in names]
    echo = await TcpBackend(echo_handler, host).start()
    api = ApiClient(apiserver.address)
    # Cluster IPs of the test's own, in a range of its own (the API server's default range holds it).
    subnet = random.randrange(1, 255)
    web_ip, echo_ip = f"10.101.{subnet}.10", f"10.101.{subnet}.11"
    proxy = ProxyProcess(apiserver.address, "--shutdown-grace", "10",
                         "--service-cluster-ip-range", f"10.101.{subnet}.0/24")
    try:
        await api.create(make_service(namespace, "web", 80, web_ip))
        await api.create(make_endpoints(namespace, "web", [b.port for b in backends], host))

        async def endpoint_count() -> int:
            status = await proxy.port_status(namespace, "web")
            return len(status.endpoints) if status is not None and status.listening else -1

        await eventually(lambda: returns(endpoint_count, 3), what="3 endpoints applied", timeout=WAIT)
        replies = [await exchange(web_ip, 80) for _ in range(30)]
        assert all(replies.count(name) == 10 for name in names), replies

        # Endpoints change: new connections go to what is left.
        current = await api.get(ENDPOINTS, "web", namespace)
        del current.subsets[:2]
        await api.update(current)
        await eventually(lambda: returns(endpoint_count, 1), what="1 endpoint applied", timeout=WAIT)
        assert {await exchange(web_ip, 80) for _ in range(5)} == {b"charlie"}

        # The service goes: its listener closes, its address is refused.
        await api.delete(SERVICES, "web", namespace)
        await eventually(
            lambda: returns(lambda: proxy.port_status(namespace, "web"), None), what="service removed", timeout=WAIT
        )
        await eventually(lambda: _refused(web_ip, 80), what="the deleted service's address refused", timeout=WAIT)

        # SIGTERM: listeners close at once, an open connection gets to finish.
        await api.create(make_service(namespace, "echo", 80, echo_ip))
        await api.create(make_endpoints(namespace, "echo", [echo.port], host))

        async def echo_listening() -> bool:
            status = await proxy.port_status(namespace, "echo")
            assert status is not None and status.listening and len(status.endpoints) == 1, status
            return True

        await eventually(echo_listening, what="echo service listening", timeout=WAIT)
        reader, writer = await asyncio.open_connection(echo_ip, 80)
        writer.write(b"first")
        assert await reader.readexactly(5) == b"first"
        proxy.process.send_signal(signal.SIGTERM)
        await eventually(lambda: _refused(echo_ip, 80), what="listener closed after SIGTERM", timeout=20)
        writer.write(b"last words")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"last words"
        writer.close()
        assert await proxy.wait_exit() == 0
        log = proxy.log_text()
        assert "service_added" in log and "service_removed" in log and f"service={namespace}/web" in log
        # The portals stay (refusing, as the relay is gone) until a restart or --cleanup.
        assert f"table ip {nftables.table_name(proxy.node)}" in nft_tables()
    finally:
        proxy.stop()
        await api.close()
        for backend in [*backends, echo]:
            await backend.stop()
        proxy.clean_up()


async def returns(fetch: Callable[[], Awaitable[Any]], expected: Any) -> bool:
    """A check for `eventually`: done when `await fetch()` equals expected."""
    value = await fetch()
    assert value == expected, f"got {value!r}"
    return True


def _refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
