"""Nothing stays down in process mode (issue 17): every component of a `make up` cluster runs
under supervisord, so a component killed -9 comes back by itself. Shared by the e2e test
(tests/e2e/test_supervised_e2e.py) and `bench/supervised` (the figures, several rounds).

The scenario: a replication controller of 10 pods serving through its NodePort service (the
chaos scenario's, tests/e2e/chaos.py) while a client sends requests through it and a writer
creates objects; each component is killed -9 in turn (etcd, the API server, the controller
manager (the scheduler and controllers), the replicator, the kubelet, the proxy, the DNS server; every replica
with HA=1, every node's with NODES=3), and each is timed from the kill until supervisord
has a new process for it and until it is healthy again (the probe `make status` uses), and
until a write is acknowledged again (and optionally, for the controllers and the replicator,
until they lead again). Then a host reboot: supervisord and everything it runs
killed -9, and `make up` again, timed until it returns.

What it reports (asserting nothing; the test asserts): the times, whether any pod of the
controller restarted or was replaced (uids and restart counts before and after), the writes
acknowledged and lost, the requests that failed twice, and `make status`'s RESTARTS column.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.polling import eventually_blocking
from tools.localcluster import Component, admin_credentials, healthy
from tools.supervisor import parse_restarts_column

from .chaos import APP, MANIFEST, ServiceClient, Writer, lease_renewed, stored_writes
from .cluster import CLUSTER_WAIT, LocalCluster, fetch, running_and_ready

REPLICAS = 10
# The target for a killed component to be back.
TARGET_SECONDS = 2.0
# How closely a comeback is timed (each check is an XML-RPC call and a health probe).
TIMING = {"timeout": 60.0, "interval": 0.02}
# The components that act only while they hold a lease (kube-system/<lease>): the controller
# manager, the replicator.
LEASES = {"kube-controller-manager": "kube-controller-manager", "kube-replicator": "kube-replicator"}


@dataclass
class Comeback:
    component: str
    # From the kill: supervisord has a new process for it; it answers its health probe; a write
    # is acknowledged again (the API server and etcd working).
    respawned_in: float = 0.0
    healthy_in: float = 0.0
    writes_in: float = 0.0
    # For a component with a lease (LEASES), when measured: a live process of the cluster holds
    # it again (a restarted one waits until the killed one's lease has run out).
    leads_in: float | None = None


@dataclass
class SupervisedReport:
    comebacks: list[Comeback] = field(default_factory=list)
    reboot_up_in: float = 0.0
    # Pods of the controller (name -> (uid, restarts)) at the start, after the kills, after the reboot.
    pods_before: dict[str, tuple[str, int]] = field(default_factory=dict)
    pods_after_kills: dict[str, tuple[str, int]] = field(default_factory=dict)
    pods_after_reboot: dict[str, tuple[str, int]] = field(default_factory=dict)
    restarts_shown: dict[str, int] = field(default_factory=dict)
    requests_sent: int = 0
    requests_failed: int = 0
    writes_acknowledged: int = 0
    writes_lost: list[str] = field(default_factory=list)
    writes_lost_after_reboot: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{'killed -9':<28} {'respawned':>9} {'healthy':>9} {'writes':>9} {'leads':>9}"
               f"   (target {TARGET_SECONDS:g} s)"]
        for back in self.comebacks:
            mark = "" if back.healthy_in <= TARGET_SECONDS else "  over target"
            leads = "-" if back.leads_in is None else f"{back.leads_in:.2f}s"
            out.append(f"{back.component:<28} {back.respawned_in:8.2f}s {back.healthy_in:8.2f}s "
                       f"{back.writes_in:8.2f}s {leads:>9}{mark}")
        out.append(f"reboot (supervisord and every component killed): make up again took {self.reboot_up_in:.1f} s")
        out.append(f"service: {self.requests_sent} requests, {self.requests_failed} failed twice")
        out.append(f"writes: {self.writes_acknowledged} acknowledged, {len(self.writes_lost)} lost during the kills, "
                   f"{len(self.writes_lost_after_reboot)} after the reboot; answers {self.codes}")
        out.append(f"pods: {len(self.pods_before)} before, {self.pods_changed(self.pods_after_kills)} changed by "
                   f"the kills, {self.pods_changed(self.pods_after_reboot)} by the reboot")
        out.append(f"make status RESTARTS: {self.restarts_shown}")
        return out

    def pods_changed(self, after: dict[str, tuple[str, int]]) -> list[str]:
        """Pods replaced or restarted since the start (or missing)."""
        return sorted(set(self.pods_before.items()) ^ set(after.items()))


def pod_identities(cluster: LocalCluster) -> dict[str, tuple[str, int]]:
    """The controller's pods, each with its uid and its containers' restarts."""
    pods = [p for p in cluster.pods(f"app={APP}") if not p["metadata"].get("deletionTimestamp")]
    return {
        p["metadata"]["name"]: (
            p["metadata"]["uid"], sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses", [])),
        )
        for p in pods
    }


def serving(cluster: LocalCluster, url: str) -> None:
    """Until the controller's pods are all running and ready and the service answers."""
    eventually_blocking(
        lambda: len(pods := cluster.pods(f"app={APP}")) == REPLICAS and running_and_ready(pods),
        what=f"{REPLICAS} pods running and ready", **CLUSTER_WAIT,
    )
    eventually_blocking(lambda: fetch(url), what=f"the service at {url}", **CLUSTER_WAIT)


