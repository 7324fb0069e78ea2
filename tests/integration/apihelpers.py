"""Small builders and helpers for tests that talk to a real API server."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from kybernetes.v1 import meta_pb2, node_pb2, pod_pb2, replication_controller_pb2, service_pb2
from services.common.resources import REPLICATION_CONTROLLERS

BUSYBOX = "kybernetes/busybox:latest"


def make_pod(
    name: str, namespace: str, labels: dict[str, str] | None = None, node: str = "", **spec: Any
) -> pod_pb2.Pod:
    pod = pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace, labels=labels or {}),
        spec=pod_pb2.PodSpec(
            containers=[pod_pb2.Container(name="main", image=BUSYBOX, command=["sleep", "3600"])],
            node_name=node,
            **spec,
        ),
    )
    return pod


def make_service(name: str, namespace: str, selector: dict[str, str], port: int = 80) -> service_pb2.Service:
    return service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace),
        spec=service_pb2.ServiceSpec(selector=selector, ports=[service_pb2.ServicePort(port=port)]),
    )


def make_rc(
    name: str,
    namespace: str,
    labels: dict[str, str],
    replicas: int = 1,
    container: pod_pb2.Container | None = None,
    grace_seconds: int | None = None,
) -> replication_controller_pb2.ReplicationController:
    spec = pod_pb2.PodSpec(containers=[container or pod_pb2.Container(name="main", image=BUSYBOX)])
    if grace_seconds is not None:
        spec.termination_grace_period_seconds = grace_seconds
    return replication_controller_pb2.ReplicationController(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace),
        spec=replication_controller_pb2.ReplicationControllerSpec(
            replicas=replicas,
            selector=labels,
            template=pod_pb2.PodTemplateSpec(metadata=meta_pb2.ObjectMeta(labels=labels), spec=spec),
        ),
    )


def httpd_container(command: list[str]) -> pod_pb2.Container:
    """A busybox web server container with an `http` port on 8080."""
    return pod_pb2.Container(
        name="web", image=BUSYBOX, command=command, ports=[pod_pb2.ContainerPort(name="http", container_port=8080)]
    )


async def scale(api: Any, namespace: str, name: str, replicas: int) -> None:
    """Sets an RC's replicas, retrying a race with the replicator's status writes."""
    for _ in range(10):
        rc = await api.get(REPLICATION_CONTROLLERS, name, namespace)
        rc.spec.replicas = replicas
        try:
            await api.update(rc)
            return
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ABORTED:
                raise
    raise AssertionError(f"could not scale {name}")


def make_node(name: str, labels: dict[str, str] | None = None) -> node_pb2.Node:
    return node_pb2.Node(metadata=meta_pb2.ObjectMeta(name=name, labels=labels or {}))


async def expect_error(code: grpc.StatusCode, awaitable: Any) -> str:
    """Awaits a call that must fail with `code`; returns the error's message."""
    try:
        await awaitable
    except grpc.aio.AioRpcError as error:
        assert error.code() == code, f"expected {code.name}, got {error.code().name}: {error.details()}"
        return error.details() or ""
    raise AssertionError(f"expected {code.name}, but the call succeeded")


async def compact_etcd(etcd_endpoint: str) -> None:
    """Compacts etcd's history up to its current revision (what a watch from before then meets)."""
    from services.apiserver.storage import Storage
    from tools.processes import dev_pki

    storage = Storage([etcd_endpoint], credentials=dev_pki().etcd_client_credentials())
    await storage.connect()
    try:
        await storage.compact(await storage.current_revision())
    finally:
        await storage.close()


async def collect_events(call: Any, count: int, timeout: float = 20.0) -> list[Any]:
    """Reads `count` non-bookmark events from a watch call."""
    events: list[Any] = []

    async def read() -> None:
        async for event in call:
            if event.type == "BOOKMARK":
                continue
            events.append(event)
            if len(events) >= count:
                return

    await asyncio.wait_for(read(), timeout)
    return events


# Pod Security's label on a Namespace (services/apiserver/auth/podsecurity.py).
POD_SECURITY_ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"


async def create_namespace(api: Any, name: str, level: str | None = None, timeout: float = 10.0) -> Any:
    """Creates the Namespace object `name`, labelled with Pod Security level `level` if given,
    and returns once the API server's Namespace cache (what Pod Security reads) holds it, so
    that a pod created next is judged by it. A namespace without an object is `baseline`:
    tests whose pods need more (hostPath, host ports) call this with "privileged" first."""
    from kybernetes.v1 import namespace_pb2
    from services.common.resources import NAMESPACES

    labels = {POD_SECURITY_ENFORCE_LABEL: level} if level else {}
    created = await api.create(namespace_pb2.Namespace(metadata=meta_pb2.ObjectMeta(name=name, labels=labels)))
    # A Watch is served from that same cache: the object's event arrives once the cache has it.
    options = meta_pb2.ListOptions(
        resource_version=created.metadata.resource_version - 1, field_selector=f"metadata.name={name}"
    )
    call = api.watch(NAMESPACES, options)
    try:
        await collect_events(call, 1, timeout)
    finally:
        call.cancel()
    return created


async def privileged_namespace(api: Any, name: str) -> Any:
    """The Namespace `name` at Pod Security level privileged (see create_namespace)."""
    return await create_namespace(api, name, "privileged")
