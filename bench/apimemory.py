"""The API server's memory per pod, alone: the question bench.scale answers at 1,000 hollow
nodes in 26 minutes, answered for the API server in about six (issue 16's target: RSS per pod
within 2x of the pod's encoding).

Run: python -m bench.apimemory [--pods 30000] [--nodes 1000] [--rate 150]

One etcd and one API server as make up runs them (TLS, every call authenticated), --nodes
Node objects, and three watches of every pod read as they come (the scheduler's, the
replicator's and an informer's in a cluster). Then --pods pods at --rate pods/s, each through
the three versions a cluster writes: created as the replicator creates them, bound as the
scheduler binds them, then the status the kubelet writes once its container runs. The watch
history is kept for --history-age seconds, by default what 75 s holds at bench.scale's 30 pods/s,
so that the history weighs what it weighs there.

Printed: the API server's RSS with the nodes alone, with the pods (loaded), after bench.scale's
full lists of every pod (listed), and once the load's history has aged out and the free memory
has been released (settled); the difference per pod against the pods' encoded size; the API
server's CPU seconds, p50/p99 of a pod's three calls, and how long the full lists took.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import meta_pb2, namespace_pb2, node_pb2, pod_pb2
from services.apiserver.watchcache import DEFAULT_HISTORY_AGE
from services.common.client import ApiClient
from services.common.resources import PODS
from tools.processes import ApiServerProcess, EtcdProcess, use_dev_credentials

from .scale import IMAGE, cpu_seconds, list_all, percentile, rss_mb, settle_seconds

NAMESPACE = "load"
RC_SIZE = 100  # pods per replication controller, as bench.scale's
SCALE_RATE = 30.0  # bench.scale's density rate, pods/s
ALL_POD_WATCHES = 3
FULL_LISTS = 3  # bench.scale's, before its paged one
IN_FLIGHT = 50  # pods between their creation and their Running status at once
NODES_SETTLE_SECONDS = 20.0


def created_pod(index: int, controller_uid: str) -> pod_pb2.Pod:
    """The pod as the replicator creates it from bench.scale's template."""
    controller = f"rc-{index // RC_SIZE}"
    return pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(
            name=f"{controller}-{index % 100_000:05d}",  # five characters, as generateName adds
            generate_name=f"{controller}-", namespace=NAMESPACE,
            labels={"rc": controller}, annotations={"kybernetes.io/created-by": controller},
            owner_references=[meta_pb2.OwnerReference(
                api_version="v1", kind="ReplicationController", name=controller, uid=controller_uid, controller=True,
            )],
        ),
        spec=pod_pb2.PodSpec(
            termination_grace_period_seconds=0, containers=[pod_pb2.Container(name="main", image=IMAGE)]
        ),
    )


def running_status(pod: pod_pb2.Pod, index: int) -> None:
    """The status a kubelet writes once the pod's container runs."""
    now = Timestamp(seconds=int(time.time()))
    status = pod.status
    status.phase = "Running"
    del status.conditions[:]
    for condition in ("Initialized", "Ready", "ContainersReady", "PodScheduled"):
        status.conditions.add(type=condition, status="True", last_transition_time=now)
    status.host_ip = "127.0.0.1"
    status.pod_ip = f"10.{128 + index // 65536}.{index // 256 % 256}.{index % 256}"
    status.start_time.CopyFrom(now)
    container = status.container_statuses.add(
        name="main", ready=True, started=True, image=IMAGE, image_id=f"sha256:{IMAGE}",
        container_id=f"docker://{uuid.uuid4().hex}{uuid.uuid4().hex}",
    )
    container.state.running.started_at.CopyFrom(Timestamp(seconds=now.seconds, nanos=303639296))


async def read_forever(api: ApiClient) -> None:
    async for _ in api.watch(PODS, meta_pb2.ListOptions()):
        pass


