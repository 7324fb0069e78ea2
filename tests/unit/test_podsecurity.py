"""Pod Security admission: every control at every level, the field paths it names, the
namespace label, exemptions, and the message a refused pod gets."""

from __future__ import annotations

from typing import Any, Callable

import grpc
import pytest

from kybernetes.v1 import meta_pb2, namespace_pb2, pod_pb2
from services.apiserver.auth.admission import CREATE, DELETE, UPDATE, AdmissionRequest
from services.apiserver.auth.podsecurity import (
    BASELINE,
    ENFORCE_LABEL,
    PRIVILEGED,
    RESTRICTED,
    PodSecurity,
    Violation,
    check_pod,
    forbidden_message,
)
from services.apiserver.errors import MAX_MESSAGE_BYTES, ApiError
from services.common.identity import SYSTEM_MASTERS, SYSTEM_NODES, authenticated
from services.common.resources import NAMESPACES, PODS
from services.common.validation import MIRROR_POD_ANNOTATION

from .test_noderestriction import fake_registries

C0 = "spec.containers[0]"
SC0 = f"{C0}.securityContext"


def compliant() -> pod_pb2.Pod:
    """A pod every level allows: non-root, RuntimeDefault seccomp, no escalation, all capabilities dropped."""
    pod = pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name="p", namespace="ns"),
        spec=pod_pb2.PodSpec(containers=[pod_pb2.Container(name="c", image="busybox")]),
    )
    pod.spec.security_context.run_as_non_root = True
    pod.spec.security_context.seccomp_profile.type = "RuntimeDefault"
    context = pod.spec.containers[0].security_context
    context.allow_privilege_escalation = False
    context.capabilities.drop.append("ALL")
    return pod


def changed(edit: Callable[[pod_pb2.Pod], Any]) -> pod_pb2.Pod:
    pod = compliant()
    edit(pod)
    return pod


def container_context(pod: pod_pb2.Pod) -> pod_pb2.SecurityContext:
    return pod.spec.containers[0].security_context


