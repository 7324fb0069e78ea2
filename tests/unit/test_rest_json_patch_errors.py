"""A JSON patch that does not apply (422) says which operation failed, at which field, and why,
in one line: kubectl prints a 422's causes (`The pods "x" is invalid: spec.replicas: ...`)."""

from __future__ import annotations

import pytest

from services.apiserver.rest.patch import PatchError, json_patch

DOCUMENT = {"metadata": {"labels": {"a/b": "x"}}, "spec": {"replicas": 1, "containers": [{"name": "web"}]}}


@pytest.mark.parametrize(("patch", "field", "message"), [
    ([{"op": "test", "path": "/spec/replicas", "value": 3}], "spec.replicas",
     "operation 0 (test /spec/replicas): the value is 1, not 3"),
    ([{"op": "replace", "path": "/spec/replicas", "value": 2}, {"op": "test", "path": "/spec/paused", "value": True}],
     "spec.paused", "operation 1 (test /spec/paused): no such path"),
    ([{"op": "remove", "path": "/spec/containers/0/image"}], "spec.containers[0].image",
     "operation 0 (remove /spec/containers/0/image): can't remove a non-existent object 'image'"),
    ([{"op": "replace", "path": "/metadata/labels/a~1b/c", "value": 1}], "metadata.labels.a/b.c",
     "operation 0 (replace /metadata/labels/a~1b/c): no such path"),
])
def test_a_failed_operation_is_named_with_its_field(patch: list, field: str, message: str) -> None:
    with pytest.raises(PatchError) as raised:
        json_patch(DOCUMENT, patch)
    assert (raised.value.code, raised.value.field) == (422, field)
    assert str(raised.value) == f"the JSON patch does not apply: {message}"
    assert DOCUMENT["spec"]["replicas"] == 1  # the object patched is a copy


def test_operations_apply_in_order() -> None:
    patched = json_patch(DOCUMENT, [{"op": "replace", "path": "/spec/replicas", "value": 2},
                                    {"op": "test", "path": "/spec/replicas", "value": 2},
                                    {"op": "add", "path": "/spec/containers/-", "value": {"name": "side"}}])
    assert patched["spec"]["replicas"] == 2 and [c["name"] for c in patched["spec"]["containers"]] == ["web", "side"]
    assert DOCUMENT["spec"]["replicas"] == 1
