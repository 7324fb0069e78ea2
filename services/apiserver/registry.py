"""The generic registry: create, read, update, delete, list and watch any kind.

Writes are etcd transactions guarded by revision (optimistic concurrency);
List reads etcd at one revision (consistent, paginated); Watch is served from
the kind's watch cache. Stored values are the serialized message with
metadata.resource_version cleared: the revision lives in etcd's mod_revision.

What differs between kinds is the kind's `Strategy` (defaults, status,
validation, extra subresources, delete hooks; see strategies.py): this module
never names a kind. List splices each item's revision onto its stored bytes;
the field numbers it needs are read from the kind's descriptors when the
registry is built, and a kind that does not fit fails then, not on a List.

Deletion (Kubernetes' rest.BeforeDelete and the generic store's Delete): a
kind whose strategy gives a grace period (`graceful_delete_period`: pods) is
deleted gracefully: the Delete marks it (metadata.deletionTimestamp = now +
grace, deletionGracePeriodSeconds = grace) and keeps it, a later Delete may
only shorten the grace, and one with grace 0 removes it. An object with
metadata.finalizers is only marked, whatever its kind, and is removed by the
update that empties its finalizers once its grace is 0 (Kubernetes'
ShouldDeleteDuringUpdate). The decision is `plan_deletion` (pure).

Side keys: a strategy with `has_side_keys` gives, for each write attempt, keys
to create and delete in the same etcd transaction as the object (`SideKeys`;
a service's cluster IP and node ports, see ipallocator.py). Such a write is one
transaction guarded by the object's revision and by "absent" on each key it
claims, sent on its own (`Storage.transaction`). Every other kind keeps the
single-key path through the write batcher, with no extra call or read.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import json
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, ClassVar, Generic, Iterable, Mapping, Sequence, TypeAlias, TypeVar

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import meta_pb2
from services.common.resources import DEFAULT_NAMESPACE, FOREGROUND_FINALIZER, Kind
from services.common.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    validate_dns1123_label,
    validate_label_key,
)
from services.common.timestamps import now_timestamp
from services.common.validation import FieldError, forbidden, show_value
from services.common.validation import invalid as invalid_field

from .auth.admission import CREATE, DELETE, UPDATE, AdmissionChain, AdmissionRequest
from .auth.context import current_user
from .errors import ApiError, already_exists, conflict, invalid, not_found, require_name
from .storage import (
    CompactedError,
    KeyValue,
    Op,
    RangeResult,
    Storage,
    absent,
    at_revision,
    delete,
    delete_if_value,
    prefix_range_end,
    put,
)
from .etcdwatch import EtcdWatches
from .watchcache import WatchCache, WatchFilter

# A kind's message. protobuf's stubs cannot say "a message with a metadata
# field", so the generic code reads it as Any; strategies use the real classes.
ApiObject: TypeAlias = Any
T = TypeVar("T")

# Kubernetes' alphabet for generated name suffixes: no vowels, no look-alikes.
_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
BACKGROUND, ORPHAN, FOREGROUND = "Background", "Orphan", "Foreground"
_PROPAGATION_POLICIES = ("", BACKGROUND, ORPHAN, FOREGROUND)
_CONFLICT_RETRIES = 16
# Kubernetes' dryRun=All for the writes of one request (the REST API's `dryRun`): each is
# validated, defaulted and admitted in full, then not stored; the caller gets the object as it
# would be (a create's without a resourceVersion). Set per request, as auth.context's user.
_DRY_RUN: contextvars.ContextVar[bool] = contextvars.ContextVar("kybernetes_dry_run", default=False)


def set_dry_run(value: bool) -> None:
    """Whether this request's writes store nothing (set on every request, never inherited)."""
    _DRY_RUN.set(value)

# -- big objects: their CPU work off the event loop -------------------------------------------

# An object at least this big (encoded: a request as received, a value as stored) is decoded,
# defaulted, validated and encoded in a worker thread, not on the event loop that every other
# client's calls wait for. Issue 14's D10: validating one 1.4 MiB pod (50,000 labels, 30,000
# containers) held the loop for 75-250 ms, and another client's Get went from 2 ms to a p99
# of 0.3-1.8 s (bench/bigobjects.py). In the thread that work hands the GIL to the loop each
# time the loop wants it, after the switch interval (sys.getswitchinterval(), 5 ms) or after
# the one protobuf call it is in (10-15 ms for a 1.4 MiB map, the longest); the server sets
# the switch interval to 1 ms (SWITCH_INTERVAL, server.py). Below this size
# the hand-off (~0.1 ms) costs more than the work: small objects stay inline, as before.
OFFLOAD_BYTES = 64 * 1024
# One thread for the whole server: big objects queue for it, one at a time, however many
# clients send them, so that the loop shares the GIL with one thread at most (the big
# requests wait, not the loop): more threads could not run Python at once anyway.
_big_objects = ThreadPoolExecutor(max_workers=1, thread_name_prefix="big-objects")


async def off_loop(size: int, work: Callable[..., T], *args: Any) -> T:
    """work(*args): in the big-object thread when size >= OFFLOAD_BYTES, else right here.
    work may touch only its arguments (objects this request alone holds) and immutable
    state: never the watch caches, which the loop changes (so admission stays on the loop)."""
    if size < OFFLOAD_BYTES:
        return work(*args)
    context = contextvars.copy_context()  # as asyncio.to_thread: the caller's contextvars
    return await asyncio.get_running_loop().run_in_executor(
        _big_objects, functools.partial(context.run, work, *args)
    )


# How many objects List reads from etcd at once (at one revision: the same snapshot). A List
# of every pod once read them all in one range; at 30,000 pods etcd's answer, an object per
# key and a spliced copy of each lived at once beside the message (~100 MB for a 19 MB list),
# and the API server's RSS stood 43 MB higher afterwards (bench.apimemory). A page at a time
# keeps two pages of those beside the message being written: this one and the one read ahead.
LIST_PAGE = 1_000


# The request being served and its size as received (the server sets it when it decodes
# one): create and update go by it rather than measure a big message on the loop again
# (ByteSize takes 1-3 ms for a 1.4 MiB one).
RECEIVED: contextvars.ContextVar[tuple[Any, int] | None] = contextvars.ContextVar("received", default=None)


