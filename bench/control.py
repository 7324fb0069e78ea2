"""Control-plane benchmark: scheduler throughput, and convergence beside Docker swarm.

Run: `python -m bench.control` (starts its own etcd and API servers on free
loopback ports). Prints, in one run:

- scheduler throughput: 1,000 pending pods over 100 registered nodes (Node
  objects with a fresh heartbeat, no kubelets; pods request 100m cpu, 128Mi),
  created while no scheduler runs, then pods bound per second (first to last
  bind, seen through a Watch) with the scheduler inside an API server process
  (the default deployment, beside the endpoints and node lifecycle controllers)
  and as its own process; target at least 300 pods/s;
- convergence on real Docker (skipped with --skip-docker): replication
  controllers of 20 and 50 replicas from create to all Running (seen through a
  Watch) with the whole control plane and one kubelet (one node, as the swarm
  is), beside `docker service create --replicas N` in swarm mode (same image,
  given by image ID, single node) from create to all tasks running; and for both
  the time from a container killed to its replacement started (Docker events).
  Ours and swarm run one right after the other for each size (--rounds times,
  in turns which goes first; medians printed), so both see the same machine,
  with the CPU time each convergence cost (our components', the machine's).
  A swarm that is not active is initialised for the run and left afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import docker
from docker.types import ServiceMode
from google.protobuf import timestamp_pb2

from kybernetes.v1 import meta_pb2, node_pb2, pod_pb2, replication_controller_pb2
from services.common.client import ApiClient
from tools.processes import (
    ApiServerProcess,
    EtcdProcess,
    ManagedProcess,
    component_security_flags,
    free_port,
    python_module_argv,
    use_dev_credentials,
)
from services.common.resources import NODES, PODS, REPLICATION_CONTROLLERS
from services.kubelet.naming import LABEL_CONTAINER_NAME, LABEL_NODE, LABEL_POD_UID

IMAGE = "kybernetes/busybox:latest"
HTTPD = ["httpd", "-f", "-p", "8080", "-h", "/"]


# -- helpers ----------------------------------------------------------------


def now_stamp() -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(time.time()))


async def run_bounded(items: list, concurrency: int, operation) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(item) -> None:
        async with semaphore:
            await operation(item)

    await asyncio.gather(*(one(item) for item in items))


def make_bench_node(name: str) -> node_pb2.Node:
    return node_pb2.Node(metadata=meta_pb2.ObjectMeta(name=name, labels={"bench": "scheduler"}))


async def heartbeat(api: ApiClient, name: str) -> None:
    node = await api.get(NODES, name)
    del node.status.conditions[:]
    stamp = now_stamp()
    node.status.conditions.add(type="Ready", status="True", last_heartbeat_time=stamp, last_transition_time=stamp)
    node.status.capacity.update({"cpu": "4", "memory": "16Gi", "pods": "110"})
    node.status.allocatable.update({"cpu": "4", "memory": "16Gi", "pods": "110"})
    await api.update_status(node)


def make_pending_pod(name: str, namespace: str) -> pod_pb2.Pod:
    return pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace, labels={"app": "bench"}),
        spec=pod_pb2.PodSpec(
            containers=[
                pod_pb2.Container(
                    name="main",
                    image=IMAGE,
                    command=["sleep", "3600"],
                    resources=pod_pb2.ResourceRequirements(requests={"cpu": "100m", "memory": "128Mi"}),
                )
            ]
        ),
    )


# -- scheduler throughput ------------------------------------------------------


async def bench_scheduler(etcd_endpoint: str, mode: str, nodes: int, pods: int, workdir: str) -> dict:
    """Creates nodes and pending pods with no scheduler running, then starts one and times the binds."""
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    node_prefix = f"{namespace}-node-"
    api_server = ApiServerProcess(etcd_endpoint, "--controllers=", log_path=f"{workdir}/apiserver-{mode}.log")
    scheduler: ManagedProcess | None = None
    api = ApiClient(api_server.address)
    try:
        node_names = [f"{node_prefix}{i:03d}" for i in range(nodes)]
        await run_bounded(node_names, 32, lambda name: api.create(make_bench_node(name)))
        await run_bounded(node_names, 32, lambda name: heartbeat(api, name))
        await run_bounded(list(range(pods)), 64, lambda i: api.create(make_pending_pod(f"p-{i:04d}", namespace)))

        bound_at: list[float] = []
        all_bound = asyncio.Event()

        async def watch_binds() -> None:
            listing = await api.list(PODS, namespace)
            already = sum(1 for p in listing.items if p.spec.node_name)
            seen: set[str] = set()
            options = meta_pb2.ListOptions(namespace=namespace, resource_version=listing.metadata.resource_version)
            call = api.watch(PODS, options)
            if already:
                raise RuntimeError(f"{already} pods were bound before the scheduler started")
            async for event in call:
                pod = event.object
                if event.type == "MODIFIED" and pod.spec.node_name and pod.metadata.name not in seen:
                    seen.add(pod.metadata.name)
                    bound_at.append(time.perf_counter())
                    if len(seen) == pods:
                        all_bound.set()
                        call.cancel()
                        return

        watcher = asyncio.create_task(watch_binds())
        await asyncio.sleep(0.5)  # the watch is open
        started = time.perf_counter()
        if mode == "in-apiserver":
            # The default deployment: scheduler, endpoints and node lifecycle inside an API server.
            scheduler = ApiServerProcess(etcd_endpoint, log_path=f"{workdir}/scheduler-{mode}.log")
        else:
            scheduler = ManagedProcess(
                "scheduler",
                python_module_argv(
                    "services.apiserver.controllers", "--server", api_server.address, "--controllers", "scheduler",
                    *component_security_flags("controllers"),
                ),
                f"{workdir}/scheduler-{mode}.log",
            )
        await asyncio.wait_for(all_bound.wait(), 300)
        await watcher
        per_node: dict[str, int] = {}
        for pod in (await api.list(PODS, namespace)).items:
            per_node[pod.spec.node_name] = per_node.get(pod.spec.node_name, 0) + 1
        first, last = bound_at[0], bound_at[-1]
        return {
            "mode": mode,
            "pods": pods,
            "nodes": nodes,
            "binding_s": last - first,
            "rate": (pods - 1) / (last - first) if last > first else float("inf"),
            "from_start_s": last - started,
            "min_per_node": min(per_node.values()),
            "max_per_node": max(per_node.values()),
        }
    finally:
        await api.close()
        if scheduler is not None:
            scheduler.stop()
        api_server.stop()


# -- convergence on Docker -----------------------------------------------------------


def web_rc(name: str, namespace: str, replicas: int, image: str) -> replication_controller_pb2.ReplicationController:
    labels = {"app": name}
    return replication_controller_pb2.ReplicationController(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace),
        spec=replication_controller_pb2.ReplicationControllerSpec(
            replicas=replicas,
            selector=labels,
            template=pod_pb2.PodTemplateSpec(
                metadata=meta_pb2.ObjectMeta(labels=labels),
                spec=pod_pb2.PodSpec(
                    containers=[pod_pb2.Container(name="web", image=image, command=HTTPD)],
                    termination_grace_period_seconds=1,
                ),
            ),
        ),
    )


def _next_start_event(client, labels: list[str], since: float, timeout: float) -> float | None:
    """Epoch seconds of the first container start (with all `labels`) after `since`."""
    events = client.events(
        since=int(since), until=int(since + timeout) + 1,
        filters={"type": "container", "event": "start", "label": labels}, decode=True,
    )
    try:
        for event in events:
            at = event.get("timeNano", 0) / 1e9
            if at >= since:
                return at
        return None
    finally:
        events.close()


async def time_to_restart(labels: list[str], kill_labels: list[str], timeout: float = 60.0) -> float | None:
    """Kills one running container with `kill_labels`; seconds until a container with `labels` starts."""
    client = docker.from_env()
    try:
        [victim, *_] = client.api.containers(filters={"label": kill_labels, "status": "running"})
        killed_at = time.time()
        await asyncio.to_thread(client.api.kill, victim["Id"])
        started_at = await asyncio.to_thread(_next_start_event, client, labels, killed_at, timeout)
        return None if started_at is None else started_at - killed_at
    finally:
        client.close()


async def wait_all_running(api: ApiClient, namespace: str, count: int, timeout: float = 300.0) -> float:
    """Watches the namespace's pods until `count` are Running; returns when (perf_counter)."""
    running: set[str] = set()
    call = api.watch(PODS, meta_pb2.ListOptions(namespace=namespace, send_initial_events=True))

    async def follow() -> float:
        async for event in call:
            pod = event.object
            if event.type == "BOOKMARK":
                continue
            if event.type != "DELETED" and pod.status.phase == "Running":
                running.add(pod.metadata.name)
            else:
                running.discard(pod.metadata.name)
            if len(running) >= count:
                return time.perf_counter()
        raise RuntimeError("watch ended")

    try:
        return await asyncio.wait_for(follow(), timeout)
    finally:
        call.cancel()


