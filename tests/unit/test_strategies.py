"""The API server's per-kind strategies and List's wire layout, without etcd.

Tables of what each kind does on create and update, which subresources it has,
the pod binding and the RC's orphaning delete (against a fake registry), a
service's allocations (over fake taken views), and the descriptor check that
List's byte splicing relies on.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from typing import Any, Callable

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import (
    coordination_pb2,
    endpoints_pb2,
    meta_pb2,
    node_pb2,
    pod_pb2,
    replication_controller_pb2,
    service_pb2,
)
from services.apiserver.errors import ApiError
from services.apiserver.ipallocator import NodePortRange, ServiceIPRange, TakenView, owner_record
from services.apiserver.registry import BACKGROUND, ORPHAN, LayoutError, WireLayout, wire_layout
from services.apiserver.storage import KeyValue
from services.apiserver.strategies import (
    STRATEGIES,
    ServiceAllocator,
    ServiceStrategy,
    bind_pod,
    build_strategies,
    check_binding,
    patch_allocated_values,
    strategy_for,
)
from services.common.defaults import apply_defaults
from services.common.resources import (
    ALL_KINDS,
    NAMESPACES,
    RBAC_KINDS,
    ENDPOINTS,
    EVENTS,
    LEASES,
    NODES,
    PODS,
    REPLICATION_CONTROLLERS,
    SERVICES,
    Kind,
)

NOW = Timestamp(seconds=1_700_000_000)


def pod(node: str = "", phase: str = "", **meta: Any) -> pod_pb2.Pod:
    return pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name="web", namespace="default", **meta),
        spec=pod_pb2.PodSpec(containers=[pod_pb2.Container(name="c", image="busybox")], node_name=node),
        status=pod_pb2.PodStatus(phase=phase, pod_ip="10.244.0.5" if phase else ""),
    )


def rc(replicas: int = 2, status_replicas: int = 0) -> replication_controller_pb2.ReplicationController:
    return replication_controller_pb2.ReplicationController(
        metadata=meta_pb2.ObjectMeta(name="web", namespace="default", uid="rc-uid"),
        spec=replication_controller_pb2.ReplicationControllerSpec(
            replicas=replicas,
            template=pod_pb2.PodTemplateSpec(
                metadata=meta_pb2.ObjectMeta(labels={"app": "web"}),
                spec=pod_pb2.PodSpec(containers=[pod_pb2.Container(name="c", image="busybox")]),
            ),
        ),
        status=replication_controller_pb2.ReplicationControllerStatus(replicas=status_replicas),
    )


def node(unschedulable: bool = False, cpu: str = "") -> node_pb2.Node:
    return node_pb2.Node(
        metadata=meta_pb2.ObjectMeta(name="n1"),
        spec=node_pb2.NodeSpec(unschedulable=unschedulable),
        status=node_pb2.NodeStatus(capacity={"cpu": cpu} if cpu else {}),
    )


def service(port: int = 80) -> service_pb2.Service:
    return service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(name="web", namespace="default"),
        spec=service_pb2.ServiceSpec(ports=[service_pb2.ServicePort(port=port)], selector={"app": "web"}),
    )


def endpoints(ip: str = "10.244.0.5") -> endpoints_pb2.Endpoints:
    return endpoints_pb2.Endpoints(
        metadata=meta_pb2.ObjectMeta(name="web", namespace="default"),
        subsets=[
            endpoints_pb2.EndpointSubset(
                addresses=[endpoints_pb2.EndpointAddress(ip=ip)], ports=[endpoints_pb2.EndpointPort(port=80)]
            )
        ],
    )


def lease(holder: str = "a", renewed: int = 1_700_000_000) -> coordination_pb2.Lease:
    return coordination_pb2.Lease(
        metadata=meta_pb2.ObjectMeta(name="kube-controller-manager", namespace="kube-system"),
        spec=coordination_pb2.LeaseSpec(
            holder_identity=holder, lease_duration_seconds=15, renew_time=Timestamp(seconds=renewed)
        ),
    )


# -- the table ---------------------------------------------------------------------


def test_every_kind_has_its_strategy() -> None:
    assert [strategy.kind for strategy in STRATEGIES.values()] == list(ALL_KINDS)
    for kind in ALL_KINDS:
        assert strategy_for(kind).kind is kind


# -- prepare for create ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "given", "check"),
    [
        pytest.param(
            PODS, pod(node="", phase="Running"),
            lambda p: p.status == pod_pb2.PodStatus(phase="Pending") and p.spec.restart_policy == "Always",
            id="pod-status-cleared-to-pending-and-defaulted",
        ),
        pytest.param(
            REPLICATION_CONTROLLERS, rc(status_replicas=5),
            lambda r: r.status == replication_controller_pb2.ReplicationControllerStatus()
            and dict(r.spec.selector) == {"app": "web"},
            id="rc-status-cleared-selector-from-template",
        ),
        pytest.param(
            NODES, node(cpu="4"), lambda n: dict(n.status.capacity) == {"cpu": "4"} and n.kind == "Node",
            id="node-status-kept-on-registration",
        ),
        pytest.param(
            SERVICES, service(), lambda s: s.spec.type == "ClusterIP" and s.spec.ports[0].target_port == "80",
            id="service-defaults",
        ),
        pytest.param(
            ENDPOINTS, endpoints(), lambda e: e.subsets[0].ports[0].protocol == "TCP",
            id="endpoints-defaults",
        ),
        pytest.param(
            LEASES, lease(),
            lambda le: (le.api_version, le.kind) == ("coordination.k8s.io/v1", "Lease")
            and not le.spec.HasField("lease_transitions"),
            id="lease-type-meta-only",
        ),
    ],
)
def test_prepare_for_create(kind: Kind, given: Message, check: Callable[[Any], bool]) -> None:
    strategy_for(kind).prepare_for_create(given)
    assert check(given), given
    assert strategy_for(kind).validate(given) == []


# -- prepare for update ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "old", "new", "generation", "check"),
    [
        pytest.param(
            PODS, pod(phase="Running"), pod(phase="Failed", node="n1"), 8,
            lambda p: p.status.phase == "Running", id="pod-spec-changed-status-kept",
        ),
        pytest.param(
            PODS, pod(phase="Running"), pod(), 7, lambda p: p.status.pod_ip == "10.244.0.5",
            id="pod-spec-same",
        ),
        pytest.param(
            REPLICATION_CONTROLLERS, rc(replicas=2, status_replicas=2), rc(replicas=3, status_replicas=9), 8,
            lambda r: r.status.replicas == 2, id="rc-scaled-status-kept",
        ),
        pytest.param(
            NODES, node(cpu="4"), node(unschedulable=True), 8, lambda n: dict(n.status.capacity) == {"cpu": "4"},
            id="node-cordoned-status-kept",
        ),
        pytest.param(
            SERVICES, service(port=80), service(port=81), 8, lambda s: s.spec.ports[0].target_port == "81",
            id="service-port-changed",
        ),
        pytest.param(
            ENDPOINTS, endpoints("10.244.0.5"), endpoints("10.244.0.6"), 7, lambda e: True,
            id="endpoints-no-spec-no-bump",
        ),
        pytest.param(
            LEASES, lease(renewed=1), lease(renewed=2), 7, lambda le: le.spec.renew_time.seconds == 2,
            id="lease-renewal-no-bump",
        ),
    ],
)
def test_prepare_for_update(
    kind: Kind, old: Any, new: Any, generation: int, check: Callable[[Any], bool]
) -> None:
    strategy = strategy_for(kind)
    apply_defaults(old)  # as stored
    old.metadata.generation = 7
    new.metadata.generation = 7  # what the registry carries over before asking the strategy
    strategy.prepare_for_update(new, old)
    assert new.metadata.generation == generation
    assert check(new), new


def test_bound_pod_node_is_immutable_and_reported_alone() -> None:
    strategy = strategy_for(PODS)
    old = pod(node="n1")
    new = pod(node="n2")
    new.spec.containers[0].image = ""  # also invalid, but the immutable node is what is said
    errors = strategy.validate_update(new, old)
    assert [str(e) for e in errors] == ["spec.nodeName: field is immutable once bound (bound to n1)"]
    # An unbound pod's node is set by Bind alone: an update that sets it is a spec change.
    errors = strategy.validate_update(pod(node="n2"), pod())
    assert [str(e) for e in errors] == [
        "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
        "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative) "
        "(changed: spec.nodeName)"
    ]


def test_pod_update_may_change_images_only() -> None:
    strategy = strategy_for(PODS)
    old = pod(node="n1")
    new_image = pod(node="n1")
    new_image.spec.containers[0].image = "busybox:2"
    new_image.metadata.labels["tier"] = "web"
    assert strategy.validate_update(new_image, old) == []
    command = pod(node="n1")
    command.spec.containers[0].command.append("sh")
    errors = [str(e) for e in strategy.validate_update(command, old)]
    assert len(errors) == 1 and errors[0].startswith("spec: Forbidden: pod updates may not change fields other than")
    assert errors[0].endswith("(changed: spec.containers[0].command)")


# -- subresources --------------------------------------------------------------------

SUBRESOURCES = {
    PODS.name: {"status": "UpdateStatus", "binding": "Bind"},
    SERVICES.name: {},
    ENDPOINTS.name: {},
    REPLICATION_CONTROLLERS.name: {"status": "UpdateStatus"},
    NODES.name: {"status": "UpdateStatus"},
    **{kind.name: {} for kind in (NAMESPACES, *RBAC_KINDS, LEASES, EVENTS)},
}
STANDARD_METHODS = {"Create", "Get", "List", "Update", "Delete", "Watch"}


@pytest.mark.parametrize("kind", ALL_KINDS, ids=[k.name for k in ALL_KINDS])
def test_subresources(kind: Kind) -> None:
    strategy = strategy_for(kind)
    declared = {sub.name: sub.rpc for sub in strategy.subresources}
    assert declared == SUBRESOURCES[kind.name]
    # The service has a method for each, and nothing else beyond the standard verbs.
    service = descriptor_pool.Default().FindServiceByName(kind.service_name)
    assert {m.name for m in service.methods} == STANDARD_METHODS | set(declared.values())
    # A status subresource exactly where the kind has a status, and it copies it.
    assert ("status" in declared) == kind.has_status
    assert strategy.status_fields == (("status",) if kind.has_status else ())


def test_status_subresource_copies_only_status() -> None:
    strategy = strategy_for(PODS)
    stored = pod(node="n1", phase="Pending")
    request = pod(node="elsewhere", phase="Running", labels={"new": "label"})
    strategy.prepare_for_status_update(stored, request)
    assert stored.status.phase == "Running"
    assert stored.spec.node_name == "n1"
    assert dict(stored.metadata.labels) == {}


# -- binding -------------------------------------------------------------------------


def binding(target: str = "n1", kind: str = "", uid: str = "") -> pod_pb2.Binding:
    return pod_pb2.Binding(
        metadata=meta_pb2.ObjectMeta(name="web", namespace="default", uid=uid),
        target=pod_pb2.ObjectReference(kind=kind, name=target),
    )


def test_bind_sets_node_and_scheduled_condition() -> None:
    stored = pod(uid="u1")
    bound = bind_pod(stored, binding(uid="u1"), "default", NOW)
    assert bound.spec.node_name == "n1"
    assert [(c.type, c.status, c.last_transition_time.seconds) for c in bound.status.conditions] == [
        ("PodScheduled", "True", NOW.seconds)
    ]
    assert stored.spec.node_name == ""  # the stored message is left alone


@pytest.mark.parametrize(
    ("stored", "request_", "code", "message"),
    [
        pytest.param(
            pod(node="n2"), binding(), grpc.StatusCode.FAILED_PRECONDITION,
            'pod "web" in namespace default is already bound to node "n2"', id="already-bound",
        ),
        pytest.param(
            pod(uid="u1"), binding(uid="u2"), grpc.StatusCode.FAILED_PRECONDITION,
            'pod "web" was replaced (uid differs)', id="replaced",
        ),
    ],
)
def test_bind_refused(stored: pod_pb2.Pod, request_: pod_pb2.Binding, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(ApiError) as raised:
        bind_pod(stored, request_, "default", NOW)
    assert (raised.value.code, raised.value.message) == (code, message)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        pytest.param(binding(target=""), "target.name: required (the node to bind to)", id="no-node"),
        pytest.param(binding(kind="Pod"), 'target.kind: must be "Node", not "Pod"', id="not-a-node"),
        pytest.param(binding(kind="Node"), None, id="node"),
        pytest.param(binding(), None, id="kind-omitted"),
    ],
)
def test_check_binding(request_: pod_pb2.Binding, message: str | None) -> None:
    if message is None:
        check_binding(request_)
        return
    with pytest.raises(ApiError) as raised:
        check_binding(request_)
    assert (raised.value.code, raised.value.message) == (grpc.StatusCode.INVALID_ARGUMENT, message)


# -- the RC's delete hook (orphaning) -------------------------------------------------


class FakeRegistry:
    """What the RC's delete hook uses of a registry: guarded_write, list and peer."""

    def __init__(self, objects: dict[str, Any], peers: dict[str, FakeRegistry]) -> None:
        self.objects = objects
        self.peers = peers
        self.writes: list[str] = []

    def peer(self, kind: Kind) -> FakeRegistry:
        return self.peers[kind.name]

    async def guarded_write(self, namespace: str, name: str, expected: int, mutate: Callable[[Any], Any]) -> Any:
        updated = mutate(self.objects[name])
        if updated is not None:
            self.objects[name] = updated
            self.writes.append(name)
        return updated

    async def list(self, options: meta_pb2.ListOptions) -> bytes:
        return pod_pb2.PodList(items=self.objects.values()).SerializeToString()


