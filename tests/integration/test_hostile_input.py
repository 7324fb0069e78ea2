"""Hostile input, generated: more than a thousand bad requests against a real API server and etcd.

A property-based generator (Hypothesis) draws, for every kind and every RPC of its service
(Create, Get, List, Update, Delete, Watch, and UpdateStatus and Bind where the kind has them),
a request built to hurt: bad names and namespaces, huge and repeated values (within gRPC's
4 MiB receive limit, and beyond the API's 1.5 MiB object limit), strings that are not UTF-8,
raw garbage, truncated and bit-flipped messages, groups nested past any parser's limit,
fields the API does not have, over-long varints, bad label and field selectors, forged
continue tokens, bad and future resourceVersions, out-of-range integers, and valid objects
(the builders of apihelpers.py) with one field, anywhere in the message, made hostile.
Every request is sent as raw bytes, as a broken or malicious client would send it.

For every request:
- the status is never UNKNOWN, INTERNAL, UNAVAILABLE (etcd is up) nor DEADLINE_EXCEEDED (a hang);
- an error's message fits a gRPC trailer, and an error about the input names the field
  (`spec.containers[0].image: ...`, `labelSelector: ...`) or says `request:`;
- etcd (read directly, every key and its revision) is unchanged unless the request was an
  accepted write: no rejected write, and no read, ever stores anything.

Over the whole run: the API server's RSS stays bounded, its log lines stay short, and a
concurrent well-behaved client (another process: Create, Get, List and Delete of small pods
in its own namespace) keeps its latency; its p99 is printed, and asserted under the issue's
50 ms (see WELL_BEHAVED_P99 for when).

Reproducible: derandomized (one seed per kind and RPC), no example database. The whole file
takes about 15 s: the hostile requests themselves about 9 s.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest
from aetcd import rpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from kybernetes.v1 import coordination_pb2, endpoints_pb2, event_pb2, meta_pb2, namespace_pb2, pod_pb2, rbac_pb2
from services.common.resources import (
    ALL_KINDS,
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    ENDPOINTS,
    EVENTS,
    LEASES,
    NAMESPACES,
    NODES,
    PODS,
    REPLICATION_CONTROLLERS,
    ROLE_BINDINGS,
    ROLES,
    SERVICES,
    Kind,
)
from services.common.transport import blocking_channel
from tools.processes import REPO, ApiServerProcess, EtcdProcess, dev_pki

from .apihelpers import make_node, make_pod, make_rc, make_service
from .test_apiserver_bad_input import _field, _varint, fits, rss_bytes, token

# -- the run's size and bounds ------------------------------------------------------------

EXAMPLES_PER_RPC = 24  # drawn for each (kind, RPC) pair; a draw that repeats a request is not sent again
MIN_REQUESTS = 1000  # distinct hostile requests, over all pairs
MIN_PER_RPC = 10  # distinct requests for each pair

# What the server takes: Kubernetes' 1.5 MiB object limit, and gRPC's 4 MiB receive limit
# (services/apiserver/server.py). Payloads stay under the second so that every answer comes
# from the API server's own code, not from gRPC's framing.
OBJECT_LIMIT = 3 * 2**19
RECEIVE_LIMIT = 4 * 2**20
MAX_PAYLOAD = RECEIVE_LIMIT - 64 * 1024

# RSS: a request is at most 4 MiB and this client sends one at a time (plus the watches it
# keeps open and the small pods of the well-behaved client), and every object it gets stored
# is removed again. What may stay is the watch cache's history of the accepted writes (some
# are 1.4 MiB objects) and allocator slack: the peak grew by 57-83 MiB over this run, of
# which 17-32 MiB in its second half. 160 MiB is twice the peak; a server that keeps rejected
# requests is beyond it (the aborted calls' cycles held every one: +258 MiB over this run,
# 600 MB after 150 requests of 4 MB). The second-half bound catches growth that keeps going.
RSS_GROWTH_LIMIT = 160 * 2**20
RSS_SECOND_HALF_LIMIT = 64 * 2**20
# A log line quotes values cut short (show_value): a line of 16 KiB means a value was logged whole.
MAX_LOG_LINE = 16 * 1024

# The issue asks that a concurrent well-behaved client's p99 stay under 50 ms while the hostile
# one runs. Measured on the shared 2-core machine (etcd, the API server, this generator and that
# client at once): 13-40 ms, max 20-120 ms. Big objects are no longer validated on the event loop
# (D10: a 1.4 MiB object of 50,000 labels held it 120-150 ms; bench/bigobjects.py measures that
# load on its own); what is left is etcd's and this machine's. Not far enough below 50 ms to fail
# a run on, so the bound is asserted only with KYB_ASSERT_P99=1 (a quiet machine); the figure is
# always printed.
WELL_BEHAVED_P99 = 0.050
ASSERT_P99 = os.environ.get("KYB_ASSERT_P99") == "1"

HOSTILE_NS = "hostile"
GOOD_NS = "well-behaved"
TARGET = "target"  # the name of one stored object per kind, which Update, UpdateStatus and Bind aim at
NODE_NAME = "hostile-node"

CALL_TIMEOUT = 15.0
# A watch that is accepted streams (or idles): read its first message or wait this long.
WATCH_IDLE = 0.5
# A Watch from a future revision is refused after the server waits 2 s for it to appear.
WATCH_FUTURE = 5.0

# Never a client's fault, never a right answer to one: the invariant of this file.
FORBIDDEN_CODES = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.CANCELLED,
}
# Codes about the request's content: their message must name the field, or say "request:".
INPUT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED}
WRITE_METHODS = {"Create", "Update", "UpdateStatus", "Delete", "Bind"}
# Methods whose request is an object to store: one with fields the API does not have is refused.
STRICT_METHODS = {"Create", "Update", "UpdateStatus", "Bind"}

# -- what an answer must say ------------------------------------------------------------------

_PATH = r"[a-zA-Z][A-Za-z0-9]*(?:\.[A-Za-z0-9#]+|\[[^\]]*\]|\.#[0-9]+)*"
_FIELD_FIRST = re.compile(rf"^(?:request|{_PATH}): ")
_OBJECT_FIELD = re.compile(rf" is (?:invalid|forbidden): (?:{_PATH}: |violates )")


# The bytes gRPC sends unescaped in a grpc-message trailer; every other byte takes three.
_PLAIN = bytes(b for b in range(0x20, 0x7F) if b != 0x25)
# A client refuses trailers over 8 KiB at random (its soft limit), and always over 16 KiB.
TRAILER_BUDGET = 6 * 1024


def trailer_size(message: str) -> int:
    data = message.encode()
    return len(data) + 2 * len(data.translate(None, _PLAIN))


def names_a_field(message: str) -> bool:
    """`spec.containers[0].name: Invalid value...`, `Pod "x" is invalid: metadata.name: ...`,
    `request: not a valid kybernetes.v1.Pod message`, `labelSelector: ...`."""
    return bool(_FIELD_FIRST.match(message) or _OBJECT_FIELD.search(message))


# -- valid objects, one per kind ------------------------------------------------------------------


def valid_object(kind: Kind, name: str, namespace: str = HOSTILE_NS) -> Message:
    """An object of `kind` that the API stores as it is (apihelpers' builders where there are)."""
    meta = meta_pb2.ObjectMeta(name=name, namespace=namespace if kind.namespaced else "")
    if kind is PODS:
        return make_pod(name, namespace, labels={"app": "web"})
    if kind is SERVICES:
        return make_service(name, namespace, {"app": "web"})
    if kind is REPLICATION_CONTROLLERS:
        return make_rc(name, namespace, {"app": "web"})
    if kind is NODES:
        return make_node(name, {"zone": "a"})
    if kind is ENDPOINTS:
        return endpoints_pb2.Endpoints(
            metadata=meta,
            subsets=[
                endpoints_pb2.EndpointSubset(
                    addresses=[endpoints_pb2.EndpointAddress(ip="192.0.2.10")],
                    ports=[endpoints_pb2.EndpointPort(name="http", port=80, protocol="TCP")],
                )
            ],
        )
    if kind is NAMESPACES:
        return namespace_pb2.Namespace(metadata=meta)
    rule = rbac_pb2.PolicyRule(verbs=["get", "list"], api_groups=[""], resources=["pods"])
    subject = rbac_pb2.Subject(kind="User", name="alice", api_group="rbac.authorization.k8s.io")
    if kind is ROLES:
        return rbac_pb2.Role(metadata=meta, rules=[rule])
    if kind is CLUSTER_ROLES:
        return rbac_pb2.ClusterRole(metadata=meta, rules=[rule])
    if kind is ROLE_BINDINGS:
        ref = rbac_pb2.RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=TARGET)
        return rbac_pb2.RoleBinding(metadata=meta, subjects=[subject], role_ref=ref)
    if kind is CLUSTER_ROLE_BINDINGS:
        ref = rbac_pb2.RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=TARGET)
        return rbac_pb2.ClusterRoleBinding(metadata=meta, subjects=[subject], role_ref=ref)
    if kind is LEASES:
        spec = coordination_pb2.LeaseSpec(holder_identity="host_1_abcd", lease_duration_seconds=15)
        return coordination_pb2.Lease(metadata=meta, spec=spec)
    if kind is EVENTS:
        ref = pod_pb2.ObjectReference(kind="Pod", name="web", namespace=namespace)
        return event_pb2.Event(metadata=meta, involved_object=ref, reason="Tested", type="Normal", count=1)
    # A kind added since (its builder belongs here): its metadata alone, which may not be valid.
    return kind.message(metadata=meta)


