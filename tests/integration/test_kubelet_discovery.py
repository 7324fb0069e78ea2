"""Pods find services, on the real Docker daemon with a real API server: the
kubelet gives containers `{SVC}_SERVICE_HOST/PORT` and Docker link variables
for the services of their namespace, expands `$(VAR)` in env, command and
args, and writes each pod's resolv.conf from its dnsPolicy, its dnsConfig and
the kubelet's --cluster-dns."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Iterator

import docker
import pytest

from kybernetes.v1 import meta_pb2, pod_pb2, service_pb2
from services.common.client import ApiClient
from tests.integration.kubelet_helpers import (
    KubeletProcess,
    container,
    container_status,
    docker_client,
    is_running,
    make_pod,
    node_containers,
    unique_node,
)
from tests.integration.apihelpers import privileged_namespace
from tests.polling import eventually
from tools.processes import ApiServerProcess, free_port

pytestmark = pytest.mark.docker

CLUSTER_DNS = "10.96.0.10"
# The node's resolv.conf as this kubelet reads it (--resolv-conf): a loopback server no pod may get.
HOST_RESOLV_CONF = "nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"
END = "END-OF-REPORT"
# Prints what the container was started with: its environment, its resolv.conf, its arguments.
REPORT = (
    f"env | sort; echo ---; cat /etc/resolv.conf; echo ---; echo \"args: $0 $1\"; echo {END}; "
    "trap 'exit 0' TERM; while true; do sleep 1; done"
)


@pytest.fixture
def host_resolv_conf(tmp_path: Path) -> str:
    path = tmp_path / "resolv.conf"
    path.write_text(HOST_RESOLV_CONF)
    return str(path)


@pytest.fixture
def api_kubelet(apiserver: ApiServerProcess, node_name: str, host_resolv_conf: str) -> Iterator[KubeletProcess]:
    process = KubeletProcess(
        node_name, "--cluster-dns", CLUSTER_DNS, "--resolv-conf", host_resolv_conf, server=apiserver.address
    )
    yield process
    log_text = process.log_text()
    process.cleanup()
    if os.environ.get("KYB_SHOW_KUBELET_LOG"):
        print(log_text[-20000:], file=sys.stderr)


@pytest.fixture
async def client(apiserver: ApiServerProcess):
    api = ApiClient(apiserver.address, timeout=10)
    yield api
    await api.close()


def _service(name: str, namespace: str, *ports: service_pb2.ServicePort) -> service_pb2.Service:
    return service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace),
        spec=service_pb2.ServiceSpec(selector={"app": name}, ports=list(ports)),
    )


def _reporter(*args: str, env: dict[str, str] | None = None) -> pod_pb2.Container:
    spec = container("report", "sh", "-c", REPORT, args=list(args))
    for name, value in (env or {}).items():
        spec.env.add(name=name, value=value)
    return spec


def _bound(pod: pod_pb2.Pod, node: str) -> pod_pb2.Pod:
    pod.spec.node_name = node
    return pod


def _report_of(node: str, pod_name: str) -> str:
    client = docker_client()
    try:
        for summary in node_containers(node):
            labels = summary["Labels"]
            names = (labels.get("io.kybernetes.pod.name"), labels.get("io.kybernetes.container.name"))
            if names == (pod_name, "report") and summary["State"] != "created":
                try:
                    return client.containers.get(summary["Id"]).logs().decode(errors="replace")
                except docker.errors.NotFound:
                    # Listed while Docker was still making it (or replaced since): not yet.
                    return ""
        return ""
    finally:
        client.close()


async def running(kubelet: KubeletProcess, name: str, namespace: str) -> pod_pb2.Pod | None:
    pod = await kubelet.get_pod(name, namespace=namespace)
    return pod if is_running(pod) else None


async def report(node: str, pod_name: str) -> tuple[dict[str, str], str, str]:
    """(environment, resolv.conf, the args line) the pod's container printed."""

    async def printed() -> str | None:
        logs = await asyncio.to_thread(_report_of, node, pod_name)
        return logs if END in logs else None

    logs = await eventually(printed, what=f"pod {pod_name} reported its environment")
    env_text, resolv_conf, rest = logs.split("---\n", 2)
    environment = dict(line.split("=", 1) for line in env_text.splitlines() if "=" in line)
    return environment, resolv_conf, rest.splitlines()[0]


async def test_service_variables_expansion_and_cluster_dns(
    api_kubelet: KubeletProcess, client: ApiClient, namespace: str
) -> None:
    db = await client.create(_service(
        "web-db", namespace,
        service_pb2.ServicePort(name="sql", port=5432),
        service_pb2.ServicePort(name="stats", port=9187, protocol="UDP"),
    ))
    headless = _service("peers", namespace, service_pb2.ServicePort(port=7000))
    headless.spec.cluster_ip = "None"
    await client.create(headless)
    ip = db.spec.cluster_ip
    assert ip and ip != "None"

    reporter = _reporter(
        "$(WEB_DB_SERVICE_HOST)", "$$(WEB_DB_SERVICE_HOST)",
        env={"DB_URL": "postgres://$(WEB_DB_SERVICE_HOST):$(WEB_DB_SERVICE_PORT_SQL)/app",
             "UNKNOWN": "$(NO_SUCH_VARIABLE)", "WEB_DB_SERVICE_PORT": "override"},
    )
    await client.create(_bound(make_pod("client", reporter, namespace=namespace), api_kubelet.node))
    environment, resolv_conf, args = await report(api_kubelet.node, "client")

    assert environment["WEB_DB_SERVICE_HOST"] == ip
    assert environment["WEB_DB_SERVICE_PORT"] == "override"  # the container's env wins
    assert environment["WEB_DB_SERVICE_PORT_SQL"] == "5432"
    assert environment["WEB_DB_SERVICE_PORT_STATS"] == "9187"
    assert environment["WEB_DB_PORT"] == f"tcp://{ip}:5432"
    assert environment["WEB_DB_PORT_5432_TCP_ADDR"] == ip
    assert environment["WEB_DB_PORT_9187_UDP"] == f"udp://{ip}:9187"
    assert environment["WEB_DB_PORT_9187_UDP_PROTO"] == "udp"
    assert not [name for name in environment if name.startswith("PEERS_")]  # headless: no variables
    assert environment["DB_URL"] == f"postgres://{ip}:5432/app"
    assert environment["UNKNOWN"] == "$(NO_SUCH_VARIABLE)"
    # command and args expanded; "$$(" escapes; the shell printed $0 and $1.
    assert args == f"args: {ip} $(WEB_DB_SERVICE_HOST)"

    assert resolv_conf == (
        f"nameserver {CLUSTER_DNS}\n"
        f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local corp.example\n"
        "options ndots:5\n"
    )


