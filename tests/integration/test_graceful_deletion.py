"""Graceful deletion against a real etcd and API server, and a real kubelet on Docker (issue 14).

A Delete of a pod bound to a node marks it (deletionTimestamp, deletionGracePeriodSeconds)
and keeps it; the kubelet stops its containers (SIGTERM, the grace period, SIGKILL), reports
its final status and removes it from the API. --force (grace 0) removes it at once;
finalizers hold any object until an update removes them; the deletion marks are the
server's; the endpoints controller drops a terminating pod before its containers stop.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from kybernetes.v1 import meta_pb2, pod_pb2
from services.common.client import ApiClient
from services.common.resources import ENDPOINTS, PODS, SERVICES, Kind
from tests.integration.kubelet_helpers import KubeletProcess, container, make_pod, node_containers, sleeper
from tests.polling import eventually

from .apihelpers import expect_error, make_service
from .apihelpers import make_pod as api_pod
from .control_helpers import API_WAIT, ControlPlane

# A container that, on SIGTERM, notes it in its emptyDir, takes `linger` seconds to finish
# what it serves, and exits 0; until then it runs.
TRAPS_TERM = "trap 'echo TERM > /data/term; sleep {linger}; exit 0' TERM; while true; do sleep 0.2; done"
# One that ignores SIGTERM: only SIGKILL stops it.
IGNORES_TERM = "trap '' TERM; while true; do sleep 0.2; done"


async def delete(api: ApiClient, name: str, namespace: str, *, grace: int | None = None, uid: str = "",
                 kind: Kind = PODS) -> Any:
    """Delete with the options ApiClient.delete does not take (gracePeriodSeconds, preconditions)."""
    request = meta_pb2.DeleteRequest(namespace=namespace, name=name, preconditions_uid=uid)
    if grace is not None:
        request.grace_period_seconds = grace
    return await api.stub(kind).Delete(request, timeout=10)


async def get_pod(api: ApiClient, name: str, namespace: str) -> pod_pb2.Pod | None:
    try:
        return await api.get(PODS, name, namespace)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def gone(api: ApiClient, name: str, namespace: str, kind: Kind = PODS):
    async def check() -> bool:
        try:
            await api.get(kind, name, namespace)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return True
            raise
        return False

    return check


def bound_pod(name: str, namespace: str, node: str, grace: int = 30, **kwargs: Any) -> pod_pb2.Pod:
    pod = api_pod(name, namespace, node=node, **kwargs)
    pod.spec.termination_grace_period_seconds = grace
    return pod


# -- the API server alone (no kubelet: a bound pod stays marked) ---------------------------------------


async def test_a_bound_pods_delete_marks_and_keeps_it_and_only_a_shorter_grace_changes_it(api, namespace):
    created = await api.create(bound_pod("web", namespace, "no-such-node", grace=30))
    before = time.time()
    deleted = await delete(api, "web", namespace)
    meta = deleted.metadata
    assert meta.HasField("deletion_timestamp") and meta.deletion_grace_period_seconds == 30
    assert before + 29 <= meta.deletion_timestamp.seconds <= time.time() + 31
    assert meta.generation == created.metadata.generation + 1
    stored = await api.get(PODS, "web", namespace)
    assert stored.metadata.deletion_timestamp == meta.deletion_timestamp
    assert stored.metadata.resource_version == meta.resource_version

    # Again, with no grace or a longer one: a deletion is under way, nothing changes.
    for grace in (None, 30, 60):
        again = await delete(api, "web", namespace, grace=grace)
        assert again.metadata.resource_version == meta.resource_version
        assert again.metadata.deletion_grace_period_seconds == 30

    shorter = await delete(api, "web", namespace, grace=5)
    assert shorter.metadata.deletion_grace_period_seconds == 5
    assert shorter.metadata.deletion_timestamp.seconds == meta.deletion_timestamp.seconds - 25
    assert shorter.metadata.generation == meta.generation

    await delete(api, "web", namespace, grace=0)
    assert await gone(api, "web", namespace)()


async def test_the_grace_is_the_requests_else_the_pods(api, namespace):
    await api.create(bound_pod("own", namespace, "no-such-node", grace=7))
    assert (await delete(api, "own", namespace)).metadata.deletion_grace_period_seconds == 7
    await api.create(bound_pod("asked", namespace, "no-such-node", grace=7))
    assert (await delete(api, "asked", namespace, grace=3)).metadata.deletion_grace_period_seconds == 3
    # Kubernetes: a negative grace counts as 1.
    await api.create(bound_pod("negative", namespace, "no-such-node", grace=7))
    assert (await delete(api, "negative", namespace, grace=-5)).metadata.deletion_grace_period_seconds == 1


async def test_unbound_and_finished_pods_and_force_go_at_once(api, namespace):
    await api.create(api_pod("pending", namespace))
    deleted = await delete(api, "pending", namespace, grace=30)
    assert await gone(api, "pending", namespace)()
    assert deleted.metadata.name == "pending"

    await api.create(bound_pod("done", namespace, "no-such-node"))
    finished = await api.get(PODS, "done", namespace)
    finished.status.phase = "Succeeded"
    await api.update_status(finished)
    await delete(api, "done", namespace)
    assert await gone(api, "done", namespace)()

    await api.create(bound_pod("forced", namespace, "no-such-node"))
    await delete(api, "forced", namespace, grace=0)
    assert await gone(api, "forced", namespace)()


async def test_the_watch_shows_the_marking_then_the_removal(api, namespace):
    created = await api.create(bound_pod("web", namespace, "no-such-node"))
    options = meta_pb2.ListOptions(namespace=namespace, resource_version=created.metadata.resource_version)
    call = api.watch(PODS, options)
    try:
        await delete(api, "web", namespace)
        await delete(api, "web", namespace, grace=0)
        events = []
        async for event in call:
            if event.type != "BOOKMARK":
                events.append(event)
            if len(events) == 2:
                break
    finally:
        call.cancel()
    assert [e.type for e in events] == ["MODIFIED", "DELETED"]
    assert events[0].object.metadata.HasField("deletion_timestamp")
    assert events[0].object.metadata.deletion_grace_period_seconds == 30


async def test_a_client_cannot_set_or_clear_the_deletion_marks(api, namespace):
    await api.create(bound_pod("marked", namespace, "no-such-node"))
    marked = await delete(api, "marked", namespace)
    cleared = await api.get(PODS, "marked", namespace)
    cleared.metadata.ClearField("deletion_timestamp")
    cleared.metadata.ClearField("deletion_grace_period_seconds")
    cleared.metadata.labels["touched"] = "yes"
    updated = await api.update(cleared)
    assert updated.metadata.labels["touched"] == "yes"
    assert updated.metadata.deletion_timestamp == marked.metadata.deletion_timestamp
    assert updated.metadata.deletion_grace_period_seconds == 30
    stored = await api.get(PODS, "marked", namespace)
    assert stored.metadata.deletion_timestamp == marked.metadata.deletion_timestamp

    await api.create(bound_pod("live", namespace, "no-such-node"))
    live = await api.get(PODS, "live", namespace)
    live.metadata.deletion_timestamp.seconds = 12345
    live.metadata.deletion_grace_period_seconds = 1
    live.metadata.labels["touched"] = "yes"
    updated = await api.update(live)
    assert not updated.metadata.HasField("deletion_timestamp")
    assert not updated.metadata.HasField("deletion_grace_period_seconds")
    # Nor on create.
    fresh = bound_pod("fresh", namespace, "no-such-node")
    fresh.metadata.deletion_timestamp.seconds = 12345
    fresh.metadata.deletion_grace_period_seconds = 1
    created = await api.create(fresh)
    assert not created.metadata.HasField("deletion_timestamp")
    assert not created.metadata.HasField("deletion_grace_period_seconds")


async def test_finalizers_hold_an_object_until_an_update_removes_them(api, namespace):
    pod = api_pod("held", namespace)
    pod.metadata.finalizers.append("example.com/hold")
    await api.create(pod)
    marked = await delete(api, "held", namespace)
    assert marked.metadata.HasField("deletion_timestamp")
    assert marked.metadata.deletion_grace_period_seconds == 0
    assert list(marked.metadata.finalizers) == ["example.com/hold"]
    assert (await delete(api, "held", namespace)).metadata.resource_version == marked.metadata.resource_version

    more = await api.get(PODS, "held", namespace)
    more.metadata.finalizers.append("example.com/more")
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.update(more))
    assert "metadata.finalizers" in message and "being deleted" in message

    released = await api.get(PODS, "held", namespace)
    del released.metadata.finalizers[:]
    await api.update(released)
    assert await gone(api, "held", namespace)()

    # Any kind: a service with a finalizer is marked, and removed (its cluster IP freed) with it.
    svc = make_service("held", namespace, {"app": "x"})
    svc.metadata.finalizers.append("example.com/hold")
    created = await api.create(svc)
    assert created.spec.cluster_ip
    marked = await delete(api, "held", namespace, kind=SERVICES)
    assert marked.metadata.HasField("deletion_timestamp")
    kept = await api.get(SERVICES, "held", namespace)
    del kept.metadata.finalizers[:]
    await api.update(kept)
    assert await gone(api, "held", namespace, SERVICES)()
    again = make_service("again", namespace, {"app": "x"})
    again.spec.cluster_ip = created.spec.cluster_ip
    assert (await api.create(again)).spec.cluster_ip == created.spec.cluster_ip


async def test_a_bad_finalizer_name_is_refused(api, namespace):
    pod = api_pod("bad", namespace)
    pod.metadata.finalizers.append("not a/qualified/name")
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(pod))
    assert "metadata.finalizers[0]" in message


async def test_a_uid_precondition_protects_a_pod_made_again_under_the_same_name(api, namespace):
    first = await api.create(api_pod("web", namespace))
    await delete(api, "web", namespace, uid=first.metadata.uid)
    second = await api.create(api_pod("web", namespace))
    message = await expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, delete(api, "web", namespace, uid=first.metadata.uid)
    )
    assert first.metadata.uid in message
    assert (await api.get(PODS, "web", namespace)).metadata.uid == second.metadata.uid


async def test_other_kinds_go_at_once_whatever_the_grace(api, namespace):
    await api.create(make_service("svc", namespace, {"app": "x"}))
    await delete(api, "svc", namespace, grace=30, kind=SERVICES)
    assert await gone(api, "svc", namespace, SERVICES)()


# -- with a kubelet ----------------------------------------------------------------------------------------


@pytest.fixture
def api_kubelet(apiserver, node_name: str) -> Iterator[KubeletProcess]:
    process = KubeletProcess(node_name, server=apiserver.address)
    yield process
    if os.environ.get("KYB_SHOW_KUBELET_LOG"):
        print(process.log_text()[-8000:])
    process.cleanup()


def kubelet_pod(name: str, namespace: str, node: str, command: str, *, grace: int) -> pod_pb2.Pod:
    """A pod bound to `node` whose container `main` runs `command` with an emptyDir at /data."""
    pod = make_pod(name, container("main", "sh", "-c", command), namespace=namespace, grace=grace)
    pod.spec.containers[0].volume_mounts.add(name="data", mount_path="/data")
    pod.spec.volumes.add(name="data").empty_dir.SetInParent()
    pod.spec.node_name = node
    return pod


def running(api: ApiClient, name: str, namespace: str):
    async def check() -> pod_pb2.Pod | None:
        pod = await get_pod(api, name, namespace)
        if pod is None or pod.status.phase != "Running":
            return None
        return pod if all(s.state.HasField("running") for s in pod.status.container_statuses) else None

    return check


def running_containers(node: str, pod: str) -> list[str]:
    """The names of the pod's containers Docker shows running."""
    return sorted(
        c["Labels"]["io.kybernetes.container.name"]
        for c in node_containers(node, all=False)
        if c["Labels"].get("io.kybernetes.pod.name") == pod
    )