BUILT_KINDS = {
    PODS.name, SERVICES.name, REPLICATION_CONTROLLERS.name, NODES.name, ENDPOINTS.name, NAMESPACES.name,
    ROLES.name, CLUSTER_ROLES.name, ROLE_BINDINGS.name, CLUSTER_ROLE_BINDINGS.name, LEASES.name, EVENTS.name,
}


def _method_input(kind: Kind, method: str) -> type[Message]:
    service = descriptor_pool.Default().FindServiceByName(kind.service_name)
    return message_factory.GetMessageClass(service.methods_by_name[method].input_type)


METHODS: dict[str, tuple[str, ...]] = {
    kind.name: tuple(m.name for m in descriptor_pool.Default().FindServiceByName(kind.service_name).methods)
    for kind in ALL_KINDS
}
KIND_BY_NAME = {kind.name: kind for kind in ALL_KINDS}

# -- hostile values -------------------------------------------------------------------------------------

NASTY_STRINGS = [
    "", " ", "UPPER", "../../etc", "$(id)", "`id`", "a/b", "/", "%2e%2e", ".", "..", "-a", "a-", "a..b", "a_b",
    "a b", "\x00", "a\x00b", "\n", "\r\n", "\t", "\x7f", "\x1b[31m", "日本語", "☃", "e\u0301", "\u202eevil",
    "\ufeff", "\U0001f600", "a" * 63, "a" * 64, "a" * 253, "a" * 254, "x" * 1000, "0", "-1", "9" * 30, "null",
    "None", "true", "{}", "[]", "'", '"', "\\", "*", "?", "a=b", "a,b", "!", "a:b", "system:masters",
    "kube-system", "default", "1.2.3.4", "::1", "0.0.0.0/0", "http://x", "a.b.c", "-", "A-", "%s%n",
]
WEIRD_CHARS = "aZ9-._/:é☃\x00\U0001f600"