# (pod, the paths baseline names, the paths restricted names); privileged names none.
CONTROLS = [
    pytest.param(compliant(), [], [], id="compliant"),
    # Host namespaces
    pytest.param(changed(lambda p: setattr(p.spec, "host_network", True)), ["spec.hostNetwork"], ["spec.hostNetwork"]),
    pytest.param(changed(lambda p: setattr(p.spec, "host_pid", True)), ["spec.hostPID"], ["spec.hostPID"]),
    pytest.param(changed(lambda p: setattr(p.spec, "host_ipc", True)), ["spec.hostIPC"], ["spec.hostIPC"]),
    # Privileged containers
    pytest.param(
        changed(lambda p: setattr(container_context(p), "privileged", True)),
        [f"{SC0}.privileged"],
        [f"{SC0}.privileged"],
        id="privileged",
    ),
    pytest.param(changed(lambda p: setattr(container_context(p), "privileged", False)), [], [], id="privileged-false"),
    # Capabilities
    pytest.param(
        changed(lambda p: container_context(p).capabilities.add.append("NET_ADMIN")),
        [f"{SC0}.capabilities.add[0]"],
        [f"{SC0}.capabilities.add[0]"],
        id="add-NET_ADMIN",
    ),
    pytest.param(
        changed(lambda p: container_context(p).capabilities.add.extend(["CHOWN", "sys_admin"])),
        [f"{SC0}.capabilities.add[1]"],
        [f"{SC0}.capabilities.add[0]", f"{SC0}.capabilities.add[1]"],
        id="add-default-CHOWN-and-lowercase-sys_admin",
    ),
    pytest.param(
        changed(lambda p: container_context(p).capabilities.add.append("CAP_SYS_PTRACE")),
        [f"{SC0}.capabilities.add[0]"],
        [f"{SC0}.capabilities.add[0]"],
        id="add-CAP_-prefixed",
    ),
    pytest.param(
        changed(lambda p: container_context(p).capabilities.add.append("ALL")),
        [f"{SC0}.capabilities.add[0]"],
        [f"{SC0}.capabilities.add[0]"],
        id="add-ALL",
    ),
    pytest.param(
        changed(lambda p: container_context(p).capabilities.add.append("NET_BIND_SERVICE")), [], [], id="add-NBS"
    ),
    pytest.param(
        changed(lambda p: container_context(p).capabilities.ClearField("drop")),
        [],
        [f"{SC0}.capabilities.drop"],
        id="drop-not-ALL",
    ),
    pytest.param(
        changed(lambda p: container_context(p).capabilities.drop.__setitem__(0, "all")), [], [], id="drop-all-lower"
    ),
    # HostPath volumes and volume types
    pytest.param(
        changed(lambda p: p.spec.volumes.add(name="root").host_path.SetInParent()),
        ["spec.volumes[0].hostPath"],
        ["spec.volumes[0].hostPath"],
        id="hostPath",
    ),
    pytest.param(changed(lambda p: p.spec.volumes.add(name="tmp").empty_dir.SetInParent()), [], [], id="emptyDir"),
    # Host ports
    pytest.param(
        changed(lambda p: p.spec.containers[0].ports.add(container_port=80, host_port=8080)),
        [f"{C0}.ports[0].hostPort"],
        [f"{C0}.ports[0].hostPort"],
        id="hostPort",
    ),
    pytest.param(changed(lambda p: p.spec.containers[0].ports.add(container_port=80)), [], [], id="containerPort"),
    # Seccomp
    pytest.param(
        changed(lambda p: setattr(p.spec.security_context.seccomp_profile, "type", "Unconfined")),
        ["spec.securityContext.seccompProfile.type"],
        ["spec.securityContext.seccompProfile.type", f"{SC0}.seccompProfile.type"],
        id="pod-seccomp-Unconfined",
    ),
    pytest.param(
        changed(lambda p: setattr(container_context(p).seccomp_profile, "type", "Unconfined")),
        [f"{SC0}.seccompProfile.type"],
        [f"{SC0}.seccompProfile.type"],
        id="container-seccomp-Unconfined",
    ),
    pytest.param(
        changed(lambda p: setattr(container_context(p).seccomp_profile, "type", "unconfined")),
        [f"{SC0}.seccompProfile.type"],
        [f"{SC0}.seccompProfile.type"],
        id="unknown-seccomp-type",
    ),
    pytest.param(
        changed(lambda p: p.spec.security_context.ClearField("seccomp_profile")),
        [],
        [f"{SC0}.seccompProfile.type"],
        id="seccomp-unset",
    ),
    pytest.param(
        changed(
            lambda p: (
                p.spec.security_context.ClearField("seccomp_profile"),
                setattr(container_context(p).seccomp_profile, "type", "Localhost"),
            )
        ),
        [],
        [],
        id="container-seccomp-Localhost",
    ),
    pytest.param(
        changed(lambda p: p.spec.security_context.seccomp_profile.ClearField("type")),
        [],
        ["spec.securityContext.seccompProfile.type", f"{SC0}.seccompProfile.type"],
        id="seccomp-set-without-type",
    ),
    # Probe hosts
    pytest.param(
        changed(lambda p: setattr(p.spec.containers[0].liveness_probe.http_get, "host", "10.0.0.1")),
        [f"{C0}.livenessProbe.httpGet.host"],
        [f"{C0}.livenessProbe.httpGet.host"],
        id="liveness-http-host",
    ),
    pytest.param(
        changed(lambda p: setattr(p.spec.containers[0].readiness_probe.tcp_socket, "host", "etcd.local")),
        [f"{C0}.readinessProbe.tcpSocket.host"],
        [f"{C0}.readinessProbe.tcpSocket.host"],
        id="readiness-tcp-host",
    ),
    pytest.param(
        changed(lambda p: setattr(p.spec.containers[0].readiness_probe.http_get, "port", "80")), [], [], id="no-host"
    ),
    # Privilege escalation
    pytest.param(
        changed(lambda p: setattr(container_context(p), "allow_privilege_escalation", True)),
        [],
        [f"{SC0}.allowPrivilegeEscalation"],
        id="escalation-true",
    ),
    pytest.param(
        changed(lambda p: container_context(p).ClearField("allow_privilege_escalation")),
        [],
        [f"{SC0}.allowPrivilegeEscalation"],
        id="escalation-unset",
    ),
    # Running as non-root
    pytest.param(
        changed(lambda p: setattr(p.spec.security_context, "run_as_non_root", False)),
        [],
        ["spec.securityContext.runAsNonRoot", f"{SC0}.runAsNonRoot"],
        id="pod-runAsNonRoot-false",
    ),
    pytest.param(
        changed(
            lambda p: (
                p.spec.security_context.ClearField("run_as_non_root"),
                setattr(container_context(p), "run_as_non_root", True),
            )
        ),
        [],
        [],
        id="container-runAsNonRoot-true",
    ),
    pytest.param(
        changed(lambda p: setattr(container_context(p), "run_as_non_root", False)),
        [],
        [f"{SC0}.runAsNonRoot"],
        id="container-runAsNonRoot-false",
    ),
    # Running as a non-root user
    pytest.param(
        changed(lambda p: setattr(p.spec.security_context, "run_as_user", 0)),
        [],
        ["spec.securityContext.runAsUser"],
        id="pod-runAsUser-0",
    ),
    pytest.param(
        changed(lambda p: setattr(container_context(p), "run_as_user", 0)),
        [],
        [f"{SC0}.runAsUser"],
        id="container-runAsUser-0",
    ),
    pytest.param(changed(lambda p: setattr(container_context(p), "run_as_user", 1000)), [], [], id="runAsUser-1000"),
]


