"""Hostile input against a real API server and etcd.

Each case: the right status (INVALID_ARGUMENT or OUT_OF_RANGE, never UNKNOWN,
INTERNAL, UNAVAILABLE or RESOURCE_EXHAUSTED for a client's mistake), a message
that names the field and fits a gRPC trailer, and nothing stored.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kybernetes.v1 import meta_pb2, pod_pb2
from services.common.client import ApiClient
from services.common.resources import NODES, PODS
from tests.polling import eventually, eventually_blocking
from services.common.transport import blocking_channel
from tools.processes import ApiServerProcess, EtcdProcess, dev_pki

from .apihelpers import collect_events, expect_error, make_node, make_pod

MAX_MESSAGE = 4096
HUGE = "a" * 100_000


def fits(message: str) -> None:
    assert len(message.encode()) < MAX_MESSAGE, f"message of {len(message.encode())} bytes"


def token(rv: object, start: bytes) -> str:
    raw = json.dumps({"rv": rv, "start": base64.b64encode(start).decode()}).encode()
    return base64.urlsafe_b64encode(raw).decode()


# -- D1: Watch from a revision the store has not reached ------------------------


async def test_watch_from_a_future_revision_is_out_of_range(api, namespace):
    current = (await api.list(PODS, namespace)).metadata.resource_version
    future = current + 1_000_000
    started = time.monotonic()
    call = api.watch(PODS, meta_pb2.ListOptions(namespace=namespace, resource_version=future))
    message = await expect_error(grpc.StatusCode.OUT_OF_RANGE, collect_events(call, 1))
    assert time.monotonic() - started < 10
    assert "resourceVersion" in message and str(future) in message
    assert "current" in message
    fits(message)


async def test_watch_from_a_list_revision_other_kinds_moved_still_works(api, namespace, unique_name):
    """A List's revision is etcd's (any kind's writes move it), not the pods cache's: fine."""
    await api.create(make_pod("first", namespace))
    await api.create(make_node(unique_name))
    try:
        listing = await api.list(PODS, namespace)
        call = api.watch(
            PODS, meta_pb2.ListOptions(namespace=namespace, resource_version=listing.metadata.resource_version)
        )
        await asyncio.sleep(0.3)
        await api.create(make_pod("second", namespace))
        events = await collect_events(call, 1, timeout=10)
        assert [(e.type, e.object.metadata.name) for e in events] == [("ADDED", "second")]
        call.cancel()
    finally:
        await api.delete(NODES, unique_name, "")


# -- D2: Bind's target is a node name --------------------------------------------


@pytest.mark.parametrize("target", ["../../etc", "UPPER", "$(id)", HUGE], ids=["path", "upper", "shell", "huge"])
async def test_bind_to_a_target_that_is_not_a_node_name_is_refused(api, namespace, target):
    created = await api.create(make_pod("web", namespace))
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.bind(namespace, "web", target))
    assert "target.name" in message
    fits(message)
    stored = await api.get(PODS, "web", namespace)
    assert stored.spec.node_name == ""
    assert stored.metadata.resource_version == created.metadata.resource_version


# -- D3: continue tokens ----------------------------------------------------------


async def test_malformed_and_out_of_range_continue_tokens_are_invalid_argument(api, namespace):
    for i in range(3):
        await api.create(make_pod(f"p{i}", namespace))
    first = await api.list(PODS, namespace, limit=1)
    assert first.metadata.continue_token
    prefix = f"/registry/pods/{namespace}/".encode()
    current = first.metadata.resource_version
    bad = {
        "over-int64": token(2**63, prefix),
        "huge": token(10**40, prefix),
        "future": token(current + 1_000_000, prefix),
        "negative": token(-1, prefix),
        "a-string": token("12", prefix),
        "garbage": "%%%not-a-token%%%",
        "other-list": token(current, b"/registry/nodes/x"),
    }
    for what, value in bad.items():
        message = await expect_error(
            grpc.StatusCode.INVALID_ARGUMENT, api.list(PODS, namespace, limit=1, continue_token=value)
        )
        assert message.startswith("continue"), (what, message)
        fits(message)
    # The genuine token still works.
    page = await api.list(PODS, namespace, limit=1, continue_token=first.metadata.continue_token)
    assert [p.metadata.name for p in page.items] == ["p1"]


# -- D5: huge values are quoted cut; the message always fits a trailer ----------------


async def test_a_huge_bad_value_gives_a_short_error(api, namespace):
    for pod in (
        make_pod(HUGE, namespace),
        make_pod("web", namespace, labels={"app": HUGE}),
        make_pod("web", namespace, node="N" * 100_000),
    ):
        message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(pod))
        fits(message)
        assert "more characters" in message
    assert (await api.list(PODS, namespace)).items == []


async def test_many_errors_are_capped_with_a_count(api, namespace):
    pod = make_pod("web", namespace)
    del pod.spec.containers[:]
    for i in range(500):
        pod.spec.containers.append(pod_pb2.Container(name=f"C{i}-" + "X" * 200, image="busybox"))
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(pod))
    fits(message)
    assert "spec.containers[0].name" in message and "more errors" in message
    assert (await api.list(PODS, namespace)).items == []


async def test_get_and_delete_of_a_huge_name_fit(api, namespace):
    fits(await expect_error(grpc.StatusCode.NOT_FOUND, api.get(PODS, HUGE, namespace)))
    fits(await expect_error(grpc.StatusCode.NOT_FOUND, api.delete(PODS, HUGE, namespace)))


# -- D7: generateName is validated as sent ------------------------------------------


async def test_a_bad_generate_name_is_reported_as_sent(api, namespace):
    pod = make_pod("", namespace)
    pod.metadata.generate_name = "Bad_Prefix-"
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(pod))
    assert 'metadata.generateName: Invalid value: "Bad_Prefix-"' in message
    assert "metadata.name" not in message
    fits(message)
    pod.metadata.generate_name = HUGE
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(pod))
    assert "metadata.generateName" in message
    fits(message)
    assert (await api.list(PODS, namespace)).items == []


async def test_a_long_good_generate_name_makes_a_valid_name(api, namespace):
    pod = make_pod("", namespace)
    pod.metadata.generate_name = "w" * 100 + "-"
    created = await api.create(pod)
    assert len(created.metadata.name) == 63


# -- D8: a namespace on a cluster-scoped kind ----------------------------------------


async def test_a_namespace_on_a_node_is_refused(api, unique_name):
    node = make_node(unique_name)
    node.metadata.namespace = "default"
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create(node))
    assert "metadata.namespace: Forbidden: not allowed on this type" in message
    await expect_error(grpc.StatusCode.NOT_FOUND, api.get(NODES, unique_name, ""))

    created = await api.create(make_node(unique_name))
    try:
        for write in (api.update, api.update_status):
            changed = make_node(unique_name, {"changed": "yes"})
            changed.metadata.namespace = "kube-system"
            message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, write(changed))
            assert "metadata.namespace: Forbidden: not allowed on this type" in message
            stored = await api.get(NODES, unique_name, "")
            assert stored.metadata.resource_version == created.metadata.resource_version
            assert stored.metadata.namespace == "" and "changed" not in stored.metadata.labels
    finally:
        await api.delete(NODES, unique_name, "")


# -- D6: requests that are not the message ------------------------------------------

# Field 3 (metadata) holding field 1 (name) with bytes that are not UTF-8: a proto3 string must be.
NOT_UTF8_NAME = bytes([0x1A, 0x03, 0x0A, 0x01, 0xFF])
UNDECODABLE = [
    pytest.param(b"\xff\xff\xff\xff", id="garbage"),
    pytest.param(NOT_UTF8_NAME, id="name-not-utf8"),
    pytest.param(bytes([0x1A, 0x7F, 0x0A]), id="truncated"),
]


def raw_call(api, method: str, streaming: bool = False):
    """A call that sends bytes as they are (no serializer), as a broken client would."""
    factory = api.channel.unary_stream if streaming else api.channel.unary_unary
    return factory(method, request_serializer=None, response_deserializer=None)


@pytest.mark.parametrize("payload", UNDECODABLE)
async def test_an_undecodable_request_is_invalid_argument_and_changes_nothing(api, namespace, payload):
    before = (await api.list(PODS, namespace)).items
    call = raw_call(api, "/kybernetes.v1.PodRegistry/Create")
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, call(payload, timeout=10))
    assert "request: not a valid kybernetes.v1.Pod message" in message
    fits(message)
    assert (await api.list(PODS, namespace)).items == before


@pytest.mark.parametrize("payload", UNDECODABLE)
async def test_an_undecodable_watch_request_is_invalid_argument(api, payload):
    call = raw_call(api, "/kybernetes.v1.PodRegistry/Watch", streaming=True)(payload, timeout=10)

    async def first() -> None:
        async for _ in call:
            break

    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, first())
    assert "request: not a valid kybernetes.v1.ListOptions message" in message


# -- D11: health follows etcd ----------------------------------------------------------


def serving(address: str) -> bool:
    with blocking_channel(address, dev_pki().credentials("admin")) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_is_not_serving_while_etcd_does_not_answer(tmp_path):
    etcd = EtcdProcess(tmp_path / "etcd")
    server = ApiServerProcess(etcd.endpoint, "--controllers=")
    try:
        assert serving(server.address)
        os.kill(etcd.pid, signal.SIGSTOP)  # etcd there but silent: the worst kind of outage
        try:
            eventually_blocking(lambda: not serving(server.address), what="NOT_SERVING", timeout=20, interval=0.5)
        finally:
            os.kill(etcd.pid, signal.SIGCONT)
        eventually_blocking(lambda: serving(server.address), what="SERVING again", timeout=20, interval=0.5)
    finally:
        server.stop()
        etcd.stop()


# -- D12: writes come back soon after etcd does --------------------------------------------


async def test_writes_resume_soon_after_an_etcd_outage(tmp_path, namespace):
    etcd = EtcdProcess(tmp_path / "etcd")
    server = ApiServerProcess(etcd.endpoint, "--controllers=")
    client = ApiClient(server.address, timeout=2)
    try:
        await client.create(make_pod("before", namespace))
        etcd.stop()
        await asyncio.sleep(5)  # the API server's etcd channel backs off meanwhile
        etcd = EtcdProcess(tmp_path / "etcd", client_port=etcd.port)
        back = time.monotonic()

        async def written() -> bool:
            await client.create(make_pod(f"after-{time.monotonic_ns()}", namespace))
            return True

        await eventually(written, what="a write after etcd's return", timeout=30, interval=0.1,
                         retry_on=(grpc.aio.AioRpcError,))
        # With gRPC's default back-off this took 5.9 s after a 10 s outage (its cap is 120 s).
        print(f"first write {time.monotonic() - back:.2f} s after etcd was back")
        names = [p.metadata.name for p in (await client.list(PODS, namespace)).items]
        assert "before" in names and any(name.startswith("after-") for name in names)
    finally:
        await client.close()
        server.stop()
        etcd.stop()


# -- D4: an object over the size limit is RESOURCE_EXHAUSTED, before any work ---------------


async def test_an_object_over_the_size_limit_is_refused_before_etcd(api, namespace):
    huge = make_pod("huge", namespace)
    huge.spec.containers[0].env.add(name="BLOB", value="x" * (2 * 2**20))
    message = await expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, api.create(huge))
    assert message.startswith("request: 2.0 MiB is more than the 1.5 MiB"), message
    fits(message)
    await expect_error(grpc.StatusCode.NOT_FOUND, api.get(PODS, "huge", namespace))
    # Just under the limit goes through to etcd and is stored.
    large = make_pod("large", namespace)
    large.spec.containers[0].env.add(name="BLOB", value="x" * (2**20))
    assert (await api.create(large)).metadata.name == "large"


# -- unknown fields are never stored ---------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field, encoded by hand: what no generated client would send."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


async def test_an_object_with_fields_the_api_does_not_have_is_refused_naming_them(apiserver, api, namespace):
    pod = make_pod("smuggler", namespace)
    container = pod.spec.containers[0].SerializeToString() + _field(40, b"abc")
    spec = pod_pb2.PodSpec()
    spec.CopyFrom(pod.spec)
    del spec.containers[:]
    raw = (
        _field(3, pod.metadata.SerializeToString())
        + _field(4, spec.SerializeToString() + _field(2, container))
        + _field(99, b"y" * 2**20)  # 1 MiB of opaque bytes every reader would be served
    )
    with blocking_channel(apiserver.address, dev_pki().credentials("admin")) as channel:
        create = channel.unary_unary("/kybernetes.v1.PodRegistry/Create")
        with pytest.raises(grpc.RpcError) as refused:
            create(raw, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = refused.value.details()
    assert "unknown field(s)" in message and "#99" in message and "spec.containers[0].#40" in message, message
    fits(message)
    await expect_error(grpc.StatusCode.NOT_FOUND, api.get(PODS, "smuggler", namespace))


async def test_a_request_in_a_namespace_that_cannot_exist_is_invalid(api):
    for call in (
        api.list(PODS, "Bad/Name"),
        api.get(PODS, "p", "Bad/Name"),
        api.delete(PODS, "p", "x" * 100),
    ):
        message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, call)
        assert message.startswith("namespace: "), message
        fits(message)


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- D9: huge requests neither get in nor stay in memory --------------------------------------


async def test_huge_requests_are_refused_without_growing_the_server(apiserver, api, namespace):
    before = rss_bytes(apiserver.pid)
    blob = b"z" * (40 * 2**20)

    def send() -> grpc.StatusCode:
        with blocking_channel(apiserver.address, dev_pki().credentials("admin"), [
            ("grpc.max_send_message_length", 64 * 2**20),
        ]) as channel:
            try:
                channel.unary_unary("/kybernetes.v1.PodRegistry/Create")(blob, timeout=30)
            except grpc.RpcError as error:
                return error.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(asyncio.to_thread(send) for _ in range(8)))
    assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    # Eight 40 MiB requests: the server read none of them whole (it grew by 3 GB once).
    assert rss_bytes(apiserver.pid) - before < 100 * 2**20
    assert (await api.list(PODS, namespace)).items == []


# -- D9: a rejected request is not kept (found by test_hostile_input.py) ------------------------


async def test_rejected_requests_are_not_kept_in_memory(apiserver, api, namespace):
    """Requests under gRPC's 4 MiB limit, refused by the API server: each one was kept (the
    aborted call's exception held the frames that held its bytes, in a cycle only a full
    garbage collection frees), 4 MB a request, 600 MB after 150 of them."""
    too_large = b"\x1a\x02" + b"x" * (3_900_000)  # over the 1.5 MiB object limit
    not_valid = make_pod("p", namespace, labels={"app": "v" * 1_400_000}).SerializeToString()
    watch_too_large = meta_pb2.ListOptions(label_selector="a" * 3_900_000).SerializeToString()

    def send_all() -> set[grpc.StatusCode]:
        codes = set()
        with blocking_channel(apiserver.address, dev_pki().credentials("admin")) as channel:
            create = channel.unary_unary("/kybernetes.v1.PodRegistry/Create")
            watch = channel.unary_stream("/kybernetes.v1.PodRegistry/Watch")
            for i in range(60):
                try:
                    if i % 3 == 2:
                        next(iter(watch(watch_too_large, timeout=10)))
                    else:
                        create(too_large if i % 3 == 0 else not_valid, timeout=10)
                except grpc.RpcError as error:
                    codes.add(error.code())
        return codes

    await asyncio.to_thread(send_all)  # gRPC's and the allocator's buffers, once
    before = rss_bytes(apiserver.pid)
    codes = await asyncio.to_thread(send_all)
    assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT}, codes
    grown = rss_bytes(apiserver.pid) - before
    assert grown < 48 * 2**20, f"60 rejected 1.4-3.9 MB requests kept {grown / 2**20:.0f} MiB"
    assert (await api.list(PODS, namespace)).items == []


# -- D5: a message of escaped characters fits the trailer as sent (found by test_hostile_input.py) --


def trailer_bytes(message: str) -> int:
    """Its size in a grpc-message trailer: every byte but printable ASCII (and "%") as three."""
    data = message.encode()
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in data)


async def test_an_error_quoting_non_ascii_fits_the_trailer_as_sent(api, namespace):
    """A 4 KiB uid of "é" was quoted whole (4,000 UTF-8 bytes, under the cap): 12 KiB once
    percent-encoded, over the client's 8 KiB soft limit, so the client got "Stream removed"
    (RESOURCE_EXHAUSTED) at random instead of the error."""
    created = await api.create(make_pod("web", namespace))
    changed = make_pod("web", namespace)
    changed.metadata.uid = "é" * 2048
    for _ in range(5):  # the soft limit refuses at random: one pass could be lucky
        message = await expect_error(grpc.StatusCode.FAILED_PRECONDITION, api.update(changed))
        assert message.startswith("metadata.uid: "), message[:100]
        assert trailer_bytes(message) <= 4096, trailer_bytes(message)
    stored = await api.get(PODS, "web", namespace)
    assert stored.metadata.resource_version == created.metadata.resource_version


# -- D5: log lines quote client values cut short (found by test_hostile_input.py) -----------------


async def test_huge_values_are_cut_in_the_request_log(apiserver, api, namespace):
    log_start = apiserver.log_path.stat().st_size
    await expect_error(grpc.StatusCode.NOT_FOUND, api.get(PODS, "n" * 200_000, namespace))
    call = api.watch(PODS, meta_pb2.ListOptions(namespace=namespace, field_selector="bogus=" + "f" * 200_000))
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, collect_events(call, 1))

    def longest_line() -> int:
        with open(apiserver.log_path, "rb") as log:
            log.seek(log_start)
            return max((len(line) for line in log), default=0)

    # Both calls are logged once they end; the watch's line may come a moment after its error.
    await asyncio.sleep(0.5)
    assert 0 < longest_line() < 4096, longest_line()


async def test_refused_anonymous_requests_are_not_kept_in_memory(apiserver):
    """On the token port, a caller with no credentials at all is refused (UNAUTHENTICATED)
    before any handler runs; the refusal kept each request as the handlers' did (4 MB a call)."""
    from services.common.transport import ClientCredentials

    anonymous = ClientCredentials(dev_pki().credentials("admin").ca_certificate)  # trusts the CA, proves nothing
    payload = b"\x1a\x02" + b"x" * 3_900_000

    def send_all() -> set[grpc.StatusCode]:
        codes = set()
        with blocking_channel(apiserver.token_address, anonymous) as channel:
            create = channel.unary_unary("/kybernetes.v1.PodRegistry/Create")
            watch = channel.unary_stream("/kybernetes.v1.PodRegistry/Watch")
            for i in range(40):
                try:
                    if i % 4 == 3:
                        next(iter(watch(payload, timeout=10)))
                    else:
                        create(payload, timeout=10)
                except grpc.RpcError as error:
                    codes.add(error.code())
        return codes

    await asyncio.to_thread(send_all)
    before = rss_bytes(apiserver.pid)
    assert await asyncio.to_thread(send_all) == {grpc.StatusCode.UNAUTHENTICATED}
    grown = rss_bytes(apiserver.pid) - before
    assert grown < 48 * 2**20, f"40 refused anonymous 3.9 MB requests kept {grown / 2**20:.0f} MiB"