def huge_text(draw: Callable[..., Any]) -> str:
    """A string of 4 KiB to 3.8 MiB (bytes as UTF-8): over a trailer, over the object limit."""
    size = draw(st.sampled_from([4096, 16_384, 100_000, 1_000_000, 1_500_000, 1_700_000, 3_000_000, 3_900_000]))
    char = draw(st.sampled_from(WEIRD_CHARS))
    return char * max(1, min(size, MAX_PAYLOAD - 32_768) // len(char.encode()))


def hostile_text(draw: Callable[..., Any]) -> str:
    choice = draw(st.integers(0, 9))
    if choice <= 4:
        return draw(st.sampled_from(NASTY_STRINGS))
    if choice <= 7:
        return draw(st.text(max_size=40))
    if choice == 8:
        return draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=300))
    return huge_text(draw)


INT32_EDGES = [0, 1, -1, 2**31 - 1, -(2**31), 65535, 65536, 2**20, 100_000]
INT64_EDGES = INT32_EDGES + [2**63 - 1, -(2**63), 2**53, 2**32, 10**15]


def hostile_int(draw: Callable[..., Any], bits: int, signed: bool = True) -> int:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = [v for v in (INT64_EDGES if bits == 64 else INT32_EDGES) if low <= v <= high]
    if draw(st.booleans()):
        return draw(st.sampled_from(edges))
    return draw(st.integers(low, high))


# -- one field, anywhere in a valid object, made hostile -------------------------------------------------


def _scalar(draw: Callable[..., Any], field: Any) -> Any:
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return draw(st.binary(max_size=64))
        return hostile_text(draw)
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return draw(st.booleans())
    if cpp == FieldDescriptor.CPPTYPE_INT32:
        return hostile_int(draw, 32)
    if cpp == FieldDescriptor.CPPTYPE_INT64:
        return hostile_int(draw, 64)
    if cpp == FieldDescriptor.CPPTYPE_UINT32:
        return hostile_int(draw, 32, signed=False)
    if cpp == FieldDescriptor.CPPTYPE_UINT64:
        return hostile_int(draw, 64, signed=False)
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return draw(st.sampled_from([0.0, -1.0, float("inf"), float("nan"), 1e308]))
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        return draw(st.sampled_from([v.number for v in field.enum_type.values]))
    raise AssertionError(f"no hostile value for {field.full_name}")


