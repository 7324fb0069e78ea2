"""The generic registry: create, read, update, delete, list and watch any kind.

Writes are etcd transactions guarded by revision (optimistic concurrency);
List reads etcd at one revision (consistent, paginated); Watch is served from
the kind's watch cache. Stored values are the serialized message with
metadata.resource_version cleared: the revision lives in etcd's mod_revision.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.message import Message

from kybernetes.v1 import meta_pb2, pod_pb2
from services.common import defaults, validation
from services.common.resources import API_VERSION, DEFAULT_NAMESPACE, PODS, Kind
from services.common.selectors import FieldSelector, LabelSelector, SelectorError
from services.common.timestamps import now_timestamp

from .errors import ApiError, already_exists, conflict, invalid, not_found
from .storage import CompactedError, Storage, prefix_range_end
from .watchcache import WatchCache, WatchFilter

# Kubernetes' alphabet for generated name suffixes: no vowels, no look-alikes.
_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_PROPAGATION_POLICIES = ("", "Background", "Orphan")
_CONFLICT_RETRIES = 16
# Every kind's message has `metadata` as field 3, and ObjectMeta has
# resource_version as field 5: List splices the revision onto stored bytes.
_METADATA_FIELD = 3
_RESOURCE_VERSION_FIELD = 5
_LIST_ITEMS_FIELD = 4


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


def _resource_version_patch(revision: int) -> bytes:
    """Bytes that, appended to a serialized object, set its resource_version
    (protobuf merges a repeated sub-message field into the first)."""
    inner = bytes([_RESOURCE_VERSION_FIELD << 3]) + _varint(revision)
    return bytes([(_METADATA_FIELD << 3) | 2]) + _varint(len(inner)) + inner


def _length_delimited(field_number: int, data: bytes) -> bytes:
    return bytes([(field_number << 3) | 2]) + _varint(len(data)) + data


def _encode_continue(revision: int, next_key: bytes) -> str:
    raw = json.dumps({"rv": revision, "start": base64.b64encode(next_key).decode()}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_continue(token: str, prefix: bytes) -> tuple[int, bytes]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        revision, start = int(data["rv"]), base64.b64decode(data["start"])
    except Exception:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "continue: not a token from a previous List") from None
    if not start.startswith(prefix) or revision <= 0:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "continue: token belongs to a different list")
    return revision, start


class Registry:
    """Storage semantics of one kind."""

    def __init__(self, kind: Kind, storage: Storage, **cache_options: Any) -> None:
        self.kind = kind
        self.storage = storage
        self.cache = WatchCache(kind, storage, self.decode, **cache_options)
        # Kind-specific steps, set by the server: e.g. orphaning pods when an RC goes.
        self.before_delete: Callable[[Any, str], Awaitable[None]] | None = None

    # -- encoding ---------------------------------------------------------

    def decode(self, value: bytes, revision: int) -> Any:
        obj = self.kind.message.FromString(value)
        obj.metadata.resource_version = revision
        return obj

    @staticmethod
    def encode(obj: Message) -> bytes:
        revision = obj.metadata.resource_version
        obj.metadata.resource_version = 0
        try:
            return obj.SerializeToString(deterministic=True)
        finally:
            obj.metadata.resource_version = revision

    def _namespace(self, namespace: str) -> str:
        if not self.kind.namespaced:
            return ""
        return namespace or DEFAULT_NAMESPACE

    def _key(self, namespace: str, name: str) -> bytes:
        return self.kind.key(namespace, name).encode()

    def _require_name(self, name: str) -> None:
        if not name:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "name: required")

    # -- reads ------------------------------------------------------------

    async def _read(self, namespace: str, name: str) -> Any:
        kv = await self.storage.get(self._key(namespace, name))
        if kv is None:
            raise not_found(self.kind.plural, namespace, name)
        return self.decode(kv.value, kv.mod_revision)

    async def get(self, request: meta_pb2.GetRequest) -> Any:
        self._require_name(request.name)
        return await self._read(self._namespace(request.namespace), request.name)

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
        items: list[bytes] = []
        next_token = ""
        while True:
            fetch = (limit - len(items)) if limit and not filtering else limit
            try:
                result = await self.storage.range(start, end, limit=fetch, revision=revision)
            except CompactedError:
                raise ApiError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    "continue: the list's revision was compacted; start the list again without a token",
                ) from None
            revision = revision or result.revision
            kvs = result.kvs
            for index, kv in enumerate(kvs):
                if filtering:
                    obj = self.kind.message.FromString(kv.value)
                    if labels is not None and not labels.matches(obj.metadata.labels):
                        continue
                    if fields is not None and not fields.matches(self.kind.fields(obj)):
                        continue
                items.append(kv.value + _resource_version_patch(kv.mod_revision))
                if limit and len(items) == limit:
                    if index + 1 < len(kvs) or result.more:
                        next_token = _encode_continue(revision, kv.key + b"\0")
                    break
            if next_token or not result.more or not kvs or (limit and len(items) == limit):
                break
            start = kvs[-1].key + b"\0"
        header = self.kind.list_message(
            api_version=API_VERSION,
            kind=f"{self.kind.name}List",
            metadata=meta_pb2.ListMeta(resource_version=revision, continue_token=next_token),
        ).SerializeToString()
        return header + b"".join(_length_delimited(_LIST_ITEMS_FIELD, item) for item in items)

    def watch(self, options: meta_pb2.ListOptions) -> AsyncIterator[bytes]:
        labels, fields = self._selectors(options)
        if options.resource_version < 0:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "resourceVersion: must not be negative")
        namespace = options.namespace if self.kind.namespaced else ""
        filter_ = WatchFilter(namespace=namespace, labels=labels, fields=fields)
        return self.cache.watch(filter_, options.resource_version, options.send_initial_events)

    # -- writes -----------------------------------------------------------

    def _check(self, obj: Any) -> None:
        errors = validation.validate(obj)
        if errors:
            raise invalid(self.kind.name, obj.metadata.name or obj.metadata.generate_name, errors)

    async def create(self, request: Any) -> Any:
        obj = type(request)()
        obj.CopyFrom(request)
        meta = obj.metadata
        if self.kind.namespaced:
            meta.namespace = meta.namespace or DEFAULT_NAMESPACE
        else:
            meta.namespace = ""
        if meta.resource_version:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "metadata.resourceVersion: must be empty on create")
        defaults.apply_defaults(obj)
        meta.uid = str(uuid.uuid4())
        meta.creation_timestamp.CopyFrom(now_timestamp())
        meta.ClearField("deletion_timestamp")
        meta.generation = 1
        if self.kind is PODS:
            obj.status.Clear()
            obj.status.phase = "Pending"
        elif self.kind.has_status and self.kind.name == "ReplicationController":
            obj.status.Clear()
        generated = not meta.name and bool(meta.generate_name)
        for _ in range(_CONFLICT_RETRIES if generated else 1):
            if generated:
                meta.name = meta.generate_name + "".join(secrets.choice(_NAME_SUFFIX_ALPHABET) for _ in range(5))
            self._check(obj)
            revision = await self.storage.create(self._key(meta.namespace, meta.name), self.encode(obj))
            if revision is not None:
                meta.resource_version = revision
                return obj
        raise already_exists(self.kind.plural, meta.namespace, meta.name)

    async def guarded_write(
        self,
        namespace: str,
        name: str,
        expected_revision: int,
        mutate: Callable[[Any], Any | None],
    ) -> Any:
        """Reads, applies mutate(current) -> new object (None: nothing to do),
        and writes if nobody wrote meanwhile; retries a lost race unless the
        caller named the revision it expects."""
        for _ in range(_CONFLICT_RETRIES):
            current = await self._read(namespace, name)
            if expected_revision and current.metadata.resource_version != expected_revision:
                raise conflict(self.kind.plural, name, expected_revision, current.metadata.resource_version)
            updated = mutate(current)
            if updated is None:
                return current
            value = self.encode(updated)
            if value == self.encode(current):
                return current  # a no-op write keeps the resource_version
            revision = await self.storage.update(
                self._key(namespace, name), value, current.metadata.resource_version
            )
            if revision is not None:
                updated.metadata.resource_version = revision
                return updated
            if expected_revision:
                latest = await self._read(namespace, name)
                raise conflict(self.kind.plural, name, expected_revision, latest.metadata.resource_version)
        raise ApiError(grpc.StatusCode.ABORTED, f'{self.kind.plural} "{name}": too many concurrent writers')

    async def update(self, request: Any) -> Any:
        self._require_name(request.metadata.name)
        namespace = self._namespace(request.metadata.namespace)

        def mutate(current: Any) -> Any:
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
            if old.HasField("deletion_timestamp"):
                meta.deletion_timestamp.CopyFrom(old.deletion_timestamp)
            else:
                meta.ClearField("deletion_timestamp")
            meta.resource_version = old.resource_version
            if self.kind.has_status:
                updated.status.CopyFrom(current.status)
            defaults.apply_defaults(updated)
            if self.kind is PODS and current.spec.node_name and updated.spec.node_name != current.spec.node_name:
                raise ApiError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f'Pod "{meta.name}" is invalid: spec.nodeName: field is immutable once bound '
                    f"(bound to {current.spec.node_name})",
                )
            spec_changed = updated.spec.SerializeToString(deterministic=True) != current.spec.SerializeToString(
                deterministic=True
            ) if hasattr(updated, "spec") else False
            meta.generation = old.generation + 1 if spec_changed else old.generation
            self._check(updated)
            return updated

        return await self.guarded_write(namespace, request.metadata.name, request.metadata.resource_version, mutate)

    async def update_status(self, request: Any) -> Any:
        self._require_name(request.metadata.name)
        namespace = self._namespace(request.metadata.namespace)

        def mutate(current: Any) -> Any:
            updated = type(current)()
            updated.CopyFrom(current)
            updated.status.CopyFrom(request.status)
            self._check(updated)
            return updated

        return await self.guarded_write(namespace, request.metadata.name, request.metadata.resource_version, mutate)

    async def bind(self, binding: pod_pb2.Binding) -> Any:
        name = binding.metadata.name
        self._require_name(name)
        namespace = self._namespace(binding.metadata.namespace)
        node = binding.target.name
        if not node:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "target.name: required (the node to bind to)")
        if binding.target.kind not in ("", "Node"):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f'target.kind: must be "Node", not "{binding.target.kind}"')

        def mutate(pod: Any) -> Any:
            if pod.spec.node_name:
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f'pod "{name}" in namespace {namespace} is already bound to node "{pod.spec.node_name}"',
                )
            if binding.metadata.uid and binding.metadata.uid != pod.metadata.uid:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f'pod "{name}" was replaced (uid differs)')
            updated = type(pod)()
            updated.CopyFrom(pod)
            updated.spec.node_name = node
            _set_pod_condition(updated, "PodScheduled", "True", "", "")
            return updated

        return await self.guarded_write(namespace, name, binding.metadata.resource_version, mutate)

    async def delete(self, request: meta_pb2.DeleteRequest) -> Any:
        self._require_name(request.name)
        if request.propagation_policy not in _PROPAGATION_POLICIES:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'propagationPolicy: "{request.propagation_policy}" is not one of Background, Orphan',
            )
        namespace = self._namespace(request.namespace)
        for _ in range(_CONFLICT_RETRIES):
            current = await self._read(namespace, request.name)
            stored = current.metadata.resource_version
            if request.resource_version and stored != request.resource_version:
                raise conflict(self.kind.plural, request.name, request.resource_version, stored)
            if self.before_delete is not None:
                await self.before_delete(current, request.propagation_policy or "Background")
            revision = await self.storage.delete(self._key(namespace, request.name), stored)
            if revision is not None:
                current.metadata.resource_version = revision
                return current
        raise ApiError(grpc.StatusCode.ABORTED, f'{self.kind.plural} "{request.name}": too many concurrent writers')


def _set_pod_condition(pod: pod_pb2.Pod, type_: str, status: str, reason: str, message: str) -> None:
    for condition in pod.status.conditions:
        if condition.type == type_:
            if condition.status != status:
                condition.last_transition_time.CopyFrom(now_timestamp())
            condition.status, condition.reason, condition.message = status, reason, message
            return
    pod.status.conditions.add(
        type=type_, status=status, reason=reason, message=message, last_transition_time=now_timestamp()
    )
