"""The API server's gRPC surface: one service per kind, reflection and health.

Handlers are registered from the service descriptors rather than the
generated add_*_to_server helpers, so List and Watch can send bytes that were
encoded once (a watch event is encoded once for all of its watchers). Each
method is served by the kind's registry: the verbs every kind has, plus the
subresources its strategy declares (strategies.py); a method nothing serves,
or a subresource with no method, fails at start-up.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, Callable

import grpc
from google.protobuf import descriptor_pool, unknown_fields
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from kybernetes.v1 import authorization_pb2, certificates_pb2, meta_pb2
from services.common.log import get_logger
from services.common.pki import CertificateAuthority
from services.common.selectors import validate_dns1123_label
from services.common.resources import ALL_KINDS, NAMESPACES, RBAC_KINDS, Kind
from services.common.runtime import TaskGroup
from services.common.transport import ClientCredentials, ServingCertificate
from services.common.validation import show_value

from .auth.attributes import SUBRESOURCE_OF_METHOD, VERB_OF_METHOD, Authorizer, RequestAttributes
from .auth.authenticate import Authenticator
from .auth.bootstrap import reconcile_bootstrap
from .auth.certificates import CertificatesServicer
from .auth.context import current_user
from .auth.interceptor import AuthenticatingInterceptor
from .auth.review import AuthorizationServicer
from .auth.replicaslimit import DEFAULT_MAX_REPLICAS
from .auth.setup import build_admission_plugins, build_authorizer
from .errors import ApiError
from .ipallocator import (
    DEFAULT_SERVICE_CLUSTER_IP_RANGE,
    DEFAULT_SERVICE_NODE_PORT_RANGE,
    NodePortRange,
    ServiceIPRange,
)
from .nodeipam import DEFAULT_NODE_CIDR_MASK_SIZE
from .registry import OFFLOAD_BYTES, RECEIVED, Registry, build_registries, off_loop
from .storage import Storage
from .watchcache import DEFAULT_BOOKMARK_INTERVAL, DEFAULT_HISTORY_AGE, DEFAULT_HISTORY_BYTES
from .strategies import DEFAULT_EVENT_TTL, build_strategies

log = get_logger()


def _passthrough(message: Any) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


async def _encoded(response: Any, received: int) -> Any:
    """A big response (a big object's create or update, or one read), encoded in the
    big-object thread: gRPC would encode it on the loop (5-15 ms for 1.4 MiB). A small one
    is returned as it is, for _passthrough."""
    if isinstance(response, bytes):
        return response
    size = received if received >= OFFLOAD_BYTES else response.ByteSize()  # ~0.3 us for a small object
    if size < OFFLOAD_BYTES:
        return response
    return await off_loop(size, response.SerializeToString)


# What a log line quotes of a value the client chose (a name, a selector): a log line
# stays a line however long the value was (issue 14, D5).
MAX_LOGGED_VALUE = 256


def _loggable(text: str) -> str:
    if len(text) <= MAX_LOGGED_VALUE:
        return text
    return f"{text[:MAX_LOGGED_VALUE]}…({len(text) - MAX_LOGGED_VALUE} more characters)"


def _object_name(request: Any) -> str:
    meta = getattr(request, "metadata", None)
    if meta is not None and hasattr(meta, "name"):
        namespace, name = meta.namespace, meta.name or meta.generate_name
    else:
        namespace, name = getattr(request, "namespace", ""), getattr(request, "name", "")
    return _loggable(f"{namespace}/{name}" if namespace else name)


def _fail(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """Ends the call with code and message, the handler then returning. Not context.abort:
    it raises, and the exception, kept in the call's state, holds its traceback, whose
    frames hold the request (its bytes, decoded or not) in a reference cycle that only the
    garbage collector's rare full collections free. Every rejected 4 MiB request was kept
    so: 150 of them grew the server by 600 MB (issue 14, D9)."""
    context.set_code(code)
    context.set_details(message)


# The largest request (an object, in practice) the API takes: Kubernetes' 1.5 MiB, within
# etcd's own request limit (--max-request-bytes, 1.5 MiB by default).
MAX_REQUEST_BYTES = 3 * 2**19
# What gRPC reads of one request at most: beyond the object limit, so that a request a little
# too large gets the message above, and far below anything that could hurt the server.
MAX_RECEIVE_BYTES = 4 * 2**20

# The methods whose request is an object to store: fields it does not know are refused.
WRITE_METHODS = frozenset({"Create", "Update", "UpdateStatus", "Bind"})

# How long a thread holding the GIL keeps it once another asks (Python's default: 5 ms). The
# loop asks each time it wakes (several times per call) while the big-object thread works
# (registry.off_loop), and waited up to 5 ms each time: bench/bigobjects.py, a well-behaved
# client's Gets while 4 clients sent 1.4 MiB invalid pods, p50 14-18 ms and p99 88-93 ms at 5 ms,
# 5-6 ms and 42-53 ms at 1 ms. It matters only while two threads want the GIL, which in this
# server happens only while a big object is worked on.
SWITCH_INTERVAL = 0.001

# How often the health service checks etcd, and how long an answer may take.
ETCD_HEALTH_PERIOD = 2.0
ETCD_HEALTH_TIMEOUT = 2.0


def _unknown_fields(message: Message, path: str = "") -> list[str]:
    """Where a decoded message holds fields its schema does not have: `spec.containers[0].#99`."""
    unknown = unknown_fields.UnknownFieldSet(message)
    found = [f"{path}#{unknown[index].field_number}" for index in range(len(unknown))]
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        name = f"{path}{descriptor.json_name}"
        if descriptor.message_type.GetOptions().map_entry:
            if descriptor.message_type.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    found += _unknown_fields(item, f"{name}[{key}].")
        elif descriptor.is_repeated:
            for index, item in enumerate(value):
                found += _unknown_fields(item, f"{name}[{index}].")
        else:
            found += _unknown_fields(value, f"{name}.")
    return found


def _decoder(message_class: type[Message], *, strict: bool) -> Callable[[bytes], Any]:
    """Decodes a request inside the handler rather than as gRPC's deserializer: a request that
    is not the message (garbage, invalid UTF-8 in a string, nesting too deep) then gets
    INVALID_ARGUMENT saying so, where gRPC's own layer would answer UNKNOWN.

    Fields the schema does not have are never kept (else a client could store opaque bytes
    that every reader is served back). An object written with some (strict) is refused
    naming them, as Kubernetes' strict field validation does; other requests drop them."""
    name = message_class.DESCRIPTOR.full_name
    # Get, List, Watch and Delete name a namespace outside any object's metadata.
    names_namespace = message_class in (meta_pb2.GetRequest, meta_pb2.ListOptions, meta_pb2.DeleteRequest)

    def decode(data: bytes) -> Any:
        if len(data) > MAX_REQUEST_BYTES:
            # Checked before any work, and before etcd would refuse the write as UNAVAILABLE-looking
            # noise: Kubernetes' limit (413 Request Entity Too Large).
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request: {len(data) / 2**20:.1f} MiB is more than the {MAX_REQUEST_BYTES / 2**20:.1f} MiB "
                "an object may be",
            )
        try:
            message: Any = message_class.FromString(data)
        except DecodeError as error:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {name} message: {show_value(str(error))}"
            ) from None
        message.DiscardUnknownFields()
        if names_namespace and message.namespace:
            reason = validate_dns1123_label(message.namespace)
            if reason:  # else a List in "Bad/Name" would answer an empty list, as if it existed
                raise ApiError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"namespace: {show_value(message.namespace)}: {reason}"
                )
        # The re-encoded size is the sent size unless something was dropped (or the sender
        # encoded a default value, which is legal): only then look for what and where.
        if strict and message.ByteSize() != len(data):
            unknown = _unknown_fields(message_class.FromString(data))
            if unknown:
                shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
                raise ApiError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request: unknown field(s) {show_value(shown)} in {name}: not in this server's API "
                    "(are the client's protos newer?)",
                )
        return message

    return decode


