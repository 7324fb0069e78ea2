"""How far one control plane goes: hollow nodes at 30 pods per node (issue 16).

Run: python -m bench.scale [--sizes 10,100,1000] [--pods-per-node 30] [--rate 20] [--proxies]
     python -m bench.scale --plot-only           # redraw the report and PNG from the saved results

For each size N, a fresh control plane (etcd; the API server with the range
allocator, scheduler, endpoints and node lifecycle controllers; the replicator)
and N hollow nodes in one process (tools/hollownodes.py: the real kubelet, and
with --proxies the real proxy, on stand-ins). Then, as Kubernetes' density test:
replication controllers of --rc-size pods, created one after another so that
pods are asked for at --rate pods/s, until N x --pods-per-node pods exist; all
must run; then an API server restart; then the RCs are scaled to 0 and deleted.

Printed per size:
- pod startup p50/p99: a pod's first Watch event (its creation) to the first
  showing it Running, seen by this process; its p99 by phase (seen -> bound,
  bound -> Running) and by 30 s window of creation, the five worst named;
- watch delay p50/p99: the probe client's CREATE of a pod sent to its ADDED event
  reaching this process's watch of that namespace (the write and its fan-out: the
  event usually arrives before the create's answer);
- scheduler pods/s (first to last binding seen);
- API latency p50/p99 per verb and kind, from a client beside the load calling
  GET node, GET pod, LIST nodes, LIST pods (one page of 500), CREATE and DELETE
  pod (a probe pod, in a namespace of its own) every 0.2 s from the first RC to
  all Running; then full LISTs of every pod (one call, and pages of 500);
- RSS of the API server, etcd, the replicator, the hollow process and this one with the
  nodes alone and with the pods, the difference per 1,000 pods, and the API
  server's per pod against the pods' encoded size; the API server's again about
  three minutes later, once the load's watch history has aged out (settled);
- CPU: cores each process uses with the nodes alone and with the pods running
  (10 s windows), CPU seconds per 1,000 pods from the first RC to all Running,
  and the cores each used on average over the load (this process too: its
  informer of every pod shares the machine);
- etcd's database file with the pods;
- time to recover after an API server restart (all pods listed Running again),
  and to delete everything.

Each size's figures are saved to bench/results/scale-<N>.json; the text report
of every size saved (bench/results/scale.txt) and the curves
(bench/results/scale.png, with matplotlib: `pip install -e .[bench]`) are
redrawn from them after each size. --label names a variant (e.g. the node
status posted every 10 s as before node leases: --label legacy-heartbeats
--node-status-report-frequency 10) saved beside, not over, the default.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import math
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc

from kybernetes.v1 import meta_pb2, pod_pb2, replication_controller_pb2
from services.common.client import ApiClient
from services.common.resources import NODES, PODS, REPLICATION_CONTROLLERS
from services.common.runtime.informer import Informer
from services.apiserver.watchcache import DEFAULT_BOOKMARK_INTERVAL, DEFAULT_HISTORY_AGE
from services.common.memory import RELEASE_INTERVAL
from services.common.servicemain import GC_THRESHOLDS
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
RESULTS = Path(__file__).resolve().parent / "results"
CPU_WINDOW = 10.0  # seconds over which "cores used" is measured


def settle_seconds(history_age: float = DEFAULT_HISTORY_AGE) -> float:
    """When the settled RSS is read, after the loaded one: the watch history lets an event go once
    it is older than its age, at the next event of its kind or bookmark round; then the next release."""
    return history_age + DEFAULT_BOOKMARK_INTERVAL + RELEASE_INTERVAL + 5.0


SETTLE_SECONDS = settle_seconds()
PROCESSES = ("apiserver", "etcd", "replicator", "hollow")
# With --controller-manager: the scheduler and the controllers in a process of their own.
CONTROLLER_MANAGER = "controllers"
BENCH_CLIENT = "bench client"
STARTUP_SLO_SECONDS = 5.0  # Kubernetes' pod startup SLO: p99 within 5 s
STARTUP_WINDOW_SECONDS = 30.0  # the report's windows of creation time


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def durations(began: dict[str, float], reached: dict[str, float]) -> dict[str, float]:
    """Seconds from each pod's first moment to its second, for the pods that have both."""
    return {uid: at - began[uid] for uid, at in reached.items() if uid in began}


