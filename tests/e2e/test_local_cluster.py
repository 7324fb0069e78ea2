"""The whole design end to end, as `make up` runs it: three simulated nodes on one
Docker daemon, both examples applied with kubecfg, traffic through the proxies."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import docker
import pytest

from tests.polling import eventually_blocking
from tools.localcluster import NODE_LABEL, pid_alive

from .cluster import CLUSTER_WAIT, EXAMPLES, GRPCURL, LocalCluster, fetch, running_and_ready


@pytest.fixture
def cluster(local_cluster):
    return local_cluster(nodes=3)


@pytest.mark.docker
def test_examples_on_three_nodes(cluster):
    # `up` again changes nothing.
    again = cluster.up()
    assert again.returncode == 0 and "started" not in again.stdout

    nodes = cluster.kubecfg("get", "nodes", "--no-headers")
    assert sorted(line.split()[0] for line in nodes.splitlines()) == cluster.nodes
    cluster.kubecfg("apply", "-f", str(EXAMPLES / "guestbook"))
    cluster.kubecfg("apply", "-f", str(EXAMPLES / "canary"))

    frontend = eventually_blocking(
        lambda: (pods := cluster.pods("app=guestbook,tier=frontend")) and len(pods) == 3 and running_and_ready(pods)
        and pods,
        what="3 frontend pods running and ready",
        **CLUSTER_WAIT,
    )
    canary = eventually_blocking(
        lambda: (pods := cluster.pods("tier in (frontend), stack in (prod)"))
        and len(pods) == 10 and running_and_ready(pods) and pods,
        what="10 canary pods running",
        **CLUSTER_WAIT,
    )
    # Spread: the frontend's 3 pods on 3 nodes; the canary's 10 on every node.
    assert sorted(p["spec"]["nodeName"] for p in frontend) == cluster.nodes
    assert set(Counter(p["spec"]["nodeName"] for p in canary)) == set(cluster.nodes)

    # Through any node's proxy, replies come from each pod in turn.
    frontend_names = {p["metadata"]["name"] for p in frontend}
    for index in range(3):
        url = f"http://{cluster.node_ip(index)}:8001/"
        replies = [
            eventually_blocking(lambda url=url: fetch(url), what=f"a reply through {url}", **CLUSTER_WAIT)
            for _ in range(6)
        ]
        served = [reply.split()[-1] for reply in replies]
        assert set(served[:3]) == frontend_names, replies
        assert served[3:] == served[:3], replies
    # The backend's two containers share an emptyDir: one writes, one serves.
    backend_url = f"http://{cluster.node_ip(0)}:8002/"
    backend_reply = eventually_blocking(lambda: fetch(backend_url), what=f"a reply from {backend_url}", **CLUSTER_WAIT)
    assert backend_reply.startswith("guestbook backend")
    # The canary service reaches stable and canary pods.
    canary_replies = Counter(fetch(f"http://{cluster.node_ip(1)}:8003/").split()[0] for _ in range(20))
    assert canary_replies == {"stable": 18, "canary": 2}

    # A killed container comes back.
    victim = frontend[0]["metadata"]["name"]
    container = docker.from_env().containers.list(
        filters={"label": [f"io.kybernetes.pod.name={victim}", "io.kybernetes.container.name=web"]}
    )[0]
    container.kill()
    eventually_blocking(
        lambda: (pod := json.loads(cluster.kubecfg("get", "pod", victim, "-o", "json")))["status"][
            "containerStatuses"
        ][0].get("restartCount", 0) >= 1 and running_and_ready([pod]),
        what="the killed container running again",
        **CLUSTER_WAIT,
    )

    # A deleted pod is replaced by a new one.
    cluster.kubecfg("delete", "pod", frontend[1]["metadata"]["name"])
    replaced = eventually_blocking(
        lambda: (pods := cluster.pods("app=guestbook,tier=frontend")) and len(pods) == 3 and running_and_ready(pods)
        and frontend[1]["metadata"]["name"] not in {p["metadata"]["name"] for p in pods} and pods,
        what="the deleted pod replaced",
        **CLUSTER_WAIT,
    )
    assert len(replaced) == 3

    # Scaling changes the endpoints.
    cluster.kubecfg("scale", "rc", "frontend", "--replicas", "5")

    def endpoint_count() -> int:
        endpoints = json.loads(cluster.kubecfg("get", "endpoints", "frontend", "-o", "json"))
        return sum(len(subset.get("addresses", [])) for subset in endpoints.get("subsets", []))

    eventually_blocking(lambda: endpoint_count() == 5, what="5 frontend endpoints", **CLUSTER_WAIT)

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
        listed = subprocess.run(
            [GRPCURL, "-plaintext", cluster.server, "list"], capture_output=True, text=True, timeout=30
        )
        assert "kybernetes.v1.PodRegistry" in listed.stdout, listed.stderr
        running = {c.name for c in docker.from_env().containers.list(filters={"name": cluster.prefix})}
        prefix = cluster.prefix
        assert {f"{prefix}apiserver", f"{prefix}etcd", f"{prefix}kubelet-{cluster.nodes[0]}"} <= running
        cluster.kubecfg("apply", "-f", str(EXAMPLES / "guestbook" / "backend-pod.yaml"))
        eventually_blocking(
            lambda: running_and_ready(pods := cluster.pods("tier=backend")) and pods,
            what="the backend pod running",
            **CLUSTER_WAIT,
        )
        backend_url = f"http://{cluster.node_ip(0)}:8002/"
        backend_reply = eventually_blocking(
            lambda: fetch(backend_url), what=f"a reply through {backend_url}", **CLUSTER_WAIT
        )
        assert backend_reply.startswith("guestbook backend")
    finally:
        cluster.down()
        cluster.remove_leftovers()
    assert not [c for c in docker.from_env().containers.list(all=True, filters={"name": cluster.prefix})]
