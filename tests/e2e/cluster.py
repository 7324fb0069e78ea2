"""A whole local cluster for end-to-end tests, started as `make up` starts one.

The cluster uses its own ports, loopback network, host network (LAN bridge and
addresses), pod range, bridges and node names, so it can run beside a `make up`
cluster. With several nodes each is a network namespace on its LAN bridge. The
`local_cluster` fixture (conftest.py) starts them and takes them down after the test.
"""

from __future__ import annotations

import json
import os
import random
import signal
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import docker

from kybernetes.v1 import proxy_pb2, proxy_pb2_grpc
from services.common.transport import ClientCredentials, blocking_channel
from services.proxy.nftables import table_name
from tools.localcluster import HA_ETCD_MEMBERS, HA_REPLICAS, NODE_LABEL, PROXY_STATUS_PORT
from tools.hostnetwork import HostNetwork, remove_pod_bridge
from tools.processes import REPO, free_port
from tools.supervisor import Supervisor

# How e2e tests wait (`eventually_blocking(check, what=..., **CLUSTER_WAIT)`): a whole
# cluster converges in tens of seconds, each check runs kubecfg or an HTTP request, and
# while it converges a check may meet a refused connection (OSError), an empty reply
# (ValueError from json) or an object without the field yet (KeyError, IndexError).
CLUSTER_WAIT: dict[str, Any] = {
    "timeout": 90.0,
    "interval": 0.5,
    "retry_on": (OSError, ValueError, KeyError, IndexError),
}

KUBECFG = str(Path(sys.executable).parent / "kubecfg")
KUBECTL = str(Path(sys.executable).parent / "kubectl")
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
EXAMPLES = REPO / "examples"
# A guestbook frontend page: one line per way the frontend asked the backend
# ("guestbook frontend frontend-x7k2p: backend (via backend:8002) says: guestbook backend, written at ...").
PAGE_LINE = re.compile(r"^guestbook frontend (?P<pod>\S+): backend \(via (?P<via>\S+)\) says: (?P<said>.*)$")