async def watch_until_deleted(api: ApiClient, namespace: str, name: str, revision: int) -> list[Any]:
    """The pod's events after `revision`, up to and including its DELETED."""
    options = meta_pb2.ListOptions(
        namespace=namespace, field_selector=f"metadata.name={name}", resource_version=revision
    )
    call = api.watch(PODS, options)
    events = []
    try:
        async for event in call:
            if event.type == "BOOKMARK":
                continue
            events.append(event)
            if event.type == "DELETED":
                return events
    finally:
        call.cancel()
    return events


@pytest.mark.docker
async def test_the_kubelet_sends_sigterm_then_removes_the_pod_from_the_api(api, api_kubelet, namespace):
    node = api_kubelet.node
    created = await api.create(kubelet_pod("web", namespace, node, TRAPS_TERM.format(linger=2), grace=20))
    pod = await eventually(running(api, "web", namespace), what="the pod running", **API_WAIT)
    watcher = asyncio.create_task(watch_until_deleted(api, namespace, "web", pod.metadata.resource_version))
    started = time.monotonic()
    marked = await delete(api, "web", namespace)
    assert marked.metadata.deletion_grace_period_seconds == 20

    # SIGTERM, seen by the container: it writes to its emptyDir and keeps running a while.
    term_file = os.path.join(api_kubelet.root_dir, "pods", created.metadata.uid, "volumes", "data", "term")
    await eventually(lambda: os.path.exists(term_file), what="the container's SIGTERM trap ran", interval=0.05)
    assert (await asyncio.to_thread(Path(term_file).read_text)).strip() == "TERM"

    events = await asyncio.wait_for(watcher, 40)
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"the pod went after {elapsed:.1f}s: the kubelet waited out its grace period"
    assert events[-1].type == "DELETED" and events[-1].object.metadata.uid == created.metadata.uid
    final = events[-2].object
    assert final.status.phase == "Succeeded", final.status
    [status] = final.status.container_statuses
    assert status.state.terminated.exit_code == 0 and status.state.terminated.reason == "Completed"
    assert all(c.status == "False" for c in final.status.conditions if c.type == "Ready")
    await eventually(lambda: not node_containers(node), what="the pod's containers removed")
    assert await api_kubelet.get_pod("web", namespace=namespace) is None


