"""The control plane as the kubelet's static pods (`make up MODE=containers`), as kubeadm runs it.

`up` writes one Pod manifest per component but the kubelet (etcd, the API server, the
controller manager, the replicator, the proxy, kube-dns) into <state>/manifests, the
directory the kubelet's file source reads (--manifest-path, re-read every second); it
starts only the kubelet itself, as a Docker container with a restart policy. The
kubelet runs each manifest as a pod on the host's network, restarts its container
when it dies (with its back-off), and mirrors it into `kube-system` once the API
server it runs is up, so that `kubecfg get pods -n kube-system` lists the control
plane. Upgrading a component is editing its manifest: the kubelet replaces the
container whose spec changed. The image's ID at `up` is in each container's
environment, so `make up` after `make images` rebuilt an image under the same tag
changes the spec, and the kubelet rolls the new build.

Each pod mounts the state directory read-only (certificates, kubeconfigs, tokens),
its logs directory read-write (each component appends to <state>/logs/<name>.log,
as in process mode, a file that outlives its containers: `kubecfg logs` of these
pods is empty) and, for etcd, its data directory read-write. kube-proxy gets the
capabilities it needs (NET_ADMIN, NET_RAW), not kubeadm's `privileged`: Docker on
these machines cannot start a privileged container (runc: "unable to apply caps").

Rendering (a component -> its manifest, status rows) is pure and unit-tested
(tests/unit/test_staticpods.py); the few Docker and kubelet calls are at the end.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import yaml

MANIFEST_DIR = "manifests"
NAMESPACE = "kube-system"
# Which local-cluster component a static pod is (e.g. "apiserver"), for `make status`.
COMPONENT_ANNOTATION = "kybernetes.io/local-cluster-component"
# The image's ID when the manifest was written: a rebuilt image changes the container's spec.
IMAGE_ID_ENV = "KYBERNETES_IMAGE_ID"
# How often the kubelet re-reads the manifests (its --file-check-frequency): an edit takes effect within it.
FILE_CHECK_FREQUENCY = "1s"
# As `make down` stops a process: SIGTERM, then SIGKILL after this long.
GRACE_PERIOD_SECONDS = 15
# What kube-proxy needs beyond Docker's default set: its nftables table and routes.
PROXY_CAPABILITIES = ("NET_ADMIN", "NET_RAW")
# The kubelet's restart policy in Docker: it comes back when its process dies (a crash, kill -9,
# the OOM killer), and when the daemon starts again (a reboot), as an enabled systemd unit would.
# Docker counts `docker kill` and `docker stop` as an operator's stop and leaves it stopped
# (`make up` starts it again); `make down` stops and removes it.
KUBELET_RESTART_POLICY = {"Name": "always"}


class ComponentLike(Protocol):
    """What of tools.localcluster.Component a manifest is made from."""

    name: str
    program: str
    args: list[str]

    def log_path(self, state: Path) -> Path: ...


def manifest_dir(state: Path) -> Path:
    return state / MANIFEST_DIR


def pod_base_name(component: ComponentLike) -> str:
    """The pod's name in its manifest, as kubeadm names them: etcd, kube-apiserver, ...
    (the kubelet appends -<node>). A second replica keeps its number: kube-apiserver-2."""
    base = component.program
    # apiserver-2, controller-manager-2; not proxy-<node>
    replica = re.fullmatch(r"[a-z][a-z-]*-(\d+)", component.name)
    if replica and component.program != "kube-proxy":
        base = f"{base}-{replica.group(1)}"
    return base


def static_pod_name(component: ComponentLike, node: str) -> str:
    """The pod's name as the kubelet runs it and mirrors it: <name>-<node>."""
    return f"{pod_base_name(component)}-{node}"


def manifest_file(component: ComponentLike) -> str:
    return f"{pod_base_name(component)}.yaml"


def _flag(args: list[str], flag: str) -> str:
    """The value of `--flag VALUE` or `--flag=VALUE` in args ("" when absent)."""
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return ""