@pytest.mark.parametrize("pod, baseline, restricted", CONTROLS)
def test_each_control_at_each_level(pod: pod_pb2.Pod, baseline: list[str], restricted: list[str]) -> None:
    assert check_pod(PRIVILEGED, pod) == []
    assert sorted(v.field_path for v in check_pod(BASELINE, pod)) == sorted(baseline)
    assert sorted(v.field_path for v in check_pod(RESTRICTED, pod)) == sorted(restricted)


def test_every_container_is_checked() -> None:
    pod = compliant()
    second = pod.spec.containers.add(name="side", image="busybox")
    second.security_context.privileged = True
    second.ports.add(container_port=81, host_port=81)
    paths = [v.field_path for v in check_pod(BASELINE, pod)]
    assert paths == ["spec.containers[1].securityContext.privileged", "spec.containers[1].ports[0].hostPort"]


def root_pod() -> pod_pb2.Pod:
    """A pod as most manifests are written: nothing about security at all."""
    return pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name="root", namespace="ns"),
        spec=pod_pb2.PodSpec(containers=[pod_pb2.Container(name="c", image="busybox")]),
    )


def test_a_plain_pod_meets_baseline_and_restricted_names_everything_it_lacks() -> None:
    assert check_pod(BASELINE, root_pod()) == []
    assert [str(v) for v in check_pod(RESTRICTED, root_pod())] == [
        f'{SC0}.capabilities.drop: must include "ALL"',
        f"{SC0}.allowPrivilegeEscalation: must be set to false (privilege escalation, as through a set-user-ID "
        "file, is forbidden)",
        f'{SC0}.seccompProfile.type: must be "RuntimeDefault" or "Localhost", here or in '
        "spec.securityContext.seccompProfile",
        f"{SC0}.runAsNonRoot: must be true, here or in spec.securityContext",
    ]


