"""A highly available control plane as `make up HA=1` runs it (issue 14): three etcd members,
two API servers, two controller managers (the scheduler and controllers; one leading), two
replicators (one leading), and every client knowing both API servers. kill -9 of the
controllers' leader, an API server, an etcd member and the replicators' leader in turn: the
service answers throughout, kubecfg keeps working, the lease is held again after the kill, and
the replication controller is scaled by whoever leads now. Who that is depends on who is
first: supervisord restarts the killed leader under its stable identity (issue 17), which
takes its own lease back at once, or the standby takes the lease when it runs out
(tests/integration/test_leader_election.py times both)."""

from __future__ import annotations

import threading
import time
import urllib.error

import pytest

from tests.polling import eventually_blocking

from .chaos import lease_holder, lease_renewed
from .cluster import CLUSTER_WAIT, EXAMPLES, fetch, running_and_ready

# Standbys take over in seconds rather than Kubernetes' 15 s.
FAST_LEASE = (
    "--leader-elect-lease-duration=4s", "--leader-elect-renew-deadline=3s", "--leader-elect-retry-period=0.5s",
)


class Requests(threading.Thread):
    """A client sending requests through a node port without pause; a failed one is retried once."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.sent = self.retried = self.failed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sent += 1
            for attempt in range(2):
                try:
                    fetch(self.url)
                    break
                except (OSError, urllib.error.URLError):
                    if attempt == 0:
                        self.retried += 1
                    else:
                        self.failed += 1
            time.sleep(0.05)


@pytest.mark.docker
def test_the_control_plane_survives_its_leaders_and_an_etcd_member_dying(local_cluster):
    cluster = local_cluster(nodes=2, ha=True, controller_manager_args=FAST_LEASE, replicator_args=FAST_LEASE)
    cluster.kubecfg("apply", "-f", str(EXAMPLES / "guestbook"))
    eventually_blocking(
        lambda: len(pods := cluster.pods("app=guestbook,tier=frontend")) == 3 and running_and_ready(pods),
        what="3 frontend pods running", **CLUSTER_WAIT,
    )
    url = f"http://{cluster.node_ip(1)}:30001/"
    eventually_blocking(lambda: fetch(url), what="the frontend through its node port", **CLUSTER_WAIT)
    requests = Requests(url)
    requests.start()
    leases = {"controllers": "kube-controller-manager", "replicator": "kube-replicator"}
    try:
        replicas = 3
        # The API servers no longer lead anything (their controllers run in the controller
        # managers): the first is killed by name, kubecfg and the nodes going on through the other.
        for victim in ("controllers", "apiserver", "etcd-2", "replicator"):
            lease = leases.get(victim, "")
            name = lease_holder(cluster, lease) if lease else victim
            assert name in ("controller-manager", "controller-manager-2", "apiserver", "replicator", "replicator-2",
                            "etcd-2"), name
            killed_at, killed_wall = time.monotonic(), time.time()
            cluster.kill_component(name)
            # kubecfg goes on through the other API server.
            eventually_blocking(lambda: cluster.kubecfg("get", "pods", "--no-headers") != "",
                                what=f"kubecfg answering after {name} was killed", **CLUSTER_WAIT)
            if lease:
                # Renewed after the kill: by a live process (the killed one renews nothing).
                eventually_blocking(lambda lease=lease, at=killed_wall: lease_renewed(cluster, lease) > at,
                                    what=f"{lease} held again after {name} was killed", **CLUSTER_WAIT)
                print(f"{lease}: held by {lease_holder(cluster, lease)} after {name} was killed")
            # Whoever leads now acts: the replication controller is scaled.
            replicas += 1
            cluster.kubecfg("scale", "rc", "frontend", "--replicas", str(replicas))
            eventually_blocking(
                lambda replicas=replicas: len(pods := cluster.pods("app=guestbook,tier=frontend")) == replicas
                and running_and_ready(pods),
                what=f"{replicas} frontend pods after {name} was killed", **CLUSTER_WAIT,
            )
            print(f"{name} killed: the controller scaled to {replicas} after {time.monotonic() - killed_at:.1f} s")
    finally:
        requests.stopping.set()
        requests.join(10)
    print(f"requests through the node port: {requests.sent} sent, {requests.retried} retried once, "
          f"{requests.failed} failed twice")
    # The data path never depended on the control plane: every request answered, within one retry.
    assert requests.sent > 50 and requests.failed == 0, vars(requests)
