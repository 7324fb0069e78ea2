"""kubecfg's verbs over the API: apply, create, get, describe, delete, scale, logs."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Awaitable, Sequence, TextIO, TypeVar

import grpc

from kybernetes.v1 import kubelet_pb2, kubelet_pb2_grpc, meta_pb2
from services.common.transport import aio_channel

from services.common import kubeletclient
from services.common.client import CHANNEL_OPTIONS, ApiClient
from services.common.manifests import Manifest, ManifestError, dump_json, dump_yaml, load_manifest_sources, to_dict
from services.common.resources import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    DEFAULT_NAMESPACE,
    ENDPOINTS,
    EVENTS,
    INITIAL_EVENTS_END_ANNOTATION,
    LEASES,
    NAMESPACES,
    NODES,
    PODS,
    REPLICATION_CONTROLLERS,
    ROLE_BINDINGS,
    ROLES,
    SERVICES,
    Kind,
    kind_for,
    kind_of_message,
)

from . import describe as describers
from .describe import LAST_APPLIED_ANNOTATION
from .errors import CONNECTION_CODES, CommandError, server_error, unreachable
from .printers import TableOptions, format_objects, qualified_name, table_headers, table_row, utc_now
from .tabwriter import TABLE_PADDING, column_widths, pad_row

LIST_CHUNK_SIZE = 500  # kubectl's --chunk-size
SCALE_ATTEMPTS = 5
ALL_KINDS_ALIAS = "all"
ALL_MEANS = (PODS, SERVICES, REPLICATION_CONTROLLERS)  # as kubectl's "all" category, for our kinds
OUTPUT_FORMATS = ("wide", "yaml", "json", "name")
# --cascade values: kubectl's booleans (deprecated) and policies.
KIND_LIST = (
    "pods (po), services (svc), replicationcontrollers (rc), nodes (no), endpoints (ep), namespaces (ns), "
    "roles, clusterroles, rolebindings, clusterrolebindings, leases, events (ev), all"
)
CASCADE_POLICIES = {
    "true": "Background", "background": "Background", "false": "Orphan", "orphan": "Orphan",
    "foreground": "Foreground",
}

T = TypeVar("T")
# An API object: the message of one of the kinds, with `metadata` (and `status` where the
# kind has one). protobuf's Message type cannot say that; like the API client's results,
# it is Any to the type checker.
ApiObject = Any


@dataclass
class Context:
    """What every verb needs: the client, the namespace and where to write."""

    client: ApiClient
    namespace: str = DEFAULT_NAMESPACE
    namespace_given: bool = False  # -n was passed: a manifest's own namespace must agree
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    failed: bool = False

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def fail(self, line: str) -> None:
        """Reports one failed object; the command goes on and exits non-zero."""
        print(line, file=self.err, flush=True)
        self.failed = True

    def namespace_for(self, kind: Kind, all_namespaces: bool = False) -> str:
        if not kind.namespaced or all_namespaces:
            return ""
        return self.namespace


async def rpc(ctx: Context, call: Awaitable[T]) -> T:
    """Awaits an API call; a server out of reach ends the whole command."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        if error.code() in CONNECTION_CODES:
            raise unreachable(error, "the API server", ctx.client.server) from None
        raise


# --- resource arguments ------------------------------------------------------


@dataclass(frozen=True)
class ResourceRequest:
    kind: Kind
    names: tuple[str, ...] = ()


def lookup_kind(name: str) -> Kind:
    try:
        return kind_for(name)
    except KeyError:
        raise CommandError(f'error: the server doesn\'t have a resource type "{name}"') from None


