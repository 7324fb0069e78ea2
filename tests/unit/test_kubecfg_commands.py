"""kubecfg's verbs against an in-memory stand-in for the API client."""

from __future__ import annotations

import io
from typing import Any

import grpc
import pytest

from kybernetes.v1 import replication_controller_pb2

from services.common.resources import PODS, REPLICATION_CONTROLLERS, kind_of_message
from services.kubecfg import commands


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class FakeClient:
    """Objects by (kind, namespace, name), with resource versions and conflicts like the server's."""

    server = "fake:0"

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Any] = {}
        self.revision = 0
        self.conflicts_to_inject = 0
        self.writes: list[str] = []
        self.deletes: list[tuple[str, str]] = []
        self.graces: list[int | None] = []

    def _key(self, obj: Any) -> tuple[str, str, str]:
        return (kind_of_message(obj).name, obj.metadata.namespace, obj.metadata.name)

    async def get(self, kind, name, namespace="default"):
        try:
            stored = self.objects[(kind.name, namespace, name)]
        except KeyError:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, f'{kind.plural} "{name}" not found') from None
        copy = type(stored)()
        copy.CopyFrom(stored)
        return copy

    async def create(self, obj):
        if self._key(obj) in self.objects:
            raise rpc_error(grpc.StatusCode.ALREADY_EXISTS)
        self.revision += 1
        obj.metadata.resource_version = self.revision
        self.objects[self._key(obj)] = obj
        self.writes.append(f"create {obj.metadata.name}")
        return obj

    async def update(self, obj):
        stored = self.objects[self._key(obj)]
        if self.conflicts_to_inject:
            self.conflicts_to_inject -= 1
            self.revision += 1
            stored.metadata.resource_version = self.revision  # someone else wrote meanwhile
        if obj.metadata.resource_version != stored.metadata.resource_version:
            raise rpc_error(grpc.StatusCode.ABORTED, "stale")
        self.revision += 1
        obj.metadata.resource_version = self.revision
        self.objects[self._key(obj)] = obj
        self.writes.append(f"update {obj.metadata.name}")
        return obj

    async def list(self, kind, namespace="", *, label_selector="", field_selector="", limit=0, continue_token=""):
        wanted = dict(term.split("=") for term in label_selector.split(",") if term)
        items = [
            obj for (k, ns, _), obj in sorted(self.objects.items())
            if k == kind.name and (not namespace or ns == namespace)
            and all(obj.metadata.labels.get(key) == value for key, value in wanted.items())
        ]
        result = kind.list_message(items=items)
        result.metadata.resource_version = self.revision
        return result

    async def delete(self, kind, name, namespace="default", *, resource_version=0, propagation_policy=""):
        obj = await self.get(kind, name, namespace)
        del self.objects[(kind.name, namespace, name)]
        self.deletes.append((name, propagation_policy))
        return obj

    timeout = 10.0

    def stub(self, kind):
        """The kind's stub: its Delete takes the whole DeleteRequest (gracePeriodSeconds too)."""
        client = self

        class Stub:
            async def Delete(self, request, timeout=None):
                namespace = request.namespace or "default"
                grace = request.grace_period_seconds if request.HasField("grace_period_seconds") else None
                client.graces.append(grace)
                return await client.delete(kind, request.name, namespace, propagation_policy=request.propagation_policy)

        return Stub()


MANIFEST = """\
apiVersion: v1
kind: ReplicationController
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 2
  selector: {app: web}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: solo, labels: {app: solo}}
spec:
  containers: [{name: main, image: busybox}]
"""


@pytest.fixture
def ctx() -> commands.Context:
    return commands.Context(client=FakeClient(), out=io.StringIO(), err=io.StringIO())  # type: ignore[arg-type]


def lines(stream: Any) -> list[str]:
    text = stream.getvalue()
    stream.seek(0)
    stream.truncate()
    return text.splitlines()


