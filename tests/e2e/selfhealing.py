"""Nothing stays down (issue 17), MODE=containers: the control plane as the kubelet's static
pods. Shared by the e2e test (tests/e2e/test_static_pods_e2e.py) and bench/staticpods.

Each component's container is killed in turn (SIGKILL) while a replication controller's
pods serve through their service and a writer creates objects: etcd, the API server, the
controller manager (the scheduler and the other controllers), the replicator, the proxy and kube-dns with
`docker kill`, the kubelet by kill -9 of its process (a crash; Docker restarts its
container by its restart policy, while it takes `docker kill` for an operator's stop).
Measured for each: from the kill until a new container runs and the component answers
its health check (the kubelet's gRPC health, etcd's and kube-dns's ports, the API server's
health; the controller manager and the replicator have no port: running), and for the bench
also until the controller manager's controllers and the replicator lead again (their lease
renewed). The writer and the service client are tests/e2e/chaos.py's.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import docker

from tests.polling import eventually_blocking
from tools import staticpods
from tools.localcluster import Component, admin_credentials, healthy

from .chaos import APP, MANIFEST, ServiceClient, Writer, lease_renewed, stored_writes
from .cluster import CLUSTER_WAIT, LocalCluster, fetch, running_and_ready

REPLICAS = 10
# The leases through which a restarted component's controllers lead again: the controller
# manager's (scheduler, endpoints, node lifecycle, ...) and the replicator's.
LEASES = {
    "kube-controller-manager": ("kube-controller-manager", "its controllers"),
    "kube-replicator": ("kube-replicator", "its controller"),
}
# How long a component may take to come back before the scenario gives up on it (no timing
# is asserted: the figures are printed; this only bounds a wait that would never end).
BACK_TIMEOUT = 60.0


def start_cluster(local_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return local_cluster(nodes=1, mode="containers")


def recorded(cluster: LocalCluster) -> dict[str, Component]:
    """The components as `up` recorded them (cluster.json)."""
    data = json.loads((cluster.state / "cluster.json").read_text())["components"]
    return {name: Component(**entry) for name, entry in data.items()}


def running_container(component: Component) -> Any:
    """The Docker container that runs the component now (None: none runs)."""
    if component.static_pod:
        return staticpods.pod_container(component.static_pod, staticpods.pod_base_name(component))
    try:
        found = docker.from_env().containers.get(component.container)
    except docker.errors.NotFound:
        return None
    return found if found.status == "running" else None


def kill(component: Component) -> tuple[str, int]:
    """SIGKILLs the component's container; returns its id and its process's host pid."""
    container = running_container(component)
    assert container is not None, f"{component.name} is not running"
    pid = int(container.attrs["State"]["Pid"])
    if component.static_pod:
        container.kill()
    else:
        os.kill(pid, signal.SIGKILL)
    return container.id, pid


def back(component: Component, killed: tuple[str, int], credentials: Any) -> bool:
    """A new container (a static pod's next attempt) or process (the kubelet's, restarted by
    Docker in the same container) runs the component, and it answers its health check."""
    container = running_container(component)
    if container is None:
        return False
    new = container.id != killed[0] if component.static_pod else container.attrs["State"]["Pid"] not in (0, killed[1])
    return new and healthy(component, credentials)


@dataclass
class Recovery:
    component: str
    how: str
    back_in: float


@dataclass
class SelfHealingReport:
    recoveries: list[Recovery] = field(default_factory=list)
    requests_sent: int = 0
    requests_failed: int = 0
    request_failures: list[str] = field(default_factory=list)
    writes_acknowledged: int = 0
    writes_lost: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)

    def lines(self, target: float = 2.0) -> list[str]:
        out = [f"{'component killed':<28} {'how':<22} back in (target {target:g} s)"]
        out += [f"{r.component:<28} {r.how:<22} {r.back_in:6.2f} s" for r in self.recoveries]
        out.append(f"service: {self.requests_sent} requests, {self.requests_failed} failed twice "
                   f"{self.request_failures or ''}")
        out.append(
            f"writes: {self.writes_acknowledged} acknowledged, {len(self.writes_lost)} lost; answers {self.codes}"
        )
        return out


def kill_order(cluster: LocalCluster) -> list[str]:
    """etcd, the API server, the controller manager, the replicator, the proxy, kube-dns, then the kubelet."""
    components = recorded(cluster)
    return sorted(components, key=lambda name: not components[name].static_pod)


def serve_rc(cluster: LocalCluster, tmp_path: Any) -> tuple[list[dict], str]:
    """The chaos RC at REPLICAS pods behind its service: its pods once all serve, and the service's URL."""
    manifest = tmp_path / "rc.yaml"
    manifest.write_text(MANIFEST.replace("replicas: 0", f"replicas: {REPLICAS}"))
    cluster.kubecfg("apply", "-f", str(manifest))
    pods = eventually_blocking(
        lambda: len(pods := cluster.pods(f"app={APP}")) == REPLICAS and running_and_ready(pods) and pods,
        what=f"{REPLICAS} pods serving", **CLUSTER_WAIT,
    )
    url = f"http://{cluster.cluster_ip(APP)}:80/"
    eventually_blocking(lambda: fetch(url), what=f"the service at {url}", **CLUSTER_WAIT)
    return pods, url