def parse_resources(args: Sequence[str], *, allow_all: bool = True) -> list[ResourceRequest]:
    """kubectl's forms: `KIND [NAME...]`, `KIND1,KIND2`, `all`, `KIND/NAME...`."""
    if not args:
        return []
    if "/" in args[0]:
        grouped: dict[str, list[str]] = {}
        kinds_by_name: dict[str, Kind] = {}
        for arg in args:
            kind_name, slash, name = arg.partition("/")
            if not slash or not kind_name or not name or "/" in name:
                raise CommandError(
                    f'error: arguments in resource/name form must have a single resource and name, got "{arg}"'
                )
            kind = lookup_kind(kind_name)
            kinds_by_name[kind.name] = kind
            grouped.setdefault(kind.name, []).append(name)
        return [ResourceRequest(kinds_by_name[k], tuple(names)) for k, names in grouped.items()]
    kinds_arg, names = args[0], tuple(args[1:])
    for name in names:
        if "/" in name:
            raise CommandError(
                "error: there is no need to specify a resource type as a separate argument when passing "
                "arguments in resource/name form"
            )
    kinds: list[Kind] = []
    for part in kinds_arg.split(","):
        if not part:
            continue
        chosen = ALL_MEANS if part == ALL_KINDS_ALIAS and allow_all else (lookup_kind(part),)
        kinds.extend(kind for kind in chosen if kind not in kinds)
    if names and len(kinds) > 1:
        raise CommandError("error: you must specify only one resource type when specifying names")
    return [ResourceRequest(kind, names) for kind in kinds]


def _no_resources(ctx: Context, kind: Kind | None, all_namespaces: bool) -> None:
    if all_namespaces or (kind is not None and not kind.namespaced):
        print("No resources found", file=ctx.err)
    else:
        print(f"No resources found in {ctx.namespace} namespace.", file=ctx.err)


async def list_objects(
    ctx: Context, kind: Kind, namespace: str, *, label_selector: str = "", field_selector: str = ""
) -> tuple[list[Any], int]:
    """Every matching object, page by page, and the revision of the first page."""
    items: list[Any] = []
    token, revision = "", 0
    while True:
        page = await rpc(
            ctx,
            ctx.client.list(
                kind,
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                limit=LIST_CHUNK_SIZE,
                continue_token=token,
            ),
        )
        items.extend(page.items)
        revision = revision or page.metadata.resource_version
        token = page.metadata.continue_token
        if not token:
            return items, revision


async def get_object(ctx: Context, kind: Kind, name: str, namespace: str) -> Any | None:
    """The object, or None after reporting why not (NotFound and others)."""
    try:
        return await rpc(ctx, ctx.client.get(kind, name, namespace))
    except grpc.aio.AioRpcError as error:
        ctx.fail(server_error(error, kind, name))
        return None


# --- get ---------------------------------------------------------------------


@dataclass(frozen=True)
class GetOptions:
    label_selector: str = ""
    field_selector: str = ""
    output: str = ""  # "", wide, yaml, json, name
    all_namespaces: bool = False
    watch: bool = False
    watch_only: bool = False
    show_labels: bool = False
    no_headers: bool = False
    output_watch_events: bool = False


async def get(ctx: Context, requests: list[ResourceRequest], options: GetOptions) -> None:
    if not requests:
        raise CommandError(f"error: you must specify the type of resource to get ({KIND_LIST})")
    if any(r.names for r in requests) and options.label_selector:
        raise CommandError("error: name cannot be provided when a selector is specified")
    if any(r.names and r.kind.namespaced for r in requests) and options.all_namespaces:
        raise CommandError("error: a resource cannot be retrieved by name across all namespaces")
    if options.watch or options.watch_only:
        await watch(ctx, requests, options)
        return
    results: list[tuple[Kind, list[Any]]] = []
    for request in requests:
        namespace = ctx.namespace_for(request.kind, options.all_namespaces)
        if request.names:
            found = [await get_object(ctx, request.kind, name, namespace) for name in request.names]
            results.append((request.kind, [obj for obj in found if obj is not None]))
        else:
            items, _ = await list_objects(
                ctx,
                request.kind,
                namespace,
                label_selector=options.label_selector,
                field_selector=options.field_selector,
            )
            results.append((request.kind, items))
    everything = [obj for _, objs in results for obj in objs]
    single = len(requests) == 1 and len(requests[0].names) == 1
    if options.output == "yaml":
        if everything or not single:
            ctx.out.write(dump_yaml(everything, as_list=not single))
        return
    if options.output == "json":
        if everything or not single:
            ctx.out.write(dump_json(everything, as_list=not single))
        return
    if not everything:
        if not any(r.names for r in requests):
            _no_resources(ctx, requests[0].kind if len(requests) == 1 else None, options.all_namespaces)
        return
    if options.output == "name":
        for kind, objs in results:
            for obj in objs:
                ctx.say(qualified_name(kind, obj.metadata.name))
        return
    table = TableOptions(
        wide=options.output == "wide",
        all_namespaces=options.all_namespaces,
        show_kind=len(requests) > 1,
        show_labels=options.show_labels,
    )
    now = utc_now()
    first = True
    for kind, objs in results:
        if not objs:
            continue
        if not first:
            ctx.say("")
        first = False
        for line in format_objects(kind, objs, now, table, headers=not options.no_headers):
            ctx.say(line)


