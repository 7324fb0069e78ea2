"""CRUD, validation and optimistic concurrency against a real API server and etcd."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from kybernetes.v1 import meta_pb2, pod_pb2
from services.common.resources import NODES, PODS, REPLICATION_CONTROLLERS, SERVICES

from .apihelpers import expect_error, make_node, make_pod, make_rc, make_service


async def test_create_get_update_delete_pod(api, namespace):
    created = await api.create(make_pod("web", namespace, {"app": "web"}))
    assert created.metadata.uid and created.metadata.resource_version > 0
    assert created.metadata.creation_timestamp.seconds > 0
    assert created.metadata.generation == 1
    assert created.status.phase == "Pending"
    assert created.spec.restart_policy == "Always"
    assert created.api_version == "v1" and created.kind == "Pod"

    fetched = await api.get(PODS, "web", namespace)
    assert fetched == created

    fetched.metadata.labels["tier"] = "frontend"
    updated = await api.update(fetched)
    assert updated.metadata.resource_version > created.metadata.resource_version
    assert updated.metadata.labels == {"app": "web", "tier": "frontend"}
    assert updated.metadata.uid == created.metadata.uid
    assert updated.metadata.generation == 1  # labels are not spec

    deleted = await api.delete(PODS, "web", namespace)
    assert deleted.metadata.name == "web"
    await expect_error(grpc.StatusCode.NOT_FOUND, api.get(PODS, "web", namespace))


async def test_namespace_defaults_to_default(api, unique_name):
    pod = make_pod(unique_name, "")
    created = await api.create(pod)
    try:
        assert created.metadata.namespace == "default"
        assert (await api.get(PODS, unique_name)).metadata.uid == created.metadata.uid
    finally:
        await api.delete(PODS, unique_name)


async def test_create_existing_name_is_already_exists(api, namespace):
    await api.create(make_pod("dup", namespace))
    message = await expect_error(grpc.StatusCode.ALREADY_EXISTS, api.create(make_pod("dup", namespace)))
    assert "dup" in message


async def test_missing_objects_are_not_found(api, namespace):
    await expect_error(grpc.StatusCode.NOT_FOUND, api.get(PODS, "ghost", namespace))
    await expect_error(grpc.StatusCode.NOT_FOUND, api.update(make_pod("ghost", namespace)))
    await expect_error(grpc.StatusCode.NOT_FOUND, api.delete(PODS, "ghost", namespace))


async def test_stale_resource_version_is_aborted_and_changes_nothing(api, namespace):
    first = await api.create(make_pod("web", namespace))
    second = pod_pb2.Pod()
    second.CopyFrom(first)
    second.metadata.labels["v"] = "2"
    latest = await api.update(second)

    stale = pod_pb2.Pod()
    stale.CopyFrom(first)
    stale.metadata.labels["v"] = "stale"
    await expect_error(grpc.StatusCode.ABORTED, api.update(stale))
    await expect_error(
        grpc.StatusCode.ABORTED,
        api.delete(PODS, "web", namespace, resource_version=first.metadata.resource_version),
    )
    stored = await api.get(PODS, "web", namespace)
    assert stored == latest

    await api.delete(PODS, "web", namespace, resource_version=latest.metadata.resource_version)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda p: setattr(p.metadata, "name", "Not_A_Name"), "metadata.name"),
        (lambda p: p.spec.containers[0].ClearField("image"), "spec.containers[0].image"),
        (lambda p: p.spec.containers.add(name="main", image="x"), "spec.containers[1].name"),
        (lambda p: p.spec.containers[0].ports.add(container_port=70000), "spec.containers[0].ports[0].containerPort"),
        (lambda p: setattr(p.spec, "restart_policy", "Sometimes"), "spec.restartPolicy"),
        (lambda p: p.metadata.labels.__setitem__("bad key!", "x"), "metadata.labels"),
    ],
)
async def test_invalid_pod_names_the_field_and_stores_nothing(api, namespace, mutate, field):
    pod = make_pod("valid-name", namespace)
    mutate(pod)
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(pod))
    assert field in message
    listing = await api.list(PODS, namespace)
    assert list(listing.items) == []


async def test_duplicate_host_ports_are_invalid(api, namespace):
    pod = make_pod("ports", namespace)
    pod.spec.containers[0].ports.add(container_port=80, host_port=8080)
    pod.spec.containers.add(name="side", image="x").ports.add(container_port=81, host_port=8080)
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(pod))
    assert "hostPort" in message


async def test_rejected_update_leaves_object_untouched(api, namespace):
    created = await api.create(make_pod("web", namespace))
    broken = pod_pb2.Pod()
    broken.CopyFrom(created)
    broken.spec.containers[0].image = ""
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.update(broken))
    assert await api.get(PODS, "web", namespace) == created


async def test_rc_validation(api, namespace):
    rc = make_rc("front", namespace, {"app": "front"}, replicas=2)
    rc.spec.selector["app"] = "other"
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(rc))
    assert "selector" in message

    negative = make_rc("neg", namespace, {"app": "x"})
    negative.spec.replicas = -1
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(negative))
    assert "spec.replicas" in message


async def test_generate_name(api, namespace):
    pod = make_pod("", namespace)
    pod.metadata.generate_name = "web-"
    first, second = await asyncio.gather(api.create(pod), api.create(pod))
    assert first.metadata.name.startswith("web-") and second.metadata.name.startswith("web-")
    assert first.metadata.name != second.metadata.name


async def test_update_status_changes_only_status_and_update_keeps_it(api, namespace):
    created = await api.create(make_pod("web", namespace))
    with_status = pod_pb2.Pod()
    with_status.CopyFrom(created)
    with_status.status.phase = "Running"
    with_status.status.pod_ip = "10.0.0.7"
    with_status.metadata.labels["ignored"] = "yes"
    after_status = await api.update_status(with_status)
    assert after_status.status.phase == "Running"
    assert "ignored" not in after_status.metadata.labels

    relabel = pod_pb2.Pod()
    relabel.CopyFrom(after_status)
    relabel.status.phase = "Failed"  # Update ignores status
    relabel.metadata.labels["tier"] = "web"
    after_update = await api.update(relabel)
    assert after_update.status.phase == "Running" and after_update.metadata.labels["tier"] == "web"


async def test_update_without_changes_keeps_resource_version(api, namespace):
    created = await api.create(make_pod("web", namespace))
    again = await api.update(created)
    assert again.metadata.resource_version == created.metadata.resource_version


async def test_spec_change_bumps_generation(api, namespace):
    rc = await api.create(make_rc("front", namespace, {"app": "front"}, replicas=1))
    rc.spec.replicas = 3
    scaled = await api.update(rc)
    assert scaled.metadata.generation == 2


async def test_bind_once(api, namespace):
    await api.create(make_pod("web", namespace))
    bound = await api.bind(namespace, "web", "node-a")
    assert bound.spec.node_name == "node-a"
    assert any(c.type == "PodScheduled" and c.status == "True" for c in bound.status.conditions)
    message = await expect_error(grpc.StatusCode.FAILED_PRECONDITION, api.bind(namespace, "web", "node-b"))
    assert "node-a" in message


async def test_racing_binds_bind_exactly_once(api, namespace):
    await api.create(make_pod("raced", namespace))
    results = await asyncio.gather(
        *(api.bind(namespace, "raced", f"node-{i}") for i in range(8)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.FAILED_PRECONDITION
        for r in results
        if isinstance(r, Exception)
    )
    assert (await api.get(PODS, "raced", namespace)).spec.node_name == winners[0].spec.node_name


async def test_bound_node_is_immutable_through_update(api, namespace):
    await api.create(make_pod("web", namespace))
    bound = await api.bind(namespace, "web", "node-a")
    bound.spec.node_name = "node-b"
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.update(bound))
    assert "spec.nodeName" in message


async def test_nodes_are_cluster_scoped(api, unique_name):
    created = await api.create(make_node(unique_name, {"disk": "ssd"}))
    try:
        assert created.metadata.namespace == ""
        assert (await api.get(NODES, unique_name, "")).metadata.labels["disk"] == "ssd"
        names = [n.metadata.name for n in (await api.list(NODES, label_selector="disk=ssd")).items]
        assert unique_name in names
    finally:
        await api.delete(NODES, unique_name, "")


async def test_services_crud(api, namespace):
    created = await api.create(make_service("front", namespace, {"app": "front"}))
    assert created.spec.ports[0].protocol == "TCP"
    assert created.spec.ports[0].target_port == "80"
    assert (await api.get(SERVICES, "front", namespace)).spec.selector == {"app": "front"}


async def test_delete_rc_with_orphan_keeps_pods_and_drops_owner_reference(api, namespace):
    rc = await api.create(make_rc("front", namespace, {"app": "front"}))
    pod = make_pod("front-1", namespace, {"app": "front"})
    pod.metadata.owner_references.add(
        api_version="v1", kind="ReplicationController", name="front", uid=rc.metadata.uid, controller=True
    )
    await api.create(pod)
    await api.delete(REPLICATION_CONTROLLERS, "front", namespace, propagation_policy="Orphan")
    kept = await api.get(PODS, "front-1", namespace)
    assert list(kept.metadata.owner_references) == []
    await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, api.delete(PODS, "front-1", namespace, propagation_policy="Sometimes")
    )


async def test_get_requires_a_name(api):
    message = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, api.stub(PODS).Get(meta_pb2.GetRequest(namespace="default"))
    )
    assert "name" in message
