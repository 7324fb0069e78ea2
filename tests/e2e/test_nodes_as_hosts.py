"""Nodes as network hosts (issue 13), as `make up NODES=3` runs them: each node a network
namespace on the cluster's LAN bridge with a pod range of its own, routes to the other
nodes' ranges, pods reaching pods across nodes by address with no NAT, services and DNS
from every node, and a node that is lost or deleted taking its pods, range and routes
with it."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.polling import eventually_blocking
from tools.processes import REPO, port_open
from tools.supervisor import Supervisor

from .cluster import CLUSTER_WAIT, LocalCluster, fetch, running_and_ready

# A web server that answers with the pod's name and the address it sees the client at.
WHOAMI_SCRIPT = (
    "mkdir -p /www/cgi-bin && "
    "printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $HOSTNAME $REMOTE_ADDR\\n' > /www/cgi-bin/who && "
    "chmod +x /www/cgi-bin/who && exec httpd -f -p 8080 -h /www"
)


def whoami_pod(name: str, node: str) -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: whoami}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: kybernetes/busybox:latest
    command: ["sh", "-c", {json.dumps(WHOAMI_SCRIPT)}]
    ports: [{{name: http, containerPort: 8080}}]
"""


WHOAMI_RC = f"""\
apiVersion: v1
kind: ReplicationController
metadata: {{name: spread}}
spec:
  replicas: 3
  selector: {{app: spread}}
  template:
    metadata: {{labels: {{app: spread}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: kybernetes/busybox:latest
        command: ["sh", "-c", {json.dumps(WHOAMI_SCRIPT)}]
        ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: spread}}
spec:
  selector: {{app: spread}}
  ports: [{{port: 80, targetPort: http}}]
"""

# Host ports are refused by the default Pod Security level (baseline): a privileged namespace.
HOST_PORT_PODS = """\
apiVersion: v1
kind: Namespace
metadata: {{name: ports, labels: {{pod-security.kubernetes.io/enforce: privileged}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: ported-1, namespace: ports, labels: {{app: ported}}}}
spec:
  nodeName: {node_1}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: kybernetes/busybox:latest
    command: ["sh", "-c", {script}]
    ports: [{{containerPort: 8080, hostPort: 8089}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: ported-2, namespace: ports, labels: {{app: ported}}}}
spec:
  nodeName: {node_2}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: kybernetes/busybox:latest
    command: ["sh", "-c", {script}]
    ports: [{{containerPort: 8080, hostPort: 8089}}]
"""

WHOAMI_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: whoami}
spec:
  selector: {app: whoami}
  ports: [{port: 80, targetPort: http}]
