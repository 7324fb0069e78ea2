"""Upgrades in process mode (issue 17): `make up` after the code changed (a `git pull`)
restarts exactly the components whose program changed (a digest of their code and argv,
recorded with each supervised program), one at a time in dependency order, each healthy
before the next, and says which; the others and every pod keep running.

The cluster runs from a copy of the repository's code (`make up` runs what is beside it), so
that the test can change the replicator's source, and so that nobody else's edit of the
checkout meanwhile restarts anything of it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.polling import eventually_blocking
from tools.processes import REPO

from .chaos import APP, MANIFEST
from .cluster import CLUSTER_WAIT, LocalCluster, running_and_ready
from .supervised import pod_identities

UPGRADED = re.compile(r"^\s+(\S+)\s+upgraded \(", re.MULTILINE)


class CopiedCluster(LocalCluster):
    """A LocalCluster whose `make up` (and everything it runs) is a copy of the code at `code`."""

    def __init__(self, tmp_path: Path, code: Path) -> None:
        super().__init__(tmp_path, nodes=1)
        self.code = code

    def localcluster(self, command: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tools.localcluster", command, *args],
            capture_output=True, text=True, timeout=300, cwd=self.code,
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[CopiedCluster]:
    code = tmp_path / "code"
    for tree in ("services", "tools", "generated"):
        shutil.copytree(REPO / tree, code / tree, ignore=shutil.ignore_patterns("__pycache__"))
    cluster = CopiedCluster(tmp_path, code)
    try:
        started = cluster.up()
        assert started.returncode == 0, started.stdout + started.stderr
        yield cluster
    finally:  # as the local_cluster fixture does
        cluster.down()
        leftovers = cluster.network_leftovers()
        cluster.remove_leftovers()
        assert leftovers == [], leftovers


@pytest.mark.docker
def test_make_up_restarts_only_what_changed_and_no_pod(cluster, tmp_path):
    manifest = tmp_path / "app.yaml"
    manifest.write_text(MANIFEST)
    cluster.kubecfg("apply", "-f", str(manifest))
    cluster.kubecfg("scale", "rc", APP, "--replicas", "3")
    eventually_blocking(lambda: len(pods := cluster.pods(f"app={APP}")) == 3 and running_and_ready(pods),
                        what="3 pods running and ready", **CLUSTER_WAIT)
    pods = pod_identities(cluster)
    pids = cluster.supervisor.pids()

    # Nothing changed: `make up` leaves every process alone (the digests are stable).
    again = cluster.up()
    assert again.returncode == 0, again.stdout + again.stderr
    assert UPGRADED.findall(again.stdout) == [] and cluster.supervisor.pids() == pids, again.stdout

    # A new build of the replicator's code: it alone is restarted, and `make up` says so.
    source = cluster.code / "services" / "replicator" / "main.py"
    source.write_text(source.read_text() + "\n# a new build\n")
    upgraded = cluster.up()
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert UPGRADED.findall(upgraded.stdout) == ["replicator"], upgraded.stdout
    assert "upgraded 1 component(s), one at a time: replicator" in upgraded.stdout
    now = cluster.supervisor.pids()
    assert now["replicator"] != pids["replicator"]
    assert {name: pid for name, pid in now.items() if name != "replicator"} == {
        name: pid for name, pid in pids.items() if name != "replicator"}
    # No pod restarted or was replaced, and the new replicator acts (it leads at once: same identity).
    assert pod_identities(cluster) == pods
    cluster.kubecfg("scale", "rc", APP, "--replicas", "4")
    eventually_blocking(lambda: len(found := cluster.pods(f"app={APP}")) == 4 and running_and_ready(found),
                        what="a 4th pod made by the upgraded replicator", **CLUSTER_WAIT)
    assert {name: identity for name, identity in pod_identities(cluster).items() if name in pods} == pods
