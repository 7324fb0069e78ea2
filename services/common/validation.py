"""Validation of every API kind, before anything is written.

Each function returns every problem it finds as a FieldError whose path uses
the Kubernetes JSON names (`spec.containers[1].ports[0].containerPort`,
`metadata.labels`, `spec.template.spec.restartPolicy`), so an error message
points at the line of the user's manifest. The wording follows Kubernetes'
`field.Error`: "Required value", `Invalid value: "x": reason`,
`Unsupported value: "x": supported values: ...`, `Duplicate value: "x"`.

The server validates after `defaults.apply_defaults`; fields with a fixed
default (protocol, restartPolicy, namespace, ...) are also accepted empty so
that a manifest can be checked before it is sent. An RC's selector has no
fixed default (it comes from the template), so it must be set by then.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping

from google.protobuf.message import Message

from kybernetes.v1 import (
    coordination_pb2,
    endpoints_pb2,
    meta_pb2,
    namespace_pb2,
    node_pb2,
    pod_pb2,
    rbac_pb2,
    replication_controller_pb2,
    service_pb2,
)
from services.common.quantity import QuantityError, parse_quantity
from services.common.resources import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    ENDPOINTS,
    LEASES,
    NAMESPACES,
    NODES,
    PODS,
    REPLICATION_CONTROLLERS,
    ROLE_BINDINGS,
    ROLES,
    SERVICES,
    kind_for,
)
from services.common.selectors import (
    LabelSelector,
    validate_dns1035_label,
    validate_dns1123_label,
    validate_dns1123_subdomain,
    validate_label_key,
    validate_label_value,
)


@dataclass(frozen=True)
class FieldError:
    """One problem: where it is (a JSON path) and what is wrong."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


NameValidator = Callable[[str], "str | None"]

# ---------------------------------------------------------------------------
# Error constructors, worded as Kubernetes' field.Error.


# A value quoted in an error message is cut to this many characters: an error names
# the field and shows enough of the value to recognise it, never all of a huge one
# (the message travels in a gRPC trailer, which has a size limit).
MAX_SHOWN_VALUE = 256


def show_value(value: Any) -> str:
    """value as an error message quotes it: JSON, cut to MAX_SHOWN_VALUE characters
    with "…(N more characters)" saying how much was left out."""
    if isinstance(value, str):
        if len(value) > MAX_SHOWN_VALUE:
            more = len(value) - MAX_SHOWN_VALUE
            return json.dumps(value[:MAX_SHOWN_VALUE]) + f"…({more} more characters)"
        return json.dumps(value)
    if isinstance(value, Mapping):
        text = json.dumps(dict(value), sort_keys=True)
    else:
        text = str(value)
    if len(text) > MAX_SHOWN_VALUE:
        return f"{text[:MAX_SHOWN_VALUE]}…({len(text) - MAX_SHOWN_VALUE} more characters)"
    return text


_show = show_value


def required(path: str, detail: str = "") -> FieldError:
    return FieldError(path, f"Required value: {detail}" if detail else "Required value")


def invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError(path, f"Invalid value: {_show(value)}: {detail}")


def not_supported(path: str, value: Any, supported: Iterable[str]) -> FieldError:
    choices = ", ".join(json.dumps(s) for s in supported)
    return FieldError(path, f"Unsupported value: {_show(value)}: supported values: {choices}")


def duplicate(path: str, value: Any) -> FieldError:
    return FieldError(path, f"Duplicate value: {_show(value)}")


def _check_format(path: str, value: str, validator: Callable[[str], str | None], errors: list[FieldError]) -> bool:
    """Records why value is malformed, if it is; True when it is well formed."""
    reason = validator(value)
    if reason:
        errors.append(invalid(path, value, reason))
    return reason is None


def _check_unique_label(path: str, value: str, seen: set[str], errors: list[FieldError]) -> None:
    """A DNS-1123 label that no sibling (container, volume, port) already uses."""
    if _check_format(path, value, validate_dns1123_label, errors) and value in seen:
        errors.append(duplicate(path, value))
    seen.add(value)


def not_found(path: str, value: Any) -> FieldError:
    return FieldError(path, f"Not found: {_show(value)}")