async def test_a_later_service_restarts_nothing_and_new_pods_see_it(
    api_kubelet: KubeletProcess, client: ApiClient, namespace: str
) -> None:
    await client.create(_bound(make_pod("early", _reporter(), namespace=namespace), api_kubelet.node))
    environment, _, _ = await report(api_kubelet.node, "early")
    assert not [name for name in environment if name.endswith("_SERVICE_HOST")]
    first = await eventually(lambda: running(api_kubelet, "early", namespace), what="early pod running")
    first_status = container_status(first, "report")
    assert first_status is not None
    first_id = first_status.container_id

    late = await client.create(_service("late", namespace, service_pb2.ServicePort(port=80)))
    await client.create(_bound(make_pod("after", _reporter(), namespace=namespace), api_kubelet.node))
    environment, _, _ = await report(api_kubelet.node, "after")
    assert environment["LATE_SERVICE_HOST"] == late.spec.cluster_ip

    # The running pod was not restarted for it (its containers' hash knows no service).
    still = await api_kubelet.get_pod("early", namespace=namespace)
    status = container_status(still, "report")
    assert status is not None and status.container_id == first_id and status.restart_count == 0


async def test_service_links_off_and_dns_policy_default(
    api_kubelet: KubeletProcess, client: ApiClient, namespace: str
) -> None:
    await client.create(_service("web", namespace, service_pb2.ServicePort(port=80)))
    pod = make_pod("quiet", _reporter(env={"REF": "$(WEB_SERVICE_HOST)"}), namespace=namespace)
    pod.spec.enable_service_links = False
    pod.spec.dns_policy = "Default"
    await client.create(_bound(pod, api_kubelet.node))
    environment, resolv_conf, _ = await report(api_kubelet.node, "quiet")
    assert not [name for name in environment if name.startswith("WEB_")]
    assert environment["REF"] == "$(WEB_SERVICE_HOST)"
    # The node's resolv.conf, less its loopback server.
    assert resolv_conf == "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"


async def test_dns_policy_none_is_exactly_dns_config(
    api_kubelet: KubeletProcess, client: ApiClient, namespace: str
) -> None:
    pod = make_pod("custom", _reporter(), namespace=namespace)
    pod.spec.dns_policy = "None"
    pod.spec.dns_config.nameservers.extend(["192.0.2.1", "192.0.2.2"])
    pod.spec.dns_config.searches.extend(["one.example", "two.example"])
    pod.spec.dns_config.options.add(name="ndots", value="2")
    pod.spec.dns_config.options.add(name="edns0")
    await client.create(_bound(pod, api_kubelet.node))
    _, resolv_conf, _ = await report(api_kubelet.node, "custom")
    assert resolv_conf == (
        "nameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch one.example two.example\noptions ndots:2 edns0\n"
    )


async def test_a_pod_on_dockers_bridge_gets_the_cluster_dns_too(
    apiserver: ApiServerProcess, host_resolv_conf: str, client: ApiClient, namespace: str
) -> None:
    # Docker networks (and publishes the host ports of) every sandbox of this kubelet.
    bridged_kubelet = KubeletProcess(
        unique_node(), "--network-plugin", "docker", "--cluster-dns", CLUSTER_DNS, "--resolv-conf", host_resolv_conf,
        server=apiserver.address,
    )
    try:
        await privileged_namespace(client, namespace)  # host ports are beyond Pod Security's baseline
        reporter = _reporter()
        reporter.ports.add(container_port=8080, host_port=free_port())
        await client.create(_bound(make_pod("bridged", reporter, namespace=namespace), bridged_kubelet.node))
        _, resolv_conf, _ = await report(bridged_kubelet.node, "bridged")
    finally:
        bridged_kubelet.cleanup()
    lines = [line for line in resolv_conf.splitlines() if line and not line.startswith("#")]
    assert sorted(lines) == sorted([
        f"nameserver {CLUSTER_DNS}",
        f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local corp.example",
        "options ndots:5",
    ])


async def test_static_pods_without_an_api_server_get_expansion_but_no_service_variables(
    kubelet: KubeletProcess,
) -> None:
    await kubelet.submit(make_pod("alone", _reporter("$(GREETING)", env={"GREETING": "hello", "B": "$(GREETING)!"})))
    environment, resolv_conf, args = await report(kubelet.node, f"alone-{kubelet.node}")
    assert not [name for name in environment if name.endswith("_SERVICE_HOST")]
    assert environment["B"] == "hello!"
    assert args == "args: hello "
    # No --cluster-dns: ClusterFirst falls back to the node's resolv.conf, never a loopback server.
    assert "nameserver 127." not in resolv_conf
    assert "ndots:5" not in resolv_conf
