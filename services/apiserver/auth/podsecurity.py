"""Pod Security admission: the privileged, baseline and restricted levels, per namespace.

After Kubernetes' Pod Security admission (k8s.io/pod-security-admission) and the Pod
Security Standards it enforces. A namespace's level is the value of its
`pod-security.kubernetes.io/enforce` label; a namespace without the label, or without a
Namespace object, has the API server's default level (`baseline`, as Kubernetes' flag
default). Every control of the standards that applies to a field this API has is checked
(`check_pod`); a pod that fails any is refused as a whole, naming every violation with its
field path.

Refusals are PERMISSION_DENIED, as Kubernetes answers 403 Forbidden: the pod is well
formed (validation passed), it is the namespace's policy that does not allow it, and an
administrator can change that policy (label the namespace) where a client cannot fix an
INVALID_ARGUMENT but by changing the pod. A namespace label that names no level is
INVALID_ARGUMENT, as Kubernetes answers 422 Invalid.

As in Kubernetes, a pod is checked when it is created, and on update only when an image
changes (the rest of a pod's spec cannot change, see validation.validate_pod_update); status
and binding writes are not checked. Mirror pods are exempt: they are copies of static pods a
kubelet runs from its own manifests whatever the API says, and no kubelet runs an API pod
that carries the mirror annotation (which an update may neither add nor remove). Users and
namespaces in the exemption lists are exempt too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Mapping

import grpc

from kybernetes.v1 import pod_pb2
from services.common.resources import NAMESPACES, PODS
from services.common.validation import MIRROR_POD_ANNOTATION, not_supported, show_value

from ..errors import ApiError, invalid, listed_message
from ..registry import Registry
from .admission import CREATE, UPDATE, AdmissionPlugin, AdmissionRequest

PRIVILEGED, BASELINE, RESTRICTED = "privileged", "baseline", "restricted"
LEVELS = (PRIVILEGED, BASELINE, RESTRICTED)
DEFAULT_LEVEL = BASELINE
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"

# The capabilities baseline lets a container add: the container runtime's default set.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
ALL_CAPABILITIES = "ALL"
RUNTIME_DEFAULT, LOCALHOST = "RuntimeDefault", "Localhost"
# Seccomp profile types baseline allows when one is set (undefined is allowed too); restricted
# requires one of them, set on the pod or on every container.
ALLOWED_SECCOMP_TYPES = (RUNTIME_DEFAULT, LOCALHOST)
# Volume sources restricted allows, of the ones a Volume has (emptyDir; Kubernetes also
# allows configMap, secret, projected, ... which this API does not have). Any other source,
# including one added to the API later, is refused until it is listed here.
RESTRICTED_VOLUME_SOURCES = frozenset({"empty_dir"})


@dataclass(frozen=True)
class Violation:
    """One field of a pod that its namespace's level does not allow, and why."""

    field_path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field_path}: {self.reason}"


def capability_name(name: str) -> str:
    """A capability as the runtime reads it: Docker takes "sys_admin" and "CAP_SYS_ADMIN" for
    SYS_ADMIN, so a check that compared the text as given could be walked around."""
    upper = name.strip().upper()
    return upper.removeprefix("CAP_")


def check_pod(level: str, pod: pod_pb2.Pod) -> list[Violation]:
    """Every violation of level's controls in pod (empty: the level allows it). Raises
    ValueError for a level that is not one of LEVELS."""
    if level not in LEVELS:
        raise ValueError(f"unknown Pod Security level {level!r}: must be one of {', '.join(LEVELS)}")
    if level == PRIVILEGED:
        return []
    restricted = level == RESTRICTED
    spec = pod.spec
    violations: list[Violation] = []
    _check_host_namespaces(spec, violations)
    for i, container in enumerate(spec.containers):
        _check_container(container, f"spec.containers[{i}]", restricted, violations)
    _check_volumes(spec, restricted, violations)
    _check_pod_seccomp(spec, restricted, violations)
    if restricted:
        _check_non_root(spec, violations)
    return violations


def _check_host_namespaces(spec: pod_pb2.PodSpec, violations: list[Violation]) -> None:
    for field, path, what in (
        ("host_network", "spec.hostNetwork", "network"),
        ("host_pid", "spec.hostPID", "process ID"),
        ("host_ipc", "spec.hostIPC", "IPC"),
    ):
        if getattr(spec, field):
            violations.append(
                Violation(path, f"host namespaces are forbidden (this shares the host's {what} namespace)")
            )