def render_pod(
    component: ComponentLike, state: Path, log: Path, image: str, image_id: str = ""
) -> dict[str, Any]:
    """The component's static pod, in the Kubernetes v1 Pod shape the kubelet's file source reads."""
    base = pod_base_name(component)
    mounts: list[dict[str, Any]] = [
        {"name": "state", "mountPath": str(state), "readOnly": True},
        {"name": "logs", "mountPath": str(log.parent)},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "state", "hostPath": {"path": str(state), "type": "Directory"}},
        {"name": "logs", "hostPath": {"path": str(log.parent), "type": "DirectoryOrCreate"}},
    ]
    data_dir = _flag(component.args, "--data-dir") if component.program == "etcd" else ""
    if data_dir:
        mounts.append({"name": "data", "mountPath": data_dir})
        volumes.append({"name": "data", "hostPath": {"path": data_dir, "type": "DirectoryOrCreate"}})
    container: dict[str, Any] = {
        "name": base,
        "image": image,
        # The program's output goes to the component's log file, as in process mode.
        "command": ["/bin/sh", "-c", f'exec "$0" "$@" >>{shlex.quote(str(log))} 2>&1'],
        "args": [component.program, *component.args],
        "volumeMounts": mounts,
    }
    if image_id:
        container["env"] = [{"name": IMAGE_ID_ENV, "value": image_id}]
    if component.program == "kube-proxy":
        container["securityContext"] = {"capabilities": {"add": list(PROXY_CAPABILITIES)}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": base,
            "namespace": NAMESPACE,
            "labels": {"component": base, "tier": "node" if component.program == "kube-proxy" else "control-plane"},
            "annotations": {COMPONENT_ANNOTATION: component.name},
        },
        "spec": {
            # Every component listens on the host's addresses, where `make up` and the nodes reach it.
            "hostNetwork": True,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": GRACE_PERIOD_SECONDS,
            "containers": [container],
            "volumes": volumes,
        },
    }


def render_manifest(
    component: ComponentLike, state: Path, log: Path, image: str, image_id: str = ""
) -> str:
    header = (
        f"# {component.name}: a static pod of the kubelet, written by `make up` (tools/staticpods.py).\n"
        "# Editing it restarts the component with the change (the kubelet re-reads this directory).\n"
    )
    return header + yaml.safe_dump(render_pod(component, state, log, image, image_id), sort_keys=False, width=120)


def render_manifests(
    components: Iterable[ComponentLike], state: Path, component_image: str, etcd_image: str,
    image_ids: dict[str, str] | None = None,
) -> dict[str, str]:
    """Every component's manifest but the kubelet's, by file name; image_ids: each image's ID."""
    manifests = {}
    for component in components:
        if component.program == "kubelet":
            continue
        image = etcd_image if component.program == "etcd" else component_image
        name = manifest_file(component)
        if name in manifests:
            raise ValueError(f"{component.name}: a second component named {pod_base_name(component)!r}")
        manifests[name] = render_manifest(
            component, state, component.log_path(state), image, (image_ids or {}).get(image, "")
        )
    return manifests


def etcd_data_dirs(components: Iterable[ComponentLike]) -> list[str]:
    """etcd's data directories: `up` makes them with etcd's permissions (0700) before the kubelet would."""
    return [path for c in components if c.program == "etcd" and (path := _flag(c.args, "--data-dir"))]


def needs_route_localnet(components: Iterable[ComponentLike]) -> bool:
    """Whether a kube-proxy serves node ports on a loopback address: the kernel routes those
    only with net.ipv4.conf.all.route_localnet, which the proxy sets as a process but cannot
    from its container (/proc/sys is read-only there), so `up` sets it on the host."""
    return any(
        c.program == "kube-proxy" and _flag(c.args, "--node-ip").startswith("127.") for c in components
    )


def start_order(components: Iterable[ComponentLike]) -> list[Any]:
    """The kubelets first (they start everything else), then the rest in the plan's order."""
    listed = list(components)
    return [c for c in listed if c.program == "kubelet"] + [c for c in listed if c.program != "kubelet"]


def kubelet_flags(state: Path) -> list[str]:
    """What the kubelet is started with to run the manifests."""
    return ["--manifest-path", str(manifest_dir(state)), "--file-check-frequency", FILE_CHECK_FREQUENCY]


