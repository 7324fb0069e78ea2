"""Admission against a real API server: Pod Security levels per namespace, where Endpoints
may point, and what an update may change in a pod."""

from __future__ import annotations

import grpc

from kybernetes.v1 import endpoints_pb2, meta_pb2, namespace_pb2, pod_pb2
from services.apiserver.auth.replicaslimit import DEFAULT_MAX_REPLICAS
from services.common.resources import ENDPOINTS, PODS, REPLICATION_CONTROLLERS

from .apihelpers import (
    POD_SECURITY_ENFORCE_LABEL,
    create_namespace,
    expect_error,
    make_pod,
    make_rc,
    privileged_namespace,
)


def host_path_pod(namespace: str) -> pod_pb2.Pod:
    pod = make_pod("host-root", namespace)
    pod.spec.volumes.add(name="root").host_path.path = "/"
    pod.spec.containers[0].volume_mounts.add(name="root", mount_path="/host")
    return pod


async def test_a_baseline_namespace_refuses_a_host_path_pod_naming_the_field(api, namespace):
    # No Namespace object: the API server's default level, baseline.
    message = await expect_error(grpc.StatusCode.PERMISSION_DENIED, api.create(host_path_pod(namespace)))
    assert message == (
        'pods "host-root" is forbidden: violates PodSecurity "baseline": spec.volumes[0].hostPath: '
        "hostPath volumes are forbidden"
    )
    assert list((await api.list(PODS, namespace)).items) == []
    await api.create(make_pod("plain", namespace))  # baseline takes a pod that asks for nothing


async def test_a_privileged_namespace_accepts_it(api, namespace):
    await privileged_namespace(api, namespace)
    created = await api.create(host_path_pod(namespace))
    assert created.spec.volumes[0].host_path.path == "/"


async def test_a_restricted_namespace_refuses_a_root_pod_listing_every_violation(api, namespace):
    await create_namespace(api, namespace, "restricted")
    root = make_pod("root", namespace)
    root.spec.security_context.run_as_user = 0
    message = await expect_error(grpc.StatusCode.PERMISSION_DENIED, api.create(root))
    context = "spec.containers[0].securityContext"
    assert message == (
        'pods "root" is forbidden: violates PodSecurity "restricted": '
        f'{context}.capabilities.drop: must include "ALL"; '
        f"{context}.allowPrivilegeEscalation: must be set to false (privilege escalation, as through a "
        "set-user-ID file, is forbidden); "
        f'{context}.seccompProfile.type: must be "RuntimeDefault" or "Localhost", here or in '
        "spec.securityContext.seccompProfile; "
        "spec.securityContext.runAsUser: must not be 0 (root); "
        f"{context}.runAsNonRoot: must be true, here or in spec.securityContext"
    )

    hardened = make_pod("hardened", namespace)
    hardened.spec.security_context.run_as_non_root = True
    hardened.spec.security_context.run_as_user = 1000
    hardened.spec.security_context.seccomp_profile.type = "RuntimeDefault"
    own = hardened.spec.containers[0].security_context
    own.allow_privilege_escalation = False
    own.capabilities.drop.append("ALL")
    await api.create(hardened)


async def test_a_namespace_label_that_names_no_level_is_invalid(api, unique_name):
    labels = {POD_SECURITY_ENFORCE_LABEL: "strict"}
    namespace = namespace_pb2.Namespace(metadata=meta_pb2.ObjectMeta(name=unique_name, labels=labels))
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(namespace))
    assert message == (
        f'Namespace "{unique_name}" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: '
        'Unsupported value: "strict": supported values: "privileged", "baseline", "restricted"'
    )


async def test_endpoints_may_not_point_at_loopback(api, namespace):
    endpoints = endpoints_pb2.Endpoints(
        metadata=meta_pb2.ObjectMeta(name="etcd", namespace=namespace),
        subsets=[
            endpoints_pb2.EndpointSubset(
                addresses=[endpoints_pb2.EndpointAddress(ip="127.0.0.1")],
                ports=[endpoints_pb2.EndpointPort(port=2379)],
            )
        ],
    )
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(endpoints))
    assert message == (
        'Endpoints "etcd" is invalid: subsets[0].addresses[0].ip: Invalid value: "127.0.0.1": '
        "may not be in the loopback range (127.0.0.0/8, ::1/128)"
    )
    assert list((await api.list(ENDPOINTS, namespace)).items) == []


async def test_a_pod_update_may_change_images_but_not_the_command(api, namespace):
    created = await api.create(make_pod("web", namespace))

    new_command = pod_pb2.Pod()
    new_command.CopyFrom(created)
    new_command.spec.containers[0].command[:] = ["sh", "-c", "cat /host/etc/shadow"]
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.update(new_command))
    assert message == (
        'Pod "web" is invalid: spec: Forbidden: pod updates may not change fields other than '
        "`spec.containers[*].image`,`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
        "previously negative) (changed: spec.containers[0].command)"
    )
    assert await api.get(PODS, "web", namespace) == created

    new_image = pod_pb2.Pod()
    new_image.CopyFrom(created)
    new_image.spec.containers[0].image = "kybernetes/busybox:other"
    updated = await api.update(new_image)
    assert updated.spec.containers[0].image == "kybernetes/busybox:other"
    assert list(updated.spec.containers[0].command) == list(created.spec.containers[0].command)


async def test_replicas_past_the_ceiling_are_resource_exhausted_and_nothing_is_stored(api, namespace):
    too_many = make_rc("huge", namespace, {"app": "huge"}, replicas=DEFAULT_MAX_REPLICAS + 1)
    message = await expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, api.create(too_many))
    assert message.startswith(f"spec.replicas: {DEFAULT_MAX_REPLICAS + 1} exceeds"), message
    await expect_error(grpc.StatusCode.NOT_FOUND, api.get(REPLICATION_CONTROLLERS, "huge", namespace))
    # Scaling past it is refused too; the stored controller keeps its replicas.
    stored = await api.create(make_rc("fine", namespace, {"app": "fine"}, replicas=0))
    stored.spec.replicas = 1_000_000
    await expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, api.update(stored))
    assert (await api.get(REPLICATION_CONTROLLERS, "fine", namespace)).spec.replicas == 0
    stored.spec.replicas = DEFAULT_MAX_REPLICAS
    assert (await api.update(stored)).spec.replicas == DEFAULT_MAX_REPLICAS
