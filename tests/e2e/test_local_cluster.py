"""The whole design end to end, as `make up` runs it: three simulated nodes on one
Docker daemon, both examples applied with kubecfg, traffic through the proxies.

The cluster here uses its own ports, loopback network and node names, so it can
run beside a `make up` cluster.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import docker
import pytest

from services.common.localcluster import NODE_LABEL, pid_alive
from services.common.processes import REPO, free_port

KUBECFG = str(Path(sys.executable).parent / "kubecfg")
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
EXAMPLES = REPO / "examples"


class LocalCluster:
    def __init__(self, tmp_path: Path, nodes: int, mode: str = "processes") -> None:
        self.state = tmp_path / "cluster"
        self.api_port = free_port()
        self.network = f"127.0.{random.randint(10, 250)}"
        self.prefix = f"e2e{uuid.uuid4().hex[:6]}-"
        self.mode = mode
        self.nodes = [f"{self.prefix}node-{i}" for i in range(1, nodes + 1)]
        self.up_args = [
            "--state-dir", str(self.state), "--nodes", str(nodes), "--mode", mode,
            "--etcd-port", str(free_port()), "--api-port", str(self.api_port),
            "--node-network", self.network, "--node-prefix", self.prefix,
            "--container-prefix", self.prefix,
        ]

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    def node_ip(self, index: int) -> str:
        return f"{self.network}.{index + 1}"

    def localcluster(self, command: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "services.common.localcluster", command, *args],
            capture_output=True, text=True, timeout=300, cwd=REPO,
        )

    def up(self) -> subprocess.CompletedProcess:
        return self.localcluster("up", *self.up_args)

    def down(self) -> subprocess.CompletedProcess:
        return self.localcluster("down", "--state-dir", str(self.state))

    def kubecfg(self, *args: str, check: bool = True) -> str:
        done = subprocess.run([KUBECFG, "--server", self.server, *args], capture_output=True, text=True, timeout=60)
        if check:
            assert done.returncode == 0, f"kubecfg {' '.join(args)}: {done.stderr}"
        return done.stdout

    def pods(self, selector: str) -> list[dict]:
        return json.loads(self.kubecfg("get", "pods", "-l", selector, "-o", "json"))["items"]

    def recorded_pids(self) -> list[int]:
        data = json.loads((self.state / "cluster.json").read_text())
        return [c["pid"] for c in data["components"].values() if c.get("pid")]

    def remove_leftovers(self) -> None:
        client = docker.from_env()
        for node in self.nodes:
            for container in client.containers.list(all=True, filters={"label": f"{NODE_LABEL}={node}"}):
                container.remove(force=True)
        for container in client.containers.list(all=True, filters={"name": self.prefix}):
            container.remove(force=True)


def wait_for(condition, timeout: float = 90.0, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (AssertionError, OSError, ValueError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last!r})")


def running_and_ready(pods: list[dict]) -> bool:
    return all(
        p.get("status", {}).get("phase") == "Running"
        and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
        for p in pods
    )


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode().strip()


@pytest.fixture
def cluster(tmp_path):
    cluster = LocalCluster(tmp_path, nodes=3)
    started = cluster.up()
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield cluster
    finally:
        cluster.down()
        cluster.remove_leftovers()


@pytest.mark.docker
def test_examples_on_three_nodes(cluster):
    # `up` again changes nothing.
    again = cluster.up()
    assert again.returncode == 0 and "started" not in again.stdout

    nodes = cluster.kubecfg("get", "nodes", "--no-headers")
    assert sorted(line.split()[0] for line in nodes.splitlines()) == cluster.nodes
    cluster.kubecfg("apply", "-f", str(EXAMPLES / "guestbook"))
    cluster.kubecfg("apply", "-f", str(EXAMPLES / "canary"))

    frontend = wait_for(
        lambda: (pods := cluster.pods("app=guestbook,tier=frontend")) and len(pods) == 3 and running_and_ready(pods) and pods,
        what="3 frontend pods running and ready",
    )
    canary = wait_for(
        lambda: (pods := cluster.pods("tier in (frontend), stack in (prod)"))
        and len(pods) == 10 and running_and_ready(pods) and pods,
        what="10 canary pods running",
    )
    # Spread: the frontend's 3 pods on 3 nodes; the canary's 10 on every node.
    assert sorted(p["spec"]["nodeName"] for p in frontend) == cluster.nodes
    assert set(Counter(p["spec"]["nodeName"] for p in canary)) == set(cluster.nodes)

    # Through any node's proxy, replies come from each pod in turn.
    frontend_names = {p["metadata"]["name"] for p in frontend}
    for index in range(3):
        url = f"http://{cluster.node_ip(index)}:8001/"
        replies = [wait_for(lambda: fetch(url), what=f"a reply through {url}") for _ in range(6)]
        served = [reply.split()[-1] for reply in replies]
        assert set(served[:3]) == frontend_names, replies
        assert served[3:] == served[:3], replies
    # The backend's two containers share an emptyDir: one writes, one serves.
    assert wait_for(lambda: fetch(f"http://{cluster.node_ip(0)}:8002/")).startswith("guestbook backend")
    # The canary service reaches stable and canary pods.
    canary_replies = Counter(fetch(f"http://{cluster.node_ip(1)}:8003/").split()[0] for _ in range(20))
    assert canary_replies == {"stable": 18, "canary": 2}

    # A killed container comes back.
    victim = frontend[0]["metadata"]["name"]
    container = docker.from_env().containers.list(
        filters={"label": [f"io.kybernetes.pod.name={victim}", "io.kybernetes.container.name=web"]}
    )[0]
    container.kill()
    wait_for(
        lambda: (pod := json.loads(cluster.kubecfg("get", "pod", victim, "-o", "json")))["status"]["containerStatuses"][0][
            "restartCount"
        ] >= 1 and running_and_ready([pod]),
        what="the killed container running again",
    )

    # A deleted pod is replaced by a new one.
    cluster.kubecfg("delete", "pod", frontend[1]["metadata"]["name"])
    replaced = wait_for(
        lambda: (pods := cluster.pods("app=guestbook,tier=frontend")) and len(pods) == 3 and running_and_ready(pods)
        and frontend[1]["metadata"]["name"] not in {p["metadata"]["name"] for p in pods} and pods,
        what="the deleted pod replaced",
    )
    assert len(replaced) == 3

    # Scaling changes the endpoints.
    cluster.kubecfg("scale", "rc", "frontend", "--replicas", "5")

    def endpoint_count() -> int:
        endpoints = json.loads(cluster.kubecfg("get", "endpoints", "frontend", "-o", "json"))
        return sum(len(subset.get("addresses", [])) for subset in endpoints.get("subsets", []))

    wait_for(lambda: endpoint_count() == 5, what="5 frontend endpoints")

    # `down` leaves no container and no process behind.
    pids = cluster.recorded_pids()
    stopped = cluster.down()
    assert stopped.returncode == 0, stopped.stderr
    client = docker.from_env()
    for node in cluster.nodes:
        assert client.containers.list(all=True, filters={"label": f"{NODE_LABEL}={node}"}) == []
    assert [pid for pid in pids if pid_alive(pid)] == []


@pytest.mark.docker
def test_components_as_containers(tmp_path):
    cluster = LocalCluster(tmp_path, nodes=1, mode="containers")
    try:
        started = cluster.up()
        assert started.returncode == 0, started.stdout + started.stderr
        listed = subprocess.run([GRPCURL, "-plaintext", cluster.server, "list"], capture_output=True, text=True, timeout=30)
        assert "kybernetes.v1.PodRegistry" in listed.stdout, listed.stderr
        running = {c.name for c in docker.from_env().containers.list(filters={"name": cluster.prefix})}
        assert {f"{cluster.prefix}apiserver", f"{cluster.prefix}etcd", f"{cluster.prefix}kubelet-{cluster.nodes[0]}"} <= running
        cluster.kubecfg("apply", "-f", str(EXAMPLES / "guestbook" / "backend-pod.yaml"))
        wait_for(lambda: running_and_ready(pods := cluster.pods("tier=backend")) and pods, what="the backend pod running")
        assert wait_for(lambda: fetch(f"http://{cluster.node_ip(0)}:8002/")).startswith("guestbook backend")
    finally:
        cluster.down()
        cluster.remove_leftovers()
    assert not [c for c in docker.from_env().containers.list(all=True, filters={"name": cluster.prefix})]
