"""pods/{name}/log through the REST API (issue 15): the API server fetches a container's output
from the pod's kubelet with its kubelet-client certificate and streams it. The real kubectl
(`logs`, `-c`, `--tail`, `-f`) and the official Python client (read_namespaced_pod_log), against
a real API server, etcd and a kubelet running a busybox pod on dockerd."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import BUSYBOX_IMAGE
from tests.integration.kubelet_helpers import KubeletProcess, unique_node
from tests.integration.test_rest_api import KUBECTL, kubectl, write_kubeconfig
from tests.polling import eventually_blocking
from tools.clusterpki import ADMIN, ClusterPKI
from tools.processes import ApiServerProcess

pytestmark = pytest.mark.docker

TALKER = ("trap 'exit 0' TERM; for i in 1 2 3 4 5; do echo line-$i; done; "
          "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.3; done")


@pytest.fixture(scope="module")
def cluster(etcd_endpoint: str, cluster_pki: ClusterPKI, tmp_path_factory: Any) -> Iterator[tuple[Path, str]]:
    """An API server with the REST API, a kubelet registered with it, and a namespace with a
    running pod `talk` (containers `talker` and `quiet`): (admin kubeconfig, namespace)."""
    server = ApiServerProcess(etcd_endpoint, "--controllers=", rest=True)
    kubelet = None
    try:
        credentials = cluster_pki.credentials(ADMIN.stem)
        config = write_kubeconfig(tmp_path_factory.mktemp("rest-logs") / "admin.conf", server.rest_address,
                                  cluster_pki, user=ADMIN.user, certificate=credentials.certificate,
                                  key=credentials.key)
        node = unique_node()
        kubelet = KubeletProcess(node, server=server.address)
        namespace = f"logs-{uuid.uuid4().hex[:6]}"
        kubectl(config, "create", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talk", "namespace": namespace},
               "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": [
                   {"name": "talker", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", TALKER]},
                   {"name": "quiet", "image": BUSYBOX_IMAGE, "command": ["sleep", "3600"]}]}}
        kubectl(config, "create", "-f", "-", input=json.dumps(pod))

        def ticking() -> bool:
            result = kubectl(config, "logs", "talk", "-c", "talker", "-n", namespace, check=False)
            return result.returncode == 0 and "tick-2" in result.stdout

        eventually_blocking(ticking, timeout=90, what="the pod running and talking")
        yield config, namespace
    finally:
        if kubelet is not None:
            kubelet.cleanup()
        server.stop()


def test_kubectl_logs_container_and_tail(cluster: tuple[Path, str]) -> None:
    config, namespace = cluster
    out = kubectl(config, "logs", "talk", "-c", "talker", "-n", namespace).stdout
    assert out.splitlines()[:5] == [f"line-{i}" for i in range(1, 6)], out
    tail = kubectl(config, "logs", "pod/talk", "-c", "talker", "--tail=1", "-n", namespace).stdout
    assert len(tail.splitlines()) == 1 and tail.startswith("tick-"), tail
    assert kubectl(config, "logs", "talk", "-c", "quiet", "-n", namespace).stdout == ""
    # No -c: kubectl picks the first container itself (the server's 400 is the Python client's test).
    out = kubectl(config, "logs", "talk", "-n", namespace).stdout
    assert out.startswith("line-1\n"), out
    result = kubectl(config, "logs", "talk", "-c", "nosuch", "-n", namespace, check=False)
    assert result.returncode != 0 and "nosuch" in result.stderr, result.stderr
    result = kubectl(config, "logs", "ghost", "-n", namespace, check=False)
    assert result.returncode != 0 and ("NotFound" in result.stderr or "not found" in result.stderr), result.stderr


def test_kubectl_logs_follow(cluster: tuple[Path, str]) -> None:
    """-f: new lines arrive on the open stream; stopping kubectl ends it (the server goes on)."""
    config, namespace = cluster
    assert KUBECTL
    process = subprocess.Popen(
        [KUBECTL, "--kubeconfig", str(config), "logs", "-f", "--tail=1", "talk", "-c", "talker", "-n", namespace],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        ticks: list[int] = []
        deadline = time.monotonic() + 30
        while len(ticks) < 4 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            ticks.append(int(line.strip().removeprefix("tick-")))
        assert len(ticks) == 4 and ticks == sorted(ticks) and ticks[-1] > ticks[0], (ticks, process.stderr)
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()
    assert "tick-" in kubectl(config, "logs", "talk", "-c", "talker", "--tail=1", "-n", namespace).stdout


def test_python_client_reads_log(cluster: tuple[Path, str], cluster_pki: ClusterPKI, tmp_path: Path) -> None:
    from kubernetes import client, config as kube_config
    from kubernetes.client.rest import ApiException

    config, namespace = cluster
    api_client = kube_config.new_client_from_config(config_file=str(config))
    try:
        core = client.CoreV1Api(api_client)
        text = core.read_namespaced_pod_log("talk", namespace, container="talker", tail_lines=2)
        assert len(text.splitlines()) == 2 and all(line.startswith("tick-") for line in text.splitlines()), text
        assert core.read_namespaced_pod_log("talk", namespace, container="talker", limit_bytes=6) == "line-1"
        stamped = core.read_namespaced_pod_log("talk", namespace, container="talker", tail_lines=1, timestamps=True)
        assert stamped[:4].isdigit() and " tick-" in stamped, stamped
        # sinceSeconds=2 leaves out the first lines once they are older than that: the talker
        # printed them at its start and has ticked every 0.3 s since (10 ticks: 3 s).
        eventually_blocking(
            lambda: int(core.read_namespaced_pod_log("talk", namespace, container="talker", tail_lines=1)
                        .strip().removeprefix("tick-")) >= 10,
            timeout=60, what="the talker's first lines older than 2 s",
        )
        recent = core.read_namespaced_pod_log("talk", namespace, container="talker", since_seconds=2)
        assert "line-1" not in recent and "tick-" in recent, recent
        with pytest.raises(ApiException) as raised:
            core.read_namespaced_pod_log("talk", namespace)
        assert raised.value.status == 400
        assert "a container name must be specified for pod talk" in json.loads(raised.value.body)["message"]
    finally:
        api_client.close()

    # Authorized as `get` on pods/log: a user with no rights is refused by this server.
    user = f"no-logs-{uuid.uuid4().hex[:6]}"
    credentials = cluster_pki.client_credentials(user)
    server = json.loads(kubectl(config, "config", "view", "--raw", "-o", "json").stdout)["clusters"][0]
    stranger = write_kubeconfig(tmp_path / "stranger.conf", server["cluster"]["server"].removeprefix("https://"),
                                cluster_pki, user=user, certificate=credentials.certificate, key=credentials.key)
    api_client = kube_config.new_client_from_config(config_file=str(stranger))
    try:
        with pytest.raises(ApiException) as raised:
            client.CoreV1Api(api_client).read_namespaced_pod_log("talk", namespace, container="talker")
        assert raised.value.status == 403
        message = json.loads(raised.value.body)["message"]
        assert f'User "{user}" cannot get resource "pods/log"' in message, message
    finally:
        api_client.close()