async def watch(ctx: Context, requests: list[ResourceRequest], options: GetOptions) -> None:
    """`get -w`: the current objects (unless --watch-only), then each change as it comes."""
    if len(requests) != 1:
        raise CommandError(
            f"error: watch is only supported on individual resources and resource collections, "
            f"but {len(requests)} resources were found"
        )
    request = requests[0]
    if len(request.names) > 1:
        raise CommandError("error: watch is only supported on a single object or a collection")
    kind = request.kind
    namespace = ctx.namespace_for(kind, options.all_namespaces)
    field_selector = options.field_selector
    if request.names:
        name_selector = f"metadata.name={request.names[0]}"
        field_selector = f"{field_selector},{name_selector}" if field_selector else name_selector
    printer = _WatchPrinter(ctx, kind, options)
    revision = 0
    if not options.watch_only:
        items, revision = await list_objects(
            ctx, kind, namespace, label_selector=options.label_selector, field_selector=field_selector
        )
        if not items and options.output in ("", "wide"):
            _no_resources(ctx, kind, options.all_namespaces)
        printer.initial(items)
    while True:
        watch_options = meta_pb2.ListOptions(
            namespace=namespace,
            label_selector=options.label_selector,
            field_selector=field_selector,
            resource_version=revision,
        )
        call = ctx.client.watch(kind, watch_options)
        try:
            async for event in call:
                revision = max(revision, event.object.metadata.resource_version)
                if event.type != "BOOKMARK":
                    printer.event(event.type, event.object)
            return  # the server ended the watch (e.g. shutting down)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.OUT_OF_RANGE:
                if error.code() in CONNECTION_CODES:
                    raise unreachable(error, "the API server", ctx.client.server) from None
                raise CommandError(server_error(error)) from None
            # Our revision was compacted away: take the current state and go on from there.
            items, revision = await list_objects(
                ctx, kind, namespace, label_selector=options.label_selector, field_selector=field_selector
            )
            for obj in items:
                printer.event("MODIFIED", obj)
        finally:
            call.cancel()


class _WatchPrinter:
    """Prints objects of a watch as they come: table rows kept aligned with the header."""

    def __init__(self, ctx: Context, kind: Kind, options: GetOptions) -> None:
        self.ctx = ctx
        self.kind = kind
        self.output = options.output
        self.no_headers = options.no_headers
        self.table = TableOptions(
            wide=options.output == "wide",
            all_namespaces=options.all_namespaces,
            show_labels=options.show_labels,
            output_watch_events=options.output_watch_events,
        )
        # Rows come one at a time: size EVENT for its widest value from the start.
        self.widths: list[int] = [len("MODIFIED") + TABLE_PADDING] if options.output_watch_events else []
        self.header_printed = False
        self.documents = 0

    def _rows(self, rows: list[list[str]]) -> None:
        if not self.header_printed and not self.no_headers:
            rows = [table_headers(self.kind, self.table), *rows]
        self.header_printed = True
        for i, width in enumerate(column_widths(rows)):
            if i == len(self.widths):
                self.widths.append(width)
            else:
                self.widths[i] = max(self.widths[i], width)
        for row in rows:
            self.ctx.say(pad_row(row, self.widths))

    def _document(self, obj: Any) -> None:
        if self.output == "name":
            self.ctx.say(qualified_name(self.kind, obj.metadata.name))
        elif self.output == "json":
            self.ctx.out.write(dump_json([obj]))
        else:
            if self.documents:
                self.ctx.out.write("---\n")
            self.ctx.out.write(dump_yaml([obj]))
        self.documents += 1
        self.ctx.out.flush()

    def initial(self, objects: list[Any]) -> None:
        if self.output in ("", "wide"):
            if objects:
                now = utc_now()
                self._rows([table_row(self.kind, obj, now, self.table, "ADDED") for obj in objects])
            return
        for obj in objects:
            self._document(obj)

    def event(self, event_type: str, obj: Any) -> None:
        if self.output in ("", "wide"):
            self._rows([table_row(self.kind, obj, utc_now(), self.table, event_type)])
        else:
            self._document(obj)