def test_reasons_say_what_is_wrong() -> None:
    pod = changed(lambda p: p.spec.volumes.add(name="root").host_path.SetInParent())
    container_context(pod).capabilities.add.append("SYS_ADMIN")
    container_context(pod).seccomp_profile.type = "Unconfined"
    pod.spec.host_network = True
    assert [str(v) for v in check_pod(BASELINE, pod)] == [
        "spec.hostNetwork: host namespaces are forbidden (this shares the host's network namespace)",
        f'{SC0}.capabilities.add[0]: adding capability "SYS_ADMIN" is forbidden (allowed: the runtime\'s default set)',
        f'{SC0}.seccompProfile.type: seccomp profile type "Unconfined" is forbidden (allowed: "RuntimeDefault" or '
        '"Localhost")',
        "spec.volumes[0].hostPath: hostPath volumes are forbidden",
    ]


def test_an_unknown_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown Pod Security level 'strict'"):
        check_pod("strict", compliant())
    with pytest.raises(ValueError, match="default level 'strict'"):
        PodSecurity(fake_registries(), default_level="strict")


def test_a_long_list_of_violations_fits_a_status_trailer() -> None:
    pod = root_pod()
    for i in range(400):
        pod.spec.containers.add(name=f"c{i}", image="busybox").ports.add(container_port=80, host_port=1000 + i)
    violations = check_pod(BASELINE, pod)
    assert len(violations) == 400
    message = forbidden_message("root", BASELINE, violations)
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    assert message.startswith('pods "root" is forbidden: violates PodSecurity "baseline": spec.containers[1]')
    assert message.endswith(" more violations")
    huge = [Violation("spec.x", "y" * 10_000)]
    assert len(forbidden_message("root", BASELINE, huge).encode()) > MAX_MESSAGE_BYTES  # ApiError cuts the rest
    assert len(ApiError(grpc.StatusCode.PERMISSION_DENIED, forbidden_message("r", BASELINE, huge)).message) < 4100


# -- the admission plugin ---------------------------------------------------------------

USER = authenticated("alice", [])


def namespace(name: str, level: str | None) -> namespace_pb2.Namespace:
    labels = {ENFORCE_LABEL: level} if level is not None else {}
    return namespace_pb2.Namespace(metadata=meta_pb2.ObjectMeta(name=name, labels=labels))


def plugin_with(*namespaces: namespace_pb2.Namespace, **options: Any) -> PodSecurity:
    registries = fake_registries()
    for ns in namespaces:
        registries[NAMESPACES.name].cache.put(ns)
    return PodSecurity(registries, **options)


def admit_pod(plugin: PodSecurity, pod: pod_pb2.Pod, **request: Any) -> None:
    options: dict[str, Any] = {"user": USER, "operation": CREATE, "kind": PODS, "obj": pod, **request}
    plugin.admit(AdmissionRequest(**options))


def refusal(call: Callable[[], None], code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED) -> str:
    with pytest.raises(ApiError) as caught:
        call()
    assert caught.value.code == code, caught.value.message
    return caught.value.message


def host_path_pod(namespace: str = "ns") -> pod_pb2.Pod:
    pod = root_pod()
    pod.metadata.namespace = namespace
    pod.spec.volumes.add(name="root").host_path.path = "/"
    return pod


def test_a_namespace_without_an_object_or_label_is_at_the_default_level() -> None:
    message = refusal(lambda: admit_pod(plugin_with(), host_path_pod()))
    assert message == (
        'pods "root" is forbidden: violates PodSecurity "baseline": spec.volumes[0].hostPath: '
        "hostPath volumes are forbidden"
    )
    refusal(lambda: admit_pod(plugin_with(namespace("ns", None)), host_path_pod()))
    admit_pod(plugin_with(), root_pod())
    message = refusal(lambda: admit_pod(plugin_with(default_level=RESTRICTED), root_pod()))
    assert message.startswith('pods "root" is forbidden: violates PodSecurity "restricted": ')
    admit_pod(plugin_with(default_level=PRIVILEGED), host_path_pod())