def encoded_size(obj: Any) -> int:
    received = RECEIVED.get()
    if received is not None and received[0] is obj:
        return received[1]
    return int(obj.ByteSize())


# -- List's wire layout -------------------------------------------------------

_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LENGTH_DELIMITED, _WIRE_FIXED32 = 0, 1, 2, 5
_VARINT_TYPES = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at data[pos:] and the position after it."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _varint_end(data: bytes, pos: int) -> int:
    while data[pos] & 0x80:
        pos += 1
    return pos + 1


def _tag(field: Any, wire_type: int) -> bytes:
    return _varint((field.number << 3) | wire_type)


class LayoutError(TypeError):
    """A kind whose messages do not fit what List's byte splicing assumes."""


@dataclass(frozen=True, slots=True)
class WireLayout:
    """Field keys List writes around stored bytes, read from one kind's descriptors."""

    metadata_tag: bytes  # the kind's `metadata` (an ObjectMeta), length-delimited
    resource_version_tag: bytes  # ObjectMeta.resource_version, a varint
    items_tag: bytes  # the list message's `repeated <kind> items`

    def metadata_span(self, data: bytes) -> tuple[int, int, int] | None:
        """Where the metadata field is in a serialized object: (field start, contents start,
        end), or None when it has none. Scans the top-level fields (a few, before metadata)."""
        wanted, _ = _read_varint(self.metadata_tag, 0)
        pos, size = 0, len(data)
        while pos < size:
            start = pos
            key, pos = _read_varint(data, pos)
            wire = key & 7
            if wire == _WIRE_LENGTH_DELIMITED:
                length, pos = _read_varint(data, pos)
                if key == wanted:
                    return start, pos, pos + length
                pos += length
            elif wire == _WIRE_VARINT:
                pos = _varint_end(data, pos)
            elif wire == _WIRE_FIXED64:
                pos += 8
            elif wire == _WIRE_FIXED32:
                pos += 4
            else:
                raise ValueError(f"unexpected wire type {wire} at byte {start}")
        return None

    def metadata_first(self, data: bytes) -> bytes:
        """The same object with its metadata field first: the stored form, so that List
        finds the field at byte 0 and sets resource_version inside it without a scan."""
        span = self.metadata_span(data)
        if span is None or span[0] == 0:
            return data
        start, _, end = span
        return data[start:end] + data[:start] + data[end:]

    def with_resource_version(self, stored: bytes, revision: int) -> bytes:
        """A stored object (resource_version cleared) with metadata.resource_version set
        inside its one metadata field: canonical encoding, each field once, which every
        decoder reads alike (protobuf.js replaces a repeated message field instead of merging)."""
        return b"".join(self._with_resource_version(stored, revision))

    def append_item(self, out: bytearray, stored: bytes, revision: int) -> None:
        """Appends to out, the list message being written, the stored object as one entry of
        its items with resource_version set (with_resource_version's bytes), copying the
        object's bytes once: straight into the list, not through a spliced copy first."""
        parts = self._with_resource_version(stored, revision)
        out += self.items_tag
        out += _varint(sum(map(len, parts)))
        for part in parts:
            out += part

    def _with_resource_version(self, stored: bytes, revision: int) -> tuple[bytes | memoryview, ...]:
        """with_resource_version's bytes as the parts that make them, views of stored where
        they are stored's own bytes."""
        field = self.resource_version_tag + _varint(revision)
        tag = self.metadata_tag
        view = memoryview(stored)
        if stored.startswith(tag):  # the stored form: metadata first
            # The length of an object's metadata takes one or two bytes (< 16 KiB): read them inline.
            at = len(tag)
            first = stored[at]
            if first < 0x80:
                length, contents = first, at + 1
            elif stored[at + 1] < 0x80:
                length, contents = (first & 0x7F) | (stored[at + 1] << 7), at + 2
            else:
                length, contents = _read_varint(stored, at)
            end = contents + length
            return tag, _varint(length + len(field)), view[contents:end], field, view[end:]
        span = self.metadata_span(stored)  # written before the stored form was metadata-first
        if span is None:
            return tag, _varint(len(field)), field, view
        start, contents, end = span
        return view[:start], tag, _varint(end - contents + len(field)), view[contents:end], field, view[end:]

    def item(self, data: bytes) -> bytes:
        """One serialized object as an entry of the list message's items."""
        return self.items_tag + _varint(len(data)) + data


def wire_layout(kind: Kind) -> WireLayout:
    """The layout of kind's messages; LayoutError naming the kind and field when they do not fit."""
    message = kind.message.DESCRIPTOR
    list_message = kind.list_message.DESCRIPTOR

    # Descriptors are typed as Any: protobuf's stubs give them as a union of
    # the pure-Python and upb classes, and message_type as optional.
    def expect(container: Any, name: str, *, of: Any = None, repeated: bool = False) -> Any:
        """container's field `name`: a message field of type `of`, or an integer when of is None."""
        what = ("repeated " if repeated else "a singular ") + (of.full_name if of is not None else "int64")
        found = container.fields_by_name.get(name)
        if found is None:
            raise LayoutError(f"kind {kind.name}: {container.full_name} has no field {name!r} (List needs {what})")
        if of is None:
            fits = found.type in _VARINT_TYPES
        else:
            fits = found.type == FieldDescriptor.TYPE_MESSAGE and found.message_type.full_name == of.full_name
        if not fits or found.is_repeated != repeated:
            raise LayoutError(
                f"kind {kind.name}: field {found.full_name} (number {found.number}) must be {what} for List"
            )
        return found

    metadata = expect(message, "metadata", of=meta_pb2.ObjectMeta.DESCRIPTOR)
    resource_version = expect(metadata.message_type, "resource_version")
    items = expect(list_message, "items", of=message, repeated=True)
    expect(list_message, "metadata", of=meta_pb2.ListMeta.DESCRIPTOR)
    return WireLayout(
        metadata_tag=_tag(metadata, _WIRE_LENGTH_DELIMITED),
        resource_version_tag=_tag(resource_version, _WIRE_VARINT),
        items_tag=_tag(items, _WIRE_LENGTH_DELIMITED),
    )