# --- describe ----------------------------------------------------------------


async def _events_of(ctx: Context, kind: Kind, obj: Any) -> str:
    """The Events section of obj's description: its events, found as kubectl describe finds
    them (a field selector on involvedObject; a node's uid is its name, as recorded)."""
    meta = obj.metadata
    uid = meta.name if kind is NODES else meta.uid
    selector = (
        f"involvedObject.name={meta.name},involvedObject.namespace={meta.namespace},"
        f"involvedObject.kind={kind.name},involvedObject.uid={uid}"
    )
    try:
        events, _ = await list_objects(ctx, EVENTS, meta.namespace, field_selector=selector)
    except grpc.aio.AioRpcError:
        return ""  # as kubectl (events forbidden, say): the description without them
    return describers.describe_events(events, utc_now())


async def _describe_one(ctx: Context, kind: Kind, obj: Any) -> str:
    text = await _describe_kind(ctx, kind, obj)
    if kind in (PODS, REPLICATION_CONTROLLERS, NODES):
        text = text.rstrip("\n") + "\n" + await _events_of(ctx, kind, obj)
    return text


async def _describe_kind(ctx: Context, kind: Kind, obj: Any) -> str:
    namespace = obj.metadata.namespace
    if kind is PODS:
        return describers.describe_pod(obj, utc_now())
    if kind is SERVICES:
        try:
            endpoints = await rpc(ctx, ctx.client.get(ENDPOINTS, obj.metadata.name, namespace))
        except grpc.aio.AioRpcError:
            endpoints = None
        return describers.describe_service(obj, endpoints)
    if kind is REPLICATION_CONTROLLERS:
        selector = ",".join(f"{k}={v}" for k, v in sorted(obj.spec.selector.items()))
        pods, _ = await list_objects(ctx, PODS, namespace, label_selector=selector) if selector else ([], 0)
        return describers.describe_replication_controller(obj, pods)
    if kind is NODES:
        pods, _ = await list_objects(ctx, PODS, "", field_selector=f"spec.nodeName={obj.metadata.name}")
        return describers.describe_node(obj, pods, utc_now())
    if kind is NAMESPACES:
        return describers.describe_namespace(obj)
    if kind in (ROLES, CLUSTER_ROLES):
        return describers.describe_role(obj)
    if kind in (ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS):
        return describers.describe_role_binding(obj)
    if kind is LEASES:
        return describers.describe_lease(obj)
    if kind is EVENTS:
        return describers.describe_event(obj)
    return describers.describe_endpoints(obj)


