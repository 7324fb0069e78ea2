"""The kubelet's side of graceful deletion, without Docker or an API server: a pod being deleted
stays wanted (as terminating) until the API's DELETED event, and the status manager removes a
terminated pod from the API (grace 0, its uid as precondition) only after its final status."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import grpc

from kybernetes.v1 import meta_pb2, pod_pb2
from services.kubelet.sources import CONFIG_SOURCE_ANNOTATION, ApiSource, PodConfig
from services.kubelet.statusmanager import StatusManager
from tests.polling import eventually


def api_pod(name: str = "web", uid: str = "uid-1", *, grace: int | None = None) -> pod_pb2.Pod:
    pod = pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name=name, namespace="default", uid=uid),
        spec=pod_pb2.PodSpec(containers=[pod_pb2.Container(name="c", image="busybox")], node_name="node-1"),
    )
    if grace is not None:
        pod.metadata.deletion_timestamp.seconds = 1_800_000_000
        pod.metadata.deletion_grace_period_seconds = grace
    return pod


def test_a_pod_being_deleted_stays_wanted_until_it_is_gone_and_wakes_its_worker() -> None:
    changes: list[set[str]] = []
    config = PodConfig(changes.append)
    source = ApiSource(object(), "node-1", config, lambda event, pod: None)
    source._handle("ADDED", api_pod(), None)
    source._handle("MODIFIED", api_pod(grace=30), api_pod())
    wanted = config.get("uid-1")
    assert wanted is not None and wanted.metadata.deletion_grace_period_seconds == 30
    source._handle("MODIFIED", api_pod(grace=5), api_pod(grace=30))  # a shorter grace wakes it too
    status_only = api_pod(grace=5)
    status_only.status.phase = "Succeeded"
    source._handle("MODIFIED", status_only, api_pod(grace=5))  # a status change does not
    source._handle("DELETED", status_only, None)
    assert config.get("uid-1") is None
    assert changes == [{"uid-1"}] * 4


class FakeStub:
    def __init__(self, client: FakeClient) -> None:
        self.client = client

    async def Delete(self, request: meta_pb2.DeleteRequest, timeout: float | None = None) -> Any:
        self.client.calls.append(("delete", request))
        if self.client.delete_errors:
            raise grpc.aio.AioRpcError(self.client.delete_errors.pop(0), grpc.aio.Metadata(), grpc.aio.Metadata())
        return pod_pb2.Pod()


class FakeClient:
    timeout = 5.0

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.delete_errors: list[grpc.StatusCode] = []

    async def update_status(self, pod: pod_pb2.Pod) -> pod_pb2.Pod:
        self.calls.append(("status", copy.deepcopy(pod.status)))
        await asyncio.sleep(0.01)
        return pod

    def stub(self, kind: Any) -> FakeStub:
        return FakeStub(self)


def manager(client: FakeClient, pods: dict[str, pod_pb2.Pod]) -> StatusManager:
    def lookup(namespace: str, name: str) -> pod_pb2.Pod | None:
        return pods.get(name)

    return StatusManager(client, api_pod=lookup, mirror_pod=lambda namespace, name: None)


async def test_a_terminated_pod_is_removed_after_its_final_status_with_grace_0_and_its_uid() -> None:
    client = FakeClient()
    pod = api_pod(grace=30)
    statuses = manager(client, {"web": pod})
    final = pod_pb2.PodStatus(phase="Succeeded")
    statuses.publish("uid-1", pod, final)
    statuses.pod_terminated("uid-1", pod)
    await eventually(lambda: len(client.calls) == 2, what="a status and a delete", timeout=5)
    (what, sent), (verb, request) = client.calls
    assert (what, sent.phase, verb) == ("status", "Succeeded", "delete")
    assert request.name == "web" and request.namespace == "default"
    assert request.HasField("grace_period_seconds") and request.grace_period_seconds == 0
    assert request.preconditions_uid == "uid-1"
    # Asked again (the worker passes by again): nothing more.
    statuses.pod_terminated("uid-1", pod)
    statuses.publish("uid-1", pod, final)
    await asyncio.sleep(0.1)
    assert len(client.calls) == 2


async def test_a_failed_removal_is_retried_and_a_gone_pod_is_left_alone() -> None:
    client = FakeClient()
    client.delete_errors = [grpc.StatusCode.UNAVAILABLE]
    pod = api_pod(grace=30)
    statuses = manager(client, {"web": pod})
    statuses.pod_terminated("uid-1", pod)  # no status of its own to send (a restarted kubelet's case)
    await eventually(lambda: len(client.calls) == 2, what="a delete retried", timeout=5)
    assert [verb for verb, _ in client.calls] == ["delete", "delete"]

    gone = FakeClient()
    gone.delete_errors = [grpc.StatusCode.NOT_FOUND]
    statuses = manager(gone, {"web": pod})
    statuses.pod_terminated("uid-1", pod)
    await asyncio.sleep(0.2)
    assert [verb for verb, _ in gone.calls] == ["delete"]


async def test_only_api_pods_are_removed() -> None:
    client = FakeClient()
    static = api_pod(grace=30)
    static.metadata.annotations[CONFIG_SOURCE_ANNOTATION] = "file"
    statuses = manager(client, {"web": static})
    statuses.pod_terminated("uid-1", static)
    await asyncio.sleep(0.1)
    assert client.calls == []