def listen_addresses(value: str) -> list[str]:
    """`--listen`'s comma-separated host:port addresses."""
    return [address.strip() for address in value.split(",") if address.strip()]


class ApiServer:
    """Owns the storage, one registry per kind, and the gRPC server."""

    def __init__(
        self,
        etcd_servers: list[str],
        *,
        watch_history: int = 20_000,
        watch_history_bytes: int = DEFAULT_HISTORY_BYTES,
        watch_history_age: float = DEFAULT_HISTORY_AGE,
        watcher_capacity: int = 10_000,
        bookmark_interval: float = DEFAULT_BOOKMARK_INTERVAL,
        log_requests: bool = True,
        service_cluster_ip_range: str = DEFAULT_SERVICE_CLUSTER_IP_RANGE,
        service_node_port_range: str = DEFAULT_SERVICE_NODE_PORT_RANGE,
        serving: ServingCertificate | None = None,
        authenticator: Authenticator | None = None,
        pod_security_default: str = "baseline",
        cluster_cidr: str | None = None,
        node_cidr_mask_size: int = DEFAULT_NODE_CIDR_MASK_SIZE,
        max_replicas: int = DEFAULT_MAX_REPLICAS,
        etcd_credentials: ClientCredentials | None = None,
        signing_ca: CertificateAuthority | None = None,
        event_ttl: int = DEFAULT_EVENT_TTL,
    ) -> None:
        # A bad range is a ValueError (RangeError) naming the flag, before anything starts.
        strategies = build_strategies(
            cluster_ip_range=ServiceIPRange.parse(service_cluster_ip_range),
            node_port_range=NodePortRange.parse(service_node_port_range),
            event_ttl=event_ttl,
        )
        self.storage = Storage(etcd_servers, credentials=etcd_credentials)
        self.registries: dict[str, Registry] = build_registries(
            strategies.values(),
            self.storage,
            history=watch_history,
            history_bytes=watch_history_bytes,
            history_age=watch_history_age,
            watcher_capacity=watcher_capacity,
            bookmark_interval=bookmark_interval,
        )
        self.log_requests = log_requests
        # TLS and authentication on every call, unless run with --insecure-dev (serving None):
        # then every caller acts as the API server itself and nothing is authorized.
        self.serving = serving
        self.authenticator = authenticator or Authenticator()
        authorizer = build_authorizer(self.registries)
        self.authorizer: Authorizer | None = authorizer if serving is not None else None
        # SubjectAccessReviews answer from the policy even where calls are not authorized.
        self._review_authorizer = authorizer
        # Admission is policy on objects, not on callers: it runs with --insecure-dev too.
        plugins = build_admission_plugins(
            self.registries,
            authorizer,
            pod_security_default=pod_security_default,
            cluster_cidr=cluster_cidr,
            node_cidr_mask_size=node_cidr_mask_size,
            max_replicas=max_replicas,
        )
        for registry in self.registries.values():
            registry.admission.plugins = list(plugins)
        # Built now so that a method nothing serves fails before anything starts.
        self._handlers = [self._service_handler(kind) for kind in ALL_KINDS]
        self.certificates = CertificatesServicer(signing_ca, self.registries)
        self.health = HealthServicer()
        self.server: grpc.aio.Server | None = None
        # One watch cache per kind, each following etcd for as long as the server runs:
        # a cache whose loop dies is logged and restarted (it re-lists), never left dead.
        self._caches = TaskGroup("watch-caches")
        self._monitor = TaskGroup("health")

    # -- handlers ---------------------------------------------------------

    def _unary(
        self, kind: Kind, method: str, behaviour: Callable[[Any], Any], decode: Callable[[bytes], Any]
    ) -> Callable:
        log_requests = self.log_requests
        authorize = self._authorization(kind, method)

        async def handler(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            request: Any = None
            try:
                # A big request is decoded, handled and encoded off the loop (registry.off_loop).
                request = await off_loop(len(data), decode, data)
                RECEIVED.set((request, len(data)))
                if authorize is not None:
                    authorize(request)
                return await _encoded(await behaviour(request), len(data))
            except ApiError as error:
                code = error.code.name
                _fail(context, error.code, error.message)
            except Exception:
                code = "INTERNAL"
                log.exception("request_failed", method=f"{kind.plural}.{method}", object=_object_name(request))
                _fail(context, grpc.StatusCode.INTERNAL, "internal error; see the API server's log")
            finally:
                if log_requests:
                    log.info(
                        "request",
                        method=f"{kind.name}.{method}",
                        object=_object_name(request),
                        code=code,
                        ms=round((time.perf_counter() - started) * 1000, 2),
                    )
            return None  # the status set by _fail: no response is sent

        return handler

    def _authorization(self, kind: Kind, method: str) -> Callable[[Any], None] | None:
        """The check a call of kind.method passes before it runs: the caller (set by the
        authenticating interceptor) may do this verb on this object, or PERMISSION_DENIED
        naming who, what and where. None when the server authorizes nothing."""
        authorizer = self.authorizer
        if authorizer is None:
            return None
        verb = VERB_OF_METHOD[method]
        subresource = SUBRESOURCE_OF_METHOD.get(method, "")
        api_group = kind.api_version.rpartition("/")[0]
        default_namespace = "default" if kind.namespaced else ""

        def authorize(request: Any) -> None:
            meta = getattr(request, "metadata", None)
            field_selector = label_selector = ""
            if method in ("List", "Watch"):
                namespace, name = request.namespace, ""
                # The Node authorizer lets a kubelet read only its own pods and Node, which
                # it tells from the selectors (Kubernetes' AuthorizeNodeWithSelectors).
                field_selector, label_selector = request.field_selector, request.label_selector
            elif meta is not None and hasattr(meta, "name"):
                namespace, name = meta.namespace or default_namespace, meta.name
            else:
                namespace, name = request.namespace or default_namespace, request.name
            attributes = RequestAttributes(
                current_user(), verb, kind.plural, subresource, namespace if kind.namespaced else "", name, api_group,
                field_selector=field_selector, label_selector=label_selector,
            )
            verdict = authorizer.authorize(attributes)
            if not verdict.allowed:
                reason = f": {verdict.reason}" if verdict.reason else ""
                raise ApiError(grpc.StatusCode.PERMISSION_DENIED, f"forbidden: {attributes.describe()}{reason}")

        return authorize

    def _watch(self, kind: Kind, registry: Registry, decode: Callable[[bytes], Any]) -> Callable:
        authorize = self._authorization(kind, "Watch")

        async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            sent = 0
            request = meta_pb2.ListOptions()
            try:
                request = await off_loop(len(raw), decode, raw)
                if authorize is not None:
                    authorize(request)
                async for data in registry.watch(request):
                    sent += 1
                    yield data
            except ApiError as error:
                code = error.code.name
                _fail(context, error.code, error.message)
            except Exception:
                code = "INTERNAL"
                log.exception("watch_failed", method=f"{kind.plural}.Watch")
                _fail(context, grpc.StatusCode.INTERNAL, "internal error; see the API server's log")
            finally:
                log.info(
                    "watch_ended",
                    method=f"{kind.name}.Watch",
                    namespace=_loggable(request.namespace) or "*",
                    label_selector=_loggable(request.label_selector) or None,
                    field_selector=_loggable(request.field_selector) or None,
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
        }
        for rpc, subresource in registry.subresources.items():
            if rpc not in service.methods_by_name:
                raise RuntimeError(f"{kind.service_name} has no {rpc} method for the {subresource.name} subresource")
            behaviours[rpc] = subresource.handle
        if kind in POLICY_KINDS:
            for rpc in ("Create", "Update", "Delete"):
                behaviours[rpc] = _settled(registry, behaviours[rpc])
        handlers = {}
        for method in service.methods:
            decode = _decoder(_message_class(method.input_type.full_name), strict=method.name in WRITE_METHODS)
            if method.server_streaming:
                handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                    self._watch(kind, registry, decode), response_serializer=_passthrough
                )
                continue
            if method.name not in behaviours:
                raise RuntimeError(f"{kind.service_name}.{method.name}: no registry method or subresource serves it")
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                self._unary(kind, method.name, behaviours[method.name], decode),
                response_serializer=_passthrough,
            )
        return grpc.method_handlers_generic_handler(kind.service_name, handlers)

    # -- lifecycle --------------------------------------------------------

    async def start(self, listen: str, token_listen: str | None = None) -> int:
        """Connects to etcd, fills the watch caches and starts serving; returns the port.
        With TLS, `listen` requires a client certificate and `token_listen` (if given)
        takes bearer tokens (see services/common/transport.py for why two ports)."""
        sys.setswitchinterval(SWITCH_INTERVAL)
        await self.storage.connect()
        for registry in self.registries.values():
            try:
                await registry.strategy.repair(registry)
            except ApiError as error:  # etcd not there yet: serving matters more; the next start repairs
                log.warning("repair_failed", kind=registry.kind.name, code=error.code.name, error=error.message)
        try:
            # Before the caches' first list, so that it already holds the default policy.
            await reconcile_bootstrap(self.registries)
        except ApiError as error:  # etcd not there yet: the next start reconciles
            log.warning("bootstrap_policy_failed", code=error.code.name, error=error.message)
        for registry in self.registries.values():
            self._caches.guard(registry.cache.run, name=f"cache-{registry.kind.plural}")
        interceptors = [AuthenticatingInterceptor(self.authenticator)] if self.serving is not None else []
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                # gRPC refuses a bigger request itself (RESOURCE_EXHAUSTED) without buffering it
                # whole: eight 60 MiB requests once grew this server by 3 GB (issue 14, D9).
                ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                ("grpc.max_send_message_length", 512 * 1024 * 1024),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.server.add_generic_rpc_handlers(self._handlers)
        # Health too: a garbage Check is INVALID_ARGUMENT, not UNKNOWN (issue 14).
        self.server.add_generic_rpc_handlers([
            _decoding_handler(health_pb2.DESCRIPTOR.services_by_name["Health"], self.health)
        ])
        self.server.add_generic_rpc_handlers([
            _decoding_handler(certificates_pb2.DESCRIPTOR.services_by_name["Certificates"], self.certificates),
            _decoding_handler(
                authorization_pb2.DESCRIPTOR.services_by_name["Authorization"],
                AuthorizationServicer(self._review_authorizer),
            ),
        ])
        health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection(
            [kind.service_name for kind in ALL_KINDS]
            + [certificates_pb2.DESCRIPTOR.services_by_name["Certificates"].full_name]
            + [authorization_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name]
            + [health_service, reflection.SERVICE_NAME],
            self.server,
        )
        # Several addresses each (loopback for the host's clients, the host network's for
        # the nodes'); the first one's port is the one reported.
        ports = []
        for address in listen_addresses(listen):
            if self.serving is None:
                bound = self.server.add_insecure_port(address)
            else:
                bound = self.server.add_secure_port(
                    address, self.serving.server_credentials(require_client_certificate=True)
                )
            if bound == 0:
                raise OSError(f"--listen: cannot bind {address}")
            ports.append(bound)
        port = ports[0]
        self.token_port = 0
        if token_listen:
            if self.serving is None:
                raise ValueError("--token-listen needs TLS (--tls-cert-file)")
            for address in listen_addresses(token_listen):
                bound = self.server.add_secure_port(
                    address, self.serving.server_credentials(require_client_certificate=False)
                )
                if bound == 0:
                    raise OSError(f"--token-listen: cannot bind {address}")
                self.token_port = self.token_port or bound
        await asyncio.gather(*(registry.cache.wait_ready() for registry in self.registries.values()))
        await self.server.start()
        await self._set_serving(True)
        self._monitor.guard(self._follow_etcd_health, name="etcd-health")
        return port

    async def _follow_etcd_health(self) -> None:
        """The health service follows etcd: NOT_SERVING while etcd does not answer, so that a
        load balancer or supervisor sends clients elsewhere instead of to UNAVAILABLE
        errors here; SERVING again once it answers."""
        serving = True
        while True:
            await asyncio.sleep(ETCD_HEALTH_PERIOD)
            try:
                await asyncio.wait_for(self.storage.current_revision(), ETCD_HEALTH_TIMEOUT)
                reachable = True
            except (ApiError, asyncio.TimeoutError):
                reachable = False
            if reachable != serving:
                serving = reachable
                await self._set_serving(reachable)
                if reachable:
                    log.info("etcd_reachable_serving", etcd=self.storage.target)
                else:
                    log.warning("etcd_unreachable_not_serving", etcd=self.storage.target)

    async def _set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for kind in ALL_KINDS:
            await self.health.set(kind.service_name, status)
        await self.health.set("", status)

    async def stop(self, grace: float = 5.0) -> None:
        """Stops accepting calls, ends watch streams cleanly, finishes in-flight calls."""
        await self._monitor.close()
        await self._set_serving(False)
        for registry in self.registries.values():
            registry.cache.end_watches()
        if self.server is not None:
            await self.server.stop(grace)
        await self._caches.close()
        await self.storage.close()


