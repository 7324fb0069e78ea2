"""The proxy over real pods: the guestbook's RC of 3 busybox httpd pods, each page naming the
pod that served it, behind a service; requests to its cluster IP rotate over them, a dead pod
stops getting connections once its endpoint goes, and a deleted pod's replacement joins."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.polling import eventually_blocking

from .cluster import CLUSTER_WAIT, EXAMPLES, fetch, running_and_ready, served_by


@pytest.fixture
def cluster(local_cluster):
    return local_cluster(nodes=1)


@pytest.mark.docker
def test_round_robin_over_pods_and_a_dead_pod_drops_out(cluster):
    cluster.kubecfg("apply", "-f", str(EXAMPLES / "guestbook"))
    pods = eventually_blocking(
        lambda: (found := cluster.pods("app=guestbook,tier=frontend")) and len(found) == 3
        and running_and_ready(found) and found,
        what="3 frontend pods running and ready",
        **CLUSTER_WAIT,
    )
    names = {p["metadata"]["name"] for p in pods}
    url = f"http://{cluster.cluster_ip('frontend')}:8001/"
    eventually_blocking(
        lambda: {served_by(fetch(url)) for _ in range(3)} == names,
        what="the proxy forwarding to all 3 pods", **CLUSTER_WAIT,
    )

    replies = Counter(served_by(fetch(url)) for _ in range(30))
    assert replies == {name: 10 for name in names}

    # A killed container: the kubelet restarts it at once and the pod serves again. Until the
    # endpoints drop it, a connection the round robin gives it is reset (the kernel forwards,
    # nobody retries): requests may fail meanwhile.
    victim = sorted(names)[0]
    [victim_ip] = [p["status"]["podIP"] for p in pods if p["metadata"]["name"] == victim]
    cluster.container(victim).kill()
    eventually_blocking(
        lambda: (found := cluster.pods("app=guestbook,tier=frontend")) and running_and_ready(found)
        and any(p["metadata"]["name"] == victim and p["status"]["containerStatuses"][0].get("restartCount", 0) >= 1
                for p in found),
        what="the killed container running and ready again", **CLUSTER_WAIT,
    )
    eventually_blocking(
        lambda: {served_by(fetch(url)) for _ in range(3)} == names, what="the restarted pod serving", **CLUSTER_WAIT
    )

    # Killed again, it stays dead for the restart back-off (10 s). Once its endpoint is
    # removed, it gets no new connection and every request succeeds on the live pods.
    cluster.container(victim).kill()
    eventually_blocking(
        lambda: cluster.ready_addresses("frontend") == {p["status"]["podIP"] for p in pods} - {victim_ip},
        what="the dead pod out of the endpoints", **CLUSTER_WAIT,
    )
    eventually_blocking(
        lambda: victim not in {served_by(fetch(url)) for _ in range(4)},
        what="the proxy without the dead pod", **CLUSTER_WAIT,
    )
    replies = Counter(served_by(fetch(url)) for _ in range(30))
    assert replies == {name: 15 for name in names - {victim}}

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
        lambda: {served_by(fetch(url)) for _ in range(6)} == names, what="the replacement serving", **CLUSTER_WAIT
    )
    replies = Counter(served_by(fetch(url)) for _ in range(30))
    assert replies == {name: 10 for name in names}
