"""Nothing stays down (issue 17), process mode: `python -m bench.supervised [--nodes 3] [--ha]
[--rounds 3]`.

A `make up` cluster (one node by default) with a replication controller of 10 pods serving
through a NodePort service, a client and a writer without pause; every component killed -9
in turn, `--rounds` times; supervisord brings each back by itself. Prints, per component, the
time from the kill until supervisord has a new process, until the component answers its
health probe (what `make status` asks), and until a write is acknowledged again, against the
issue's 2 s; for the API server (its controllers) and the replicator, until a live process
holds their lease again (a restarted one waits for the killed one's lease to run out); then a
reboot (supervisord and everything killed -9) and how long `make up` took to bring the same
cluster back. The scenario is tests/e2e/supervised.py, which the e2e
test runs once at one node.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from tests.e2e.cluster import LocalCluster
from tests.e2e.supervised import TARGET_SECONDS, run_supervised
from tools.localcluster import PROGRAMS  # each Python component's program and the module it runs

_TOP_LEVEL_IMPORT = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| (?! )")


def import_ms(command: list[str], runs: int = 5) -> list[float]:
    """What `command` (a component's, with --help: it imports all its main imports, then exits)
    spends importing, in ms, each of `runs` runs: Python's import profile
    (PYTHONPROFILEIMPORTTIME, passed to a container with `-e`), its top-level imports summed."""
    times = []
    for _ in range(runs):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
        times.append(sum(int(us) for us in _TOP_LEVEL_IMPORT.findall(done.stderr)) / 1000)
    return times


def print_startup(commands: dict[str, list[str]], healthy: dict[str, list[float]]) -> None:
    """Per program: the median of its import times, and of its time from exec to healthy
    (`healthy`: the comebacks' figures, by program; for a comeback, from the new process)."""
    print(f"{'program':<16} {'import: median':>14} {'min':>6} {'max':>6}   {'exec -> healthy: median':>23} {'max':>6}")
    for program, command in commands.items():
        imports = import_ms(command)
        started = healthy.get(program)
        start = f"{statistics.median(started):22.2f}s {max(started):5.2f}s" if started else f"{'-':>23} {'-':>6}"
        print(f"{program:<16} {statistics.median(imports):11.0f} ms {min(imports):3.0f} ms {max(imports):3.0f} ms   "
              + start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.supervised", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--ha", action="store_true", help="three etcd members, two API servers and replicators")
    parser.add_argument("--rounds", type=int, default=3, help="kills of each component (default %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kyb-supervised-") as workdir:
        cluster = LocalCluster(Path(workdir) / "cluster", nodes=args.nodes, ha=args.ha)
        try:
            done = cluster.up()
            if done.returncode != 0:
                raise SystemExit(f"the cluster did not start:\n{done.stdout}{done.stderr}")
            report = run_supervised(cluster, Path(workdir), rounds=args.rounds, leaders=True)
            recorded = json.loads((cluster.state / "cluster.json").read_text())["components"]
            programs = {name: component["program"] for name, component in recorded.items()}
        finally:
            cluster.down()
            leftovers = cluster.network_leftovers()
            cluster.remove_leftovers()
            if leftovers:
                print(f"warning: left behind and removed: {leftovers}", file=sys.stderr)
    layout = f"{args.nodes} node(s){', HA' if args.ha else ''}, {args.rounds} kill(s) of each component"
    print(f"process mode under supervisord: {layout}")
    times: dict[str, list[float]] = defaultdict(list)
    respawns: dict[str, list[float]] = defaultdict(list)
    writes: dict[str, list[float]] = defaultdict(list)
    for back in report.comebacks:
        times[back.component].append(back.healthy_in)
        respawns[back.component].append(back.respawned_in)
        writes[back.component].append(back.writes_in)
    print(f"{'component':<28} {'respawned (max)':>15} {'healthy: median':>16} {'max':>7}   "
          f"{'writes again: median':>20} {'max':>6}   target {TARGET_SECONDS:g} s")
    for name, healthy in times.items():
        verdict = "met" if max(healthy) <= TARGET_SECONDS else "missed"
        print(f"{name:<28} {max(respawns[name]):14.2f}s {statistics.median(healthy):15.2f}s "
              f"{max(healthy):6.2f}s   {statistics.median(writes[name]):19.2f}s {max(writes[name]):5.2f}s   {verdict}")
    # From supervisord's new process (seen within ~20 ms of its start) to its health answering.
    started: dict[str, list[float]] = defaultdict(list)
    for back in report.comebacks:
        started[programs[back.component]].append(back.healthy_in - back.respawned_in)
    print_startup({program: [sys.executable, "-m", module, "--help"] for program, module in PROGRAMS.items()}, started)
    leading = [back for back in report.comebacks if back.leads_in is not None]
    for back in leading:
        print(f"{back.component:<28} leads again (its lease held by a live process) after {back.leads_in:.1f} s")
    print("\n".join(report.lines()[len(report.comebacks) + 1:]))
    slow = [name for name, healthy in times.items() if max(healthy) > TARGET_SECONDS]
    print(f"target {TARGET_SECONDS:g} s: " + ("met by every component" if not slow else f"missed by {', '.join(slow)}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
