"""How the kubelet names and labels what it creates in Docker, and how it
fingerprints container specs.

Everything the kubelet owns carries `io.kybernetes.node=<node>`; it lists and
watches Docker by that label only, so kubelets with different node names can
share one daemon without ever touching each other's containers.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from kybernetes.v1 import pod_pb2

LABEL_NODE = "io.kybernetes.node"
LABEL_POD_NAMESPACE = "io.kybernetes.pod.namespace"
LABEL_POD_NAME = "io.kybernetes.pod.name"
LABEL_POD_UID = "io.kybernetes.pod.uid"
LABEL_POD_SOURCE = "io.kybernetes.pod.source"
# Kept on every container so that an orphan found after a restart is stopped
# with its own pod's grace period.
LABEL_POD_GRACE_PERIOD = "io.kybernetes.pod.termination-grace-period"
LABEL_CONTAINER_NAME = "io.kybernetes.container.name"
LABEL_CONTAINER_HASH = "io.kybernetes.container.hash"
# The restart count of the pod container this Docker container is an attempt of:
# 0 for the first container, +1 for every restart. Restart counts survive a
# kubelet restart because they live here.
LABEL_RESTART_COUNT = "io.kybernetes.container.restart-count"
# On an infra container wired by the kubelet's pod network: the pod's address
# (Docker knows none), so a restarted kubelet knows the pod IP without asking.
LABEL_POD_IP = "io.kybernetes.pod.ip"

# The name of the infra container inside a pod (as Kubernetes' "POD").
INFRA_CONTAINER_NAME = "POD"

DEFAULT_GRACE_PERIOD_SECONDS = 30

_UNSAFE_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_.-]")


def _name_part(value: str) -> str:
    return _UNSAFE_NAME_CHARS.sub("-", value) or "-"


def docker_name(node: str, namespace: str, pod_name: str, container: str, pod_uid: str, attempt: int) -> str:
    """kyb_<node>_<namespace>_<pod>_<container>_<uid8>_<attempt>: readable in `docker ps`.

    The uid prefix keeps a pod recreated under the same name from colliding with
    the containers of its predecessor that are still being removed.
    """
    parts = (node, namespace, pod_name, container, pod_uid.replace("-", "")[:8], str(attempt))
    return "kyb_" + "_".join(_name_part(part) for part in parts)


def node_filter(node: str) -> dict[str, list[str]]:
    """The Docker list/events filter that selects this node's containers only."""
    return {"label": [f"{LABEL_NODE}={node}"]}


def pod_labels(node: str, pod: pod_pb2.Pod, source: str) -> dict[str, str]:
    return {
        LABEL_NODE: node,
        LABEL_POD_NAMESPACE: pod.metadata.namespace,
        LABEL_POD_NAME: pod.metadata.name,
        LABEL_POD_UID: pod.metadata.uid,
        LABEL_POD_SOURCE: source,
        LABEL_POD_GRACE_PERIOD: str(grace_period_seconds(pod)),
    }


def container_labels(
    node: str, pod: pod_pb2.Pod, source: str, container_name: str, spec_hash: str, restart_count: int
) -> dict[str, str]:
    labels = pod_labels(node, pod, source)
    labels[LABEL_CONTAINER_NAME] = container_name
    labels[LABEL_CONTAINER_HASH] = spec_hash
    labels[LABEL_RESTART_COUNT] = str(restart_count)
    return labels


def grace_period_seconds(pod: pod_pb2.Pod) -> int:
    if pod.spec.HasField("termination_grace_period_seconds"):
        return max(0, int(pod.spec.termination_grace_period_seconds))
    return DEFAULT_GRACE_PERIOD_SECONDS


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def container_hash(container: pod_pb2.Container) -> str:
    """A fingerprint of a container's spec: a different hash means the running
    container no longer matches what is asked for and must be replaced."""
    return _short_hash(container.SerializeToString(deterministic=True))


def sandbox_hash(pod: pod_pb2.Pod) -> str:
    """A fingerprint of what the infra container is made from: the published
    ports of every container and the hostname. A change recreates the sandbox
    (and so restarts the pod's containers)."""
    fingerprint = pod_pb2.Pod()
    fingerprint.spec.hostname = pod.spec.hostname
    for container in pod.spec.containers:
        copy = fingerprint.spec.containers.add()
        copy.ports.extend(container.ports)
    return _short_hash(fingerprint.SerializeToString(deterministic=True))


def static_pod_uid(source: str, node: str, namespace: str, name: str) -> str:
    """A deterministic uid for a static pod: the same manifest from the same
    source always maps to the same pod, across kubelet restarts, so running
    containers are adopted rather than replaced."""
    digest = hashlib.sha256(f"{source}\0{node}\0{namespace}\0{name}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16]))


def static_pod_name(name: str, node: str) -> str:
    """Static pods are named <name>-<node>, as Kubernetes names them."""
    suffix = f"-{node}"
    return name if name.endswith(suffix) else name + suffix
