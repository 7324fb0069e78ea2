"""The API server's gRPC surface: one service per kind, reflection and health.

Handlers are registered from the service descriptors rather than the
generated add_*_to_server helpers, so List and Watch can send bytes that were
encoded once (a watch event is encoded once for all of its watchers).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from kybernetes.v1 import meta_pb2
from services.common.log import get_logger
from services.common.resources import ALL_KINDS, PODS, REPLICATION_CONTROLLERS, Kind
from services.common.timestamps import now_timestamp

from .errors import ApiError
from .registry import Registry
from .storage import Storage

log = get_logger()


def _passthrough(message: Any) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def _object_name(request: Any) -> str:
    meta = getattr(request, "metadata", None)
    if meta is not None and hasattr(meta, "name"):
        namespace, name = meta.namespace, meta.name or meta.generate_name
    else:
        namespace, name = getattr(request, "namespace", ""), getattr(request, "name", "")
    return f"{namespace}/{name}" if namespace else name


class ApiServer:
    """Owns the storage, one registry per kind, and the gRPC server."""

    def __init__(
        self,
        etcd_servers: list[str],
        *,
        watch_history: int = 20_000,
        watcher_capacity: int = 10_000,
        bookmark_interval: float = 5.0,
        log_requests: bool = True,
    ) -> None:
        self.storage = Storage(etcd_servers)
        self.registries: dict[str, Registry] = {
            kind.name: Registry(
                kind,
                self.storage,
                history=watch_history,
                watcher_capacity=watcher_capacity,
                bookmark_interval=bookmark_interval,
            )
            for kind in ALL_KINDS
        }
        self.registries[REPLICATION_CONTROLLERS.name].before_delete = self._orphan_pods_if_asked
        self.log_requests = log_requests
        self.health = HealthServicer()
        self.server: grpc.aio.Server | None = None
        self._cache_tasks: list[asyncio.Task] = []

    # -- handlers ---------------------------------------------------------

    def _unary(self, kind: Kind, method: str, behaviour: Callable[[Any], Any]) -> Callable:
        log_requests = self.log_requests

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await behaviour(request)
            except ApiError as error:
                code = error.code.name
                await context.abort(error.code, error.message)
            except Exception:
                code = "INTERNAL"
                log.exception("request_failed", method=f"{kind.plural}.{method}", object=_object_name(request))
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the API server's log")
            finally:
                if log_requests:
                    log.info(
                        "request",
                        method=f"{kind.name}.{method}",
                        object=_object_name(request),
                        code=code,
                        ms=round((time.perf_counter() - started) * 1000, 2),
                    )

        return handler

    def _watch(self, kind: Kind, registry: Registry) -> Callable:
        async def handler(request: meta_pb2.ListOptions, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            sent = 0
            try:
                async for data in registry.watch(request):
                    sent += 1
                    yield data
            except ApiError as error:
                code = error.code.name
                await context.abort(error.code, error.message)
            finally:
                log.info(
                    "watch_ended",
                    method=f"{kind.name}.Watch",
                    namespace=request.namespace or "*",
                    label_selector=request.label_selector or None,
                    field_selector=request.field_selector or None,
                    code=code,
                    events=sent,
                    s=round(time.perf_counter() - started, 1),
                )

        return handler

    def _service_handler(self, kind: Kind) -> grpc.GenericRpcHandler:
        registry = self.registries[kind.name]
        service = descriptor_pool.Default().FindServiceByName(kind.service_name)
        behaviours: dict[str, Callable[[Any], Any]] = {
            "Create": registry.create,
            "Get": registry.get,
            "List": registry.list,
            "Update": registry.update,
            "Delete": registry.delete,
            "UpdateStatus": registry.update_status,
            "Bind": registry.bind,
        }
        handlers = {}
        for method in service.methods:
            message_class = _message_class(method.input_type.full_name)
            deserializer = message_class.FromString
            if method.server_streaming:
                handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                    self._watch(kind, registry), request_deserializer=deserializer, response_serializer=_passthrough
                )
            else:
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    self._unary(kind, method.name, behaviours[method.name]),
                    request_deserializer=deserializer,
                    response_serializer=_passthrough,
                )
        return grpc.method_handlers_generic_handler(kind.service_name, handlers)

    async def _orphan_pods_if_asked(self, controller: Any, policy: str) -> None:
        """--cascade=false: the controller's pods stay, with the owner reference removed."""
        if policy != "Orphan":
            return
        # Mark the controller as being deleted before releasing its pods, so its
        # replication manager stops adopting and replacing them (as Kubernetes'
        # orphan finalizer does); Delete's retry loop then deletes it.
        uid = controller.metadata.uid

        def mark(current: Any) -> Any:
            if current.metadata.uid != uid or current.metadata.HasField("deletion_timestamp"):
                return None
            updated = type(current)()
            updated.CopyFrom(current)
            updated.metadata.deletion_timestamp.CopyFrom(now_timestamp())
            return updated

        await self.registries[REPLICATION_CONTROLLERS.name].guarded_write(
            controller.metadata.namespace, controller.metadata.name, 0, mark
        )
        pods = self.registries[PODS.name]
        listing = PODS.list_message.FromString(
            await pods.list(meta_pb2.ListOptions(namespace=controller.metadata.namespace))
        )
        for pod in listing.items:
            if not any(ref.uid == uid for ref in pod.metadata.owner_references):
                continue

            def release(current: Any) -> Any:
                kept = [ref for ref in current.metadata.owner_references if ref.uid != uid]
                if len(kept) == len(current.metadata.owner_references):
                    return None
                updated = type(current)()
                updated.CopyFrom(current)
                del updated.metadata.owner_references[:]
                updated.metadata.owner_references.extend(kept)
                return updated

            try:
                await pods.guarded_write(pod.metadata.namespace, pod.metadata.name, 0, release)
            except ApiError as error:
                if error.code != grpc.StatusCode.NOT_FOUND:
                    raise

    # -- lifecycle --------------------------------------------------------

    async def start(self, listen: str) -> int:
        """Connects to etcd, fills the watch caches and starts serving; returns the port."""
        await self.storage.connect()
        for registry in self.registries.values():
            self._cache_tasks.append(asyncio.create_task(registry.cache.run(), name=f"cache-{registry.kind.plural}"))
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 512 * 1024 * 1024),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.server.add_generic_rpc_handlers([self._service_handler(kind) for kind in ALL_KINDS])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [kind.service_name for kind in ALL_KINDS] + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        port = self.server.add_insecure_port(listen)
        if port == 0:
            raise OSError(f"--listen: cannot bind {listen}")
        await asyncio.gather(*(registry.cache.wait_ready() for registry in self.registries.values()))
        await self.server.start()
        await self._set_serving(True)
        return port

    async def _set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for kind in ALL_KINDS:
            await self.health.set(kind.service_name, status)
        await self.health.set("", status)

    async def stop(self, grace: float = 5.0) -> None:
        """Stops accepting calls, ends watch streams cleanly, finishes in-flight calls."""
        await self._set_serving(False)
        for registry in self.registries.values():
            registry.cache.end_watches()
        if self.server is not None:
            await self.server.stop(grace)
        for task in self._cache_tasks:
            task.cancel()
        await asyncio.gather(*self._cache_tasks, return_exceptions=True)
        await self.storage.close()


def _message_class(full_name: str) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(full_name))