@pytest.mark.docker
async def test_sigkill_after_the_grace_period(api, api_kubelet, namespace):
    await api.create(kubelet_pod("stubborn", namespace, api_kubelet.node, IGNORES_TERM, grace=3))
    pod = await eventually(running(api, "stubborn", namespace), what="the pod running", **API_WAIT)
    watcher = asyncio.create_task(watch_until_deleted(api, namespace, "stubborn", pod.metadata.resource_version))
    started = time.monotonic()
    await delete(api, "stubborn", namespace)
    await eventually(lambda: running_containers(api_kubelet.node, "stubborn") == [], what="the container killed")
    assert time.monotonic() - started >= 2.5  # it had its grace period first
    events = await asyncio.wait_for(watcher, 40)
    final = events[-2].object
    assert final.status.phase == "Failed"
    assert final.status.container_statuses[0].state.terminated.exit_code == 137


@pytest.mark.docker
async def test_a_shorter_grace_hurries_a_termination_under_way(api, api_kubelet, namespace):
    await api.create(kubelet_pod("slow", namespace, api_kubelet.node, IGNORES_TERM, grace=60))
    await eventually(running(api, "slow", namespace), what="the pod running", **API_WAIT)
    await delete(api, "slow", namespace)
    await eventually(lambda: "pod_terminating" in api_kubelet.log_text(), what="the kubelet stopping the pod")
    started = time.monotonic()
    await delete(api, "slow", namespace, grace=2)
    await eventually(gone(api, "slow", namespace), what="the pod gone", timeout=30)
    assert time.monotonic() - started < 20


