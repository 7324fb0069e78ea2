"""Time to come back, MODE=containers (issue 17): `python -m bench.staticpods`.

A `make up MODE=containers` cluster (the control plane as the kubelet's static pods, the
kubelet a Docker container with a restart policy), an RC of 10 serving through its service
and a writer creating objects; each component killed in turn (etcd, the API server with
its controllers, the replicator, the proxy, kube-dns by `docker kill`; the kubelet by
kill -9 of its process), --rounds times. Prints, per component, the time from the kill
until it runs again and answers its health check, against the issue's 2 s target; the
service's failed requests and the writes lost. Then the API server is killed twice in a
row: the second restart waits for the kubelet's back-off (10 s, doubling to 5 min, reset
after 5 min of running or by a kubelet restart), as Kubernetes' CrashLoopBackOff.
The scenario is tests/e2e/selfhealing.py, which the e2e test runs once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict

from bench.localclusters import temporary_clusters
from bench.supervised import PROGRAMS, print_startup
from tests.e2e.cluster import LocalCluster
from tests.e2e.selfhealing import back, kill, kill_each, kill_order, recorded, serve_rc, start_cluster
from tests.polling import eventually_blocking
from tools.localcluster import admin_credentials

TARGET = 2.0
IMAGE = "kybernetes/kybernetes:latest"  # make up's --component-image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.staticpods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="kills of each component (default %(default)s)")
    args = parser.parse_args(argv)
    backs: dict[str, list[float]] = defaultdict(list)
    with temporary_clusters("kyb-staticpods-") as (workdir, local_cluster):
        up_started = time.monotonic()
        cluster = start_cluster(local_cluster)
        print(f"make up MODE=containers: {time.monotonic() - up_started:.1f} s")
        _, url = serve_rc(cluster, workdir)
        # One writer for every round (its objects' names start again with a new one).
        report = kill_each(cluster, url, kill_order(cluster) * args.rounds, controllers=True)
        for recovery in report.recoveries:
            backs[recovery.component].append(recovery.back_in)
        again = twice(cluster)
    print(f"{'component killed':<28} {'back in: min':>12} {'median':>8} {'max':>8}   (target {TARGET:g} s, "
          f"{args.rounds} kills each)")
    for name, times in backs.items():
        print(f"{name:<28} {min(times):11.2f}s {statistics.median(times):7.2f}s {max(times):7.2f}s   "
              f"{'met' if max(times) <= TARGET else 'MISSED'}")
    print(f"apiserver killed again at once: back in {again:.2f} s (the kubelet's back-off)")
    # What each command of the image spends importing (a throwaway container each run).
    print_startup({program: ["docker", "run", "--rm", "--network", "none", "-e", "PYTHONPROFILEIMPORTTIME=1",
                             IMAGE, program, "--help"] for program in PROGRAMS}, {})
    print(f"service: {report.requests_sent} requests, {report.requests_failed} failed twice; writes: "
          f"{report.writes_acknowledged} acknowledged, {len(report.writes_lost)} lost; answers {report.codes}")
    return 0


def twice(cluster: LocalCluster) -> float:
    """Kills the API server, waits for it, kills it again: the second time to come back."""
    credentials = admin_credentials(cluster.state)
    component = recorded(cluster)["apiserver"]
    elapsed = 0.0
    for _ in range(2):
        killed = kill(component)
        started = time.monotonic()
        eventually_blocking(lambda killed=killed: back(component, killed, credentials), what="the API server back",
                            timeout=120, interval=0.05)
        elapsed = time.monotonic() - started
    return elapsed


if __name__ == "__main__":
    sys.exit(main())
