"""Fixtures for the end-to-end tests, on top of tests/conftest.py (etcd, apiserver, namespace)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.e2e.cluster import LocalCluster


@pytest.fixture(autouse=True)
def _shared_pod_bridge(shared_pod_bridge: None) -> None:
    """Every test here may start kubelets on the default bridge: it is put back as it was after the session."""


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Starts whole clusters as `make up` does: `local_cluster(nodes=3)` returns one that is up.

    After the test each is taken down with every container it made, pass or fail.
    """
    yield from _clusters(tmp_path)


@pytest.fixture(scope="module")
def module_local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalCluster]]:
    """local_cluster for a module whose tests share one cluster (one start): taken down after
    the module's last test."""
    yield from _clusters(tmp_path_factory.mktemp("clusters"))


def _clusters(root: Path) -> Iterator[Callable[..., LocalCluster]]:
    started: list[LocalCluster] = []

    def start(
        nodes: int, mode: str = "processes", apiserver_args: tuple[str, ...] = (), ha: bool = False,
        replicator_args: tuple[str, ...] = (), controller_manager_args: tuple[str, ...] = (),
    ) -> LocalCluster:
        cluster = LocalCluster(root / f"cluster-{len(started)}", nodes=nodes, mode=mode,
                               apiserver_args=apiserver_args, ha=ha, replicator_args=replicator_args,
                               controller_manager_args=controller_manager_args)
        started.append(cluster)
        result = cluster.up()
        assert result.returncode == 0, result.stdout + result.stderr
        return cluster

    yield start
    for cluster in started:
        cluster.down()
        leftovers = cluster.network_leftovers()
        cluster.remove_leftovers()
        # `down` removes every namespace, bridge, route and rule the cluster made.
        assert leftovers == [], leftovers
