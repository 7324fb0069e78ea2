"""Chaos under load, the long run (issue 14): `python -m bench.chaos`.

A highly available cluster (three etcd members, two API servers, two replicators, two
nodes as network namespaces), a replication controller ramped 0 -> 50 pods behind a
NodePort service, then scaled 50 -> 20 -> 50 -> 20 -> 50 while every component is
killed -9 in turn (an etcd member, an API server, the controllers' leader, the
replicator leader, a kubelet, a proxy, the DNS server) and etcd is paused for 10 s.
A client sends requests through the service on both nodes without pause (one retry);
a writer creates objects without pause. Prints each fault's recovery time against the
target (lease duration + 5 s), the service's success rate against 99.9 %, the writes
acknowledged and lost, every status code seen, and whether Docker matches the API.
The scenario is tests/e2e/chaos.py, which the short e2e test runs at a small size.
"""

from __future__ import annotations

import argparse
import sys

from bench.localclusters import temporary_clusters
from tests.e2e.chaos import LEASE_DURATION, run_chaos, start_cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="50,20,50,20,50",
                        help="replicas: the ramp, then one step every two faults (default %(default)s)")
    args = parser.parse_args(argv)
    steps = [int(step) for step in args.steps.split(",")]
    with temporary_clusters("kyb-chaos-") as (workdir, local_cluster):
        cluster = start_cluster(local_cluster)
        report = run_chaos(cluster, workdir, steps)
    print("\n".join(report.lines()))
    target = LEASE_DURATION + 5
    slow = [fault.name for fault in report.faults if fault.recovered_in > target]
    print(f"recovery target (lease duration + 5 s = {target:g} s): "
          + ("met by every fault" if not slow else f"missed by {', '.join(slow)}"))
    print(f"service target 99.9 %: {'met' if report.success_rate >= 0.999 else 'missed'} "
          f"({100 * report.success_rate:.2f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
