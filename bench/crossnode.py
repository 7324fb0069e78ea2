"""Pod-to-pod networking across nodes beside within one node, in one run.

Run: python -m bench.crossnode [--seconds 3] [--rounds 5]   (as root, about 2.5 min)

Starts a 2-node local cluster as the e2e tests do (tests/e2e/cluster.py: its
own state dir, ports, LAN bridge, pod range and node names, each node a network
namespace), then three pods of the component image pinned with spec.nodeName:
a server on node 1, a client beside it on node 1 ("within": pod veth -> the
node's pod bridge -> pod veth) and a client on node 2 ("across": pod veth ->
node 2's pod bridge -> its eth0 -> the LAN bridge -> node 1's eth0 -> node 1's
pod bridge -> pod veth, routed host-gw). The pods run this very file (`python -c
<source> --role ...`: no volumes, stdlib only on that side); each sample is a
`docker exec` of the client role, which prints its figure as JSON. The clients
connect to the server's pod IP.

- bulk: MB/s received by the server's sink (it reports the byte count), one
  stream and then 2 streams, each a blocking socket writing 128 KiB for --seconds;
- short: connections per second, each connect, a 64-byte request, the 128-byte
  reply to EOF, close (HTTP/1.0-like), 2 client processes x 8 in flight, against
  a responder of 2 processes sharing one listener (backlog 4096).

Within and across take turns for every sample (ABBA over the rounds), so load
from elsewhere on the machine hits both alike; medians are printed with the
ratio across/within (target >= 0.9: "a veth hop and a route, nothing more").
Beside them the pods' own CPU per GB or per 1,000 connections (their cgroups:
client, server, and the kernel's forwarding, which runs in the sender's softirq
context, unless deferred to ksoftirqd): on a small machine the figures are
CPU-bound, so the extra kernel work across is what a ratio below 1 is made of,
and that CPU ratio moves less than the throughput when other work shares the
machine (how much did is printed).
Also printed: node 2's route to the server (`ip route get`: via node 1's LAN
address). The cluster is taken down at the end, and checked to leave nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.e2e.cluster import LocalCluster

IMAGE = "kybernetes/kybernetes:latest"  # the component image (make images): Python 3, stdlib enough
BULK_PORT, SHORT_PORT = 5001, 5002
BULK_CHUNK = 128 * 1024
REQUEST = b"GET / HTTP/1.0\r\n" + b"x" * 46 + b"\r\n"  # 64 bytes
REPLY = b"HTTP/1.0 200 OK\r\n" + b"y" * 109 + b"\r\n"  # 128 bytes
SHORT_PROCESSES, SHORT_IN_FLIGHT = 2, 8  # per process
SERVER_PROCESSES = 2
FIGURES = {"bulk1": "MB/s", "bulk2": "MB/s", "short": "conn/s"}
TARGET = 0.9
NOISY_PERCENT = 25  # of the machine used by other work during the samples


# In the pods (stdlib only: this file is their program) -----------------------------------------


def _sink(conn: socket.socket) -> None:
    buffer = bytearray(4 * BULK_CHUNK)
    total = 0
    with conn:
        while n := conn.recv_into(buffer):
            total += n
        conn.sendall(struct.pack("!Q", total))


def _serve_bulk(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_sink, args=(conn,), daemon=True).start()


class _Reply(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= len(REQUEST):
            self.transport.write(REPLY)
            self.transport.close()


def run_server() -> None:
    """The bulk sink (a thread per stream) and the short responder (SERVER_PROCESSES processes
    accepting on one listener), until the pod is stopped."""
    short = socket.socket()
    short.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    short.bind(("0.0.0.0", SHORT_PORT))
    short.listen(4096)
    short.setblocking(False)
    for _ in range(SERVER_PROCESSES - 1):
        if os.fork() == 0:
            break
    else:  # the first process serves the bulk sink too
        bulk = socket.create_server(("0.0.0.0", BULK_PORT), backlog=128, reuse_port=False)
        threading.Thread(target=_serve_bulk, args=(bulk,), daemon=True).start()

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(_Reply, sock=short)
        await server.serve_forever()

    asyncio.run(serve())


def bulk_mbytes(host: str, streams: int, seconds: float) -> float:
    """MB/s the sink received over `streams` connections."""
    payload = b"\0" * BULK_CHUNK
    received = [0] * streams
    barrier = threading.Barrier(streams + 1)

    def stream(index: int) -> None:
        with socket.create_connection((host, BULK_PORT), timeout=30) as sock:
            barrier.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            report = b""
            while len(report) < 8:
                chunk = sock.recv(8 - len(report))
                if not chunk:
                    raise ConnectionError("the sink closed without reporting")
                report += chunk
            received[index] = struct.unpack("!Q", report)[0]

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.monotonic()
    for thread in threads:
        thread.join()
    return sum(received) / (time.monotonic() - started) / 1e6


def _short_worker(host: str, seconds: float) -> tuple[int, int]:
    """SHORT_IN_FLIGHT exchanges at a time for `seconds`: (completed, failed)."""

    async def run() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        done = failed = 0
        deadline = loop.time() + seconds

        async def worker() -> None:
            nonlocal done, failed
            while loop.time() < deadline:
                sock = socket.socket()
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, (host, SHORT_PORT))
                    await loop.sock_sendall(sock, REQUEST)
                    reply = b""
                    while chunk := await loop.sock_recv(sock, 4096):
                        reply += chunk
                    if reply == REPLY:
                        done += 1
                    else:
                        failed += 1
                except OSError:
                    failed += 1
                finally:
                    sock.close()

        await asyncio.gather(*(worker() for _ in range(SHORT_IN_FLIGHT)))
        return done, failed

    return asyncio.run(run())


def short_rate(host: str, seconds: float) -> tuple[float, int]:
    """Connections per second over SHORT_PROCESSES forked processes, and how many failed."""
    children = []
    started = time.monotonic()
    for _ in range(SHORT_PROCESSES):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                os.write(write_end, json.dumps(_short_worker(host, seconds)).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        children.append((pid, read_end))
    done = failed = 0
    for pid, read_end in children:
        with os.fdopen(read_end) as pipe:
            text = pipe.read()
        os.waitpid(pid, 0)
        if not text:
            raise RuntimeError("a client process reported nothing")
        child_done, child_failed = json.loads(text)
        done += child_done
        failed += child_failed
    return done / (time.monotonic() - started), failed


def wait_for_server(host: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            for port in (BULK_PORT, SHORT_PORT):
                socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_client(figure: str, host: str, seconds: float) -> None:
    """One sample, printed as JSON."""
    if figure == "wait":
        wait_for_server(host, seconds)
        result: dict[str, Any] = {"value": 0}
    elif figure == "short":
        rate, failed = short_rate(host, seconds)
        result = {"value": rate, "failed": failed}
    else:
        result = {"value": bulk_mbytes(host, 1 if figure == "bulk1" else 2, seconds)}
    print(json.dumps(result), flush=True)


# Here: the cluster, the pods, the samples ------------------------------------------------------


def pod_manifest(name: str, node: str, role: str, program: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "crossnode"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": IMAGE,
                "command": ["python", "-c", program, "--role", role],
            }],
        },
    }


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all but idle and iowait), all CPUs."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def cgroup_cpu_file(pid: int) -> str:
    """The file with the CPU time of the cgroup process `pid` is in (a container's): cgroup v1's
    cpuacct.usage (nanoseconds) or v2's cpu.stat (usage_usec)."""
    with open(f"/proc/{pid}/cgroup") as cgroups:
        lines = [line.rstrip("\n").split(":", 2) for line in cgroups]
    for _, controllers, path in lines:
        if "cpuacct" in controllers.split(","):
            for mount in (controllers, "cpuacct", "cpu,cpuacct"):
                if os.path.exists(candidate := f"/sys/fs/cgroup/{mount}{path}/cpuacct.usage"):
                    return candidate
    for hierarchy, _, path in lines:
        if hierarchy == "0" and os.path.exists(candidate := f"/sys/fs/cgroup{path}/cpu.stat"):
            return candidate
    raise RuntimeError(f"no CPU accounting found for process {pid}'s cgroup")


def cgroup_cpu_seconds(path: str) -> float:
    with open(path) as usage:
        if path.endswith("cpuacct.usage"):
            return int(usage.read()) / 1e9
        fields = dict(line.split() for line in usage)
        return int(fields["usage_usec"]) / 1e6


class Clients:
    """The client pods, each sample a `docker exec` of this file's client role.

    Beside each figure, the CPU the three pods used for it (their containers' cgroups: the
    client exec'd, the server, and the kernel's work on the path, which runs mostly in the
    sending process's softirq context and is charged to its cgroup) per unit, and the CPU
    the rest of the machine used meanwhile (other work on it: what makes the figures noisy)."""

    def __init__(self, cluster: LocalCluster, program: str, server_ip: str) -> None:
        self.program = program
        self.server_ip = server_ip
        self.containers = {pod: cluster.container(pod, "main") for pod in ("server", "within", "across")}
        self.cpu_files = [cgroup_cpu_file(container.attrs["State"]["Pid"]) for container in self.containers.values()]
        self.samples: dict[str, dict[str, list[float]]] = {"within": {}, "across": {}}
        # The pods' CPU seconds per GB (bulk) or per 1,000 connections (short).
        self.cpu: dict[str, dict[str, list[float]]] = {"within": {}, "across": {}}
        self.pods_busy = self.others_busy = self.elapsed = 0.0

    def pods_cpu(self) -> float:
        return sum(cgroup_cpu_seconds(path) for path in self.cpu_files)

    def run(self, pod: str, figure: str, seconds: float) -> dict[str, Any]:
        command = ["python", "-c", self.program, "--role", "client", figure, self.server_ip, str(seconds)]
        code, output = self.containers[pod].exec_run(command)
        text = output.decode().strip()
        if code != 0:
            raise RuntimeError(f"{pod} {figure}: exit {code}: {text}")
        result: dict[str, Any] = json.loads(text.splitlines()[-1])
        if result.get("failed"):
            raise RuntimeError(f"{pod} {figure}: {result['failed']} exchanges failed")
        return result

    def sample(self, pod: str, figure: str, seconds: float) -> None:
        pods, machine, started = self.pods_cpu(), _machine_busy_seconds(), time.monotonic()
        value = self.run(pod, figure, seconds)["value"]
        pods, machine = self.pods_cpu() - pods, _machine_busy_seconds() - machine
        self.elapsed += time.monotonic() - started
        self.pods_busy += pods
        self.others_busy += max(0.0, machine - pods)
        # GB (MB/s) or thousands of connections (conn/s) in the sample. The exec's own start
        # (docker exec, a Python process) is in both placements' CPU alike.
        units = value * seconds / 1000
        self.samples[pod].setdefault(figure, []).append(value)
        self.cpu[pod].setdefault(figure, []).append(pods / units if units else 0.0)


def _pod_status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    pod = json.loads(cluster.kubecfg("get", "pod", name, "-o", "json"))
    status: dict[str, Any] = pod.get("status", {})
    return status


def wait_running(cluster: LocalCluster, names: list[str], timeout: float = 90) -> dict[str, str]:
    """Each pod's IP once all are Running."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = {name: _pod_status(cluster, name) for name in names}
        if all(s.get("phase") == "Running" and s.get("podIP") for s in statuses.values()):
            return {name: s["podIP"] for name, s in statuses.items()}
        if time.monotonic() > deadline:
            raise TimeoutError(f"pods not running after {timeout:g} s: {statuses}")
        time.sleep(0.5)


def hop_evidence(cluster: LocalCluster, server_ip: str) -> list[str]:
    lines = []
    for index, label in ((1, "across"), (0, "within")):
        namespace = cluster.namespace(index)
        done = cluster.in_node(index, "ip", "route", "get", server_ip)
        route = " ".join((done.stdout or done.stderr).split())
        lines.append(f"{label:<7} ip netns exec {namespace} ip route get {server_ip}: {route}")
    return lines


def run_bench(cluster: LocalCluster, args: argparse.Namespace) -> tuple[Clients, list[str]]:
    with open(os.path.abspath(__file__)) as source:
        program = source.read()
    node_1, node_2 = cluster.nodes
    manifests = [
        pod_manifest("server", node_1, "server", program),
        pod_manifest("within", node_1, "idle", program),
        pod_manifest("across", node_2, "idle", program),
    ]
    manifest_path = cluster.state / "crossnode-pods.json"
    manifest_path.write_text("\n".join(json.dumps(manifest) for manifest in manifests))  # a JSON stream
    cluster.kubecfg("create", "-f", str(manifest_path))
    ips = wait_running(cluster, ["server", "within", "across"])
    server_ip = ips["server"]
    print(f"pods: server {server_ip} on {node_1}, within {ips['within']} on {node_1}, "
          f"across {ips['across']} on {node_2}", flush=True)
    evidence = hop_evidence(cluster, server_ip)
    clients = Clients(cluster, program, server_ip)
    for pod in ("within", "across"):
        clients.run(pod, "wait", 30)
    # Warm-up: neighbours, conntrack, page cache for the exec'd interpreter.
    for pod in ("within", "across"):
        for figure in FIGURES:
            clients.run(pod, figure, 0.5)
    for round_ in range(args.rounds):
        for figure in FIGURES:
            order = ("within", "across") if round_ % 2 == 0 else ("across", "within")
            for pod in order:
                clients.sample(pod, figure, args.seconds)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return clients, evidence


LABELS = {"bulk1": "bulk, 1 stream", "bulk2": "bulk, 2 streams", "short": "short connections"}


def report(clients: Clients, evidence: list[str], args: argparse.Namespace) -> None:
    print()
    print(f"pod -> pod by pod IP: within node 1, and across node 2 -> node 1; medians of {args.rounds} x "
          f"{args.seconds:g} s in turns")
    print(f"{'':<27} {'within':>8} {'across':>8} {'ratio':>6}   {'pod CPU: within':>15} {'across':>7} {'ratio':>6}")
    verdicts = []
    for figure, unit in FIGURES.items():
        within = statistics.median(clients.samples["within"][figure])
        across = statistics.median(clients.samples["across"][figure])
        cpu_within = statistics.median(clients.cpu["within"][figure])
        cpu_across = statistics.median(clients.cpu["across"][figure])
        ratio, cpu_ratio = across / within, cpu_within / cpu_across
        print(f"{LABELS[figure] + f' ({unit})':<27} {within:>8.0f} {across:>8.0f} {ratio:>6.2f}   "
              f"{cpu_within:>15.3f} {cpu_across:>7.3f} {cpu_ratio:>6.2f}")
        verdicts.append((LABELS[figure], ratio, cpu_ratio))
    print("pod CPU: the three pods' CPU seconds (their cgroups, the kernel's work on the path included) per GB")
    print("  (bulk) or per 1,000 connections (short); its ratio within/across is what the throughput ratio would be")
    print("  with nothing else on the machine (the figures are CPU-bound here), so other work moves it less")
    others = 100 * clients.others_busy / clients.elapsed / (os.cpu_count() or 1)
    pods = 100 * clients.pods_busy / clients.elapsed / (os.cpu_count() or 1)
    print(f"machine: {os.cpu_count()} CPUs; during the samples the pods used {pods:.0f}% of them, other work "
          f"{others:.0f}%")
    if others > NOISY_PERCENT:
        print(f"warning: other work took over {NOISY_PERCENT}% of the machine: the throughput ratios are noisy, "
              "the pod CPU ratios less so")
    for figure in FIGURES:
        in_node, cross = clients.samples["within"][figure], clients.samples["across"][figure]
        print(f"samples {figure}: within {','.join(f'{value:.0f}' for value in in_node)}; across "
              f"{','.join(f'{value:.0f}' for value in cross)}; ratio by round "
              + ",".join(f"{a / w:.2f}" for w, a in zip(in_node, cross, strict=True)))
    for line in evidence:
        print(line)
    missed = [label for label, ratio, _ in verdicts if ratio < TARGET]
    worst = min(ratio for _, ratio, _ in verdicts)
    worst_cpu = min(cpu_ratio for _, _, cpu_ratio in verdicts)
    by_cpu = f"by pod CPU per unit the worst is {worst_cpu:.2f}"
    if missed:
        print(f"verdict: MISSED across/within >= {TARGET} for {', '.join(missed)} (worst {worst:.2f}; {by_cpu})")
    else:
        print(f"verdict: ok, across/within >= {TARGET} for every figure (worst {worst:.2f}; {by_cpu})")


def main_bench(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    from pathlib import Path

    from tests.e2e.cluster import LocalCluster

    workdir = Path(tempfile.mkdtemp(prefix="kyb-bench-crossnode-"))
    cluster = LocalCluster(workdir, nodes=2)
    finished = False
    try:
        started = time.monotonic()
        result = cluster.up()
        if result.returncode != 0:
            raise RuntimeError(f"the cluster did not come up: {result.stdout}{result.stderr}")
        print(f"cluster up in {time.monotonic() - started:.1f} s: nodes {', '.join(cluster.nodes)}", flush=True)
        clients, evidence = run_bench(cluster, args)
        finished = True
    finally:
        down = cluster.down()
        if down.returncode != 0:
            print(f"warning: down failed: {down.stdout}{down.stderr}", file=sys.stderr)
        leftovers = cluster.network_leftovers()
        cluster.remove_leftovers()
        if leftovers:
            print(f"warning: down left {len(leftovers)} things of the cluster's network (removed now): "
                  + "; ".join(leftovers))
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {cluster.state / 'logs'}", file=sys.stderr)
    report(clients, evidence, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crossnode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one sample (default %(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="samples per figure and placement, in turns (default %(default)s)"
    )
    parser.add_argument("--role", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:  # in a pod
        if args.role[0] == "server":
            run_server()
        elif args.role[0] == "idle":
            while True:
                time.sleep(3600)
        else:
            figure, host, seconds = args.role[1:4]
            run_client(figure, host, float(seconds))
        return 0
    return main_bench(args)


if __name__ == "__main__":
    sys.exit(main())