def _check_container(container: pod_pb2.Container, path: str, restricted: bool, violations: list[Violation]) -> None:
    context = container.security_context
    context_path = f"{path}.securityContext"
    if context.HasField("privileged") and context.privileged:
        violations.append(Violation(f"{context_path}.privileged", "privileged containers are forbidden"))
    _check_capabilities(context, context_path, restricted, violations)
    for j, port in enumerate(container.ports):
        if port.host_port:
            violations.append(Violation(f"{path}.ports[{j}].hostPort", "host ports are forbidden"))
    for field, name in (("liveness_probe", "livenessProbe"), ("readiness_probe", "readinessProbe")):
        if container.HasField(field):
            _check_probe_hosts(getattr(container, field), f"{path}.{name}", violations)
    if context.HasField("seccomp_profile"):
        _check_seccomp_type(context.seccomp_profile, f"{context_path}.seccompProfile.type", restricted, violations)
    if restricted and not (context.HasField("allow_privilege_escalation") and not context.allow_privilege_escalation):
        violations.append(
            Violation(
                f"{context_path}.allowPrivilegeEscalation",
                "must be set to false (privilege escalation, as through a set-user-ID file, is forbidden)",
            )
        )


def _check_capabilities(
    context: pod_pb2.SecurityContext, path: str, restricted: bool, violations: list[Violation]
) -> None:
    capabilities = context.capabilities
    allowed = RESTRICTED_CAPABILITIES if restricted else BASELINE_CAPABILITIES
    for k, name in enumerate(capabilities.add):
        if capability_name(name) not in allowed:
            allowed_text = "NET_BIND_SERVICE" if restricted else "the runtime's default set"
            violations.append(
                Violation(
                    f"{path}.capabilities.add[{k}]",
                    f"adding capability {show_value(name)} is forbidden (allowed: {allowed_text})",
                )
            )
    if restricted and ALL_CAPABILITIES not in {capability_name(name) for name in capabilities.drop}:
        violations.append(Violation(f"{path}.capabilities.drop", 'must include "ALL"'))


def _check_probe_hosts(probe: pod_pb2.Probe, path: str, violations: list[Violation]) -> None:
    """Since Kubernetes 1.34 a probe connects to the pod's own address only: a probe host is
    the kubelet connecting, from the node, wherever the pod's author points it."""
    for field, name in (("http_get", "httpGet"), ("tcp_socket", "tcpSocket")):
        if probe.HasField(field) and getattr(probe, field).host:
            violations.append(
                Violation(
                    f"{path}.{name}.host",
                    f"probe host {show_value(getattr(probe, field).host)} is forbidden "
                    "(a probe connects to the pod's own address)",
                )
            )


def _check_seccomp_type(
    profile: pod_pb2.SeccompProfile, path: str, restricted: bool, violations: list[Violation]
) -> None:
    """A seccomp profile that is set: baseline refuses every type but the allowed ones (left
    undefined is allowed), restricted requires one of them."""
    if profile.type in ALLOWED_SECCOMP_TYPES or (not profile.type and not restricted):
        return
    if profile.type:
        reason = f"seccomp profile type {show_value(profile.type)} is forbidden"
    else:
        reason = "must be set"
    violations.append(Violation(path, f'{reason} (allowed: "{RUNTIME_DEFAULT}" or "{LOCALHOST}")'))


def _check_pod_seccomp(spec: pod_pb2.PodSpec, restricted: bool, violations: list[Violation]) -> None:
    context = spec.security_context
    pod_set = context.HasField("seccomp_profile")
    if pod_set:
        _check_seccomp_type(context.seccomp_profile, "spec.securityContext.seccompProfile.type", restricted, violations)
    if not restricted:
        return
    # A container without a profile of its own has the pod's, which must then be allowed.
    pod_allowed = pod_set and context.seccomp_profile.type in ALLOWED_SECCOMP_TYPES
    for i, container in enumerate(spec.containers):
        if not container.security_context.HasField("seccomp_profile") and not pod_allowed:
            violations.append(
                Violation(
                    f"spec.containers[{i}].securityContext.seccompProfile.type",
                    f'must be "{RUNTIME_DEFAULT}" or "{LOCALHOST}", here or in spec.securityContext.seccompProfile',
                )
            )


def _check_volumes(spec: pod_pb2.PodSpec, restricted: bool, violations: list[Violation]) -> None:
    for i, volume in enumerate(spec.volumes):
        if volume.HasField("host_path"):
            violations.append(Violation(f"spec.volumes[{i}].hostPath", "hostPath volumes are forbidden"))
        if not restricted:
            continue
        for field in volume.DESCRIPTOR.fields:
            source = field.name
            if field.message_type is None or source == "host_path" or source in RESTRICTED_VOLUME_SOURCES:
                continue
            if volume.HasField(source):
                violations.append(
                    Violation(f"spec.volumes[{i}].{field.json_name}", "restricted volume types are forbidden")
                )