def _is_map(field: Any) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _repeat_count(draw: Callable[..., Any], element_size: int) -> int:
    """How many copies to add: a few, or as many as fit the request (the 200k containers of D4)."""
    count = draw(st.sampled_from([2, 100, 10_000, 50_000, 200_000]))
    return max(1, min(count, (MAX_PAYLOAD - 32_768) // (element_size + 4)))


def mutate(draw: Callable[..., Any], message: Message, path: str = "", depth: int = 0) -> str:
    """Makes one field of message (at any depth) hostile; returns its path."""
    fields: list[Any] = list(message.DESCRIPTOR.fields)
    if not fields:  # ServiceStatus {}: set, and empty
        message.SetInParent()
        return f"{path}(empty)"
    if depth == 0 and draw(st.integers(0, 7)):  # mostly past apiVersion and kind, into the object
        fields = [f for f in fields if f.message_type is not None] or fields
    field = draw(st.sampled_from(fields))
    here = f"{path}{field.json_name}"
    value = getattr(message, field.name)
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        how = draw(st.sampled_from(["entry", "many"]))
        if value_field.message_type is not None:
            return mutate(draw, value[hostile_text(draw)], f"{here}[].", depth + 1)
        if how == "many":
            count = _repeat_count(draw, 24)
            value.update({f"k{i}.example.com/key": "v" for i in range(count)})
            return f"{here}: {count} entries"
        value[hostile_text(draw)] = _scalar(draw, value_field)
        return f"{here}[key]"
    if field.message_type is not None:
        if field.is_repeated:
            how = draw(st.sampled_from(["into", "append", "many"] if depth < 6 else ["append", "many"]))
            if how == "many" and len(value):
                element = value[0]
                count = _repeat_count(draw, element.ByteSize())
                value.extend([element] * count)
                return f"{here}: {count} copies"
            item = value[draw(st.integers(0, len(value) - 1))] if how == "into" and len(value) else value.add()
            if depth >= 6:
                return f"{here}[new]"
            return mutate(draw, item, f"{here}[].", depth + 1)
        if depth >= 6 or draw(st.integers(0, 5)) == 0:
            message.ClearField(field.name)
            return f"{here} cleared"
        return mutate(draw, value, f"{here}.", depth + 1)
    if field.is_repeated:
        how = draw(st.sampled_from(["append", "many"]))
        element = _scalar(draw, field)
        if how == "many":
            size = len(element.encode()) if isinstance(element, str) else 8
            count = _repeat_count(draw, size)
            value.extend([element] * count)
            return f"{here}: {count} values"
        value.append(element)
        return f"{here}[+]"
    setattr(message, field.name, _scalar(draw, field))
    return here


# -- the wire: bytes no generated client would send -----------------------------------------------------


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _nest(numbers: list[int], leaf: bytes) -> bytes:
    """leaf (one encoded field) inside the length-delimited fields `numbers`, outermost first."""
    for number in reversed(numbers):
        leaf = _field(number, leaf)
    return leaf


def _paths(descriptor: Any, want: Callable[[Any], bool], depth: int = 0) -> list[list[int]]:
    """Field-number paths from descriptor to every field `want` accepts (map entries included)."""
    found: list[list[int]] = []
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.full_name != "google.protobuf.Timestamp":
            if depth < 6:
                found += [[field.number, *rest] for rest in _paths(field.message_type, want, depth + 1)]
        elif want(field):
            found.append([field.number])
    return found


def _message_paths(descriptor: Any, depth: int = 0) -> list[list[int]]:
    found: list[list[int]] = [[]]
    for field in descriptor.fields:
        if field.message_type is not None and depth < 5:
            found += [[field.number, *rest] for rest in _message_paths(field.message_type, depth + 1)]
    return found


def _is_string(field: Any) -> bool:
    return field.type == FieldDescriptor.TYPE_STRING


def _is_varint(field: Any) -> bool:
    return field.type in (
        FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_ENUM,
    )


DELIMITED_TYPES = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE)
NOT_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"a\x80b", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"]


def raw_variant(draw: Callable[..., Any], valid: bytes, request_class: type[Message]) -> tuple[bytes, str, str]:
    """A request made at the byte level from a valid one: (payload, what, expected outcome)."""
    descriptor = request_class.DESCRIPTOR
    how = draw(st.sampled_from(
        ["garbage", "truncated", "bitflip", "not-utf8", "unknown", "deep-groups", "deep-bytes", "overlong-varint",
         "big-varint", "wrong-wire-type", "oversize"]
    ))
    if how == "garbage":
        return draw(st.binary(min_size=1, max_size=256)), "garbage", ""
    if how == "truncated" and len(valid) > 1:
        cut = draw(st.integers(1, len(valid) - 1))
        return valid[:cut], f"truncated at {cut}/{len(valid)}", ""
    if how == "bitflip" and valid:
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(data), "bit flips", ""
    if how == "not-utf8":
        paths = _paths(descriptor, _is_string)
        path = draw(st.sampled_from(paths))
        bad = draw(st.sampled_from(NOT_UTF8))
        leaf = _field(path[-1], bad)
        return valid + _nest(path[:-1], leaf), f"not UTF-8 at {path}", "undecodable"
    if how == "unknown":
        path = draw(st.sampled_from(_message_paths(descriptor)))
        number = draw(st.sampled_from([99, 1000, 18_999, 100_000, 2**29 - 1]))
        wire = draw(st.sampled_from([0, 1, 2, 5]))
        body = {0: _varint(7), 1: b"\0" * 8, 2: _varint(3) + b"abc", 5: b"\0" * 4}[wire]
        return valid + _nest(path, _tag(number, wire) + body), f"unknown field #{number} at {path}", "unknown"
    if how == "deep-groups":
        depth = draw(st.sampled_from([2, 50, 99, 100, 101, 1000, 100_000, 1_000_000]))
        groups = _tag(99, 3) * depth + _tag(99, 4) * depth
        expect = "undecodable" if depth > 100 else "unknown"  # protobuf's parsers stop at 100 levels
        if len(groups) + len(valid) > OBJECT_LIMIT:
            expect = "too-large"
        if len(groups) + len(valid) > MAX_PAYLOAD:
            depth = 10_000
            groups = _tag(99, 3) * depth + _tag(99, 4) * depth
            expect = "undecodable"
        return valid + groups, f"unknown groups {depth} deep", expect
    if how == "deep-bytes":
        depth = draw(st.sampled_from([10, 100, 1000, 5000]))
        inner = b""
        for _ in range(depth):
            inner = _field(99, inner)
        return valid + inner, f"unknown bytes fields {depth} deep", "unknown"
    if how in ("overlong-varint", "big-varint"):
        paths = _paths(descriptor, _is_varint)
        if not paths:
            return valid + b"\x08" + b"\xff" * 11, "overlong varint", ""
        path = draw(st.sampled_from(paths))
        if how == "overlong-varint":
            number = b"\xff" * 10 + b"\x01"  # 11 bytes: no valid varint is that long
            expect = "undecodable"
        else:
            number = _varint(draw(st.sampled_from([2**32, 2**40 + 5, 2**63, 2**64 - 1])))
            expect = ""
        return valid + _nest(path[:-1], _tag(path[-1], 0) + number), f"varint {number!r} at {path}", expect
    if how == "wrong-wire-type":
        field = draw(st.sampled_from(list(descriptor.fields)))
        wire = draw(st.sampled_from([0, 1, 5]))
        body = {0: _varint(1), 1: b"\0" * 8, 5: b"\0" * 4}[wire]
        # A length-delimited field sent as a number is kept as an unknown field.
        expect = "unknown" if field.type in DELIMITED_TYPES else ""
        return valid + _tag(field.number, wire) + body, f"wire type {wire} for {field.name}", expect
    size = draw(st.sampled_from([OBJECT_LIMIT + 1, 2 * 2**20, MAX_PAYLOAD]))
    padding = _field(99, b"p" * (size - len(valid)))
    return valid + padding, f"{len(valid) + len(padding)} bytes", "too-large"


# -- the requests --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Hostile:
    kind: str
    method: str
    payload: bytes
    what: str
    expect: str = ""  # "", "undecodable", "unknown", "too-large"
    watch_wait: float = WATCH_IDLE

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        head = self.payload[:120]
        return f"Hostile({self.kind}.{self.method}: {self.what}; {len(self.payload)} bytes {head!r}...)"


def hostile_name(draw: Callable[..., Any]) -> str:
    choice = draw(st.integers(0, 5))
    return TARGET if choice == 0 else "nope" if choice == 1 else hostile_text(draw)


def hostile_namespace(draw: Callable[..., Any]) -> str:
    choice = draw(st.integers(0, 3))
    return HOSTILE_NS if choice == 0 else "" if choice == 1 else hostile_text(draw)


def forged_token(draw: Callable[..., Any], kind: Kind) -> str:
    prefix = f"/registry/{kind.plural}/".encode()
    how = draw(st.integers(0, 7))
    if how == 0:
        return token(draw(st.sampled_from([2**63, 2**64, 10**40, -1, 0, 1, 10**12])), prefix)
    if how == 1:
        return token(draw(st.sampled_from(["12", None, 1.5, [], {}, True])), prefix)
    if how == 2:
        return token(5, draw(st.sampled_from([b"/registry/other/", b"", b"\xff" * 10, prefix + b"\0" * 3])))
    if how == 3:
        return base64.urlsafe_b64encode(draw(st.binary(max_size=64))).decode()
    if how == 4:
        body = json.dumps({"rv": 1, "start": draw(st.text(max_size=20))}).encode()
        return base64.urlsafe_b64encode(body).decode()
    if how == 5:
        return base64.urlsafe_b64encode(json.dumps(draw(st.sampled_from([[], 1, "x", {"rv": 1}]))).encode()).decode()
    return hostile_text(draw)


LABEL_FRAGMENTS = [
    "a=b", "a==b", "a!=b", "a in (x,y)", "a notin (x)", "a", "!a", "a>1", "a<1", "", "=", "==", "!=", ",", ",,",
    "a in (", "a in ()", "a notin", "in (x)", "(", ")", "a=b=c", "a b", "x/y=z", "a.b/c=d", "A=B", "a=" + "v" * 64,
    "k" * 64 + "=v", "a in (" + ",".join(["x"] * 1000) + ")", "a>b", "a<-1", "a>99999999999999999999", "!!a",
    "a=\x00", "☃=☃", "-a=b", "a=-b", "a/b/c=d", "/a=b", "a/=b",
]
FIELD_FRAGMENTS = [
    "metadata.name=x", "metadata.name!=x", "metadata.name==x", "metadata.namespace=hostile", "spec.nodeName=n",
    "status.phase=Running", "spec.unschedulable=true", "bogus=1", "metadata.name", "=", "metadata.name=",
    "=x", "metadata.name=a,b", "metadata.name=a\\,b", "metadata.name=\\", "metadata.labels=x", "spec=x",
    "metadata.name in (x)", "metadata.name>1", "metadata.name=☃", ",", "metadata.name=" + "x" * 300,
]


def selector(draw: Callable[..., Any], fragments: list[str]) -> str:
    if draw(st.integers(0, 9)) == 0:
        return hostile_text(draw)
    parts = draw(st.lists(st.sampled_from(fragments), min_size=1, max_size=4))
    return draw(st.sampled_from([",", ", ", ";", " "])).join(parts)


def list_options(draw: Callable[..., Any], kind: Kind, watch: bool) -> tuple[meta_pb2.ListOptions, str, float]:
    options = meta_pb2.ListOptions()
    problems: list[str] = []
    wait = WATCH_IDLE
    for field in draw(st.lists(st.sampled_from(
        ["namespace", "label", "field", "limit", "continue", "rv", "initial"]), min_size=1, max_size=3, unique=True
    )):
        problems.append(field)
        if field == "namespace":
            options.namespace = hostile_namespace(draw)
        elif field == "label":
            options.label_selector = selector(draw, LABEL_FRAGMENTS)
        elif field == "field":
            options.field_selector = selector(draw, FIELD_FRAGMENTS)
        elif field == "limit":
            options.limit = hostile_int(draw, 64)
        elif field == "continue":
            options.continue_token = forged_token(draw, kind)
        elif field == "rv":
            how = draw(st.sampled_from(["edge", "future", "small"]))
            if how == "future":
                options.resource_version = draw(st.sampled_from([10**9, 2**62, 2**63 - 1]))
                wait = WATCH_FUTURE
            elif how == "small":
                options.resource_version = draw(st.integers(-5, 5))
            else:
                options.resource_version = hostile_int(draw, 64)
                wait = WATCH_FUTURE
        else:
            options.send_initial_events = True
    if watch and not options.send_initial_events and draw(st.booleans()):
        options.send_initial_events = True  # an accepted watch answers at once: no idle wait
    return options, "ListOptions " + "+".join(problems), wait


def object_request(draw: Callable[..., Any], kind: Kind, method: str) -> tuple[Message, str]:
    """A valid object with one hostile field: a new one for Create, the stored target otherwise."""
    name = f"h{draw(st.integers(0, 10**6))}" if method == "Create" else TARGET
    obj = valid_object(kind, name)
    how = draw(st.sampled_from(["mutate", "mutate", "mutate", "meta", "huge"]))
    if how == "meta":
        meta = obj.metadata  # type: ignore[attr-defined]
        field = draw(st.sampled_from(
            ["name", "generate_name", "namespace", "labels", "annotations", "resource_version", "uid", "owner"]
        ))
        if field in ("name", "generate_name", "namespace", "uid"):
            setattr(meta, field, hostile_text(draw))
            if field == "generate_name" and draw(st.booleans()):
                meta.name = ""
        elif field == "labels":
            meta.labels[hostile_text(draw)] = hostile_text(draw)
        elif field == "annotations":
            meta.annotations[hostile_text(draw)] = hostile_text(draw)
        elif field == "resource_version":
            meta.resource_version = hostile_int(draw, 64)
        else:
            meta.owner_references.add(kind=hostile_text(draw), name=hostile_text(draw), controller=True)
            meta.owner_references.add(kind="ReplicationController", name="rc", controller=True)
        return obj, f"metadata.{field}"
    if how == "huge":
        paths = _paths(obj.DESCRIPTOR, _is_string)
        path = draw(st.sampled_from(paths))
        return obj, f"huge string at {path}"  # made at the byte level by hostile_requests
    return obj, mutate(draw, obj)


@st.composite
def hostile_requests(draw: Callable[..., Any], kind: Kind, method: str) -> Hostile:
    request_class = _method_input(kind, method)
    raw = draw(st.integers(0, 4)) == 0  # a fifth of the requests are made at the byte level
    wait = WATCH_IDLE
    if method in ("Create", "Update", "UpdateStatus"):
        obj, what = object_request(draw, kind, method)
        valid = obj.SerializeToString()
        if what.startswith("huge string at "):
            path = json.loads(what.removeprefix("huge string at "))
            valid += _nest(path[:-1], _field(path[-1], huge_text(draw).encode()))
    elif method in ("Get", "Delete"):
        request = request_class(name=hostile_name(draw))
        request.namespace = hostile_namespace(draw)  # type: ignore[attr-defined]
        what = f"{method} name and namespace"
        if method == "Delete":
            if draw(st.booleans()) or request.name == TARGET:  # type: ignore[attr-defined]
                # Never a precondition the target meets: it stays for the writes that aim at it.
                request.resource_version = draw(  # type: ignore[attr-defined]
                    st.sampled_from([-1, 2**63 - 1, 10**12, -(2**63)])
                )
                what += " + resourceVersion"
            if draw(st.booleans()):
                request.propagation_policy = (  # type: ignore[attr-defined]
                    draw(st.sampled_from(["Foreground", "orphan", "Orphan ", "☃"]))
                    if draw(st.booleans())
                    else hostile_text(draw)
                )
                what += " + propagationPolicy"
        valid = request.SerializeToString()
    elif method in ("List", "Watch"):
        options, what, wait = list_options(draw, kind, method == "Watch")
        valid = options.SerializeToString()
    elif method == "Bind":
        binding = pod_pb2.Binding(
            metadata=meta_pb2.ObjectMeta(name=hostile_name(draw), namespace=HOSTILE_NS),
            target=pod_pb2.ObjectReference(kind="Node", name=NODE_NAME),
        )
        field = draw(st.sampled_from(["target.name", "target.kind", "metadata.namespace", "metadata.uid", "name"]))
        if field == "target.name":
            binding.target.name = hostile_text(draw)
        elif field == "target.kind":
            binding.target.kind = hostile_text(draw)
        elif field == "metadata.namespace":
            binding.metadata.namespace = hostile_text(draw)
        elif field == "metadata.uid":
            binding.metadata.uid = hostile_text(draw)
        what = f"Binding {field}"
        valid = binding.SerializeToString()
    else:
        raise AssertionError(f"{kind.name}.{method}: no generator")
    expect = "too-large" if len(valid) > OBJECT_LIMIT else ""
    if raw:
        valid, what, expect = raw_variant(draw, valid[:OBJECT_LIMIT], request_class)
        what = f"{what} (of a {method} request)"
        if expect == "unknown" and method not in STRICT_METHODS:
            expect = ""  # a read drops fields it does not know
        expect = "too-large" if len(valid) > OBJECT_LIMIT else expect
    if len(valid) > MAX_PAYLOAD:
        valid = valid[:MAX_PAYLOAD]  # cut (so likely undecodable, and still over the object limit)
    return Hostile(kind.name, method, valid, what, expect, wait)


# -- etcd, read directly -----------------------------------------------------------------------------------


class EtcdReader:
    """Every key in etcd and its mod revision, read with the API server's etcd client certificate."""

    def __init__(self, endpoint: str) -> None:
        self.channel = blocking_channel(endpoint, dev_pki().etcd_client_credentials())
        self.kv = rpc.KVStub(self.channel)

    def snapshot(self) -> dict[bytes, int]:
        response = self.kv.Range(rpc.RangeRequest(key=b"\0", range_end=b"\0", keys_only=True), timeout=10)
        good = f"/registry/pods/{GOOD_NS}/".encode()
        return {kv.key: kv.mod_revision for kv in response.kvs if not kv.key.startswith(good)}

    def exists(self, key: bytes) -> bool:
        return bool(self.kv.Range(rpc.RangeRequest(key=key, count_only=True), timeout=10).count)

    def remove(self, key: bytes) -> None:
        self.kv.DeleteRange(rpc.DeleteRangeRequest(key=key), timeout=10)

    def close(self) -> None:
        self.channel.close()


def describe_change(before: dict[bytes, int], after: dict[bytes, int]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added {added[:5]}, removed {removed[:5]}, changed {changed[:5]}"


# -- the control plane --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdProcess, ApiServerProcess]]:
    """Its own etcd and API server: their RSS, log and keys are this run's alone."""
    root = tmp_path_factory.mktemp("hostile")
    etcd = EtcdProcess(root / "etcd")
    server = ApiServerProcess(etcd.endpoint, "--controllers=", log_path=root / "apiserver.log")
    try:
        yield etcd, server
    finally:
        server.stop()
        etcd.stop()


# -- the well-behaved client (its own process, so that this one's CPU does not count) -------------------------

GOOD_CLIENT = """
import asyncio, json, sys, time
from pathlib import Path
from services.common.client import ApiClient
from services.common.resources import PODS
from tests.integration.apihelpers import make_pod

address, namespace, out, stop, ready = sys.argv[1:6]
MAX_SECONDS = 240.0  # bounded whatever happens to the test

async def main():
    client = ApiClient(address, timeout=10)
    samples, errors = [], []
    started = time.monotonic()
    i = 0
    while not Path(stop).exists() and time.monotonic() - started < MAX_SECONDS:
        name = f"good-{i}"
        for op, call in (
            ("create", lambda: client.create(make_pod(name, namespace))),
            ("get", lambda: client.get(PODS, name, namespace)),
            ("list", lambda: client.list(PODS, namespace)),
            ("delete", lambda: client.delete(PODS, name, namespace)),
        ):
            t0 = time.perf_counter()
            try:
                await call()
            except Exception as error:
                errors.append(f"{op} {name}: {error!r}"[:300])
            samples.append((time.time(), op, time.perf_counter() - t0))
            await asyncio.sleep(0.01)
        i += 1
        if i == 5:
            Path(ready).touch()
    await client.close()
    Path(out).write_text(json.dumps({"samples": samples, "errors": errors}))

asyncio.run(main())
"""


class WellBehavedClient:
    def __init__(self, address: str, directory: Path) -> None:
        self.out, self.stop_file = directory / "good.json", directory / "good.stop"
        self.ready = directory / "good.ready"
        self.process = subprocess.Popen(
            [sys.executable, "-c", GOOD_CLIENT, address, GOOD_NS, str(self.out), str(self.stop_file), str(self.ready)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            assert self.process.poll() is None, "the well-behaved client died"
            assert time.monotonic() < deadline, "the well-behaved client did not start"
            time.sleep(0.05)

    def finish(self) -> dict[str, Any]:
        self.stop_file.touch()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if not self.out.exists():
            code = self.process.returncode
            return {"samples": [], "errors": [f"the well-behaved client wrote no report (exit {code})"]}
        return json.loads(self.out.read_text())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the hostile client --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    code: grpc.StatusCode
    message: str
    response: bytes = b""


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except OSError:
                return


class HostileClient:
    def __init__(self, etcd: EtcdProcess, server: ApiServerProcess) -> None:
        self.channel = blocking_channel(server.address, dev_pki().credentials("admin"))
        self.etcd = EtcdReader(etcd.endpoint)
        self.snapshot = self.etcd.snapshot()
        self.sent = 0
        self.seen: set[tuple[str, str, bytes]] = set()
        self.by_rpc: dict[tuple[str, str], int] = {}
        self.by_code: dict[str, int] = {}
        self.watches: list[tuple[Hostile, Future[Outcome]]] = []
        self.pool = ThreadPoolExecutor(max_workers=24, thread_name_prefix="hostile-watch")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.etcd.close()
        self.channel.close()

    # -- sending

    def unary(self, kind: Kind, method: str, payload: bytes) -> Outcome:
        call = self.channel.unary_unary(f"/{kind.service_name}/{method}", None, None)  # bytes as they are
        try:
            response = call(payload, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            return Outcome(error.code(), error.details() or "")
        return Outcome(grpc.StatusCode.OK, "", response)

    def watch(self, kind: Kind, payload: bytes, wait: float) -> Outcome:
        call = self.channel.unary_stream(f"/{kind.service_name}/Watch", None, None)(payload, timeout=wait)
        try:
            for _ in call:
                call.cancel()
                return Outcome(grpc.StatusCode.OK, "streamed")
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return Outcome(grpc.StatusCode.OK, "idle")  # accepted, nothing to send yet
            if code == grpc.StatusCode.CANCELLED:
                return Outcome(grpc.StatusCode.OK, "streamed")
            return Outcome(code, error.details() or "")
        return Outcome(grpc.StatusCode.OK, "ended")

    # -- checking

    def check_answer(self, request: Hostile, outcome: Outcome) -> None:
        code, message = outcome.code, outcome.message
        self.by_code[code.name] = self.by_code.get(code.name, 0) + 1
        assert code not in FORBIDDEN_CODES, f"{request!r}: {code.name}: {message[:500]}"
        if code == grpc.StatusCode.OK:
            assert not request.expect, f"{request!r}: accepted, expected {request.expect}"
            return
        fits(message)
        assert trailer_size(message) < TRAILER_BUDGET, f"{request!r}: a {trailer_size(message)}-byte trailer"
        assert message, f"{request!r}: {code.name} without a message"
        if code in INPUT_CODES:
            assert names_a_field(message), f"{request!r}: {code.name} names no field: {message[:500]}"
        if request.expect == "too-large":
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and message.startswith("request: "), (
                f"{request!r}: {code.name}: {message[:300]}"
            )
        elif request.expect == "undecodable":
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "request: not a valid" in message, (
                f"{request!r}: {code.name}: {message[:300]}"
            )
        elif request.expect == "unknown":
            assert code == grpc.StatusCode.INVALID_ARGUMENT and (
                "unknown field" in message or "request: not a valid" in message
            ), f"{request!r}: {code.name}: {message[:300]}"

    def send(self, request: Hostile) -> None:
        kind = KIND_BY_NAME[request.kind]
        identity = (request.kind, request.method, request.payload)
        if identity in self.seen:
            return
        self.seen.add(identity)
        self.sent += 1
        key = (request.kind, request.method)
        self.by_rpc[key] = self.by_rpc.get(key, 0) + 1
        if request.method == "Watch":
            # A watch reads; it may idle or wait for a future revision: checked at the end.
            self.watches.append((request, self.pool.submit(self.watch, kind, request.payload, request.watch_wait)))
            return
        outcome = self.unary(kind, request.method, request.payload)
        self.check_answer(request, outcome)
        after = self.etcd.snapshot()
        if outcome.code != grpc.StatusCode.OK or request.method not in WRITE_METHODS:
            assert after == self.snapshot, (
                f"{request!r}: answered {outcome.code.name} but etcd changed: {describe_change(self.snapshot, after)}"
            )
        self.snapshot = after
        if outcome.code == grpc.StatusCode.OK and request.method in WRITE_METHODS:
            self.tidy(kind, request.method, outcome.response)

    def tidy(self, kind: Kind, method: str, response: bytes) -> None:
        """Keeps the store as it was: a created object is removed, a deleted target made again."""
        if method == "Create":
            obj: Any = kind.message.FromString(response)
            self.remove(kind, obj.metadata.namespace, obj.metadata.name)
        elif method == "Delete":
            obj = kind.message.FromString(response)
            if obj.metadata.name == TARGET:
                self.remove(kind, obj.metadata.namespace, TARGET)
                self.ensure_target(kind)
        self.snapshot = self.etcd.snapshot()

    def remove(self, kind: Kind, namespace: str, name: str) -> None:
        request = meta_pb2.DeleteRequest(namespace=namespace, name=name)
        self.unary(kind, "Delete", request.SerializeToString())
        key = kind.key(namespace, name).encode()
        if self.etcd.exists(key):  # only marked (a bound pod's graceful deletion): no kubelet here will remove it
            self.etcd.remove(key)

    def ensure_target(self, kind: Kind) -> None:
        outcome = self.unary(kind, "Create", valid_object(kind, TARGET).SerializeToString())
        if kind.name in BUILT_KINDS:
            assert outcome.code in (grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS), outcome

    def finish_watches(self) -> None:
        for request, future in self.watches:
            outcome = future.result(timeout=60)
            self.check_answer(request, outcome)
        assert self.etcd.snapshot() == self.snapshot, "etcd changed during the watches"


def log_lines_longest(path: Path) -> tuple[int, str]:
    longest, head = 0, ""
    with open(path, "rb") as log:
        for line in log:
            if len(line) > longest:
                longest, head = len(line), line[:300].decode(errors="replace")
    return longest, head


# -- the test ---------------------------------------------------------------------------------------------------


def attack(client: HostileClient, kind: Kind, method: str) -> None:
    """One Hypothesis run per (kind, RPC): every pair gets its share, each run shrinks on its own.
    Derandomized, with a seed of its own (else every pair would draw the same choices)."""

    @seed(zlib.crc32(f"{kind.name}.{method}".encode()))
    @settings(
        max_examples=EXAMPLES_PER_RPC,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_requests(kind, method))
    def each(request: Hostile) -> None:
        client.send(request)

    each()


def test_a_thousand_hostile_requests_change_nothing_and_break_nothing(plane, tmp_path):
    etcd, server = plane
    client = HostileClient(etcd, server)
    for kind in ALL_KINDS:
        client.ensure_target(kind)
    node = make_node(NODE_NAME)
    assert client.unary(NODES, "Create", node.SerializeToString()).code == grpc.StatusCode.OK
    client.snapshot = client.etcd.snapshot()

    good = WellBehavedClient(server.address, tmp_path)
    sampler = RssSampler(server.pid)
    try:
        good.wait_ready()
        alone_from = time.time()
        time.sleep(2.0)  # the well-behaved client alone: its baseline latency
        rss_before = rss_bytes(server.pid)
        sampler.start()
        started = time.time()
        rss_half = 0

        for kind in ALL_KINDS:
            for method in METHODS[kind.name]:
                attack(client, kind, method)
            if not rss_half and client.sent >= MIN_REQUESTS // 2:
                rss_half = rss_bytes(server.pid)
        client.finish_watches()
        ended = time.time()
        rss_after = rss_bytes(server.pid)
    finally:
        sampler.done.set()
        report = good.finish()
        client.close()

    # -- what was sent
    answers = dict(sorted(client.by_code.items()))
    print(f"\n{client.sent} hostile requests in {ended - started:.1f} s; answers: {answers}")
    assert server.alive()
    assert client.sent >= MIN_REQUESTS
    for kind in ALL_KINDS:
        for method in METHODS[kind.name]:
            assert client.by_rpc.get((kind.name, method), 0) >= MIN_PER_RPC, (kind.name, method, client.by_rpc)

    # -- memory
    growth, second_half = sampler.peak - rss_before, rss_after - (rss_half or rss_after)
    print(
        f"API server RSS: {rss_before / 2**20:.0f} MiB before, peak {sampler.peak / 2**20:.0f} MiB "
        f"(+{growth / 2**20:.0f}), {rss_half / 2**20:.0f} MiB at half, {rss_after / 2**20:.0f} MiB after"
    )
    assert growth < RSS_GROWTH_LIMIT
    assert second_half < RSS_SECOND_HALF_LIMIT

    # -- the log quotes values cut short
    longest, head = log_lines_longest(server.log_path)
    print(f"longest API server log line: {longest} bytes")
    assert longest < MAX_LOG_LINE, f"a {longest}-byte log line: {head}"

    # -- the well-behaved client
    assert not report["errors"], report["errors"][:5]
    alone = [s[2] for s in report["samples"] if alone_from <= s[0] < started]
    during = [s[2] for s in report["samples"] if started <= s[0] <= ended]
    assert len(during) > 100, len(during)
    p99 = percentile(during, 0.99)
    print(
        f"well-behaved client: alone p50 {statistics.median(alone) * 1000:.1f} ms p99 "
        f"{percentile(alone, 0.99) * 1000:.1f} ms ({len(alone)} calls); under attack p50 "
        f"{statistics.median(during) * 1000:.1f} ms p99 {p99 * 1000:.1f} ms max {max(during) * 1000:.1f} ms "
        f"({len(during)} calls)"
    )
    if ASSERT_P99:
        assert p99 < WELL_BEHAVED_P99, f"p99 {p99 * 1000:.1f} ms"
