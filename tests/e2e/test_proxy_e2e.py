"""The proxy over real pods: an RC of 3 busybox httpd pods, each serving its own
name, behind a service; requests through the node's proxy port rotate over
them, and keep being answered while a pod dies and is replaced."""

from __future__ import annotations

from collections import Counter

import docker
import pytest

from tests.polling import eventually_blocking

from .cluster import CLUSTER_WAIT, EXAMPLES, fetch, running_and_ready


@pytest.fixture
def cluster(local_cluster):
    return local_cluster(nodes=1)


@pytest.mark.docker
def test_round_robin_over_pods_and_no_failed_request_when_one_dies(cluster):
    cluster.kubecfg("apply", "-f", str(EXAMPLES / "guestbook" / "frontend-rc.yaml"))
    cluster.kubecfg("apply", "-f", str(EXAMPLES / "guestbook" / "frontend-service.yaml"))
    pods = eventually_blocking(
        lambda: (found := cluster.pods("app=guestbook,tier=frontend")) and len(found) == 3
        and running_and_ready(found) and found,
        what="3 frontend pods running and ready",
        **CLUSTER_WAIT,
    )
    names = {p["metadata"]["name"] for p in pods}
    url = f"http://{cluster.node_ip(0)}:8001/"
    eventually_blocking(
        lambda: len({fetch(url) for _ in range(3)}) == 3, what="the proxy forwarding to all 3 pods", **CLUSTER_WAIT
    )

    replies = Counter(fetch(url).split()[-1] for _ in range(30))
    assert replies == {name: 10 for name in names}

    # A dead backend is skipped: right after its container is killed (before the
    # kubelet restarts it or the endpoints change), no request fails.
    victim = sorted(names)[0]
    for container in docker.from_env().containers.list(
        filters={"label": [f"io.kybernetes.pod.name={victim}", "io.kybernetes.container.name=web"]}
    ):
        container.kill()
    failures: list[Exception] = []
    answered: list[str] = []
    for _ in range(60):
        try:
            answered.append(fetch(url).split()[-1])
        except OSError as error:
            failures.append(error)
    assert failures == []
    assert set(answered) <= names and len(answered) == 60

    # A deleted pod is replaced, and the service serves the new set in turn.
    cluster.kubecfg("delete", "pod", victim)
    pods = eventually_blocking(
        lambda: (found := cluster.pods("app=guestbook,tier=frontend")) and len(found) == 3
        and running_and_ready(found) and victim not in {p["metadata"]["name"] for p in found} and found,
        what="a replacement pod",
        **CLUSTER_WAIT,
    )
    names = {p["metadata"]["name"] for p in pods}
    eventually_blocking(
        lambda: {fetch(url).split()[-1] for _ in range(6)} == names, what="the replacement serving", **CLUSTER_WAIT
    )
    replies = Counter(fetch(url).split()[-1] for _ in range(30))
    assert replies == {name: 10 for name in names}
