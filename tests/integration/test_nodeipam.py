"""The node range allocator in a real API server over real etcd: every Node gets its own pod
range (spec.podCIDR) from the cluster CIDR, keeps it across an API server restart, frees it
when deleted, waits with NetworkUnavailable=True when none is left; and the API refuses a
podCIDR outside the cluster CIDR, overlapping another Node's, or changed once set."""

from __future__ import annotations

import asyncio
import ipaddress
import pathlib

import grpc
import pytest

from kybernetes.v1 import meta_pb2, node_pb2
from services.common.client import ApiClient
from services.common.resources import NODES
from tests.polling import eventually

from .control_helpers import API_WAIT, FAR_GRACE, ControlPlane

CLUSTER = ipaddress.ip_network("10.244.0.0/16")
TINY = "10.250.0.0/23"  # two /24s


@pytest.fixture(scope="module")
def plane():
    control = ControlPlane("nodeipam", FAR_GRACE)
    yield control
    control.stop()


@pytest.fixture(scope="module")
def tiny_plane():
    control = ControlPlane("nodeipam", FAR_GRACE, f"--cluster-cidr={TINY}", "--node-cidr-mask-size=24")
    yield control
    control.stop()


@pytest.fixture
def api_address(plane) -> str:
    return plane.address


def new_node(name: str, pod_cidr: str = "") -> node_pb2.Node:
    return node_pb2.Node(metadata=meta_pb2.ObjectMeta(name=name), spec=node_pb2.NodeSpec(pod_cidr=pod_cidr))


async def node_names(api: ApiClient) -> list[str]:
    return [n.metadata.name for n in (await api.list(NODES, "")).items]