def startup_windows(
    added: dict[str, float], running: dict[str, float], start: float, width: float = STARTUP_WINDOW_SECONDS
) -> list[tuple[float, float, int]]:
    """Pod startup p99 of the pods first seen in each `width`-second window from `start`: (the
    window's start in seconds, its p99, its pods). A tail made by a few stalls shows as a few
    windows far above the rest; a tail spread evenly, as every window near the overall p99."""
    windows: dict[int, list[float]] = defaultdict(list)
    for uid, took in durations(added, running).items():
        windows[int((added[uid] - start) // width)].append(took)
    return [(index * width, percentile(values, 0.99), len(values)) for index, values in sorted(windows.items())]


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def cpu_seconds(pid: int) -> float:
    """User and system CPU the process has used (its threads included)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def load_average() -> str:
    try:
        with open("/proc/loadavg") as handle:
            return " ".join(handle.read().split()[:3])
    except OSError:
        return "?"


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
    def __init__(self, nodes: int, args: argparse.Namespace, workdir: str) -> None:
        self.workdir = workdir
        self.etcd = EtcdProcess(f"{workdir}/etcd")
        apart = getattr(args, "controller_manager", False)
        self.args = (f"--controllers={'' if apart else CONTROLLERS}", f"--cluster-cidr={CLUSTER_CIDR}",
                     "--no-request-log", *getattr(args, "apiserver_args", ()))
        self.api = ApiServerProcess(self.etcd.endpoint, *self.args, log_path=f"{workdir}/apiserver-1.log")
        # As kube-scheduler and kube-controller-manager run: their own process, the API's clients.
        self.controllers = ManagedProcess(
            CONTROLLER_MANAGER,
            python_module_argv("services.apiserver.controllers", "--server", self.api.address,
                               f"--controllers={CONTROLLERS}", f"--cluster-cidr={CLUSTER_CIDR}",
                               *component_security_flags("controllers")),
            f"{workdir}/controllers.log",
        ) if apart else None
        self.replicator = ManagedProcess(
            "replicator",
            python_module_argv("services.replicator.main", "--server", self.api.address,
                               *component_security_flags("replicator")),
            f"{workdir}/replicator.log",
        )
        argv = ["--nodes", str(nodes), "--server", self.api.address, "--node-prefix", "hollow-"]
        if args.proxies:
            argv.append("--proxies")
        if args.node_status_report_frequency is not None:
            argv += ["--node-status-report-frequency", str(args.node_status_report_frequency)]
        argv += ["--sync-frequency", str(args.sync_frequency)]
        self.hollow = ManagedProcess(
            "hollownodes", python_module_argv("tools.hollownodes", *argv), f"{workdir}/hollownodes.log",
        )

    def pids(self) -> dict[str, int]:
        pids = {"apiserver": self.api.pid, "etcd": self.etcd.pid, "replicator": self.replicator.pid,
                "hollow": self.hollow.pid}
        if self.controllers is not None:
            pids[CONTROLLER_MANAGER] = self.controllers.pid
        # This process too: its informer of every pod and its probe client share the two cores.
        pids[BENCH_CLIENT] = os.getpid()
        return pids

    def logged(self, event: str) -> int:
        """How many times the API servers and the controllers logged this event."""
        count = 0
        for log in Path(self.workdir).glob("*.log"):
            if log.name.startswith(("apiserver-", CONTROLLER_MANAGER)):
                with open(log, errors="replace") as handle:
                    count += sum(f"event={event} " in line for line in handle)
        return count

    def etcd_db_bytes(self) -> int:
        try:
            return (Path(self.etcd.data_dir) / "data" / "member" / "snap" / "db").stat().st_size
        except OSError:
            return 0

    def restart_apiserver(self) -> None:
        port = self.api.port
        self.api.stop()
        self.api = ApiServerProcess(
            self.etcd.endpoint, *self.args, port=port, log_path=f"{self.workdir}/apiserver-2.log"
        )

    def stop(self) -> None:
        for process in (self.hollow, self.replicator, self.controllers, self.api, self.etcd):
            if process is not None:
                process.stop()


class Usage:
    """RSS and CPU of the cluster's processes at one moment."""

    def __init__(self, cluster: Cluster) -> None:
        self.at = time.monotonic()
        self.rss = {name: rss_mb(pid) for name, pid in cluster.pids().items()}
        self.cpu = {name: cpu_seconds(pid) for name, pid in cluster.pids().items()}

    def cores_since(self, earlier: Usage) -> dict[str, float]:
        span = max(self.at - earlier.at, 1e-3)
        return {name: (self.cpu[name] - earlier.cpu[name]) / span for name in self.cpu}


async def cores_used(cluster: Cluster, seconds: float = CPU_WINDOW) -> tuple[Usage, dict[str, float]]:
    first = Usage(cluster)
    await asyncio.sleep(seconds)
    last = Usage(cluster)
    return last, last.cores_since(first)


class Latencies:
    """A client beside the load, timing single-object calls and list pages."""

    def __init__(self, api: ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        # Watch delay: each probe pod's create sent, to its ADDED event seen.
        self.sent: dict[str, float] = {}
        self.added: dict[str, float] = {}
        self.informer = Informer(api, PODS, namespace=namespace, retry_initial=0.05, retry_max=0.5)
        self.informer.add_handler(self._seen)

    def _seen(self, event_type: str, pod: pod_pb2.Pod, old: Any) -> None:
        if event_type == "ADDED":
            self.added.setdefault(pod.metadata.name, time.monotonic())

    @property
    def watch_delays(self) -> list[float]:
        return [self.added[name] - at for name, at in self.sent.items() if name in self.added]

    async def timed(self, what: str, call: Awaitable[Any]) -> Any:
        began = time.perf_counter()
        try:
            return await call
        except Exception:
            self.errors[what] += 1
            raise
        finally:
            self.samples[what].append(time.perf_counter() - began)

    async def run(self, load_namespace: str, some_pod: Callable[[], str | None]) -> None:
        sequence = 0
        while True:
            sequence += 1
            name = f"probe-{sequence}"
            pod = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name=name, namespace=self.namespace),
                              spec=pod_pb2.PodSpec(termination_grace_period_seconds=0,
                                                   containers=[pod_pb2.Container(name="main", image=IMAGE)]))
            try:
                await self.timed("GET node", self.api.get(NODES, "hollow-0"))
                target = some_pod()
                if target:
                    await self.timed("GET pod", self.api.get(PODS, target, load_namespace))
                await self.timed("LIST nodes", self.api.list(NODES))
                await self.timed("LIST pods (500)", self.api.list(PODS, load_namespace, limit=500))
                self.sent[name] = time.monotonic()
                await self.timed("CREATE pod", self.api.create(pod))
                await self.timed("DELETE pod", self.api.delete(PODS, name, self.namespace))
            except Exception:
                pass  # counted in the latency and the errors; the next round goes on
            await asyncio.sleep(0.2)


async def list_all(api: ApiClient, namespace: str = "", page: int = 500) -> list[pod_pb2.Pod]:
    pods: list[pod_pb2.Pod] = []
    token = ""
    while True:
        listed = await api.list(PODS, namespace, limit=page, continue_token=token)
        pods.extend(listed.items)
        token = listed.metadata.continue_token
        if not token:
            return pods


async def scale_to_zero(api: ApiClient, name: str, namespace: str) -> None:
    stored = await api.get(REPLICATION_CONTROLLERS, name, namespace)
    stored.spec.replicas = 0
    await api.update(stored)


async def retried(call: Callable[[], Awaitable[Any]], failures: list[str], attempts: int = 10) -> None:
    """Calls until it succeeds (at most `attempts` times), noting each failure: one failed call
    after an hour's run must not lose the figures."""
    for attempt in range(attempts):
        try:
            await call()
            return
        except grpc.aio.AioRpcError as error:
            failures.append(f"{error.code().name}: {error.details()}")
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)


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
    cluster = Cluster(nodes, args, workdir)
    api = ApiClient(cluster.api.address, timeout=120.0)
    namespace, probe_namespace = f"scale-{uuid.uuid4().hex[:6]}", f"probe-{uuid.uuid4().hex[:6]}"
    total = nodes * args.pods_per_node
    result: dict[str, Any] = {
        "nodes": nodes, "pods": total, "rate": args.rate, "proxies": args.proxies, "label": args.label,
        "node_status_report_frequency": args.node_status_report_frequency, "sync_frequency": args.sync_frequency,
        "apiserver_args": list(args.apiserver_args), "controller_manager": args.controller_manager,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "load_before": load_average(),
        "cpus": os.cpu_count(), "python": platform.python_version(),
    }
    added: dict[str, float] = {}
    bound: dict[str, float] = {}
    running: dict[str, float] = {}
    names: list[str] = []

    def seen(event_type: str, pod: pod_pb2.Pod, old: Any) -> None:
        uid, now = pod.metadata.uid, time.monotonic()
        if uid not in added:
            added[uid] = now
            names.append(pod.metadata.name)
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

        await wait_for(nodes_ready, 300 + nodes * 0.5, "nodes ready")
        result["nodes_ready_s"] = time.monotonic() - began
        print(f"  ... {nodes} nodes Ready in {result['nodes_ready_s']:.0f} s", flush=True)
        tasks.append(asyncio.create_task(informer.run()))
        await informer.wait_synced(60)
        # The nodes alone (heartbeats, leases, resyncs): what the cluster costs at rest. Read
        # once the nodes' registration had left the watch history (SETTLE_SECONDS later; the
        # "idle-settled" run) the API server's RSS was the same to 0.2 MB: read at once.
        idle, idle_cores = await cores_used(cluster)
        result["cores_idle"] = idle_cores
        latencies = Latencies(api, probe_namespace)
        tasks.append(asyncio.create_task(latencies.informer.run()))
        await latencies.informer.wait_synced(60)
        first = time.monotonic()

        async def progress() -> None:
            while True:
                await asyncio.sleep(30)
                print(f"  ... {time.monotonic() - first:.0f} s: {len(added)} pods seen, {len(bound)} bound, "
                      f"{len(running)} Running; load average {load_average()}", flush=True)

        tasks.append(asyncio.create_task(progress()))
        tasks.append(asyncio.create_task(
            latencies.run(namespace, lambda: names[len(names) // 2] if names else None)))
        count = math.ceil(total / args.rc_size)
        for index in range(count):
            replicas = min(args.rc_size, total - index * args.rc_size)
            await api.create(rc(f"rc-{index}", namespace, replicas))
            await asyncio.sleep(replicas / args.rate)

        async def all_running() -> bool:
            return len(running) >= total

        await wait_for(all_running, 300 + total / 10, "all pods running")
        result["all_running_s"] = time.monotonic() - first
        for task in tasks[-2:]:  # the progress lines and the probe client
            task.cancel()
        loaded_at = Usage(cluster)
        startup = list(durations(added, running).values())
        result["startup_p50"], result["startup_p99"] = percentile(startup, 0.5), percentile(startup, 0.99)
        # Where the tail is: scheduling (seen -> bound) or the kubelet and its status write
        # (bound -> Running), and whether it comes from a few stalls or from every moment.
        result["startup_phase_p99"] = {
            "seen -> bound": percentile(list(durations(added, bound).values()), 0.99),
            "bound -> Running": percentile(list(durations(bound, running).values()), 0.99),
        }
        result["startup_p99_windows"] = startup_windows(added, running, first)
        result["watch_delay_p50"] = percentile(latencies.watch_delays, 0.5)
        result["watch_delay_p99"] = percentile(latencies.watch_delays, 0.99)
        binds = sorted(bound.values())
        result["scheduled_per_s"] = len(binds) / max(binds[-1] - binds[0], 1e-3) if binds else 0.0
        # Full lists of every pod, as `kubectl get pods -A` would (one call; pages of 500).
        for _ in range(3):
            await latencies.timed(f"LIST pods (all {total})", api.list(PODS, ""))
        await latencies.timed(f"LIST pods (all {total}, pages of 500)", list_all(api))
        result["latency"] = {what: (percentile(values, 0.5), percentile(values, 0.99), len(values))
                             for what, values in latencies.samples.items()}
        result["latency_errors"] = dict(latencies.errors)
        encoded = [len(pod.SerializeToString()) for pod in informer.list()]
        result["pod_encoded_bytes"] = sum(encoded) / max(len(encoded), 1)
        steady, steady_cores = await cores_used(cluster)
        result["cores_loaded"] = steady_cores
        processes = list(cluster.pids())
        result["rss_mb"] = {name: (idle.rss[name], steady.rss[name]) for name in processes}
        result["cpu_s_per_1000_pods"] = {
            name: (loaded_at.cpu[name] - idle.cpu[name]) * 1000 / total for name in processes
        }
        result["cores_during_load"] = loaded_at.cores_since(idle)
        result["etcd_db_mb"] = cluster.etcd_db_bytes() / 2**20
        result["hollow_summary"] = last_summary(cluster.hollow)
        # Again once the watch history's events of the load have aged out and the services have
        # handed their free memory back: what the pods cost while they run, not while they start.
        await asyncio.sleep(max(0.0, loaded_at.at + SETTLE_SECONDS - time.monotonic()))
        settled = Usage(cluster)
        result["rss_settled_mb"] = {name: settled.rss[name] for name in processes}
        result["settled_after_s"] = settled.at - loaded_at.at

        restarted = time.monotonic()
        cluster.restart_apiserver()

        async def recovered() -> bool:
            pods = await list_all(api, namespace)
            return len(pods) == total and all(p.status.phase == "Running" for p in pods)

        await wait_for(recovered, 300, "recovery after the API server restart")
        result["restart_recovery_s"] = time.monotonic() - restarted
        # Node lifecycle must not take the renewals the restart held back for dead nodes.
        result["restart_marked_not_ready"] = {
            "nodes": cluster.logged("node_not_ready"), "pods": cluster.logged("pod_marked_not_ready")}

        if args.skip_delete:
            result["delete_s"] = None
        else:
            deleting = time.monotonic()
            failures: list[str] = []
            for index in range(count):
                await retried(functools.partial(scale_to_zero, api, f"rc-{index}", namespace), failures)
            if failures:
                result.setdefault("notes", []).append(
                    f"scaling down, {len(failures)} calls failed and were retried: {failures[0]}")

            async def none_left() -> bool:
                return not (await api.list(PODS, namespace, limit=1)).items

            await wait_for(none_left, 300 + total / 10, "every pod deleted")
            for index in range(count):
                await api.delete(REPLICATION_CONTROLLERS, f"rc-{index}", namespace)
            result["delete_s"] = time.monotonic() - deleting
        result["load_after"] = load_average()
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


def last_summary(process: ManagedProcess) -> str:
    lines = [line for line in process.log_text().splitlines() if line.startswith("hollow_nodes ")]
    return lines[-1] if lines else ""


# -- the report ------------------------------------------------------------------------------


def startup_breakdown(result: dict[str, Any]) -> list[str]:
    """The report's lines on where pod startup's tail is (results saved before they were kept have none)."""
    if "startup_phase_p99" not in result:
        return []
    phases = "   ".join(f"{phase} {p99:.2f} s" for phase, p99 in result["startup_phase_p99"].items())
    lines = [f"    p99 by phase         {phases}"]
    windows = result.get("startup_p99_windows", [])
    if windows:
        worst = sorted(windows, key=lambda window: window[1], reverse=True)[:5]
        above = sum(1 for window in windows if window[1] > STARTUP_SLO_SECONDS)
        shown = ", ".join(f"{p99:.1f} s at {start:.0f} s" for start, p99, _ in worst)
        lines.append(f"    p99 by {STARTUP_WINDOW_SECONDS:g} s window   worst {shown}; "
                     f"{above} of {len(windows)} windows above {STARTUP_SLO_SECONDS:g} s")
    return lines


def report(result: dict[str, Any]) -> str:
    pods = result["pods"]
    variant = f" [{result['label']}]" if result.get("label") else ""
    proxies = ", hollow proxies" if result.get("proxies") else ""
    resync = f", hollow kubelets resync every {result.get('sync_frequency', 10):g} s"
    status = result.get("node_status_report_frequency")
    posted = f", status posted every {status:g} s" if status else ""
    lines = [
        f"== {result['nodes']} hollow nodes, {pods} pods at {result['rate']:g} pods/s{proxies}{resync}{posted}"
        f"{variant}",
        f"  run                    {result['started']}; load average {result['load_before']} before, "
        f"{result.get('load_after', '?')} after ({result['cpus']} CPUs)",
        f"  nodes ready            {result['nodes_ready_s']:.1f} s",
        f"  all Running            {result['all_running_s']:.1f} s after the first RC",
        f"  pod startup            p50 {result['startup_p50']:.2f} s   p99 {result['startup_p99']:.2f} s",
        *startup_breakdown(result),
        f"  watch delay            p50 {result['watch_delay_p50'] * 1000:.0f} ms   "
        f"p99 {result['watch_delay_p99'] * 1000:.0f} ms (a CREATE sent to its ADDED event seen)",
        f"  scheduler              {result['scheduled_per_s']:.0f} pods/s (first to last binding; bounded by --rate)",
    ]
    for what, (p50, p99, count) in sorted(result["latency"].items()):
        errors = result.get("latency_errors", {}).get(what, 0)
        failed = f", {errors} failed" if errors else ""
        lines.append(f"  {what:<34} p50 {p50 * 1000:8.1f} ms   p99 {p99 * 1000:8.1f} ms   ({count} calls{failed})")
    for process, (idle, loaded) in result["rss_mb"].items():
        lines.append(f"  RSS {process:<18} {idle:6.0f} MB with the nodes alone, {loaded:6.0f} MB with the pods "
                     f"({(loaded - idle) * 1000 / pods:5.1f} MB per 1,000 pods)")
    per_pod = (result["rss_mb"]["apiserver"][1] - result["rss_mb"]["apiserver"][0]) * 2**20 / pods
    encoded = result["pod_encoded_bytes"]
    inside = "" if result.get("controller_manager") else ", the scheduler and controllers inside it"
    lines.append(f"  API server per pod     {per_pod / 1024:.1f} KiB of RSS against {encoded / 1024:.1f} KiB encoded "
                 f"({per_pod / encoded:.2f}x){inside}")
    if "rss_settled_mb" in result:
        settled = (result["rss_settled_mb"]["apiserver"] - result["rss_mb"]["apiserver"][0]) * 2**20 / pods
        lines.append(f"    settled              {settled / 1024:.1f} KiB ({settled / encoded:.2f}x), "
                     f"{result['settled_after_s']:.0f} s later: the load's watch history aged out, free memory "
                     "handed back")
    if "rss_nodes_ready_mb" in result:  # the "idle-settled" run read the idle RSS later
        lines.append(f"    idle                 read {SETTLE_SECONDS:.0f} s after the nodes were ready "
                     f"({result['rss_nodes_ready_mb']['apiserver']:.1f} MB when they were)")
    if CONTROLLER_MANAGER in result["rss_mb"]:
        idle, loaded = result["rss_mb"][CONTROLLER_MANAGER]
        per_pod = (loaded - idle) * 2**20 / pods
        lines.append(f"  controllers per pod    {per_pod / 1024:.1f} KiB of RSS ({per_pod / encoded:.1f}x), "
                     "the scheduler and controllers in their own process")
    for process in result["cpu_s_per_1000_pods"]:
        lines.append(
            f"  CPU {process:<18} {result['cores_idle'][process]:.2f} cores with the nodes alone, "
            f"{result['cores_loaded'][process]:.2f} with the pods running; "
            f"{result['cpu_s_per_1000_pods'][process]:.1f} CPU s per 1,000 pods started"
        )
    if "cores_during_load" in result:
        cores = result["cores_during_load"]
        each = ", ".join(f"{name} {used:.2f}" for name, used in cores.items())
        lines.append(f"  cores during the load  {sum(cores.values()):.2f} of {result['cpus']} on average ({each})")
    lines.append(f"  etcd database          {result['etcd_db_mb']:.1f} MB")
    marked = result.get("restart_marked_not_ready")
    marked_text = f"; {marked['nodes']} nodes and {marked['pods']} pods marked not ready" if marked else ""
    lines.append(f"  API server restart     all pods listed Running again in {result['restart_recovery_s']:.1f} s"
                 f"{marked_text}")
    if result.get("delete_s") is not None:
        lines.append(f"  scale to 0 and delete  {result['delete_s']:.1f} s")
    if result.get("hollow_summary"):
        lines.append(f"  {result['hollow_summary']}")
    for note in result.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def result_path(result: dict[str, Any]) -> Path:
    suffix = f"-{result['label']}" if result.get("label") else ""
    return RESULTS / f"scale-{result['nodes']}{suffix}.json"


def saved_results() -> list[dict[str, Any]]:
    results = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("scale-*.json"))]
    return sorted(results, key=lambda r: (r.get("label") or "", r["nodes"]))


def write_report(results: list[dict[str, Any]]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "scale.txt"
    header = ("bench.scale: hollow nodes at 30 pods per node (issue 16); "
              "python -m bench.scale --sizes 10,100,1000 (see bench/scale.py)\n")
    path.write_text(header + "\n\n".join(report(result) for result in results) + "\n")
    return path


def plot(results: list[dict[str, Any]]) -> Path | None:
    """The curves against cluster size (bench/results/scale.png); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install -e '.[bench]', or pip install matplotlib)")
        return None
    variants: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        variants[result.get("label") or "node leases"].append(result)
    # A variant measured at one size is in the text report, not drawn as a curve.
    variants = defaultdict(list, {name: runs for name, runs in variants.items()
                                  if len(runs) > 1 or name == "node leases"})
    figure, axes = plt.subplots(2, 4, figsize=(19, 8.5))

    def latency(what: str, which: int = 1) -> Callable[[dict[str, Any]], float]:
        def value(r: dict[str, Any]) -> float:
            for key, figures in r["latency"].items():
                every = what == "LIST every pod" and key.startswith("LIST pods (all") and "pages" not in key
                if key == what or every:
                    return float(figures[which]) * 1000
            return float("nan")

        return value

    def per_1000(name: str) -> Callable[[dict[str, Any]], float]:
        return lambda r: (r["rss_mb"][name][1] - r["rss_mb"][name][0]) * 1000 / r["pods"]

    # (title, unit, log scale, SLO line, series)
    panels: list[tuple[str, str, bool, float | None, list[tuple[str, Callable[[dict[str, Any]], float]]]]] = [
        (f"Pod startup, create to Running (SLO p99 {STARTUP_SLO_SECONDS:g} s)", "seconds", False, STARTUP_SLO_SECONDS,
         [("p50", lambda r: r["startup_p50"]), ("p99", lambda r: r["startup_p99"])]),
        ("API latency p99, single objects (SLO 1 s)", "milliseconds", True, 1000.0,
         [(what, latency(what)) for what in ("GET node", "GET pod", "CREATE pod", "DELETE pod")]),
        ("API latency p99, lists", "milliseconds", True, None,
         [("LIST pods, a page of 500", latency("LIST pods (500)")), ("LIST nodes", latency("LIST nodes")),
          ("LIST every pod, one call", latency("LIST every pod"))]),
        ("Watch delay (CREATE sent to ADDED seen)", "milliseconds", False, None,
         [("p50", lambda r: r["watch_delay_p50"] * 1000), ("p99", lambda r: r["watch_delay_p99"] * 1000)]),
        ("RSS per 1,000 pods", "MB", False, None, [(name, per_1000(name)) for name in ("apiserver", "etcd", "hollow")]),
        ("CPU per 1,000 pods started", "CPU seconds", False, None,
         [(name, (lambda n: lambda r: r["cpu_s_per_1000_pods"][n])(name)) for name in PROCESSES]),
        ("Cores used: nodes alone / pods running", "cores", False, None,
         [(f"{name}, {state}", (lambda n, k: lambda r: r[k][n])(name, key))
          for name in ("apiserver", "etcd", "hollow")
          for state, key in (("nodes alone", "cores_idle"), ("pods running", "cores_loaded"))]),
        ("etcd database, API server restart", "MB / seconds", False, None,
         [("etcd db (MB)", lambda r: r["etcd_db_mb"]),
          ("all Running again after a restart (s)", lambda r: r["restart_recovery_s"])]),
    ]
    styles = ["-", "--", ":", "-."]
    for axis, (title, unit, log, slo, series) in zip(axes.flat, panels, strict=True):
        for style, (variant, runs) in zip(styles, sorted(variants.items()), strict=False):
            sizes = [r["nodes"] for r in runs]
            for name, value in series:
                label = name if len(variants) == 1 else f"{name} ({variant})"
                axis.plot(sizes, [value(r) for r in runs], style, marker="o", label=label)
        if slo is not None:
            axis.axhline(slo, color="red", linewidth=0.8, alpha=0.6)
        axis.set_xscale("log")
        if log:
            axis.set_yscale("log")
        axis.set_xlabel("hollow nodes (30 pods each)")
        axis.set_ylabel(unit)
        axis.set_title(title, fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("Kybernetes: one control plane against cluster size (bench/scale.py, hollow nodes)")
    figure.tight_layout()
    path = RESULTS / "scale.png"
    figure.savefig(path, dpi=72)
    plt.close(figure)
    return path


def publish() -> None:
    results = saved_results()
    if not results:
        print(f"no results in {RESULTS}")
        return
    print(f"report: {write_report(results)}")
    png = plot(results)
    if png is not None:
        print(f"curves: {png}")


async def main_async(args: argparse.Namespace) -> None:
    use_dev_credentials()
    for size in args.sizes:
        result = await bench_size(size, args)
        print(report(result), flush=True)
        RESULTS.mkdir(exist_ok=True)
        result_path(result).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        publish()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100", help="node counts, comma-separated (default %(default)s)")
    parser.add_argument("--pods-per-node", type=int, default=30)
    parser.add_argument("--rc-size", type=int, default=100, help="pods per replication controller")
    parser.add_argument("--rate", type=float, default=20.0, help="pods asked for per second (default %(default)s)")
    parser.add_argument("--proxies", action="store_true", help="a hollow proxy beside each hollow kubelet")
    parser.add_argument("--node-status-report-frequency", type=float, default=None,
                        help="the hollow kubelets post their status at least this often (seconds; default theirs, "
                        "5 minutes); 10 is how often every kubelet posted it before node leases")
    parser.add_argument("--sync-frequency", type=float, default=60.0,
                        help="the hollow kubelets' full resync period, seconds (default %(default)s, Kubernetes' "
                        "kubelet default: 1m; ours is 10 s, which at 30,000 pods in one process would take a core "
                        "of this machine simulating a thousand)")
    parser.add_argument("--apiserver-arg", dest="apiserver_args", action="append", default=[], metavar="FLAG",
                        help="one more kube-apiserver flag (repeatable), e.g. --apiserver-arg=--bookmark-interval=60")
    parser.add_argument("--controller-manager", action="store_true",
                        help="run the scheduler and controllers in a process of their own, as kube-scheduler and "
                        "kube-controller-manager run, rather than inside the API server")
    parser.add_argument("--label", default="", help="a variant's name: its results are saved beside the default's")
    parser.add_argument("--skip-delete", action="store_true", help="do not time the scale-down and deletion")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the report and PNG from saved results")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    if args.plot_only:
        publish()
        return
    args.sizes = [int(size) for size in args.sizes.split(",") if size]
    # The client that times the pods holds an informer of all of them, as the services do: with
    # their collector thresholds, so that its own pauses do not lengthen the startups it times.
    gc.set_threshold(*GC_THRESHOLDS)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
