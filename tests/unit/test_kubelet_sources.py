"""Static pods from manifests, and the merge of every source into one desired state."""

from __future__ import annotations

import pytest

from kybernetes.v1 import pod_pb2
from services.kubelet.sources import (
    CONFIG_HASH_ANNOTATION,
    CONFIG_SOURCE_ANNOTATION,
    InvalidPodError,
    PodConfig,
    make_static_pod,
    parse_static_pods,
)

MANIFEST = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: main
    image: busybox
    command: [sleep, "3600"]
"""


def test_static_pod_is_renamed_bound_and_identified() -> None:
    [pod] = parse_static_pods(MANIFEST, "web.yaml", "file", "node-1")
    assert pod.metadata.name == "web-node-1"
    assert pod.metadata.namespace == "default"
    assert pod.spec.node_name == "node-1"
    assert pod.spec.restart_policy == "Always"  # defaulted as the API server does
    assert pod.metadata.annotations[CONFIG_SOURCE_ANNOTATION] == "file"
    assert pod.metadata.annotations[CONFIG_HASH_ANNOTATION]
    [again] = parse_static_pods(MANIFEST, "web.yaml", "file", "node-1")
    assert again.metadata.uid == pod.metadata.uid
    [changed] = parse_static_pods(MANIFEST.replace('"3600"', '"60"'), "web.yaml", "file", "node-1")
    assert changed.metadata.uid == pod.metadata.uid  # same pod, new spec
    assert changed.metadata.annotations[CONFIG_HASH_ANNOTATION] != pod.metadata.annotations[CONFIG_HASH_ANNOTATION]


def test_bad_manifests_name_the_problem() -> None:
    with pytest.raises(InvalidPodError, match="containerz"):
        parse_static_pods(MANIFEST.replace("containers:", "containerz:"), "web.yaml", "file", "n")
    with pytest.raises(InvalidPodError, match=r"spec.containers\[0\].image"):
        parse_static_pods(MANIFEST.replace("image: busybox", "image: ''"), "web.yaml", "file", "n")
    with pytest.raises(InvalidPodError, match="only takes Pods"):
        parse_static_pods("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n",
                          "svc.yaml", "file", "n")
    with pytest.raises(InvalidPodError, match="spec.nodeName"):
        parse_static_pods(MANIFEST.replace("spec:\n", "spec:\n  nodeName: elsewhere\n"), "web.yaml", "file", "n")
    pod = pod_pb2.Pod()
    pod.spec.containers.add(name="a", image="busybox")
    with pytest.raises(InvalidPodError, match="metadata.name"):
        make_static_pod(pod, "server", "n")


def _pod(name: str, uid: str, command: str = "a", namespace: str = "default") -> pod_pb2.Pod:
    pod = pod_pb2.Pod()
    pod.metadata.name, pod.metadata.namespace, pod.metadata.uid = name, namespace, uid
    pod.spec.containers.add(name="c", image="busybox", command=[command])
    return pod


def test_pod_config_notifies_spec_changes_only() -> None:
    changes: list[set[str]] = []
    config = PodConfig(changes.append)
    config.update_pod("api", _pod("a", "u1"))
    assert changes == [{"u1"}]
    status_only = _pod("a", "u1")
    status_only.status.phase = "Running"
    status_only.metadata.resource_version = 42
    config.update_pod("api", status_only)
    assert changes == [{"u1"}]
    assert config.get("u1").status.phase == "Running"  # the freshest object is kept
    config.update_pod("api", _pod("a", "u1", command="b"))
    assert changes[-1] == {"u1"}
    config.set_pods("file", [_pod("f", "u2"), _pod("g", "u3")])
    assert changes[-1] == {"u2", "u3"}
    config.set_pods("file", [_pod("g", "u3")])
    assert changes[-1] == {"u2"} and config.get("u2") is None
    config.remove_pod("api", "u1")
    assert changes[-1] == {"u1"}
    assert config.source_of("u3") == "file"


def test_pod_config_name_clash_keeps_the_first() -> None:
    config = PodConfig(lambda uids: None)
    config.update_pod("file", _pod("same", "first"))
    config.update_pod("http", _pod("same", "second"))
    assert [p.metadata.uid for p in config.pods()] == ["first"]
    assert config.find("default", "same").metadata.uid == "first"
    config.remove_pod("file", "first")
    assert [p.metadata.uid for p in config.pods()] == ["second"]


def test_pod_config_readiness() -> None:
    ready_calls: list[bool] = []
    config = PodConfig(lambda uids: None, lambda: ready_calls.append(True))
    config.expect("file")
    config.expect("server")
    config.mark_ready("file")
    assert not config.all_ready and ready_calls == []
    config.mark_ready("server")
    assert config.all_ready and ready_calls == [True]
