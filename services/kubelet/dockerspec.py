"""Pod spec -> Docker create arguments (pure: no Docker call here).

The infra container owns the pod's network and IPC namespaces; app containers
join it. On the kubelet's pod network (podnetwork.py) Docker's networking is
off for the infra container and the kubelet wires it and publishes its host
ports (hostports.py); Docker publishes them only for a sandbox it networks
itself (--network-plugin=docker).

The pod's DNS settings reach a sandbox on Docker's bridge as Docker's own
dns options (its joined containers share the resolv.conf Docker writes); on
the kubelet's pod network the kubelet writes the file itself (podnetwork.py).
An app container's environment is its `env` over the service variables the
kubelet passes in, with `$(VAR)` expanded in env, command and args
(envvars.py); the variables are never part of the container's spec hash.

Security contexts follow Kubernetes' kubelet and dockershim: a container's
field overrides the pod's (`effective_security_context`); the pod-level user,
groups and seccomp profile also apply to the infra container; host namespaces
(`hostNetwork`, `hostPID`, `hostIPC`) are the infra container's, and the app
containers join its namespaces as always.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from docker.types import LogConfig, Mount

from kybernetes.v1 import pod_pb2
from services.common.quantity import parse_cpu_millis, parse_memory_bytes

from . import naming
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


# --- security contexts ------------------------------------------------------------------

SECCOMP_RUNTIME_DEFAULT = "RuntimeDefault"
SECCOMP_UNCONFINED = "Unconfined"
SECCOMP_LOCALHOST = "Localhost"
# Localhost profiles are files under <kubelet root dir>/seccomp, as Kubernetes' --seccomp-profile-root.
SECCOMP_DIR_NAME = "seccomp"
# Image users that are root whatever the image's /etc/passwd says.
_ROOT_USERS = ("", "0", "root")
_NUMERIC = re.compile(r"[0-9]+")


def effective_security_context(pod: pod_pb2.Pod, container: pod_pb2.Container) -> pod_pb2.SecurityContext:
    """The container's securityContext with the pod's runAsUser, runAsGroup,
    runAsNonRoot and seccompProfile where the container sets none (Kubernetes'
    DetermineEffectiveSecurityContext). Capabilities, privileged,
    readOnlyRootFilesystem and allowPrivilegeEscalation exist per container only."""
    effective = pod_pb2.SecurityContext()
    if container.HasField("security_context"):
        effective.CopyFrom(container.security_context)
    if pod.spec.HasField("security_context"):
        pod_context = pod.spec.security_context
        for name in ("run_as_user", "run_as_group", "run_as_non_root"):
            if not effective.HasField(name) and pod_context.HasField(name):
                setattr(effective, name, getattr(pod_context, name))
        if not _has_seccomp(effective) and _has_seccomp(pod_context):
            effective.seccomp_profile.CopyFrom(pod_context.seccomp_profile)
    return effective


def _has_seccomp(context: pod_pb2.SecurityContext | pod_pb2.PodSecurityContext) -> bool:
    # An empty type is no choice at all (validation refuses it; a static pod may still carry one).
    return context.HasField("seccomp_profile") and bool(context.seccomp_profile.type)


def pod_groups(pod: pod_pb2.Pod) -> list[str]:
    """supplementalGroups then fsGroup, once each: the groups every process of the pod has."""
    groups: list[int] = []
    if pod.spec.HasField("security_context"):
        groups.extend(pod.spec.security_context.supplemental_groups)
        if pod.spec.security_context.HasField("fs_group"):
            groups.append(pod.spec.security_context.fs_group)
    return [str(group) for group in dict.fromkeys(groups)]


def fs_group(pod: pod_pb2.Pod) -> int | None:
    """The group that owns the pod's emptyDir volumes (Kubernetes' fsGroup), if any."""
    context = pod.spec.security_context
    return context.fs_group if pod.spec.HasField("security_context") and context.HasField("fs_group") else None


def format_pod(pod: pod_pb2.Pod) -> str:
    """A pod as Kubernetes' messages name it: name_namespace(uid)."""
    return f"{pod.metadata.name}_{pod.metadata.namespace}({pod.metadata.uid})"


def needs_image_user(pod: pod_pb2.Pod, container: pod_pb2.Container) -> bool:
    """runAsNonRoot with no runAsUser: only the image's user tells whether the container would run as root."""
    effective = effective_security_context(pod, container)
    return effective.run_as_non_root and not effective.HasField("run_as_user")


