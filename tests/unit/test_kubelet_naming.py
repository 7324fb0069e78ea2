"""Docker names, labels, spec hashes and static pod identity."""

from __future__ import annotations

import argparse

import pytest

from kybernetes.v1 import pod_pb2
from services.common.flags import duration as parse_duration
from services.kubelet.main import parse_args
from services.kubelet.naming import (
    LABEL_NODE,
    LABEL_POD_GRACE_PERIOD,
    LABEL_RESTART_COUNT,
    container_hash,
    container_labels,
    docker_name,
    grace_period_seconds,
    sandbox_hash,
    static_pod_name,
    static_pod_uid,
)


def test_docker_name_is_readable_and_safe() -> None:
    name = docker_name("node-1", "default", "web", "server", "0bfc03a2-2273-d2c6", 3)
    assert name == "kyb_node-1_default_web_server_0bfc03a2_3"
    assert docker_name("we ird/node", "ns", "p", "c", "u", 0).startswith("kyb_we-ird-node_")


def test_container_hash_follows_the_spec() -> None:
    base = pod_pb2.Container(name="a", image="busybox", command=["sleep", "1"])
    same = pod_pb2.Container(name="a", image="busybox", command=["sleep", "1"])
    assert container_hash(base) == container_hash(same)
    for change in (dict(image="other"), dict(command=["sleep", "2"]), dict(args=["x"])):
        changed = pod_pb2.Container()
        changed.CopyFrom(base)
        for field, value in change.items():
            if isinstance(value, list):
                getattr(changed, field)[:] = value
            else:
                setattr(changed, field, value)
        assert container_hash(changed) != container_hash(base)


def test_sandbox_hash_follows_ports_not_commands() -> None:
    pod = pod_pb2.Pod()
    pod.spec.containers.add(name="a", image="busybox", command=["x"])
    before = sandbox_hash(pod)
    pod.spec.containers[0].command[:] = ["y"]
    assert sandbox_hash(pod) == before
    pod.spec.containers[0].ports.add(container_port=80, host_port=8080)
    assert sandbox_hash(pod) != before


def test_labels_carry_node_restart_count_and_grace_period() -> None:
    pod = pod_pb2.Pod()
    pod.metadata.namespace, pod.metadata.name, pod.metadata.uid = "ns", "p", "u"
    pod.spec.termination_grace_period_seconds = 7
    labels = container_labels("n1", pod, "api", "c", "h", 2)
    assert labels[LABEL_NODE] == "n1"
    assert labels[LABEL_RESTART_COUNT] == "2"
    assert labels[LABEL_POD_GRACE_PERIOD] == "7"
    assert grace_period_seconds(pod_pb2.Pod()) == 30


def test_static_pod_identity() -> None:
    assert static_pod_name("web", "node-1") == "web-node-1"
    assert static_pod_name("web-node-1", "node-1") == "web-node-1"
    uid = static_pod_uid("file", "node-1", "default", "web-node-1")
    assert uid == static_pod_uid("file", "node-1", "default", "web-node-1")
    assert uid != static_pod_uid("http", "node-1", "default", "web-node-1")
    assert uid != static_pod_uid("file", "node-2", "default", "web-node-1")
    assert len(uid) == 36


def test_durations_and_flags() -> None:
    assert parse_duration("20s") == 20.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1.5m") == 90.0
    assert parse_duration("3") == 3.0
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("soon")
    with pytest.raises(SystemExit):  # its API is TLS: a serving certificate is required
        parse_args(["--node-name", "n1"])
    config = parse_args(
        ["--node-name", "n1", "--insecure-dev", "--restart-backoff-initial", "1s", "--restart-backoff-max", "4s"]
    )
    assert config.node_name == "n1" and config.server is None
    assert config.listen == "127.0.0.1:10250" and config.node_ip == "127.0.0.1"
    assert (config.restart_backoff_initial, config.restart_backoff_max) == (1.0, 4.0)
    assert config.pause_image == "kybernetes/pause:latest" and config.docker_concurrency == 4
    with pytest.raises(SystemExit):
        parse_args(["--insecure-dev", "--restart-backoff-initial", "10s", "--restart-backoff-max", "1s"])