@pytest.mark.docker
async def test_force_removes_the_pod_from_the_api_at_once_and_the_kubelet_stops_it(api, api_kubelet, namespace):
    pod = make_pod("forced", sleeper(), namespace=namespace, grace=30)
    pod.spec.node_name = api_kubelet.node
    await api.create(pod)
    await eventually(running(api, "forced", namespace), what="the pod running", **API_WAIT)
    await delete(api, "forced", namespace, grace=0)
    assert await gone(api, "forced", namespace)()
    await eventually(lambda: not node_containers(api_kubelet.node), what="the pod's containers removed")


@pytest.mark.docker
async def test_a_pod_with_a_finalizer_stays_stopped_until_the_finalizer_goes(api, api_kubelet, namespace):
    pod = make_pod("held", sleeper(), namespace=namespace, grace=10)
    pod.spec.node_name = api_kubelet.node
    pod.metadata.finalizers.append("example.com/hold")
    await api.create(pod)
    await eventually(running(api, "held", namespace), what="the pod running", **API_WAIT)
    await delete(api, "held", namespace)

    async def stopped_and_kept() -> pod_pb2.Pod | None:
        found = await get_pod(api, "held", namespace)
        assert found is not None, "the pod went with its finalizer"
        # The kubelet's own Delete (grace 0) has come: the pod waits for its finalizer only.
        done = found.metadata.deletion_grace_period_seconds == 0 and found.status.phase == "Succeeded"
        return found if done else None

    await eventually(stopped_and_kept, what="the pod stopped, its final status in, kept for its finalizer")
    assert running_containers(api_kubelet.node, "held") == []
    kept = await api.get(PODS, "held", namespace)
    del kept.metadata.finalizers[:]
    await api.update(kept)
    assert await gone(api, "held", namespace)()
    await eventually(lambda: not node_containers(api_kubelet.node), what="the pod's containers removed")