def owned_pod(name: str, *owners: str) -> pod_pb2.Pod:
    refs = [meta_pb2.OwnerReference(kind="ReplicationController", name="web", uid=uid) for uid in owners]
    return pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name=name, namespace="default", owner_references=refs))


@pytest.mark.parametrize(
    ("policy", "rc_marked", "owners"),
    [
        pytest.param(
            ORPHAN, True, {"mine": [], "shared": ["other-uid"], "theirs": ["other-uid"]}, id="orphan",
        ),
        pytest.param(
            BACKGROUND, False, {"mine": ["rc-uid"], "shared": ["other-uid", "rc-uid"], "theirs": ["other-uid"]},
            id="background",
        ),
    ],
)
async def test_rc_delete_hook(policy: str, rc_marked: bool, owners: dict[str, list[str]]) -> None:
    peers: dict[str, FakeRegistry] = {}
    controllers = peers[REPLICATION_CONTROLLERS.name] = FakeRegistry({"web": rc()}, peers)
    pods = peers[PODS.name] = FakeRegistry(
        {
            "mine": owned_pod("mine", "rc-uid"),
            "shared": owned_pod("shared", "other-uid", "rc-uid"),
            "theirs": owned_pod("theirs", "other-uid"),
        },
        peers,
    )
    await strategy_for(REPLICATION_CONTROLLERS).before_delete(controllers, rc(), policy)  # type: ignore[arg-type]
    assert controllers.objects["web"].metadata.HasField("deletion_timestamp") == rc_marked
    assert {name: [ref.uid for ref in p.metadata.owner_references] for name, p in pods.objects.items()} == owners
    assert pods.writes == [name for name in ("mine", "shared") if rc_marked]


