"""The Lease kind (coordination.k8s.io/v1): the kinds table, Kubernetes' ValidateLease, the
defaults, manifests and `kubecfg get leases`; from objects alone."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import coordination_pb2, meta_pb2
from services.common.defaults import apply_defaults
from services.common.manifests import load_manifests
from services.common.resources import ALL_KINDS, LEASES, kind_for
from services.common.validation import validate
from services.kubecfg.describe import describe_lease
from services.kubecfg.printers import TableOptions, format_objects

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def lease(**spec: Any) -> coordination_pb2.Lease:
    return coordination_pb2.Lease(
        metadata=meta_pb2.ObjectMeta(name="kube-controller-manager", namespace="kube-system"),
        spec=coordination_pb2.LeaseSpec(**spec),
    )


def test_the_kind() -> None:
    assert LEASES in ALL_KINDS
    assert kind_for("leases") is LEASES and kind_for("Lease") is LEASES and kind_for("lease") is LEASES
    assert (LEASES.api_version, LEASES.namespaced, LEASES.has_status) == ("coordination.k8s.io/v1", True, False)
    assert LEASES.key("kube-system", "x") == "/registry/leases/kube-system/x"


@pytest.mark.parametrize(
    ("obj", "errors"),
    [
        (lease(), []),
        (lease(holder_identity="a" * 253, lease_duration_seconds=15, lease_transitions=0), []),
        (lease(holder_identity="a" * 254), ["spec.holderIdentity: Invalid value"]),
        (lease(lease_duration_seconds=0), ["spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"]),
        (lease(lease_duration_seconds=-3), ["spec.leaseDurationSeconds: Invalid value: -3: must be greater than 0"]),
        (lease(lease_transitions=-1), ["spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0"]),
        (lease(renew_time=Timestamp(seconds=1, nanos=-5)), ["spec.renewTime.nanos: Invalid value"]),
        (lease(acquire_time=Timestamp(seconds=10**12)), ["spec.acquireTime.seconds: Invalid value"]),
        (
            coordination_pb2.Lease(metadata=meta_pb2.ObjectMeta(name="Bad_Name")),
            ['metadata.name: Invalid value: "Bad_Name"'],
        ),
        (
            coordination_pb2.Lease(api_version="v1", metadata=meta_pb2.ObjectMeta(name="x")),
            ['apiVersion: Unsupported value: "v1"'],
        ),
    ],
)
def test_validate_lease(obj: coordination_pb2.Lease, errors: list[str]) -> None:
    found = [str(e) for e in validate(obj)]
    assert len(found) == len(errors), found
    for text, expected in zip(found, errors, strict=True):
        assert text.startswith(expected), found


def test_defaults_fill_type_meta_and_namespace_only() -> None:
    obj = coordination_pb2.Lease(metadata=meta_pb2.ObjectMeta(name="x"))
    apply_defaults(obj)
    assert (obj.api_version, obj.kind, obj.metadata.namespace) == ("coordination.k8s.io/v1", "Lease", "default")
    assert not obj.spec.HasField("lease_duration_seconds") and not obj.spec.HasField("lease_transitions")


def test_a_kubernetes_lease_manifest_reads() -> None:
    text = """
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: kube-scheduler, namespace: kube-system}
spec:
  holderIdentity: host_1234
  leaseDurationSeconds: 15
  leaseTransitions: 2
  renewTime: "2024-05-01T11:59:58.123456Z"
"""
    [obj] = load_manifests(text)
    assert isinstance(obj, coordination_pb2.Lease)
    assert obj.spec.holder_identity == "host_1234" and obj.spec.lease_transitions == 2
    assert obj.spec.renew_time.nanos == 123_456_000
    assert validate(obj) == []


def test_kubecfg_get_leases_shows_holder_and_age() -> None:
    created = Timestamp()
    created.FromDatetime(NOW - dt.timedelta(minutes=5))
    held = lease(holder_identity="host-a_101_aaaa")
    held.metadata.creation_timestamp.CopyFrom(created)
    free = lease()
    free.metadata.name = "kube-replicator"
    free.metadata.creation_timestamp.CopyFrom(created)
    assert format_objects(LEASES, [held, free], NOW, TableOptions()) == [
        "NAME                      HOLDER            AGE",
        "kube-controller-manager   host-a_101_aaaa   5m",
        "kube-replicator                             5m",
    ]
    assert format_objects(LEASES, [held], NOW, TableOptions(all_namespaces=True))[1].split() == [
        "kube-system", "kube-controller-manager", "host-a_101_aaaa", "5m",
    ]


def test_kubecfg_describe_lease() -> None:
    held = lease(
        holder_identity="host-a_101_aaaa",
        lease_duration_seconds=15,
        lease_transitions=2,
        renew_time=Timestamp(seconds=1_714_564_798),
    )
    text = describe_lease(held)
    lines = [line.split(None, 1) if ":" in line else [line] for line in text.splitlines()]
    assert lines[0] == ["Name:", "kube-controller-manager"]
    assert lines[1] == ["Namespace:", "kube-system"]
    assert "  Holder Identity:         host-a_101_aaaa" in text.splitlines()
    assert "Lease Duration Seconds:  15" in text and "Lease Transitions:       2" in text
    assert "Renew Time:" in text and "Acquire Time" not in text