@pytest.mark.docker
async def test_a_kubelet_restarted_in_the_middle_finishes_the_termination(api, api_kubelet, namespace):
    await api.create(kubelet_pod("restart", namespace, api_kubelet.node, IGNORES_TERM, grace=8))
    await eventually(running(api, "restart", namespace), what="the pod running", **API_WAIT)
    await delete(api, "restart", namespace)
    await eventually(lambda: "pod_terminating" in api_kubelet.log_text(), what="the kubelet stopping the pod")
    api_kubelet.kill()
    assert running_containers(api_kubelet.node, "restart") == ["POD", "main"]  # within its grace period
    api_kubelet.start()
    await eventually(gone(api, "restart", namespace), what="the pod removed by the new kubelet", timeout=40)
    await eventually(lambda: not node_containers(api_kubelet.node), what="the pod's containers removed")


# -- endpoints: a terminating pod leaves at once -----------------------------------------------------------


@pytest.fixture
def endpoints_plane() -> Iterator[ControlPlane]:
    plane = ControlPlane("endpoints")
    yield plane
    plane.stop()


@pytest.mark.docker
async def test_endpoints_drop_a_terminating_pod_before_its_containers_stop(endpoints_plane, node_name, namespace):
    kubelet = KubeletProcess(node_name, server=endpoints_plane.address)
    api = ApiClient(endpoints_plane.address, timeout=10)
    try:
        for name in ("going", "staying"):
            pod = kubelet_pod(name, namespace, node_name, TRAPS_TERM.format(linger=8), grace=20)
            pod.metadata.labels["app"] = "web"
            pod.spec.containers[0].ports.add(name="http", container_port=8080)
            await api.create(pod)
        await api.create(make_service("web", namespace, {"app": "web"}, port=8080))

        def ready_addresses(expected: set[str]):
            async def check() -> bool:
                endpoints = await api.get(ENDPOINTS, "web", namespace)
                names = {a.target_ref.name for s in endpoints.subsets for a in s.addresses}
                not_ready = {a.target_ref.name for s in endpoints.subsets for a in s.not_ready_addresses}
                assert names == expected and not not_ready, (names, not_ready)
                return True

            return check

        await eventually(ready_addresses({"going", "staying"}), what="both pods ready endpoints", **API_WAIT)
        await delete(api, "going", namespace)
        await eventually(ready_addresses({"staying"}), what="the terminating pod out of the endpoints", **API_WAIT)
        # Its container is still running (it takes 8 s after SIGTERM): it left before it stopped.
        assert running_containers(node_name, "going") == ["POD", "main"]
        await eventually(gone(api, "going", namespace), what="the pod removed by its kubelet", timeout=40)
    finally:
        await api.close()
        kubelet.cleanup()