@pytest.mark.parametrize("kind", [k for k in ALL_KINDS if k is not REPLICATION_CONTROLLERS], ids=lambda k: k.name)
async def test_other_kinds_have_no_delete_hook(kind: Kind) -> None:
    # The hook never touches the registry it is given.
    await strategy_for(kind).before_delete(None, kind.message(), ORPHAN)  # type: ignore[arg-type]


# -- List's wire layout ---------------------------------------------------------------


def top_level_fields(data: bytes) -> list[int]:
    """The field numbers of a serialized message's top-level fields, in wire order."""
    numbers, pos = [], 0
    while pos < len(data):
        key, pos = _decode_varint(data, pos)
        numbers.append(key >> 3)
        wire = key & 7
        if wire == 2:
            length, pos = _decode_varint(data, pos)
            pos += length
        elif wire == 0:
            _, pos = _decode_varint(data, pos)
        else:
            pos += {1: 8, 5: 4}[wire]
    return numbers


def _decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


@pytest.mark.parametrize("kind", ALL_KINDS, ids=[k.name for k in ALL_KINDS])
@pytest.mark.parametrize("stored_form", [True, False], ids=["metadata-first", "written-before"])
def test_every_kind_fits_list_splicing(kind: Kind, stored_form: bool) -> None:
    layout = wire_layout(kind)
    obj: Any = kind.message(
        api_version="v1", kind=kind.name, metadata=meta_pb2.ObjectMeta(name="a", labels={"x": "y"})
    )
    serialized = obj.SerializeToString(deterministic=True)
    stored = layout.metadata_first(serialized) if stored_form else serialized
    header = kind.list_message(metadata=meta_pb2.ListMeta(resource_version=9)).SerializeToString()
    spliced = [layout.with_resource_version(stored, revision) for revision in (5, 300)]
    parsed: Any = kind.list_message.FromString(header + b"".join(layout.item(item) for item in spliced))
    assert [i.metadata.resource_version for i in parsed.items] == [5, 300]
    assert [dict(i.metadata.labels) for i in parsed.items] == [{"x": "y"}, {"x": "y"}]
    assert [(i.api_version, i.kind) for i in parsed.items] == [("v1", kind.name)] * 2
    assert parsed.metadata.resource_version == 9
    # Canonical: each field once, so a decoder that replaces a repeated message field
    # (protobuf.js) instead of merging reads the same object.
    for item in spliced:
        fields = top_level_fields(item)
        assert len(fields) == len(set(fields)), fields
        one: Any = kind.message()
        one.ParseFromString(item)
        assert one.metadata.name == "a" and one.metadata.resource_version in (5, 300)