def kill_and_time(cluster: LocalCluster, name: str, writer: Writer, leaders: bool = False) -> Comeback:
    """kill -9 of one component, timed until it is back (supervisord's doing: nobody else acts);
    with `leaders`, for one with a lease also until its restarted process renews it."""
    data = json.loads((cluster.state / "cluster.json").read_text())["components"][name]
    component = Component(**data)
    credentials = admin_credentials(cluster.state)
    old = cluster.component_pid(name)
    back = Comeback(name)
    killed, killed_at = time.monotonic(), time.time()
    os.kill(old, signal.SIGKILL)

    def respawned() -> bool:
        info = cluster.supervisor.process(name)
        if info is None or not info.pid or info.pid == old:
            return False
        if not back.respawned_in:
            back.respawned_in = time.monotonic() - killed
        component.pid = info.pid
        return healthy(component, credentials)

    eventually_blocking(respawned, what=f"{name} back under supervisord", **TIMING)
    back.healthy_in = time.monotonic() - killed
    eventually_blocking(lambda: writer.last_ack > killed, what=f"a write acknowledged after {name} was killed",
                        **CLUSTER_WAIT)
    back.writes_in = writer.last_ack - killed
    lease = LEASES.get(component.program)
    if leaders and lease is not None:
        # Renewed after the kill: by the restarted process (the dead one renews nothing).
        eventually_blocking(
            lambda: lease_renewed(cluster, lease) > killed_at,
            what=f"{lease} renewed after {name} was killed", **CLUSTER_WAIT,
        )
        back.leads_in = time.monotonic() - killed
    return back


def reboot(cluster: LocalCluster) -> float:
    """A host reboot, as far as the cluster's processes go: supervisord and everything it runs
    killed -9 at once (pods and the network stay, as Docker and the kernel keep them here);
    then `make up` again. Returns how long `make up` took."""
    supervisor = cluster.supervisor
    victims = {supervisor.pid(), *supervisor.pids().values(), *supervisor.orphans()} - {0}
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    eventually_blocking(lambda: not supervisor.running() and not supervisor.orphans(),
                        what="every process of the cluster gone", **CLUSTER_WAIT)
    started = time.monotonic()
    done = cluster.up()
    assert done.returncode == 0, done.stdout + done.stderr
    return time.monotonic() - started


def run_supervised(
    cluster: LocalCluster, tmp_path: Path, rounds: int = 1, leaders: bool = False
) -> SupervisedReport:
    """The scenario (see the module docstring) on a cluster that is up; every component is
    killed `rounds` times (in turn, round after round) before the reboot. `leaders`: time too
    how long the controllers and the replicator take to lead again (up to a lease duration)."""
    manifest = tmp_path / "supervised.yaml"
    manifest.write_text(MANIFEST)
    cluster.kubecfg("apply", "-f", str(manifest))
    cluster.kubecfg("scale", "rc", APP, "--replicas", str(REPLICAS))
    url = f"http://{cluster.node_ip(0)}:31999/"
    serving(cluster, url)
    report = SupervisedReport(pods_before=pod_identities(cluster))
    client = ServiceClient([url])
    writer = Writer(cluster)
    client.start()
    writer.start()
    components = list(json.loads((cluster.state / "cluster.json").read_text())["components"])
    try:
        eventually_blocking(lambda: writer.last_ack > 0, what="a first write", **CLUSTER_WAIT)
        for _ in range(rounds):
            for name in components:
                report.comebacks.append(kill_and_time(cluster, name, writer, leaders))
    finally:
        client.stopping.set()
        writer.stopping.set()
        client.join(15)
        writer.join(15)
    report.requests_sent, report.requests_failed = client.sent, client.failed
    report.writes_acknowledged = len(writer.acknowledged)
    report.codes = dict(writer.codes)
    report.writes_lost = sorted(set(writer.acknowledged) - stored_writes(cluster))
    serving(cluster, url)
    report.pods_after_kills = pod_identities(cluster)
    report.restarts_shown = parse_status(cluster)
    report.reboot_up_in = reboot(cluster)
    serving(cluster, url)
    report.writes_lost_after_reboot = sorted(set(writer.acknowledged) - stored_writes(cluster))
    report.pods_after_reboot = pod_identities(cluster)
    return report


def parse_status(cluster: LocalCluster) -> dict[str, int]:
    """`make status`'s RESTARTS column."""
    shown = cluster.localcluster("status", "--state-dir", str(cluster.state))
    return parse_restarts_column(shown.stdout)
