"""kube-replicator as its own process against a real API server and etcd (no scheduler, no kubelet:
the test binds pods and writes their status where a test needs them running)."""

from __future__ import annotations

import grpc
import pytest

from kybernetes.v1 import meta_pb2, pod_pb2, replication_controller_pb2
from services.common.client import ApiClient
from services.common.resources import PODS, REPLICATION_CONTROLLERS
from services.replicator.replicas import CREATED_BY_ANNOTATION
from tests.polling import eventually

from .apihelpers import expect_error, make_pod, make_rc, scale
from .control_helpers import API_WAIT, ControlPlane, PodCreations, kubecfg, pods_in, set_pod_status


@pytest.fixture(scope="module")
def plane():
    control = ControlPlane("", replicator=True)
    yield control
    control.stop()


@pytest.fixture
def api_address(plane) -> str:
    return plane.address


def live_pods(api: ApiClient, namespace: str, count: int, selector: str = "app=web"):
    """Pods that count toward the replicas (Kubernetes' FilterActivePods): not finished, and not
    being deleted (with no kubelet here, a bound pod's graceful deletion never ends)."""

    async def check():
        pods = [
            p for p in await pods_in(api, namespace, selector)
            if p.status.phase not in ("Succeeded", "Failed") and not p.metadata.HasField("deletion_timestamp")
        ]
        assert len(pods) == count, f"{len(pods)} live pods"
        return pods or True  # none left (count 0) is done too: an empty list would read as "not yet"

    return check


def rc_status(api: ApiClient, namespace: str, name: str, **expected: int):
    async def check():
        rc = await api.get(REPLICATION_CONTROLLERS, name, namespace)
        actual = {field: getattr(rc.status, field) for field in expected}
        assert actual == expected, str(actual)
        return rc

    return check


async def test_creates_pods_from_the_template(api, namespace):
    rc = await api.create(make_rc("web", namespace, {"app": "web"}, replicas=3))
    pods = await eventually(
        live_pods(api, namespace, 3), what="3 pods", **API_WAIT
    )
    for pod in pods:
        assert pod.metadata.name.startswith("web-") and pod.metadata.generate_name == "web-"
        assert dict(pod.metadata.labels) == {"app": "web"}
        assert pod.metadata.annotations[CREATED_BY_ANNOTATION] == "web"
        [owner] = pod.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid, owner.controller) == (
            "ReplicationController", "web", rc.metadata.uid, True
        )
        assert pod.spec.containers[0].image == rc.spec.template.spec.containers[0].image
    await eventually(
        rc_status(api, namespace, "web", replicas=3, observed_generation=1),
        what="status.replicas",
        **API_WAIT,
    )


async def test_scale_down_deletes_unscheduled_then_pending_then_not_ready(api, namespace):
    await api.create(make_rc("web", namespace, {"app": "web"}, replicas=5))
    pods = await eventually(
        live_pods(api, namespace, 5), what="5 pods", **API_WAIT
    )
    running_ready, running_not_ready, pending = (p.metadata.name for p in pods[:3])
    for name in (running_ready, running_not_ready, pending):
        await api.bind(namespace, name, "n1")
    await set_pod_status(api, namespace, running_ready, ip="10.9.0.1", ready=True)
    await set_pod_status(api, namespace, running_not_ready, ip="10.9.0.2", ready=False)
    await eventually(
        rc_status(api, namespace, "web", replicas=5, ready_replicas=1),
        what="one ready replica",
        **API_WAIT,
    )

    await scale(api, namespace, "web", 2)
    remaining = await eventually(
        live_pods(api, namespace, 2),
        what="2 pods after scaling down",
        **API_WAIT,
    )
    assert {p.metadata.name for p in remaining} == {running_ready, running_not_ready}

    await scale(api, namespace, "web", 1)
    [survivor] = await eventually(
        live_pods(api, namespace, 1),
        what="1 pod after scaling down",
        **API_WAIT,
    )
    assert survivor.metadata.name == running_ready
    await eventually(
        rc_status(api, namespace, "web", replicas=1, ready_replicas=1, observed_generation=3),
        what="status",
        **API_WAIT,
    )


