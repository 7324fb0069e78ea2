"""The clusters a bench starts as `make up` does: in a temporary directory, each taken down
afterwards (whatever happened), with anything left on the network removed and reported."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from tests.e2e.cluster import LocalCluster

ClusterFactory = Callable[..., LocalCluster]


@contextlib.contextmanager
def temporary_clusters(prefix: str) -> Iterator[tuple[Path, ClusterFactory]]:
    """(a work directory, a factory that starts a cluster under it with LocalCluster's options)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        started: list[LocalCluster] = []

        def local_cluster(**options: object) -> LocalCluster:
            cluster = LocalCluster(Path(workdir) / "cluster", **options)  # type: ignore[arg-type]
            started.append(cluster)
            done = cluster.up()
            if done.returncode != 0:
                raise SystemExit(f"the cluster did not start:\n{done.stdout}{done.stderr}")
            return cluster

        try:
            yield Path(workdir), local_cluster
        finally:
            for cluster in started:
                cluster.down()
                leftovers = cluster.network_leftovers()
                cluster.remove_leftovers()
                if leftovers:
                    print(f"warning: left behind and removed: {leftovers}", file=sys.stderr)