"""


def who(cluster: LocalCluster, pod: str, url: str) -> tuple[str, str]:
    """(the pod that answered, the client address it saw), asked from inside `pod`."""
    code, reply = cluster.exec_in(pod, "wget", "-q", "-O", "-", url)
    assert code == 0, f"{pod} -> {url}: {reply}"
    name, address = reply.split()
    # busybox httpd listens on IPv6 too and shows an IPv4 client as [::ffff:a.b.c.d].
    return name, address.removeprefix("[::ffff:").removesuffix("]")


def node_ranges(cluster: LocalCluster) -> dict[str, str]:
    nodes = json.loads(cluster.kubecfg("get", "nodes", "-o", "json"))["items"]
    return {node["metadata"]["name"]: node["spec"].get("podCIDR", "") for node in nodes}


def pod_routes(cluster: LocalCluster, index: int) -> dict[str, str]:
    """Node `index`'s routes to other nodes' pod ranges: range -> the node address it goes via."""
    routes = cluster.in_node(index, "ip", "-4", "route", "show").stdout
    return {
        match["range"]: match["via"]
        for match in re.finditer(r"^(?P<range>\S+/\d+) via (?P<via>\S+) dev eth0", routes, re.MULTILINE)
        if ipaddress.ip_network(match["range"]).subnet_of(ipaddress.ip_network(cluster.cluster_cidr))
    }


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# A lost node is noticed in seconds, not Kubernetes' 40 s (heartbeats come every 10 s).
FAST_NODE_LIFECYCLE = ("--node-monitor-grace-period=15s", "--pod-eviction-timeout=1s")


@pytest.fixture
def cluster(local_cluster):
    return local_cluster(nodes=3, controller_manager_args=FAST_NODE_LIFECYCLE)


@pytest.mark.docker
def test_pods_reach_pods_and_services_across_nodes(cluster, tmp_path):
    ranges = eventually_blocking(
        lambda: (found := node_ranges(cluster)) and all(found.values()) and len(found) == 3 and found,
        what="every node with a pod range", **CLUSTER_WAIT,
    )
    assert len(set(ranges.values())) == 3, ranges
    # kubectl (over the REST API, with the kubeconfig make up writes) sees the same nodes.
    listed = json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    assert {node["metadata"]["name"]: node["spec"]["podCIDR"] for node in listed} == ranges
    assert all(
        ipaddress.ip_network(cidr).subnet_of(ipaddress.ip_network(cluster.cluster_cidr)) for cidr in ranges.values()
    ), ranges
    # Each node routes the other nodes' ranges via their addresses (host-gw), its own is its bridge's.
    for index, node in enumerate(cluster.nodes):
        expected = {
            ranges[other]: cluster.node_ip(other_index)
            for other_index, other in enumerate(cluster.nodes) if other != node
        }
        eventually_blocking(lambda index=index, expected=expected: pod_routes(cluster, index) == expected,
                            what=f"{node}'s routes to the other nodes' pods", **CLUSTER_WAIT)

    names = [f"whoami-{index + 1}" for index in range(3)]
    manifests = [
        write(tmp_path, f"{name}.yaml", whoami_pod(name, node)) for name, node in zip(names, cluster.nodes, strict=True)
    ]
    for manifest in manifests:
        cluster.kubecfg("apply", "-f", manifest)
    cluster.kubecfg("apply", "-f", write(tmp_path, "service.yaml", WHOAMI_SERVICE))
    pods = eventually_blocking(
        lambda: len(found := cluster.pods("app=whoami")) == 3 and running_and_ready(found) and found,
        what="a whoami pod running on each node", **CLUSTER_WAIT,
    )
    ip_of = {pod["metadata"]["name"]: pod["status"]["podIP"] for pod in pods}
    for pod in pods:
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(ranges[pod["spec"]["nodeName"]])

    # Pod to pod across nodes, by address: the receiver sees the sender's own address (no NAT).
    answered, seen = who(cluster, "whoami-1", f"http://{ip_of['whoami-3']}:8080/cgi-bin/who")
    assert (answered, seen) == ("whoami-3", ip_of["whoami-1"])
    answered, seen = who(cluster, "whoami-3", f"http://{ip_of['whoami-2']}:8080/cgi-bin/who")
    assert (answered, seen) == ("whoami-2", ip_of["whoami-3"])

    # The service's cluster IP and DNS name, from a pod on each node, reach the backends on all
    # three nodes (round robin), and each other backend sees the asking pod's address.
    cluster_ip = cluster.cluster_ip("whoami")
    eventually_blocking(lambda: len(cluster.ready_addresses("whoami")) == 3, what="3 endpoints", **CLUSTER_WAIT)
    for client in names:
        for target in (cluster_ip, "whoami", "whoami.default.svc.cluster.local"):
            replies = [who(cluster, client, f"http://{target}/cgi-bin/who") for _ in range(6)]
            assert {answered for answered, _ in replies} == set(names), (client, target, replies)
            # Except for a pod that reached itself: hairpin traffic is masqueraded, as Kubernetes does.
            assert {seen for answered, seen in replies if answered != client} == {ip_of[client]}, replies

    # Host ports: the same port on two nodes, each published on its node's address by its kubelet.
    cluster.kubecfg("apply", "-f", write(tmp_path, "ports.yaml", HOST_PORT_PODS.format(
        node_1=cluster.nodes[0], node_2=cluster.nodes[1], script=json.dumps(WHOAMI_SCRIPT),
    )))
    eventually_blocking(
        lambda: len(found := cluster.pods_in("ports", "app=ported")) == 2 and running_and_ready(found),
        what="a pod with host port 8089 on two nodes", **CLUSTER_WAIT,
    )
    for index, name in ((0, "ported-1"), (1, "ported-2")):
        url = f"http://{cluster.node_ip(index)}:8089/cgi-bin/who"
        reply = eventually_blocking(lambda url=url: fetch(url), what=f"host port {url}", **CLUSTER_WAIT)
        assert reply.split()[0] == name, reply


@pytest.mark.docker
def test_a_lost_node_takes_its_pods_range_and_routes_with_it(cluster, tmp_path):
    lost = cluster.nodes[2]
    cluster.kubecfg("apply", "-f", write(tmp_path, "spread.yaml", WHOAMI_RC))
    pods = eventually_blocking(
        lambda: len(found := cluster.pods("app=spread")) == 3 and running_and_ready(found) and found,
        what="3 spread pods running", **CLUSTER_WAIT,
    )
    assert sorted(pod["spec"]["nodeName"] for pod in pods) == cluster.nodes
    asker = next(pod["metadata"]["name"] for pod in pods if pod["spec"]["nodeName"] == cluster.nodes[0])
    lost_range = node_ranges(cluster)[lost]

    # The host of node-3 dies: its kubelet and proxy are killed and its namespace goes.
    cluster.kill_node(2)
    # Its pods are deleted once it is not ready (they stay Terminating: no kubelet confirms, as
    # in Kubernetes), recreated on the others at once, and the service answers from them alone.
    def replaced() -> bool:
        active = [pod for pod in cluster.pods("app=spread") if not pod["metadata"].get("deletionTimestamp")]
        return len(active) == 3 and running_and_ready(active) and lost not in {p["spec"]["nodeName"] for p in active}

    eventually_blocking(replaced, what="the lost node's pod recreated on another node", **CLUSTER_WAIT)

    def service_answers() -> bool:
        for _ in range(6):
            code, reply = cluster.exec_in(asker, "timeout", "3", "wget", "-q", "-O", "-", "http://spread/cgi-bin/who")
            assert code == 0, reply
        return True

    eventually_blocking(service_answers, what="the service answering from the remaining nodes", **CLUSTER_WAIT)

    # Deleting the Node frees its range, takes its routes off the other nodes, and its pods go.
    cluster.kubecfg("delete", "node", lost)
    eventually_blocking(lambda: lost not in {pod["spec"]["nodeName"] for pod in cluster.pods("app=spread")},
                        what="the deleted node's pods gone", **CLUSTER_WAIT)
    for index in (0, 1):
        eventually_blocking(lambda index=index: lost_range not in pod_routes(cluster, index),
                            what=f"the route to {lost}'s range gone from {cluster.nodes[index]}", **CLUSTER_WAIT)
    spare = f"{cluster.prefix}spare"
    spare_manifest = f"apiVersion: v1\nkind: Node\nmetadata: {{name: {spare}}}\n"
    cluster.kubecfg("apply", "-f", write(tmp_path, "spare.yaml", spare_manifest))
    eventually_blocking(lambda: node_ranges(cluster).get(spare) == lost_range,
                        what="the freed range given to the next node", **CLUSTER_WAIT)


@pytest.mark.docker
def test_a_second_machine_joins_as_the_readme_says(local_cluster, tmp_path):
    """README, "A second machine": `make join-token` on the control plane, then
    scripts/join-node.sh on the new machine, here a namespace on the cluster's LAN."""
    cluster = local_cluster(nodes=2)
    joined = f"{cluster.prefix}node-3"
    cluster.nodes.append(joined)  # so that the teardown removes its pods' containers too
    made = cluster.localcluster("join-token", "--state-dir", str(cluster.state))
    assert made.returncode == 0, made.stderr
    join_dir = cluster.state / "join"
    assert {path.name for path in join_dir.iterdir()} == {"bootstrap.conf", "kube-proxy.conf", "cluster.env"}
    address = cluster.host_network.ensure_node(joined, 2)
    env = {
        **os.environ, "KYBERNETES_NODE_STATE": str(tmp_path / "joined"), "KYBERNETES_LOG_DIR": str(tmp_path),
        "PYTHON": sys.executable,  # the checkout's virtualenv, as the script's default would be
    }
    supervisor = Supervisor(tmp_path / "joined" / joined)
    try:
        started = subprocess.run(
            [*cluster.host_network.exec_prefix(joined), "bash", str(REPO / "scripts" / "join-node.sh"),
             str(join_dir), joined, address],
            capture_output=True, text=True, timeout=120, env=env,
        )
        assert started.returncode == 0, started.stdout + started.stderr + "".join(
            path.read_text() for path in tmp_path.glob("*.log")
        )
        # It registers as itself, gets a range, turns Ready, and the others route its range to it.
        ranges = eventually_blocking(
            lambda: (found := node_ranges(cluster)).get(joined) and found, what="the new node's range",
            **CLUSTER_WAIT,
        )
        eventually_blocking(lambda: pod_routes(cluster, 0).get(ranges[joined]) == address,
                            what="node-1's route to the new node's pods", **CLUSTER_WAIT)
        for name, node in (("far", joined), ("near", cluster.nodes[0])):
            cluster.kubecfg("apply", "-f", write(tmp_path, f"{name}.yaml", whoami_pod(name, node)))
        pods = eventually_blocking(
            lambda: len(found := cluster.pods("app=whoami")) == 2 and running_and_ready(found) and found,
            what="a pod on the new node and one on node-1", **CLUSTER_WAIT,
        )
        ip_of = {pod["metadata"]["name"]: pod["status"]["podIP"] for pod in pods}
        assert ipaddress.ip_address(ip_of["far"]) in ipaddress.ip_network(ranges[joined])
        assert who(cluster, "near", f"http://{ip_of['far']}:8080/cgi-bin/who") == ("far", ip_of["near"])
        assert who(cluster, "far", f"http://{ip_of['near']}:8080/cgi-bin/who") == ("near", ip_of["far"])
        # Services and DNS work from the new machine's pods (its own proxy).
        cluster.kubecfg("apply", "-f", write(tmp_path, "service.yaml", WHOAMI_SERVICE))
        eventually_blocking(lambda: len(cluster.ready_addresses("whoami")) == 2, what="2 endpoints", **CLUSTER_WAIT)
        # The joined machine's proxy balances at random (the script keeps kube-proxy's default):
        # ask until both have answered, at most 40 times (both missed: 2^-39).
        answered: set[str] = set()
        for _ in range(40):
            answered.add(who(cluster, "far", "http://whoami/cgi-bin/who")[0])
            if len(answered) == 2:
                break
        assert answered == {"far", "near"}

        # Its kubelet and proxy run under a supervisord of the machine's own: the kubelet killed -9
        # comes back, and adopts its pod (the same container, not restarted).
        assert {"kubelet", "proxy"} <= set(supervisor.pids())
        far = cluster.container("far")
        killed = supervisor.pids()["kubelet"]
        os.kill(killed, signal.SIGKILL)
        eventually_blocking(lambda: supervisor.pids().get("kubelet") not in (None, killed),
                            what="the joined kubelet restarted by its supervisord", **CLUSTER_WAIT)
        # Up and serving (supervisord counts it RUNNING after 3 s), its pods synced: adopted, not restarted.
        eventually_blocking(lambda: supervisor.process("kubelet").state == "RUNNING" and port_open(10250, address),
                            what="the restarted kubelet serving", **CLUSTER_WAIT)
        eventually_blocking(lambda: who(cluster, "near", f"http://{ip_of['far']}:8080/cgi-bin/who")[0] == "far",
                            what="the far pod answering after its kubelet's restart", **CLUSTER_WAIT)
        assert cluster.container("far").id == far.id
        [pod] = [p for p in cluster.pods("app=whoami") if p["metadata"]["name"] == "far"]
        assert pod["metadata"]["uid"] == next(p for p in pods if p["metadata"]["name"] == "far")["metadata"]["uid"]
        assert sum(c.get("restartCount", 0) for c in pod["status"]["containerStatuses"]) == 0
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "join-node.sh"), "stop", joined], env=env, timeout=60)
    # `stop` leaves nothing running: no supervisord, nothing it ran.
    assert not supervisor.running() and supervisor.orphans() == []