def write_manifests(directory: Path, manifests: dict[str, str]) -> list[str]:
    """Writes each manifest (file name -> text) that differs from what is there, atomically
    (the kubelet never reads half a file), and removes the directory's other manifests.
    Returns the names of the files written or removed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in sorted(manifests.items()):
        path = directory / name
        try:
            if path.read_text() == text:
                continue
        except OSError:
            pass
        temporary = directory / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, path)
        changed.append(name)
    for path in sorted(directory.glob("*.yaml")):
        if path.name not in manifests:
            path.unlink()
            changed.append(path.name)
    return changed


# -- status ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PodRow:
    """One static pod as `make status` shows it."""

    component: str
    pod: str
    phase: str
    ready: str
    restarts: int


def pod_rows(pods: Iterable[Any]) -> list[PodRow]:
    """The kubelet's static pods (ListPods: pod_pb2.Pod with live status) of the local cluster."""
    rows = []
    for pod in pods:
        component = pod.metadata.annotations.get(COMPONENT_ANNOTATION, "")
        if not component:
            continue
        statuses = list(pod.status.container_statuses)
        ready = sum(1 for status in statuses if status.ready)
        rows.append(PodRow(
            component=component,
            pod=f"{pod.metadata.namespace}/{pod.metadata.name}",
            phase=pod.status.phase or "Pending",
            ready=f"{ready}/{len(pod.spec.containers)}",
            restarts=sum(status.restart_count for status in statuses),
        ))
    return rows


def format_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns as wide as their widest cell, two spaces apart (the last one not padded)."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


# -- Docker and the kubelet's API --------------------------------------------------------


ROUTE_LOCALNET = Path("/proc/sys/net/ipv4/conf/all/route_localnet")


def enable_route_localnet() -> bool:
    """Sets net.ipv4.conf.all.route_localnet=1 (what kube-proxy does as a process); True if it was off."""
    if ROUTE_LOCALNET.read_text().strip() == "1":
        return False
    ROUTE_LOCALNET.write_text("1\n")
    return True


def image_id(image: str) -> str:
    """The local image's ID ("" when it cannot be read: the manifest then names the tag only)."""
    try:
        import docker

        return str(docker.from_env().images.get(image).id)
    except Exception:
        return ""


def runs_image(container: str, image: str) -> bool:
    """Whether the container runs the image the tag names now (True when either cannot be read:
    nothing is replaced on a guess)."""
    try:
        import docker

        client = docker.from_env()
        return bool(client.containers.get(container).image.id == client.images.get(image).id)
    except Exception:
        return True


def pod_container(pod_name: str, container: str) -> Any:
    """The running Docker container of a static pod's container (its name ends with its
    node's), or None."""
    import docker

    from services.kubelet.naming import LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE

    try:
        found = docker.from_env().containers.list(filters={"label": [
            f"{LABEL_POD_NAMESPACE}={NAMESPACE}", f"{LABEL_POD_NAME}={pod_name}", f"{LABEL_CONTAINER_NAME}={container}",
        ]})
    except Exception:
        return None
    return found[0] if found else None


def pod_restarts_in_docker(pod_name: str, container: str) -> int | None:
    """A static pod container's restart count as the kubelet labelled its running attempt
    (what `make status` shows while the kubelet does not answer); None: it does not run."""
    from services.kubelet.naming import LABEL_RESTART_COUNT

    found = pod_container(pod_name, container)
    try:
        return int(found.labels[LABEL_RESTART_COUNT]) if found is not None else None
    except (KeyError, ValueError):
        return None


def kubelet_pods(address: str, credentials: Any, timeout: float = 3.0) -> list[Any]:
    """Every pod the kubelet at `address` runs, with its live status (its own API: no API
    server needed). Raises grpc.RpcError when it does not answer."""
    from kybernetes.v1 import kubelet_pb2, kubelet_pb2_grpc
    from services.common.transport import blocking_channel

    with blocking_channel(address, credentials) as channel:
        listed = kubelet_pb2_grpc.KubeletStub(channel).ListPods(kubelet_pb2.KubeletListPodsRequest(), timeout=timeout)
    return list(listed.items)


def docker_restart_count(container: str) -> int | None:
    """How many times Docker restarted a container by its restart policy (None: no such container)."""
    try:
        import docker

        return int(docker.from_env().containers.get(container).attrs.get("RestartCount", 0))
    except Exception:
        return None