@pytest.mark.parametrize(
    "level, allowed",
    [
        pytest.param(PRIVILEGED, {"host-path", "root"}, id="privileged"),
        pytest.param(BASELINE, {"root"}, id="baseline"),
        pytest.param(RESTRICTED, set(), id="restricted"),
        pytest.param("Privileged", set(), id="a-stored-bad-label-fails-closed-to-restricted"),
    ],
)
def test_the_namespace_label_sets_the_level(level: str, allowed: set[str]) -> None:
    plugin = plugin_with(namespace("ns", level))
    pods = {"host-path": host_path_pod(), "root": root_pod()}
    for name, pod in pods.items():
        if name in allowed:
            admit_pod(plugin, pod)
        else:
            refusal(lambda pod=pod: admit_pod(plugin, pod))
    admit_pod(plugin, compliant())
    refusal(lambda: admit_pod(plugin, host_path_pod("other")))  # another namespace: the default, baseline


def test_exemptions() -> None:
    plugin = plugin_with(namespace("ns", RESTRICTED), exempt_users=["ops"], exempt_namespaces=["kube-system"])
    mirror = host_path_pod()
    mirror.metadata.annotations[MIRROR_POD_ANNOTATION] = "hash"
    admit_pod(plugin, mirror)
    admit_pod(plugin, host_path_pod(), user=authenticated("ops", []))
    admit_pod(plugin, host_path_pod("kube-system"))
    # Administrators and nodes are held to the namespace's level like anyone else.
    refusal(lambda: admit_pod(plugin, host_path_pod(), user=authenticated("admin", [SYSTEM_MASTERS])))
    refusal(lambda: admit_pod(plugin, host_path_pod(), user=authenticated("system:node:n1", [SYSTEM_NODES])))


def test_updates_are_checked_when_an_image_changes_and_status_never() -> None:
    plugin = plugin_with(namespace("ns", BASELINE))
    stored = host_path_pod()  # admitted when the namespace was privileged
    relabelled = host_path_pod()
    relabelled.metadata.labels["tier"] = "web"
    admit_pod(plugin, relabelled, operation=UPDATE, old=stored)
    admit_pod(plugin, relabelled, operation=UPDATE, old=stored, subresource="status")
    admit_pod(plugin, stored, operation=DELETE)
    new_image = host_path_pod()
    new_image.spec.containers[0].image = "busybox:2"
    message = refusal(lambda: admit_pod(plugin, new_image, operation=UPDATE, old=stored))
    assert "spec.volumes[0].hostPath" in message


def admit_namespace(plugin: PodSecurity, ns: namespace_pb2.Namespace, **request: Any) -> None:
    options: dict[str, Any] = {"user": USER, "operation": CREATE, "kind": NAMESPACES, "obj": ns, **request}
    plugin.admit(AdmissionRequest(**options))


@pytest.mark.parametrize("level", [PRIVILEGED, BASELINE, RESTRICTED, None])
def test_namespaces_with_a_level_or_none_are_accepted(level: str | None) -> None:
    admit_namespace(plugin_with(), namespace("ns", level))


@pytest.mark.parametrize("value", ["Privileged", "", "strict", "x" * 63])
def test_a_namespace_label_that_names_no_level_is_invalid(value: str) -> None:
    plugin = plugin_with()
    message = refusal(lambda: admit_namespace(plugin, namespace("ns", value)), grpc.StatusCode.INVALID_ARGUMENT)
    assert message.startswith(
        'Namespace "ns" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: Unsupported value: '
    )
    assert message.endswith('supported values: "privileged", "baseline", "restricted"')
    # On update only a change is refused: one stored before the check may stay.
    stored = namespace("ns", value)
    relabelled = namespace("ns", value)
    relabelled.metadata.labels["team"] = "a"
    admit_namespace(plugin, relabelled, operation=UPDATE, old=stored)
    refusal(
        lambda: admit_namespace(plugin, stored, operation=UPDATE, old=namespace("ns", BASELINE)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