async def test_apply_creates_then_is_unchanged_then_configures(ctx, tmp_path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(MANIFEST)
    await commands.apply(ctx, [str(path)])
    assert lines(ctx.out) == ["replicationcontroller/web created", "pod/solo created"]
    await commands.apply(ctx, [str(path)])
    assert lines(ctx.out) == ["replicationcontroller/web unchanged", "pod/solo unchanged"]
    assert ctx.client.writes == ["create web", "create solo"]

    ctx.client.objects[("Pod", "default", "solo")].status.phase = "Running"
    path.write_text(MANIFEST.replace("app: solo", "app: solo, tier: db"))
    ctx.client.conflicts_to_inject = 1  # the first update loses a race and is retried once
    await commands.apply(ctx, [str(path)])
    assert lines(ctx.out) == ["replicationcontroller/web unchanged", "pod/solo configured"]
    stored = ctx.client.objects[("Pod", "default", "solo")]
    assert stored.metadata.labels["tier"] == "db" and stored.status.phase == "Running"
    assert not ctx.failed


async def test_create_reports_existing_objects(ctx, tmp_path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(MANIFEST)
    await commands.create(ctx, [str(path)])
    await commands.create(ctx, [str(path)])
    assert ctx.failed
    assert lines(ctx.err) == [
        f'Error from server (AlreadyExists): error when creating "{path}": replicationcontrollers "web" already exists',
        f'Error from server (AlreadyExists): error when creating "{path}": pods "solo" already exists',
    ]


async def test_invalid_manifest_changes_nothing(ctx, tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MANIFEST + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containerz: []}\n")
    with pytest.raises(commands.CommandError, match=r"bad.yaml\[2\]: spec.containerz: unknown field"):
        await commands.apply(ctx, [str(path)])
    assert ctx.client.objects == {}


async def test_scale_retries_a_conflict(ctx) -> None:
    rc = replication_controller_pb2.ReplicationController(metadata={"name": "web", "namespace": "default"})
    await ctx.client.create(rc)
    ctx.client.conflicts_to_inject = 2
    await commands.scale(ctx, [commands.ResourceRequest(REPLICATION_CONTROLLERS, ("web",))], 5)
    assert lines(ctx.out) == ["replicationcontroller/web scaled"]
    assert ctx.client.objects[("ReplicationController", "default", "web")].spec.replicas == 5
    await commands.scale(ctx, [commands.ResourceRequest(REPLICATION_CONTROLLERS, ("web",))], 1, current_replicas=3)
    assert lines(ctx.err) == ["error: Expected replicas to be 3, was 5"]


async def test_get_and_delete_by_selector(ctx, tmp_path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(MANIFEST)
    await commands.apply(ctx, [str(path)])
    lines(ctx.out)
    await commands.get(
        ctx, [commands.ResourceRequest(PODS)], commands.GetOptions(label_selector="app=solo", output="name")
    )
    assert lines(ctx.out) == ["pod/solo"]
    await commands.get(ctx, [commands.ResourceRequest(PODS)], commands.GetOptions(label_selector="app=none"))
    assert lines(ctx.out) == [] and lines(ctx.err) == ["No resources found in default namespace."]
    await commands.delete(ctx, [commands.ResourceRequest(PODS)], [], commands.DeleteOptions(label_selector="app=solo"))
    assert lines(ctx.out) == ['pod "solo" deleted']
    await commands.delete(
        ctx, [commands.ResourceRequest(REPLICATION_CONTROLLERS, ("web", "gone"))], [],
        commands.DeleteOptions(cascade="false"),
    )
    assert lines(ctx.out) == ['replicationcontroller "web" deleted']
    assert lines(ctx.err) == ['Error from server (NotFound): replicationcontrollers "gone" not found']
    assert ctx.client.deletes[-1] == ("web", "Orphan")


@pytest.mark.parametrize(
    ("options", "grace", "said", "warned"),
    [
        pytest.param(commands.DeleteOptions(), None, 'pod "solo" deleted', False, id="the-pods-own"),
        pytest.param(commands.DeleteOptions(grace_period=5), 5, 'pod "solo" deleted', False, id="grace-period"),
        pytest.param(commands.DeleteOptions(now=True), 1, 'pod "solo" deleted', False, id="now"),
        # kubectl: --grace-period=0 without --force means 1, so nothing goes before it stopped by mistake.
        pytest.param(commands.DeleteOptions(grace_period=0), 1, 'pod "solo" deleted', False, id="zero-is-one"),
        pytest.param(commands.DeleteOptions(force=True), 0, 'pod "solo" force deleted', True, id="force"),
        pytest.param(
            commands.DeleteOptions(force=True, grace_period=0), 0, 'pod "solo" force deleted', True, id="force-zero"
        ),
    ],
)
async def test_delete_grace_period_now_and_force(ctx, tmp_path, options, grace, said, warned) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(MANIFEST)
    await commands.apply(ctx, [str(path)])
    lines(ctx.out)
    await commands.delete(ctx, [commands.ResourceRequest(PODS, ("solo",))], [], options)
    assert ctx.client.graces == [grace]
    assert lines(ctx.out) == [said]
    assert lines(ctx.err) == ([commands.FORCE_WARNING] if warned else [])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            commands.DeleteOptions(now=True, grace_period=3),
            "error: --now and --grace-period cannot be specified together", id="now-and-grace",
        ),
        pytest.param(
            commands.DeleteOptions(force=True, grace_period=3),
            "error: --force and --grace-period greater than 0 cannot be specified together", id="force-and-grace",
        ),
    ],
)
def test_delete_grace_period_conflicts(options, message) -> None:
    with pytest.raises(commands.CommandError, match=message):
        commands.delete_grace_period(options)