def _labelled(label: str) -> list:
    client = docker.from_env()
    try:
        return client.api.containers(all=True, filters={"label": label})
    finally:
        client.close()


def _remove_labelled(label: str) -> None:
    client = docker.from_env()
    try:
        for container in client.api.containers(all=True, filters={"label": label}):
            client.api.remove_container(container["Id"], force=True)
    finally:
        client.close()


async def wait_no_containers(label: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(_labelled, label):
        if time.monotonic() > deadline:
            raise TimeoutError(f"containers labelled {label} still there after {timeout}s")
        await asyncio.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy so far (all processes, Docker's included)."""
    with open("/proc/stat") as handle:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in handle.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Convergence:
    seconds: float
    heal_seconds: float | None = None
    # CPU seconds spent during the convergence: per component of ours, and the machine's.
    cpu: dict[str, float] = field(default_factory=dict)


class OurCluster:
    """The whole control plane and one kubelet (one node, as the swarm is)."""

    def __init__(self, etcd: EtcdProcess, workdir: str, args: argparse.Namespace) -> None:
        self.etcd = etcd
        self.image = args.image
        self.node = f"bench-control-{uuid.uuid4().hex[:6]}"
        self.api_server = ApiServerProcess(etcd.endpoint, log_path=f"{workdir}/apiserver-docker.log")
        self.replicator = ManagedProcess(
            "replicator",
            python_module_argv(
                "services.replicator.main", "--server", self.api_server.address,
                *component_security_flags("replicator"),
            ),
            f"{workdir}/replicator.log",
        )
        self.kubelet = ManagedProcess(
            "kubelet",
            python_module_argv(
                "services.kubelet.main", "--server", self.api_server.address, "--node-name", self.node,
                "--listen", f"127.0.0.1:{free_port()}", "--root-dir", f"{workdir}/kubelet",
                "--pause-image", args.pause_image,
                # No range allocator runs here (--controllers=): the kubelet's own range.
                "--pod-cidr", "10.88.0.0/16",
                *component_security_flags("kubelet", node=self.node, addresses=("127.0.0.1",)),
                *(["--docker-concurrency", str(args.docker_concurrency)] if args.docker_concurrency else []),
                *args.kubelet_arg,
            ),
            f"{workdir}/kubelet.log",
        )
        self.api = ApiClient(self.api_server.address)

    def _processes(self) -> dict[str, int]:
        return {
            "kubelet": self.kubelet.pid, "apiserver": self.api_server.pid,
            "replicator": self.replicator.pid, "etcd": self.etcd.pid,
        }

    async def wait_ready(self) -> None:
        for _ in range(300):
            try:
                node = await self.api.get(NODES, self.node)
                if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions):
                    return
            except Exception:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the kubelet did not register:\n{self.kubelet.log_tail()}")

    async def converge(self, size: int, heal: bool) -> Convergence:
        namespace = f"bench-{size}-{uuid.uuid4().hex[:4]}"
        processes = self._processes()
        cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        busy_before = busy_cpu_seconds()
        started = time.perf_counter()
        waiting = asyncio.create_task(wait_all_running(self.api, namespace, size))
        await self.api.create(web_rc("web", namespace, size, self.image))
        done = await waiting
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in processes.items()}
        cpu["machine"] = busy_cpu_seconds() - busy_before
        result = Convergence(done - started, cpu=cpu)
        if heal:
            pod = (await self.api.list(PODS, namespace)).items[0]
            labels = [f"{LABEL_POD_UID}={pod.metadata.uid}", f"{LABEL_CONTAINER_NAME}=web"]
            result.heal_seconds = await time_to_restart(labels, labels + [f"{LABEL_NODE}={self.node}"])
        await self.api.delete(REPLICATION_CONTROLLERS, "web", namespace)
        await wait_no_containers(f"{LABEL_NODE}={self.node}")
        return result

    async def stop(self) -> None:
        await self.api.close()
        self.kubelet.stop()
        self.replicator.stop()
        self.api_server.stop()
        # Normally none are left (each convergence deletes its RC and waits);
        # after a failed run, the node's containers go here.
        await asyncio.to_thread(_remove_labelled, f"{LABEL_NODE}={self.node}")