async def describe(
    ctx: Context, requests: list[ResourceRequest], *, label_selector: str = "", all_namespaces: bool = False
) -> None:
    if not requests:
        raise CommandError(f"error: you must specify the type of resource to describe ({KIND_LIST})")
    texts: list[str] = []
    for request in requests:
        kind = request.kind
        namespace = ctx.namespace_for(kind, all_namespaces)
        objects: list[Any] = []
        if request.names:
            for name in request.names:
                try:
                    objects.append(await rpc(ctx, ctx.client.get(kind, name, namespace)))
                    continue
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.NOT_FOUND:
                        ctx.fail(server_error(error, kind, name))
                        continue
                    not_found = error
                # As kubectl does: no exact match describes every object whose name starts so.
                items, _ = await list_objects(ctx, kind, namespace)
                matches = [obj for obj in items if obj.metadata.name.startswith(name)]
                if not matches:
                    ctx.fail(server_error(not_found, kind, name))
                objects.extend(matches)
        else:
            objects, _ = await list_objects(ctx, kind, namespace, label_selector=label_selector)
            if not objects and len(requests) == 1:
                _no_resources(ctx, kind, all_namespaces)
        for obj in objects:
            texts.append(await _describe_one(ctx, kind, obj))
    if texts:
        ctx.out.write("\n\n".join(text.rstrip("\n") for text in texts) + "\n")
        ctx.out.flush()


# --- apply, create -----------------------------------------------------------


def load(paths: Sequence[str], verb: str) -> list[Manifest]:
    try:
        manifests = load_manifest_sources(paths)
    except ManifestError as error:
        raise CommandError(f"error: {error}") from None
    if not manifests:
        raise CommandError(f"error: no objects passed to {verb}")
    return manifests


def place(ctx: Context, manifest: Manifest) -> tuple[Kind, ApiObject]:
    """The manifest's object in its namespace: its own, else -n's; they must agree."""
    obj: ApiObject = manifest.message
    kind = kind_of_message(obj)
    meta = obj.metadata
    if not kind.namespaced:
        meta.namespace = ""
    elif not meta.namespace:
        meta.namespace = ctx.namespace
    elif ctx.namespace_given and meta.namespace != ctx.namespace:
        raise CommandError(
            f'error: the namespace from the provided object "{meta.namespace}" does not match the namespace '
            f"\"{ctx.namespace}\". You must pass '--namespace={meta.namespace}' to perform this operation."
        )
    return kind, obj


def last_applied(obj: ApiObject) -> str:
    """The applied configuration as recorded in the annotation (without the annotation itself)."""
    config = type(obj)()
    config.CopyFrom(obj)
    config.metadata.annotations.pop(LAST_APPLIED_ANNOTATION, None)
    return json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))


def desired_update(obj: ApiObject, stored: ApiObject, kind: Kind) -> ApiObject:
    """The manifest as an update of the stored object: identity, owners and status kept."""
    desired = type(obj)()
    desired.CopyFrom(obj)
    meta, old = desired.metadata, stored.metadata
    meta.resource_version = old.resource_version
    meta.uid = old.uid
    meta.creation_timestamp.CopyFrom(old.creation_timestamp)
    meta.generation = old.generation
    if not meta.owner_references:
        meta.owner_references.extend(old.owner_references)
    if kind.has_status:
        desired.status.CopyFrom(stored.status)
    if kind is PODS and not desired.spec.node_name:
        # The scheduler's binding, not the manifest's: re-applying a pod keeps it where it runs.
        desired.spec.node_name = stored.spec.node_name
    return desired


async def _apply_one(ctx: Context, manifest: Manifest) -> None:
    try:
        kind, obj = place(ctx, manifest)
    except CommandError as error:
        ctx.fail(str(error))
        return
    name = obj.metadata.name
    if not name:
        ctx.fail(f"error: {manifest.origin}: metadata.name: required by apply")
        return
    config = last_applied(obj)
    obj.metadata.annotations[LAST_APPLIED_ANNOTATION] = config
    label = qualified_name(kind, name)
    for attempt in range(2):  # one retry when someone else wrote in between
        try:
            stored = await rpc(ctx, ctx.client.get(kind, name, obj.metadata.namespace))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                ctx.fail(
                    server_error(
                        error, kind, name, action="retrieving current configuration of", origin=manifest.source
                    )
                )
                return
            try:
                await rpc(ctx, ctx.client.create(obj))
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.ALREADY_EXISTS and attempt == 0:
                    continue
                ctx.fail(server_error(error, kind, name, action="creating", origin=manifest.source))
                return
            ctx.say(f"{label} created")
            return
        if stored.metadata.annotations.get(LAST_APPLIED_ANNOTATION) == config:
            ctx.say(f"{label} unchanged")
            return
        try:
            updated = await rpc(ctx, ctx.client.update(desired_update(obj, stored, kind)))
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND) and attempt == 0:
                continue
            ctx.fail(server_error(error, kind, name, action="applying", origin=manifest.source))
            return
        unchanged = updated.metadata.resource_version == stored.metadata.resource_version
        ctx.say(f"{label} {'unchanged' if unchanged else 'configured'}")
        return