class LocalCluster:
    def __init__(
        self, tmp_path: Path, nodes: int, mode: str = "processes", apiserver_args: tuple[str, ...] = (),
        ha: bool = False, replicator_args: tuple[str, ...] = (), controller_manager_args: tuple[str, ...] = (),
    ) -> None:
        self.state = tmp_path / "cluster"
        self.ha = ha
        # Each API server's port and the next one (its bearer-token port); etcd's client and peer ports.
        self.api_port = free_port(2 * HA_REPLICAS if ha else 2)
        etcd_port = free_port(2 * HA_ETCD_MEMBERS if ha else 2)
        self.network = f"127.0.{random.randint(10, 250)}"
        self.prefix = f"e2e{uuid.uuid4().hex[:6]}-"
        self.mode = mode
        self.nodes = [f"{self.prefix}node-{i}" for i in range(1, nodes + 1)]
        tag = uuid.uuid4().hex[:6]
        # A LAN, a pod range and bridges of its own, clear of make up's (10.240.0.0/24, 10.244.0.0/16).
        self.host_network = HostNetwork(
            f"kyt{tag}", f"10.241.{random.randint(0, 255)}.0/24", f"10.{random.randint(200, 230)}.0.0/16"
        )
        self.pod_bridge = f"kyp{tag}"
        # A service range of its own, outside make up's 10.96.0.0/12: every proxy
        # on this kernel rejects what its own range holds and no service matches.
        self.service_cidr = f"10.{random.randint(112, 127)}.{random.randint(0, 255)}.0/24"
        self.up_args = [
            "--state-dir", str(self.state), "--nodes", str(nodes), "--mode", mode,
            "--etcd-port", str(etcd_port), "--api-port", str(self.api_port), *(["--ha"] if ha else []),
            "--rest-port", str(free_port(2 * HA_REPLICAS if ha else 1)),
            "--node-network", self.network, "--node-prefix", self.prefix,
            "--container-prefix", self.prefix, "--service-cidr", self.service_cidr,
            "--dns-port", str(free_port()),
            "--host-bridge", self.host_network.bridge, "--host-network", self.host_network.network,
            "--cluster-cidr", self.host_network.cluster_cidr, "--pod-bridge", self.pod_bridge,
            # Its admin kubeconfig stays in its state dir: the user's ~/.kybernetes/config is left alone.
            "--user-kubeconfig", "",
            # Names outside the cluster go nowhere: nothing listens there, so a test
            # never sends a query off this machine.
            "--dns-upstream", f"127.0.0.1:{free_port()}",
            *(f"--apiserver-arg={arg}" for arg in apiserver_args),
            *(f"--replicator-arg={arg}" for arg in replicator_args),
            *(f"--controller-manager-arg={arg}" for arg in controller_manager_args),
        ]

    @property
    def server(self) -> str:
        """The (first) API server's address."""
        return f"127.0.0.1:{self.api_port}"

    def component_pid(self, name: str) -> int:
        """The live process of a component (`apiserver`, `etcd-2`, `kubelet-<node>`, ...), as its
        supervisord says (a restarted one has a new pid); else the one recorded in cluster.json."""
        return self.supervisor.pids().get(name) or int(
            json.loads((self.state / "cluster.json").read_text())["components"][name]["pid"])

    @property
    def supervisor(self) -> Supervisor:
        """Process mode's supervisord (tools/supervisor.py)."""
        return Supervisor(self.state)

    @property
    def kubeconfig(self) -> Path:
        """The cluster admin's kubeconfig (system:masters), as make up writes it."""
        return self.state / "admin.conf"

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def cluster_cidr(self) -> str:
        return self.host_network.cluster_cidr

    @property
    def nodes_as_hosts(self) -> bool:
        return len(self.nodes) > 1

    def node_ip(self, index: int) -> str:
        if self.nodes_as_hosts:
            return self.host_network.node_address(index)
        return f"{self.network}.{index + 1}"

    def namespace(self, index: int) -> str:
        """Node `index`'s network namespace (several nodes)."""
        return self.host_network.namespace(self.nodes[index])

    def in_node(self, index: int, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Runs a command on node `index`, as on that host (in its network namespace)."""
        return subprocess.run(
            [*self.host_network.exec_prefix(self.nodes[index]), *command], capture_output=True, text=True,
            timeout=timeout,
        )

    def localcluster(self, command: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tools.localcluster", command, *args],
            capture_output=True, text=True, timeout=300, cwd=REPO,
        )

    def up(self) -> subprocess.CompletedProcess:
        return self.localcluster("up", *self.up_args)

    def down(self) -> subprocess.CompletedProcess:
        return self.localcluster("down", "--state-dir", str(self.state))

    def kubectl(self, *args: str) -> str:
        """The real kubectl against the cluster's REST API, with the kubeconfig make up writes."""
        done = subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.state / "kubeconfig"), *args], capture_output=True, text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def kubecfg(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [KUBECFG, "--kubeconfig", str(self.kubeconfig), *args], capture_output=True, text=True, timeout=60
        )
        if check:
            assert done.returncode == 0, f"kubecfg {' '.join(args)}: {done.stderr}"
        return done.stdout

    def pods(self, selector: str) -> list[dict]:
        return json.loads(self.kubecfg("get", "pods", "-l", selector, "-o", "json"))["items"]

    def pods_in(self, namespace: str, selector: str) -> list[dict]:
        return json.loads(self.kubecfg("get", "pods", "-n", namespace, "-l", selector, "-o", "json"))["items"]

    def cluster_ip(self, service: str, namespace: str = "default") -> str:
        """The service's spec.clusterIP, as `kubecfg get svc NAME -o json` shows it."""
        return json.loads(self.kubecfg("get", "svc", service, "-n", namespace, "-o", "json"))["spec"]["clusterIP"]

    def ready_addresses(self, service: str) -> set[str]:
        endpoints = json.loads(self.kubecfg("get", "endpoints", service, "-o", "json"))
        return {address["ip"] for subset in endpoints.get("subsets", []) for address in subset.get("addresses", [])}

    def container(self, pod: str, name: str = "web") -> Any:
        """The running Docker container `name` of this cluster's pod `pod`."""
        found = [
            container
            for container in docker.from_env().containers.list(
                filters={"label": [f"io.kybernetes.pod.name={pod}", f"io.kybernetes.container.name={name}"]}
            )
            if container.labels.get(NODE_LABEL) in self.nodes
        ]
        assert len(found) == 1, f"{len(found)} running containers {name} of pod {pod}"
        return found[0]

    def exec_in(self, pod: str, *command: str, container: str = "web") -> tuple[int, str]:
        """Runs `command` in a pod's container (as `docker exec`): its exit code and output."""
        code, output = self.container(pod, container).exec_run(list(command))
        return code, output.decode().strip()

    def proxy_status(self, index: int) -> proxy_pb2.ProxyStatus:
        """What node `index`'s kube-proxy serves (kybernetes.v1.Proxy/Status): one entry per service port."""
        credentials = ClientCredentials.from_files(self.pki / "ca.crt", self.pki / "admin.crt", self.pki / "admin.key")
        with blocking_channel(f"{self.node_ip(index)}:{PROXY_STATUS_PORT}", credentials) as channel:
            return proxy_pb2_grpc.ProxyStub(channel).Status(proxy_pb2.ProxyStatusRequest(), timeout=10)

    def nft_tables(self) -> set[str]:
        """This cluster's nodes' kube-proxy tables that are in the kernel (the host's, and each
        node's namespace that exists)."""
        listings = [["nft", "list", "tables"]] + [
            ["ip", "netns", "exec", namespace, "nft", "list", "tables"] for namespace in self.host_network.namespaces()
        ]
        present = set()
        for command in listings:
            listed = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
            present |= {line.split()[-1] for line in listed.stdout.splitlines() if line.startswith("table ip ")}
        return present & {table_name(node) for node in [*self.nodes, f"{self.prefix}host"]}

    def network_leftovers(self) -> list[str]:
        """What of this cluster's network is still on the machine: namespaces, links, routes, rules."""
        net = self.host_network
        found = [f"netns {name}" for name in net.namespaces()]
        if os.path.exists(f"/run/netns/{net.switch}"):
            found.append(f"netns {net.switch} (the switch)")
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        found += [f"link {name}" for name in (net.bridge, self.pod_bridge) if re.search(rf" {name}[:@]", links)]
        routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
        network_prefix = net.network.rsplit(".", 1)[0] + "."
        cluster_prefix = net.cluster_cidr.split(".")[0] + "." + net.cluster_cidr.split(".")[1] + "."
        found += [f"route {line}" for line in routes.splitlines() if line.startswith((network_prefix, cluster_prefix))
                  or f" {cluster_prefix}" in line or net.bridge in line or self.pod_bridge in line]
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
        found += [f"rule {line}" for line in rules.splitlines()
                  if net.bridge in line or self.pod_bridge in line or net.cluster_cidr in line or net.network in line]
        return found

    def kill_node(self, index: int) -> None:
        """Node `index`'s host dies: its kubelet and proxy are killed (SIGKILL) and its network
        namespace goes, with its pods' wires (their containers keep running in Docker, unreachable)."""
        node = self.nodes[index]
        for name in (f"kubelet-{node}", f"proxy-{node}"):
            self.kill_component(name, restart=False)  # the host's supervisor died with it
        self.host_network.remove_node(node)

    def kill_component(self, name: str, restart: bool = True) -> None:
        """kill -9 of one component's process, which supervisord restarts; with restart=False
        supervisord is told to stop it first (frozen meanwhile, so it sees no SIGTERM) and
        leaves it down."""
        pid = self.component_pid(name)
        try:
            if not restart:
                os.kill(pid, signal.SIGSTOP)
                self.supervisor.stop(name)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def recorded_pids(self) -> list[int]:
        """Every process of the cluster: those recorded, and supervisord's and the ones it runs now."""
        data = json.loads((self.state / "cluster.json").read_text())
        pids = {c["pid"] for c in data["components"].values() if c.get("pid")}
        return sorted((pids | set(self.supervisor.pids().values()) | {self.supervisor.pid()}) - {0})

    def remove_leftovers(self) -> None:
        client = docker.from_env()
        for node in self.nodes:
            for container in client.containers.list(all=True, filters={"label": f"{NODE_LABEL}={node}"}):
                container.remove(force=True)
        for container in client.containers.list(all=True, filters={"name": self.prefix}):
            container.remove(force=True)
        # A `down` that failed may leave a proxy's table: traffic to this cluster's range would still be NATed.
        for table in self.nft_tables():
            subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True, timeout=30)
        # ... and its namespaces, bridges, routes and rules.
        for namespace in self.host_network.namespaces():
            self.host_network.remove_node(namespace[len(self.host_network.bridge) + 1:])
        remove_pod_bridge(self.pod_bridge)
        self.host_network.remove_host()


def running_and_ready(pods: list[dict]) -> bool:
    return all(
        p.get("status", {}).get("phase") == "Running"
        and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
        for p in pods
    )


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode().strip()


def page_lines(reply: str) -> list[dict[str, str]]:
    """A guestbook frontend page's lines: each the pod that served it, how it asked the backend, what it said."""
    lines = [PAGE_LINE.match(line) for line in reply.splitlines()]
    assert lines and all(lines), f"not a guestbook frontend page: {reply!r}"
    return [line.groupdict() for line in lines if line]


def served_by(reply: str) -> str:
    """The frontend pod that served a page."""
    return page_lines(reply)[0]["pod"]
