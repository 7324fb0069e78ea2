"""The asyncio client of the API server, shared by kubecfg, kubelet, proxy and replicator."""

from __future__ import annotations

import os
from typing import Any, Literal

import grpc
from google.protobuf.message import Message

from kybernetes.v1 import meta_pb2, pod_pb2

from . import kubeconfig as kubeconfig_module
from .kubeconfig import ClusterAccess
from .resources import DEFAULT_NAMESPACE, PODS, Kind, kind_of_message
from .transport import FAST_RECONNECT, ClientCredentials, aio_channel

DEFAULT_SERVER = "127.0.0.1:6443"
SERVER_ENV = "KYBERNETES_SERVER"

# Keepalives let a watch notice a dead server instead of hanging forever.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    *FAST_RECONNECT,
]


def resolve_server(server: str | None = None) -> str:
    """--server, else $KYBERNETES_SERVER, else 127.0.0.1:6443."""
    return server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER


def cluster_access(
    kubeconfig: str | None = None, server: str | None = None, context: str | None = None
) -> ClusterAccess:
    """How a client reaches the API server: the kubeconfig (--kubeconfig, else
    $KYBERNETES_CONFIG, else ~/.kybernetes/config) with --server overriding its address.
    With no kubeconfig at all, plaintext to --server: only a server run with
    --insecure-dev answers that."""
    path = kubeconfig_module.resolve_path(kubeconfig)
    if path is None:
        return ClusterAccess(resolve_server(server), None)
    access = kubeconfig_module.load(path, context=context)
    if server:
        access = ClusterAccess(server, access.credentials, access.namespace, access.user)
    return access


class ApiClient:
    """One channel to the API server and a stub per kind."""

    def __init__(
        self,
        server: str | None = None,
        *,
        credentials: ClientCredentials | None | Literal["kubeconfig"] = "kubeconfig",
        timeout: float | None = 30.0,
    ) -> None:
        """credentials: by default the kubeconfig's ($KYBERNETES_CONFIG, else
        ~/.kybernetes/config), with `server` overriding its address; None for plaintext."""
        if credentials == "kubeconfig":
            access = cluster_access(None, server)
            server, credentials = access.server, access.credentials
        self.server = resolve_server(server)
        self.credentials = credentials
        self.timeout = timeout
        self.channel = aio_channel(self.server, credentials, CHANNEL_OPTIONS)
        self._stubs: dict[str, Any] = {}

    @classmethod
    def for_access(cls, access: ClusterAccess, *, timeout: float | None = 30.0) -> ApiClient:
        return cls(access.server, credentials=access.credentials, timeout=timeout)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> "ApiClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stub(self, kind: Kind) -> Any:
        stub = self._stubs.get(kind.name)
        if stub is None:
            stub = self._stubs[kind.name] = kind.stub(self.channel)
        return stub

    async def create(self, obj: Message) -> Any:
        return await self.stub(kind_of_message(obj)).Create(obj, timeout=self.timeout)

    async def update(self, obj: Message) -> Any:
        return await self.stub(kind_of_message(obj)).Update(obj, timeout=self.timeout)

    async def update_status(self, obj: Message) -> Any:
        return await self.stub(kind_of_message(obj)).UpdateStatus(obj, timeout=self.timeout)

    async def get(self, kind: Kind, name: str, namespace: str = DEFAULT_NAMESPACE) -> Any:
        request = meta_pb2.GetRequest(namespace=namespace if kind.namespaced else "", name=name)
        return await self.stub(kind).Get(request, timeout=self.timeout)

    async def list(
        self,
        kind: Kind,
        namespace: str = "",
        *,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> Any:
        options = meta_pb2.ListOptions(
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            limit=limit,
            continue_token=continue_token,
        )
        return await self.stub(kind).List(options, timeout=self.timeout)

    async def delete(
        self,
        kind: Kind,
        name: str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        resource_version: int = 0,
        propagation_policy: str = "",
        grace_period_seconds: int | None = None,
        preconditions_uid: str = "",
    ) -> Any:
        """Deletes; a bound pod is only marked (Terminating) unless grace_period_seconds is 0."""
        request = meta_pb2.DeleteRequest(
            namespace=namespace if kind.namespaced else "",
            name=name,
            resource_version=resource_version,
            propagation_policy=propagation_policy,
            preconditions_uid=preconditions_uid,
        )
        if grace_period_seconds is not None:
            request.grace_period_seconds = grace_period_seconds
        return await self.stub(kind).Delete(request, timeout=self.timeout)

    async def bind(self, namespace: str, name: str, node_name: str) -> pod_pb2.Pod:
        binding = pod_pb2.Binding(
            metadata=meta_pb2.ObjectMeta(namespace=namespace, name=name),
            target=pod_pb2.ObjectReference(kind="Node", name=node_name),
        )
        return await self.stub(PODS).Bind(binding, timeout=self.timeout)

    def watch(self, kind: Kind, options: meta_pb2.ListOptions) -> grpc.aio.UnaryStreamCall:
        """The raw event stream; see runtime.informer.Informer for a resuming, caching watch."""
        call: grpc.aio.UnaryStreamCall = self.stub(kind).Watch(options)
        return call


def client_from_args(args: Any, *, timeout: float | None = 30.0) -> ApiClient:
    """The API client a component's --kubeconfig and --server flags describe; a bad
    kubeconfig exits with a usage error naming the file and field."""
    try:
        access = cluster_access(getattr(args, "kubeconfig", None), args.server)
    except kubeconfig_module.KubeconfigError as error:
        raise SystemExit(f"--kubeconfig: {error}") from None
    return ApiClient.for_access(access, timeout=timeout)
