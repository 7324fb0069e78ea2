"""Nothing stays down (issue 17), MODE=containers: `make up` runs the control plane as the
kubelet's static pods, mirrored into kube-system; each component killed in turn comes back
while an RC of 10 serves through its service, no pod of it restarts and no acknowledged
write is lost; `make status` shows the restarts; editing a manifest (or `make up` after a
rebuild) replaces the component; `make up` after a reboot (every container killed) brings
the cluster back with its state; `make down` leaves nothing. The scenario is
tests/e2e/selfhealing.py (bench/staticpods prints the same figures)."""

from __future__ import annotations

import json
import subprocess

import docker
import pytest
import yaml

from tests.polling import eventually_blocking
from tools.localcluster import NODE_LABEL
from tools.staticpods import IMAGE_ID_ENV

from .cluster import CLUSTER_WAIT, GRPCURL, fetch, running_and_ready
from .selfhealing import kill_each, kill_order, recorded, running_container, serve_rc, start_cluster, status_restarts


@pytest.mark.docker
def test_the_control_plane_heals_itself_as_static_pods(local_cluster, tmp_path):
    cluster = start_cluster(local_cluster)
    node = cluster.nodes[0]
    components = recorded(cluster)
    # Only the kubelet is a container of `up`'s; the rest are its static pods.
    assert [name for name, c in components.items() if not c.static_pod] == [f"kubelet-{node}"]
    assert {c.static_pod for c in components.values() if c.static_pod} == {
        f"{pod}-{node}"
        for pod in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-replicator", "kube-proxy", "kube-dns")
    }
    # The kubelet mirrors them into kube-system.
    eventually_blocking(
        lambda: {p["metadata"]["name"] for p in json.loads(cluster.kubecfg("get", "pods", "-n", "kube-system",
                                                                           "-o", "json"))["items"]}
        == {c.static_pod for c in components.values() if c.static_pod},
        what="the control plane's mirror pods in kube-system", **CLUSTER_WAIT,
    )
    listed = subprocess.run(
        [GRPCURL, "-cacert", str(cluster.pki / "ca.crt"), "-cert", str(cluster.pki / "admin.crt"),
         "-key", str(cluster.pki / "admin.key"), cluster.server, "list"],
        capture_output=True, text=True, timeout=30,
    )
    assert "kybernetes.v1.PodRegistry" in listed.stdout, listed.stderr

    pods, url = serve_rc(cluster, tmp_path)
    report = kill_each(cluster, url, kill_order(cluster))
    print("\n".join(report.lines()))
    assert [r.component for r in report.recoveries] == [
        "etcd", "apiserver", "controller-manager", "replicator", f"proxy-{node}", "dns", f"kubelet-{node}",
    ]
    assert report.writes_acknowledged > 0 and report.writes_lost == []
    # No pod of the RC restarted or was replaced, and all still serve.
    after = cluster.pods("app=chaos")
    assert {p["metadata"]["uid"] for p in after} == {p["metadata"]["uid"] for p in pods}
    assert [c.get("restartCount", 0) for p in after for c in p["status"]["containerStatuses"]] == [0] * len(pods)
    # The data path never depended on the control plane: at most one request failed twice.
    assert report.requests_failed <= 1, report.lines()

    # `make status` and the mirror pods show each restart.
    restarts = eventually_blocking(
        lambda: (shown := status_restarts(cluster)) and all(shown.get(name, 0) >= 1 for name in components) and shown,
        what="a restart of each component in make status", **CLUSTER_WAIT,
    )
    print(restarts)
    eventually_blocking(
        lambda: all(p["status"]["containerStatuses"][0].get("restartCount", 0) >= 1 for p in json.loads(
            cluster.kubecfg("get", "pods", "-n", "kube-system", "-o", "json"))["items"]),
        what="a restart of each mirror pod", **CLUSTER_WAIT,
    )

    # Upgrading a component is editing its manifest: the kubelet replaces its container.
    replicator = components["replicator"]
    manifest = cluster.state / "manifests" / "kube-replicator.yaml"
    edited = yaml.safe_load(manifest.read_text())
    [env] = edited["spec"]["containers"][0]["env"]
    built, env["value"] = env["value"], "sha256:edited"
    manifest.write_text(yaml.safe_dump(edited))

    def runs_with_image_id(image_id: str) -> bool:
        container = running_container(replicator)
        return container is not None and f"{IMAGE_ID_ENV}={image_id}" in container.attrs["Config"]["Env"]

    eventually_blocking(lambda: runs_with_image_id("sha256:edited"), what="the edited replicator", **CLUSTER_WAIT)
    # ... and `make up` writes the manifest of the image it has again, leaving the rest alone.
    again = cluster.up()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "kube-replicator.yaml" in again.stdout, again.stdout
    running_on = {line.split()[0] for line in again.stdout.splitlines() if line.endswith("already running")}
    assert running_on >= set(components) - {"replicator"}, again.stdout
    eventually_blocking(lambda: runs_with_image_id(built), what="the replicator of the built image", **CLUSTER_WAIT)

    # Docker takes `docker kill` of the kubelet's container for an operator's stop: it stays
    # stopped, `make status` says so and still shows the static pods' restarts (the kubelet's
    # labels), and `make down` removes it all the same.
    running_container(components[f"kubelet-{node}"]).kill()
    shown = cluster.localcluster("status", "--state-dir", str(cluster.state))
    assert shown.returncode == 1 and f"kubelet-{node}" in shown.stdout and "DOWN" in shown.stdout, shown.stdout
    assert status_restarts(cluster, check=False)["etcd"] >= 1, shown.stdout
    # A reboot, simulated: every container of the node dies too. `make up` brings the cluster
    # back with its state (etcd's data is on the host): the same objects, the RC's pods serving.
    leases = cluster.kubecfg("get", "leases", "-n", "chaos-writes", "-o", "name")
    for container in docker.from_env().containers.list(filters={"label": f"{NODE_LABEL}={node}"}):
        container.kill()
    again = cluster.up()
    assert again.returncode == 0, again.stdout + again.stderr
    assert cluster.kubecfg("get", "leases", "-n", "chaos-writes", "-o", "name") == leases

    def serving_again() -> bool:
        now = cluster.pods("app=chaos")
        return {p["metadata"]["uid"] for p in now} == {p["metadata"]["uid"] for p in pods} and running_and_ready(now)

    eventually_blocking(serving_again, what="the RC's pods running again after the reboot", **CLUSTER_WAIT)
    eventually_blocking(lambda: fetch(url), what="the service after the reboot", **CLUSTER_WAIT)

    # `make down` leaves no container: not the kubelet's, nor any pod's.
    stopped = cluster.down()
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    client = docker.from_env()
    assert client.containers.list(all=True, filters={"label": f"{NODE_LABEL}={node}"}) == []
    assert client.containers.list(all=True, filters={"name": cluster.prefix}) == []
    assert cluster.nft_tables() == set()