async def test_deleted_and_failed_pods_are_replaced(api, namespace):
    await api.create(make_rc("web", namespace, {"app": "web"}, replicas=2))
    first, second = await eventually(
        live_pods(api, namespace, 2), what="2 pods", **API_WAIT
    )
    await api.delete(PODS, first.metadata.name, namespace)
    await api.bind(namespace, second.metadata.name, "n1")
    await set_pod_status(api, namespace, second.metadata.name, phase="Failed", ready=False)

    pods = await eventually(
        live_pods(api, namespace, 2),
        what="2 live pods again",
        **API_WAIT,
    )
    assert not {p.metadata.name for p in pods} & {first.metadata.name, second.metadata.name}
    kept = await api.get(PODS, second.metadata.name, namespace)  # a finished pod is left for inspection
    assert kept.status.phase == "Failed"


async def test_deleting_a_controller_deletes_its_pods_and_only_those(api, namespace):
    await api.create(make_rc("web", namespace, {"app": "web"}, replicas=3))
    await eventually(
        live_pods(api, namespace, 3), what="3 pods", **API_WAIT
    )
    await api.create(make_pod("bystander", namespace, {"app": "other"}))
    await api.delete(REPLICATION_CONTROLLERS, "web", namespace)
    await eventually(
        live_pods(api, namespace, 0),
        what="the controller's pods to be collected",
        **API_WAIT,
    )
    assert [p.metadata.name for p in await pods_in(api, namespace)] == ["bystander"]


async def test_orphaned_pods_stay_and_a_new_controller_adopts_them(plane, api, namespace):
    await api.create(make_rc("web", namespace, {"app": "web"}, replicas=3))
    pods = await eventually(
        live_pods(api, namespace, 3), what="3 pods", **API_WAIT
    )
    originals = {p.metadata.name for p in pods}
    await kubecfg(plane.address, namespace, "delete", "rc", "web", "--cascade=false")
    pods = await pods_in(api, namespace, "app=web")
    assert {p.metadata.name for p in pods} == originals
    assert all(not p.metadata.owner_references for p in pods)

    # Proof the replicator has looked since: it served another controller in this namespace.
    await api.create(make_rc("probe", namespace, {"app": "probe"}, replicas=1))
    await eventually(
        live_pods(api, namespace, 1, "app=probe"),
        what="the probe's pod",
        **API_WAIT,
    )
    assert {p.metadata.name for p in await pods_in(api, namespace, "app=web")} == originals

    async with PodCreations(api, namespace) as creations:
        before = len(creations.names)
        adopter = await api.create(make_rc("web-v2", namespace, {"app": "web"}, replicas=3))

        async def adopted():
            pods = await pods_in(api, namespace, "app=web")
            owners = {p.metadata.owner_references[0].uid for p in pods if p.metadata.owner_references}
            owned = sum(1 for p in pods if p.metadata.owner_references)
            assert len(pods) == 3 and owners == {adopter.metadata.uid} and all(
                p.metadata.owner_references for p in pods), f"{owned}/{len(pods)} pods owned, by {owners}"
            return pods

        pods = await eventually(
            adopted, what="the orphans to be adopted", **API_WAIT
        )
        await eventually(
            rc_status(api, namespace, "web-v2", replicas=3),
            what="the adopter's status",
            **API_WAIT,
        )
        assert {p.metadata.name for p in pods} == originals
        assert len(creations.names) == before  # adopted, not created


async def test_a_pod_relabelled_out_of_the_selector_is_released_and_replaced(api, namespace):
    await api.create(make_rc("web", namespace, {"app": "web"}, replicas=2))
    first, _ = await eventually(
        live_pods(api, namespace, 2), what="2 pods", **API_WAIT
    )
    first.metadata.labels["app"] = "debug"
    await api.update(first)
    await eventually(
        live_pods(api, namespace, 2), what="a replacement", **API_WAIT
    )

    async def released():
        pod = await api.get(PODS, first.metadata.name, namespace)
        assert not pod.metadata.owner_references, f"still owned by {pod.metadata.owner_references[0].name}"
        return pod

    await eventually(
        released, what="the relabelled pod to be released", **API_WAIT
    )


async def test_replicator_restart_creates_no_extra_pods(plane, api, namespace):
    async with PodCreations(api, namespace) as creations:
        await api.create(make_rc("web", namespace, {"app": "web"}, replicas=5))
        await eventually(
            live_pods(api, namespace, 5), what="5 pods", **API_WAIT
        )
        plane.kill_replicator()
        plane.start_replicator()
        await scale(api, namespace, "web", 6)  # the new process acts only after it has synced
        await eventually(
            live_pods(api, namespace, 6), what="6 pods", **API_WAIT
        )
        await eventually(
            rc_status(api, namespace, "web", replicas=6),
            what="status.replicas=6",
            **API_WAIT,
        )
        assert len(creations.names) == 6, creations.names


