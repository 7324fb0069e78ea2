"""Static pods from a manifest directory, an HTTP URL and SubmitPod; bad
manifests are reported and leave the other pods running."""

from __future__ import annotations

import asyncio
import http.server
import os
import threading
from typing import Iterator

import pytest

from kybernetes.v1 import pod_pb2
from tests.conftest import BUSYBOX_IMAGE
from tests.integration.kubelet_helpers import (
    KubeletProcess,
    container_status,
    is_running,
    make_pod,
    node_containers,
    sleeper,
)
from tests.polling import eventually

pytestmark = pytest.mark.docker


def manifest(name: str, command: str = "while true; do sleep 1; done", namespace: str = "default") -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels:
    app: {name}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX_IMAGE}
    command: ["sh", "-c", "trap 'exit 0' TERM; {command}"]
"""


async def _running(kubelet: KubeletProcess, name: str) -> pod_pb2.Pod | None:
    pod = await kubelet.get_pod(name)
    return pod if is_running(pod) else None


def _write(directory: str, name: str, text: str) -> None:
    with open(os.path.join(directory, name), "w") as handle:
        handle.write(text)


@pytest.fixture
def manifest_dir(tmp_path) -> str:
    path = tmp_path / "manifests"
    path.mkdir()
    return str(path)


async def test_manifest_directory_source(node_name: str, manifest_dir: str) -> None:
    await asyncio.to_thread(_write, manifest_dir, "one.yaml", manifest("one"))
    kubelet = KubeletProcess(node_name, "--manifest-path", manifest_dir)
    try:
        pod = await eventually(lambda: _running(kubelet, "one"), what="pod from the file running")
        assert pod.metadata.name == f"one-{node_name}"
        assert pod.metadata.annotations["kubernetes.io/config.source"] == "file"
        first_id = container_status(pod, "main").container_id

        # A bad file is reported and changes nothing else.
        await asyncio.to_thread(_write, manifest_dir, "bad.yaml", manifest("bad").replace("containers:", "containerz:"))
        await eventually(lambda: _logged(kubelet, "manifest_invalid", "containerz"), what="bad manifest logged")

        # A second file adds a pod; an edit of the first replaces its container.
        await asyncio.to_thread(_write, manifest_dir, "two.yml", manifest("two"))
        edited = manifest("one", command="while true; do sleep 2; done")
        await asyncio.to_thread(_write, manifest_dir, "one.yaml", edited)
        await eventually(lambda: _running(kubelet, "two"), what="second pod running")

        async def replaced() -> pod_pb2.Pod | None:
            pod = await _running(kubelet, "one")
            status = container_status(pod, "main")
            return pod if status is not None and status.container_id != first_id else None

        pod = await eventually(replaced, what="edited pod's container replaced")
        assert container_status(pod, "main").restart_count == 1
        assert {p.metadata.name for p in await kubelet.list_pods()} == {f"one-{node_name}", f"two-{node_name}"}

        # Removing a file removes its pod.
        os.unlink(os.path.join(manifest_dir, "two.yml"))

        async def two_gone() -> bool:
            names = {c["Labels"]["io.kybernetes.pod.name"] for c in node_containers(node_name)}
            return names == {f"one-{node_name}"}

        await eventually(two_gone, what="removed manifest's containers gone")
        assert is_running(await kubelet.get_pod("one"))
    finally:
        kubelet.cleanup()


async def _logged(kubelet: KubeletProcess, *fragments: str) -> bool:
    return _log_count(kubelet, *fragments) > 0


def _log_count(kubelet: KubeletProcess, *fragments: str) -> int:
    """Lines of the kubelet's log (all its runs: the file is appended to) holding every fragment."""
    return sum(all(fragment in line for fragment in fragments) for line in kubelet.log_text().splitlines())


class _ManifestServer:
    """Serves one mutable manifest body over HTTP."""

    def __init__(self) -> None:
        self.body = b""
        self.requests = 0  # GETs answered: the kubelet fetches once a period
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                owner.requests += 1
                body = owner.body
                self.send_response(200)
                self.send_header("Content-Type", "application/yaml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/pods.yaml"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def manifest_server() -> Iterator[_ManifestServer]:
    server = _ManifestServer()
    yield server
    server.close()


async def test_manifest_url_source(node_name: str, manifest_server: _ManifestServer) -> None:
    manifest_server.body = (manifest("alpha") + "---\n" + manifest("beta", namespace="other")).encode()
    kubelet = KubeletProcess(node_name, "--manifest-url", manifest_server.url)
    try:
        alpha = await eventually(lambda: _running(kubelet, "alpha"), what="alpha running")
        assert alpha.metadata.annotations["kubernetes.io/config.source"] == "http"

        async def beta_running() -> pod_pb2.Pod | None:
            pod = await kubelet.get_pod("beta", namespace="other")
            return pod if is_running(pod) else None

        await eventually(beta_running, what="beta running")

        # A bad body is reported; what ran keeps running.
        manifest_server.body = b"apiVersion: v1\nkind: Pod\nmetadata: {name: broken}\nspec: {containers: 3}\n"
        await eventually(lambda: _logged(kubelet, "manifest_invalid", "source=http"), what="bad body logged")
        # Two more fetches of the bad body (one a second): the kubelet had every chance to act on it.
        fetched = manifest_server.requests
        await eventually(lambda: manifest_server.requests >= fetched + 2, what="the bad body fetched twice more")
        assert is_running(await kubelet.get_pod("alpha"))

        # Dropping a pod from the body removes it.
        manifest_server.body = manifest("alpha").encode()

        async def beta_gone() -> bool:
            return await kubelet.get_pod("beta", namespace="other") is None and not [
                c for c in node_containers(node_name) if c["Labels"]["io.kybernetes.pod.namespace"] == "other"
            ]

        await eventually(beta_gone, what="beta removed")
        assert is_running(await kubelet.get_pod("alpha"))
    finally:
        kubelet.cleanup()


async def test_submitted_pods_survive_a_kubelet_restart(node_name: str) -> None:
    kubelet = KubeletProcess(node_name)
    try:
        await kubelet.submit(make_pod("kept", sleeper()))
        pod = await eventually(lambda: _running(kubelet, "kept"), what="submitted pod running")
        container_id = container_status(pod, "main").container_id
        kubelet.stop()
        kubelet.start()
        pod = await eventually(lambda: _running(kubelet, "kept"), what="submitted pod listed again")
        assert container_status(pod, "main").container_id == container_id
        await kubelet.delete("kept")
        await eventually(lambda: _no_containers(node_name), what="pod removed")
        kubelet.stop()
        kubelet.start()
        # The third run has read its submitted pods back from disk (and found none).
        await eventually(lambda: _log_count(kubelet, "pod_source_ready", "source=server") >= 3,
                         what="the restarted kubelet's submitted pods loaded")
        assert await kubelet.list_pods() == []
    finally:
        kubelet.cleanup()


async def _no_containers(node: str) -> bool:
    return not node_containers(node)
