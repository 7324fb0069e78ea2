"""Object rules: where Endpoints may point (validation and the node-address admission
check) and what an update may change in a pod."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from kybernetes.v1 import endpoints_pb2, meta_pb2, node_pb2, pod_pb2
from services.apiserver.auth.admission import CREATE, DELETE, UPDATE, AdmissionRequest
from services.apiserver.auth.objectrules import CONTROLLER_MANAGER_USER, EndpointsNodeAddresses
from services.apiserver.errors import ApiError
from services.common.identity import SYSTEM_MASTERS, UserInfo, authenticated
from services.common.resources import ENDPOINTS, NODES
from services.common.validation import MIRROR_POD_ANNOTATION, validate_endpoints, validate_pod_update

from .test_noderestriction import fake_registries


def endpoints(*ips: str, not_ready: tuple[str, ...] = (), port: int = 8080) -> endpoints_pb2.Endpoints:
    return endpoints_pb2.Endpoints(
        metadata=meta_pb2.ObjectMeta(name="web", namespace="ns"),
        subsets=[
            endpoints_pb2.EndpointSubset(
                addresses=[endpoints_pb2.EndpointAddress(ip=ip) for ip in ips],
                not_ready_addresses=[endpoints_pb2.EndpointAddress(ip=ip) for ip in not_ready],
                ports=[endpoints_pb2.EndpointPort(port=port, protocol="TCP")],
            )
        ],
    )


# -- addresses that mean this host ------------------------------------------------------

LOOPBACK = "may not be in the loopback range (127.0.0.0/8, ::1/128)"
LINK_LOCAL = "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
MULTICAST = "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"
UNSPECIFIED = "may not be unspecified (0.0.0.0, ::)"


@pytest.mark.parametrize(
    "ip, reason",
    [
        ("127.0.0.1", LOOPBACK),
        ("127.200.0.9", LOOPBACK),
        ("::1", LOOPBACK),
        ("::ffff:127.0.0.1", LOOPBACK),
        ("169.254.169.254", LINK_LOCAL),
        ("fe80::1", LINK_LOCAL),
        ("224.0.0.1", MULTICAST),
        ("ff02::1", MULTICAST),
        ("0.0.0.0", UNSPECIFIED),
        ("::", UNSPECIFIED),
    ],
)
def test_endpoints_may_not_point_at_this_host_or_its_link(ip: str, reason: str) -> None:
    errors = [str(e) for e in validate_endpoints(endpoints("10.244.0.5", ip))]
    assert errors == [f'subsets[0].addresses[1].ip: Invalid value: "{ip}": {reason}']
    errors = [str(e) for e in validate_endpoints(endpoints("10.244.0.5", not_ready=(ip,)))]
    assert errors == [f'subsets[0].notReadyAddresses[0].ip: Invalid value: "{ip}": {reason}']


@pytest.mark.parametrize("ip", ["10.244.0.5", "192.0.2.10", "fd00::5", "2001:db8::1", "224.0.1.1", "ff05::2"])
def test_other_endpoint_addresses_are_valid(ip: str) -> None:
    assert validate_endpoints(endpoints(ip)) == []


# -- a node's own address --------------------------------------------------------------


def node(name: str, *addresses: tuple[str, str]) -> node_pb2.Node:
    return node_pb2.Node(
        metadata=meta_pb2.ObjectMeta(name=name),
        status=node_pb2.NodeStatus(addresses=[node_pb2.NodeAddress(type=t, address=a) for t, a in addresses]),
    )


@pytest.fixture
def registries() -> dict[str, Any]:
    registries = fake_registries()
    nodes = registries[NODES.name].cache
    nodes.put(node("node-1", ("InternalIP", "10.0.0.5"), ("Hostname", "node-1.example")))
    nodes.put(node("node-2", ("InternalIP", "fd00::2")))
    return registries


BOB = authenticated("bob", [])


def admit(plugin: EndpointsNodeAddresses, obj: Any, user: UserInfo = BOB, operation: str = CREATE, old: Any = None):
    plugin.admit(AdmissionRequest(user, operation, ENDPOINTS, obj, old))


def refusal(plugin: EndpointsNodeAddresses, obj: Any, **request: Any) -> str:
    with pytest.raises(ApiError) as caught:
        admit(plugin, obj, **request)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    return caught.value.message


def test_a_user_may_not_point_a_service_at_a_node(registries: dict[str, Any]) -> None:
    plugin = EndpointsNodeAddresses(registries)
    assert refusal(plugin, endpoints("10.244.0.5", "10.0.0.5")) == (
        'endpoints "web" in namespace "ns": subsets[0].addresses[1].ip: "10.0.0.5" is an address of node "node-1"; '
        'user "bob" may not point a service at a node (only the endpoints controller and administrators may)'
    )
    assert 'subsets[0].notReadyAddresses[0].ip: "fd00::2" is an address of node "node-2"' in refusal(
        plugin, endpoints("10.244.0.5", not_ready=("fd00::2",))
    )
    # The same address written another way is the same address.
    assert '"::ffff:10.0.0.5" is an address of node "node-1"' in refusal(plugin, endpoints("::ffff:10.0.0.5"))
    assert '"fd00:0::2" is an address of node "node-2"' in refusal(plugin, endpoints("fd00:0::2"))
    admit(plugin, endpoints("10.244.0.5", "10.0.0.6"))


def test_the_endpoints_controller_and_administrators_may(registries: dict[str, Any]) -> None:
    plugin = EndpointsNodeAddresses(registries)
    admit(plugin, endpoints("10.0.0.5"), user=authenticated(CONTROLLER_MANAGER_USER, []))
    admit(plugin, endpoints("10.0.0.5"), user=authenticated("admin", [SYSTEM_MASTERS]))


def test_node_addresses_follow_the_node_cache(registries: dict[str, Any]) -> None:
    plugin = EndpointsNodeAddresses(registries)
    admit(plugin, endpoints("10.0.0.9"))
    registries[NODES.name].cache.put(node("node-3", ("InternalIP", "10.0.0.9")))
    assert 'is an address of node "node-3"' in refusal(plugin, endpoints("10.0.0.9"))
    registries[NODES.name].cache.remove("", "node-3")
    admit(plugin, endpoints("10.0.0.9"))


def test_an_update_is_checked_unless_it_leaves_addresses_and_ports_alone(registries: dict[str, Any]) -> None:
    plugin = EndpointsNodeAddresses(registries)
    stored = endpoints("10.0.0.5")  # the controller's, for a pod on node-1's network
    relabelled = endpoints("10.0.0.5")
    relabelled.metadata.labels["team"] = "a"
    admit(plugin, relabelled, operation=UPDATE, old=stored)
    admit(plugin, stored, operation=DELETE)
    # Another port on the node's address would reach whatever else listens there.
    refusal(plugin, endpoints("10.0.0.5", port=2379), operation=UPDATE, old=stored)


# -- what a pod update may change ------------------------------------------------------


def pod(**spec: Any) -> pod_pb2.Pod:
    return pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name="web", namespace="ns"),
        spec=pod_pb2.PodSpec(
            containers=[pod_pb2.Container(name="c", image="busybox:1", command=["sleep", "1"])],
            restart_policy="Always",
            **spec,
        ),
    )


FORBIDDEN_SPEC = (
    "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
)


def test_images_labels_and_annotations_may_change() -> None:
    new = pod()
    new.spec.containers[0].image = "busybox:2"
    new.metadata.labels["tier"] = "web"
    new.metadata.annotations["note"] = "x"
    assert validate_pod_update(new, pod()) == []


@pytest.mark.parametrize(
    "edit, changed",
    [
        pytest.param(lambda p: p.spec.containers[0].command.append("x"), "spec.containers[0].command", id="command"),
        pytest.param(
            lambda p: setattr(p.spec.volumes.add(name="root").host_path, "path", "/"), "spec.volumes", id="hostPath"
        ),
        pytest.param(
            lambda p: p.spec.containers[0].ports.add(container_port=80, host_port=80),
            "spec.containers[0].ports",
            id="hostPort",
        ),
        pytest.param(
            lambda p: setattr(p.spec.containers[0].security_context, "privileged", True),
            "spec.containers[0].securityContext",
            id="privileged",
        ),
        pytest.param(lambda p: setattr(p.spec, "host_pid", True), "spec.hostPID", id="hostPID"),
        pytest.param(lambda p: setattr(p.spec, "node_name", "node-1"), "spec.nodeName", id="nodeName-set-by-bind"),
        pytest.param(
            lambda p: setattr(p.spec, "termination_grace_period_seconds", 10),
            "spec.terminationGracePeriodSeconds",
            id="grace",
        ),
        pytest.param(lambda p: p.spec.node_selector.update(disk="ssd"), "spec.nodeSelector", id="map"),
        pytest.param(lambda p: setattr(p.spec, "restart_policy", "Never"), "spec.restartPolicy", id="restartPolicy"),
    ],
)
def test_anything_else_in_the_spec_is_immutable(edit: Any, changed: str) -> None:
    new = pod()
    edit(new)
    assert [str(e) for e in validate_pod_update(new, pod())] == [f"{FORBIDDEN_SPEC} (changed: {changed})"]


def test_many_changes_are_named_up_to_a_few() -> None:
    new = pod(host_pid=True, host_ipc=True, host_network=True, hostname="h", dns_policy="Default", node_name="n")
    [error] = validate_pod_update(new, pod())
    assert str(error).endswith(
        "(changed: spec.nodeName, spec.hostname, spec.dnsPolicy, spec.hostNetwork, spec.hostPID and 1 more)"
    )


def test_containers_may_not_be_added_or_removed() -> None:
    new = pod()
    new.spec.containers.add(name="side", image="busybox")
    assert [str(e) for e in validate_pod_update(new, pod())] == [
        "spec.containers: Forbidden: pod updates may not add or remove containers"
    ]


def test_a_negative_grace_period_may_become_one() -> None:
    assert validate_pod_update(pod(termination_grace_period_seconds=1), pod(termination_grace_period_seconds=-5)) == []
    assert validate_pod_update(pod(termination_grace_period_seconds=2), pod(termination_grace_period_seconds=-5))


@pytest.mark.parametrize(
    "old, new, reason",
    [
        pytest.param(None, "h", "may not add mirror pod annotation", id="add"),
        pytest.param("h", None, "may not remove or update mirror pod annotation", id="remove"),
        pytest.param("h", "other", "may not remove or update mirror pod annotation", id="update"),
    ],
)
def test_the_mirror_annotation_is_fixed_at_creation(old: str | None, new: str | None, reason: str) -> None:
    before, after = pod(), pod()
    if old is not None:
        before.metadata.annotations[MIRROR_POD_ANNOTATION] = old
    if new is not None:
        after.metadata.annotations[MIRROR_POD_ANNOTATION] = new
    assert [str(e) for e in validate_pod_update(after, before)] == [
        f"metadata.annotations[kubernetes.io/config.mirror]: Forbidden: {reason}"
    ]
    assert validate_pod_update(before, before) == []