def kill_each(
    cluster: LocalCluster, url: str, names: list[str], controllers: bool = False
) -> SelfHealingReport:
    """Kills each named component in turn under load; waits for each to be back, and for a
    write to go through after it, before the next. controllers: after the controller manager and
    the replicator, also measures until their controllers lead again: their lease renewed after
    the kill (by the new process: a new identity would wait for the dead one's lease to run out,
    as Kubernetes' controller manager does; `up` gives each a stable one)."""
    credentials = admin_credentials(cluster.state)
    components = recorded(cluster)
    client = ServiceClient([url])
    writer = Writer(cluster)
    client.start()
    writer.start()
    report = SelfHealingReport()
    try:
        eventually_blocking(lambda: writer.last_ack > 0, what="a first write", **CLUSTER_WAIT)
        for name in names:
            component = components[name]
            lease, what = LEASES.get(component.program, ("", "")) if controllers else ("", "")
            killed_at = time.time()
            killed = kill(component)
            started = time.monotonic()
            eventually_blocking(
                lambda component=component, killed=killed: back(component, killed, credentials),
                what=f"{name} back", timeout=BACK_TIMEOUT, interval=0.05,
            )
            report.recoveries.append(Recovery(
                name, "docker kill" if component.static_pod else "kill -9 (Docker restarts)",
                time.monotonic() - started,
            ))
            if lease:
                eventually_blocking(lambda lease=lease, at=killed_at: lease_renewed(cluster, lease) > at,
                                    what=f"{name}'s controllers leading again", **CLUSTER_WAIT)
                report.recoveries.append(Recovery(f"  {what}", f"lead again ({lease})", time.monotonic() - started))
            eventually_blocking(lambda started=started: writer.last_ack > started,
                                what=f"a write acknowledged after {name} came back", **CLUSTER_WAIT)
    finally:
        client.stopping.set()
        writer.stopping.set()
        client.join(15)
        writer.join(15)
    stored = stored_writes(cluster)
    report.requests_sent, report.requests_failed = client.sent, client.failed
    report.request_failures = [f"{u} {e}" for _, u, e in client.failures]
    report.writes_acknowledged = len(writer.acknowledged)
    report.writes_lost = sorted(set(writer.acknowledged) - stored)
    report.codes = dict(writer.codes)
    return report


def status_restarts(cluster: LocalCluster, check: bool = True) -> dict[str, int]:
    """RESTARTS per component, as `make status` shows it (check: every component healthy)."""
    shown = cluster.localcluster("status", "--state-dir", str(cluster.state))
    assert shown.returncode == 0 or not check, shown.stdout + shown.stderr
    restarts = {}
    for line in shown.stdout.splitlines()[1:]:
        cells = line.split()
        if len(cells) == 8:  # COMPONENT, RUNS AS (two words), STATUS, PHASE, READY, RESTARTS, LOG
            restarts[cells[0]] = int(cells[6])
    return restarts
