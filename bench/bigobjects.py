"""Big objects against everybody else: does one client's near-limit objects stall the others?

Run: `python -m bench.bigobjects` (starts its own etcd and API server, TLS and
authentication as `make up` runs them; about two minutes). Issue 14's D10: while one
client created 1.4 MiB objects, another client's Get went from 2.4 ms to p99 0.9 s,
because the API server's single event loop decoded, validated and encoded them. The
target (issue 14, and the hostile-input suite's rule): a concurrent well-behaved
client's p99 stays under 50 ms while the hostile one runs.

Three processes beside etcd and the API server, so that no client's CPU is counted in
another's latency:
- the well-behaved client: a small pod's Get, then 5 ms of sleep, in a loop; its latency
  (p50, p99, max, and how many calls took over 10/50/100 ms: the server's stalls as a
  client sees them) is measured alone, then during each hostile load. Each round also
  reads the pod's key from etcd directly (etcd99: its p99), which tells etcd's share
  (busy with the big writes' fsyncs; a Get reads etcd) from the API server's;
- the hostile one: 1 or 4 concurrent callers (--clients), each sending pre-encoded
  requests of one shape, near the 1.5 MiB request limit, as fast as answers come:
    string       a pod with one 1.4 MiB environment value (bytes: decode, copy, encode);
    labels       a pod with ~50,000 labels (a map: validation per entry);
    containers   a pod with ~30,000 containers (repeated messages: validation per container);
    nested       an RC whose template's containers have env, ports, probes with headers,
                 volume mounts (messages six levels deep);
    bad-labels   as labels, every key invalid: INVALID_ARGUMENT with ~60,000 field errors;
    bad-containers  as containers, every name the same: ~40,000 duplicate-name errors;
    bad-value    a pod with one label value of 1.4 MiB: INVALID_ARGUMENT;
  each as Create (then Delete, so the store does not fill up), and labels also as
  Update (an annotation changes each time), and List of 16 stored 1.4 MiB pods;
- this one, which only orchestrates (and compacts etcd between loads).

--profile FILE runs the API server under cProfile (its main thread: the event loop) and
prints where the loop's time went; the figures are then cProfile's, not the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pstats
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

from kybernetes.v1 import meta_pb2, pod_pb2, replication_controller_pb2
from services.common.client import ApiClient
from services.common.defaults import apply_defaults
from services.common.resources import PODS, REPLICATION_CONTROLLERS, Kind
from services.common.transport import ClientCredentials, aio_channel
from tools.processes import (
    ApiServerProcess,
    EtcdProcess,
    ManagedProcess,
    apiserver_security_flags,
    dev_pki,
    free_port,
    python_module_argv,
    wait_for_port,
)

IMAGE = "kybernetes/busybox:latest"
# Near the API's 1.5 MiB request limit (services/apiserver/server.py), as a hostile client sends.
TARGET_BYTES = int(1.4 * 2**20)
GOOD_NS, BIG_NS, LIST_NS = "well-behaved", "big", "big-list"
LISTED_OBJECTS = 16
GOOD_PAUSE = 0.005  # between the well-behaved client's Gets
WARMUP = 0.5  # of each hostile load before the well-behaved client's figures count

# (label, operation, shape); each runs with every --clients count.
SCENARIOS = [
    ("create string", "create", "string"),
    ("create labels", "create", "labels"),
    ("create containers", "create", "containers"),
    ("create nested RC", "create", "nested"),
    ("invalid labels", "create", "bad-labels"),
    ("invalid containers", "create", "bad-containers"),
    ("invalid huge value", "create", "bad-value"),
    ("update labels", "update", "labels"),
    (f"list {LISTED_OBJECTS} x 1.4 MiB", "list", "string"),
]


# -- the shapes --------------------------------------------------------------------------------


def _stored_size(obj: Any) -> int:
    """The object's size as the server stores it: its defaults filled in (a container
    gains ~20 bytes of them, and a 2 MiB pod is refused by etcd, not validated)."""
    copy = type(obj)()
    copy.CopyFrom(obj)
    return apply_defaults(copy).ByteSize()


def _fill(build: Any) -> Any:
    """build(count) with count chosen so that the stored object is just under TARGET_BYTES."""
    small, large = _stored_size(build(10)), _stored_size(build(110))
    per_item = (large - small) / 100
    count = int((TARGET_BYTES - small) / per_item) + 10
    obj = build(count)
    while _stored_size(obj) > TARGET_BYTES:
        count -= max(1, count // 200)
        obj = build(count)
    return obj


def _pod(name: str, **spec: Any) -> pod_pb2.Pod:
    return pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=BIG_NS),
        spec=pod_pb2.PodSpec(**spec),
    )


def _main_container(**fields: Any) -> pod_pb2.Container:
    return pod_pb2.Container(name="main", image=IMAGE, command=["sleep", "3600"], **fields)


def build_object(shape: str, name: str) -> tuple[Kind, Any]:
    """One near-limit object of `shape` named `name` (see the module's docstring)."""
    if shape == "string":
        pod = _pod(name, containers=[_main_container(env=[pod_pb2.EnvVar(name="BIG", value="")])])
        pod.spec.containers[0].env[0].value = "x" * (TARGET_BYTES - pod.ByteSize() - 8)
        return PODS, pod
    if shape == "bad-value":
        pod = _pod(name, containers=[_main_container()])
        pod.metadata.labels["app"] = "v" * (TARGET_BYTES - pod.ByteSize() - 16)
        return PODS, pod
    if shape in ("labels", "bad-labels"):
        key = "k{}.example.com/key" if shape == "labels" else "K_{}!/bad key"

        def labelled(count: int) -> pod_pb2.Pod:
            pod = _pod(name, containers=[_main_container()])
            pod.metadata.labels.update({key.format(i): "v" for i in range(count)})
            return pod

        return PODS, _fill(labelled)
    if shape in ("containers", "bad-containers"):

        def containers(count: int) -> pod_pb2.Pod:
            return _pod(name, containers=[
                pod_pb2.Container(name=f"c{i}" if shape == "containers" else "same", image=IMAGE)
                for i in range(count)
            ])

        return PODS, _fill(containers)
    if shape == "nested":

        def container(i: int) -> pod_pb2.Container:
            return pod_pb2.Container(
                name=f"c{i}",
                image=IMAGE,
                env=[pod_pb2.EnvVar(name=f"E{j}", value="v") for j in range(3)],
                ports=[pod_pb2.ContainerPort(container_port=8000 + j, name=f"p{j}") for j in range(2)],
                volume_mounts=[pod_pb2.VolumeMount(name="data", mount_path="/data")],
                readiness_probe=pod_pb2.Probe(
                    http_get=pod_pb2.HTTPGetAction(
                        path="/", port="p0",
                        http_headers=[pod_pb2.HTTPHeader(name=f"X-{j}", value="v") for j in range(2)],
                    )
                ),
            )

        def rc(count: int) -> replication_controller_pb2.ReplicationController:
            labels = {"app": name}
            return replication_controller_pb2.ReplicationController(
                metadata=meta_pb2.ObjectMeta(name=name, namespace=BIG_NS),
                spec=replication_controller_pb2.ReplicationControllerSpec(
                    replicas=0,
                    selector=labels,
                    template=pod_pb2.PodTemplateSpec(
                        metadata=meta_pb2.ObjectMeta(labels=labels),
                        spec=pod_pb2.PodSpec(
                            containers=[container(i) for i in range(count)],
                            volumes=[pod_pb2.Volume(name="data", empty_dir=pod_pb2.EmptyDirVolumeSource())],
                        ),
                    ),
                ),
            )

        return REPLICATION_CONTROLLERS, _fill(rc)
    raise ValueError(f"unknown shape {shape!r}")


def small_pod(name: str, namespace: str) -> pod_pb2.Pod:
    return pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace, labels={"app": "good"}),
        spec=pod_pb2.PodSpec(containers=[_main_container()]),
    )