async def run(args: argparse.Namespace) -> None:
    history_age = args.history_age or DEFAULT_HISTORY_AGE * SCALE_RATE / args.rate
    use_dev_credentials()
    with tempfile.TemporaryDirectory(prefix="kyb-apimemory-") as state:
        etcd = EtcdProcess(f"{state}/etcd")
        api_server = ApiServerProcess(
            etcd.endpoint, "--controllers=", "--no-request-log", f"--watch-history-age={history_age:g}",
            log_path=f"{state}/apiserver.log",
        )
        api = ApiClient(api_server.address, timeout=120.0)
        watches: list[asyncio.Task[None]] = []
        try:
            await api.create(namespace_pb2.Namespace(metadata=meta_pb2.ObjectMeta(name=NAMESPACE)))
            in_flight = asyncio.Semaphore(IN_FLIGHT)

            async def create_node(index: int) -> None:
                async with in_flight:
                    await api.create(node_pb2.Node(metadata=meta_pb2.ObjectMeta(name=f"hollow-{index}")))

            await asyncio.gather(*(create_node(i) for i in range(args.nodes)))
            watches = [asyncio.create_task(read_forever(api)) for _ in range(ALL_POD_WATCHES)]
            await asyncio.sleep(NODES_SETTLE_SECONDS)
            idle = rss_mb(api_server.pid)
            controller_uids = [str(uuid.uuid4()) for _ in range(args.pods // RC_SIZE + 1)]
            took: list[float] = []

            async def one_pod(index: int) -> None:
                async with in_flight:
                    began = time.perf_counter()
                    stored = await api.create(created_pod(index, controller_uids[index // RC_SIZE]))
                    bound = await api.bind(NAMESPACE, stored.metadata.name, f"hollow-{index % args.nodes}")
                    running_status(bound, index)
                    await api.update_status(bound)
                    took.append(time.perf_counter() - began)

            print(f"# {args.pods:,} pods at {args.rate:g}/s through their three versions, {args.nodes:,} nodes, "
                  f"watch history {history_age:g} s (what {DEFAULT_HISTORY_AGE:g} s holds at {SCALE_RATE:g} pods/s)",
                  flush=True)
            started = time.monotonic()
            pods = []
            for index in range(args.pods):
                await asyncio.sleep(max(0.0, started + index / args.rate - time.monotonic()))
                pods.append(asyncio.create_task(one_pod(index)))
            await asyncio.gather(*pods)
            loaded = rss_mb(api_server.pid)
            cpu = cpu_seconds(api_server.pid)
            page = await api.list(PODS, NAMESPACE, limit=500)
            encoded = sum(len(pod.SerializeToString()) for pod in page.items) / len(page.items)
            # bench.scale's full lists of every pod, between its loaded and settled readings.
            listing = []
            for _ in range(FULL_LISTS):
                began = time.perf_counter()
                await api.list(PODS, "")
                listing.append(time.perf_counter() - began)
            await list_all(api)
            listed = rss_mb(api_server.pid)
            await asyncio.sleep(settle_seconds(history_age))
            settled = rss_mb(api_server.pid)
        finally:
            for watch in watches:
                watch.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
            await api.close()
            api_server.stop()
            etcd.stop()

    def per_pod(rss: float) -> str:
        size = (rss - idle) * 2**20 / args.pods
        return f"{size:,.0f} B of RSS per pod, {size / encoded:.2f}x the encoding"

    print(f"API server RSS   idle {idle:.1f} MB, loaded {loaded:.1f} MB, listed {listed:.1f} MB, "
          f"settled {settled:.1f} MB")
    print(f"  loaded         {per_pod(loaded)} ({encoded:.0f} B; the target: 2x)")
    print(f"  listed         {per_pod(listed)} (after {FULL_LISTS} full lists, "
          f"{min(listing):.2f}-{max(listing):.2f} s, and one in pages of 500)")
    print(f"  settled        {per_pod(settled)}")
    print(f"API server CPU   {cpu:.1f} s; a pod's three calls p50 {percentile(took, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(took, 0.99) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=30_000)
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=150.0, help="pods/s (default %(default)s)")
    parser.add_argument("--history-age", type=float, default=0.0,
                        help="the API server's --watch-history-age (default: what 75 s holds at 30 pods/s)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