async def test_api_server_restart_creates_and_deletes_nothing_extra(plane, api, namespace):
    async with PodCreations(api, namespace) as creations:
        await api.create(make_rc("web", namespace, {"app": "web"}, replicas=4))
        pods = await eventually(
            live_pods(api, namespace, 4), what="4 pods", **API_WAIT
        )
        originals = {p.metadata.name for p in pods}
        plane.stop_apiserver()
        plane.start_apiserver()
        await scale(api, namespace, "web", 5)
        pods = await eventually(
            live_pods(api, namespace, 5), what="5 pods", **API_WAIT
        )
        await eventually(
            rc_status(api, namespace, "web", replicas=5),
            what="status.replicas=5",
            **API_WAIT,
        )
        assert originals < {p.metadata.name for p in pods}
        assert len(creations.names) == 5, creations.names
    assert plane.replicator is not None and plane.replicator.alive()


async def test_scale_to_zero_and_back(api, namespace):
    rc = make_rc("web", namespace, {"app": "web"}, replicas=0)
    assert isinstance(rc, replication_controller_pb2.ReplicationController)
    await api.create(rc)
    await eventually(
        rc_status(api, namespace, "web", replicas=0, observed_generation=1),
        what="status of an empty rc",
        **API_WAIT,
    )
    await scale(api, namespace, "web", 2)
    await eventually(
        live_pods(api, namespace, 2), what="2 pods", **API_WAIT
    )
    await scale(api, namespace, "web", 0)
    await eventually(
        live_pods(api, namespace, 0), what="no pods", **API_WAIT
    )


async def test_a_foreground_delete_keeps_the_controller_until_its_pods_are_gone(api, namespace):
    await api.create(make_rc("web", namespace, {"app": "web"}, replicas=3))
    pods = await eventually(live_pods(api, namespace, 3), what="3 pods", **API_WAIT)
    # One is on a node (with no kubelet here its deletion waits, as for a pod still stopping).
    bound = pods[0].metadata.name
    await api.stub(PODS).Bind(pod_pb2.Binding(
        metadata=meta_pb2.ObjectMeta(namespace=namespace, name=bound),
        target=pod_pb2.ObjectReference(kind="Node", name="node-without-kubelet"),
    ), timeout=10)
    deleted = await api.delete(REPLICATION_CONTROLLERS, "web", namespace, propagation_policy="Foreground")
    assert deleted.metadata.HasField("deletion_timestamp")
    assert list(deleted.metadata.finalizers) == ["foregroundDeletion"]

    async def only_the_bound_pod_terminating() -> bool:
        left = await pods_in(api, namespace)
        assert [(p.metadata.name, p.metadata.HasField("deletion_timestamp")) for p in left] == [(bound, True)], left
        return True

    await eventually(only_the_bound_pod_terminating, what="the other pods gone, the bound one terminating",
                     **API_WAIT)
    # The controller is still there, replacing nothing, while its last pod stops.
    rc = await api.get(REPLICATION_CONTROLLERS, "web", namespace)
    assert rc.metadata.HasField("deletion_timestamp") and list(rc.metadata.finalizers) == ["foregroundDeletion"]
    assert len(await pods_in(api, namespace)) == 1
    # The pod stops (its kubelet would confirm with grace 0): then the controller goes.
    await api.delete(PODS, bound, namespace, grace_period_seconds=0)

    async def controller_gone() -> bool:
        await expect_error(grpc.StatusCode.NOT_FOUND, api.get(REPLICATION_CONTROLLERS, "web", namespace))
        return True

    await eventually(controller_gone, what="the controller removed once its pods were gone", **API_WAIT)


async def test_foreground_on_a_kind_without_dependents_deletes_at_once(api, namespace):
    await api.create(make_pod("lonely", namespace))
    deleted = await api.delete(PODS, "lonely", namespace, propagation_policy="Foreground")
    assert not deleted.metadata.finalizers
    await expect_error(grpc.StatusCode.NOT_FOUND, api.get(PODS, "lonely", namespace))
