"""Graceful deletion end to end, as issue 11 asks: a deleted backend stops receiving new
connections before its replacement is Ready, and no request fails while another backend lives.

A whole local cluster (as `make up` starts one); an RC of 3 busybox web servers behind a
service, each a graceful server: on SIGTERM it keeps serving for 3 s (in-flight and late
connections still get their answer), then stops httpd and exits 0. A client sends requests to
the service's cluster IP from the host without pause while one backend pod is deleted: every
request succeeds; once the node's proxy has dropped the pod's endpoint no new request reaches
it; the replicator's replacement comes up and serves.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import pytest

from tests.polling import eventually_blocking

from .cluster import CLUSTER_WAIT, running_and_ready

# Each backend serves its own name; on SIGTERM it lingers LINGER seconds, still serving, then
# stops httpd and exits 0 (the shell is the container's first process: it gets the signal).
LINGER = 3
GRACE = 10
SERVER = (
    "mkdir -p /www && hostname > /www/index.html && "
    "httpd -f -p 80 -h /www & pid=$!; "
    f'trap "sleep {LINGER}; kill $pid; exit 0" TERM; '
    "wait"
)
SERVICE_PORT = 8080


def manifests(name: str) -> list[dict]:
    labels = {"app": name}
    rc = {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 3,
            "selector": labels,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": GRACE,
                    "containers": [{
                        "name": "web",
                        "image": "kybernetes/busybox:latest",
                        "command": ["sh", "-c", SERVER],
                        "ports": [{"name": "http", "containerPort": 80}],
                        # Ready once httpd answers: a replacement gets no request before it can serve.
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http"}]},
    }
    return [rc, service]


@dataclass
class Reply:
    started: float  # time.monotonic() when the request was sent
    served_by: str = ""
    error: str = ""


@dataclass
class Client:
    """Requests to one URL, one after another, until stopped; every reply recorded."""

    url: str
    replies: list[Reply] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="graceful-client", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            reply = Reply(started=time.monotonic())
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    reply.served_by = response.read().decode().strip()
            except Exception as error:  # any failure counts, whatever its kind
                reply.error = f"{type(error).__name__}: {error}"
            self.replies.append(reply)
            time.sleep(0.01)

    def stop(self) -> list[Reply]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)
        return self.replies


@pytest.fixture
def cluster(local_cluster):
    return local_cluster(nodes=1)


def backends(cluster, name: str) -> list[dict]:
    return [p for p in cluster.pods(f"app={name}") if not p["metadata"].get("deletionTimestamp")]


def proxied_endpoints(cluster, name: str) -> set[str] | None:
    """The endpoints node 0's proxy has programmed into the kernel for the service (None: not yet)."""
    for port in cluster.proxy_status(0).ports:
        if port.service == name and port.listening:
            return {endpoint.rsplit(":", 1)[0] for endpoint in port.endpoints}
    return None


@pytest.mark.docker
def test_a_deleted_backend_drains_and_no_request_fails(cluster, tmp_path):
    name = "graceful"
    directory = tmp_path / "graceful"
    directory.mkdir()
    for manifest in manifests(name):
        (directory / f"{manifest['kind'].lower()}.json").write_text(json.dumps(manifest))
    cluster.kubecfg("apply", "-f", str(directory))
    pods = eventually_blocking(
        lambda: (found := backends(cluster, name)) and len(found) == 3 and running_and_ready(found) and found,
        what="3 backends running and ready", **CLUSTER_WAIT,
    )
    names = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    eventually_blocking(
        lambda: proxied_endpoints(cluster, name) == set(names.values()),
        what="the proxy forwarding to all 3 backends", **CLUSTER_WAIT,
    )
    client = Client(f"http://{cluster.cluster_ip(name)}:{SERVICE_PORT}/")
    client.start()
    try:
        eventually_blocking(
            lambda: {r.served_by for r in client.replies[-30:]} == set(names),
            what="requests spread over the 3 backends", **CLUSTER_WAIT,
        )
        victim = sorted(names)[0]
        victim_ip = names[victim]
        deleted_at = time.monotonic()
        cluster.kubecfg("delete", "pod", victim, "--wait=false")

        # Out of the proxy's rules at once (its endpoint goes when the pod is marked): from then
        # on no new request reaches it, while it still lingers and serves what it was given.
        eventually_blocking(
            lambda: (programmed := proxied_endpoints(cluster, name)) is not None and victim_ip not in programmed,
            what="the deleted backend out of the proxy's rules", **CLUSTER_WAIT,
        )
        drained_at, drained_wall = time.monotonic(), time.time()
        marked = [p for p in cluster.pods(f"app={name}") if p["metadata"]["name"] == victim]
        assert drained_at - deleted_at < LINGER and (not marked or marked[0]["metadata"]["deletionTimestamp"]), (
            "the backend was not dropped while it still served"
        )

        # The replacement comes up and serves, and the deleted pod is gone from the API.
        now_serving = eventually_blocking(
            lambda: (found := backends(cluster, name)) and len(found) == 3 and running_and_ready(found)
            and victim not in {p["metadata"]["name"] for p in found} and found,
            what="a replacement backend running and ready", **CLUSTER_WAIT,
        )
        [replacement] = [p for p in now_serving if p["metadata"]["name"] not in names]
        [ready] = [c for c in replacement["status"]["conditions"] if c["type"] == "Ready"]
        ready_at = dt.datetime.fromisoformat(ready["lastTransitionTime"].replace("Z", "+00:00")).timestamp()
        assert ready_at >= int(drained_wall), "the replacement was Ready before the deleted backend was drained"
        eventually_blocking(
            lambda: victim not in {p["metadata"]["name"] for p in cluster.pods(f"app={name}")},
            what="the deleted pod removed by its kubelet", **CLUSTER_WAIT,
        )
        current = {p["metadata"]["name"] for p in backends(cluster, name)}
        eventually_blocking(
            lambda: {r.served_by for r in client.replies[-30:]} == current,
            what="requests spread over the new set of backends", **CLUSTER_WAIT,
        )
    finally:
        replies = client.stop()

    failed = [r for r in replies if r.error]
    assert not failed, f"{len(failed)} of {len(replies)} requests failed, first: {failed[0].error}"
    late = [r for r in replies if r.served_by == victim and r.started > drained_at]
    assert not late, f"{len(late)} requests sent after its endpoint was gone reached the deleted backend"
    served = collections.Counter(r.served_by for r in replies if r.started > deleted_at)
    assert len(replies) > 100 and len(served) >= 3, served
