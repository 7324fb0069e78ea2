"""The kubelet's pod network (kubenet style) on the real Docker daemon: each pod
an address of the pod CIDR on the node's bridge, pods reaching each other, a
managed /etc/hosts, and the address back in the pool when the pod goes."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import urllib.request

import pytest

from services.kubelet.podnetwork import DEFAULT_BRIDGE, DEFAULT_POD_CIDR, DEFAULT_STATE_DIR
from tests.integration.kubelet_helpers import (
    KubeletProcess,
    container,
    docker_client,
    is_running,
    make_pod,
    node_containers,
)
from tests.polling import eventually

pytestmark = pytest.mark.docker


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as response:
        return response.read().decode()


async def running_pod(kubelet: KubeletProcess, name: str):
    pod = await kubelet.get_pod(name)
    return pod if is_running(pod) else None


def container_logs(node: str, container_name: str) -> str:
    for summary in node_containers(node):
        if summary["Labels"].get("io.kybernetes.container.name") == container_name:
            return docker_client().containers.get(summary["Id"]).logs().decode(errors="replace")
    return ""


async def logs_containing(node: str, container_name: str, text: str) -> str | None:
    logs = await asyncio.to_thread(container_logs, node, container_name)
    return logs if text in logs else None


def allocation_file(address: str) -> str:
    return os.path.join(DEFAULT_STATE_DIR, DEFAULT_BRIDGE, address)


def released(address: str) -> bool:
    return not os.path.exists(allocation_file(address))


async def test_pods_reach_each_other_on_the_pod_network(kubelet: KubeletProcess) -> None:
    server = container("web", "sh", "-c", "echo served-by-$(hostname) > /index.html; exec httpd -f -p 8080 -h /")
    await kubelet.submit(make_pod("server", server))
    server_pod = await eventually(lambda: running_pod(kubelet, "server"), what="server running")
    server_ip = server_pod.status.pod_ip
    assert ipaddress.ip_address(server_ip) in ipaddress.ip_network(DEFAULT_POD_CIDR)
    assert await asyncio.to_thread(os.path.exists, allocation_file(server_ip))

    fetch = (
        "cat /etc/hosts; "
        f"until wget -q -O - http://{server_ip}:8080/index.html; do sleep 0.2; done; "
        "trap 'exit 0' TERM; while true; do sleep 1; done"
    )
    await kubelet.submit(make_pod("client", container("fetch", "sh", "-c", fetch)))
    client_pod = await eventually(lambda: running_pod(kubelet, "client"), what="client running")
    assert client_pod.status.pod_ip != server_ip

    logs = await eventually(
        lambda: logs_containing(kubelet.node, "fetch", "served-by"), what="client fetched the server's page by pod IP"
    )
    assert f"served-by-server-{kubelet.node}" in logs
    # The kubelet's hosts file names the pod at its address.
    assert f"{client_pod.status.pod_ip}\tclient-{kubelet.node}" in logs

    await kubelet.delete(f"server-{kubelet.node}")
    await eventually(lambda: released(server_ip), what="address back in the pool")


async def test_docker_network_plugin_puts_pods_on_dockers_bridge(node_name: str) -> None:
    kubelet = KubeletProcess(node_name, "--network-plugin", "docker")
    try:
        await kubelet.submit(make_pod("web", container("main", "sh", "-c", "exec httpd -f -p 8080 -h /")))
        pod = await eventually(lambda: running_pod(kubelet, "web"), what="pod running")
        assert pod.status.pod_ip
        assert ipaddress.ip_address(pod.status.pod_ip) not in ipaddress.ip_network(DEFAULT_POD_CIDR)
    finally:
        kubelet.cleanup()



async def test_a_killed_sandbox_is_replaced_and_the_pod_keeps_its_address(kubelet: KubeletProcess) -> None:
    web = container("web", "sh", "-c", "echo alive > /index.html; exec httpd -f -p 8080 -h /")
    await kubelet.submit(make_pod("web", web))
    pod = await eventually(lambda: running_pod(kubelet, "web"), what="pod running")
    address = pod.status.pod_ip
    infra = next(c for c in node_containers(kubelet.node) if c["Labels"]["io.kybernetes.container.name"] == "POD")
    await asyncio.to_thread(docker_client().containers.get(infra["Id"]).kill)

    async def served_by_a_new_sandbox() -> bool:
        sandboxes = [
            c for c in node_containers(kubelet.node, all=False) if c["Labels"]["io.kybernetes.container.name"] == "POD"
        ]
        if not sandboxes or sandboxes[0]["Id"] == infra["Id"]:
            return False
        try:
            return "alive" in await asyncio.to_thread(http_get, f"http://{address}:8080/index.html")
        except OSError:
            return False

    await eventually(served_by_a_new_sandbox, what="the pod served again at its address from a new sandbox")
    assert (await kubelet.get_pod("web")).status.pod_ip == address