# -- statistics ----------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# -- the well-behaved client (its own process) -------------------------------------------------------


def _good_worker(
    address: str, credentials: ClientCredentials, etcd: str, etcd_credentials: ClientCredentials,
    commands: Any, results: Any,
) -> None:
    """Each round: the API's Get of a small pod, then etcd's own read of its key (how much
    of the Get's time is etcd's, busy with the big writes), then a pause."""
    key = PODS.key(GOOD_NS, "good").encode()

    async def measure(client: ApiClient, kv: rpc.KVStub, seconds: float) -> tuple[list[float], list[float]]:
        samples: list[float] = []
        etcd_samples: list[float] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await client.get(PODS, "good", GOOD_NS)
            samples.append(time.perf_counter() - started)
            started = time.perf_counter()
            await kv.Range(rpc.RangeRequest(key=key), timeout=30)
            etcd_samples.append(time.perf_counter() - started)
            await asyncio.sleep(GOOD_PAUSE)
        return samples, etcd_samples

    async def run() -> None:
        channel = aio_channel(etcd, etcd_credentials)
        kv = rpc.KVStub(channel)
        async with ApiClient(address, credentials=credentials, timeout=30) as client:
            try:
                await client.create(small_pod("good", GOOD_NS))
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
            await measure(client, kv, 0.5)  # connections and caches warm
            results.put("ready")
            while (command := await asyncio.to_thread(commands.get)) is not None:
                results.put(await measure(client, kv, command))
        await channel.close(None)

    asyncio.run(run())


