"""The replicator's pods-by-controller index: what a sync reads instead of its namespace."""

from __future__ import annotations

from kybernetes.v1 import meta_pb2, pod_pb2
from services.replicator.ownerindex import OwnerIndex


def pod(name: str, namespace: str = "default", owner: str = "", controller: bool = True) -> pod_pb2.Pod:
    made = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace))
    if owner:
        made.metadata.owner_references.add(kind="ReplicationController", name="rc", uid=owner, controller=controller)
    return made


def names(keys: list[tuple[str, str]]) -> set[str]:
    return {name for _, name in keys}


def test_pods_are_found_by_their_controller_and_orphans_by_namespace() -> None:
    index = OwnerIndex()
    index.update("ADDED", pod("a", owner="uid-1"))
    index.update("ADDED", pod("b", owner="uid-1"))
    index.update("ADDED", pod("c", owner="uid-2"))
    index.update("ADDED", pod("free"))
    index.update("ADDED", pod("free", namespace="other"))
    # An owner that is not the controller does not make a pod owned (controller_ref).
    index.update("ADDED", pod("shared", owner="uid-3", controller=False))
    assert names(index.owned_by("uid-1")) == {"a", "b"}
    assert names(index.owned_by("uid-2")) == {"c"}
    assert index.owned_by("uid-3") == []
    assert names(index.orphans_in("default")) == {"free", "shared"}
    assert names(index.orphans_in("other")) == {"free"}
    assert len(index) == 6


def test_a_pod_moves_when_released_or_adopted_and_goes_when_deleted() -> None:
    index = OwnerIndex()
    index.update("ADDED", pod("a", owner="uid-1"))
    index.update("MODIFIED", pod("a"))  # released
    assert index.owned_by("uid-1") == [] and names(index.orphans_in("default")) == {"a"}
    index.update("MODIFIED", pod("a", owner="uid-2"))  # adopted by another
    assert index.orphans_in("default") == [] and names(index.owned_by("uid-2")) == {"a"}
    index.update("DELETED", pod("a", owner="uid-2"))
    assert index.owned_by("uid-2") == [] and len(index) == 0
    index.update("DELETED", pod("never-seen"))  # a replayed deletion changes nothing
    assert len(index) == 0


def test_the_index_holds_keys_once_whatever_the_updates() -> None:
    index = OwnerIndex()
    index.update("ADDED", pod("a", owner="uid-1"))
    newer = pod("a", owner="uid-1")
    newer.metadata.labels["v"] = "2"
    index.update("MODIFIED", newer)
    assert index.owned_by("uid-1") == [("default", "a")] and len(index) == 1
