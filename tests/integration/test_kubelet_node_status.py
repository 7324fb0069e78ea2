"""The kubelet's node status against a real API server: when it posts it (here every second,
--node-status-report-frequency) it reports its own conditions and keeps the ones other
components set on its Node (the range allocator's NetworkUnavailable). Its heartbeat proper,
the node Lease, is test_node_lease.py's."""

from __future__ import annotations

import grpc

from kybernetes.v1 import node_pb2
from services.common.resources import NODES
from tests.polling import eventually

from .kubelet_helpers import KubeletProcess


def condition(node: node_pb2.Node, kind: str) -> node_pb2.NodeCondition | None:
    return next((c for c in node.status.conditions if c.type == kind), None)


async def test_heartbeats_keep_conditions_the_kubelet_does_not_own(apiserver, api, node_name):
    kubelet = KubeletProcess(node_name, "--node-status-report-frequency", "1s", server=apiserver.address)
    try:
        async def registered() -> node_pb2.Node | None:
            node = await api.get(NODES, node_name, "")
            return node if condition(node, "Ready") is not None else None

        node = await eventually(registered, what="the node registered", retry_on=(grpc.aio.AioRpcError,))
        node.status.conditions.append(node_pb2.NodeCondition(
            type="NetworkUnavailable", status="True", reason="NoCIDRAvailable", message="the cluster CIDR is full",
        ))
        await api.update_status(node)
        first_heartbeat = condition(node, "Ready").last_heartbeat_time.ToDatetime()

        async def two_heartbeats_later() -> node_pb2.Node | None:
            current = await api.get(NODES, node_name, "")
            ready = condition(current, "Ready")
            if ready is None or (ready.last_heartbeat_time.ToDatetime() - first_heartbeat).total_seconds() < 2:
                return None
            return current

        current = await eventually(two_heartbeats_later, what="two more heartbeats", timeout=20)
        kept = condition(current, "NetworkUnavailable")
        assert kept is not None and kept.status == "True" and kept.reason == "NoCIDRAvailable"
    finally:
        kubelet.stop()
        kubelet.cleanup()
        await api.delete(NODES, node_name, "")