class Swarm:
    """`docker service create --replicas N` by image ID; leaves the swarm as it found it."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.client = docker.from_env()
        self.initialised = False
        self.image_id = ""

    async def start(self) -> None:
        if self.client.info()["Swarm"]["LocalNodeState"] != "active":
            await asyncio.to_thread(self.client.swarm.init, advertise_addr="127.0.0.1")
            self.initialised = True
        self.image_id = self.client.images.get(self.image).id  # by ID: no registry lookup per task

    async def converge(self, size: int, heal: bool) -> Convergence:
        client = self.client
        name = f"kyb-bench-{size}-{uuid.uuid4().hex[:4]}"
        busy_before = busy_cpu_seconds()
        started = time.perf_counter()
        service = await asyncio.to_thread(
            client.services.create, self.image_id, command=HTTPD, name=name,
            mode=ServiceMode("replicated", replicas=size),
        )
        try:
            while True:
                tasks = await asyncio.to_thread(service.tasks, {"desired-state": "running"})
                if sum(1 for t in tasks if t["Status"]["State"] == "running") >= size:
                    break
                await asyncio.sleep(0.05)
            result = Convergence(time.perf_counter() - started, cpu={"machine": busy_cpu_seconds() - busy_before})
            if heal:
                labels = [f"com.docker.swarm.service.name={name}"]
                result.heal_seconds = await time_to_restart(labels, labels, timeout=60)
            return result
        finally:
            await asyncio.to_thread(service.remove)
            try:
                await wait_no_containers(f"com.docker.swarm.service.name={name}")
            except TimeoutError:
                pass

    async def stop(self) -> None:
        if self.initialised:
            await asyncio.to_thread(self.client.swarm.leave, force=True)
        self.client.close()


async def bench_convergence(
    workdir: str, sizes: list[int], rounds: int, args: argparse.Namespace
) -> tuple[dict[int, list[Convergence]], dict[int, list[Convergence]], bool]:
    """Each size, each round: ours and swarm one right after the other (in turns
    which goes first), so that both see the same machine; other work on it comes
    and goes."""
    etcd = EtcdProcess(workdir + "/etcd-docker")  # no Node objects left from the scheduler figures
    ours: dict[int, list[Convergence]] = {size: [] for size in sizes}
    theirs: dict[int, list[Convergence]] = {size: [] for size in sizes}
    cluster: OurCluster | None = None
    swarm = Swarm(args.image)
    try:
        cluster = OurCluster(etcd, workdir, args)
        await cluster.wait_ready()
        await swarm.start()
        for round_ in range(rounds):
            for size in sizes:
                heal = round_ == 0 and size == sizes[0]
                runs = [(ours, cluster), (theirs, swarm)]
                if round_ % 2:
                    runs.reverse()
                for results, system in runs:
                    results[size].append(await system.converge(size, heal))
    finally:
        if cluster is not None:
            await cluster.stop()
        await swarm.stop()
        etcd.stop()
        shutil.rmtree(etcd.data_dir / "data", ignore_errors=True)
    return ours, theirs, swarm.initialised


def print_convergence(
    sizes: list[int], ours: dict[int, list[Convergence]], theirs: dict[int, list[Convergence]]
) -> None:
    for size in sizes:
        our_time = statistics.median(run.seconds for run in ours[size])
        swarm_time = statistics.median(run.seconds for run in theirs[size])
        rounds = len(ours[size])
        per_round = ""
        if rounds > 1:
            per_round = "   per round: " + ", ".join(
                f"{mine.seconds:.2f}/{other.seconds:.2f}" for mine, other in zip(ours[size], theirs[size], strict=True)
            )
        print(
            f"  {size:3d} replicas: kybernetes {our_time:6.2f} s (2 containers per pod)   "
            f"swarm {swarm_time:6.2f} s   ratio {our_time / swarm_time:.2f} (target < 1.0)"
            + (f"  [median of {rounds}]" if rounds > 1 else "") + per_round
        )
        cpu = {name: statistics.median(run.cpu[name] for run in ours[size]) for name in ours[size][0].cpu}
        swarm_cpu = statistics.median(run.cpu["machine"] for run in theirs[size])
        print(
            "       CPU s while converging: kybernetes machine {machine:.1f} (kubelet {kubelet:.2f}, apiserver "
            "{apiserver:.2f}, replicator {replicator:.2f}, etcd {etcd:.2f}); swarm machine {swarm:.1f}".format(
                **cpu, swarm=swarm_cpu
            )
        )
    first = sizes[0]
    our_heal, swarm_heal = ours[first][0].heal_seconds, theirs[first][0].heal_seconds
    print(
        f"  killed container running again: kybernetes {_seconds(our_heal)} (target < 1 s)   "
        f"swarm {_seconds(swarm_heal)} (default restart delay)"
    )


# -- main -------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix="kyb-bench-control-")
    etcd = EtcdProcess(workdir + "/etcd")
    try:
        if args.skip_scheduler:
            raise _Skip
        print(f"scheduler throughput: {args.pods} pending pods over {args.nodes} nodes (target >= 300 pods/s)")
        for mode in ("in-apiserver", "standalone"):
            result = await bench_scheduler(etcd.endpoint, mode, args.nodes, args.pods, workdir)
            print(
                f"  {mode:13s} {result['rate']:7.0f} pods/s  (first to last bind {result['binding_s']:.2f} s; "
                f"process start to last bind {result['from_start_s']:.2f} s; "
                f"pods per node {result['min_per_node']}..{result['max_per_node']})"
            )
    except _Skip:
        pass
    finally:
        etcd.stop()
        shutil.rmtree(etcd.data_dir / "data", ignore_errors=True)
    if not args.skip_docker:
        sizes = [20, 50]
        print(
            "convergence on Docker (one node; create to all Running) and self-healing "
            "(container killed to running again):"
        )
        ours, theirs, initialised = await bench_convergence(workdir, sizes, args.rounds, args)
        print_convergence(sizes, ours, theirs)
        print(f"  (swarm {'initialised for this run and left' if initialised else 'was already active: left as is'})")
    print(f"(logs in {workdir})")


class _Skip(Exception):
    pass


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.control", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--skip-docker", action="store_true", help="only the scheduler throughput")
    parser.add_argument("--skip-scheduler", action="store_true", help="only the convergence on Docker")
    parser.add_argument("--image", default=IMAGE, help="the pods' (and swarm tasks') image (default %(default)s)")
    parser.add_argument("--pause-image", default="kybernetes/pause:latest", help="the pods' infra image")
    parser.add_argument("--docker-concurrency", type=int, default=0, help="the kubelet's flag (default: its own)")
    parser.add_argument("--kubelet-arg", action="append", default=[], metavar="FLAG",
                        help="one more kubelet flag, e.g. --kubelet-arg=--seccomp-default (repeatable)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="convergence runs of each size (ours and swarm in turns); medians are printed")
    use_dev_credentials()  # a cluster as make up runs it: TLS, and clients as its admin
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
