"""The Kubernetes REST API beside gRPC: an aiohttp server over the same registries.

Same process, its own port (--rest-listen). Every request goes through what a gRPC call
goes through: the same Authenticator (a client certificate, verified against the cluster
CA but optional here — one TLS port can do what grpcio cannot — or a bearer token), the
same authorizer (Node, then RBAC) on the same RequestAttributes, the caller set for
admission in the same context variable, and then the same registry method. What is
REST-specific is the URL layout (routes.py), the JSON (jsonconv.py), the errors as Status
objects (status.py), discovery (discovery.py), the watch stream (watch.py), pods/log from
the kubelets (logs.py), deletecollection, and dryRun=All (the registry's set_dry_run: the
whole write but storing it).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import grpc
from aiohttp import web
from google.protobuf import descriptor_pool, message_factory

from kybernetes.v1 import meta_pb2
from services.common.identity import ANONYMOUS, APISERVER, UserInfo
from services.common.log import get_logger
from services.common.resources import NODES, PODS, Kind
from services.common.selectors import validate_dns1123_label
from services.common.transport import ClientCredentials, ServingCertificate
from services.common.validation import show_value

from ..auth.attributes import Authorizer, RequestAttributes
from ..auth.authenticate import AuthenticationError, Authenticator
from ..auth.context import set_current_user
from ..errors import ApiError
from ..registry import Registry, off_loop, set_dry_run
from ..server import MAX_REQUEST_BYTES, POLICY_KINDS, POLICY_SETTLE_TIMEOUT, listen_addresses
from . import discovery
from .jsonconv import JsonDecodeError, json_to_message, list_to_json, object_to_json
from .logs import serve_log
from .openapi import OpenApi
from .patch import PATCH_TYPES, PatchError, apply_patch, sets_resource_version
from .routes import PathError, ResourcePath, Router
from .scale import read_scale, scalable, scale_of
from .status import (
    StatusError,
    bad_request,
    from_api_error,
    method_not_allowed,
    not_found_path,
    success,
    too_large,
    unauthorized,
)
from .table import include_object, list_table, table, wants_table
from .watch import serve_watch

log = get_logger()

# Paths anyone may read, as Kubernetes' system:public-info-viewer allows.
PUBLIC_PATHS = frozenset({"/version", "/healthz", "/livez", "/readyz"})
# OpenAPI: v3 with schemas from the protos (openapi.py: kubectl explain, server-side validation),
# v2 404 (kubectl 1.37 does not need it). Client-side apply takes core/v1's merge keys from its
# compiled-in types, which patch.py's tables (and the schemas) follow.
OPENAPI_PREFIX = "/openapi/"
# What a log line quotes of a client's path (a line stays a line).
MAX_LOGGED_PATH = 256
_TRUE = ("true", "1")
_FIELD_VALIDATION = ("", "Strict", "Warn", "Ignore")
_JSON_TYPES = ("application/json", "application/octet-stream", "")
# Kubernetes' patcher tries a patch again this many times when the object changed under it.
PATCH_ATTEMPTS = 5
# How many objects a deletecollection deletes at once (Kubernetes' DeleteCollectionWorkers).
DELETE_COLLECTION_WORKERS = 16
# The one dryRun value Kubernetes has: every stage of the write but storing it.
DRY_RUN_ALL = "All"
# Subresources served by the REST layer itself, by kind: pods/log (from the kubelet, logs.py).
LOG_SUBRESOURCE = "log"


def _json(document: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(document, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def _object_response(
    kind: Kind, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """One object as JSON; a big one rendered in the big-object thread (registry.off_loop), as
    the gRPC API encodes it there: 10-20 ms of the loop for 1.4 MiB otherwise."""

    def render() -> bytes:
        return json.dumps(object_to_json(kind, obj), separators=(",", ":")).encode()

    body = await off_loop(obj.ByteSize(), render)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _status_response(error: StatusError) -> web.Response:
    return _json(error.body(), error.code, error.headers or None)


def _forbidden(attributes: RequestAttributes, reason: str) -> StatusError:
    """Kubernetes' message: `pods "x" is forbidden: User "u" cannot get resource "pods" in API
    group "" in the namespace "ns"` (`: reason` after it when the authorizer gave one)."""
    resource = f"{attributes.resource}/{attributes.subresource}" if attributes.subresource else attributes.resource
    what = f'{attributes.resource} "{attributes.name}"' if attributes.name else attributes.resource
    where = f'in the namespace "{attributes.namespace}"' if attributes.namespace else "at the cluster scope"
    message = (
        f'{what} is forbidden: User "{attributes.user.name}" cannot {attributes.verb} resource "{resource}" '
        f'in API group "{attributes.api_group}" {where}'
    )
    if reason:
        message += f": {reason}"
    details = {"kind": attributes.resource, "group": attributes.api_group}
    if attributes.name:
        details["name"] = attributes.name
    return StatusError(403, "Forbidden", message, details)


def _int_query(query: Mapping[str, str], name: str) -> int | None:
    text = query.get(name, "")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise bad_request(f"{name}: invalid value {text[:64]!r}: not an integer") from None


def _ssl_context(serving: ServingCertificate) -> ssl.SSLContext:
    """TLS with the API server's serving certificate; a client certificate is asked for and,
    when sent, verified against the cluster CA, but not required (bearer tokens)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # ssl loads a certificate chain from files only: written where only we can read, then removed.
    with tempfile.TemporaryDirectory(prefix="kyb-rest-tls-") as directory:
        cert, key = Path(directory) / "tls.crt", Path(directory) / "tls.key"
        for path, data in ((cert, serving.certificate), (key, serving.key)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
        context.load_cert_chain(cert, key)
    if serving.client_ca is not None:
        context.load_verify_locations(cadata=serving.client_ca.decode())
        context.verify_mode = ssl.CERT_OPTIONAL
    context.set_alpn_protocols(["http/1.1"])  # aiohttp speaks HTTP/1.1; Go clients offer h2 first
    return context


class RestServer:
    """The REST API over `registries`; authorizer None (--insecure-dev) authorizes nothing."""

    def __init__(
        self,
        registries: Mapping[str, Registry],
        *,
        authenticator: Authenticator,
        authorizer: Authorizer | None,
        serving: ServingCertificate | None,
        log_requests: bool = True,
        shutdown_grace: float = 5.0,
        kubelet_credentials: ClientCredentials | None = None,
    ) -> None:
        """kubelet_credentials: how pods/log calls kubelets (the API server's kubelet-client
        certificate); None with serving None (--insecure-dev: plaintext kubelets)."""
        self.registries = registries
        self.kubelet_credentials = kubelet_credentials
        self.shutdown_grace = shutdown_grace
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.serving = serving
        self.log_requests = log_requests
        self.router = Router(registry.kind for registry in registries.values())
        self.openapi = OpenApi(self.router.versions)
        # Subresources by kind name and subresource name ("Pod" -> "status" -> its REST handler).
        self.subresources = {
            name: {sub.name: sub for sub in registry.subresources.values()} for name, registry in registries.items()
        }
        # Scale is the REST API's own (no gRPC method): served for every kind with spec.replicas.
        self._discovery_subresources = {
            name: sorted([*subs, *(["scale"] if scalable(registries[name].kind) else []),
                          *([LOG_SUBRESOURCE] if registries[name].kind is PODS and NODES.name in registries else [])])
            for name, subs in self.subresources.items()
        }
        self._runner: web.AppRunner | None = None
        self._watches: set[asyncio.Task] = set()
        self._stopping = False
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, listen: str) -> int:
        """Serves on host:port, or several comma-separated as gRPC's --listen (loopback for the
        host's clients, the host network's and --api-address for the others'); port 0: any.
        Returns the first address's port."""
        addresses = listen_addresses(listen)
        if not addresses:
            raise ValueError("--rest-listen: no address")
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a watch whose client went is cancelled at once, not at its next write.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=self.shutdown_grace
        )
        await self._runner.setup()
        context = _ssl_context(self.serving) if self.serving is not None else None
        for address in addresses:
            host, _, port = address.rpartition(":")
            try:
                site = web.TCPSite(self._runner, host.strip("[]") or "127.0.0.1", int(port), ssl_context=context)
                await site.start()
            except (OSError, ValueError) as error:
                raise OSError(f"--rest-listen: cannot bind {address}: {error}") from error
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        """Stops listening, ends the watch streams (clients watch again elsewhere), and gives
        the other requests shutdown_grace seconds."""
        self._stopping = True
        for task in list(self._watches):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- one request ------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> UserInfo:
        if self.serving is None:
            return APISERVER  # --insecure-dev: every caller acts as the API server, as over gRPC
        auth_context: dict[str, list[bytes]] = {}
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport is not None else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            auth_context["x509_pem_cert"] = [ssl.DER_cert_to_PEM_cert(der).encode()]
        header = request.headers.get("Authorization")
        metadata = [("authorization", header)] if header is not None else []
        try:
            return self.authenticator.authenticate(auth_context, metadata)
        except AuthenticationError as error:
            raise unauthorized(f"Unauthorized: {error}") from None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        user: UserInfo = ANONYMOUS
        code = 0
        try:
            user = self._authenticate(request)
            if user is ANONYMOUS and request.path not in PUBLIC_PATHS:
                raise unauthorized()
            # The caller for admission below, as the gRPC interceptor sets it; set on every request,
            # so that nothing is inherited from an earlier request on the same connection.
            set_current_user(user)
            set_dry_run(False)  # as the user: nothing inherited from an earlier request on the connection
            response = await self._serve(request, user)
            code = response.status
            return response
        except StatusError as error:
            code = error.code
            return _status_response(error)
        except asyncio.CancelledError:
            code = 499  # the client went
            raise
        except Exception:
            code = 500
            log.exception("rest_request_failed", method=request.method, path=request.path[:MAX_LOGGED_PATH])
            return _status_response(StatusError(500, "InternalError", "internal error; see the API server's log"))
        finally:
            if self.log_requests:
                log.info(
                    "rest_request",
                    method=request.method,
                    path=request.path[:MAX_LOGGED_PATH],
                    user=user.name[:MAX_LOGGED_PATH],
                    code=code,
                    ms=round((time.perf_counter() - started) * 1000, 2),
                )

    async def _serve(self, request: web.Request, user: UserInfo) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path.startswith(OPENAPI_PREFIX) or path == "/openapi":
            spec = self.openapi.get(path)
            if spec is None:  # v2 (kubectl falls back from it) and anything else
                raise not_found_path(path)
            if request.method != "GET":
                raise method_not_allowed(request.method, path)
            return _json(spec)
        document = self._discovery(path)
        if document is not None:
            if request.method != "GET":
                raise method_not_allowed(request.method, path)
            if isinstance(document, str):
                return web.Response(text=document)
            return _json(document)
        try:
            target = self.router.resolve(path)
        except PathError:
            raise not_found_path(path) from None
        return await self._resource(request, user, target)

    def _discovery(self, path: str) -> dict[str, Any] | str | None:
        if path == "/version":
            return discovery.version()
        if path in ("/healthz", "/livez", "/readyz"):
            return "ok"
        versions = self.router.versions
        if path == "/api":
            return discovery.api_versions(versions)
        if path == "/apis":
            return discovery.api_group_list(versions)
        for gv in versions:
            if path == gv.prefix:
                return discovery.api_resource_list(gv, self._discovery_subresources)
            if gv.group and path == f"/apis/{gv.group}":
                return discovery.api_group(gv)
        return None

    def _authorize(
        self, user: UserInfo, verb: str, target: ResourcePath, namespace: str, query: Mapping[str, str]
    ) -> None:
        if self.authorizer is None:
            return
        listing = verb in ("list", "watch")
        attributes = RequestAttributes(
            user, verb, target.kind.plural, target.subresource, namespace, target.name, target.api_group,
            field_selector=query.get("fieldSelector", "") if listing else "",
            label_selector=query.get("labelSelector", "") if listing else "",
        )
        verdict = self.authorizer.authorize(attributes)
        if not verdict.allowed:
            raise _forbidden(attributes, verdict.reason)

    async def _resource(self, request: web.Request, user: UserInfo, target: ResourcePath) -> web.StreamResponse:
        kind = target.kind
        registry = self.registries[kind.name]
        method, query = request.method, request.query
        # A namespaced object is named with its namespace in the path (Kubernetes has no other way).
        if kind.namespaced and not target.namespace and (target.name or method != "GET"):
            raise not_found_path(request.path)
        if "dryRun" in query:
            set_dry_run(_dry_run(query.getall("dryRun")))
        namespace = target.namespace
        if namespace:
            reason = validate_dns1123_label(namespace)
            if reason:  # as the gRPC API: else a list in "Bad_Name" would answer an empty list, as if it existed
                raise bad_request(f"namespace: {show_value(namespace)}: {reason}")
        subresource = None
        if target.subresource == "scale" and target.name and scalable(kind):
            return await self._scale(request, user, target, registry)
        if target.subresource == LOG_SUBRESOURCE and target.name and LOG_SUBRESOURCE in self._discovery_subresources[
                kind.name]:
            if method != "GET":
                raise method_not_allowed(method, request.path)
            self._authorize(user, "get", target, namespace, query)
            return await self._log(request, target, registry)
        if target.subresource:
            subresource = self.subresources[kind.name].get(target.subresource)
            if subresource is None:
                raise not_found_path(request.path)
        if method == "GET":
            if not target.name:
                verb = "watch" if query.get("watch", "") in _TRUE else "list"
                self._authorize(user, verb, target, namespace, query)
                if verb == "watch":
                    return await self._watch(request, kind, registry, namespace)
                as_table = wants_table(request.headers.get("Accept", ""))
                return await self._list(kind, registry, namespace, query, as_table)
            if subresource is not None and target.subresource != "status":
                raise method_not_allowed(method, request.path)
            self._authorize(user, "get", target, namespace, query)
            obj = await self._call(target, lambda: registry.get(meta_pb2.GetRequest(namespace=namespace,
                                                                                   name=target.name)))
            if target.subresource == "" and wants_table(request.headers.get("Accept", "")):
                return _json(table(kind, [obj], include_object(query)))
            return await _object_response(kind, obj)
        if method == "POST":
            if subresource is not None and target.subresource != "status":  # binding
                self._authorize(user, "create", target, namespace, query)
                request_class = _rpc_input(kind, subresource.rpc)
                body, headers = await self._decode(request, request_class, target)
                await self._call(target, lambda: subresource.handle(body), write=True)
                return _json(success(kind.name, target.name), 201, headers)
            if target.name:
                raise method_not_allowed(method, request.path)
            self._authorize(user, "create", target, namespace, query)
            body, headers = await self._decode(request, kind.message, target)
            obj = await self._call(target, lambda: registry.create(body), write=True)
            await self._settle(kind, registry, obj)
            return await _object_response(kind, obj, 201, headers)
        if method == "PUT":
            if not target.name:
                raise method_not_allowed(method, request.path)
            if subresource is not None and target.subresource != "status":
                raise method_not_allowed(method, request.path)
            self._authorize(user, "update", target, namespace, query)
            body, headers = await self._decode(request, kind.message, target)
            write = subresource.handle if subresource is not None else registry.update
            obj = await self._call(target, lambda: write(body), write=True)
            await self._settle(kind, registry, obj)
            return await _object_response(kind, obj, 200, headers)
        if method == "DELETE":
            if subresource is not None:
                raise method_not_allowed(method, request.path)
            if not target.name:
                if kind.plural in discovery.NO_DELETE_COLLECTION:
                    raise method_not_allowed(method, request.path)
                self._authorize(user, "deletecollection", target, namespace, query)
                return await self._delete_collection(request, target, registry)
            self._authorize(user, "delete", target, namespace, query)
            delete = await self._delete_request(request, target)
            obj = await self._call(target, lambda: registry.delete(delete))
            await self._settle(kind, registry, obj)
            return await _object_response(kind, obj)
        if method == "PATCH":
            if not target.name or (subresource is not None and target.subresource != "status"):
                raise method_not_allowed(method, request.path)
            self._authorize(user, "patch", target, namespace, query)
            write = subresource.handle if subresource is not None else registry.update
            obj, headers = await self._patch(request, target, registry, write)
            await self._settle(kind, registry, obj)
            return await _object_response(kind, obj, 200, headers)
        raise method_not_allowed(method, request.path)

    async def _log(self, request: web.Request, target: ResourcePath, registry: Registry) -> web.StreamResponse:
        """pods/{name}/log from the kubelet of the pod's node (logs.py)."""
        pod = await self._call(target, lambda: registry.get(meta_pb2.GetRequest(namespace=target.namespace,
                                                                               name=target.name)))
        node_name = pod.spec.node_name
        if not node_name:
            raise bad_request(f"pod {target.name} does not have a host assigned")
        if self.serving is not None and self.kubelet_credentials is None:
            raise StatusError(503, "ServiceUnavailable", "this API server has no kubelet client certificate "
                              "(--kubelet-client-certificate): it cannot read logs")
        nodes = self.registries[NODES.name]
        node = await self._call(ResourcePath(NODES, "", node_name, ""),
                                lambda: nodes.get(meta_pb2.GetRequest(name=node_name)))
        return await serve_log(request, pod, node, self.kubelet_credentials)

    async def _delete_collection(
        self, request: web.Request, target: ResourcePath, registry: Registry
    ) -> web.StreamResponse:
        """DELETE on a collection (deletecollection): every object the selectors match, each
        deleted as one DELETE with the request's options would (propagationPolicy, grace,
        dryRun), a few at a time; answers the list of them as deleted (or marked)."""
        kind, query = target.kind, request.query
        template = await self._delete_request(request, target)
        options = meta_pb2.ListOptions(namespace=target.namespace, label_selector=query.get("labelSelector", ""),
                                       field_selector=query.get("fieldSelector", ""))
        try:
            data = await registry.list(options)
        except ApiError as error:
            raise from_api_error(error, kind=kind.plural) from None
        listed = await off_loop(len(data), kind.list_message.FromString, data)
        gate = asyncio.Semaphore(DELETE_COLLECTION_WORKERS)

        async def delete_one(item: Any) -> Any:
            one = meta_pb2.DeleteRequest()
            one.CopyFrom(template)
            one.namespace, one.name = item.metadata.namespace, item.metadata.name
            async with gate:
                try:
                    return await registry.delete(one)
                except ApiError as error:
                    if error.code is grpc.StatusCode.NOT_FOUND:
                        return None  # deleted meanwhile: what was asked for
                    raise from_api_error(error, kind=kind.plural, name=one.name) from None

        results = await asyncio.gather(*(delete_one(item) for item in listed.items))
        deleted = kind.list_message(metadata=meta_pb2.ListMeta(resource_version=listed.metadata.resource_version))
        deleted.items.extend(obj for obj in results if obj is not None)

        def render() -> bytes:
            return json.dumps(list_to_json(kind, deleted), separators=(",", ":")).encode()

        return web.Response(body=await off_loop(len(data), render), content_type="application/json")

    async def _patch(
        self, request: web.Request, target: ResourcePath, registry: Registry, write: Callable[[Any], Any]
    ) -> tuple[Any, dict[str, str]]:
        """PATCH as Kubernetes' patcher: the patch applied to the stored object's JSON, the result
        decoded as strictly as a PUT body, then written with the stored resourceVersion as its
        precondition; when the object changed meanwhile, again on the new one (unless the patch
        named a resourceVersion itself). Nothing is stored on any error."""
        content_type = request.content_type
        validation = _field_validation(request)
        patch = await self._read_body(request, PATCH_TYPES)
        pinned = sets_resource_version(content_type, patch)
        kind = target.kind
        get = meta_pb2.GetRequest(namespace=target.namespace, name=target.name)
        for attempt in range(PATCH_ATTEMPTS):
            current = await self._call(target, lambda: registry.get(get))
            size = current.ByteSize()

            def patch_current(current: Any = current) -> Any:
                return apply_patch(content_type, object_to_json(kind, current), patch, kind.message.DESCRIPTOR)

            try:
                patched = await off_loop(size, patch_current)  # a big object in the big-object thread
            except PatchError as error:
                if error.code == 422:  # the reason as a cause too: kubectl prints the causes of an Invalid
                    raise StatusError(422, "Invalid", str(error), {"name": target.name, "kind": kind.plural, "causes": [
                        {"reason": "FieldValueInvalid", "message": str(error), "field": error.field}]}) from None
                raise bad_request(str(error)) from None
            obj, headers = await self._decode_document(patched, kind.message, target, validation, size)
            if not pinned:  # the version read is the precondition, whatever the patch did to it
                obj.metadata.resource_version = current.metadata.resource_version
            try:
                return await write(obj), headers
            except ApiError as error:
                if error.code is grpc.StatusCode.ABORTED and not pinned and attempt + 1 < PATCH_ATTEMPTS:
                    continue  # the object changed since it was read: patch the new one
                raise from_api_error(error, kind=kind.name, name=target.name, write=True) from None
        raise AssertionError("unreachable")

    async def _scale(
        self, request: web.Request, user: UserInfo, target: ResourcePath, registry: Registry
    ) -> web.StreamResponse:
        """GET, PUT and PATCH of {kind}/{name}/scale (autoscaling/v1 Scale), as PATCH above:
        retried on conflict unless the client named the resourceVersion."""
        method, query = request.method, request.query
        get = meta_pb2.GetRequest(namespace=target.namespace, name=target.name)
        if method == "GET":
            self._authorize(user, "get", target, target.namespace, query)
            return _json(scale_of(await self._call(target, lambda: registry.get(get))))
        if method not in ("PUT", "PATCH"):
            raise method_not_allowed(method, request.path)
        self._authorize(user, "update" if method == "PUT" else "patch", target, target.namespace, query)
        content_type = request.content_type
        body = await self._read_body(request, _JSON_TYPES if method == "PUT" else PATCH_TYPES)
        pinned = method == "PATCH" and sets_resource_version(content_type, body)
        for attempt in range(PATCH_ATTEMPTS):
            current = await self._call(target, lambda: registry.get(get))
            document = body
            if method == "PATCH":
                try:
                    document = apply_patch(content_type, scale_of(current), body, None)
                except PatchError as error:
                    raise StatusError(error.code if error.code != 415 else 400,
                                      "Invalid" if error.code == 422 else "BadRequest", str(error)) from None
            try:
                replicas, version = read_scale(document)
            except JsonDecodeError as error:
                if error.path == "spec.replicas" and error.reason.startswith("Invalid value"):
                    raise StatusError(422, "Invalid", f'Scale.autoscaling "{target.name}" is invalid: {error}',
                                      {"name": target.name, "kind": "Scale", "causes": [
                                          {"reason": "FieldValueInvalid", "message": error.reason,
                                           "field": error.path}]}) from None
                raise bad_request(f"Scale: {error}") from None
            if version and method == "PUT":
                pinned = True
            updated = type(current)()
            updated.CopyFrom(current)
            updated.spec.replicas = replicas
            updated.metadata.resource_version = version if pinned and version else current.metadata.resource_version
            try:
                obj = await registry.update(updated)
            except ApiError as error:
                if error.code is grpc.StatusCode.ABORTED and not pinned and attempt + 1 < PATCH_ATTEMPTS:
                    continue
                raise from_api_error(error, kind=target.kind.name, name=target.name, write=True) from None
            return _json(scale_of(obj))
        raise AssertionError("unreachable")

    async def _call(self, target: ResourcePath, work: Callable[[], Any], *, write: bool = False) -> Any:
        try:
            return await work()
        except ApiError as error:
            raise from_api_error(error, kind=target.kind.name if write else target.kind.plural,
                                 name=target.name, write=write) from None

    async def _settle(self, kind: Kind, registry: Registry, obj: Any) -> None:
        """A write to a policy kind returns once this server's cache holds it, as over gRPC."""
        if kind in POLICY_KINDS:
            if not await registry.cache.caught_up(obj.metadata.resource_version, POLICY_SETTLE_TIMEOUT):
                log.warning("policy_cache_lagging", kind=kind.name, revision=obj.metadata.resource_version)

    async def _list(
        self, kind: Kind, registry: Registry, namespace: str, query: Mapping[str, str], as_table: bool = False
    ) -> web.StreamResponse:
        limit = _int_query(query, "limit") or 0
        include = include_object(query) if as_table else ""
        # resourceVersion: any value is satisfied by a consistent read at the latest revision
        # (Kubernetes' "not older than"); it is only checked to be one.
        _int_query(query, "resourceVersion")
        options = meta_pb2.ListOptions(
            namespace=namespace,
            label_selector=query.get("labelSelector", ""),
            field_selector=query.get("fieldSelector", ""),
            limit=limit,
            continue_token=query.get("continue", ""),
        )
        try:
            data = await registry.list(options)
        except ApiError as error:
            raise from_api_error(error, kind=kind.plural) from None

        def render() -> bytes:
            listed = kind.list_message.FromString(data)
            document = list_table(kind, listed, include) if as_table else list_to_json(kind, listed)
            return json.dumps(document, separators=(",", ":")).encode()

        body = await off_loop(len(data), render)
        return web.Response(body=body, content_type="application/json")

    async def _watch(self, request: web.Request, kind: Kind, registry: Registry, namespace: str) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._watches.add(task)
        try:
            return await serve_watch(request, kind, registry, namespace, lambda: self._stopping)
        except ApiError as error:
            raise from_api_error(error, kind=kind.plural) from None
        finally:
            if task is not None:
                self._watches.discard(task)

    async def _read_body(self, request: web.Request, accepted: tuple[str, ...] = _JSON_TYPES) -> Any:
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            raise too_large(request.content_length, MAX_REQUEST_BYTES)  # before reading any of it
        content_type = request.content_type
        if content_type not in accepted:
            raise StatusError(415, "UnsupportedMediaType",
                              f"the body of the request was in an unknown format ({content_type[:64]}): "
                              f"this server accepts {', '.join(t for t in accepted if t)}")
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge:  # aiohttp stopped reading at client_max_size
            raise too_large(None, MAX_REQUEST_BYTES) from None
        try:
            return await off_loop(len(data), json.loads, data)
        except (ValueError, UnicodeDecodeError) as error:
            raise bad_request(f"the body is not valid JSON: {str(error)[:200]}") from None

    async def _decode(
        self, request: web.Request, message_class: type[Any], target: ResourcePath
    ) -> tuple[Any, dict[str, str]]:
        """The request's object: strict unless fieldValidation=Ignore|Warn, its apiVersion and
        kind checked, its name and namespace matched with the URL's."""
        validation = _field_validation(request)
        document = await self._read_body(request)
        return await self._decode_document(document, message_class, target, validation,
                                           request.content_length or 0)

    async def _decode_document(
        self, document: Any, message_class: type[Any], target: ResourcePath, validation: str, size: int
    ) -> tuple[Any, dict[str, str]]:
        if not isinstance(document, dict):
            raise bad_request("the body must be a JSON object")
        expected_kind = message_class.DESCRIPTOR.name
        api_version = document.get("apiVersion")
        expected_version = target.kind.api_version
        if api_version not in (None, "", expected_version):
            raise bad_request(f"the API version in the data ({str(api_version)[:64]}) does not match the expected "
                              f"API version ({expected_version})")
        if document.get("kind") not in (None, "", expected_kind):
            raise bad_request(f"the kind in the data ({str(document.get('kind'))[:64]}) does not match the expected "
                              f"kind ({expected_kind})")
        try:
            strict = validation in ("", "Strict")
            obj, unknown = await off_loop(size, json_to_message, message_class, document, strict)
        except JsonDecodeError as error:
            if error.reason == "unknown field":
                raise bad_request(f'strict decoding error: unknown field "{error.path}"') from None
            raise bad_request(f"{expected_kind} in version \"{expected_version}\" cannot be handled as a "
                              f"{expected_kind}: {error}") from None
        obj.api_version, obj.kind = expected_version, expected_kind
        meta = obj.metadata
        if target.name:
            if meta.name and meta.name != target.name:
                raise bad_request(f"the name of the object ({meta.name[:64]}) does not match the name on the URL "
                                  f"({target.name[:64]})")
            meta.name = target.name
        if target.namespace:
            if meta.namespace and meta.namespace != target.namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                                  "request")
            meta.namespace = target.namespace
        headers = {}
        if unknown and validation == "Warn":
            headers["Warning"] = ", ".join(f'299 - "unknown field \\"{path[:128]}\\""' for path in unknown[:10])
        return obj, headers

    async def _delete_request(self, request: web.Request, target: ResourcePath) -> meta_pb2.DeleteRequest:
        """DeleteOptions from the body (kubectl sends one) and the query (the Python client may)."""
        options: dict[str, Any] = {}
        if request.can_read_body:
            body = await self._read_body(request)
            if body is not None:
                if not isinstance(body, dict):
                    raise bad_request("DeleteOptions: the body must be a JSON object")
                options.update(body)
        query = request.query
        for name in ("gracePeriodSeconds", "propagationPolicy", "orphanDependents"):
            if name in query:
                options[name] = query[name]
        known = {"kind", "apiVersion", "gracePeriodSeconds", "propagationPolicy", "orphanDependents",
                 "preconditions", "dryRun"}
        for key in options:
            if key not in known:
                raise bad_request(f'strict decoding error: unknown field "{key[:64]}" in DeleteOptions')
        if options.get("dryRun"):
            values = options["dryRun"]
            if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
                raise bad_request("dryRun: must be a list of strings")
            if _dry_run(values):
                set_dry_run(True)
        delete = meta_pb2.DeleteRequest(namespace=target.namespace, name=target.name)
        grace = options.get("gracePeriodSeconds")
        if grace is not None:
            try:
                delete.grace_period_seconds = int(grace)
            except (TypeError, ValueError):
                raise bad_request("gracePeriodSeconds: not an integer") from None
        policy = options.get("propagationPolicy")
        orphan = options.get("orphanDependents")
        if orphan in (True, "true") and not policy:
            policy = "Orphan"
        if policy is not None:
            if not isinstance(policy, str):
                raise bad_request("propagationPolicy: not a string")
            delete.propagation_policy = policy
        preconditions = options.get("preconditions") or {}
        if not isinstance(preconditions, dict):
            raise bad_request("preconditions: not an object")
        if preconditions.get("uid"):
            delete.preconditions_uid = str(preconditions["uid"])
        version = preconditions.get("resourceVersion")
        if version:
            if not str(version).isdigit():
                raise bad_request("preconditions.resourceVersion: not a resource version")
            delete.resource_version = int(version)
        return delete


def _dry_run(values: list[str]) -> bool:
    """Kubernetes' dryRun: ["All"] (or nothing); any other value is a 400 naming it."""
    for value in values:
        if value != DRY_RUN_ALL:
            reason = f'Unsupported value: {show_value(value)}: supported values: "{DRY_RUN_ALL}"'
            raise StatusError(400, "BadRequest", f"dryRun: {reason}",
                              {"causes": [{"reason": "FieldValueNotSupported", "message": reason, "field": "dryRun"}]})
    return bool(values)


def _field_validation(request: web.Request) -> str:
    validation = request.query.get("fieldValidation", "")
    if validation not in _FIELD_VALIDATION:
        raise bad_request(f"fieldValidation: invalid value {validation[:64]!r}: expected Strict, Warn or Ignore")
    return validation


def _rpc_input(kind: Kind, rpc: str) -> type[Any]:
    """The request message of a kind's gRPC method (a subresource's body: Binding)."""
    service = descriptor_pool.Default().FindServiceByName(kind.service_name)
    return message_factory.GetMessageClass(service.methods_by_name[rpc].input_type)
