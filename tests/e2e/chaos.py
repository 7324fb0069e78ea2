"""Chaos under load (issue 14): a highly available cluster (`make up HA=1 NODES=2`) while a
replication controller scales and a client sends requests through its service, with every
component killed in turn and etcd paused. Shared by the short e2e test (`make test`) and
`bench/chaos` (the long run, at Kubernetes-like sizes).

What it checks and reports: exactly the desired pods Running at the end, no duplicate or
orphan container in Docker (by label), every acknowledged write stored, no INTERNAL or
UNKNOWN answer ever, the service's success rate with one client retry, and each fault's
recovery time (from the fault until a write goes through, the component is back, and the
controller's pods are all Running and ready; for a pause, from its end). A killed component
is brought back by supervisord (tools/supervisor.py); `make up` is run again after each kill
as well, as an operator would, and waits until it is healthy.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import threading
import time
import urllib.error
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import docker
import grpc

from kybernetes.v1 import coordination_pb2, meta_pb2
from services.common.client import ApiClient
from services.common.kubeconfig import load as load_kubeconfig
from services.kubelet.naming import LABEL_CONTAINER_NAME, LABEL_NODE, LABEL_POD_UID
from tests.polling import eventually_blocking

from .cluster import CLUSTER_WAIT, LocalCluster, fetch, running_and_ready

# Standbys take over in seconds rather than Kubernetes' 15 s.
FAST_LEASE = (
    "--leader-elect-lease-duration=4s", "--leader-elect-renew-deadline=3s", "--leader-elect-retry-period=0.5s",
)
LEASE_DURATION = 4.0
APP = "chaos"
WRITES_NAMESPACE = "chaos-writes"
# A well-behaved busybox web server: on SIGTERM it keeps serving for a second (the proxies
# drop a terminating pod within milliseconds, but not before SIGTERM arrives), then stops.
SERVER = "trap 'sleep 1; exit 0' TERM; httpd -f -p 8080 -h / & wait"

MANIFEST = f"""\
apiVersion: v1
kind: ReplicationController
metadata: {{name: {APP}}}
spec:
  replicas: 0
  selector: {{app: {APP}}}
  template:
    metadata: {{labels: {{app: {APP}}}}}
    spec:
      terminationGracePeriodSeconds: 3
      containers:
      - name: web
        image: kybernetes/busybox:latest
        command: ["sh", "-c", "echo ok > /index.html; {SERVER}"]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {APP}}}
spec:
  type: NodePort
  selector: {{app: {APP}}}
  ports: [{{port: 80, targetPort: http, nodePort: 31999}}]
