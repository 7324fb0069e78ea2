"""Pod startup latency: the kubelet beside plain Docker, in one run.

Run: python -m bench.pod_startup [--repeat 10] [--burst 30] [--docker-concurrency 4]

Starts its own etcd, API server (no scheduler: pods are created already bound
to the node) and kubelet. For each pod, the time from the Create call to the
first Watch event that shows it Running (every container running):

- single: one pod at a time, --repeat times;
- burst: --burst pods created at once on the one node (--burst-rounds times,
  alternating with the Docker baseline).

Beside each, plain Docker through the SDK doing the same containers the same
way: an infra container from the pause image, then the app container joined
to its network namespace (create + start each); one pod at a time for
"single", and the burst's pods over --docker-concurrency threads (the
kubelet's own Docker concurrency). Targets: the kubelet within 1.3x of plain
Docker, and burst p99 under 5 s (the Kubernetes pod-startup SLO).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import docker

from kybernetes.v1 import meta_pb2, pod_pb2
from services.common.client import ApiClient
from tools.processes import (
    ApiServerProcess,
    EtcdProcess,
    ManagedProcess,
    component_security_flags,
    free_port,
    use_dev_credentials,
    wait_for_port,
)
from services.common.resources import PODS

BUSYBOX_IMAGE = os.environ.get("KYBERNETES_BUSYBOX_IMAGE", "kybernetes/busybox:latest")
PAUSE_IMAGE = os.environ.get("KYBERNETES_PAUSE_IMAGE", "kybernetes/pause:latest")
APP_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
NODE_LABEL = "io.kybernetes.node"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 0.50), "p99": percentile(values, 0.99), "max": max(values)}


# --- the kubelet ------------------------------------------------------------------------------


def bench_pod(name: str, namespace: str, node: str) -> pod_pb2.Pod:
    pod = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace))
    pod.spec.node_name = node
    pod.spec.termination_grace_period_seconds = 1
    pod.spec.containers.add(name="app", image=BUSYBOX_IMAGE, command=APP_COMMAND)
    return pod


def _running(pod: pod_pb2.Pod) -> bool:
    statuses = pod.status.container_statuses
    return pod.status.phase == "Running" and bool(statuses) and all(s.state.HasField("running") for s in statuses)


class KubeletBench:
    def __init__(self, client: ApiClient, node: str) -> None:
        self.client = client
        self.node = node
        self.namespace = f"bench-{uuid.uuid4().hex[:6]}"

    async def run(self, names: list[str]) -> list[float]:
        """Creates the pods at once; each one's seconds from Create to Running seen through Watch."""
        started: dict[str, float] = {}
        latencies: dict[str, float] = {}
        watch = self.client.watch(PODS, meta_pb2.ListOptions(namespace=self.namespace))
        all_running = asyncio.get_running_loop().create_future()

        async def follow() -> None:
            async for event in watch:
                pod = event.object
                name = pod.metadata.name
                if name in started and name not in latencies and _running(pod):
                    latencies[name] = time.perf_counter() - started[name]
                    if len(latencies) == len(names):
                        all_running.set_result(None)
                        return

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.2)  # the watch is open before the first Create

        async def create(name: str) -> None:
            started[name] = time.perf_counter()
            await self.client.create(bench_pod(name, self.namespace, self.node))

        try:
            await asyncio.gather(*(create(name) for name in names))
            await asyncio.wait_for(all_running, 120)
        finally:
            follower.cancel()
            watch.cancel()
        return [latencies[name] for name in names]

    async def clean(self, names: list[str]) -> None:
        await asyncio.gather(*(self.client.delete(PODS, name, self.namespace) for name in names))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not await asyncio.to_thread(_containers, self.node):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError("the kubelet did not remove the bench pods' containers")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _containers(node: str) -> list:
    client = docker.from_env()
    try:
        return client.api.containers(all=True, filters={"label": f"{NODE_LABEL}={node}"})
    finally:
        client.close()


# --- plain Docker -----------------------------------------------------------------------------


class DockerBench:
    def __init__(self, concurrency: int, runtime_default_seccomp: bool) -> None:
        self.label = f"kyb-bench-docker-{uuid.uuid4().hex[:6]}"
        self.concurrency = concurrency
        self.api = docker.from_env(max_pool_size=concurrency + 2).api
        # The kubelet's seccomp choice (Unconfined unless --seccomp-default), so
        # that both start the same containers.
        self.security_opt = None if runtime_default_seccomp else ["seccomp=unconfined"]

    def start_pod(self, name: str) -> None:
        """What `docker run -d` does for the infra container and then the app joined to it."""
        labels = {NODE_LABEL: self.label}
        infra = self.api.create_container(
            PAUSE_IMAGE, name=f"{self.label}_{name}_POD", labels=labels,
            host_config=self.api.create_host_config(ipc_mode="shareable", security_opt=self.security_opt),
        )
        self.api.start(infra["Id"])
        app = self.api.create_container(
            BUSYBOX_IMAGE, name=f"{self.label}_{name}_app", labels=labels, entrypoint=APP_COMMAND,
            host_config=self.api.create_host_config(
                network_mode=f"container:{infra['Id']}", ipc_mode=f"container:{infra['Id']}",
                security_opt=self.security_opt,
            ),
        )
        self.api.start(app["Id"])

    def run(self, names: list[str], concurrency: int) -> list[float]:
        """Starts the pods over `concurrency` threads; each one's seconds from the start."""
        begin = time.perf_counter()

        def timed(name: str) -> float:
            self.start_pod(name)
            return time.perf_counter() - begin

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(timed, names))

    def clean(self) -> None:
        for summary_ in self.api.containers(all=True, filters={"label": f"{NODE_LABEL}={self.label}"}):
            self.api.remove_container(summary_["Id"], force=True)