def verify_run_as_non_root(pod: pod_pb2.Pod, container: pod_pb2.Container, image_user: str | None) -> None:
    """Kubernetes' verifyRunAsNonRoot: a container with runAsNonRoot must not
    run as uid 0, and its user must be provably non-root.

    image_user: the image's configured user (`docker inspect`'s Config.User,
    "name", "uid" or "uid:gid"); None when it was not read, which is refused
    like root rather than let through unverified."""
    effective = effective_security_context(pod, container)
    if not effective.run_as_non_root:
        return
    where = f'(pod: "{format_pod(pod)}", container: {container.name})'
    if effective.HasField("run_as_user"):
        if effective.run_as_user == 0:
            raise ContainerConfigError(f"container's runAsUser breaks non-root policy {where}")
        return
    user = (image_user or "").split(":", 1)[0].strip()
    if user in _ROOT_USERS or (_NUMERIC.fullmatch(user) and int(user) == 0):
        raise ContainerConfigError(f"container has runAsNonRoot and image will run as root {where}")
    if not _NUMERIC.fullmatch(user):
        raise ContainerConfigError(
            f"container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root "
            f"{where}"
        )


def _docker_user(run_as_user: int | None, run_as_group: int | None) -> str | None:
    """Docker's "uid" or "uid:gid" (dockershim's modifyContainerConfig): with no
    group Docker takes the uid's group from the image's /etc/passwd (else 0)."""
    if run_as_user is None:
        if run_as_group is not None:
            # Every CRI runtime refuses this: there is no uid to pair the group with.
            raise ContainerConfigError("runAsGroup is specified without a runAsUser")
        return None
    return f"{run_as_user}:{run_as_group}" if run_as_group is not None else str(run_as_user)


def capability_name(name: str) -> str:
    """A capability as Docker is given it: NET_ADMIN and CAP_NET_ADMIN -> CAP_NET_ADMIN; ALL stays."""
    upper = name.strip().upper()
    if upper == "ALL":
        return upper
    return upper if upper.startswith("CAP_") else f"CAP_{upper}"


def localhost_profile_path(root_dir: str, profile: str) -> str:
    """Where a Localhost seccomp profile lives: <root-dir>/seccomp/<localhostProfile>.
    A path that leaves that directory is a ContainerConfigError: validation
    refuses it already, but the kubelet reads the file as root, so it checks
    again rather than trust every caller of this function to have validated."""
    relative = posixpath.normpath(profile)
    if not profile or relative.startswith("/") or relative == ".." or relative.startswith("../"):
        raise ContainerConfigError(
            f"seccomp localhostProfile {profile!r} must be a relative path inside the kubelet's seccomp directory"
        )
    return posixpath.join(root_dir, SECCOMP_DIR_NAME, relative)


def localhost_profiles(pod: pod_pb2.Pod, container: pod_pb2.Container) -> list[str]:
    """The Localhost seccomp profiles a container needs read (none or one)."""
    profile = effective_security_context(pod, container).seccomp_profile
    return [profile.localhost_profile] if profile.type == SECCOMP_LOCALHOST else []


def _seccomp_option(
    profile: pod_pb2.SeccompProfile | None, runtime_default: bool, profiles: Mapping[str, str]
) -> str | None:
    """Docker's seccomp security option for a profile (None: Docker's default profile).

    No profile: the kubelet's default, Unconfined as Kubernetes' own unless
    --seccomp-default. Docker's profile also makes each container start compile
    a seccomp filter, ~15% of the CPU Docker spends starting a pod here.
    Localhost: Docker takes the profile's JSON itself, read by the kubelet (`profiles`)."""
    kind = profile.type if profile is not None and profile.type else ""
    if not kind:
        kind = SECCOMP_RUNTIME_DEFAULT if runtime_default else SECCOMP_UNCONFINED
    if kind == SECCOMP_RUNTIME_DEFAULT:
        return None
    if kind == SECCOMP_UNCONFINED:
        return "seccomp=unconfined"
    if kind == SECCOMP_LOCALHOST:
        assert profile is not None
        text = profiles.get(profile.localhost_profile)
        if text is None:
            raise ContainerConfigError(f"seccomp profile {profile.localhost_profile!r} was not loaded")
        return f"seccomp={text}"
    raise ContainerConfigError(f"seccomp profile type {kind!r} is not supported")