def test_garbage_to_the_certificate_and_authorization_services_is_invalid_argument(apiserver):
    with blocking_channel(apiserver.address, dev_pki().credentials("admin")) as channel:
        for method in (
            "/kybernetes.v1.Certificates/Sign",
            "/kybernetes.v1.Authorization/CreateSelfSubjectAccessReview",
        ):
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(method)(b"\xff\xff\xff\xff", timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert refused.value.details().startswith("request: not a valid kybernetes.v1."), refused.value.details()


def test_garbage_to_the_health_service_is_invalid_argument_and_health_still_answers(apiserver):
    with blocking_channel(apiserver.address, dev_pki().credentials("admin")) as channel:
        for method, call in (("/grpc.health.v1.Health/Check", channel.unary_unary),
                             ("/grpc.health.v1.Health/Watch", channel.unary_stream)):
            with pytest.raises(grpc.RpcError) as refused:
                reply = call(method)(b"\xff\xff\xff\xff", timeout=10)
                if method.endswith("Watch"):
                    next(iter(reply))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert refused.value.details().startswith("request: not a valid grpc.health.v1."), refused.value.details()
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == serving
        watched = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
        assert next(iter(watched)).status == serving
        watched.cancel()


async def test_writes_to_an_object_in_a_namespace_that_cannot_exist_are_invalid(api):
    pod = make_pod("p", "Bad/Name")
    binding = pod_pb2.Binding(
        metadata=meta_pb2.ObjectMeta(namespace="Bad/Name", name="p"),
        target=pod_pb2.ObjectReference(kind="Node", name="n1"),
    )
    for call in (api.update(pod), api.update_status(pod), api.stub(PODS).Bind(binding, timeout=10)):
        message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, call)
        assert message.startswith("metadata.namespace: "), message