def test_an_object_without_metadata_gets_one_field_with_the_revision() -> None:
    layout = wire_layout(PODS)
    spliced = layout.with_resource_version(b"", 7)
    assert top_level_fields(spliced) == [3]
    assert pod_pb2.Pod.FromString(spliced).metadata.resource_version == 7


def _pool_with(*files: Any) -> descriptor_pool.DescriptorPool:
    """A fresh pool holding the given files and everything they import."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: Any) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    for file in files:
        add(file)
    return pool


def made_up_kind(metadata_type: str, metadata_number: int = 3, items_number: int = 4) -> Kind:
    """A kind whose messages are built here: Thing { <metadata_type> metadata }, ThingList { items }."""
    pool = _pool_with(meta_pb2.DESCRIPTOR)
    field = descriptor_pb2.FieldDescriptorProto
    thing_metadata = (
        field(name="metadata", number=metadata_number, type=field.TYPE_STRING)
        if metadata_type == "string"
        else field(name="metadata", number=metadata_number, type=field.TYPE_MESSAGE, type_name=metadata_type)
    )
    proto = descriptor_pb2.FileDescriptorProto(
        name="test/made_up.proto",
        package="test",
        dependency=[meta_pb2.DESCRIPTOR.name],
        message_type=[
            descriptor_pb2.DescriptorProto(
                name="Thing",
                field=[thing_metadata, field(name="note", number=1, type=field.TYPE_STRING)],
            ),
            descriptor_pb2.DescriptorProto(
                name="ThingList",
                field=[
                    field(name="metadata", number=1, type=field.TYPE_MESSAGE, type_name=".kybernetes.v1.ListMeta"),
                    field(
                        name="items", number=items_number, type=field.TYPE_MESSAGE, type_name=".test.Thing",
                        label=field.LABEL_REPEATED,
                    ),
                ],
            ),
        ],
    )
    pool.Add(proto)
    return dataclasses.replace(
        PODS,
        name="Thing",
        message=message_factory.GetMessageClass(pool.FindMessageTypeByName("test.Thing")),
        list_message=message_factory.GetMessageClass(pool.FindMessageTypeByName("test.ThingList")),
    )


def test_layout_follows_the_descriptors() -> None:
    kind = made_up_kind(".kybernetes.v1.ObjectMeta", metadata_number=7, items_number=20)
    layout = wire_layout(kind)
    assert layout == WireLayout(metadata_tag=bytes([7 << 3 | 2]), resource_version_tag=bytes([5 << 3]),
                                items_tag=bytes([0xA2, 0x01]))  # field 20: a two-byte key
    thing: Any = kind.message(note="n")
    thing.metadata.name = "a"
    data = layout.item(layout.with_resource_version(layout.metadata_first(thing.SerializeToString()), 42))
    parsed: Any = kind.list_message.FromString(data)
    assert (parsed.items[0].note, parsed.items[0].metadata.name, parsed.items[0].metadata.resource_version) == (
        "n", "a", 42,
    )


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        pytest.param(
            made_up_kind("string"),
            "kind Thing: field test.Thing.metadata (number 3) must be a singular kybernetes.v1.ObjectMeta for List",
            id="metadata-not-object-meta",
        ),
        pytest.param(
            made_up_kind(".kybernetes.v1.ListMeta"),
            "kind Thing: field test.Thing.metadata (number 3) must be a singular kybernetes.v1.ObjectMeta for List",
            id="metadata-of-another-message",
        ),
        pytest.param(
            dataclasses.replace(PODS, message=pod_pb2.PodSpec, list_message=pod_pb2.PodList),
            "kind Pod: kybernetes.v1.PodSpec has no field 'metadata' (List needs a singular kybernetes.v1.ObjectMeta)",
            id="no-metadata",
        ),
        pytest.param(
            dataclasses.replace(PODS, list_message=service_pb2.ServiceList),
            "kind Pod: field kybernetes.v1.ServiceList.items (number 4) must be repeated kybernetes.v1.Pod for List",
            id="items-of-another-kind",
        ),
        pytest.param(
            dataclasses.replace(PODS, list_message=pod_pb2.Pod),
            "kind Pod: kybernetes.v1.Pod has no field 'items' (List needs repeated kybernetes.v1.Pod)",
            id="list-without-items",
        ),
    ],
)
def test_layout_rejects_kinds_that_do_not_fit(kind: Kind, message: str) -> None:
    with pytest.raises(LayoutError) as raised:
        wire_layout(kind)
    assert str(raised.value) == message


# -- services: cluster IPs and node ports -------------------------------------------------


class ListedOnce:
    """A TakenView loader over a fixed list of names."""

    def __init__(self, *names: str) -> None:
        self.names = list(names)
        self.calls = 0

    async def __call__(self) -> tuple[int, list[str]]:
        self.calls += 1
        return 10, list(self.names)


def allocator(ips: tuple[str, ...] = (), ports: tuple[str, ...] = ()) -> ServiceAllocator:
    ip_range, port_range = ServiceIPRange.parse("10.0.0.0/29"), NodePortRange.parse("30000-30003")
    return ServiceAllocator(
        ip_range,
        port_range,
        TakenView(ListedOnce(*ips), ip_range.value),
        TakenView(ListedOnce(*ports), lambda text: int(text)),
        rng=random.Random(5),
    )


def svc(cluster_ip: str = "", type_: str = "ClusterIP", *node_ports: int, uid: str = "u1") -> service_pb2.Service:
    ports = [service_pb2.ServicePort(name=f"p{i}", port=80 + i, node_port=n) for i, n in enumerate(node_ports or [0])]
    return service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(name="web", namespace="default", uid=uid),
        spec=service_pb2.ServiceSpec(cluster_ip=cluster_ip, type=type_, ports=ports),
    )


IP = "/registry/ipaddresses/"
PORT = "/registry/servicenodeports/"


@pytest.mark.parametrize(
    ("old", "new", "claims", "releases"),
    [
        pytest.param(None, svc("10.0.0.3"), [IP + "10.0.0.3"], [], id="create-asks-for-an-ip"),
        pytest.param(None, svc("10.0.0.1"), [IP + "10.0.0.1"], [], id="create-asks-for-the-reserved-ip"),
        pytest.param(None, svc("None"), [], [], id="create-headless"),
        pytest.param(
            None, svc("10.0.0.3", "NodePort", 30001, 30002), [IP + "10.0.0.3", PORT + "30001", PORT + "30002"], [],
            id="create-asks-for-node-ports",
        ),
        pytest.param(svc("10.0.0.3"), svc("10.0.0.3"), [], [], id="update-keeps"),
        pytest.param(
            svc("10.0.0.3"), svc("10.0.0.3", "NodePort", 30001), [PORT + "30001"], [], id="update-to-node-port",
        ),
        pytest.param(
            svc("10.0.0.3", "NodePort", 30001), svc("10.0.0.3"), [], [PORT + "30001"], id="update-to-cluster-ip",
        ),
        pytest.param(
            svc("10.0.0.3", "NodePort", 30001), svc("10.0.0.3", "NodePort", 30002), [PORT + "30002"],
            [PORT + "30001"], id="update-changes-node-port",
        ),
        pytest.param(
            svc("10.0.0.3", "NodePort", 30001, 30002), None, [], [IP + "10.0.0.3", PORT + "30001", PORT + "30002"],
            id="delete-releases-everything",
        ),
        pytest.param(svc("None"), None, [], [], id="delete-headless"),
        pytest.param(svc(""), svc("10.0.0.4"), [IP + "10.0.0.4"], [], id="legacy-service-without-ip-asks"),
    ],
)
async def test_service_allocation_plan(
    old: service_pb2.Service | None, new: service_pb2.Service | None, claims: list[str], releases: list[str]
) -> None:
    plan = await allocator().plan(new, old)
    owner = owner_record("default", "web", "u1")
    assert plan.claims == {key.encode(): owner for key in claims}
    assert plan.releases == {key.encode(): owner for key in releases}


async def test_service_allocation_picks_fills_and_undoes() -> None:
    alloc = allocator(ips=("10.0.0.2", "10.0.0.3"), ports=("30000", "30001"))
    new = svc("", "NodePort", 0, 0)
    plan = await alloc.plan(new, None)
    assert new.spec.cluster_ip in {"10.0.0.4", "10.0.0.5", "10.0.0.6"}  # never .1 (the kubernetes service's)
    assert sorted(p.node_port for p in new.spec.ports) == [30002, 30003]
    assert set(plan.claims) == {
        f"{IP}{new.spec.cluster_ip}".encode(), f"{PORT}30002".encode(), f"{PORT}30003".encode()
    }
    # Reserved while in flight: a concurrent create picks something else.
    other = svc("", uid="u2")
    other_plan = await alloc.plan(other, None)
    assert other.spec.cluster_ip not in {"", new.spec.cluster_ip}
    other_plan.done(None)
    assert other.spec.cluster_ip == ""  # undone: the next attempt starts from the request
    plan.done(41)
    assert ipaddress.ip_address(new.spec.cluster_ip) and 30002 in alloc.ports and 30003 in alloc.ports
    plan.done(None)  # once only
    assert new.spec.cluster_ip and new.spec.ports[0].node_port


async def test_service_allocation_full_range_is_resource_exhausted() -> None:
    alloc = allocator(ips=("10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"))
    with pytest.raises(ApiError) as raised:
        await alloc.plan(svc(""), None)
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.message == (
        'Service "web" is invalid: spec.clusterIP: failed to allocate a cluster IP from 10.0.0.0/29: the range is full'
    )
    assert alloc.ips._load.calls == 2  # type: ignore[attr-defined]  # listed again before saying so
    ports = allocator(ports=("30000", "30001", "30002"))
    with pytest.raises(ApiError) as raised:
        await ports.plan(svc("10.0.0.2", "NodePort", 0, 0), None)
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "spec.ports[1].nodePort: failed to allocate a node port from 30000-30003: the range is full" in (
        raised.value.message
    )
    assert 30003 not in ports.ports  # the first port's pick was given back


@pytest.mark.parametrize(
    ("new", "message"),
    [
        pytest.param(
            svc("1.2.3.4"),
            'Service "web" is invalid: spec.clusterIP: Invalid value: "1.2.3.4": provided IP is not in the valid '
            "range. The range of valid IPs is 10.0.0.0/29",
            id="ip-elsewhere",
        ),
        pytest.param(svc("10.0.0.7"), 'spec.clusterIP: Invalid value: "10.0.0.7": provided IP', id="broadcast"),
        pytest.param(svc("fd00::1"), 'spec.clusterIP: Invalid value: "fd00::1": provided IP', id="other-family"),
        pytest.param(
            svc("10.0.0.3", "NodePort", 8080),
            "spec.ports[0].nodePort: Invalid value: 8080: provided port is not in the valid range. "
            "The range of valid ports is 30000-30003",
            id="node-port-elsewhere",
        ),
    ],
)
async def test_service_allocation_out_of_range(new: service_pb2.Service, message: str) -> None:
    with pytest.raises(ApiError) as raised:
        await allocator().plan(new, None)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.message


async def test_service_allocation_lost_claims() -> None:
    alloc = allocator()
    asked = await alloc.plan(svc("10.0.0.3", "NodePort", 30001), None)
    asked.done(None)
    held = {key: KeyValue(key, b"someone", 9, 9) for key in asked.claims}
    with pytest.raises(ApiError) as raised:
        await asked.lost(held)
    assert raised.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert raised.value.message == (
        'Service "web" is invalid: spec.clusterIP: Invalid value: "10.0.0.3": provided IP is already allocated; '
        "spec.ports[0].nodePort: Invalid value: 30001: provided port is already allocated"
    )
    picked_service = svc("")
    picked = await alloc.plan(picked_service, None)
    text = picked_service.spec.cluster_ip
    picked.done(None)
    alloc.ips._load.names.append(text)  # type: ignore[attr-defined]  # another server took it meanwhile
    await picked.lost({key: KeyValue(key, b"another server", 9, 9) for key in picked.claims})  # no error: retry
    assert alloc.ip_range.value(text) in alloc.ips and alloc.ips.lists == 2  # listed again: now seen as taken


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(svc("10.0.0.3"), svc(""), svc("10.0.0.3"), id="empty-ip-keeps-stored"),
        pytest.param(svc("None"), svc(""), svc("None"), id="empty-ip-keeps-headless"),
        pytest.param(
            svc("10.0.0.3", "NodePort", 30001, 30002), svc("10.0.0.3", "NodePort", 0, 0),
            svc("10.0.0.3", "NodePort", 30001, 30002), id="empty-node-ports-kept-by-name",
        ),
        pytest.param(
            svc("10.0.0.3", "NodePort", 30001, 30002), svc("10.0.0.3", "NodePort", 0, 30001),
            svc("10.0.0.3", "NodePort", 0, 30001), id="kept-port-not-given-twice",
        ),
        pytest.param(
            svc("10.0.0.3", "NodePort", 30001), svc("10.0.0.3", "ClusterIP", 30001), svc("10.0.0.3"),
            id="leaving-node-port-drops-the-ports",
        ),
        pytest.param(
            svc("10.0.0.3", "NodePort", 30001), svc("10.0.0.3", "ClusterIP", 30002),
            svc("10.0.0.3", "ClusterIP", 30002), id="a-new-port-with-cluster-ip-is-left-to-validation",
        ),
    ],
)
def test_service_update_keeps_allocated_values(
    old: service_pb2.Service, new: service_pb2.Service, expected: service_pb2.Service
) -> None:
    patch_allocated_values(new, old)
    assert new.spec == expected.spec


def test_service_cluster_ip_is_immutable() -> None:
    strategy = strategy_for(SERVICES)
    old = svc("10.96.0.10")
    apply_defaults(old)
    for changed in ("10.96.0.11", "None"):
        new = svc(changed)
        strategy.prepare_for_update(new, old)
        errors = [str(e) for e in strategy.validate_update(new, old)]
        assert errors == [f'spec.clusterIP: Invalid value: "{changed}": field is immutable']
    kept = svc("")
    strategy.prepare_for_update(kept, old)
    assert kept.spec.cluster_ip == "10.96.0.10" and strategy.validate_update(kept, old) == []


def test_strategies_are_built_per_server_with_their_ranges() -> None:
    built = build_strategies(
        cluster_ip_range=ServiceIPRange.parse("10.0.0.0/24"), node_port_range=NodePortRange.parse("31000-31010")
    )
    service_strategy = built[SERVICES.name]
    assert isinstance(service_strategy, ServiceStrategy)
    assert str(service_strategy.cluster_ip_range) == "10.0.0.0/24"
    assert str(service_strategy.node_port_range) == "31000-31010"
    assert service_strategy is not STRATEGIES[SERVICES.name]
    assert [kind for kind, strategy in built.items() if strategy.has_side_keys] == [SERVICES.name]


# -- hostile input: binding targets, continue tokens, error sizes ------------------------


@pytest.mark.parametrize(
    "target",
    ["../../etc", "UPPER", "$(id)", "a" * 100_000, "node_1", "-node", "a" * 254],
)
def test_check_binding_refuses_a_target_that_is_not_a_node_name(target: str) -> None:
    with pytest.raises(ApiError) as raised:
        check_binding(binding(target=target))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "target.name: Invalid value" in raised.value.message
    assert len(raised.value.message) < 1024


@pytest.mark.parametrize("target", ["node-1", "node.example.com", "a" * 253])
def test_check_binding_accepts_node_names(target: str) -> None:
    check_binding(binding(target=target))


def _token(data: Any) -> str:
    import base64
    import json

    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _start(key: bytes) -> str:
    import base64

    return base64.b64encode(key).decode()


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage", id="not-base64-json"),
        pytest.param(_token(b"[1, 2]"), id="a-list"),
        pytest.param(_token({"rv": 2**63, "start": _start(b"/registry/pods/")}), id="rv-over-int64"),
        pytest.param(_token({"rv": 10**30, "start": _start(b"/registry/pods/")}), id="rv-huge"),
        pytest.param(_token({"rv": 0, "start": _start(b"/registry/pods/")}), id="rv-zero"),
        pytest.param(_token({"rv": -5, "start": _start(b"/registry/pods/")}), id="rv-negative"),
        pytest.param(_token({"rv": "5", "start": _start(b"/registry/pods/")}), id="rv-a-string"),
        pytest.param(_token({"rv": 1.5, "start": _start(b"/registry/pods/")}), id="rv-a-float"),
        pytest.param(_token({"rv": True, "start": _start(b"/registry/pods/")}), id="rv-a-bool"),
        pytest.param(_token({"rv": 5, "start": 7}), id="start-not-text"),
        pytest.param(_token({"rv": 5, "start": "!!!"}), id="start-not-base64"),
        pytest.param(_token({"rv": 5, "start": _start(b"/registry/nodes/x")}), id="other-list"),
        pytest.param(_token({"rv": 5}), id="no-start"),
    ],
)
def test_a_bad_continue_token_is_invalid_argument_naming_continue(token: str) -> None:
    from services.apiserver.registry import _decode_continue

    with pytest.raises(ApiError) as raised:
        _decode_continue(token, b"/registry/pods/")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith("continue: ")


def test_a_continue_token_round_trips() -> None:
    from services.apiserver.registry import _decode_continue, _encode_continue

    token = _encode_continue(2**63 - 1, b"/registry/pods/ns/a\0")
    assert _decode_continue(token, b"/registry/pods/") == (2**63 - 1, b"/registry/pods/ns/a\0")


def test_every_error_message_fits_a_grpc_trailer() -> None:
    from services.apiserver.errors import MAX_MESSAGE_BYTES, not_found

    assert len(ApiError(grpc.StatusCode.INVALID_ARGUMENT, "é" * 100_000).message.encode()) <= MAX_MESSAGE_BYTES
    message = not_found("pods", "ns", "x" * 100_000).message
    assert "more characters" in message and len(message) < 1024


def test_many_field_errors_are_capped_with_how_many_were_left_out() -> None:
    from services.apiserver.errors import MAX_MESSAGE_BYTES, invalid
    from services.common.validation import FieldError, invalid as invalid_value

    errors = [invalid_value(f"spec.containers[{i}].name", "X" * 1000, "bad") for i in range(200)]
    message = invalid("Pod", "web", errors).message
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    assert message.startswith('Pod "web" is invalid: spec.containers[0].name: Invalid value')
    assert message.endswith(" more errors")
    shown = message.count("spec.containers[")
    assert f"and {200 - shown} more errors" in message
    two = invalid("Pod", "web", [FieldError("a", "b"), FieldError("c", "d")])
    assert two.message == 'Pod "web" is invalid: a: b; c: d'


def test_a_generated_name_fits_a_dns_label() -> None:
    from services.apiserver.registry import _generate_name

    assert len(_generate_name("a" * 253)) == 63
    name = _generate_name("web-")
    assert name.startswith("web-") and len(name) == 9
