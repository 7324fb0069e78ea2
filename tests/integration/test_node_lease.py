"""Node leases (KEP-589) against a real API server: a kubelet (the real Kubelet class on the
hollow node's stand-ins, in this process, with its own node identity) renews its Lease
`kube-node-lease/<node>` and leaves its NodeStatus alone while nothing changes; the node
lifecycle controller keeps it Ready on the Lease alone and marks it Unknown once the
Lease stops; and one node cannot touch another's Lease."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from pathlib import Path

import grpc
import pytest

from kybernetes.v1 import coordination_pb2, meta_pb2, node_pb2
from services.common.client import ApiClient
from services.common.identity import SYSTEM_NODES
from services.common.kubeconfig import ClusterAccess
from services.common.resources import LEASES, NODES
from services.kubelet.hollow import HollowKubelet, hollow_config
from tests.polling import eventually
from tools.processes import dev_pki

from .control_helpers import API_WAIT, ControlPlane

GRACE = 3
LEASE_NAMESPACE = "kube-node-lease"


@pytest.fixture(scope="module")
def plane():
    control = ControlPlane(
        "nodeipam,nodelifecycle", f"--node-monitor-grace-period={GRACE}", "--pod-eviction-timeout=60"
    )
    yield control
    control.stop()


@pytest.fixture
def api_address(plane) -> str:
    return plane.address


def node_access(address: str, name: str) -> ClusterAccess:
    user = f"system:node:{name}"
    return ClusterAccess(address, dev_pki().client_credentials(user, (SYSTEM_NODES,)), user=user)


def ready(node: node_pb2.Node) -> node_pb2.NodeCondition:
    return next(c for c in node.status.conditions if c.type == "Ready")


async def test_the_lease_is_the_heartbeat_and_a_node_whose_lease_stops_is_unknown(plane, api):
    name = f"lease-{uuid.uuid4().hex[:8]}"
    root = tempfile.mkdtemp(prefix="kyb-lease-")
    # The status is computed every half second; the Lease renewed as often (a quarter of its
    # 40 s, or the status frequency when sooner); the status is posted only when it changes.
    config = hollow_config(name, str(Path(root) / name), server=plane.address,
                           access=node_access(plane.address, name), node_status_frequency=0.5)
    kubelet = HollowKubelet(config)
    await kubelet.start()
    stopped = False
    try:
        async def ready_node() -> node_pb2.Node | None:
            node = await api.get(NODES, name, "")
            return node if node.spec.pod_cidr and ready(node).status == "True" else None

        node = await eventually(ready_node, what="the node Ready with its range", **API_WAIT)

        # Made at start, maybe before the Node: its owner reference comes with a renewal once
        # the kubelet knows the Node's uid.
        async def owned_lease() -> coordination_pb2.Lease:
            lease = await api.get(LEASES, name, LEASE_NAMESPACE)
            owners = [(o.kind, o.name, o.uid) for o in lease.metadata.owner_references]
            assert owners == [("Node", name, node.metadata.uid)], owners
            return lease

        lease = await eventually(owned_lease, what="its lease, owned by its Node", **API_WAIT)
        assert (lease.spec.holder_identity, lease.spec.lease_duration_seconds) == (name, 40)

        # Longer than the grace period: the Lease is renewed, the NodeStatus is not rewritten,
        # and the node stays Ready on the Lease alone.
        await asyncio.sleep(GRACE + 1.5)
        renewed = await api.get(LEASES, name, LEASE_NAMESPACE)
        assert renewed.spec.renew_time.ToDatetime() > lease.spec.renew_time.ToDatetime()
        assert renewed.metadata.resource_version > lease.metadata.resource_version
        later = await api.get(NODES, name, "")
        assert later.metadata.resource_version == node.metadata.resource_version, "the NodeStatus was written again"
        assert ready(later).status == "True"
        assert kubelet.lease is not None and kubelet.reporter is not None
        assert kubelet.lease.renewals >= 3

        # The kubelet stops: no more renewals. The node is Unknown after the grace period,
        # and its status heartbeat is still the one posted before.
        await kubelet.stop()
        stopped = True
        last_posted = ready(later).last_heartbeat_time

        async def unknown() -> node_pb2.NodeCondition | None:
            condition = ready(await api.get(NODES, name, ""))
            return condition if condition.status == "Unknown" else None

        condition = await eventually(unknown, what="the silent node Unknown", **API_WAIT)
        assert condition.reason == "NodeStatusUnknown"
        assert condition.last_heartbeat_time == last_posted
    finally:
        if not stopped:
            await kubelet.stop()
        await api.delete(NODES, name, "")
        await api.delete(LEASES, name, LEASE_NAMESPACE)
        shutil.rmtree(root, ignore_errors=True)


def lease_of(name: str, namespace: str = LEASE_NAMESPACE) -> coordination_pb2.Lease:
    return coordination_pb2.Lease(
        api_version="coordination.k8s.io/v1", kind="Lease",
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace),
        spec=coordination_pb2.LeaseSpec(holder_identity=name, lease_duration_seconds=40),
    )


async def test_a_node_writes_only_its_own_lease(plane, api):
    mine, theirs = f"own-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    node = ApiClient.for_access(node_access(plane.address, mine))
    try:
        created = await node.create(lease_of(mine))
        created.spec.lease_duration_seconds = 30
        await node.update(created)
        await api.create(lease_of(theirs))

        async def refused(call, verb: str, target: str, namespace: str = LEASE_NAMESPACE) -> str:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call
            assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, error.value.details()
            details = error.value.details()
            assert (
                f'user "system:node:{mine}" cannot {verb} resource "leases" named "{target}" '
                f'in namespace "{namespace}"'
            ) in details, details
            return details

        other = await api.get(LEASES, theirs, LEASE_NAMESPACE)
        other.spec.holder_identity = mine
        details = await refused(node.update(other), "update", theirs)
        assert f'only its own Lease "{LEASE_NAMESPACE}/{mine}"' in details
        await refused(node.get(LEASES, theirs, LEASE_NAMESPACE), "get", theirs)
        await refused(node.delete(LEASES, theirs, LEASE_NAMESPACE), "delete", theirs)
        await refused(node.create(lease_of(theirs)), "create", theirs)
        await refused(node.create(lease_of(mine, "kube-system")), "create", mine, "kube-system")
        assert (await api.get(LEASES, theirs, LEASE_NAMESPACE)).spec.holder_identity == theirs
        await node.delete(LEASES, mine, LEASE_NAMESPACE)
    finally:
        await node.close()
        for name in (mine, theirs):
            try:
                await api.delete(LEASES, name, LEASE_NAMESPACE)
            except grpc.aio.AioRpcError:
                pass
