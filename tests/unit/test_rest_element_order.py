"""Strategic merge's `$setElementOrder/<field>` (rest/patch.py): kubectl apply's way of
keeping a merged list in the manifest's order, as Kubernetes' normalizeElementOrder does."""

from __future__ import annotations

from kybernetes.v1 import pod_pb2
from services.apiserver.rest.patch import set_element_order, strategic_merge

POD = pod_pb2.Pod.DESCRIPTOR


def _env(*names: str) -> list[dict[str, str]]:
    return [{"name": name, "value": name.lower()} for name in names]


def _names(items: list[dict[str, str]]) -> list[str]:
    return [item["name"] for item in items]


def test_manifest_order_with_a_new_item() -> None:
    original = {"spec": {"containers": [{"name": "c", "env": _env("A", "B")}]}}
    patch = {"spec": {"containers": [{"name": "c", "$setElementOrder/env": [{"name": "B"}, {"name": "C"},
                                                                            {"name": "A"}],
                                      "env": _env("C")}],
                      "$setElementOrder/containers": [{"name": "c"}]}}
    merged = strategic_merge(original, patch, POD)
    assert _names(merged["spec"]["containers"][0]["env"]) == ["B", "C", "A"]
    assert "$setElementOrder/env" not in merged["spec"]["containers"][0]


def test_order_alone_reorders_and_server_only_items_keep_their_place() -> None:
    original = {"spec": {"containers": [{"name": "c", "ports": [
        {"containerPort": 1}, {"containerPort": 2}, {"containerPort": 3}]}]}}
    # Only the order changed (the manifest lists 2 before 1); 3 was added by someone else.
    patch = {"spec": {"containers": [{"name": "c", "$setElementOrder/ports": [{"containerPort": 2},
                                                                              {"containerPort": 1}]}]}}
    merged = strategic_merge(original, patch, POD)
    assert [p["containerPort"] for p in merged["spec"]["containers"][0]["ports"]] == [2, 1, 3]


def test_kubernetes_merge_of_sorted_slices() -> None:
    """Kubernetes' own example (mergeSortedSlice): a server-only item before a new one."""
    server = _env("A", "B", "EXTRA")
    merged = _env("A", "B", "EXTRA", "C")
    assert _names(set_element_order(merged, [{"name": n} for n in ("B", "A", "C")], "name", server)) == [
        "B", "A", "EXTRA", "C"]
    assert set_element_order(["x", "y", "z"], ["z", "x"], None, ["x", "y", "z"]) == ["y", "z", "x"]


def test_replaced_lists_are_left_as_sent() -> None:
    """A list without a merge strategy is replaced by the patch's: its order is the patch's."""
    original = {"spec": {"containers": [{"name": "c", "command": ["a", "b"]}]}}
    patch = {"spec": {"containers": [{"name": "c", "command": ["b", "a"], "$setElementOrder/command": ["a", "b"]}]}}
    assert strategic_merge(original, patch, POD)["spec"]["containers"][0]["command"] == ["b", "a"]