async def apply(ctx: Context, paths: Sequence[str]) -> None:
    for manifest in load(paths, "apply"):
        await _apply_one(ctx, manifest)


async def create(ctx: Context, paths: Sequence[str]) -> None:
    for manifest in load(paths, "create"):
        try:
            kind, obj = place(ctx, manifest)
        except CommandError as error:
            ctx.fail(str(error))
            continue
        try:
            created = await rpc(ctx, ctx.client.create(obj))
        except grpc.aio.AioRpcError as error:
            ctx.fail(server_error(error, kind, obj.metadata.name, action="creating", origin=manifest.source))
            continue
        ctx.say(f"{qualified_name(kind, created.metadata.name or obj.metadata.name)} created")


# --- delete ------------------------------------------------------------------


# kubectl's warning for --force: the object is removed from the API at once, whether or not its
# containers have stopped.
FORCE_WARNING = (
    "Warning: Immediate deletion does not wait for confirmation that the running resource has been "
    "terminated. The resource may continue to run on the cluster indefinitely."
)


@dataclass(frozen=True)
class DeleteOptions:
    label_selector: str = ""
    all: bool = False
    cascade: str = "background"
    ignore_not_found: bool = False
    wait: bool = True
    timeout: float = 0  # seconds to wait for a graceful deletion to finish; 0 = no limit
    grace_period: int = -1  # seconds a pod gets to stop; -1: its own terminationGracePeriodSeconds
    force: bool = False  # with grace 0: removed from the API at once
    now: bool = False  # grace 1: stop at once


def delete_grace_period(options: DeleteOptions) -> int | None:
    """The gracePeriodSeconds a Delete asks for, None for the object's own, as kubectl
    resolves --grace-period, --now and --force: --now is 1; 0 without --force is 1 (so that
    nothing is removed before it stopped by mistake); --force alone is 0."""
    grace = options.grace_period
    if options.now:
        if grace != -1:
            raise CommandError("error: --now and --grace-period cannot be specified together")
        grace = 1
    if grace == 0 and not options.force:
        grace = 1
    if options.force and grace < 0:
        grace = 0
    if options.force and grace > 0:
        raise CommandError("error: --force and --grace-period greater than 0 cannot be specified together")
    return grace if grace >= 0 else None


async def delete_object(
    client: ApiClient, kind: Kind, name: str, namespace: str, *, propagation_policy: str = "",
    grace_period_seconds: int | None = None,
) -> ApiObject:
    """Delete with the options ApiClient.delete does not take (gracePeriodSeconds)."""
    request = meta_pb2.DeleteRequest(
        namespace=namespace if kind.namespaced else "", name=name, propagation_policy=propagation_policy
    )
    if grace_period_seconds is not None:
        request.grace_period_seconds = grace_period_seconds
    return await client.stub(kind).Delete(request, timeout=client.timeout)


def propagation_policy(cascade: str) -> str:
    try:
        return CASCADE_POLICIES[cascade.lower()]
    except KeyError:
        raise CommandError(
            f'error: invalid cascade value "{cascade}": must be one of background, foreground, orphan '
            "(or the deprecated true, false)"
        ) from None


