"""Validation of securityContext and host namespaces, from Kubernetes-style JSON manifests.

Each bad value is refused at the path a user must fix; the good ones (what
real manifests carry) pass."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from kybernetes.v1 import pod_pb2, replication_controller_pb2
from services.common.validation import validate


def _pod(spec_fields: dict[str, Any] | None = None, **container_fields: Any) -> pod_pb2.Pod:
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "containers": [
                {"name": "main", "image": "kybernetes/busybox:latest", **container_fields},
                {"name": "side", "image": "kybernetes/busybox:latest"},
            ],
            **(spec_fields or {}),
        },
    }
    return json_format.ParseDict(manifest, pod_pb2.Pod())


def _errors(pod: pod_pb2.Pod) -> list[str]:
    return [str(error) for error in validate(pod)]


def test_a_full_restricted_style_security_context_is_valid() -> None:
    pod = _pod(
        {
            "hostNetwork": False,
            "hostPID": False,
            "hostIPC": False,
            "securityContext": {
                "runAsUser": 1000,
                "runAsGroup": 3000,
                "runAsNonRoot": True,
                "supplementalGroups": [4000, 0],
                "fsGroup": 2000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        },
        securityContext={
            "capabilities": {"add": ["NET_BIND_SERVICE", "CAP_NET_RAW"], "drop": ["ALL"]},
            "privileged": False,
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/audit.json"},
        },
    )
    assert _errors(pod) == []
    assert _errors(_pod(securityContext={"privileged": True, "allowPrivilegeEscalation": True})) == []
    assert _errors(_pod(securityContext={"seccompProfile": {"type": "Unconfined"}})) == []


@pytest.mark.parametrize(
    ("capabilities", "path", "value"),
    [
        ({"add": ["NET_ADMIN", "net_raw"]}, "add[1]", '"net_raw"'),
        ({"add": ["CAP_NET_ADMIN", "NOT_A_CAP"]}, "add[1]", '"NOT_A_CAP"'),
        ({"drop": ["CAP_ALL"]}, "drop[0]", '"CAP_ALL"'),
        ({"drop": ["all"]}, "drop[0]", '"all"'),
        ({"drop": [""]}, "drop[0]", '""'),
        ({"drop": ["CHOWN", "CAP_CAP_CHOWN"]}, "drop[1]", '"CAP_CAP_CHOWN"'),
    ],
)
def test_capability_names_are_upper_case_linux_capabilities_or_all(
    capabilities: dict[str, list[str]], path: str, value: str
) -> None:
    errors = _errors(_pod(securityContext={"capabilities": capabilities}))
    assert errors == [
        f"spec.containers[0].securityContext.capabilities.{path}: Invalid value: {value}: must be an upper-case "
        "Linux capability name, with or without the CAP_ prefix (e.g. 'NET_ADMIN' or 'CAP_NET_ADMIN'), or 'ALL'"
    ]


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ({"type": "Default"}, 'type: Unsupported value: "Default": supported values: "Localhost", "RuntimeDefault", '
         '"Unconfined"'),
        ({"localhostProfile": "x.json"}, "type: Required value"),
        ({"type": "Localhost"}, "localhostProfile: Required value: must be set when seccomp type is Localhost"),
        ({"type": "Localhost", "localhostProfile": "/etc/x.json"},
         'localhostProfile: Invalid value: "/etc/x.json": must be a relative path'),
        ({"type": "Localhost", "localhostProfile": "a/../../x.json"},
         "localhostProfile: Invalid value: \"a/../../x.json\": must not contain '..'"),
        ({"type": "RuntimeDefault", "localhostProfile": "x.json"},
         'localhostProfile: Invalid value: "x.json": can only be set when seccomp type is Localhost'),
        ({"type": "Unconfined", "localhostProfile": "x.json"},
         'localhostProfile: Invalid value: "x.json": can only be set when seccomp type is Localhost'),
    ],
)  # fmt: skip
def test_seccomp_profiles_in_containers_and_pods(profile: dict[str, str], expected: str) -> None:
    assert _errors(_pod(securityContext={"seccompProfile": profile})) == [
        f"spec.containers[0].securityContext.seccompProfile.{expected}"
    ]
    assert _errors(_pod({"securityContext": {"seccompProfile": profile}})) == [
        f"spec.securityContext.seccompProfile.{expected}"
    ]


def test_user_and_group_ids_are_in_range() -> None:
    too_big = 2**31
    pod = _pod(
        {
            "securityContext": {
                "runAsUser": -1,
                "runAsGroup": too_big,
                "fsGroup": -2,
                "supplementalGroups": [1, -5, 7],
            }
        },
        securityContext={"runAsUser": -1, "runAsGroup": -1},
    )
    reason = "must be between 0 and 2147483647, inclusive"
    assert sorted(_errors(pod)) == sorted(
        [
            f"spec.containers[0].securityContext.runAsUser: Invalid value: -1: {reason}",
            f"spec.containers[0].securityContext.runAsGroup: Invalid value: -1: {reason}",
            f"spec.securityContext.runAsUser: Invalid value: -1: {reason}",
            f"spec.securityContext.runAsGroup: Invalid value: {too_big}: {reason}",
            f"spec.securityContext.fsGroup: Invalid value: -2: {reason}",
            f"spec.securityContext.supplementalGroups[1]: Invalid value: -5: {reason}",
        ]
    )


def test_no_privilege_escalation_conflicts_with_privileged_and_sys_admin() -> None:
    errors = _errors(_pod(securityContext={"privileged": True, "allowPrivilegeEscalation": False}))
    assert errors == [
        'spec.containers[0].securityContext: Invalid value: {"allowPrivilegeEscalation": false, "privileged": true}: '
        "cannot set `allowPrivilegeEscalation` to false and `privileged` to true"
    ]
    for name in ("SYS_ADMIN", "CAP_SYS_ADMIN"):
        errors = _errors(_pod(securityContext={"capabilities": {"add": [name]}, "allowPrivilegeEscalation": False}))
        assert len(errors) == 1 and errors[0].startswith("spec.containers[0].securityContext: Invalid value:")
        assert errors[0].endswith("cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN")


def test_host_network_needs_host_ports_equal_to_container_ports() -> None:
    ports = [{"containerPort": 80, "hostPort": 80}, {"containerPort": 53, "protocol": "UDP"}]
    assert _errors(_pod({"hostNetwork": True}, ports=ports)) == []
    ports = [{"containerPort": 80, "hostPort": 80}, {"containerPort": 8080, "hostPort": 18080}]
    assert _errors(_pod({"hostNetwork": True}, ports=ports)) == [
        "spec.containers[0].ports[1].containerPort: Invalid value: 8080: must match `hostPort` when `hostNetwork` "
        "is true"
    ]
    # Off the host's network a hostPort is published, whatever its number.
    assert _errors(_pod(ports=ports)) == []
    assert _errors(_pod({"hostPID": True, "hostIPC": True})) == []


def test_a_replication_controllers_template_is_checked_at_its_own_path() -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"app": "web"},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "securityContext": {"fsGroup": -1},
                    "containers": [
                        {
                            "name": "main",
                            "image": "kybernetes/busybox:latest",
                            "securityContext": {"capabilities": {"drop": ["NOPE"]}},
                        }
                    ],
                },
            },
        },
    }
    rc = json_format.ParseDict(manifest, replication_controller_pb2.ReplicationController())
    paths = sorted(error.path for error in validate(rc))
    assert paths == [
        "spec.template.spec.containers[0].securityContext.capabilities.drop[0]",
        "spec.template.spec.securityContext.fsGroup",
    ]