"""


def start_cluster(local_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return local_cluster(nodes=2, ha=True, controller_manager_args=FAST_LEASE, replicator_args=FAST_LEASE)


class ServiceClient(threading.Thread):
    """Requests through the service's node port on each node in turn, without pause; a
    failed request is retried once (what a client of any real service does)."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True, name="service-client")
        self.urls = urls
        self.sent = self.retried = self.failed = 0
        # (when, url, the second error) of each request that failed twice.
        self.failures: list[tuple[float, str, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            url = self.urls[self.sent % len(self.urls)]
            self.sent += 1
            for attempt in range(2):
                try:
                    fetch(url)
                    break
                except (OSError, urllib.error.URLError, ValueError) as error:
                    if attempt == 0:
                        self.retried += 1
                        time.sleep(0.2)
                    else:
                        self.failed += 1
                        self.failures.append((time.monotonic(), url, repr(error)[:200]))
            time.sleep(0.05)

    @property
    def success_rate(self) -> float:
        return 1.0 if not self.sent else (self.sent - self.failed) / self.sent


class Writer(threading.Thread):
    """Creates Leases (objects no controller touches) without pause; remembers which were
    acknowledged and every status code the API server answered with."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(daemon=True, name="writer")
        self.cluster = cluster
        self.acknowledged: list[str] = []
        self.codes: Counter[str] = Counter()
        self.last_ack = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self._write())

    async def _write(self) -> None:
        access = load_kubeconfig(self.cluster.kubeconfig)
        async with ApiClient(access.server, credentials=access.credentials, timeout=5) as client:
            index = 0
            while not self.stopping.is_set():
                name = f"w{index:05}"
                lease = coordination_pb2.Lease(metadata=meta_pb2.ObjectMeta(name=name, namespace=WRITES_NAMESPACE))
                try:
                    await client.create(lease)
                    self.acknowledged.append(name)
                    self.last_ack = time.monotonic()
                    self.codes["OK"] += 1
                    index += 1
                except grpc.aio.AioRpcError as error:
                    self.codes[error.code().name] += 1
                    if error.code() == grpc.StatusCode.ALREADY_EXISTS:
                        index += 1  # a timed-out create that had gone through
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.05)


@dataclass
class Fault:
    name: str
    inject: Callable[[], None]
    # What brings the component back (None: nothing to do, e.g. a standby takes over).
    restore: Callable[[], None] | None = None
    recovered_in: float = 0.0
    # When it was injected (time.monotonic()), to place the service's failures.
    started: float = 0.0


@dataclass
class ChaosReport:
    faults: list[Fault] = field(default_factory=list)
    requests_sent: int = 0
    requests_retried: int = 0
    requests_failed: int = 0
    writes_acknowledged: int = 0
    writes_lost: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    pods_running: int = 0
    desired: int = 0
    container_problems: list[str] = field(default_factory=list)
    # Each request that failed twice, with the fault (or scaling) under way then.
    request_failures: list[str] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return 1.0 if not self.requests_sent else (self.requests_sent - self.requests_failed) / self.requests_sent

    def lines(self) -> list[str]:
        out = [f"{'fault':<28} recovered in"]
        out += [f"{fault.name:<28} {fault.recovered_in:6.1f} s" for fault in self.faults]
        out.append(
            f"service: {self.requests_sent} requests, {self.requests_retried} retried once, "
            f"{self.requests_failed} failed twice: {100 * self.success_rate:.2f}% succeeded (target 99.9%)"
        )
        out.append(
            f"writes: {self.writes_acknowledged} acknowledged, {len(self.writes_lost)} lost; answers {self.codes}"
        )
        out += [f"  failed: {failure}" for failure in self.request_failures]
        out.append(f"pods: {self.pods_running} running of {self.desired} desired; "
                   f"container problems: {self.container_problems or 'none'}")
        return out


def stored_writes(cluster: LocalCluster) -> set[str]:
    """The names of the objects the Writer created that the cluster holds."""
    listed = json.loads(cluster.kubecfg("get", "leases", "-n", WRITES_NAMESPACE, "-o", "json"))
    return {lease["metadata"]["name"] for lease in listed["items"]}


def lease_holder(cluster: LocalCluster, lease: str) -> str:
    """The component holding a lease in kube-system: `make up` names each leader-electing
    component <host>_<component> (tools.localcluster.leader_identity), the same across restarts."""
    held = json.loads(cluster.kubecfg("get", "lease", lease, "-n", "kube-system", "-o", "json"))
    return str(held["spec"]["holderIdentity"]).split("_", 1)[1]


def lease_renewed(cluster: LocalCluster, lease: str) -> float:
    """When a lease in kube-system was last renewed (epoch seconds; 0 when it cannot be read)."""
    done = cluster.kubecfg("get", "lease", lease, "-n", "kube-system", "-o", "json", check=False)
    try:
        spec = json.loads(done)["spec"]
        return datetime.datetime.fromisoformat(spec["renewTime"]).timestamp() if spec.get("holderIdentity") else 0.0
    except (ValueError, KeyError):
        return 0.0


def signal_components(cluster: LocalCluster, names: list[str], signum: int) -> None:
    for name in names:
        try:
            os.kill(cluster.component_pid(name), signum)
        except ProcessLookupError:
            pass


def container_problems(cluster: LocalCluster) -> list[str]:
    """Docker against the API: each pod of the cluster has one running infra container and one
    running container per container of its spec; no container belongs to a pod that is gone."""
    pods = {p["metadata"]["uid"]: p for p in json.loads(cluster.kubecfg("get", "pods", "-A", "-o", "json"))["items"]}
    running: Counter[tuple[str, str]] = Counter()
    problems = []
    for container in docker.from_env().containers.list(all=True, filters={"label": LABEL_NODE}):
        labels = container.labels
        if labels.get(LABEL_NODE) not in cluster.nodes:
            continue
        uid = labels.get(LABEL_POD_UID, "")
        if uid not in pods:
            if container.status == "running":
                problems.append(f"orphan {container.name} (pod uid {uid} is not in the API)")
            continue
        if container.status == "running":
            running[(uid, labels.get(LABEL_CONTAINER_NAME, ""))] += 1
    for uid, pod in pods.items():
        if pod["metadata"].get("deletionTimestamp") or pod["status"].get("phase") != "Running":
            continue
        for name in ["POD", *(c["name"] for c in pod["spec"]["containers"])]:
            if running[(uid, name)] != 1:
                problems.append(f"{pod['metadata']['name']}/{name}: {running[(uid, name)]} running containers")
    return problems


def run_chaos(cluster: LocalCluster, tmp_path: Path, scale_steps: list[int]) -> ChaosReport:
    """Scales through scale_steps (one step after every two faults, the last at the end) while
    the faults run in turn; returns the report (asserting nothing)."""
    manifest = tmp_path / "chaos.yaml"
    manifest.write_text(MANIFEST)
    cluster.kubecfg("apply", "-f", str(manifest))
    desired = 0

    def scale(replicas: int) -> None:
        nonlocal desired
        desired = replicas
        eventually_blocking(lambda: cluster.kubecfg("scale", "rc", APP, "--replicas", str(replicas)) is not None,
                            what=f"scaled to {replicas}", **{**CLUSTER_WAIT, "retry_on": (AssertionError,)})

    def converged() -> bool:
        pods = [p for p in cluster.pods(f"app={APP}") if not p["metadata"].get("deletionTimestamp")]
        return len(pods) == desired and running_and_ready(pods)

    scale(scale_steps[0])
    eventually_blocking(converged, what=f"{desired} pods running", **CLUSTER_WAIT)
    urls = [f"http://{cluster.node_ip(index)}:31999/" for index in range(len(cluster.nodes))]
    if desired:
        for url in urls:
            eventually_blocking(lambda url=url: fetch(url), what=f"the service at {url}", **CLUSTER_WAIT)
    client = ServiceClient(urls)
    writer = Writer(cluster)
    client.start()
    writer.start()
    etcd_members = [name for name in json.loads((cluster.state / "cluster.json").read_text())["components"]
                    if name.startswith("etcd")]
    node_1, node_2 = cluster.nodes[0], cluster.nodes[1]

    def kill(name: str) -> Callable[[], None]:
        return lambda: cluster.kill_component(name)

    def kill_leader(lease: str) -> Callable[[], None]:
        def kill_it() -> None:
            leader = eventually_blocking(
                lambda: lease_holder(cluster, lease),
                what=f"a holder of {lease}", **{**CLUSTER_WAIT, "retry_on": (KeyError, IndexError)},
            )
            cluster.kill_component(leader)

        return kill_it

    def bring_back() -> None:
        done = cluster.up()
        assert done.returncode == 0, done.stdout + done.stderr

    def pause_etcd() -> None:
        signal_components(cluster, etcd_members, signal.SIGSTOP)
        time.sleep(10)
        signal_components(cluster, etcd_members, signal.SIGCONT)

    faults = [
        Fault("kill etcd member etcd-2", kill("etcd-2"), bring_back),
        Fault("kill API server apiserver-2", kill("apiserver-2"), bring_back),
        Fault("kill the controllers' leader", kill_leader("kube-controller-manager"), bring_back),
        Fault("kill the replicator leader", kill_leader("kube-replicator"), bring_back),
        Fault(f"kill kubelet of {node_2}", kill(f"kubelet-{node_2}"), bring_back),
        Fault(f"kill proxy of {node_1}", kill(f"proxy-{node_1}"), bring_back),
        Fault("kill the DNS server", kill("dns"), bring_back),
        Fault("pause etcd for 10 s", pause_etcd),
    ]
    steps = iter(scale_steps[1:])
    try:
        for number, fault in enumerate(faults):
            if number % 2 == 1:
                step = next(steps, None)
                if step is not None:
                    scale(step)
            fault.started = time.monotonic()
            fault.inject()
            # Recovery counts from the end of the fault (a pause lasts 10 s; a kill is instant).
            started = time.monotonic()
            if fault.restore is not None:
                fault.restore()
            eventually_blocking(lambda started=started: writer.last_ack > started,
                                what=f"a write acknowledged after {fault.name}", **CLUSTER_WAIT)
            eventually_blocking(converged, what=f"{desired} pods running after {fault.name}", **CLUSTER_WAIT)
            fault.recovered_in = time.monotonic() - started
        for step in steps:
            scale(step)
        eventually_blocking(converged, what=f"{desired} pods running at the end", **CLUSTER_WAIT)
    finally:
        client.stopping.set()
        writer.stopping.set()
        client.join(15)
        writer.join(15)
    stored = stored_writes(cluster)
    pods = [p for p in cluster.pods(f"app={APP}") if not p["metadata"].get("deletionTimestamp")]
    return ChaosReport(
        faults=faults,
        requests_sent=client.sent,
        requests_retried=client.retried,
        requests_failed=client.failed,
        request_failures=[
            f"{url} {error} during: "
            + next((f.name for f in reversed(faults) if f.started and f.started <= when), "the start")
            for when, url, error in client.failures
        ],
        writes_acknowledged=len(writer.acknowledged),
        writes_lost=sorted(set(writer.acknowledged) - stored),
        codes=dict(writer.codes),
        pods_running=sum(1 for p in pods if p["status"].get("phase") == "Running"),
        desired=desired,
        container_problems=settled_container_problems(cluster),
    )


def settled_container_problems(cluster: LocalCluster, timeout: float = 30.0) -> list[str]:
    """container_problems once Docker has caught up with the API (a deleted pod's containers
    take their grace period to go), or what is still wrong after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        problems = container_problems(cluster)
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(1)