# -- the hostile client (its own process) ---------------------------------------------------------


@dataclass
class HostileFigures:
    requests: int
    seconds: float
    sent_bytes: int
    received_bytes: int
    codes: dict[str, int]
    latencies: list[float]


class Hostile:
    """Pre-encoded requests of every shape, sent raw (no client-side encoding during a load)."""

    def __init__(self, address: str, credentials: ClientCredentials) -> None:
        self.channel = aio_channel(address, credentials, [("grpc.max_receive_message_length", 512 * 2**20)])
        self.payloads: dict[tuple[str, int], tuple[Kind, str, bytes]] = {}
        self.variants: dict[tuple[str, int], list[bytes]] = {}
        self.objects: dict[str, tuple[Kind, Any]] = {}

    def call(self, kind: Kind, method: str) -> Any:
        return self.channel.unary_unary(f"/{kind.service_name}/{method}", None, None)  # bytes in, bytes out

    def build(self, shape: str, name: str) -> tuple[Kind, Any]:
        """A fresh copy of shape's object (built once: a second or so each), named `name`."""
        if shape not in self.objects:
            self.objects[shape] = build_object(shape, shape)
        kind, obj = self.objects[shape]
        copy = type(obj)()
        copy.CopyFrom(obj)
        copy.metadata.name = name
        return kind, copy

    def create_payload(self, shape: str, client: int) -> tuple[Kind, str, bytes]:
        key = (shape, client)
        if key not in self.payloads:
            name = f"{shape}-{client}"
            kind, obj = self.build(shape, name)
            self.payloads[key] = (kind, name, obj.SerializeToString())
        return self.payloads[key]

    async def prepare(self, operation: str, shape: str, clients: int) -> None:
        if operation == "create":
            for client in range(clients):
                self.create_payload(shape, client)
        elif operation == "update":
            for client in range(clients):
                kind, obj = self.build(shape, f"upd-{shape}-{client}")
                await self._ensure(kind, obj)
                versions = []
                for version in range(2):
                    obj.metadata.annotations["version"] = str(version)
                    versions.append(obj.SerializeToString())
                self.variants[(shape, client)] = versions
        elif operation == "list":
            for index in range(LISTED_OBJECTS):
                kind, obj = self.build(shape, f"listed-{index}")
                obj.metadata.namespace = LIST_NS
                await self._ensure(kind, obj)

    async def _ensure(self, kind: Kind, obj: Any) -> None:
        try:
            await self.call(kind, "Create")(obj.SerializeToString(), timeout=60)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

    async def load(self, operation: str, shape: str, clients: int, seconds: float) -> HostileFigures:
        codes: dict[str, int] = {}
        latencies: list[float] = []
        sent = received = 0
        deadline = time.monotonic() + seconds

        async def one(client: int) -> None:
            nonlocal sent, received
            turn = 0
            while time.monotonic() < deadline:
                delete = None
                if operation == "create":
                    kind, name, payload = self.create_payload(shape, client)
                    method = "Create"
                    delete = meta_pb2.DeleteRequest(namespace=BIG_NS, name=name).SerializeToString()
                elif operation == "update":
                    kind, method = PODS, "Update"
                    payload = self.variants[(shape, client)][turn % 2]
                else:
                    kind, method = PODS, "List"
                    payload = meta_pb2.ListOptions(namespace=LIST_NS).SerializeToString()
                turn += 1
                started = time.perf_counter()
                try:
                    answer = await self.call(kind, method)(payload, timeout=120)
                    code = "OK"
                    received += len(answer)
                except grpc.aio.AioRpcError as error:
                    code, delete = error.code().name, None
                latencies.append(time.perf_counter() - started)
                sent += len(payload)
                codes[code] = codes.get(code, 0) + 1
                if delete is not None:  # keeps the store from filling up (not counted)
                    await self.call(kind, "Delete")(delete, timeout=120)

        started = time.monotonic()
        await asyncio.gather(*(one(client) for client in range(clients)))
        return HostileFigures(
            len(latencies), time.monotonic() - started, sent, received, dict(sorted(codes.items())), latencies
        )


