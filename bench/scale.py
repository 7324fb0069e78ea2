"""How far one control plane goes: hollow nodes at 30 pods per node (issue 16).

Run: python -m bench.scale [--sizes 10,100] [--pods-per-node 30] [--rate 20] [--proxies]

For each size N, a fresh control plane (etcd; the API server with the range
allocator, scheduler, endpoints and node lifecycle controllers; the replicator)
and N hollow nodes in one process (tools/hollownodes.py: the real kubelet, and
with --proxies the real proxy, on stand-ins). Then, as Kubernetes' density test:
replication controllers of --rc-size pods, created one after another so that
pods are asked for at --rate pods/s, until N x --pods-per-node pods exist; all
must run; then an API server restart; then the RCs are scaled to 0 and deleted.

Printed per size:
- pod startup p50/p99: a pod's first Watch event (its creation) to the first
  showing it Running, seen by this process;
- scheduler pods/s (first to last binding seen);
- API latency p50/p99 per verb and kind, from a client beside the load calling
  GET node, LIST pods (one page of 500), CREATE and DELETE pod (a probe pod, in a
  namespace of its own) every 0.2 s from the first RC to all Running;
- RSS of the API server, etcd and the hollow process with the nodes alone and with
  the pods, and the difference per 1,000 pods;
- time to recover after an API server restart (all pods listed Running again),
  and to delete everything.

Not yet (issue 16 asks for them): watch delay p99, CPU per 1,000 pods, etcd's
database size, the 1,000-node size (needs the API server's pod range wider than
a /16: this passes --cluster-cidr 10.128.0.0/14), and the curves as a PNG
(matplotlib is not installed here).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import tempfile
import time
import uuid
from collections import defaultdict
from typing import Any, Awaitable, Callable

from kybernetes.v1 import meta_pb2, pod_pb2, replication_controller_pb2
from services.common.client import ApiClient
from services.common.resources import NODES, PODS, REPLICATION_CONTROLLERS
from services.common.runtime.informer import Informer
from tools.processes import (
    ApiServerProcess,
    EtcdProcess,
    ManagedProcess,
    component_security_flags,
    python_module_argv,
    use_dev_credentials,
)

IMAGE = "kybernetes/busybox:latest"
CONTROLLERS = "nodeipam,scheduler,endpoints,nodelifecycle"
CLUSTER_CIDR = "10.128.0.0/14"  # 1,024 node ranges of /24


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def rc(name: str, namespace: str, replicas: int) -> replication_controller_pb2.ReplicationController:
    labels = {"rc": name}
    return replication_controller_pb2.ReplicationController(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace),
        spec=replication_controller_pb2.ReplicationControllerSpec(
            replicas=replicas, selector=labels,
            template=pod_pb2.PodTemplateSpec(
                metadata=meta_pb2.ObjectMeta(labels=labels),
                spec=pod_pb2.PodSpec(
                    termination_grace_period_seconds=0,
                    containers=[pod_pb2.Container(name="main", image=IMAGE)],
                ),
            ),
        ),
    )


class Cluster:
    def __init__(self, nodes: int, proxies: bool, workdir: str) -> None:
        self.workdir = workdir
        self.etcd = EtcdProcess(f"{workdir}/etcd")
        self.args = (f"--controllers={CONTROLLERS}", f"--cluster-cidr={CLUSTER_CIDR}", "--no-request-log")
        self.api = ApiServerProcess(self.etcd.endpoint, *self.args, log_path=f"{workdir}/apiserver-1.log")
        self.replicator = ManagedProcess(
            "replicator",
            python_module_argv("services.replicator.main", "--server", self.api.address,
                               *component_security_flags("replicator")),
            f"{workdir}/replicator.log",
        )
        argv = ["--nodes", str(nodes), "--server", self.api.address, "--node-prefix", "hollow-"]
        self.hollow = ManagedProcess(
            "hollownodes", python_module_argv("tools.hollownodes", *argv, *(["--proxies"] if proxies else [])),
            f"{workdir}/hollownodes.log",
        )

    def restart_apiserver(self) -> None:
        port = self.api.port
        self.api.stop()
        self.api = ApiServerProcess(
            self.etcd.endpoint, *self.args, port=port, log_path=f"{self.workdir}/apiserver-2.log"
        )

    def stop(self) -> None:
        for process in (self.hollow, self.replicator, self.api, self.etcd):
            process.stop()


class Latencies:
    """A client beside the load, timing single-object calls and a list page."""

    def __init__(self, api: ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.samples: dict[str, list[float]] = defaultdict(list)

    async def _timed(self, what: str, call: Awaitable[Any]) -> Any:
        began = time.perf_counter()
        try:
            return await call
        finally:
            self.samples[what].append(time.perf_counter() - began)

    async def run(self, load_namespace: str) -> None:
        sequence = 0
        while True:
            sequence += 1
            name = f"probe-{sequence}"
            pod = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name=name, namespace=self.namespace),
                              spec=pod_pb2.PodSpec(termination_grace_period_seconds=0,
                                                   containers=[pod_pb2.Container(name="main", image=IMAGE)]))
            try:
                await self._timed("GET node", self.api.get(NODES, "hollow-0"))
                await self._timed("LIST pods (500)", self.api.list(PODS, load_namespace, limit=500))
                await self._timed("CREATE pod", self.api.create(pod))
                await self._timed("DELETE pod", self.api.delete(PODS, name, self.namespace))
            except Exception:
                pass  # counted in the latency; the next round goes on
            await asyncio.sleep(0.2)


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.5)


async def bench_size(nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix=f"kyb-scale-{nodes}-")
    cluster = Cluster(nodes, args.proxies, workdir)
    api = ApiClient(cluster.api.address)
    namespace, probe_namespace = f"scale-{uuid.uuid4().hex[:6]}", f"probe-{uuid.uuid4().hex[:6]}"
    total = nodes * args.pods_per_node
    result: dict[str, Any] = {"nodes": nodes, "pods": total}
    added: dict[str, float] = {}
    bound: dict[str, float] = {}
    running: dict[str, float] = {}

    def seen(event_type: str, pod: pod_pb2.Pod, old: Any) -> None:
        uid, now = pod.metadata.uid, time.monotonic()
        added.setdefault(uid, now)
        if pod.spec.node_name:
            bound.setdefault(uid, now)
        if pod.status.phase == "Running":
            running.setdefault(uid, now)

    informer = Informer(api, PODS, namespace=namespace, retry_initial=0.05, retry_max=0.5)
    informer.add_handler(seen)
    tasks: list[asyncio.Task] = []
    try:
        began = time.monotonic()

        async def nodes_ready() -> bool:
            listed = (await api.list(NODES)).items
            ready = [n for n in listed if n.spec.pod_cidr and any(
                c.type == "Ready" and c.status == "True" for c in n.status.conditions)]
            return len(ready) == nodes

        await wait_for(nodes_ready, 120 + nodes * 0.5, "nodes ready")
        result["nodes_ready_s"] = time.monotonic() - began
        tasks.append(asyncio.create_task(informer.run()))
        await informer.wait_synced(30)
        idle = {"apiserver": rss_mb(cluster.api.pid), "etcd": rss_mb(cluster.etcd.pid),
                "hollow": rss_mb(cluster.hollow.pid)}
        latencies = Latencies(api, probe_namespace)
        tasks.append(asyncio.create_task(latencies.run(namespace)))
        first = time.monotonic()
        count = math.ceil(total / args.rc_size)
        for index in range(count):
            replicas = min(args.rc_size, total - index * args.rc_size)
            await api.create(rc(f"rc-{index}", namespace, replicas))
            await asyncio.sleep(replicas / args.rate)

        async def all_running() -> bool:
            return len(running) >= total

        await wait_for(all_running, 120 + total / 10, "all pods running")
        result["all_running_s"] = time.monotonic() - first
        tasks[-1].cancel()
        startup = [running[uid] - added[uid] for uid in running if uid in added]
        result["startup_p50"], result["startup_p99"] = percentile(startup, 0.5), percentile(startup, 0.99)
        binds = sorted(bound.values())
        result["scheduled_per_s"] = len(binds) / max(binds[-1] - binds[0], 1e-3) if binds else 0.0
        result["latency"] = {what: (percentile(values, 0.5), percentile(values, 0.99), len(values))
                             for what, values in latencies.samples.items()}
        loaded = {"apiserver": rss_mb(cluster.api.pid), "etcd": rss_mb(cluster.etcd.pid),
                  "hollow": rss_mb(cluster.hollow.pid)}
        result["rss_mb"] = {process: (idle[process], loaded[process]) for process in loaded}

        restarted = time.monotonic()
        cluster.restart_apiserver()

        async def recovered() -> bool:
            pods = []
            token = ""
            while True:
                page = await api.list(PODS, namespace, limit=500, continue_token=token)
                pods.extend(page.items)
                token = page.metadata.continue_token
                if not token:
                    break
            return len(pods) == total and all(p.status.phase == "Running" for p in pods)

        await wait_for(recovered, 120, "recovery after the API server restart")
        result["restart_recovery_s"] = time.monotonic() - restarted

        deleting = time.monotonic()
        for index in range(count):
            stored = await api.get(REPLICATION_CONTROLLERS, f"rc-{index}", namespace)
            stored.spec.replicas = 0
            await api.update(stored)

        async def none_left() -> bool:
            return not (await api.list(PODS, namespace, limit=1)).items

        await wait_for(none_left, 120 + total / 10, "every pod deleted")
        for index in range(count):
            await api.delete(REPLICATION_CONTROLLERS, f"rc-{index}", namespace)
        result["delete_s"] = time.monotonic() - deleting
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
        cluster.stop()
        if args.keep_logs:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def report(result: dict[str, Any]) -> str:
    pods = result["pods"]
    lines = [
        f"== {result['nodes']} hollow nodes, {pods} pods",
        f"  nodes ready            {result['nodes_ready_s']:.1f} s",
        f"  all Running            {result['all_running_s']:.1f} s after the first RC",
        f"  pod startup            p50 {result['startup_p50']:.2f} s   p99 {result['startup_p99']:.2f} s",
        f"  scheduler              {result['scheduled_per_s']:.0f} pods/s (first to last binding; bounded by --rate)",
    ]
    for what, (p50, p99, count) in sorted(result["latency"].items()):
        lines.append(f"  {what:<22} p50 {p50 * 1000:.1f} ms   p99 {p99 * 1000:.1f} ms   ({count} calls)")
    for process, (idle, loaded) in result["rss_mb"].items():
        lines.append(f"  RSS {process:<18} {idle:.0f} MB with the nodes alone, {loaded:.0f} MB with the pods "
                     f"({(loaded - idle) * 1000 / pods:.0f} MB per 1,000 pods)")
    lines.append(f"  API server restart     all pods listed Running again in {result['restart_recovery_s']:.1f} s")
    lines.append(f"  scale to 0 and delete  {result['delete_s']:.1f} s")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    use_dev_credentials()
    for size in args.sizes:
        print(report(await bench_size(size, args)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100", help="node counts, comma-separated (default %(default)s)")
    parser.add_argument("--pods-per-node", type=int, default=30)
    parser.add_argument("--rc-size", type=int, default=100, help="pods per replication controller")
    parser.add_argument("--rate", type=float, default=20.0, help="pods asked for per second (default %(default)s)")
    parser.add_argument("--proxies", action="store_true", help="a hollow proxy beside each hollow kubelet")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    args.sizes = [int(size) for size in args.sizes.split(",") if size]
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
