"""The kubelet's node Lease (Kubernetes' KEP-589, the kubelet's nodelease controller).

Every node owns the Lease `kube-node-lease/<node>` (coordination.k8s.io/v1): holder
identity the node's name, a lease duration of 40 s, and an owner reference to its Node.
The kubelet renews it (renewTime = now) every quarter of the duration, 10 s by default
(and no less often than --node-status-frequency, so that a kubelet told to heartbeat
faster does). That renewal is the node's heartbeat: a small object that only the node
lifecycle controller and the scheduler watch, where the NodeStatus every proxy watches
is written only when it changes (node.py). The node lifecycle controller takes the later
of the Lease's renewTime and the Ready condition's heartbeat.

The controller is client-go's lease controller: the first pass gets the lease (creating
it when missing), later ones update the copy last written; a conflict or a failure
gets it again and retries, five times at most, then waits with back-off (200 ms to 7 s)
before the next try. The renewal itself is `renewed_lease(...)`, pure.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import coordination_pb2, meta_pb2
from services.common.log import get_logger
from services.common.resources import LEASES
from services.common.runtime import Backoff

log = get_logger(module="kubelet.nodelease")

# Kubernetes' kube-node-lease namespace and the kubelet's defaults.
NODE_LEASE_NAMESPACE = "kube-node-lease"
DEFAULT_LEASE_DURATION_SECONDS = 40
RENEW_INTERVAL_FRACTION = 0.25
# client-go's maxUpdateRetries and the ensure back-off's bounds.
UPDATE_RETRIES = 5
ENSURE_BACKOFF_INITIAL = 0.2
ENSURE_BACKOFF_MAX = 7.0

Lease = coordination_pb2.Lease


def micro_now() -> Timestamp:
    """Now, to the microsecond: a Lease's renewTime is a MicroTime in Kubernetes."""
    stamp = Timestamp()
    stamp.FromMicroseconds(int(time.time() * 1_000_000))
    return stamp


def renew_interval(lease_duration_seconds: int, node_status_frequency: float | None = None) -> float:
    """A quarter of the lease's duration, or the node status frequency when that is shorter."""
    interval = lease_duration_seconds * RENEW_INTERVAL_FRACTION
    if node_status_frequency is not None and node_status_frequency > 0:
        interval = min(interval, node_status_frequency)
    return interval


def node_owner_reference(node_name: str, node_uid: str) -> meta_pb2.OwnerReference:
    return meta_pb2.OwnerReference(api_version="v1", kind="Node", name=node_name, uid=node_uid)


def renewed_lease(
    base: Lease | None, node_name: str, lease_duration_seconds: int, now: Timestamp, node_uid: str | None
) -> Lease:
    """The lease to write: `base` (the one read or last written; None: a new one) held by
    the node, renewed at `now`, owned by its Node when the Node's uid is known."""
    lease = Lease()
    if base is not None:
        lease.CopyFrom(base)
    else:
        lease.metadata.name = node_name
        lease.metadata.namespace = NODE_LEASE_NAMESPACE
    lease.api_version, lease.kind = LEASES.api_version, LEASES.name
    lease.spec.holder_identity = node_name
    lease.spec.lease_duration_seconds = lease_duration_seconds
    lease.spec.renew_time.CopyFrom(now)
    if node_uid:
        owners = lease.metadata.owner_references
        if not any(ref.kind == "Node" and ref.name == node_name and ref.uid == node_uid for ref in owners):
            # Kubernetes sets it when the lease has none; a Node registered again (a new uid)
            # is the new owner here too, rather than a reference to one that is gone.
            kept = [ref for ref in owners if not (ref.kind == "Node" and ref.name == node_name)]
            del owners[:]
            owners.extend([*kept, node_owner_reference(node_name, node_uid)])
    return lease


class NodeLease:
    """Creates and renews this node's Lease until cancelled."""

    def __init__(
        self,
        client: Any,
        node_name: str,
        *,
        lease_duration_seconds: int = DEFAULT_LEASE_DURATION_SECONDS,
        interval: float | None = None,
        node_uid: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.client = client
        self.node_name = node_name
        self.lease_duration_seconds = lease_duration_seconds
        self.interval = interval if interval is not None else renew_interval(lease_duration_seconds)
        self._node_uid = node_uid
        self._latest: Lease | None = None  # the lease as last written (None: read it first)
        self.renewals = 0
        self._log = log.bind(node=node_name)

    async def run(self) -> None:
        backoff = Backoff(ENSURE_BACKOFF_INITIAL, ENSURE_BACKOFF_MAX)
        while True:
            try:
                await self.sync()
                backoff.reset()
                await asyncio.sleep(self.interval)
            except grpc.aio.AioRpcError as error:
                delay = min(backoff.failure(), self.interval)
                self._log.warning("node_lease_renew_failed", code=error.code().name, detail=error.details(),
                                  retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    async def sync(self) -> Lease:
        """One renewal: an update of the lease last written, or (first, or after a conflict or
        an error) of the one read; created, and so renewed, when there is none."""
        error: grpc.aio.AioRpcError | None = None
        for _ in range(UPDATE_RETRIES):
            try:
                if self._latest is None:
                    stored = await self._get()
                    if stored is None:
                        self._latest = await self._create()
                        return self._latest
                    self._latest = stored
                lease = renewed_lease(
                    self._latest, self.node_name, self.lease_duration_seconds, micro_now(), self._node_uid()
                )
                self._latest = await self.client.update(lease)
                self.renewals += 1
                return self._latest
            except grpc.aio.AioRpcError as failure:
                error, self._latest = failure, None
                # A conflict (someone else wrote it) or a lease deleted meanwhile: read it again.
                if failure.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND,
                                          grpc.StatusCode.ALREADY_EXISTS):
                    raise
        assert error is not None
        raise error

    async def _get(self) -> Lease | None:
        try:
            return await self.client.get(LEASES, self.node_name, NODE_LEASE_NAMESPACE)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return None

    async def _create(self) -> Lease:
        lease = renewed_lease(None, self.node_name, self.lease_duration_seconds, micro_now(), self._node_uid())
        created = await self.client.create(lease)
        self.renewals += 1
        self._log.info("node_lease_created", namespace=NODE_LEASE_NAMESPACE)
        return created