def _container_security(
    pod: pod_pb2.Pod,
    container: pod_pb2.Container,
    *,
    runtime_default_seccomp: bool,
    image_user: str | None,
    seccomp_profiles: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An app container's security context as Docker create arguments (container, host config)."""
    effective = effective_security_context(pod, container)
    where = f"container {container.name!r}"
    verify_run_as_non_root(pod, container, image_user)
    container_kwargs: dict[str, Any] = {}
    try:
        user = _docker_user(
            effective.run_as_user if effective.HasField("run_as_user") else None,
            effective.run_as_group if effective.HasField("run_as_group") else None,
        )
        seccomp = _seccomp_option(
            effective.seccomp_profile if _has_seccomp(effective) else None,
            runtime_default_seccomp,
            seccomp_profiles,
        )
    except ContainerConfigError as error:
        raise ContainerConfigError(f"{where}: {error}") from None
    if user is not None:
        container_kwargs["user"] = user
    options = [seccomp] if seccomp else []
    # no_new_privs only when asked for in so many words (Kubernetes' AddNoNewPrivileges).
    if effective.HasField("allow_privilege_escalation") and not effective.allow_privilege_escalation:
        options.append("no-new-privileges")
    host_config_kwargs: dict[str, Any] = {"security_opt": options or None}
    groups = pod_groups(pod)
    if groups:
        host_config_kwargs["group_add"] = groups
    if effective.privileged:
        # Every capability and device, no seccomp or AppArmor: Docker's --privileged, as Kubernetes asks for.
        host_config_kwargs["privileged"] = True
    capabilities = effective.capabilities
    if capabilities.add:
        host_config_kwargs["cap_add"] = [capability_name(name) for name in capabilities.add]
    if capabilities.drop:
        host_config_kwargs["cap_drop"] = [capability_name(name) for name in capabilities.drop]
    if effective.read_only_root_filesystem:
        host_config_kwargs["read_only"] = True
    return container_kwargs, host_config_kwargs


def _sandbox_security(pod: pod_pb2.Pod, runtime_default_seccomp: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod-level user, groups and seccomp profile on the infra container, as
    Kubernetes gives them to the sandbox, with two exceptions that keep the
    pause container working whatever the pod asks of its apps: a runAsGroup
    with no runAsUser (the containers then need a runAsUser of their own)
    leaves the pause container's user alone, and a Localhost profile (written for the app, and
    which may refuse the pause process's syscalls) becomes Docker's default
    profile for it. A privileged container does not make the sandbox
    privileged: on Docker nothing in the pod needs it, and the pause process
    has no use for every capability."""
    context = pod.spec.security_context
    container_kwargs: dict[str, Any] = {}
    profile: pod_pb2.SeccompProfile | None = None
    if pod.spec.HasField("security_context"):
        if context.HasField("run_as_user"):
            container_kwargs["user"] = _docker_user(
                context.run_as_user, context.run_as_group if context.HasField("run_as_group") else None
            )
        if _has_seccomp(context):
            profile = context.seccomp_profile
            if profile.type == SECCOMP_LOCALHOST:
                profile = pod_pb2.SeccompProfile(type=SECCOMP_RUNTIME_DEFAULT)
    option = _seccomp_option(profile, runtime_default_seccomp, {})
    host_config_kwargs: dict[str, Any] = {"security_opt": [option] if option else None}
    groups = pod_groups(pod)
    if groups:
        host_config_kwargs["group_add"] = groups
    return container_kwargs, host_config_kwargs


def sandbox_hash(pod: pod_pb2.Pod) -> str:
    """naming.sandbox_hash (published ports, hostname) and the rest of what the
    infra container is made from: host namespaces and the pod's securityContext.
    A change recreates the sandbox, and so every container of the pod, which
    then also get the pod's new user and groups.

    A pod with none of these hashes as before, so the sandboxes of pods that a
    kubelet of an older version started are adopted, not recreated."""
    base = naming.sandbox_hash(pod)
    extra = pod_pb2.PodSpec(host_network=pod.spec.host_network, host_pid=pod.spec.host_pid, host_ipc=pod.spec.host_ipc)
    if pod.spec.HasField("security_context"):
        extra.security_context.CopyFrom(pod.spec.security_context)
    if not extra.ByteSize():
        return base
    return hashlib.sha256(base.encode() + extra.SerializeToString(deterministic=True)).hexdigest()[:16]


def _docker_protocol(protocol: str) -> str:
    return (protocol or "TCP").lower()


def pod_hostname(pod: pod_pb2.Pod) -> str:
    return (pod.spec.hostname or pod.metadata.name)[:63].rstrip("-.")


def infra_request(
    pod: pod_pb2.Pod,
    *,
    name: str,
    labels: dict[str, str],
    pause_image: str,
    node_ip: str,
    runtime_default_seccomp: bool = False,
    network_disabled: bool = False,
    dns: PodDns | None = None,
) -> CreateRequest:
    """The infra ("pause") container: holds the network namespace (and, on
    Docker's bridge, the published ports) of every container of the pod.

    dns: the pod's DNS settings, for a sandbox on Docker's bridge or the host's
    network (ignored with network_disabled: the kubelet writes that pod's
    resolv.conf).

    On Docker's bridge a hostPort is published by Docker, on the container
    port's hostIP when given, else on the node's IP: several simulated nodes on
    one machine (127.0.0.x each) can then use the same hostPort, as the
    scheduler assumes nodes can. With network_disabled (the kubelet's pod
    network) Docker publishes nothing: the kubelet does (hostports.py).

    hostNetwork: the host's network namespace (Docker's "host" mode): nothing
    to publish (validation makes hostPort equal containerPort), no hostname of
    its own (the node's, as Kubernetes leaves it), and never the kubelet's pod
    network. hostIPC and hostPID: the host's IPC and PID namespaces.
    """
    host_network = pod.spec.host_network
    network_disabled = network_disabled and not host_network
    exposed: list[Any] = []
    bindings: dict[str, list[tuple[str, int]]] = {}
    for container in pod.spec.containers if not host_network else ():
        for port in container.ports:
            protocol = _docker_protocol(port.protocol)
            exposed.append((port.container_port, protocol))
            if port.host_port and not network_disabled:
                key = f"{port.container_port}/{protocol}"
                bindings.setdefault(key, []).append((port.host_ip or node_ip, port.host_port))
    security_container, security_host = _sandbox_security(pod, runtime_default_seccomp)
    host_config_kwargs: dict[str, Any] = {
        "port_bindings": bindings or None,
        # Shareable (the host's is too) so the pod's containers can join its IPC namespace.
        "ipc_mode": "host" if pod.spec.host_ipc else "shareable",
        "log_config": LOG_CONFIG,
        **security_host,
    }
    if host_network:
        host_config_kwargs["network_mode"] = "host"
    if pod.spec.host_pid:
        host_config_kwargs["pid_mode"] = "host"
    if dns is not None and not network_disabled:
        host_config_kwargs["dns"] = list(dns.nameservers) or None
        host_config_kwargs["dns_search"] = list(dns.searches) or None
        host_config_kwargs["dns_opt"] = list(dns.options) or None
    container_kwargs: dict[str, Any] = {
        "hostname": pod_hostname(pod) if not host_network else None,
        "ports": exposed or None,
        # A new network namespace with only lo: the kubelet's pod network wires it.
        "network_disabled": network_disabled or None,
        **security_container,
    }
    return CreateRequest(
        name=name,
        image=pause_image,
        labels=labels,
        container_kwargs=container_kwargs,
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
    image_user: str | None = None,
    seccomp_profiles: Mapping[str, str] | None = None,
) -> CreateRequest:
    """An app container joined to the infra container's network and IPC
    namespaces (the host's when the pod asks for them), and to the host's PID
    namespace with hostPID.

    managed_files: files the kubelet writes for the pod (/etc/hosts,
    /etc/resolv.conf) by path in the container, each bind-mounted unless the
    container mounts a volume there itself.

    command replaces the image's entrypoint and args its cmd, as in Kubernetes;
    Docker drops the image's cmd when the entrypoint is replaced, which is also
    Kubernetes' rule.

    service_env: the service variables the pod sees (envvars.pod_service_environment),
    under the container's own env; $(VAR) in env, command and args is expanded.

    image_user: the image's user, read when runAsNonRoot has to be checked
    against it (needs_image_user); seccomp_profiles: the JSON of the Localhost
    seccomp profiles it uses (localhost_profiles), by localhostProfile. A
    container that may not run as asked (runAsNonRoot and a root user) is a
    ContainerConfigError, as Kubernetes' CreateContainerConfigError.
    """
    security_container, security_host = _container_security(
        pod,
        container,
        runtime_default_seccomp=runtime_default_seccomp,
        image_user=image_user,
        seccomp_profiles=seccomp_profiles or {},
    )
    environment = container_environment(container, service_env or {})
    command, args = expand_command_and_args(container, environment)
    container_kwargs: dict[str, Any] = {
        "environment": [f"{name}={value}" for name, value in environment.items()] or None,
        "working_dir": container.working_dir or None,
        **security_container,
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
        **security_host,
        **_resources(container),
    }
    if pod.spec.host_pid:
        host_config_kwargs["pid_mode"] = "host"
    return CreateRequest(
        name=name,
        image=container.image,
        labels=labels,
        container_kwargs=container_kwargs,
        host_config_kwargs=host_config_kwargs,
        sandbox_id=infra_id,
    )