def _hostile_worker(address: str, credentials: ClientCredentials, commands: Any, results: Any) -> None:
    async def run() -> None:
        hostile = Hostile(address, credentials)
        results.put("ready")
        while (command := await asyncio.to_thread(commands.get)) is not None:
            verb, *args = command
            if verb == "prepare":
                await hostile.prepare(*args)
                results.put("prepared")
            else:
                results.put(await hostile.load(*args))
        await hostile.channel.close(None)

    asyncio.run(run())


# -- the plane ----------------------------------------------------------------------------------------------


class ProfiledApiServer(ManagedProcess):
    """The API server as ApiServerProcess starts it, under cProfile (stats to `profile`)."""

    def __init__(self, etcd_endpoint: str, profile: str, log_path: str, watch_history: int) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        argv = python_module_argv(
            "services.apiserver.main", "--listen", self.address, "--etcd-servers", etcd_endpoint,
            *apiserver_security_flags(dev_pki()), "--token-listen", f"127.0.0.1:{free_port()}", "--controllers=",
            "--watch-history", str(watch_history),
        )
        argv[1:2] = ["-m", "cProfile", "-o", profile, "-m"]
        super().__init__("apiserver", argv, log_path)
        wait_for_port(self.port, self.process, timeout=60)


async def compact_etcd(endpoint: str, credentials: ClientCredentials) -> None:
    """Frees the history of the last load's big writes: etcd keeps every revision until compacted."""
    channel = aio_channel(endpoint, credentials)
    try:
        kv = rpc.KVStub(channel)
        header = (await kv.Range(rpc.RangeRequest(key=b"\0", range_end=b"\0", count_only=True))).header
        try:
            await kv.Compact(rpc.CompactionRequest(revision=header.revision, physical=True))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.OUT_OF_RANGE:  # nothing written since the last compaction
                raise
    finally:
        await channel.close(None)


def print_profile(path: str, limit: int) -> None:
    stats = pstats.Stats(path)
    stats.sort_stats("tottime")
    print(f"\n# where the API server's event loop spent its time (cProfile, top {limit} by own time)")
    stats.print_stats(limit)
    stats.sort_stats("cumulative")
    print(f"# ... and by cumulative time (top {limit})")
    stats.print_stats(limit)


def row(label: str, clients: str, good: tuple[list[float], list[float]], hostile: HostileFigures | None) -> str:
    samples, etcd_samples = good
    over = [sum(1 for s in samples if s > bound) for bound in (0.010, 0.050, 0.100)]
    text = (
        f"{label:<24} {clients:>7} {len(samples):>6} {ms(statistics.median(samples)):>7} "
        f"{ms(percentile(samples, 0.99)):>7} {ms(max(samples)):>7} {over[0]:>5} {over[1]:>5} {over[2]:>5} "
        f"{ms(percentile(etcd_samples, 0.99)):>7}"
    )
    if hostile is not None:
        rate = hostile.requests / hostile.seconds
        mib = (hostile.sent_bytes + hostile.received_bytes) / hostile.seconds / 2**20
        median = statistics.median(hostile.latencies) if hostile.latencies else 0.0
        codes = ",".join(f"{code}:{count}" for code, count in hostile.codes.items())
        text += f"   {rate:>6.1f} {mib:>6.1f} {ms(median):>7}  {codes}"
    return text


