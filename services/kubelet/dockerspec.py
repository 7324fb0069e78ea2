"""Pod spec -> Docker create arguments (pure: no Docker call here).

The infra container owns the pod's network and IPC namespaces; app containers
join it. On the kubelet's pod network (podnetwork.py) Docker's networking is
off for the infra container and the kubelet wires it; a pod that publishes
host ports is left to Docker's bridge and port publishing.

The pod's DNS settings reach a sandbox on Docker's bridge as Docker's own
dns options (its joined containers share the resolv.conf Docker writes); on
the kubelet's pod network the kubelet writes the file itself (podnetwork.py).
An app container's environment is its `env` over the service variables the
kubelet passes in, with `$(VAR)` expanded in env, command and args
(envvars.py); the variables are never part of the container's spec hash.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any, Mapping

from docker.types import LogConfig, Mount

from kybernetes.v1 import pod_pb2
from services.common.quantity import parse_cpu_millis, parse_memory_bytes

from .envvars import container_environment, expand_command_and_args
from .resolvconf import PodDns

# Logs are Docker's json-file, rotated so that a chatty container cannot fill the disk.
LOG_CONFIG = LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"})


class ContainerConfigError(ValueError):
    """The container cannot be made from its spec (a bad quantity, a missing volume)."""


@dataclass
class CreateRequest:
    """What to pass to APIClient.create_container (host_config via create_host_config)."""

    name: str
    image: str
    labels: dict[str, str]
    container_kwargs: dict[str, Any] = field(default_factory=dict)
    host_config_kwargs: dict[str, Any] = field(default_factory=dict)
    # The infra container an app container joins ("" for the infra itself).
    sandbox_id: str = ""


def _security_opt(runtime_default_seccomp: bool) -> list[str] | None:
    """Unconfined unless asked for Docker's default profile: Kubernetes' own
    default (its kubelet's --seccomp-default is off unless set). Docker's
    profile also makes each container start compile a seccomp filter, ~15% of
    the CPU Docker spends starting a pod here."""
    return None if runtime_default_seccomp else ["seccomp=unconfined"]


def _docker_protocol(protocol: str) -> str:
    return (protocol or "TCP").lower()


def pod_hostname(pod: pod_pb2.Pod) -> str:
    return (pod.spec.hostname or pod.metadata.name)[:63].rstrip("-.")


def host_ports(pod: pod_pb2.Pod) -> bool:
    return any(port.host_port for container in pod.spec.containers for port in container.ports)


def infra_request(
    pod: pod_pb2.Pod, *, name: str, labels: dict[str, str], pause_image: str, node_ip: str,
    runtime_default_seccomp: bool = False, network_disabled: bool = False, dns: PodDns | None = None,
) -> CreateRequest:
    """The infra ("pause") container: holds the network namespace and the
    published ports of every container of the pod.

    dns: the pod's DNS settings, for a sandbox on Docker's bridge (ignored
    with network_disabled: the kubelet writes that pod's resolv.conf).

    A hostPort is published on the container port's hostIP when given, else on
    the node's IP: several simulated nodes on one machine (127.0.0.x each) can
    then use the same hostPort, as the scheduler assumes nodes can.
    """
    exposed: list[Any] = []
    bindings: dict[str, list[tuple[str, int]]] = {}
    for container in pod.spec.containers:
        for port in container.ports:
            protocol = _docker_protocol(port.protocol)
            exposed.append((port.container_port, protocol))
            if port.host_port:
                key = f"{port.container_port}/{protocol}"
                bindings.setdefault(key, []).append((port.host_ip or node_ip, port.host_port))
    host_config_kwargs: dict[str, Any] = {
        "port_bindings": bindings or None,
        # Shareable so the pod's containers can join its IPC namespace.
        "ipc_mode": "shareable",
        "log_config": LOG_CONFIG,
        "security_opt": _security_opt(runtime_default_seccomp),
    }
    if dns is not None and not network_disabled:
        host_config_kwargs["dns"] = list(dns.nameservers) or None
        host_config_kwargs["dns_search"] = list(dns.searches) or None
        host_config_kwargs["dns_opt"] = list(dns.options) or None
    return CreateRequest(
        name=name,
        image=pause_image,
        labels=labels,
        container_kwargs={
            "hostname": pod_hostname(pod),
            "ports": exposed or None,
            # A new network namespace with only lo: the kubelet's pod network wires it.
            "network_disabled": network_disabled or None,
        },
        host_config_kwargs=host_config_kwargs,
    )


def _resources(container: pod_pb2.Container) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    limits = container.resources.limits
    requests = container.resources.requests
    try:
        if limits.get("cpu"):
            kwargs["nano_cpus"] = parse_cpu_millis(limits["cpu"]) * 1_000_000
        if limits.get("memory"):
            kwargs["mem_limit"] = parse_memory_bytes(limits["memory"])
        if requests.get("cpu"):
            # As Kubernetes maps requests: 1 cpu = 1024 shares (2 at least).
            kwargs["cpu_shares"] = max(2, parse_cpu_millis(requests["cpu"]) * 1024 // 1000)
    except ValueError as error:
        raise ContainerConfigError(f"container {container.name!r}: resources: {error}") from None
    return kwargs


def _mounts(container: pod_pb2.Container, volume_paths: dict[str, str], managed_files: dict[str, str]) -> list[Mount]:
    own_targets = {posixpath.normpath(mount.mount_path) for mount in container.volume_mounts}
    mounts = [
        Mount(target=target, source=source, type="bind")
        for target, source in managed_files.items()
        if target not in own_targets
    ]
    for mount in container.volume_mounts:
        source = volume_paths.get(mount.name)
        if source is None:
            raise ContainerConfigError(
                f"container {container.name!r}: volumeMounts: volume {mount.name!r} is not defined in spec.volumes"
            )
        if mount.sub_path:
            sub_path = posixpath.normpath(mount.sub_path)
            if sub_path.startswith("/") or sub_path.startswith(".."):
                raise ContainerConfigError(
                    f"container {container.name!r}: volumeMounts[{mount.name}].subPath {mount.sub_path!r}"
                    " must be a relative path inside the volume"
                )
            source = posixpath.join(source, sub_path)
        mounts.append(Mount(target=mount.mount_path, source=source, type="bind", read_only=mount.read_only))
    return mounts


def container_request(
    pod: pod_pb2.Pod,
    container: pod_pb2.Container,
    *,
    name: str,
    labels: dict[str, str],
    infra_id: str,
    volume_paths: dict[str, str],
    runtime_default_seccomp: bool = False,
    managed_files: dict[str, str] | None = None,
    service_env: Mapping[str, str] | None = None,
) -> CreateRequest:
    """An app container joined to the infra container's network and IPC namespaces.

    managed_files: files the kubelet writes for the pod (/etc/hosts,
    /etc/resolv.conf) by path in the container, each bind-mounted unless the
    container mounts a volume there itself.

    command replaces the image's entrypoint and args its cmd, as in Kubernetes;
    Docker drops the image's cmd when the entrypoint is replaced, which is also
    Kubernetes' rule.

    service_env: the service variables the pod sees (envvars.pod_service_environment),
    under the container's own env; $(VAR) in env, command and args is expanded.
    """
    environment = container_environment(container, service_env or {})
    command, args = expand_command_and_args(container, environment)
    container_kwargs: dict[str, Any] = {
        "environment": [f"{name}={value}" for name, value in environment.items()] or None,
        "working_dir": container.working_dir or None,
    }
    if command:
        container_kwargs["entrypoint"] = command
    if args:
        container_kwargs["command"] = args
    host_config_kwargs: dict[str, Any] = {
        "network_mode": f"container:{infra_id}",
        "ipc_mode": f"container:{infra_id}",
        "mounts": _mounts(container, volume_paths, managed_files or {}) or None,
        "log_config": LOG_CONFIG,
        "security_opt": _security_opt(runtime_default_seccomp),
        **_resources(container),
    }
    return CreateRequest(
        name=name,
        image=container.image,
        labels=labels,
        container_kwargs=container_kwargs,
        host_config_kwargs=host_config_kwargs,
        sandbox_id=infra_id,
    )