class Nodes:
    """This test's nodes, deleted when it ends; the plane has none of another test's when it starts
    (ranges are handed out lowest first: a leftover would change which one a test gets)."""

    def __init__(self, api: ApiClient, prefix: str) -> None:
        self.api = api
        self.prefix = prefix

    def name(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    async def add(self, short: str, pod_cidr: str = "") -> str:
        name = self.name(short)
        await self.api.create(new_node(name, pod_cidr))
        return name

    async def range_of(self, name: str) -> str:
        async def check() -> str:
            node = await self.api.get(NODES, name)
            assert node.spec.pod_cidr, f"{name} has no podCIDR yet; conditions: {list(node.status.conditions)}"
            return str(node.spec.pod_cidr)

        return await eventually(check, what=f"a podCIDR on {name}", **API_WAIT)

    async def delete(self, name: str) -> None:
        await self.api.delete(NODES, name)

    async def delete_all(self) -> None:
        for name in await node_names(self.api):
            if name.startswith(self.prefix):
                await self.api.delete(NODES, name)


async def nodes_fixture(api: ApiClient, prefix: str):
    async def empty() -> bool:
        assert await node_names(api) == []
        return True

    await eventually(empty, what="no nodes left by another test", **API_WAIT)
    created = Nodes(api, prefix)
    try:
        yield created
    finally:
        await created.delete_all()


@pytest.fixture
async def nodes(api, namespace):
    async for created in nodes_fixture(api, namespace):
        yield created


@pytest.fixture
async def tiny_api(tiny_plane):
    client = ApiClient(tiny_plane.address)
    yield client
    await client.close()


@pytest.fixture
async def tiny_nodes(tiny_api, namespace):
    async for created in nodes_fixture(tiny_api, namespace):
        yield created


def network_unavailable(node: node_pb2.Node) -> node_pb2.NodeCondition | None:
    for condition in node.status.conditions:
        if condition.type == "NetworkUnavailable":
            return condition
    return None


def assigned_in_log(control: ControlPlane, start: int) -> int:
    path = pathlib.Path(control.workdir) / f"apiserver-{start}.log"
    return path.read_text(errors="replace").count("node_cidr_assigned")


async def test_twenty_nodes_at_once_get_twenty_ranges_kept_across_a_restart(plane, api, nodes):
    names = [nodes.name(f"n{i:02}") for i in range(20)]
    await asyncio.gather(*(api.create(new_node(name)) for name in names))
    ranges = {name: await nodes.range_of(name) for name in names}
    networks = [ipaddress.ip_network(cidr) for cidr in ranges.values()]
    assert len(set(networks)) == 20, ranges
    assert all(n.subnet_of(CLUSTER) and n.prefixlen == 24 for n in networks), ranges  # type: ignore[arg-type]

    plane.stop_apiserver()
    plane.start_apiserver()
    restarts = plane._apiserver_starts
    # A Node made after the restart proves the controller is back, and gets a range of its own.
    late = await nodes.add("late")
    late_range = ipaddress.ip_network(await nodes.range_of(late))
    assert late_range not in networks
    for name in names:
        assert (await api.get(NODES, name)).spec.pod_cidr == ranges[name]
    assert assigned_in_log(plane, restarts) == 1, plane.logs()  # only the late Node's


async def test_a_deleted_nodes_range_goes_to_the_next_node(api, nodes):
    first, second, third = [await nodes.add(short) for short in ("a", "b", "c")]
    ranges = [await nodes.range_of(name) for name in (first, second, third)]
    assert len(set(ranges)) == 3
    await nodes.delete(second)
    newcomer = await nodes.add("d")
    assert await nodes.range_of(newcomer) == ranges[1]


async def test_a_node_registered_with_a_free_range_keeps_it(api, nodes):
    chosen = "10.244.200.0/24"
    own = await nodes.add("own", chosen)
    other = await nodes.add("other")
    assert await nodes.range_of(other) != chosen
    assert (await api.get(NODES, own)).spec.pod_cidr == chosen


@pytest.mark.parametrize(
    ("pod_cidr", "reason"),
    [
        ("10.1.0.0/24", "must be inside the cluster CIDR 10.244.0.0/16"),
        ("10.244.0.0/23", "must be a /24"),
    ],
)
async def test_a_range_outside_the_cluster_cidr_is_refused(api, nodes, pod_cidr, reason):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await nodes.add("bad", pod_cidr)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.podCIDR" in (raised.value.details() or "") and reason in (raised.value.details() or "")


async def test_an_overlapping_range_is_refused(api, nodes):
    first = await nodes.add("first")
    taken = await nodes.range_of(first)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await nodes.add("copycat", taken)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = raised.value.details() or ""
    assert "spec.podCIDR" in details and f'overlaps node "{first}"' in details, details


async def test_a_set_range_cannot_be_changed(api, nodes):
    name = await nodes.add("fixed")
    taken = await nodes.range_of(name)
    node = await api.get(NODES, name)
    node.spec.pod_cidr = "10.244.250.0/24"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.update(node)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.podCIDR: Forbidden: may not be changed once set" in (raised.value.details() or "")
    # Other changes to the Node still go through; the range stays.
    node = await api.get(NODES, name)
    node.spec.unschedulable = True
    assert (await api.update(node)).spec.pod_cidr == taken


async def test_a_full_cluster_cidr_marks_the_node_until_a_range_is_freed(tiny_api, tiny_nodes):
    first, second = await tiny_nodes.add("a"), await tiny_nodes.add("b")
    assert {await tiny_nodes.range_of(first), await tiny_nodes.range_of(second)} == {
        "10.250.0.0/24",
        "10.250.1.0/24",
    }
    third = await tiny_nodes.add("c")

    async def marked() -> node_pb2.NodeCondition:
        node = await tiny_api.get(NODES, third)
        condition = network_unavailable(node)
        assert condition is not None and condition.status == "True", list(node.status.conditions)
        assert not node.spec.pod_cidr
        return condition

    condition = await eventually(marked, what=f"NetworkUnavailable on {third}", **API_WAIT)
    assert condition.reason == "NoCIDRAvailable"
    assert f"cluster CIDR {TINY} is full" in condition.message

    freed = await tiny_nodes.range_of(first)
    await tiny_nodes.delete(first)
    assert await tiny_nodes.range_of(third) == freed

    async def cleared() -> bool:
        node = await tiny_api.get(NODES, third)
        assert network_unavailable(node) is None, list(node.status.conditions)
        return True

    await eventually(cleared, what=f"NetworkUnavailable taken back from {third}", **API_WAIT)