# --- the run ---------------------------------------------------------------------------------


def _row(label: str, values: list[float]) -> str:
    stats = summary(values)
    return f"{label:<40} {len(values):>4} {stats['p50']:>8.3f} {stats['p99']:>8.3f} {stats['max']:>8.3f}"


async def main_async(args: argparse.Namespace) -> int:
    workdir = tempfile.mkdtemp(prefix="kyb-bench-pod-startup-")
    node = f"bench-{uuid.uuid4().hex[:6]}"
    etcd = EtcdProcess(os.path.join(workdir, "etcd"))
    apiserver = kubelet = None
    plain = DockerBench(args.docker_concurrency, "--seccomp-default" in args.kubelet_arg)
    client: ApiClient | None = None
    kubelet_cpu: list[float] = []
    finished = False
    try:
        apiserver = ApiServerProcess(etcd.endpoint, "--controllers=", "--no-request-log",
                                     log_path=os.path.join(workdir, "apiserver.log"))
        kubelet_port = free_port()
        kubelet = ManagedProcess(
            "kubelet",
            [sys.executable, "-m", "services.kubelet.main", "--node-name", node, "--server", apiserver.address,
             "--listen", f"127.0.0.1:{kubelet_port}", "--root-dir", os.path.join(workdir, "kubelet"),
             "--pause-image", PAUSE_IMAGE, "--docker-concurrency", str(args.docker_concurrency),
             # No range allocator runs here (--controllers=): the kubelet's own range.
             "--pod-cidr", "10.88.0.0/16",
             *component_security_flags("kubelet", node=node, addresses=("127.0.0.1",)), *args.kubelet_arg],
            os.path.join(workdir, "kubelet.log"),
            env={"KYBERNETES_LOG_LEVEL": "warning"},
        )
        wait_for_port(kubelet_port, kubelet.process)
        client = ApiClient(apiserver.address, timeout=30)
        ours = KubeletBench(client, node)

        # Warm-up: first container starts pay for page cache and image layers.
        await ours.run(["warmup"])
        await ours.clean(["warmup"])
        plain.run(["warmup"], 1)
        plain.clean()

        single_ours: list[float] = []
        single_docker: list[float] = []
        for i in range(args.repeat):
            single_ours += await ours.run([f"single-{i}"])
            await ours.clean([f"single-{i}"])
            single_docker += await asyncio.to_thread(plain.run, [f"single-{i}"], 1)
            await asyncio.to_thread(plain.clean)

        # Bursts alternate between the two, so that both see the same machine
        # (other work on it comes and goes).
        burst_ours: list[float] = []
        burst_docker: list[float] = []
        for round_ in range(args.burst_rounds):
            burst_names = [f"burst-{round_}-{i}" for i in range(args.burst)]
            cpu_before = _cpu_seconds(kubelet.pid)
            burst_ours += await ours.run(burst_names)
            kubelet_cpu.append(_cpu_seconds(kubelet.pid) - cpu_before)
            await ours.clean(burst_names)
            burst_docker += await asyncio.to_thread(plain.run, burst_names, args.docker_concurrency)
            await asyncio.to_thread(plain.clean)
        finished = True
    finally:
        if client is not None:
            await client.close()
        for process in (kubelet, apiserver):
            if process is not None:
                process.stop()
        etcd.stop()
        plain.clean()
        for leftover in _containers(node):
            docker.from_env().api.remove_container(leftover["Id"], force=True)
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)

    print(f"pod startup: Create -> Running seen through Watch (seconds); docker concurrency {args.docker_concurrency}")
    print(f"{'':<40} {'pods':>4} {'p50':>8} {'p99':>8} {'max':>8}")
    print(_row("single, kubelet", single_ours))
    print(_row("single, plain docker (serial)", single_docker))
    rounds = f" x{args.burst_rounds}" if args.burst_rounds > 1 else ""
    print(_row(f"burst of {args.burst}{rounds}, kubelet", burst_ours))
    print(_row(f"burst of {args.burst}{rounds}, plain docker ({args.docker_concurrency} thr)", burst_docker))
    single_ratio = summary(single_ours)["p50"] / summary(single_docker)["p50"]
    burst_ratio = summary(burst_ours)["p99"] / summary(burst_docker)["p99"]
    burst_p99 = summary(burst_ours)["p99"]
    single_verdict = "ok" if single_ratio <= 1.3 else "MISSED"
    burst_verdict = "ok" if burst_ratio <= 1.3 else "MISSED"
    print(f"single p50 ratio kubelet/docker: {single_ratio:.2f}  (target <= 1.3: {single_verdict})")
    print(f"burst p99 ratio kubelet/docker:  {burst_ratio:.2f}  (target <= 1.3: {burst_verdict})")
    print(f"burst p99: {burst_p99:.2f}s  (target < 5 s: {'ok' if burst_p99 < 5 else 'MISSED'})")
    print(f"kubelet CPU per burst of {args.burst}: " + ", ".join(f"{seconds:.2f}s" for seconds in kubelet_cpu))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10, help="single-pod trials")
    parser.add_argument("--burst", type=int, default=30, help="pods created at once")
    parser.add_argument("--burst-rounds", type=int, default=1, help="bursts of each kind, alternating")
    parser.add_argument(
        "--docker-concurrency", type=int, default=4, help="kubelet --docker-concurrency and baseline threads"
    )
    parser.add_argument("--kubelet-arg", action="append", default=[], metavar="FLAG",
                        help="one more kubelet flag, e.g. --kubelet-arg=--seccomp-default (repeatable; "
                             "--seccomp-default also gives the Docker baseline Docker's default profile)")
    use_dev_credentials()  # a cluster as make up runs it: TLS, and clients as its admin
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