def forbidden(path: str, detail: str) -> FieldError:
    return FieldError(path, f"Forbidden: {detail}")


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _index(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _key(path: str, key: str) -> str:
    return f"{path}[{key}]"


# ---------------------------------------------------------------------------
# Shared rules

PORT_RANGE = "must be between 1 and 65535, inclusive"
NON_NEGATIVE = "must be greater than or equal to 0"
CONTAINER_PORT_PROTOCOLS = ("SCTP", "TCP", "UDP")
# The proxy forwards TCP and UDP only.
SERVICE_PROTOCOLS = ("TCP", "UDP")
RESTART_POLICIES = ("Always", "Never", "OnFailure")
IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
RESOURCE_NAMES = ("cpu", "ephemeral-storage", "memory")
HOST_PATH_TYPES = (
    "",
    "BlockDevice",
    "CharDevice",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
)
STORAGE_MEDIA = ("", "Memory")
POD_PHASES = ("Failed", "Pending", "Running", "Succeeded", "Unknown")
SERVICE_TYPES = ("ClusterIP", "NodePort")
HEADLESS_CLUSTER_IP = "None"  # spec.clusterIP of a headless service: no virtual IP
SESSION_AFFINITIES = ("ClientIP", "None")
URI_SCHEMES = ("HTTP", "HTTPS")
DNS_POLICIES = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")
DNS_POLICY_NONE = "None"
# libc's resolver limits, as Kubernetes' validation states them.
MAX_DNS_NAMESERVERS = 3
MAX_DNS_SEARCH_PATHS = 32
MAX_DNS_SEARCH_LIST_CHARS = 2048
TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024

_IANA_SVC_NAME_MAX_LENGTH = 15
_IANA_SVC_NAME_CHARS = re.compile(r"[-a-z0-9]+")
_ENV_VAR_NAME_FMT = "[-._a-zA-Z][-._a-zA-Z0-9]*"
_ENV_VAR_NAME_RE = re.compile(_ENV_VAR_NAME_FMT)
_HTTP_HEADER_NAME_RE = re.compile(r"[-A-Za-z0-9]+")


def port_name_reason(name: str) -> str | None:
    """Why `name` is not an IANA service name (container port names, named targets), or None."""
    if len(name) > _IANA_SVC_NAME_MAX_LENGTH:
        return f"must be no more than {_IANA_SVC_NAME_MAX_LENGTH} characters"
    if not _IANA_SVC_NAME_CHARS.fullmatch(name):
        return "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
    if not re.search("[a-z]", name):
        return "must contain at least one letter (a-z)"
    if "--" in name:
        return "must not contain consecutive hyphens"
    if name.startswith("-") or name.endswith("-"):
        return "must not begin or end with a hyphen"
    return None


def _looks_numeric(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def _validate_port_number(path: str, port: int, errors: list[FieldError]) -> None:
    if not 1 <= port <= 65535:
        errors.append(invalid(path, port, PORT_RANGE))


def _validate_int_or_port_name(
    path: str, value: str, errors: list[FieldError], *, known_names: Iterable[str] | None = None
) -> None:
    """A port given as a number ("8080") or an IANA name ("http"); names must be known if given."""
    if _looks_numeric(value):
        port = int(value)
        if not 1 <= port <= 65535:
            errors.append(invalid(path, value, PORT_RANGE))
        return
    reason = port_name_reason(value)
    if reason:
        errors.append(invalid(path, value, reason))
    elif known_names is not None and value not in set(known_names):
        errors.append(invalid(path, value, "must be a port number or the name of a port of the container"))


def _validate_non_negative(path: str, value: int, errors: list[FieldError]) -> None:
    if value < 0:
        errors.append(invalid(path, value, NON_NEGATIVE))


def _validate_ip(path: str, value: str, errors: list[FieldError]) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        errors.append(invalid(path, value, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))


def _validate_absolute_path(path: str, value: str, errors: list[FieldError]) -> None:
    if not value:
        errors.append(required(path))
    elif not value.startswith("/"):
        errors.append(invalid(path, value, "must be an absolute path"))


def validate_labels(labels: Mapping[str, str], path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for key in sorted(labels):
        reason = validate_label_key(key)
        if reason:
            errors.append(invalid(path, key, reason))
        reason = validate_label_value(labels[key])
        if reason:
            errors.append(invalid(_key(path, key), labels[key], reason))
    return errors


def validate_annotations(annotations: Mapping[str, str], path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    total = 0
    for key in sorted(annotations):
        reason = validate_label_key(key)
        if reason:
            errors.append(invalid(path, key, reason))
        total += len(key) + len(annotations[key])
    if total > TOTAL_ANNOTATION_SIZE_LIMIT:
        errors.append(FieldError(path, f"Too long: must have at most {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"))
    return errors


def _validate_type_meta(obj: Any, kind_name: str, errors: list[FieldError]) -> None:
    api_version = kind_for(kind_name).api_version
    if obj.api_version not in ("", api_version):
        errors.append(not_supported("apiVersion", obj.api_version, [api_version]))
    if obj.kind not in ("", kind_name):
        errors.append(not_supported("kind", obj.kind, [kind_name]))


def _mask_trailing_dash(name: str) -> str:
    # A generateName prefix may end in '-' (the server appends a suffix).
    return name[:-1] + "a" if len(name) > 1 and name.endswith("-") else name


def validate_object_meta(
    meta: meta_pb2.ObjectMeta,
    namespaced: bool,
    path: str = "metadata",
    *,
    name_validator: NameValidator = validate_dns1123_subdomain,
) -> list[FieldError]:
    """Name (or generateName), namespace, labels, annotations and owner references."""
    errors: list[FieldError] = []
    if meta.name:
        reason = name_validator(meta.name)
        if reason:
            errors.append(invalid(_child(path, "name"), meta.name, reason))
    elif meta.generate_name:
        reason = name_validator(_mask_trailing_dash(meta.generate_name))
        if reason:
            errors.append(invalid(_child(path, "generateName"), meta.generate_name, reason))
    else:
        errors.append(required(_child(path, "name"), "name or generateName is required"))
    if namespaced:
        if meta.namespace:
            _check_format(_child(path, "namespace"), meta.namespace, validate_dns1123_label, errors)
    elif meta.namespace:
        errors.append(forbidden(_child(path, "namespace"), "not allowed on this type"))
    if meta.generation < 0:
        errors.append(invalid(_child(path, "generation"), meta.generation, NON_NEGATIVE))
    errors += validate_labels(meta.labels, _child(path, "labels"))
    errors += validate_annotations(meta.annotations, _child(path, "annotations"))
    controllers = 0
    for i, ref in enumerate(meta.owner_references):
        ref_path = _index(_child(path, "ownerReferences"), i)
        if not ref.kind:
            errors.append(required(_child(ref_path, "kind")))
        if not ref.name:
            errors.append(required(_child(ref_path, "name")))
        controllers += ref.controller
    if controllers > 1:
        errors.append(
            invalid(_child(path, "ownerReferences"), controllers, "only one reference can have controller set to true")
        )
    return errors


def _validate_template_meta(meta: meta_pb2.ObjectMeta, path: str) -> list[FieldError]:
    # A template's name and namespace are not used (each pod gets its own).
    return validate_labels(meta.labels, _child(path, "labels")) + validate_annotations(
        meta.annotations, _child(path, "annotations")
    )


# ---------------------------------------------------------------------------
# Pods


def _validate_quantity(path: str, text: str, errors: list[FieldError]) -> Fraction | None:
    """The value of a non-negative quantity, or None after recording why it is not one."""
    try:
        value = parse_quantity(text)
    except QuantityError as exc:
        errors.append(invalid(path, text, str(exc).split(": ", 1)[-1]))
        return None
    if value < 0:
        errors.append(invalid(path, text, NON_NEGATIVE))
        return None
    return value


def _validate_quantities(
    quantities: Mapping[str, str], path: str, errors: list[FieldError], *, restrict_names: bool
) -> dict[str, Fraction]:
    parsed = {}
    for name in sorted(quantities):
        key_path = _key(path, name)
        if restrict_names and name not in RESOURCE_NAMES:
            errors.append(not_supported(key_path, name, RESOURCE_NAMES))
            continue
        value = _validate_quantity(key_path, quantities[name], errors)
        if value is not None:
            parsed[name] = value
    return parsed


def _validate_resources(resources: pod_pb2.ResourceRequirements, path: str, errors: list[FieldError]) -> None:
    limits_path = _child(path, "limits")
    requests_path = _child(path, "requests")
    limits = _validate_quantities(resources.limits, limits_path, errors, restrict_names=True)
    requests = _validate_quantities(resources.requests, requests_path, errors, restrict_names=True)
    for name, request in requests.items():
        limit = limits.get(name)
        if limit is not None and request > limit:
            errors.append(
                invalid(
                    requests_path,
                    resources.requests[name],
                    f"must be less than or equal to {name} limit of {resources.limits[name]}",
                )
            )


def _validate_probe(
    probe: pod_pb2.Probe, path: str, container: pod_pb2.Container, errors: list[FieldError], *, liveness: bool
) -> None:
    handlers = [h for h in ("exec", "http_get", "tcp_socket") if probe.HasField(h)]
    json_names = {"exec": "exec", "http_get": "httpGet", "tcp_socket": "tcpSocket"}
    if not handlers:
        errors.append(required(path, "must specify a handler type"))
    for extra in handlers[1:]:
        errors.append(forbidden(_child(path, json_names[extra]), "may not specify more than 1 handler type"))
    port_names = [p.name for p in container.ports if p.name]
    if probe.HasField("exec") and not probe.exec.command:
        errors.append(required(_child(path, "exec.command")))
    if probe.HasField("http_get"):
        http_path = _child(path, "httpGet")
        action = probe.http_get
        if not action.port:
            errors.append(required(_child(http_path, "port")))
        else:
            _validate_int_or_port_name(_child(http_path, "port"), action.port, errors, known_names=port_names)
        if action.scheme and action.scheme not in URI_SCHEMES:
            errors.append(not_supported(_child(http_path, "scheme"), action.scheme, URI_SCHEMES))
        if action.path and not action.path.startswith("/"):
            errors.append(invalid(_child(http_path, "path"), action.path, "must be an absolute path"))
        for i, header in enumerate(action.http_headers):
            if not _HTTP_HEADER_NAME_RE.fullmatch(header.name):
                errors.append(
                    invalid(
                        _child(_index(_child(http_path, "httpHeaders"), i), "name"),
                        header.name,
                        "a valid HTTP header name must consist of alphanumeric characters or '-'",
                    )
                )
    if probe.HasField("tcp_socket"):
        tcp_path = _child(path, "tcpSocket")
        if not probe.tcp_socket.port:
            errors.append(required(_child(tcp_path, "port")))
        else:
            _validate_int_or_port_name(_child(tcp_path, "port"), probe.tcp_socket.port, errors, known_names=port_names)
    for field, json_name in (
        ("initial_delay_seconds", "initialDelaySeconds"),
        ("timeout_seconds", "timeoutSeconds"),
        ("period_seconds", "periodSeconds"),
        ("success_threshold", "successThreshold"),
        ("failure_threshold", "failureThreshold"),
    ):
        _validate_non_negative(_child(path, json_name), getattr(probe, field), errors)
    if liveness and probe.success_threshold > 1:
        errors.append(invalid(_child(path, "successThreshold"), probe.success_threshold, "must be 1"))


def _validate_container(
    container: pod_pb2.Container, path: str, volume_names: set[str], errors: list[FieldError]
) -> None:
    if not container.image:
        errors.append(required(_child(path, "image")))
    elif container.image != container.image.strip():
        errors.append(invalid(_child(path, "image"), container.image, "must not have leading or trailing whitespace"))
    if container.image_pull_policy and container.image_pull_policy not in IMAGE_PULL_POLICIES:
        errors.append(not_supported(_child(path, "imagePullPolicy"), container.image_pull_policy, IMAGE_PULL_POLICIES))

    port_names: set[str] = set()
    for i, port in enumerate(container.ports):
        port_path = _index(_child(path, "ports"), i)
        if port.name:
            reason = port_name_reason(port.name)
            if reason:
                errors.append(invalid(_child(port_path, "name"), port.name, reason))
            elif port.name in port_names:
                errors.append(duplicate(_child(port_path, "name"), port.name))
            port_names.add(port.name)
        if port.container_port == 0:
            errors.append(required(_child(port_path, "containerPort")))
        else:
            _validate_port_number(_child(port_path, "containerPort"), port.container_port, errors)
        if port.host_port != 0:
            _validate_port_number(_child(port_path, "hostPort"), port.host_port, errors)
        if port.protocol and port.protocol not in CONTAINER_PORT_PROTOCOLS:
            errors.append(not_supported(_child(port_path, "protocol"), port.protocol, CONTAINER_PORT_PROTOCOLS))
        if port.host_ip:
            _validate_ip(_child(port_path, "hostIP"), port.host_ip, errors)

    for i, env in enumerate(container.env):
        name_path = _child(_index(_child(path, "env"), i), "name")
        if not env.name:
            errors.append(required(name_path))
        elif not _ENV_VAR_NAME_RE.fullmatch(env.name):
            errors.append(
                invalid(
                    name_path,
                    env.name,
                    "a valid environment variable name must consist of alphabetic characters, digits, "
                    "'_', '-', or '.', and must not start with a digit (e.g. 'my.env-name', or "
                    f"'MY_ENV.NAME', or 'MyEnvName1', regex used for validation is '{_ENV_VAR_NAME_FMT}')",
                )
            )

    mount_paths: set[str] = set()
    for i, mount in enumerate(container.volume_mounts):
        mount_path = _index(_child(path, "volumeMounts"), i)
        if not mount.name:
            errors.append(required(_child(mount_path, "name")))
        elif mount.name not in volume_names:
            errors.append(not_found(_child(mount_path, "name"), mount.name))
        _validate_absolute_path(_child(mount_path, "mountPath"), mount.mount_path, errors)
        if mount.mount_path:
            if mount.mount_path in mount_paths:
                errors.append(invalid(_child(mount_path, "mountPath"), mount.mount_path, "must be unique"))
            mount_paths.add(mount.mount_path)
        if mount.sub_path:
            sub_path = _child(mount_path, "subPath")
            if mount.sub_path.startswith("/"):
                errors.append(invalid(sub_path, mount.sub_path, "must be a relative path"))
            elif ".." in mount.sub_path.split("/"):
                errors.append(invalid(sub_path, mount.sub_path, "must not contain '..'"))

    if container.HasField("resources"):
        _validate_resources(container.resources, _child(path, "resources"), errors)
    if container.HasField("liveness_probe"):
        _validate_probe(container.liveness_probe, _child(path, "livenessProbe"), container, errors, liveness=True)
    if container.HasField("readiness_probe"):
        _validate_probe(container.readiness_probe, _child(path, "readinessProbe"), container, errors, liveness=False)
    _validate_container_security_context(container, path, errors)


# ---------------------------------------------------------------------------
# Security contexts and host namespaces (what the kubelet applies on Docker:
# services/kubelet/dockerspec.py), as Kubernetes' validation has them.

SECCOMP_LOCALHOST = "Localhost"
SECCOMP_PROFILE_TYPES = ("Localhost", "RuntimeDefault", "Unconfined")
# User and group ids, as Kubernetes' IsValidUserID/IsValidGroupID.
MAX_USER_ID = 2**31 - 1
ID_RANGE = f"must be between 0 and {MAX_USER_ID}, inclusive"
CAPABILITY_ALL = "ALL"
# Linux's capabilities (6.x), without the CAP_ prefix: a name Docker does not
# know fails the container at creation, so it is refused here, with its path.
LINUX_CAPABILITIES = frozenset(
    (
        "AUDIT_CONTROL",
        "AUDIT_READ",
        "AUDIT_WRITE",
        "BLOCK_SUSPEND",
        "BPF",
        "CHECKPOINT_RESTORE",
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "IPC_LOCK",
        "IPC_OWNER",
        "KILL",
        "LEASE",
        "LINUX_IMMUTABLE",
        "MAC_ADMIN",
        "MAC_OVERRIDE",
        "MKNOD",
        "NET_ADMIN",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_RAW",
        "PERFMON",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_CHROOT",
        "SYS_MODULE",
        "SYS_NICE",
        "SYS_PACCT",
        "SYS_PTRACE",
        "SYS_RAWIO",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "SYSLOG",
        "WAKE_ALARM",
    )
)
CAPABILITY_NAME = (
    "must be an upper-case Linux capability name, with or without the CAP_ prefix (e.g. 'NET_ADMIN' or "
    "'CAP_NET_ADMIN'), or 'ALL'"
)


def _validate_id(path: str, value: int, errors: list[FieldError]) -> None:
    if not 0 <= value <= MAX_USER_ID:
        errors.append(invalid(path, value, ID_RANGE))


def _validate_seccomp_profile(profile: pod_pb2.SeccompProfile, path: str, errors: list[FieldError]) -> None:
    """Kubernetes' validateSeccompProfileField: a known type; a Localhost
    profile names a file below the kubelet's seccomp directory, and only it does."""
    profile_path = _child(path, "localhostProfile")
    if not profile.type:
        errors.append(required(_child(path, "type")))
    elif profile.type not in SECCOMP_PROFILE_TYPES:
        errors.append(not_supported(_child(path, "type"), profile.type, SECCOMP_PROFILE_TYPES))
    elif profile.type == SECCOMP_LOCALHOST:
        if not profile.localhost_profile:
            errors.append(required(profile_path, "must be set when seccomp type is Localhost"))
        elif profile.localhost_profile.startswith("/"):
            errors.append(invalid(profile_path, profile.localhost_profile, "must be a relative path"))
        elif ".." in profile.localhost_profile.split("/"):
            errors.append(invalid(profile_path, profile.localhost_profile, "must not contain '..'"))
    elif profile.localhost_profile:
        errors.append(
            invalid(profile_path, profile.localhost_profile, "can only be set when seccomp type is Localhost")
        )


def _validate_capabilities(names: Iterable[str], path: str, errors: list[FieldError]) -> None:
    for i, name in enumerate(names):
        if name != CAPABILITY_ALL and name.removeprefix("CAP_") not in LINUX_CAPABILITIES:
            errors.append(invalid(_index(path, i), name, CAPABILITY_NAME))


def _validate_container_security_context(container: pod_pb2.Container, path: str, errors: list[FieldError]) -> None:
    """A container's securityContext (`path` is the container's)."""
    if not container.HasField("security_context"):
        return
    context = container.security_context
    path = _child(path, "securityContext")
    if context.HasField("capabilities"):
        capabilities_path = _child(path, "capabilities")
        _validate_capabilities(context.capabilities.add, _child(capabilities_path, "add"), errors)
        _validate_capabilities(context.capabilities.drop, _child(capabilities_path, "drop"), errors)
    for field, json_name in (("run_as_user", "runAsUser"), ("run_as_group", "runAsGroup")):
        if context.HasField(field):
            _validate_id(_child(path, json_name), getattr(context, field), errors)
    if context.HasField("seccomp_profile"):
        _validate_seccomp_profile(context.seccomp_profile, _child(path, "seccompProfile"), errors)
    if context.HasField("allow_privilege_escalation") and not context.allow_privilege_escalation:
        # no_new_privs cannot hold for a privileged process or one with CAP_SYS_ADMIN.
        if context.privileged:
            errors.append(
                invalid(
                    path,
                    {"allowPrivilegeEscalation": False, "privileged": True},
                    "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
                )
            )
        if any(name.removeprefix("CAP_") == "SYS_ADMIN" for name in context.capabilities.add):
            errors.append(
                invalid(
                    path,
                    {"allowPrivilegeEscalation": False, "capabilities.add": list(context.capabilities.add)},
                    "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
                )
            )


def _validate_pod_security(spec: pod_pb2.PodSpec, path: str, errors: list[FieldError]) -> None:
    """The pod's securityContext, and the ports of a pod on the host's network
    (`path` is the pod spec's)."""
    if spec.HasField("security_context"):
        context = spec.security_context
        context_path = _child(path, "securityContext")
        for field, json_name in (("run_as_user", "runAsUser"), ("run_as_group", "runAsGroup"), ("fs_group", "fsGroup")):
            if context.HasField(field):
                _validate_id(_child(context_path, json_name), getattr(context, field), errors)
        for i, group in enumerate(context.supplemental_groups):
            _validate_id(_index(_child(context_path, "supplementalGroups"), i), group, errors)
        if context.HasField("seccomp_profile"):
            _validate_seccomp_profile(context.seccomp_profile, _child(context_path, "seccompProfile"), errors)
    if spec.host_network:
        # The container port is the host's port: a different hostPort could not be honoured.
        for i, container in enumerate(spec.containers):
            for j, port in enumerate(container.ports):
                if port.host_port and port.host_port != port.container_port:
                    port_path = _index(_child(_index(_child(path, "containers"), i), "ports"), j)
                    errors.append(
                        invalid(
                            _child(port_path, "containerPort"),
                            port.container_port,
                            "must match `hostPort` when `hostNetwork` is true",
                        )
                    )


def _validate_volumes(volumes: Iterable[pod_pb2.Volume], path: str, errors: list[FieldError]) -> set[str]:
    names: set[str] = set()
    for i, volume in enumerate(volumes):
        volume_path = _index(path, i)
        if not volume.name:
            errors.append(required(_child(volume_path, "name")))
        else:
            _check_unique_label(_child(volume_path, "name"), volume.name, names, errors)
        sources = [s for s in ("empty_dir", "host_path") if volume.HasField(s)]
        if not sources:
            errors.append(required(volume_path, "must specify a volume type"))
        elif len(sources) > 1:
            errors.append(forbidden(_child(volume_path, "hostPath"), "may not specify more than 1 volume type"))
        if volume.HasField("empty_dir"):
            empty_dir_path = _child(volume_path, "emptyDir")
            if volume.empty_dir.medium not in STORAGE_MEDIA:
                errors.append(not_supported(_child(empty_dir_path, "medium"), volume.empty_dir.medium, STORAGE_MEDIA))
            if volume.empty_dir.size_limit:
                _validate_quantity(_child(empty_dir_path, "sizeLimit"), volume.empty_dir.size_limit, errors)
        if volume.HasField("host_path"):
            host_path_path = _child(volume_path, "hostPath")
            _validate_absolute_path(_child(host_path_path, "path"), volume.host_path.path, errors)
            if ".." in volume.host_path.path.split("/"):
                errors.append(invalid(_child(host_path_path, "path"), volume.host_path.path, "must not contain '..'"))
            if volume.host_path.type not in HOST_PATH_TYPES:
                errors.append(not_supported(_child(host_path_path, "type"), volume.host_path.type, HOST_PATH_TYPES[1:]))
    return names


def validate_pod_spec(spec: pod_pb2.PodSpec, path: str = "spec") -> list[FieldError]:
    errors: list[FieldError] = []
    volume_names = _validate_volumes(spec.volumes, _child(path, "volumes"), errors)

    containers_path = _child(path, "containers")
    if not spec.containers:
        errors.append(required(containers_path))
    container_names: set[str] = set()
    host_ports: set[str] = set()
    for i, container in enumerate(spec.containers):
        container_path = _index(containers_path, i)
        name_path = _child(container_path, "name")
        if not container.name:
            errors.append(required(name_path))
        else:
            _check_unique_label(name_path, container.name, container_names, errors)
        _validate_container(container, container_path, volume_names, errors)
        # Every container shares the pod's network namespace, so host ports are pod-wide.
        for j, port in enumerate(container.ports):
            if port.host_port == 0:
                continue
            host_port = f"{port.host_port}/{port.protocol or 'TCP'}"
            if host_port in host_ports:
                errors.append(duplicate(_child(_index(_child(container_path, "ports"), j), "hostPort"), host_port))
            host_ports.add(host_port)

    if spec.restart_policy and spec.restart_policy not in RESTART_POLICIES:
        errors.append(not_supported(_child(path, "restartPolicy"), spec.restart_policy, RESTART_POLICIES))
    if spec.HasField("termination_grace_period_seconds"):
        _validate_non_negative(
            _child(path, "terminationGracePeriodSeconds"), spec.termination_grace_period_seconds, errors
        )
    errors += validate_labels(spec.node_selector, _child(path, "nodeSelector"))
    if spec.node_name:
        _check_format(_child(path, "nodeName"), spec.node_name, validate_dns1123_subdomain, errors)
    if spec.hostname:
        _check_format(_child(path, "hostname"), spec.hostname, validate_dns1123_label, errors)
    if spec.dns_policy and spec.dns_policy not in DNS_POLICIES:
        errors.append(not_supported(_child(path, "dnsPolicy"), spec.dns_policy, DNS_POLICIES))
    _validate_pod_dns_config(spec, _child(path, "dnsConfig"), errors)
    _validate_pod_security(spec, path, errors)
    return errors


def _validate_pod_dns_config(spec: pod_pb2.PodSpec, path: str, errors: list[FieldError]) -> None:
    """As Kubernetes' validatePodDNSConfig: dnsPolicy None needs a nameserver
    here; libc's limits; IP nameservers, DNS-1123 searches, named options."""
    has_config = spec.HasField("dns_config")
    config = spec.dns_config
    if spec.dns_policy == DNS_POLICY_NONE:
        if not has_config:
            errors.append(required(path, f"must provide `dnsConfig` when `dnsPolicy` is {DNS_POLICY_NONE}"))
            return
        if not config.nameservers:
            errors.append(
                required(
                    _child(path, "nameservers"),
                    f"must provide at least one DNS nameserver when `dnsPolicy` is {DNS_POLICY_NONE}",
                )
            )
            return
    if not has_config:
        return
    nameservers_path = _child(path, "nameservers")
    if len(config.nameservers) > MAX_DNS_NAMESERVERS:
        errors.append(
            invalid(
                nameservers_path, list(config.nameservers), f"must not have more than {MAX_DNS_NAMESERVERS} nameservers"
            )
        )
    for i, nameserver in enumerate(config.nameservers):
        _validate_ip(_index(nameservers_path, i), nameserver, errors)
    searches_path = _child(path, "searches")
    if len(config.searches) > MAX_DNS_SEARCH_PATHS:
        errors.append(
            invalid(
                searches_path, list(config.searches), f"must not have more than {MAX_DNS_SEARCH_PATHS} search paths"
            )
        )
    if len(" ".join(config.searches)) > MAX_DNS_SEARCH_LIST_CHARS:
        errors.append(
            invalid(
                searches_path,
                list(config.searches),
                f"must not have more than {MAX_DNS_SEARCH_LIST_CHARS} characters (including spaces) in the search list",
            )
        )
    for i, search in enumerate(config.searches):
        # A trailing dot is fine.
        _check_format(_index(searches_path, i), search.removesuffix("."), validate_dns1123_subdomain, errors)
    for i, option in enumerate(config.options):
        if not option.name:
            errors.append(required(_index(_child(path, "options"), i), "Option.Name must not be empty"))


def validate_pod_status(status: pod_pb2.PodStatus, path: str = "status") -> list[FieldError]:
    errors: list[FieldError] = []
    if status.phase and status.phase not in POD_PHASES:
        errors.append(not_supported(_child(path, "phase"), status.phase, POD_PHASES))
    if status.pod_ip:
        _validate_ip(_child(path, "podIP"), status.pod_ip, errors)
    if status.host_ip:
        _validate_ip(_child(path, "hostIP"), status.host_ip, errors)
    for i, container_status in enumerate(status.container_statuses):
        _validate_non_negative(
            _child(_index(_child(path, "containerStatuses"), i), "restartCount"), container_status.restart_count, errors
        )
    return errors


def validate_pod(pod: pod_pb2.Pod) -> list[FieldError]:
    errors: list[FieldError] = []
    _validate_type_meta(pod, PODS.name, errors)
    errors += validate_object_meta(pod.metadata, namespaced=True)
    errors += validate_pod_spec(pod.spec, "spec")
    errors += validate_pod_status(pod.status, "status")
    return errors


# The kubelet's annotation on a mirror pod (the API's copy of one of its static pods). A
# kubelet never runs an API pod that carries it, which is why a mirror pod is exempt from
# Pod Security; so it may be neither added to nor removed from a pod that exists.
MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror"
# What an update of a pod's spec may change, worded as Kubernetes' ValidatePodUpdate lists it
# (of its list, the fields this API has).
POD_UPDATABLE_FIELDS = (
    "`spec.containers[*].image`,"
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
)
# How many changed fields a refused pod update names (a hint; the first ones are enough).
_MAX_CHANGED_FIELDS_SHOWN = 5


def validate_pod_update(pod: pod_pb2.Pod, old: pod_pb2.Pod) -> list[FieldError]:
    """What an update may not change in a stored pod (Kubernetes' ValidatePodUpdate): its
    spec but for the containers' images, and its mirror pod annotation. So an update cannot
    give a running pod a hostPath mount, a host port or a new command. spec.nodeName is set
    by Bind alone."""
    errors: list[FieldError] = []
    _validate_mirror_annotation_update(pod.metadata.annotations, old.metadata.annotations, errors)
    spec, before = pod.spec, old.spec
    if len(spec.containers) != len(before.containers):
        errors.append(forbidden("spec.containers", "pod updates may not add or remove containers"))
        return errors
    # The spec as it would be if only the updatable fields were taken from the update.
    munged = pod_pb2.PodSpec()
    munged.CopyFrom(spec)
    for container, stored in zip(munged.containers, before.containers, strict=True):
        container.image = stored.image
    grace = "termination_grace_period_seconds"
    if before.HasField(grace) and before.termination_grace_period_seconds < 0:
        if munged.HasField(grace) and munged.termination_grace_period_seconds == 1:
            munged.termination_grace_period_seconds = before.termination_grace_period_seconds
    changed = changed_fields(before, munged, "spec")
    if changed:
        shown = ", ".join(changed[:_MAX_CHANGED_FIELDS_SHOWN])
        if len(changed) > _MAX_CHANGED_FIELDS_SHOWN:
            shown += f" and {len(changed) - _MAX_CHANGED_FIELDS_SHOWN} more"
        errors.append(
            forbidden("spec", f"pod updates may not change fields other than {POD_UPDATABLE_FIELDS} (changed: {shown})")
        )
    return errors


def _validate_mirror_annotation_update(
    annotations: Mapping[str, str], old: Mapping[str, str], errors: list[FieldError]
) -> None:
    path = _key("metadata.annotations", MIRROR_POD_ANNOTATION)
    if MIRROR_POD_ANNOTATION in old:
        if annotations.get(MIRROR_POD_ANNOTATION) != old[MIRROR_POD_ANNOTATION]:
            errors.append(forbidden(path, "may not remove or update mirror pod annotation"))
    elif MIRROR_POD_ANNOTATION in annotations:
        errors.append(forbidden(path, "may not add mirror pod annotation"))


def changed_fields(old: Message, new: Message, path: str) -> list[str]:
    """The JSON paths of the fields that differ between two messages of one type, as deep
    as the difference can be placed: into set messages on both sides and into repeated
    messages of equal length; a map, a list that grew or shrank, or a field set on one side
    only is named whole."""
    changed: list[str] = []
    for field in old.DESCRIPTOR.fields:
        name = field.name
        field_path = _child(path, field.json_name)
        before, after = getattr(old, name), getattr(new, name)
        is_message = field.type == field.TYPE_MESSAGE
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if dict(before) != dict(after):
                changed.append(field_path)
        elif field.is_repeated:
            if is_message and len(before) == len(after):
                for i, (item_before, item_after) in enumerate(zip(before, after, strict=True)):
                    changed += changed_fields(item_before, item_after, _index(field_path, i))
            elif list(before) != list(after):
                changed.append(field_path)
        elif field.has_presence and old.HasField(name) != new.HasField(name):
            changed.append(field_path)
        elif is_message:
            changed += changed_fields(before, after, field_path)
        elif before != after:
            changed.append(field_path)
    return changed


# ---------------------------------------------------------------------------
# Services and endpoints


def _validate_named_ports(
    ports: Any, path: str, protocols: Iterable[str], unnamed_reason: str, errors: list[FieldError]
) -> None:
    """Service and endpoint ports: names unique DNS-1123 labels (required when
    there are several), numbers 1-65535, a known protocol."""
    protocols = tuple(protocols)
    names: set[str] = set()
    for i, port in enumerate(ports):
        port_path = _index(path, i)
        name_path = _child(port_path, "name")
        if not port.name:
            if len(ports) > 1:
                errors.append(required(name_path, unnamed_reason))
        else:
            _check_unique_label(name_path, port.name, names, errors)
        _validate_port_number(_child(port_path, "port"), port.port, errors)
        if port.protocol and port.protocol not in protocols:
            errors.append(not_supported(_child(port_path, "protocol"), port.protocol, protocols))


def validate_service(svc: service_pb2.Service) -> list[FieldError]:
    errors: list[FieldError] = []
    _validate_type_meta(svc, SERVICES.name, errors)
    # Service names become DNS names and environment variable prefixes: RFC 1035 labels.
    errors += validate_object_meta(svc.metadata, namespaced=True, name_validator=validate_dns1035_label)
    spec = svc.spec
    ports_path = "spec.ports"
    if not spec.ports:
        errors.append(required(ports_path))
    _validate_named_ports(
        spec.ports, ports_path, SERVICE_PROTOCOLS, "a name is required when a service has more than one port", errors
    )
    port_protocols: set[tuple[int, str]] = set()
    node_ports: set[tuple[int, str]] = set()
    for i, port in enumerate(spec.ports):
        port_path = _index(ports_path, i)
        key = (port.port, port.protocol or "TCP")
        if key in port_protocols:
            errors.append(duplicate(port_path, f"{key[0]}/{key[1]}"))
        port_protocols.add(key)
        if port.target_port:
            _validate_int_or_port_name(_child(port_path, "targetPort"), port.target_port, errors)
        if port.node_port:
            node_port_path = _child(port_path, "nodePort")
            if spec.type in ("", "ClusterIP"):
                errors.append(forbidden(node_port_path, "may not be used when `type` is 'ClusterIP'"))
            else:
                _validate_port_number(node_port_path, port.node_port, errors)
            # One node port may serve a TCP and a UDP port of the service, as in Kubernetes.
            node_key = (port.node_port, port.protocol or "TCP")
            if node_key in node_ports:
                errors.append(duplicate(node_port_path, port.node_port))
            node_ports.add(node_key)
    errors += validate_labels(spec.selector, "spec.selector")
    # The range an IP must be in is the API server's flag: the server checks it when it allocates.
    if spec.cluster_ip == HEADLESS_CLUSTER_IP:
        if spec.type == "NodePort":
            errors.append(invalid("spec.clusterIP", spec.cluster_ip, "may not be set to 'None' for NodePort services"))
    elif spec.cluster_ip:
        _validate_ip("spec.clusterIP", spec.cluster_ip, errors)
    if spec.type and spec.type not in SERVICE_TYPES:
        errors.append(not_supported("spec.type", spec.type, SERVICE_TYPES))
    if spec.session_affinity and spec.session_affinity not in SESSION_AFFINITIES:
        errors.append(not_supported("spec.sessionAffinity", spec.session_affinity, SESSION_AFFINITIES))
    return errors


# Link-local multicast: Go's net.IP.IsLinkLocalMulticast, which Kubernetes' check uses.
_LINK_LOCAL_MULTICAST_V4 = ipaddress.ip_network("224.0.0.0/24")


def _validate_endpoint_ip(path: str, value: str, errors: list[FieldError]) -> None:
    """An IP address that may be an endpoint (Kubernetes' ValidateNonSpecialIP): not one
    that means this host or its link. A service whose endpoint is 127.0.0.1 would have every
    node's proxy relay the service into that node's own loopback services (etcd, the
    kubelet); a link-local one reaches a cloud's metadata service."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        errors.append(invalid(path, value, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))
        return
    # ::ffff:127.0.0.1 is 127.0.0.1 to the kernel (Go parses it as the IPv4 address too).
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        errors.append(invalid(path, value, "may not be unspecified (0.0.0.0, ::)"))
    if address.is_loopback:
        errors.append(invalid(path, value, "may not be in the loopback range (127.0.0.0/8, ::1/128)"))
    if address.is_link_local:
        errors.append(invalid(path, value, "may not be in the link-local range (169.254.0.0/16, fe80::/10)"))
    if isinstance(address, ipaddress.IPv4Address):
        link_local_multicast = address in _LINK_LOCAL_MULTICAST_V4
    else:
        packed = address.packed  # ff02::/16, and ff12::, ff32::...: multicast of link-local scope
        link_local_multicast = packed[0] == 0xFF and packed[1] & 0x0F == 0x02
    if link_local_multicast:
        errors.append(invalid(path, value, "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"))


def validate_endpoints(ep: endpoints_pb2.Endpoints) -> list[FieldError]:
    errors: list[FieldError] = []
    _validate_type_meta(ep, ENDPOINTS.name, errors)
    errors += validate_object_meta(ep.metadata, namespaced=True)
    for i, subset in enumerate(ep.subsets):
        subset_path = _index("subsets", i)
        if not subset.addresses and not subset.not_ready_addresses:
            errors.append(required(subset_path, "must specify `addresses` or `notReadyAddresses`"))
        for field, json_name in (("addresses", "addresses"), ("not_ready_addresses", "notReadyAddresses")):
            for j, address in enumerate(getattr(subset, field)):
                address_path = _index(_child(subset_path, json_name), j)
                if not address.ip:
                    errors.append(required(_child(address_path, "ip")))
                else:
                    _validate_endpoint_ip(_child(address_path, "ip"), address.ip, errors)
                if address.hostname:
                    _check_format(_child(address_path, "hostname"), address.hostname, validate_dns1123_label, errors)
                if address.node_name:
                    _check_format(
                        _child(address_path, "nodeName"), address.node_name, validate_dns1123_subdomain, errors
                    )
        ports_path = _child(subset_path, "ports")
        if not subset.ports:
            errors.append(required(ports_path))
        _validate_named_ports(
            subset.ports,
            ports_path,
            CONTAINER_PORT_PROTOCOLS,
            "a name is required when there is more than one port",
            errors,
        )
    return errors


# ---------------------------------------------------------------------------
# Replication controllers and nodes


def validate_replication_controller(rc: replication_controller_pb2.ReplicationController) -> list[FieldError]:
    errors: list[FieldError] = []
    _validate_type_meta(rc, REPLICATION_CONTROLLERS.name, errors)
    errors += validate_object_meta(rc.metadata, namespaced=True)
    spec = rc.spec
    if spec.HasField("replicas"):
        _validate_non_negative("spec.replicas", spec.replicas, errors)
    _validate_non_negative("spec.minReadySeconds", spec.min_ready_seconds, errors)
    if not spec.selector:
        errors.append(required("spec.selector"))
    else:
        errors += validate_labels(spec.selector, "spec.selector")
    if not spec.HasField("template"):
        errors.append(required("spec.template"))
    else:
        template = spec.template
        errors += _validate_template_meta(template.metadata, "spec.template.metadata")
        if spec.selector and not LabelSelector.from_map(spec.selector).matches(template.metadata.labels):
            errors.append(
                invalid(
                    "spec.template.metadata.labels",
                    template.metadata.labels,
                    "selector does not match template labels",
                )
            )
        errors += validate_pod_spec(template.spec, "spec.template.spec")
        # A controller replaces pods that exit; only pods that always restart fit that.
        if template.spec.restart_policy not in ("", "Always"):
            errors.append(not_supported("spec.template.spec.restartPolicy", template.spec.restart_policy, ["Always"]))
    status = rc.status
    for field, json_name in (
        ("replicas", "replicas"),
        ("ready_replicas", "readyReplicas"),
        ("available_replicas", "availableReplicas"),
        ("fully_labeled_replicas", "fullyLabeledReplicas"),
        ("observed_generation", "observedGeneration"),
    ):
        _validate_non_negative(f"status.{json_name}", getattr(status, field), errors)
    return errors


def validate_node(node: node_pb2.Node) -> list[FieldError]:
    errors: list[FieldError] = []
    _validate_type_meta(node, NODES.name, errors)
    errors += validate_object_meta(node.metadata, namespaced=False)
    if node.spec.pod_cidr:
        try:
            ipaddress.ip_network(node.spec.pod_cidr, strict=False)
        except ValueError:
            errors.append(invalid("spec.podCIDR", node.spec.pod_cidr, "must be a valid CIDR (e.g. 10.244.1.0/24)"))
    status = node.status
    _validate_quantities(status.capacity, "status.capacity", errors, restrict_names=False)
    _validate_quantities(status.allocatable, "status.allocatable", errors, restrict_names=False)
    kubelet_port = status.daemon_endpoints.kubelet_endpoint.port
    if kubelet_port:
        _validate_port_number("status.daemonEndpoints.kubeletEndpoint.Port", kubelet_port, errors)
    for i, address in enumerate(status.addresses):
        address_path = _index("status.addresses", i)
        if not address.type:
            errors.append(required(_child(address_path, "type")))
        if not address.address:
            errors.append(required(_child(address_path, "address")))
        elif address.type in ("InternalIP", "ExternalIP"):
            _validate_ip(_child(address_path, "address"), address.address, errors)
    return errors


def validate_namespace(ns: namespace_pb2.Namespace) -> list[FieldError]:
    errors: list[FieldError] = []
    _validate_type_meta(ns, NAMESPACES.name, errors)
    errors += validate_object_meta(ns.metadata, namespaced=False, name_validator=validate_dns1123_label)
    return errors


def validate_path_segment_name(name: str) -> str | None:
    """RBAC object names may hold colons ("system:node"): Kubernetes' path segment rule."""
    if name in (".", ".."):
        return f'may not be "{name}"'
    for bad in ("/", "%"):
        if bad in name:
            return f'may not contain "{bad}"'
    if len(name) > 253:
        return "must be no more than 253 characters"
    return None


RBAC_SUBJECT_KINDS = ("User", "Group", "ServiceAccount")
RBAC_API_GROUP = "rbac.authorization.k8s.io"


def _validate_rules(rules: Iterable[rbac_pb2.PolicyRule], errors: list[FieldError]) -> None:
    for i, rule in enumerate(rules):
        path = _index("rules", i)
        if not rule.verbs:
            errors.append(required(_child(path, "verbs"), "verbs must contain at least one value"))
        if rule.non_resource_urls and (rule.resources or rule.api_groups):
            errors.append(
                invalid(
                    _child(path, "nonResourceURLs"),
                    list(rule.non_resource_urls),
                    "rules cannot apply to both regular resources and non-resource URLs",
                )
            )
        elif not rule.non_resource_urls:
            if not rule.api_groups:
                errors.append(required(_child(path, "apiGroups"), "resource rules must supply at least one api group"))
            if not rule.resources:
                errors.append(required(_child(path, "resources"), "resource rules must supply at least one resource"))


def _validate_role(role: Any, kind_name: str, namespaced: bool) -> list[FieldError]:
    errors: list[FieldError] = []
    _validate_type_meta(role, kind_name, errors)
    errors += validate_object_meta(role.metadata, namespaced=namespaced, name_validator=validate_path_segment_name)
    _validate_rules(role.rules, errors)
    return errors


def validate_role(role: rbac_pb2.Role) -> list[FieldError]:
    return _validate_role(role, ROLES.name, namespaced=True)


def validate_cluster_role(role: rbac_pb2.ClusterRole) -> list[FieldError]:
    return _validate_role(role, CLUSTER_ROLES.name, namespaced=False)


def _validate_binding(binding: Any, kind_name: str, namespaced: bool) -> list[FieldError]:
    errors: list[FieldError] = []
    _validate_type_meta(binding, kind_name, errors)
    errors += validate_object_meta(binding.metadata, namespaced=namespaced, name_validator=validate_path_segment_name)
    ref = binding.role_ref
    allowed_ref_kinds = ["Role", "ClusterRole"] if namespaced else ["ClusterRole"]
    if ref.api_group not in ("", RBAC_API_GROUP):
        errors.append(not_supported("roleRef.apiGroup", ref.api_group, [RBAC_API_GROUP]))
    if not ref.kind:
        errors.append(required("roleRef.kind"))
    elif ref.kind not in allowed_ref_kinds:
        errors.append(not_supported("roleRef.kind", ref.kind, allowed_ref_kinds))
    if not ref.name:
        errors.append(required("roleRef.name"))
    else:
        reason = validate_path_segment_name(ref.name)
        if reason:
            errors.append(invalid("roleRef.name", ref.name, reason))
    for i, subject in enumerate(binding.subjects):
        path = _index("subjects", i)
        if subject.kind not in RBAC_SUBJECT_KINDS:
            errors.append(not_supported(_child(path, "kind"), subject.kind, RBAC_SUBJECT_KINDS))
        if not subject.name:
            errors.append(required(_child(path, "name")))
        if subject.kind == "ServiceAccount":
            if subject.api_group:
                errors.append(not_supported(_child(path, "apiGroup"), subject.api_group, [""]))
            if not subject.namespace and not namespaced:
                errors.append(required(_child(path, "namespace")))
        elif subject.kind in ("User", "Group") and subject.api_group not in ("", RBAC_API_GROUP):
            errors.append(not_supported(_child(path, "apiGroup"), subject.api_group, [RBAC_API_GROUP]))
    return errors


def validate_role_binding(binding: rbac_pb2.RoleBinding) -> list[FieldError]:
    return _validate_binding(binding, ROLE_BINDINGS.name, namespaced=True)


def validate_cluster_role_binding(binding: rbac_pb2.ClusterRoleBinding) -> list[FieldError]:
    return _validate_binding(binding, CLUSTER_ROLE_BINDINGS.name, namespaced=False)


def validate_role_ref_update(binding: Any, old: Any) -> list[FieldError]:
    """A binding's roleRef cannot change (Kubernetes: delete and recreate instead)."""
    if binding.role_ref != old.role_ref:
        return [invalid("roleRef", binding.role_ref.name, "cannot change roleRef")]
    return []


# A lease holder's identity: at most this long (Kubernetes' identities are "host_uuid").
MAX_HOLDER_IDENTITY_LENGTH = 253
# What a google.protobuf.Timestamp may hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_TIMESTAMP_SECONDS, _MAX_TIMESTAMP_SECONDS = -62_135_596_800, 253_402_300_799


def _validate_timestamp(path: str, value: Any, errors: list[FieldError]) -> None:
    if not _MIN_TIMESTAMP_SECONDS <= value.seconds <= _MAX_TIMESTAMP_SECONDS:
        errors.append(invalid(_child(path, "seconds"), value.seconds, "must be between years 1 and 9999"))
    if not 0 <= value.nanos <= 999_999_999:
        errors.append(invalid(_child(path, "nanos"), value.nanos, "must be between 0 and 999999999, inclusive"))


def validate_lease(lease: coordination_pb2.Lease) -> list[FieldError]:
    """Kubernetes' ValidateLease: a DNS-subdomain name, a positive lease duration, no
    negative transition count; and a holder identity of at most 253 characters."""
    errors: list[FieldError] = []
    _validate_type_meta(lease, LEASES.name, errors)
    errors += validate_object_meta(lease.metadata, namespaced=True)
    spec = lease.spec
    if len(spec.holder_identity) > MAX_HOLDER_IDENTITY_LENGTH:
        errors.append(
            invalid(
                "spec.holderIdentity",
                spec.holder_identity,
                f"must be no more than {MAX_HOLDER_IDENTITY_LENGTH} characters",
            )
        )
    if spec.HasField("lease_duration_seconds") and spec.lease_duration_seconds <= 0:
        errors.append(invalid("spec.leaseDurationSeconds", spec.lease_duration_seconds, "must be greater than 0"))
    if spec.HasField("lease_transitions") and spec.lease_transitions < 0:
        errors.append(invalid("spec.leaseTransitions", spec.lease_transitions, NON_NEGATIVE))
    for field_name, json_name in (("acquire_time", "acquireTime"), ("renew_time", "renewTime")):
        if spec.HasField(field_name):
            _validate_timestamp(f"spec.{json_name}", getattr(spec, field_name), errors)
    return errors


_VALIDATORS: dict[type[Message], Callable[[Any], list[FieldError]]] = {
    pod_pb2.Pod: validate_pod,
    service_pb2.Service: validate_service,
    endpoints_pb2.Endpoints: validate_endpoints,
    replication_controller_pb2.ReplicationController: validate_replication_controller,
    node_pb2.Node: validate_node,
    namespace_pb2.Namespace: validate_namespace,
    rbac_pb2.Role: validate_role,
    rbac_pb2.ClusterRole: validate_cluster_role,
    rbac_pb2.RoleBinding: validate_role_binding,
    rbac_pb2.ClusterRoleBinding: validate_cluster_role_binding,
    coordination_pb2.Lease: validate_lease,
}


def validate(obj: Message) -> list[FieldError]:
    """Every problem with an object of any API kind; empty when it may be stored."""
    try:
        validator = _VALIDATORS[type(obj)]
    except KeyError:
        raise TypeError(f"{type(obj).__name__} is not an API kind") from None
    return validator(obj)