# Kinds that authorization and admission read from the watch caches: a write to one
# returns once this server's cache holds it, so that the caller's next request (a pod in
# the namespace just labelled, a call under the binding just made) is judged by it.
POLICY_KINDS = (NAMESPACES, *RBAC_KINDS)
POLICY_SETTLE_TIMEOUT = 2.0


def _settled(registry: Registry, write: Callable[[Any], Any]) -> Callable[[Any], Any]:
    async def settled(request: Any) -> Any:
        obj = await write(request)
        if not await registry.cache.caught_up(obj.metadata.resource_version, POLICY_SETTLE_TIMEOUT):
            log.warning("policy_cache_lagging", kind=registry.kind.name, revision=obj.metadata.resource_version)
        return obj

    return settled


def _decoding_handler(service: Any, servicer: Any) -> grpc.GenericRpcHandler:
    """A servicer's methods (unary, or server-streaming ones that write to the context) behind
    the API's own decoding: a request that is not the message is INVALID_ARGUMENT saying so
    (gRPC's generated registration would answer UNKNOWN)."""
    handlers = {}
    for method in service.methods:
        if method.client_streaming:
            raise ValueError(f"{method.full_name}: client streaming is not decoded here")
        decode = _decoder(_message_class(method.input_type.full_name), strict=False)
        behaviour = getattr(servicer, method.name)

        async def handler(data: bytes, context: grpc.aio.ServicerContext, decode: Any = decode,
                          behaviour: Any = behaviour) -> Any:
            try:
                request = await off_loop(len(data), decode, data)
            except ApiError as error:
                _fail(context, error.code, error.message)
                return None
            return await behaviour(request, context)

        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(handler, response_serializer=_passthrough)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(handler, response_serializer=_passthrough)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _message_class(full_name: str) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(full_name))
