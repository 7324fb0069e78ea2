"""A ceiling on a replication controller's replicas: a typo of a few zeros is refused.

Kubernetes bounds what one request can make happen through ResourceQuota objects; this
cluster has no quota yet, so `replicas: 1000000` would have the replicator create pods
until etcd or the nodes gave out. The ceiling (`--max-replicas`) is checked on create,
on update and on the scale subresource, only when replicas grow past it: a controller
already above a lowered ceiling can still be scaled down. Refused with RESOURCE_EXHAUSTED,
gRPC's code for "a quota ran out", naming the field, the value and the limit.
"""

from __future__ import annotations

import grpc

from services.common.resources import REPLICATION_CONTROLLERS

from ..errors import ApiError
from .admission import CREATE, UPDATE, AdmissionPlugin, AdmissionRequest

# Kubernetes' scalability envelope is 150,000 pods in a cluster; one controller of more
# than 10,000 is far past anything this cluster runs (issue 16 plans for 30,000 in all).
DEFAULT_MAX_REPLICAS = 10_000


class ReplicasLimit:
    name = "ReplicasLimit"

    def __init__(self, max_replicas: int) -> None:
        self.max_replicas = max_replicas

    def admit(self, request: AdmissionRequest) -> None:
        if request.kind is not REPLICATION_CONTROLLERS or request.operation not in (CREATE, UPDATE):
            return
        replicas = request.obj.spec.replicas
        before = request.old.spec.replicas if request.old is not None else 0
        if replicas > self.max_replicas and replicas > before:
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"spec.replicas: {replicas} exceeds this cluster's limit of {self.max_replicas} pods per "
                "replication controller (the API server's --max-replicas)",
            )


def admission_plugins(max_replicas: int) -> list[AdmissionPlugin]:
    return [ReplicasLimit(max_replicas)]
