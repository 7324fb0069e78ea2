"""The whole design end to end, as `make up` runs it: three simulated nodes (each a
network namespace on the cluster's LAN bridge) on one Docker daemon, both examples
applied with kubecfg, traffic to cluster IPs and node ports through the proxies'
nftables tables, names from kube-dns."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import time
from collections import Counter
from pathlib import Path

import docker
import pytest

from services.proxy.nftables import table_name
from tests.polling import eventually_blocking
from tools.localcluster import NODE_LABEL, pid_alive

from .chaos import lease_holder
from .cluster import CLUSTER_WAIT, EXAMPLES, LocalCluster, fetch, page_lines, running_and_ready, served_by

# A headless service over the guestbook's frontend pods, and a service no pod matches.
MORE_SERVICES = """\
apiVersion: v1
kind: Service
metadata: {name: frontend-pods}
spec:
  clusterIP: None
  selector: {app: guestbook, tier: frontend}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody}
spec:
  selector: {app: nobody}
  ports: [{port: 80}]
"""


def write_manifest(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def resolved(cluster: LocalCluster, pod: str, name: str) -> set[str]:
    """The addresses busybox's nslookup finds for `name` in `pod` (not the server's own line, IP:53)."""
    _, output = cluster.exec_in(pod, "nslookup", name)
    return set(re.findall(r"^Address:\s*(\d+\.\d+\.\d+\.\d+)$", output, re.MULTILINE))


@pytest.fixture
def cluster(local_cluster):
    return local_cluster(nodes=3)


@pytest.mark.docker
def test_examples_on_three_nodes(cluster, tmp_path):
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
    # The scheduler that placed them (and the controllers that fill the endpoints below) run in
    # the controller manager, which holds their lease; the API server runs none of them.
    assert lease_holder(cluster, "kube-controller-manager") == "controller-manager"
    recorded = json.loads((cluster.state / "cluster.json").read_text())["components"]
    assert recorded["controller-manager"]["program"] == "kube-controller-manager"
    assert "--controllers=" in recorded["apiserver"]["args"]

    # Services answer on their cluster IPs, from the cluster's own range.
    frontend_ip, backend_ip, canary_ip = (cluster.cluster_ip(name) for name in ("frontend", "backend", "frontend-prod"))
    assert {frontend_ip, backend_ip, canary_ip} <= set(map(str, ipaddress.ip_network(cluster.service_cidr)))
    # Each node's proxy has its table in its node's kernel namespace, and the host's proxy in the host's.
    assert cluster.nft_tables() == {table_name(node) for node in [*cluster.nodes, f"{cluster.prefix}host"]}

    # Each page is built in the frontend pod from two calls to the backend: through the backend
    # service's DNS name and through $BACKEND_SERVICE_HOST:$BACKEND_SERVICE_PORT.
    eventually_blocking(
        lambda: running_and_ready(pods := cluster.pods("app=guestbook,tier=backend")) and pods,
        what="the backend running", **CLUSTER_WAIT,
    )
    frontend_url = f"http://{frontend_ip}:8001/"
    eventually_blocking(
        lambda: all(line["said"].startswith("guestbook backend") for line in page_lines(fetch(frontend_url))),
        what="a frontend page with the backend's replies", **CLUSTER_WAIT,
    )
    # Through the cluster IP (from the host) and each node's node port, replies come from each pod in turn.
    frontend_names = {p["metadata"]["name"] for p in frontend}
    for url in [frontend_url, *(f"http://{cluster.node_ip(index)}:30001/" for index in range(3))]:
        replies = [
            eventually_blocking(lambda url=url: fetch(url), what=f"a reply through {url}", **CLUSTER_WAIT)
            for _ in range(6)
        ]
        served = [served_by(reply) for reply in replies]
        assert set(served[:3]) == frontend_names, replies
        assert served[3:] == served[:3], replies
        for reply in replies:
            lines = page_lines(reply)
            assert [line["via"] for line in lines] == ["backend:8002", f"{backend_ip}:8002"], reply
            assert all(line["said"].startswith("guestbook backend, written at") for line in lines), reply
    # The backend's two containers share an emptyDir: one writes, one serves.
    assert fetch(f"http://{backend_ip}:8002/").startswith("guestbook backend")
    # The canary service reaches stable and canary pods.
    canary_replies = Counter(fetch(f"http://{canary_ip}:8003/").split()[0] for _ in range(20))
    assert canary_replies == {"stable": 18, "canary": 2}

    # From inside a pod: the backend by its DNS names (short, namespaced, FQDN), its cluster IP
    # and its environment variables; the frontend's cluster IP in turn, this pod included.
    inside = frontend[0]["metadata"]["name"]
    for host in ("backend", "backend.default", "backend.default.svc.cluster.local", backend_ip):
        code, reply = cluster.exec_in(inside, "wget", "-q", "-O", "-", f"http://{host}:8002/")
        assert code == 0 and reply.startswith("guestbook backend"), (host, reply)
    code, reply = cluster.exec_in(
        inside, "sh", "-c", 'echo "$BACKEND_SERVICE_HOST:$BACKEND_SERVICE_PORT"; '
        'wget -q -O - "http://$BACKEND_SERVICE_HOST:$BACKEND_SERVICE_PORT/"',
    )
    assert code == 0 and reply.splitlines()[0] == f"{backend_ip}:8002", reply
    assert reply.splitlines()[1].startswith("guestbook backend"), reply
    served_inside = set()
    for _ in range(3):
        code, reply = cluster.exec_in(inside, "wget", "-q", "-O", "-", f"http://{frontend_ip}:8001/")
        assert code == 0, reply
        served_inside.add(served_by(reply))
    assert served_inside == frontend_names

    # A headless service (clusterIP: None) resolves to every ready pod's address; a service
    # with no endpoints is refused at once, from the host and from a pod.
    cluster.kubecfg("apply", "-f", str(write_manifest(tmp_path / "services.yaml", MORE_SERVICES)))
    assert cluster.cluster_ip("frontend-pods") == "None"
    pod_ips = {p["status"]["podIP"] for p in frontend}
    eventually_blocking(
        lambda: resolved(cluster, inside, "frontend-pods.default.svc.cluster.local") == pod_ips,
        what="the headless service resolving to the frontend pods", **CLUSTER_WAIT,
    )
    nobody_ip = cluster.cluster_ip("nobody")
    eventually_blocking(
        lambda: all(
            any(p.service == "nobody" and p.listening and not p.endpoints for p in cluster.proxy_status(index).ports)
            for index in range(len(cluster.nodes))
        ),
        what="every proxy serving the service without endpoints", **CLUSTER_WAIT,
    )
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((nobody_ip, 80), timeout=5).close()
    assert time.monotonic() - started < 1
    code, reply = cluster.exec_in(inside, "wget", "-q", "-O", "-", "http://nobody/")
    assert code != 0 and "Connection refused" in reply, reply

    # A killed container comes back.
    victim = frontend[0]["metadata"]["name"]
    cluster.container(victim).kill()
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
    # ... nor any of its proxies' nftables tables.
    assert cluster.nft_tables() == set()