def _ignore_outcome(task: asyncio.Task[Any]) -> None:
    """Marks a task's outcome as seen, so that asyncio does not log an error nobody awaits."""
    if not task.cancelled():
        task.exception()


def _encode_continue(revision: int, next_key: bytes) -> str:
    raw = json.dumps({"rv": revision, "start": base64.b64encode(next_key).decode()}).encode()
    return base64.urlsafe_b64encode(raw).decode()


_MAX_REVISION = 2**63 - 1  # etcd's revisions are int64


def _decode_continue(token: str, prefix: bytes) -> tuple[int, bytes]:
    """The revision and start key of a continue token; INVALID_ARGUMENT naming `continue`
    for anything a previous List of this list did not hand out."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        rv, start_text = data["rv"], data["start"]
        if type(rv) is not int or not isinstance(start_text, str):
            raise ValueError("wrong types")
        revision, start = rv, base64.b64decode(start_text, validate=True)
    except Exception:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "continue: not a token from a previous List") from None
    if not 0 < revision <= _MAX_REVISION:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "continue: not a token from a previous List")
    if not start.startswith(prefix):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "continue: token belongs to a different list")
    return revision, start


# -- deletion -------------------------------------------------------------------

# A finalizer list longer than this is refused (no kind needs more than a handful).
_MAX_FINALIZERS = 64


@dataclass(frozen=True, slots=True)
class Deletion:
    """What one Delete does to the stored object: remove it (`now`), store `marked`
    instead (the object with its deletion marks, kept), or neither (a graceful
    deletion is under way and the request does not shorten it)."""

    now: bool = False
    marked: ApiObject | None = None


_PENDING = Deletion()
_DELETE_NOW = Deletion(now=True)


def _marked_copy(obj: ApiObject) -> ApiObject:
    copy = type(obj)()
    copy.CopyFrom(obj)
    return copy


def _mark(obj: ApiObject, deletion_timestamp: Timestamp, grace: int, *, first: bool) -> ApiObject:
    """A copy of obj with the deletion marks; the first marking bumps the generation (as
    Kubernetes does, so a controller watching generations sees the object is going)."""
    marked = _marked_copy(obj)
    meta = marked.metadata
    meta.deletion_timestamp.CopyFrom(deletion_timestamp)
    meta.deletion_grace_period_seconds = grace
    if first and meta.generation > 0:
        meta.generation += 1
    return marked


def plan_deletion(
    obj: ApiObject,
    requested_grace: int | None,
    graceful_period: Callable[[ApiObject, int | None], int | None],
    now: Timestamp,
) -> Deletion:
    """Kubernetes' rest.BeforeDelete and the generic store's Delete, on one stored object (pure).

    requested_grace: the request's gracePeriodSeconds (None: not given; a negative
    one counts as 1). graceful_period(obj, requested): the kind's grace period for
    obj (Kubernetes' CheckGracefulDelete), None for a kind without graceful deletion.
    """
    if requested_grace is not None and requested_grace < 0:
        requested_grace = 1
    meta = obj.metadata
    finalizers = len(meta.finalizers) > 0
    if meta.HasField("deletion_timestamp"):
        stored = meta.deletion_grace_period_seconds if meta.HasField("deletion_grace_period_seconds") else 0
        if stored > 0:
            # A graceful deletion under way: only a shorter grace changes anything.
            if requested_grace is None or requested_grace >= stored:
                return _PENDING
            if requested_grace == 0 and not finalizers:
                return _DELETE_NOW
            deadline = Timestamp(seconds=meta.deletion_timestamp.seconds - stored + requested_grace)
            return Deletion(marked=_mark(obj, deadline, requested_grace, first=False))
        if not finalizers:
            return _DELETE_NOW  # marked with no grace left (finalized, or an Orphan delete's mark)
        # Kubernetes' markAsDeleting: the earlier of the stored time and now, grace 0.
        deadline = meta.deletion_timestamp if meta.deletion_timestamp.seconds <= now.seconds else now
        return Deletion(marked=_mark(obj, deadline, 0, first=False))
    period = graceful_period(obj, requested_grace)
    if period is not None and period > 0:
        deadline = Timestamp(seconds=now.seconds + period)
        return Deletion(marked=_mark(obj, deadline, period, first=True))
    if finalizers:
        return Deletion(marked=_mark(obj, now, 0, first=True))
    return _DELETE_NOW


def with_finalizer(obj: ApiObject, finalizer: str) -> ApiObject:
    """A copy of obj holding the finalizer (obj itself when it holds it already)."""
    if finalizer in obj.metadata.finalizers:
        return obj
    updated = type(obj)()
    updated.CopyFrom(obj)
    updated.metadata.finalizers.append(finalizer)
    return updated


def removed_by_update(updated: ApiObject, old: ApiObject) -> bool:
    """An update that empties the finalizers of an object marked for deletion with no
    grace left removes it (Kubernetes' ShouldDeleteDuringUpdate)."""
    meta = old.metadata
    if updated.metadata.finalizers or not meta.HasField("deletion_timestamp"):
        return False
    return not meta.HasField("deletion_grace_period_seconds") or meta.deletion_grace_period_seconds == 0


def validate_finalizers(meta: meta_pb2.ObjectMeta, old: meta_pb2.ObjectMeta | None = None) -> list[FieldError]:
    """Each finalizer a qualified name (Kubernetes' ValidateFinalizerName); none added to an
    object being deleted (ValidateNoNewFinalizers)."""
    errors: list[FieldError] = []
    if len(meta.finalizers) > _MAX_FINALIZERS:
        errors.append(invalid_field("metadata.finalizers", len(meta.finalizers), f"at most {_MAX_FINALIZERS}"))
        return errors
    for i, name in enumerate(meta.finalizers):
        reason = validate_label_key(name)
        if reason:
            errors.append(invalid_field(f"metadata.finalizers[{i}]", name, reason))
    if old is not None and old.HasField("deletion_timestamp"):
        added = sorted(set(meta.finalizers) - set(old.finalizers))
        if added:
            errors.append(
                forbidden(
                    "metadata.finalizers",
                    f"no new finalizers can be added if the object is being deleted, found new finalizers {added}",
                )
            )
    return errors


# -- what the registry asks of a kind -------------------------------------------


class SubresourceREST:
    """An extra RPC of one kind beside the verbs every kind has (Kubernetes'
    StatusREST, BindingREST), served over that kind's registry."""

    name: ClassVar[str]  # Kubernetes' subresource name: "status", "binding"
    rpc: ClassVar[str]  # the gRPC method that serves it: "UpdateStatus", "Bind"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def handle(self, request: Any) -> Any:
        raise NotImplementedError


class StatusREST(SubresourceREST):
    """UpdateStatus: the stored object with what the strategy's status_fields name
    taken from the request; everything else (spec, metadata) as stored."""

    name = "status"
    rpc = "UpdateStatus"

    async def handle(self, request: Any) -> Any:
        registry = self.registry
        require_name(request.metadata.name)
        registry.forbid_namespace(request)
        namespace = registry.stored_namespace_of(request.metadata.namespace)

        def mutate(current: ApiObject) -> ApiObject:
            updated = type(current)()
            updated.CopyFrom(current)
            registry.strategy.prepare_for_status_update(updated, request)
            registry.check(updated)
            return updated

        def admit(updated: ApiObject, current: ApiObject) -> None:
            registry.admit(UPDATE, updated, current, subresource=self.name)

        return await registry.guarded_write(
            namespace, request.metadata.name, request.metadata.resource_version, mutate,
            admit=admit, size=encoded_size(request),
        )


class SideKeys:
    """Keys a strategy writes in the same etcd transaction as one object.

    claims: created by the write, each guarded by "absent", so the write fails
    if any is taken. releases: deleted by it, each only while it still holds the
    value given (so a key that is not the object's is never freed).

    For each attempt the registry calls `done` once (the revision it committed
    at, or None: it did not commit, and the strategy undoes what it filled in
    the object); when only claims failed their guard, then `lost`, which raises
    the error the caller sees or returns to have the registry ask for new side
    keys and try again.
    """

    def __init__(self, claims: Mapping[bytes, bytes] | None = None, releases: Mapping[bytes, bytes] | None = None):
        self.claims: dict[bytes, bytes] = dict(claims or {})
        self.releases: dict[bytes, bytes] = dict(releases or {})

    def __bool__(self) -> bool:
        return bool(self.claims or self.releases)

    def done(self, revision: int | None) -> None:
        """The attempt committed at revision, or (None) did not."""

    async def lost(self, held: Mapping[bytes, KeyValue]) -> None:
        """held: the claimed keys that exist, as they are now."""
        taken = ", ".join(sorted(key.decode(errors="replace") for key in held))
        raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"{taken}: already taken")


class Strategy(Generic[T]):
    """How one kind is created, updated, validated and deleted (after Kubernetes'
    RESTCreateStrategy / RESTUpdateStrategy / RESTDeleteStrategy).

    The registry has already set the server-owned metadata when it calls
    prepare_for_create (namespace, uid, creation_timestamp, generation 1) and
    prepare_for_update (everything stored that a client may not change, and
    generation as stored). The prepare_* methods change obj in place; the
    validate_* methods return every problem (empty: it may be stored).

    prepare_*, validate* and graceful_delete_period run in the big-object thread for
    an object of OFFLOAD_BYTES or more (see off_loop): they may read and change only
    their arguments, never the caches or other shared state.
    """

    # Extra RPCs of this kind; each class is built once per registry.
    subresources: ClassVar[tuple[type[SubresourceREST], ...]] = ()
    # The top-level fields the status subresource copies from the request.
    status_fields: ClassVar[tuple[str, ...]] = ()
    # Whether writes carry side_keys (False: the batched single-key path, no extra call).
    has_side_keys: ClassVar[bool] = False
    # Whether a garbage collector deletes this kind's dependents (a Foreground delete then
    # keeps the object, with the foregroundDeletion finalizer, until they are gone); for the
    # other kinds Foreground is Background, as no collector would remove the finalizer.
    collects_dependents: ClassVar[bool] = False
    # Whether the API server keeps a watch cache of this kind (False: each Watch follows etcd
    # itself, see etcdwatch.py).
    watch_cached: ClassVar[bool] = True

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    def prepare_for_create(self, obj: T) -> None:
        """Defaults and the status a new object starts with."""

    def prepare_for_update(self, obj: T, old: T) -> None:
        """Defaults, the status kept from old, the generation bump."""

    def validate(self, obj: T) -> list[FieldError]:
        raise NotImplementedError

    def validate_update(self, obj: T, old: T) -> list[FieldError]:
        return self.validate(obj)

    def keep_status(self, obj: T, old: T) -> None:
        """On update, the status fields stay as stored: only the status subresource writes them."""
        for name in self.status_fields:
            getattr(obj, name).CopyFrom(getattr(old, name))

    def prepare_for_status_update(self, obj: T, request: T) -> None:
        """obj is a copy of the stored object: takes the status fields from request."""
        for name in self.status_fields:
            getattr(obj, name).CopyFrom(getattr(request, name))

    async def before_delete(self, registry: Registry, obj: T, propagation_policy: str) -> None:
        """Runs before each attempt to delete obj (it may run again after a lost race)."""

    def graceful_delete_period(self, obj: T, requested: int | None) -> int | None:
        """The grace period a Delete gives obj (Kubernetes' CheckGracefulDelete; requested:
        the request's, None when not given); None: the kind has no graceful deletion
        (removed at once, unless it has finalizers)."""
        return None

    async def side_keys(self, registry: Registry, obj: T | None, old: T | None) -> SideKeys:
        """With has_side_keys: what to write beside obj, for one attempt of a create
        (old None), an update, or a delete (obj None). Called after validation; it
        may fill server-owned fields of obj (an allocated IP), which done(None) undoes."""
        return SideKeys()

    async def repair(self, registry: Registry) -> None:
        """Runs once when the server starts, before it serves (Kubernetes' repair loops)."""

    def lease_ttl(self) -> int | None:
        """Seconds an object of this kind lives after each write (an etcd lease: events'
        --event-ttl); None: for ever."""
        return None


# -- the registry -------------------------------------------------------------------


class Registry:
    """Storage semantics of one kind, with its strategy."""

    def __init__(
        self,
        strategy: Strategy[Any],
        storage: Storage,
        *,
        peers: Mapping[str, Registry] | None = None,
        **cache_options: Any,
    ) -> None:
        self.strategy = strategy
        self.kind = kind = strategy.kind
        self.storage = storage
        # Fails at start-up, naming the kind and field, if List's splicing cannot work.
        self.layout = wire_layout(kind)
        watches = WatchCache if strategy.watch_cached else EtcdWatches
        self.cache = watches(kind, storage, self.decode, offload=off_loop, **cache_options)
        # The other kinds' registries in this server, for hooks that reach across kinds.
        self._peers: Mapping[str, Registry] = peers if peers is not None else {kind.name: self}
        self.subresources: dict[str, SubresourceREST] = {}
        for subresource in strategy.subresources:
            self.subresources[subresource.rpc] = subresource(self)
        # Policy checks of every write (auth/admission.py); the server installs its plugins.
        self.admission = AdmissionChain()

    def peer(self, kind: Kind) -> Registry:
        """The registry of another kind served beside this one."""
        try:
            return self._peers[kind.name]
        except KeyError:
            raise LookupError(f"{self.kind.plural}: no {kind.plural} registry beside this one") from None

    # -- encoding ---------------------------------------------------------

    def decode(self, value: bytes, revision: int) -> ApiObject:
        obj: ApiObject = self.kind.message.FromString(value)
        obj.metadata.resource_version = revision
        return obj

    def encode(self, obj: ApiObject) -> bytes:
        """The stored form: resource_version cleared (etcd's mod_revision is it), metadata first."""
        revision = obj.metadata.resource_version
        obj.metadata.resource_version = 0
        try:
            return self.layout.metadata_first(obj.SerializeToString(deterministic=True))
        finally:
            obj.metadata.resource_version = revision

    def namespace_of(self, namespace: str) -> str:
        """Where an object named in a request lives: "" for a cluster-scoped kind."""
        if not self.kind.namespaced:
            return ""
        return namespace or DEFAULT_NAMESPACE

    def stored_namespace_of(self, namespace: str) -> str:
        """namespace_of for a write to a stored object (Update, UpdateStatus, Bind): a name no
        namespace can have is INVALID_ARGUMENT naming metadata.namespace, not a NOT_FOUND."""
        if self.kind.namespaced and namespace:
            reason = validate_dns1123_label(namespace)
            if reason:
                raise ApiError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"metadata.namespace: {show_value(namespace)}: {reason}"
                )
        return self.namespace_of(namespace)

    def _key(self, namespace: str, name: str) -> bytes:
        return self.kind.key(namespace, name).encode()

    async def _store_create(self, key: bytes, value: bytes) -> int | None:
        """storage.create, with an etcd lease for a kind whose objects expire (Strategy.lease_ttl)."""
        ttl = self.strategy.lease_ttl()
        if ttl is None:
            return await self.storage.create(key, value)
        return await self.storage.create(key, value, lease=await self.storage.lease(ttl))

    async def _store_update(self, key: bytes, value: bytes, expected_revision: int) -> int | None:
        """storage.update, with a fresh lease for a kind whose objects expire (a write extends its life)."""
        ttl = self.strategy.lease_ttl()
        if ttl is None:
            return await self.storage.update(key, value, expected_revision)
        return await self.storage.update(key, value, expected_revision, lease=await self.storage.lease(ttl))

    # -- reads ------------------------------------------------------------

    async def _read(self, namespace: str, name: str) -> ApiObject:
        return (await self._read_sized(namespace, name))[0]

    async def _read_sized(self, namespace: str, name: str) -> tuple[ApiObject, int]:
        """The stored object and its size as stored (what off_loop goes by)."""
        kv = await self.storage.get(self._key(namespace, name))
        if kv is None:
            raise not_found(self.kind.plural, namespace, name)
        return await off_loop(len(kv.value), self.decode, kv.value, kv.mod_revision), len(kv.value)

    async def get(self, request: meta_pb2.GetRequest) -> ApiObject:
        require_name(request.name)
        return await self._read(self.namespace_of(request.namespace), request.name)

    def _selectors(self, options: meta_pb2.ListOptions) -> tuple[LabelSelector | None, FieldSelector | None]:
        try:
            labels = LabelSelector.parse(options.label_selector) if options.label_selector else None
        except SelectorError as error:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"labelSelector: {error}") from None
        try:
            fields = (
                FieldSelector.parse(options.field_selector, self.kind.fields(self.kind.message()).keys())
                if options.field_selector
                else None
            )
        except SelectorError as error:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"fieldSelector: {error}") from None
        return labels, fields

    async def list(self, options: meta_pb2.ListOptions) -> bytes:
        """The serialized list message (items spliced from stored bytes)."""
        labels, fields = self._selectors(options)
        if options.limit < 0:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "limit: must not be negative")
        namespace = options.namespace if self.kind.namespaced else ""
        prefix = self.kind.key_prefix(namespace).encode()
        end = prefix_range_end(prefix)
        revision, start = 0, prefix
        if options.continue_token:
            revision, start = _decode_continue(options.continue_token, prefix)
        limit = options.limit
        filtering = labels is not None or fields is not None
        items = bytearray()  # the list message's items, written as etcd's pages arrive
        count = 0
        next_token = ""
        fetch = 0
        ahead: asyncio.Task[RangeResult] | None = None  # the next page, read while this one is written
        try:
            while True:
                room = limit - count if limit else 0
                if filtering and fetch:
                    # The selector passed over some of the last page: read twice as many at
                    # once (as Kubernetes' etcd store does), not a limit's worth again and again.
                    fetch = min(fetch * 2, LIST_PAGE)
                else:
                    fetch = min(room, LIST_PAGE) if room else LIST_PAGE
                result = await (ahead or self._read_page(start, end, fetch, revision))
                ahead = None
                revision = revision or result.revision
                kvs = result.kvs
                if result.more and kvs and not filtering and (not room or len(kvs) < room):
                    # Every object of this page goes in the list, and more follow: etcd reads
                    # the next page meanwhile (a List of 30,000 pods reads 30 pages).
                    following = min(room - len(kvs), LIST_PAGE) if room else LIST_PAGE
                    ahead = asyncio.ensure_future(self._read_page(kvs[-1].key + b"\0", end, following, revision))
                added, stopped = await off_loop(
                    sum(len(kv.value) for kv in kvs), self._page, items, kvs, labels, fields, room
                )
                count += added
                if stopped is not None and (stopped + 1 < len(kvs) or result.more):
                    next_token = _encode_continue(revision, kvs[stopped].key + b"\0")
                if next_token or not result.more or not kvs or (limit and count == limit):
                    break
                start = kvs[-1].key + b"\0"
        finally:
            if ahead is not None:  # this request failed or was cancelled: so is its read ahead
                ahead.cancel()
                ahead.add_done_callback(_ignore_outcome)
        header = self.kind.list_message(
            api_version=self.kind.api_version,
            kind=f"{self.kind.name}List",
            metadata=meta_pb2.ListMeta(resource_version=revision, continue_token=next_token),
        ).SerializeToString()
        return await off_loop(len(items), header.__add__, items)

    async def _read_page(self, start: bytes, end: bytes, limit: int, revision: int) -> RangeResult:
        """Up to limit objects from start, at revision (0: the latest), for List."""
        try:
            return await self.storage.range(start, end, limit=limit, revision=revision)
        except CompactedError:
            raise ApiError(
                grpc.StatusCode.OUT_OF_RANGE,
                "continue: the list's revision was compacted; start the list again without a token",
            ) from None
        except ApiError as error:
            # etcd refuses a revision it has not reached ("mvcc: required revision is a
            # future revision"): only a forged token names one, a client's mistake.
            if revision and "future revision" in error.message:
                raise ApiError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"continue: the token's revision {revision} is newer than the store's; "
                    "not a token from a previous List",
                ) from None
            raise

    def _page(
        self,
        items: bytearray,
        kvs: Sequence[KeyValue],
        labels: LabelSelector | None,
        fields: FieldSelector | None,
        room: int,
    ) -> tuple[int, int | None]:
        """Appends one page of etcd's range to items as List's entries (each with its
        revision), the selectors applied: how many it appended, and the index in kvs where
        they filled `room` (0: no limit), if they did. CPU only: for a big page, off_loop."""
        filtering = labels is not None or fields is not None
        append_item = self.layout.append_item
        added = 0
        for index, kv in enumerate(kvs):
            if filtering:
                obj: ApiObject = self.kind.message.FromString(kv.value)
                if labels is not None and not labels.matches(obj.metadata.labels):
                    continue
                if fields is not None and not fields.matches(self.kind.fields(obj)):
                    continue
            append_item(items, kv.value, kv.mod_revision)
            added += 1
            if room and added == room:
                return added, index
        return added, None

    def watch(self, options: meta_pb2.ListOptions) -> AsyncIterator[bytes]:
        labels, fields = self._selectors(options)
        if options.resource_version < 0:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "resourceVersion: must not be negative")
        namespace = options.namespace if self.kind.namespaced else ""
        filter_ = WatchFilter(namespace=namespace, labels=labels, fields=fields)
        return self.cache.watch(filter_, options.resource_version, options.send_initial_events)

    # -- writes -----------------------------------------------------------

    def check(self, obj: ApiObject) -> None:
        """Raises INVALID_ARGUMENT with every problem the strategy finds."""
        self._raise_invalid(obj, self.strategy.validate(obj))

    def _raise_invalid(self, obj: ApiObject, errors: Sequence[FieldError]) -> None:
        if errors:
            raise invalid(self.kind.name, obj.metadata.name or obj.metadata.generate_name, [*errors])

    def admit(self, operation: str, obj: ApiObject, old: ApiObject | None = None, *, subresource: str = "") -> None:
        """Runs the admission plugins on a write the caller of this request asks for."""
        if self.admission.plugins:
            self.admission.admit(AdmissionRequest(current_user(), operation, self.kind, obj, old, subresource))

    def forbid_namespace(self, obj: ApiObject) -> None:
        """A cluster-scoped kind has no namespace: one in the request is refused (as
        Kubernetes does), never dropped, so the client learns it named the wrong thing."""
        if not self.kind.namespaced and obj.metadata.namespace:
            self._raise_invalid(obj, [forbidden("metadata.namespace", "not allowed on this type")])

    async def create(self, request: ApiObject) -> ApiObject:
        size = encoded_size(request)
        obj, generated = await off_loop(size, self._prepare_create, request)
        if self.strategy.has_side_keys:
            return await self._create_with_side_keys(obj, generated, size)
        meta = obj.metadata
        for _ in range(_CONFLICT_RETRIES if generated else 1):
            if generated:
                meta.name = _generate_name(meta.generate_name)
            value = await self._admitted(size, obj)
            if _DRY_RUN.get():
                return await self._dry_run_create(obj)
            revision = await self._store_create(self._key(meta.namespace, meta.name), value)
            if revision is not None:
                meta.resource_version = revision
                return obj
        raise already_exists(self.kind.plural, meta.namespace, meta.name)

    def _prepare_create(self, request: ApiObject) -> tuple[ApiObject, bool]:
        """What a create stores, but for a name still to generate (True then): a copy of the
        request with the server-owned metadata and the kind's defaults. CPU only (off_loop)."""
        obj = type(request)()
        obj.CopyFrom(request)
        meta = obj.metadata
        self.forbid_namespace(obj)
        meta.namespace = self.namespace_of(meta.namespace)
        if meta.resource_version:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "metadata.resourceVersion: must be empty on create")
        meta.uid = str(uuid.uuid4())
        meta.creation_timestamp.CopyFrom(now_timestamp())
        meta.ClearField("deletion_timestamp")
        meta.ClearField("deletion_grace_period_seconds")
        meta.generation = 1
        self._raise_invalid(obj, validate_finalizers(meta))
        self.strategy.prepare_for_create(obj)
        generated = not meta.name and bool(meta.generate_name)
        if generated:
            # Validated as sent (name empty), so a bad prefix is reported as
            # metadata.generateName with the user's value, not as a name with a
            # suffix the user never saw.
            self.check(obj)
        return obj, generated

    async def _admitted(self, size: int, obj: ApiObject) -> bytes:
        """A new object validated, admitted and encoded: validation and encoding off the
        loop when it is big, admission on it (its plugins read the watch caches)."""
        await off_loop(size, self.check, obj)
        self.admit(CREATE, obj)
        return await off_loop(size, self.encode, obj)

    async def _create_with_side_keys(self, obj: ApiObject, generated: bool, size: int) -> ApiObject:
        meta = obj.metadata
        name_taken = generated  # a generated name is picked on the first attempt
        for _ in range(_CONFLICT_RETRIES):
            if name_taken:
                meta.name = _generate_name(meta.generate_name)
            await off_loop(size, self.check, obj)
            self.admit(CREATE, obj)
            key = self._key(meta.namespace, meta.name)
            side = await self.strategy.side_keys(self, obj, None)
            if _DRY_RUN.get():
                shown = type(obj)()
                shown.CopyFrom(obj)  # with what it picked (a cluster IP), which done() clears and gives back
                side.done(None)
                return await self._dry_run_create(shown)
            value = await self._encode_claimed(size, obj, side)
            revision, object_changed = await self._write_with_side_keys(key, 0, put(key, value), side)
            if revision is not None:
                meta.resource_version = revision
                return obj
            name_taken = object_changed
            if name_taken and not generated:
                raise already_exists(self.kind.plural, meta.namespace, meta.name)
        raise ApiError(grpc.StatusCode.ABORTED, f'{self.kind.plural} "{meta.name}": too many concurrent writers')

    async def _dry_run_create(self, obj: ApiObject) -> ApiObject:
        """A dry-run create: refused as the real one would be when the name is taken."""
        meta = obj.metadata
        if await self.storage.get(self._key(meta.namespace, meta.name)) is not None:
            raise already_exists(self.kind.plural, meta.namespace, meta.name)
        return obj

    async def _encode_claimed(self, size: int, obj: ApiObject, side: SideKeys) -> bytes:
        """obj encoded once side_keys has filled it in: should the wait for the thread be
        cancelled, the claims are given back (side.done), as a write that did not commit."""
        try:
            return await off_loop(size, self.encode, obj)
        except BaseException:
            side.done(None)
            raise

    def _encode_compared(self, updated: ApiObject, current: ApiObject) -> tuple[bytes, bool]:
        """updated's stored form, and whether it is current's (a write that changes nothing)."""
        value = self.encode(updated)
        return value, value == self.encode(current)

    async def _write_with_side_keys(
        self, key: bytes, expected_revision: int, op: Op, side: SideKeys
    ) -> tuple[int | None, bool]:
        """op on the object (guarded by its mod_revision, 0: absent) with side's keys,
        in one transaction. Returns (revision, False) when it committed, (None, True)
        when the object was not as expected, (None, False) when only claims were
        taken and side.lost returned (try again with new side keys)."""
        revision: int | None = None
        try:
            result = await self.storage.transaction(
                [at_revision(key, expected_revision), *(absent(k) for k in side.claims)],
                [
                    op,
                    *(put(k, v) for k, v in side.claims.items()),
                    *(delete_if_value(k, v) for k, v in side.releases.items()),
                ],
            )
            if result.succeeded:
                revision = result.revision
                return revision, False
        finally:
            side.done(revision)
        now = result.current.get(key)
        if (now.mod_revision if now is not None else 0) != expected_revision:
            return None, True
        await side.lost({k: kv for k in side.claims if (kv := result.current.get(k)) is not None})
        return None, False

    async def guarded_write(
        self,
        namespace: str,
        name: str,
        expected_revision: int,
        mutate: Callable[[ApiObject], ApiObject | None],
        *,
        remove_if: Callable[[ApiObject, ApiObject], bool] | None = None,
        admit: Callable[[ApiObject, ApiObject], None] | None = None,
        size: int = 0,
    ) -> ApiObject:
        """Reads, applies mutate(current) -> new object (None: nothing to do),
        and writes if nobody wrote meanwhile; retries a lost race unless the
        caller named the revision it expects. remove_if(new, current): the write
        removes the object instead (the update that finalizes a deletion).

        With admit(new, current) (the admission of the write, run on the loop after
        mutate), mutate is CPU only, and runs in the big-object thread when the stored
        object or the request (size) is big; without, mutate runs on the loop."""
        for _ in range(_CONFLICT_RETRIES):
            current, stored_size = await self._read_sized(namespace, name)
            big = max(size, stored_size)
            if expected_revision and current.metadata.resource_version != expected_revision:
                raise conflict(self.kind.plural, name, expected_revision, current.metadata.resource_version)
            if admit is None:
                updated = mutate(current)
            else:
                updated = await off_loop(big, mutate, current)
                if updated is not None:
                    admit(updated, current)
            if updated is None:
                return current
            if _DRY_RUN.get():
                return updated  # validated and admitted; not written (resourceVersion as read)
            if remove_if is not None and remove_if(updated, current):
                revision = await self._remove(namespace, name, current)
                if revision is None:
                    if expected_revision:
                        latest = await self._read(namespace, name)
                        raise conflict(self.kind.plural, name, expected_revision, latest.metadata.resource_version)
                    continue
                updated.metadata.resource_version = revision
                return updated
            if self.strategy.has_side_keys:
                key, stored = self._key(namespace, name), current.metadata.resource_version
                side = await self.strategy.side_keys(self, updated, current)
                try:
                    value, unchanged = await off_loop(big, self._encode_compared, updated, current)
                except BaseException:
                    side.done(None)
                    raise
                if not side and unchanged:
                    side.done(None)
                    return current  # a no-op write keeps the resource_version
                revision, object_changed = await self._write_with_side_keys(key, stored, put(key, value), side)
                if revision is None and not object_changed:
                    continue  # a claim was lost: mutate and pick again
            else:
                value, unchanged = await off_loop(big, self._encode_compared, updated, current)
                if unchanged:
                    return current  # a no-op write keeps the resource_version
                revision = await self._store_update(
                    self._key(namespace, name), value, current.metadata.resource_version
                )
            if revision is not None:
                updated.metadata.resource_version = revision
                return updated
            if expected_revision:
                latest = await self._read(namespace, name)
                raise conflict(self.kind.plural, name, expected_revision, latest.metadata.resource_version)
        raise ApiError(grpc.StatusCode.ABORTED, f'{self.kind.plural} "{name}": too many concurrent writers')

    async def update(self, request: ApiObject) -> ApiObject:
        require_name(request.metadata.name)
        self.forbid_namespace(request)
        namespace = self.stored_namespace_of(request.metadata.namespace)

        def mutate(current: ApiObject) -> ApiObject:
            updated = type(request)()
            updated.CopyFrom(request)
            meta, old = updated.metadata, current.metadata
            meta.namespace = old.namespace
            if meta.uid and meta.uid != old.uid:
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"metadata.uid: {meta.uid} does not match the stored object's {old.uid} (it was replaced)",
                )
            meta.uid = old.uid
            meta.generate_name = old.generate_name
            meta.creation_timestamp.CopyFrom(old.creation_timestamp)
            # Server-owned: a client's update neither sets nor clears the deletion marks.
            if old.HasField("deletion_timestamp"):
                meta.deletion_timestamp.CopyFrom(old.deletion_timestamp)
            else:
                meta.ClearField("deletion_timestamp")
            if old.HasField("deletion_grace_period_seconds"):
                meta.deletion_grace_period_seconds = old.deletion_grace_period_seconds
            else:
                meta.ClearField("deletion_grace_period_seconds")
            meta.resource_version = old.resource_version
            meta.generation = old.generation
            self.strategy.prepare_for_update(updated, current)
            self._raise_invalid(
                updated, validate_finalizers(meta, old) + self.strategy.validate_update(updated, current)
            )
            return updated

        def admit(updated: ApiObject, current: ApiObject) -> None:
            self.admit(UPDATE, updated, current)

        return await self.guarded_write(
            namespace, request.metadata.name, request.metadata.resource_version, mutate,
            remove_if=removed_by_update, admit=admit, size=encoded_size(request),
        )

    async def _remove(self, namespace: str, name: str, current: ApiObject) -> int | None:
        """Removes the object if it is still at current's revision (with its side keys):
        the revision of the removal, or None when somebody wrote it meanwhile."""
        key, stored = self._key(namespace, name), current.metadata.resource_version
        if self.strategy.has_side_keys:
            side = await self.strategy.side_keys(self, None, current)
            revision, _ = await self._write_with_side_keys(key, stored, delete(key), side)
            return revision
        return await self.storage.delete(key, stored)

    async def _replace(
        self, namespace: str, name: str, current: ApiObject, updated: ApiObject, value: bytes
    ) -> int | None:
        """Writes updated (encoded: value) over current if it is still at current's revision:
        the new revision, or None when somebody wrote it meanwhile."""
        key, stored = self._key(namespace, name), current.metadata.resource_version
        if self.strategy.has_side_keys:
            side = await self.strategy.side_keys(self, updated, current)
            revision, _ = await self._write_with_side_keys(key, stored, put(key, value), side)
            return revision
        return await self.storage.update(key, value, stored)

    async def delete(self, request: meta_pb2.DeleteRequest) -> ApiObject:
        """Removes the object, or marks it for deletion and keeps it (see plan_deletion):
        the object as removed or as now stored."""
        require_name(request.name)
        if request.propagation_policy not in _PROPAGATION_POLICIES:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"propagationPolicy: {show_value(request.propagation_policy)} is not one of {BACKGROUND}, "
                f"{FOREGROUND}, {ORPHAN}",
            )
        namespace = self.namespace_of(request.namespace)
        policy = request.propagation_policy or BACKGROUND
        requested = request.grace_period_seconds if request.HasField("grace_period_seconds") else None
        for _ in range(_CONFLICT_RETRIES):
            current, size = await self._read_sized(namespace, request.name)
            stored = current.metadata.resource_version
            if request.resource_version and stored != request.resource_version:
                raise conflict(self.kind.plural, request.name, request.resource_version, stored)
            if request.preconditions_uid and request.preconditions_uid != current.metadata.uid:
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f'{self.kind.plural} "{request.name}": the uid in the precondition ({request.preconditions_uid}) '
                    f"does not match the stored object's ({current.metadata.uid}): it was deleted and made again",
                )
            self.admit(DELETE, current)
            await self.strategy.before_delete(self, current, policy)
            plan = await off_loop(size, self._plan_deletion, current, policy, requested, now_timestamp())
            if _DRY_RUN.get():
                return plan.marked if plan.marked is not None else current
            if plan.now:
                revision = await self._remove(namespace, request.name, current)
                if revision is not None:
                    current.metadata.resource_version = revision
                    return current
            elif plan.marked is None:
                return current  # a graceful deletion under way, not shortened: nothing to write
            else:
                value, unchanged = await off_loop(size, self._encode_compared, plan.marked, current)
                if unchanged:
                    return current
                revision = await self._replace(namespace, request.name, current, plan.marked, value)
                if revision is not None:
                    plan.marked.metadata.resource_version = revision
                    return plan.marked
        raise ApiError(grpc.StatusCode.ABORTED, f'{self.kind.plural} "{request.name}": too many concurrent writers')

    def _plan_deletion(self, current: ApiObject, policy: str, requested: int | None, now: Timestamp) -> Deletion:
        """plan_deletion for one Delete of current (copies it when it marks: CPU only, off_loop)."""
        candidate = current
        if policy == FOREGROUND and self.strategy.collects_dependents:
            candidate = with_finalizer(current, FOREGROUND_FINALIZER)
        return plan_deletion(candidate, requested, self.strategy.graceful_delete_period, now)


# Kubernetes' limits for a generated name: the prefix is cut so that prefix and
# suffix fit a DNS label (63 characters).
_NAME_SUFFIX_LENGTH = 5
_MAX_GENERATED_PREFIX = 63 - _NAME_SUFFIX_LENGTH


def _generate_name(prefix: str) -> str:
    suffix = "".join(secrets.choice(_NAME_SUFFIX_ALPHABET) for _ in range(_NAME_SUFFIX_LENGTH))
    return prefix[:_MAX_GENERATED_PREFIX] + suffix


def build_registries(
    strategies: Iterable[Strategy[Any]], storage: Storage, **cache_options: Any
) -> dict[str, Registry]:
    """One registry per strategy, by kind name, each able to reach the others (peer)."""
    registries: dict[str, Registry] = {}
    for strategy in strategies:
        registries[strategy.kind.name] = Registry(strategy, storage, peers=registries, **cache_options)
    return registries