def _check_non_root(spec: pod_pb2.PodSpec, violations: list[Violation]) -> None:
    """Restricted: every container runs as non-root (runAsNonRoot true, on the pod or on the
    container) and none names user 0."""
    context = spec.security_context
    pod_non_root = False
    if context.HasField("run_as_non_root"):
        if context.run_as_non_root:
            pod_non_root = True
        else:
            violations.append(Violation("spec.securityContext.runAsNonRoot", "must not be false"))
    if context.HasField("run_as_user") and context.run_as_user == 0:
        violations.append(Violation("spec.securityContext.runAsUser", "must not be 0 (root)"))
    for i, container in enumerate(spec.containers):
        own = container.security_context
        path = f"spec.containers[{i}].securityContext"
        if own.HasField("run_as_non_root"):
            if not own.run_as_non_root:
                violations.append(Violation(f"{path}.runAsNonRoot", "must not be false"))
        elif not pod_non_root:
            violations.append(Violation(f"{path}.runAsNonRoot", "must be true, here or in spec.securityContext"))
        if own.HasField("run_as_user") and own.run_as_user == 0:
            violations.append(Violation(f"{path}.runAsUser", "must not be 0 (root)"))


def forbidden_message(pod_name: str, level: str, violations: list[Violation]) -> str:
    """`pods "p" is forbidden: violates PodSecurity "baseline": <path>: <reason>; ...`, with as
    many violations as fit a gRPC status trailer and the count of the rest."""
    head = f"pods {show_value(pod_name)} is forbidden: violates PodSecurity {show_value(level)}: "
    return listed_message(head, violations, "violations")


def _is_significant_update(pod: pod_pb2.Pod, old: pod_pb2.Pod) -> bool:
    """Kubernetes checks an update only when what it may change is what changed: images
    (and the number of containers, which validation refuses to change anyway)."""
    return [c.image for c in pod.spec.containers] != [c.image for c in old.spec.containers]


class PodSecurity:
    """The enforce mode of Kubernetes' PodSecurity admission plugin, and its check of the
    namespace label that sets the level."""

    name = "PodSecurity"

    def __init__(
        self,
        registries: Mapping[str, Registry],
        *,
        default_level: str = DEFAULT_LEVEL,
        exempt_users: Iterable[str] = (),
        exempt_namespaces: Iterable[str] = (),
    ) -> None:
        if default_level not in LEVELS:
            raise ValueError(f"Pod Security default level {default_level!r}: must be one of {', '.join(LEVELS)}")
        self.registries = registries
        self.default_level = default_level
        self.exempt_users: Collection[str] = frozenset(exempt_users)
        self.exempt_namespaces: Collection[str] = frozenset(exempt_namespaces)

    def level_of(self, namespace: str) -> str:
        """The level pods in namespace are held to."""
        found = self.registries[NAMESPACES.name].cache.get("", namespace)
        if found is None:
            return self.default_level
        value = found.metadata.labels.get(ENFORCE_LABEL)
        if value is None:
            return self.default_level
        # A label stored before it was checked, naming no level: fail closed, as Kubernetes.
        return value if value in LEVELS else RESTRICTED

    def admit(self, request: AdmissionRequest) -> None:
        if request.kind.name == NAMESPACES.name:
            self._admit_namespace(request)
        elif request.kind.name == PODS.name:
            self._admit_pod(request)

    def _admit_pod(self, request: AdmissionRequest) -> None:
        if request.subresource or request.operation not in (CREATE, UPDATE):
            return
        pod = request.obj
        if MIRROR_POD_ANNOTATION in pod.metadata.annotations:
            return
        if request.user.name in self.exempt_users or pod.metadata.namespace in self.exempt_namespaces:
            return
        if request.operation == UPDATE and request.old is not None and not _is_significant_update(pod, request.old):
            return
        level = self.level_of(pod.metadata.namespace)
        violations = check_pod(level, pod)
        if violations:
            raise ApiError(grpc.StatusCode.PERMISSION_DENIED, forbidden_message(pod.metadata.name, level, violations))

    def _admit_namespace(self, request: AdmissionRequest) -> None:
        if request.operation not in (CREATE, UPDATE):
            return
        value = request.obj.metadata.labels.get(ENFORCE_LABEL)
        if value is None or value in LEVELS:
            return
        # On update, only a change is refused: a namespace with a bad label stored before
        # this check can still have its other fields changed.
        if request.operation == UPDATE and request.old is not None:
            if request.old.metadata.labels.get(ENFORCE_LABEL) == value:
                return
        path = f"metadata.labels[{ENFORCE_LABEL}]"
        raise invalid(NAMESPACES.name, request.obj.metadata.name, [not_supported(path, value, LEVELS)])


def admission_plugins(
    registries: Mapping[str, Registry],
    *,
    default_level: str = DEFAULT_LEVEL,
    exempt_users: Iterable[str] = (),
    exempt_namespaces: Iterable[str] = (),
) -> list[AdmissionPlugin]:
    return [
        PodSecurity(
            registries, default_level=default_level, exempt_users=exempt_users, exempt_namespaces=exempt_namespaces
        )
    ]