async def main_async(args: argparse.Namespace) -> None:
    pki = dev_pki()
    credentials = pki.credentials("admin")
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="kyb-bench-big-") as state:
        # Room for a run's big writes between compactions (etcd's default quota is 2 GiB).
        etcd = EtcdProcess(
            os.path.join(state, "etcd"), tls_flags=[*pki.etcd_flags(), "--quota-backend-bytes", str(8 * 2**30)]
        )
        api: ApiServerProcess | ProfiledApiServer
        if args.profile:
            api = ProfiledApiServer(etcd.endpoint, args.profile, os.path.join(state, "api.log"), args.watch_history)
        else:
            api = ApiServerProcess(
                etcd.endpoint, "--controllers=", "--watch-history", str(args.watch_history),
                log_path=os.path.join(state, "api.log"),
            )
        address = api.address
        workers = []
        try:
            good_commands, good_results = context.Queue(), context.Queue()
            hostile_commands, hostile_results = context.Queue(), context.Queue()
            for target, extra, commands, results in (
                (_good_worker, (etcd.endpoint, pki.etcd_client_credentials()), good_commands, good_results),
                (_hostile_worker, (), hostile_commands, hostile_results),
            ):
                worker = context.Process(target=target, args=(address, credentials, *extra, commands, results))
                worker.start()
                workers.append((worker, commands))
            for results in (good_results, hostile_results):
                assert await asyncio.to_thread(results.get, True, 120) == "ready"

            print(f"# big objects against a well-behaved client's Gets (objects ~{TARGET_BYTES / 2**20:.1f} MiB; "
                  f"{args.seconds:.0f} s per load; TLS, authentication and authorization as make up runs them)")
            print(f"{'load':<24} {'clients':>7} {'gets':>6} {'p50':>7} {'p99':>7} {'max':>7} {'>10ms':>5} "
                  f"{'>50ms':>5} {'>100':>5} {'etcd99':>7}   {'big/s':>6} {'MiB/s':>6} {'big p50':>7}  answers")
            good_commands.put(args.seconds)
            print(row("alone", "-", await asyncio.to_thread(good_results.get, True, 120), None), flush=True)
            for label, operation, shape in SCENARIOS:
                for clients in args.clients:
                    hostile_commands.put(("prepare", operation, shape, clients))
                    assert await asyncio.to_thread(hostile_results.get, True, 300) == "prepared"
                    hostile_commands.put(("load", operation, shape, clients, args.seconds + 2 * WARMUP))
                    await asyncio.sleep(WARMUP)
                    good_commands.put(args.seconds)
                    samples = await asyncio.to_thread(good_results.get, True, 300)
                    figures = await asyncio.to_thread(hostile_results.get, True, 300)
                    print(row(label, str(clients), samples, figures), flush=True)
                    await compact_etcd(etcd.endpoint, pki.etcd_client_credentials())
            good_commands.put(args.seconds)
            print(row("alone, after", "-", await asyncio.to_thread(good_results.get, True, 120), None), flush=True)
        finally:
            for _, commands in workers:
                commands.put(None)
            for worker, _ in workers:
                worker.join(30)
                if worker.is_alive():
                    worker.kill()
            api.stop(timeout=60)
            etcd.stop()
    if args.profile:
        print_profile(args.profile, args.profile_lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="of each hostile load (default %(default)s)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4],
                        help="concurrent hostile callers, each load run with each count (default %(default)s)")
    parser.add_argument("--only", nargs="+", default=None, help="run only the loads whose label contains one of these")
    parser.add_argument(
        "--watch-history", type=int, default=1000,
        help="the API server's --watch-history: its window holds every event's object, and 20,000 of "
        "1.4 MiB would not fit this machine (default %(default)s)",
    )
    parser.add_argument("--profile", metavar="FILE", help="run the API server under cProfile, stats to FILE")
    parser.add_argument("--profile-lines", type=int, default=40)
    args = parser.parse_args()
    if args.only:
        SCENARIOS[:] = [s for s in SCENARIOS if any(word in s[0] for word in args.only)]
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