async def _wait_gone(ctx: Context, kind: Kind, namespace: str, name: str, uid: str) -> None:
    """Waits until a gracefully deleted object has really gone."""
    options = meta_pb2.ListOptions(
        namespace=namespace, field_selector=f"metadata.name={name}", send_initial_events=True
    )
    call = ctx.client.watch(kind, options)
    present = False
    try:
        async for event in call:
            obj = event.object
            if event.type == "BOOKMARK":
                if obj.metadata.annotations.get(INITIAL_EVENTS_END_ANNOTATION) == "true" and not present:
                    return
                continue
            if obj.metadata.uid != uid:
                continue
            if event.type == "DELETED":
                return
            present = True
    except grpc.aio.AioRpcError as error:
        if error.code() in CONNECTION_CODES:
            raise unreachable(error, "the API server", ctx.client.server) from None
        ctx.fail(server_error(error, kind, name))
    finally:
        call.cancel()


async def _delete_one(ctx: Context, kind: Kind, name: str, namespace: str, options: DeleteOptions) -> None:
    policy = propagation_policy(options.cascade) if kind is REPLICATION_CONTROLLERS else ""
    grace = delete_grace_period(options)
    try:
        deleted = await rpc(
            ctx, delete_object(ctx.client, kind, name, namespace, propagation_policy=policy, grace_period_seconds=grace)
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND and options.ignore_not_found:
            return
        ctx.fail(server_error(error, kind, name))
        return
    ctx.say(f'{kind.singular} "{name}" {"force deleted" if grace == 0 else "deleted"}')
    if options.wait and deleted.metadata.deletion_timestamp.ByteSize():
        try:
            async with asyncio.timeout(options.timeout or None):
                await _wait_gone(ctx, kind, namespace, name, deleted.metadata.uid)
        except TimeoutError:
            ctx.fail(f'error: timed out waiting for {kind.singular} "{name}" to be deleted')


async def delete(ctx: Context, requests: list[ResourceRequest], paths: Sequence[str], options: DeleteOptions) -> None:
    propagation_policy(options.cascade)  # a bad value fails before anything is deleted
    if delete_grace_period(options) == 0:
        print(FORCE_WARNING, file=ctx.err, flush=True)
    if paths:
        if requests:
            raise CommandError("error: cannot give resources as arguments together with -f")
        for manifest in load(paths, "delete"):
            try:
                kind, obj = place(ctx, manifest)
            except CommandError as error:
                ctx.fail(str(error))
                continue
            await _delete_one(ctx, kind, obj.metadata.name, obj.metadata.namespace, options)
        return
    if not requests:
        raise CommandError("error: you must provide one or more resources by argument or filename (-f)")
    for request in requests:
        kind = request.kind
        namespace = ctx.namespace_for(kind)
        if request.names:
            if options.label_selector or options.all:
                raise CommandError("error: name cannot be provided when a selector or --all is specified")
            for name in request.names:
                await _delete_one(ctx, kind, name, namespace, options)
            continue
        if not options.label_selector and not options.all:
            raise CommandError(
                "error: resource(s) were provided, but no name was specified: give names, -l SELECTOR or --all"
            )
        items, _ = await list_objects(ctx, kind, namespace, label_selector=options.label_selector)
        if not items:
            _no_resources(ctx, kind, False)
        for obj in items:
            await _delete_one(ctx, kind, obj.metadata.name, obj.metadata.namespace, options)


# --- scale -------------------------------------------------------------------


async def scale(ctx: Context, requests: list[ResourceRequest], replicas: int, current_replicas: int = -1) -> None:
    if replicas < 0:
        raise CommandError("error: --replicas=COUNT must be zero or more")
    if not requests or not any(r.names for r in requests):
        raise CommandError("error: give the replication controller to scale: kubecfg scale rc NAME --replicas=N")
    for request in requests:
        if request.kind is not REPLICATION_CONTROLLERS:
            raise CommandError(f"error: {request.kind.plural} cannot be scaled: only replicationcontrollers (rc) can")
    for request in requests:
        for name in request.names:
            await _scale_one(ctx, name, replicas, current_replicas)


async def _scale_one(ctx: Context, name: str, replicas: int, current_replicas: int) -> None:
    kind = REPLICATION_CONTROLLERS
    for attempt in range(SCALE_ATTEMPTS):
        rc = await get_object(ctx, kind, name, ctx.namespace)
        if rc is None:
            return
        current = rc.spec.replicas if rc.spec.HasField("replicas") else 1
        if current_replicas >= 0 and current != current_replicas:
            ctx.fail(f"error: Expected replicas to be {current_replicas}, was {current}")
            return
        if rc.spec.HasField("replicas") and current == replicas:
            break
        rc.spec.replicas = replicas
        try:
            await rpc(ctx, ctx.client.update(rc))  # carries the resource_version just read
            break
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.ABORTED and attempt + 1 < SCALE_ATTEMPTS:
                continue
            ctx.fail(server_error(error, kind, name))
            return
    ctx.say(f"{qualified_name(kind, name)} scaled")


# --- logs --------------------------------------------------------------------


@dataclass(frozen=True)
class LogsOptions:
    container: str = ""
    follow: bool = False
    tail: int = -1
    timestamps: bool = False


def kubelet_address(node: Any) -> str:
    """host:port of a node's kubelet, from its status (InternalIP, else Hostname): the REST
    API's pods/log finds it the same way (services.common.kubeletclient)."""
    try:
        return kubeletclient.kubelet_address(node)
    except kubeletclient.NoKubeletAddress as error:
        raise CommandError(f"error: {error}") from None


def pick_container(pod: Any, requested: str) -> str:
    names = [c.name for c in pod.spec.containers]
    if requested:
        if requested not in names:
            raise CommandError(
                f"error: container {requested} is not valid for pod {pod.metadata.name} "
                f"(choose one of: {' '.join(names)})"
            )
        return requested
    if len(names) != 1:
        raise CommandError(
            f"error: a container name must be specified for pod {pod.metadata.name}, choose one of: [{' '.join(names)}]"
        )
    return names[0]


def _pod_name(arg: str) -> str:
    kind_name, slash, name = arg.partition("/")
    if not slash:
        return arg
    if lookup_kind(kind_name) is not PODS:
        raise CommandError(f"error: logs are read from pods, not {kind_name}")
    return name


async def logs(ctx: Context, pod_arg: str, options: LogsOptions, out: Any = None) -> None:
    if options.tail < -1:
        raise CommandError("error: --tail must be -1 (all lines) or more")
    name = _pod_name(pod_arg)
    try:
        pod = await rpc(ctx, ctx.client.get(PODS, name, ctx.namespace))
    except grpc.aio.AioRpcError as error:
        raise CommandError(server_error(error, PODS, name)) from None
    container = pick_container(pod, options.container)
    node_name = pod.spec.node_name
    if not node_name:
        raise CommandError(f'error: pod "{name}" is not scheduled to a node yet: no logs to show')
    if options.tail == 0 and not options.follow:
        return
    try:
        node = await rpc(ctx, ctx.client.get(NODES, node_name, ""))
    except grpc.aio.AioRpcError as error:
        raise CommandError(server_error(error, NODES, node_name)) from None
    address = kubelet_address(node)
    request = kubelet_pb2.PodLogsRequest(
        namespace=pod.metadata.namespace,
        name=name,
        container=container,
        follow=options.follow,
        tail_lines=max(options.tail, 0),
        timestamps=options.timestamps,
    )
    sink = out if out is not None else sys.stdout.buffer
    # The kubelet's API takes the same credentials (its certificate is from the cluster CA).
    async with aio_channel(address, ctx.client.credentials, CHANNEL_OPTIONS) as channel:
        call = kubelet_pb2_grpc.KubeletStub(channel).Logs(request)
        try:
            async for chunk in call:
                await asyncio.to_thread(_write, sink, chunk.data)
        except grpc.aio.AioRpcError as error:
            if error.code() in CONNECTION_CODES:
                raise unreachable(error, f'the kubelet of node "{node_name}"', address) from None
            raise CommandError(server_error(error)) from None
        finally:
            call.cancel()


def _write(sink: Any, data: bytes) -> None:
    sink.write(data)
    sink.flush()
