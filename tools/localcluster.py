"""A whole cluster on one machine: `make up`, `make down`, `make status`.

Every component runs as its own process under the cluster's supervisord, which
restarts it when it dies (tools/supervisor.py), or with --mode containers as a
static pod of the kubelet, which restarts it (tools/staticpods.py; the kubelet
is a container Docker restarts); each logs to <state-dir>/logs/<component>.log and is recorded in
<state-dir>/cluster.json. `up` is idempotent: a component that is already
running and healthy is left alone. Simulated nodes get their own loopback
address (node-1 on 127.0.0.1, node-2 on 127.0.0.2, ...), where their node
ports answer; each node's proxy programs cluster IPs in a kernel table of its
own. kube-dns runs on the pod bridge's gateway behind the kube-dns service.
`down` stops every component, removes the proxies' tables and every container
the cluster made and its data (etcd, pod volumes), keeping the logs.

Nodes as hosts: with one node the host is the node (its kubelet and proxy in
the host's network namespace, on 127.0.0.1), as on a single real machine.
With several, each node is a host of its own: a network namespace on a
bridge standing for the LAN (tools/hostnetwork.py), its kubelet and proxy
inside it, its own pod bridge, pod range, tables and routes; the host is the
control-plane machine on the LAN's first address (the API server and
kube-dns answer there) with a proxy of its own. The LAN bridge exists in both
cases: kube-dns listens on it, so that every node's pods reach it.

Security is on from the first `up`, as in k3s: a cluster CA and every component's
certificate are made in <state-dir>/pki (tools/clusterpki.py), etcd takes only the
API server's certificate, every connection is TLS, each component authenticates as
its own Kubernetes identity from a kubeconfig in <state-dir>, and the admin's
kubeconfig is written to ~/.kybernetes/config (what kubecfg reads by default).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.common import kubeconfig
from services.common.clusternet import DEFAULT_CLUSTER_CIDR
from services.kubelet.hostports import cleanup_commands, script, table_name
from services.common.transport import ClientCredentials

from . import staticpods
from .clusterpki import ClusterPKI
from .hostnetwork import DEFAULT_BRIDGE as HOST_BRIDGE, DEFAULT_NETWORK as HOST_NETWORK, NETNS_DIR, HostNetwork
from .hostnetwork import HostNetworkError, remove_pod_bridge
from .processes import REPO, apiserver_security_flags, etcd_argv, port_open, python_module_argv
from .supervisor import COMING_UP, STOP_WAIT_SECONDS, Program, StatusRow, Supervisor, SupervisorError, format_status
from .supervisor import pid_alive, program_digest, rolling_order, terminate, upgrade_plan

ETCD_PORT = 2379
API_PORT = 6443
# The REST API's (kubectl's): gRPC has 6443 and its token port 6444; 6445/6446 are HA's second API server's.
REST_PORT = 6543
KUBELET_PORT = 10250
PROXY_STATUS_PORT = 10249
NODE_LABEL = "io.kybernetes.node"
# Services: Kubernetes' default range; the cluster DNS is its tenth address, as kubeadm's.
SERVICE_CIDR = "10.96.0.0/12"
# kube-dns listens on the host's address on the host network (the LAN bridge, which every
# node's pods reach) on this port; its service maps <cluster DNS IP>:53 there.
DNS_PORT = 10053
# HA=1: etcd's members, and the API servers and replicators (one of which leads).
HA_ETCD_MEMBERS = 3
HA_REPLICAS = 2
# A root-namespace node's pod bridge: the cluster's own, not the tests' shared kyb0, so
# that `down` can remove it with its rules.
POD_BRIDGE = "kyb-pods"
DNS_NAMESPACE = "kube-system"
# How long `up` asks again when the API server or its etcd is not answering yet.
DNS_SERVICE_WAIT = 30.0
TRANSIENT_FAILURES = ("ServiceUnavailable", "cannot reach", "did not answer in time")


# Each component's program: the Python module run as a process, or the
# command in the component image.
PROGRAMS = {
    "kube-apiserver": "services.apiserver.main",
    # The scheduler and the API server's controllers (endpoints, node lifecycle, node IPAM) on
    # their own, as kube-controller-manager and kube-scheduler run beside the API server.
    "kube-controller-manager": "services.apiserver.controllers",
    "kube-replicator": "services.replicator.main",
    "kubelet": "services.kubelet.main",
    "kube-proxy": "services.proxy.main",
    "kube-dns": "services.dns.main",
}
CLUSTER_LABEL = "io.kybernetes.local-cluster"


@dataclass
class Component:
    name: str
    program: str  # "etcd" or a key of PROGRAMS
    args: list[str]
    # Where it answers: "host:port" of a gRPC health service or a TCP port; "" = process only.
    health: str = ""
    grpc_health: bool = True
    pid: int = 0
    container: str = ""
    # The node's network namespace it runs in; "" for the host's.
    netns: str = ""
    # MODE=containers: the kubelet's static pod that runs it (in kube-system; tools/staticpods.py).
    static_pod: str = ""

    def log_path(self, state: Path) -> Path:
        return state / "logs" / f"{self.name}.log"

    def process_argv(self) -> list[str]:
        if self.program == "etcd":
            argv = [shutil.which("etcd") or "/usr/bin/etcd", *self.args]
        else:
            argv = python_module_argv(PROGRAMS[self.program], *self.args)
        if self.netns:
            # Only the network namespace: the kubelet's tmpfs mounts must be the host's, which Docker sees.
            argv = ["nsenter", f"--net={NETNS_DIR}/{self.netns}", "--", *argv]
        return argv


@dataclass
class ClusterPlan:
    state_dir: Path
    nodes: list[str]
    host_network: HostNetwork
    api: str = f"127.0.0.1:{API_PORT}"
    components: list[Component] = field(default_factory=list)
    cluster_dns: str = ""
    dns_endpoint: tuple[str, int] = ("", 0)
    # Nodes in network namespaces of their own (several nodes), else the host is the node.
    nodes_as_hosts: bool = False
    pod_bridge: str = POD_BRIDGE
    # The root namespace's proxy's node name (the node's, or the control-plane host's).
    host_proxy_node: str = ""
    # The API server's address for other machines (`up --api-address`), and what joins use.
    api_address: str = ""
    pause_image: str = ""

    def node_addresses(self, node_network: str) -> list[str]:
        if self.nodes_as_hosts:
            return [self.host_network.node_address(index) for index in range(len(self.nodes))]
        return [node_ip(index, node_network) for index in range(len(self.nodes))]


def cluster_dns_ip(service_cidr: str) -> str:
    """The cluster DNS service's address: the tenth of the service range (10.96.0.10)."""
    return str(ipaddress.ip_network(service_cidr)[10])


def node_names(count: int, prefix: str = "") -> list[str]:
    """One node: the host's name, as Kubernetes names a node; several: <prefix>node-N."""
    if count == 1 and not prefix:
        return [socket.gethostname().lower()]
    return [f"{prefix}node-{i}" for i in range(1, count + 1)]


def node_ip(index: int, network: str = "127.0.0") -> str:
    return f"{network}.{index + 1}"


def token_address(api: str) -> str:
    """The API server's bearer-token port: the next one up (see services/common/transport.py)."""
    host, _, port = api.rpartition(":")
    return f"{host}:{int(port) + 1}"


def replica_name(component: str, index: int) -> str:
    """etcd, apiserver, replicator for the first (or only) one; etcd-2, apiserver-2, ... after."""
    return component if index == 0 else f"{component}-{index + 1}"


def leader_identity(component: str) -> str:
    """A leader-electing component's name among the candidates, the same across its restarts:
    its supervisor (supervisord, or the kubelet for a static pod) runs one process per name, so
    a copy restarted after a crash leads again at once instead of waiting out its own lease."""
    return f"{socket.gethostname()}_{component}"


def plan_cluster(args: argparse.Namespace) -> ClusterPlan:
    state = Path(args.state_dir).resolve()
    nodes = node_names(args.nodes, args.node_prefix)
    net = HostNetwork(args.host_bridge, args.host_network, args.cluster_cidr)
    plan = ClusterPlan(
        state, nodes, net, nodes_as_hosts=len(nodes) > 1, pod_bridge=args.pod_bridge, api_address=args.api_address,
        pause_image=args.pause_image,
    )
    # Highly available: three etcd members, two API servers, two controller managers and two
    # replicators (one of each leading); every client knows every API server.
    replicas = HA_REPLICAS if args.ha else 1
    api_ports = [args.api_port + 2 * index for index in range(replicas)]  # each with its token port above
    # The host's clients use loopback; the nodes, the host's address on the LAN.
    api = plan.api = ",".join(f"127.0.0.1:{port}" for port in api_ports)
    lan_api = ",".join(f"{net.gateway}:{port}" for port in api_ports)
    node_api = lan_api if plan.nodes_as_hosts else api
    members = {
        replica_name("etcd", index): args.etcd_port + 2 * index for index in range(HA_ETCD_MEMBERS if args.ha else 1)
    }
    etcd = ",".join(f"127.0.0.1:{port}" for port in members.values())
    addresses = plan.node_addresses(args.node_network)
    plan.host_proxy_node = f"{args.node_prefix}host" if plan.nodes_as_hosts else nodes[0]
    # Where machines beyond this one reach the API server (a second real node): also listened on.
    public = [args.api_address] if args.api_address else []
    pki = ensure_pki(state, nodes, addresses, node_api, api, (net.gateway, *public))
    components = []
    for name, port in members.items():
        peers = {member: member_port + 1 for member, member_port in members.items()}
        argv = etcd_argv(state / "etcd" / name if args.ha else state / "etcd", port, port + 1, pki.etcd_flags(),
                         name=name if args.ha else "default", peers=peers if args.ha else None)
        components.append(Component(name, "etcd", argv[1:], health=f"127.0.0.1:{port}", grpc_health=False))
    for index, port in enumerate(api_ports):
        hosts = ("127.0.0.1", net.gateway, *public)
        components.append(Component(
            replica_name("apiserver", index), "kube-apiserver",
            [
                "--listen", ",".join(f"{host}:{port}" for host in hosts),
                "--token-listen", ",".join(f"{host}:{port + 1}" for host in hosts),
                # The Kubernetes REST API, for kubectl and the client libraries: on the same
                # addresses as gRPC (the certificate names each).
                "--rest-listen", ",".join(f"{host}:{args.rest_port + 2 * index}" for host in hosts),
                "--etcd-servers", etcd, "--service-cluster-ip-range", args.service_cidr,
                "--cluster-cidr", args.cluster_cidr, *apiserver_security_flags(pki),
                # The scheduler and controllers run in the controller manager, not in here.
                "--controllers=", *args.apiserver_arg,
            ],
            health=f"127.0.0.1:{port}",
        ))
    for index in range(replicas):
        components.append(Component(
            replica_name("controller-manager", index), "kube-controller-manager",
            [
                "--server", api, "--kubeconfig", str(state / "controller-manager.conf"),
                # Its --controllers default: every one the API server would run in process.
                "--cluster-cidr", args.cluster_cidr,
                "--leader-elect-identity", leader_identity(replica_name("controller-manager", index)),
                *args.controller_manager_arg,
            ],
        ))
    for index in range(replicas):
        components.append(Component(
            replica_name("replicator", index), "kube-replicator",
            [
                "--server", api, "--kubeconfig", str(state / "controller-manager.conf"),
                "--leader-elect-identity", leader_identity(replica_name("replicator", index)), *args.replicator_arg,
            ],
        ))
    cluster_dns = cluster_dns_ip(args.service_cidr)
    for node, ip in zip(nodes, addresses, strict=True):
        netns = net.namespace(node) if plan.nodes_as_hosts else ""
        kubelet_listen = f"{ip}:{KUBELET_PORT}"
        components.append(
            Component(
                f"kubelet-{node}",
                "kubelet",
                [
                    "--server", node_api,
                    "--kubeconfig", str(pki.root / f"kubelet-{node}.conf"),
                    *pki.serving_flags("kubelet", pki.node_dir(node)),
                    "--node-name", node,
                    "--node-ip", ip,
                    "--listen", kubelet_listen,
                    "--root-dir", str(state / "kubelet" / node),
                    "--pause-image", args.pause_image,
                    "--cluster-dns", cluster_dns,
                    # The pod range is the Node's (the API server's range allocator gives it).
                    "--pod-bridge", args.pod_bridge,
                    "--non-masquerade-cidr", args.cluster_cidr,
                ],
                health=kubelet_listen,
                netns=netns,
            )
        )
        components.append(proxy_component(f"proxy-{node}", node, ip, node_api, netns, pki, args))
    if plan.nodes_as_hosts:
        # The control-plane host's own proxy: cluster IPs answer from the host too, and its
        # routes reach every node's pods (as on a control-plane node of Kubernetes').
        pki.ensure_node(plan.host_proxy_node, (net.gateway,))
        components.append(proxy_component("proxy-host", plan.host_proxy_node, net.gateway, api, "", pki, args))
    dns_listen = f"{net.gateway}:{args.dns_port}"
    dns_args = ["--server", api, "--kubeconfig", str(pki.root / "kube-dns.conf"), "--listen", dns_listen]
    for upstream in args.dns_upstream:
        dns_args += ["--upstream", upstream]
    components.append(Component("dns", "kube-dns", dns_args, health=dns_listen, grpc_health=False))
    plan.components = components
    plan.cluster_dns = cluster_dns
    plan.dns_endpoint = (net.gateway, args.dns_port)
    return plan


def proxy_component(
    name: str, node: str, ip: str, api: str, netns: str, pki: ClusterPKI, args: argparse.Namespace
) -> Component:
    status_listen = f"{ip}:{PROXY_STATUS_PORT}"
    return Component(
        name,
        "kube-proxy",
        [
            "--server", api,
            "--kubeconfig", str(pki.root / "kube-proxy.conf"),
            *pki.serving_flags("kube-proxy", pki.node_dir(node)),
            "--node-name", node,
            "--proxy-mode", args.proxy_mode,
            # The original design's round robin: the walkthrough's pages rotate over the pods.
            "--load-balance", "round-robin",
            "--node-ip", ip,
            "--bind-address", ip,
            "--service-cluster-ip-range", args.service_cidr,
            "--status-listen", status_listen,
        ],
        health=status_listen,
        netns=netns,
    )


def ensure_pki(
    state: Path, nodes: list[str], addresses: list[str], node_api: str, api: str, api_addresses: tuple[str, ...]
) -> ClusterPKI:
    """The cluster's CA and certificates (made on the first `up`, kept after), and a
    kubeconfig per identity pointing at this API server (the nodes' at its LAN address)."""
    pki = ClusterPKI(state)
    pki.ensure_control_plane(apiserver_names=api_addresses)
    for node, address in zip(nodes, addresses, strict=True):
        pki.ensure_node(node, (address,))
        pki.write_node_kubeconfig(node, node_api)
    pki.write_client_kubeconfigs(api)
    pki.ensure_token_file()
    return pki


def admin_credentials(state: Path) -> ClientCredentials | None:
    try:
        return ClusterPKI(state).credentials("admin")
    except OSError:
        return None


def dns_manifest(plan: ClusterPlan) -> str:
    """The kube-dns service (the cluster DNS address, port 53) and its endpoints (kube-dns on the host)."""
    host, port = plan.dns_endpoint
    return f"""apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: {DNS_NAMESPACE}
  labels: {{k8s-app: kube-dns}}
spec:
  clusterIP: {plan.cluster_dns}
  ports:
  - {{name: dns, port: 53, protocol: UDP, targetPort: {port}}}
  - {{name: dns-tcp, port: 53, protocol: TCP, targetPort: {port}}}
---
apiVersion: v1
kind: Endpoints
metadata:
  name: kube-dns
  namespace: {DNS_NAMESPACE}
  labels: {{k8s-app: kube-dns}}
subsets:
- addresses:
  - ip: {host}
  ports:
  - {{name: dns, port: {port}, protocol: UDP}}
  - {{name: dns-tcp, port: {port}, protocol: TCP}}
"""


def ensure_dns_service(plan: ClusterPlan) -> None:
    """Applies the kube-dns service and endpoints (idempotent: apply leaves them as they are)."""
    path = plan.state_dir / "kube-dns.yaml"
    path.write_text(dns_manifest(plan))
    argv = python_module_argv(
        "services.kubecfg.main", "--kubeconfig", str(plan.state_dir / "admin.conf"), "apply", "-f", str(path)
    )
    # etcd members that `up` has just started may still be electing a leader: ask again for a while.
    give_up = time.monotonic() + DNS_SERVICE_WAIT
    while True:
        result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
        if result.returncode == 0:
            return
        if not any(text in result.stderr for text in TRANSIENT_FAILURES) or time.monotonic() > give_up:
            raise SystemExit(f"could not create the kube-dns service:\n{result.stdout}{result.stderr}")
        time.sleep(1.0)


# -- state ----------------------------------------------------------------


def _state_file(state: Path) -> Path:
    return state / "cluster.json"


def load_state(state: Path) -> dict:
    try:
        return json.loads(_state_file(state).read_text())
    except (OSError, ValueError):
        return {"components": {}, "nodes": []}


def save_state(state: Path, data: dict) -> None:
    state.mkdir(parents=True, exist_ok=True)
    tmp = _state_file(state).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(_state_file(state))


def container_running(name: str) -> bool:
    try:
        import docker

        return docker.from_env().containers.get(name).status == "running"
    except Exception:
        return False


def alive(component: Component) -> bool:
    if component.static_pod:
        return staticpods.pod_container(component.static_pod, staticpods.pod_base_name(component)) is not None
    if component.container:
        return container_running(component.container)
    return pid_alive(component.pid) and runs_program(component.pid, component.process_argv())


def healthy(component: Component, credentials: ClientCredentials | None) -> bool:
    if not alive(component):
        return False
    if not component.health:
        return True
    host, _, port = component.health.rpartition(":")
    if not component.grpc_health:
        return port_open(int(port), host)
    return grpc_serving(component.health, credentials)


def grpc_serving(address: str, credentials: ClientCredentials | None, timeout: float = 1.0) -> bool:
    """The component's gRPC health, asked as the admin: every gRPC port of the cluster is TLS."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.common.transport import blocking_channel

    try:
        with blocking_channel(address, credentials) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return response.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


# -- commands -------------------------------------------------------------


def ensure_loopback_addresses(count: int, network: str) -> None:
    """127.0.0.0/8 is all loopback on Linux: nothing to configure, but check."""
    for index in range(count):
        ip = node_ip(index, network)
        with socket.socket() as sock:
            try:
                sock.bind((ip, 0))
            except OSError as error:
                raise SystemExit(f"cannot use {ip} for a simulated node: {error}") from None


def runs_program(pid: int, argv: list[str]) -> bool:
    """Whether process `pid` runs `argv` (nsenter's execs the program after its `--`): a pid
    recorded long ago may be another process's now."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return False
    running = [part.decode(errors="replace") for part in cmdline]
    return running == argv or (argv[:1] == ["nsenter"] and "--" in argv and running == argv[argv.index("--") + 1:])


def supervisor_programs(plan: ClusterPlan) -> list[Program]:
    """Each component's program, with a digest of what it runs (its code, its argv): new code
    or new flags is a changed program, which `up` restarts (upgrade_supervised)."""
    programs = []
    for c in plan.components:
        argv = tuple(c.process_argv())
        programs.append(Program(c.name, argv, c.log_path(plan.state_dir), program_digest(argv, REPO)))
    return programs


# A rolling upgrade's order (and process mode's start order): what the others depend on first.
ROLLING_ORDER = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-replicator", "kubelet", "kube-proxy", "kube-dns",
)


def rolling(components: list[Component]) -> list[Component]:
    """The components in ROLLING_ORDER (etcd, API servers, controller managers, replicators,
    kubelets, proxies, DNS)."""
    by_name = {c.name: c for c in components}
    return [by_name[name] for name in rolling_order([(c.name, c.program) for c in components], ROLLING_ORDER)]


def ensure_supervisor(plan: ClusterPlan, recorded: dict) -> tuple[Supervisor, list[str]]:
    """Process mode: every component runs under the cluster's supervisord (tools/supervisor.py).
    Writes its configuration; a running supervisord takes the changes, and the components
    whose program changed (new code, other flags) and that run are returned, for `up` to
    restart one at a time (upgrade_supervised); else supervisord is started, once every
    process a dead one left behind (a killed supervisord's children, or a cluster from before
    supervisord) is stopped."""
    supervisor = Supervisor(plan.state_dir)
    supervisor.write_config(supervisor_programs(plan), python=sys.executable, directory=REPO)
    if supervisor.running():
        replaced, changed = supervisor.update(keep=[c.name for c in plan.components])
        for name in replaced:
            print(f"  {name:<24} replaced: its configuration changed")
        return supervisor, upgrade_plan([c.name for c in rolling(plan.components)], changed, changed)
    left = supervisor.orphans()
    for data in recorded.get("components", {}).values():
        component = Component(**data)
        if not component.container and alive(component) and component.pid not in left:
            left.append(component.pid)
    if left:
        print(f"  stopping {len(left)} process(es) left by an earlier run")
        terminate(left)
    supervisor.start_daemon(sys.executable)
    print(f"  {'supervisord':<24} running, pid {supervisor.pid()}, socket {supervisor.layout.socket}")
    return supervisor, []


def upgrade_supervised(
    component: Component, supervisor: Supervisor, timeout: float, credentials: ClientCredentials | None
) -> bool:
    """A rolling upgrade's step: the component is stopped (SIGTERM) and started on its new
    program, and waited for until healthy before `up` goes on to the next (the other replica
    serves meanwhile; a kubelet adopts its pods)."""
    old = supervisor.started_digest(component.name)
    print(f"  {component.name:<24} upgrading: what it runs changed")
    supervisor.replace(component.name)
    supervisor.start(component.name)
    if not _wait_supervised(component, supervisor, timeout, credentials):
        return False
    if not (component.health and component.grpc_health):
        # No probe (the replicator, the controller manager) or only an open port (etcd: it may not
        # have caught up with its peers yet): also up as long as supervisord counts it started
        # (RUNNING), before the next one.
        deadline = time.monotonic() + timeout
        while (info := supervisor.process(component.name)) is not None and info.state != "RUNNING":
            if info.state in ("BACKOFF", "FATAL") or time.monotonic() > deadline:
                return False
            time.sleep(0.1)
    print(f"  {component.name:<24} upgraded ({old or '?'} -> {supervisor.started_digest(component.name) or '?'})")
    return True


# A supervised component this young that is not answering yet is coming up, not stuck.
SETTLING_SECONDS = 10.0


def start_supervised(
    component: Component, supervisor: Supervisor, timeout: float, credentials: ClientCredentials | None
) -> bool:
    """Brings one component up under supervisord, as `up` did before: healthy ones are left
    alone, one supervisord is bringing back is waited for, one running but not answering is
    restarted, one stopped (or given up on) is started; then waits until it is healthy."""
    info = supervisor.process(component.name)
    if info is None:
        print(f"\n{component.name} is not in {supervisor.layout.config}", file=sys.stderr)
        return False
    component.pid = info.pid
    if component.pid and healthy(component, credentials):
        print(f"  {component.name:<24} already running")
        return True
    if info.state in COMING_UP or (info.state == "RUNNING" and info.uptime < SETTLING_SECONDS):
        done = "back"
    elif info.state == "RUNNING":
        print(f"  {component.name:<24} not answering: restarting it")
        supervisor.restart(component.name)
        done = "back"
    else:
        supervisor.start(component.name)
        done = "started"
    if not _wait_supervised(component, supervisor, timeout, credentials):
        return False
    print(f"  {component.name:<24} {done}")
    return True


def _wait_supervised(
    component: Component, supervisor: Supervisor, timeout: float, credentials: ClientCredentials | None
) -> bool:
    """Until it is healthy; False after `timeout`, or once supervisord gave up on it or it
    failed to start three times (its log says why: no need to sit through the back-off)."""
    deadline = time.monotonic() + timeout
    failures, last = 0, ""
    while time.monotonic() < deadline:
        info = supervisor.process(component.name)
        if info is None or info.state == "FATAL":
            return False
        if info.state == "BACKOFF" and last != "BACKOFF":
            failures += 1
            if failures >= 3:
                return False
        last = info.state
        component.pid = info.pid  # from STARTING on: it may answer before supervisord counts it as up
        if component.pid and healthy(component, credentials):
            return True
        time.sleep(0.1)
    return False


def stop_supervised(state: Path, components: int) -> None:
    """Process mode's `down`: supervisord stops every component (in reverse start order, each
    SIGTERM then SIGKILL after 15 s) and exits; whatever a dead supervisord left is stopped too."""
    supervisor = Supervisor(state)
    if supervisor.running():
        pid = supervisor.pid()
        if supervisor.shutdown(timeout=STOP_WAIT_SECONDS * (components + 1)):
            print(f"  {'supervisord':<24} stopped, with every component under it")
        else:
            print(f"  (supervisord {pid} did not stop in time: killed)", file=sys.stderr)
            terminate([pid], timeout=0)
    left = supervisor.orphans()
    if left:
        terminate(left)
        print(f"  stopped {len(left)} process(es) a dead supervisord left")
    supervisor.forget_restarts()


def supervised_status(state: Path, components: dict, credentials: ClientCredentials | None) -> int:
    """Process mode's `make status`: supervisord's truth (state, pid, uptime), the restarts its
    event listener counted, and each component's health probe."""
    supervisor = Supervisor(state)
    infos = supervisor.processes()
    restarts = supervisor.restarts()
    if infos:
        print(f"supervisord: pid {supervisor.pid()}, socket {supervisor.layout.socket}")
    else:
        print("supervisord is not running: every component is down (make up starts it again)")
    rows = []
    for name, data in components.items():
        component = Component(**data)
        info = infos.get(name)
        component.pid = info.pid if info else 0
        ok = bool(component.pid) and healthy(component, credentials)
        rows.append(StatusRow(
            name, info.state if info else "UNKNOWN", component.pid, info.uptime if info else 0.0,
            restarts[name], ok, str(component.log_path(state)),
        ))
    print("\n".join(format_status(rows)))
    return 0 if rows and all(row.healthy for row in rows) else 1


def start_container(component: Component, state: Path, args: argparse.Namespace) -> None:
    """Runs the component in its image on the host network, logging into the state dir.
    MODE=containers starts only the kubelet so (every other component is its static pod),
    with a restart policy: Docker brings it back when it dies, and it adopts every pod."""
    import docker

    client = docker.from_env()
    name = f"{args.container_prefix}{component.name}"
    try:
        client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass
    command = [component.program, *component.args]
    image = args.etcd_image if component.program == "etcd" else args.component_image
    from services.kubelet.podnetwork import DEFAULT_STATE_DIR

    volumes = {str(state): {"bind": str(state), "mode": "rw"}}
    kubelet = component.program == "kubelet"
    if kubelet:
        volumes["/var/run/docker.sock"] = {"bind": "/var/run/docker.sock", "mode": "rw"}
        # The pod network: the host's address pool, and its sandboxes' namespaces (by pid).
        volumes[DEFAULT_STATE_DIR] = {"bind": DEFAULT_STATE_DIR, "mode": "rw"}
    log = component.log_path(state)
    client.containers.run(
        image,
        entrypoint=["/bin/sh", "-c", f"exec {shlex.join(command)} >>{shlex.quote(str(log))} 2>&1"],
        command=[],
        name=name,
        detach=True,
        network_mode="host",
        pid_mode="host" if kubelet else None,
        # Enough to make veths, enter a sandbox's network namespace and write
        # iptables rules (--privileged wants capabilities some hosts lack);
        # kube-proxy writes its nftables table.
        cap_add=(
            ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"] if kubelet
            else ["NET_ADMIN", "NET_RAW"] if component.program == "kube-proxy" else None
        ),
        volumes=volumes,
        labels={CLUSTER_LABEL: str(state)},
        restart_policy=staticpods.KUBELET_RESTART_POLICY if kubelet else None,
    )
    component.container = name


def up(args: argparse.Namespace) -> int:
    if args.mode == "containers" and args.ha:
        print("HA runs in process mode (each replica is a process of its own)", file=sys.stderr)
        return 2
    if args.mode == "containers" and args.nodes > 1:
        print("nodes as hosts (NODES > 1) run in process mode: each node's kubelet and proxy join its "
              "network namespace, which a component container cannot (yet)", file=sys.stderr)
        return 2
    plan = plan_cluster(args)
    state = plan.state_dir
    (state / "logs").mkdir(parents=True, exist_ok=True)
    if not plan.nodes_as_hosts:
        ensure_loopback_addresses(len(plan.nodes), args.node_network)
    recorded = load_state(state)
    running_nodes = recorded.get("nodes") if recorded.get("components") else None
    if running_nodes and (running_nodes != plan.nodes or recorded.get("mode") != args.mode):
        print(
            f"a cluster ({recorded.get('mode')}, nodes {running_nodes}) is running from {state}; "
            "run `make down` first to change NODES or MODE",
            file=sys.stderr,
        )
        return 1
    recorded.update(nodes=plan.nodes, mode=args.mode, network=network_record(plan))
    save_state(state, recorded)
    try:
        wire_hosts(plan)
    except HostNetworkError as error:
        print(f"could not set up the host network: {error}", file=sys.stderr)
        return 1
    credentials = admin_credentials(state)
    components = prepare_static_pods(plan, args) if args.mode == "containers" else rolling(plan.components)
    try:
        supervisor, upgrades = ensure_supervisor(plan, recorded) if args.mode == "processes" else (None, [])
    except SupervisorError as error:
        print(f"{error}; see {Supervisor(state).layout.log}", file=sys.stderr)
        return 1
    for component in components:
        if supervisor is not None:  # process mode: each component under supervisord, upgrades one at a time
            start = upgrade_supervised if component.name in upgrades else start_supervised
            started = start(component, supervisor, args.timeout, credentials)
            recorded["components"][component.name] = asdict(component)
            save_state(state, recorded)
            if not started:
                print(f"\n{component.name} failed to start; last lines of {component.log_path(state)}:",
                      file=sys.stderr)
                print(_tail(component.log_path(state)), file=sys.stderr)
                return 1
            continue
        previous = recorded["components"].get(component.name)
        if previous:
            component.pid = previous.get("pid", 0)
            component.container = previous.get("container", "")
            # A kubelet's container started with other flags or another build of its image is replaced.
            if healthy(component, credentials) and previous.get("args") == component.args and (
                not component.container or staticpods.runs_image(component.container, args.component_image)
            ):
                print(f"  {component.name:<24} already running")
                continue
            stop_component(component)
            component.pid, component.container = 0, ""
        if component.static_pod:
            pass  # the kubelet runs it from its manifest
        elif args.mode == "containers":
            start_container(component, state, args)
        recorded["components"][component.name] = asdict(component)
        save_state(state, recorded)
        if not _wait_healthy(component, args.timeout, credentials):
            print(f"\n{component.name} failed to start; last lines of {component.log_path(state)}:", file=sys.stderr)
            print(_tail(component.log_path(state)), file=sys.stderr)
            return 1
        print(f"  {component.name:<24} started")
    if upgrades:
        print(f"  upgraded {len(upgrades)} component(s), one at a time: {', '.join(upgrades)}")
    ensure_dns_service(plan)
    if args.user_kubeconfig:
        user_config = Path(args.user_kubeconfig).expanduser()
        kubeconfig.write(user_config, (state / "admin.conf").read_text())
        print(f"  admin kubeconfig written to {user_config}")
    # kubectl's: the admin over the REST API (kubectl knows one server per cluster: the first).
    admin = ClusterPKI(state).credentials("admin")
    kubeconfig.write(state / "kubeconfig", kubeconfig.render(
        cluster="kybernetes", server=f"127.0.0.1:{args.rest_port}", ca_certificate=admin.ca_certificate,
        user="kubernetes-admin", certificate=admin.certificate, key=admin.key,
    ))
    _print_next_steps(plan, args.user_kubeconfig)
    return 0


def prepare_static_pods(plan: ClusterPlan, args: argparse.Namespace) -> list[Component]:
    """MODE=containers: every component but the kubelet becomes a static pod in the
    kubelet's manifest directory (tools/staticpods.py); the kubelet is started first."""
    state = plan.state_dir
    for path in staticpods.etcd_data_dirs(plan.components):
        Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
    if staticpods.needs_route_localnet(plan.components) and staticpods.enable_route_localnet():
        print("  net.ipv4.conf.all.route_localnet=1 (kube-proxy's node ports on loopback; its container cannot)")
    images = {args.component_image, args.etcd_image}
    manifests = staticpods.render_manifests(
        plan.components, state, args.component_image, args.etcd_image,
        {image: staticpods.image_id(image) for image in images},
    )
    for name in staticpods.write_manifests(staticpods.manifest_dir(state), manifests):
        print(f"  {name:<24} written to {staticpods.manifest_dir(state)}")
    for component in plan.components:
        if component.program == "kubelet":
            component.args += staticpods.kubelet_flags(state)
        else:
            component.static_pod = staticpods.static_pod_name(component, plan.nodes[0])
    return staticpods.start_order(plan.components)


def network_record(plan: ClusterPlan) -> dict:
    """What `down` needs to undo the network (recorded before any of it is made)."""
    net = plan.host_network
    return {
        "host_bridge": net.bridge, "host_network": net.network, "cluster_cidr": net.cluster_cidr,
        "nodes_as_hosts": plan.nodes_as_hosts, "pod_bridge": plan.pod_bridge,
        "root_proxies": [plan.host_proxy_node] if plan.nodes_as_hosts else list(plan.nodes),
        "api_address": plan.api_address, "pause_image": plan.pause_image,
    }


def wire_hosts(plan: ClusterPlan) -> None:
    """The LAN bridge, and with nodes as hosts a namespace per node; a namespace on this
    bridge that no node of the plan has (a dead cluster's) is removed first."""
    net = plan.host_network
    net.ensure_host()
    if not plan.nodes_as_hosts:
        return
    wanted = {net.namespace(node) for node in plan.nodes}
    for namespace in net.namespaces():
        if namespace not in wanted:
            node = namespace[len(net.bridge) + 1:]
            print(f"  removing {namespace}, left by an earlier cluster")
            net.remove_node(node)
    for index, node in enumerate(plan.nodes):
        net.ensure_node(node, index)


def _wait_healthy(component: Component, timeout: float, credentials: ClientCredentials | None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(component) and not component.static_pod:  # the kubelet makes a static pod's container
            return False
        if healthy(component, credentials):
            return True
        time.sleep(0.1)
    return False


def stop_component(component: Component, timeout: float = 15.0) -> None:
    if component.container:
        try:
            import docker

            container = docker.from_env().containers.get(component.container)
            container.stop(timeout=int(timeout))
            container.remove(force=True)
        except Exception:
            pass
        return
    pid = component.pid
    if not pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def down(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).resolve()
    recorded = load_state(state)
    if recorded.get("mode", "processes") == "processes":
        stop_supervised(state, len(recorded.get("components", {})))
    # Reverse start order: nodes first, the control plane and etcd last.
    for name, data in reversed(list(recorded.get("components", {}).items())):
        component = Component(**data)
        if component.static_pod:
            continue  # the kubelet's: its containers go with every pod container below, once it is stopped
        if alive(component):
            stop_component(component)
            print(f"  {name:<24} stopped")
        elif component.container:
            stop_component(component)  # stopped (`docker kill`), yet there: removed
    from services.kubelet.podnetwork import release_node_addresses

    network = recorded.get("network")
    nodes = recorded.get("nodes", [])
    # MODE=containers: the kubelet is stopped; its pods (the static pods, kube-proxy's too) go
    # before the proxies' rules, so that no proxy writes its table again after.
    removed = remove_node_containers(nodes) if recorded.get("mode") == "containers" else 0
    # Tables, chains and routes of the proxies in the host's namespace; a node's own
    # namespace takes everything in it when it goes.
    for node in network["root_proxies"] if network else nodes:
        remove_proxy_rules(node)
    removed += remove_node_containers(nodes)
    if removed:
        print(f"  removed {removed} pod container(s)")
    release_node_addresses(set(nodes))
    if network:
        unwire_hosts(network, nodes)
    recorded.update(components={}, nodes=[], network=None)
    if state.exists():
        save_state(state, recorded)
    # A fresh cluster next time: etcd's data and the kubelets' pod directories
    # go with it (logs stay for a post-mortem).
    for data in (state / "etcd", state / "kubelet", staticpods.manifest_dir(state)):
        shutil.rmtree(data, ignore_errors=True)
    return 0


def unwire_hosts(network: dict, nodes: list[str]) -> None:
    """Every namespace, bridge, route and rule `wire_hosts` and the root namespace's kubelet made."""
    net = HostNetwork(network["host_bridge"], network["host_network"], network["cluster_cidr"])
    try:
        for namespace in net.namespaces():
            net.remove_node(namespace[len(net.bridge) + 1:])
        if not network["nodes_as_hosts"]:
            remove_pod_bridge(network["pod_bridge"])
            for node in nodes:  # the root namespace's kubelet's host ports (services/kubelet/hostports.py)
                subprocess.run(["nft", "-f", "-"], input=script(cleanup_commands(table_name(node))), text=True,
                               capture_output=True, timeout=30)
        net.remove_host()
    except HostNetworkError as error:
        print(f"  (could not remove all of the host network: {error})", file=sys.stderr)


def remove_proxy_rules(node: str) -> None:
    """kube-proxy leaves its kernel rules in place when it stops (traffic keeps flowing
    across a restart); `down` removes them: `kube-proxy --cleanup` deletes the node's table."""
    result = subprocess.run(
        python_module_argv("services.proxy.main", "--cleanup", "--node-name", node),
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        print(f"  (could not remove {node}'s proxy rules: {(result.stderr or result.stdout).strip()})", file=sys.stderr)


def remove_node_containers(nodes: list[str]) -> int:
    if not nodes:
        return 0
    try:
        import docker

        client = docker.from_env()
        count = 0
        for node in nodes:
            for container in client.containers.list(all=True, filters={"label": f"{NODE_LABEL}={node}"}):
                container.remove(force=True)
                count += 1
        return count
    except Exception as error:  # Docker not running: nothing of ours can be left there
        print(f"  (could not list containers: {error})", file=sys.stderr)
        return 0


def status(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).resolve()
    recorded = load_state(state)
    components = recorded.get("components", {})
    if not components:
        print("no cluster is running (make up starts one)")
        return 1
    credentials = admin_credentials(state)
    if recorded.get("mode") == "containers":
        return static_pods_status(state, components, credentials)
    return supervised_status(state, components, credentials)


def static_pods_status(state: Path, components: dict, credentials: ClientCredentials | None) -> int:
    """MODE=containers: the kubelet's container (Docker's restarts of it), and each static pod
    as the kubelet reports it on its own API (no API server needed: they are the API server),
    with its restarts; every component's health probed as in process mode."""
    import grpc

    kubelets = [Component(**data) for data in components.values() if data["program"] == "kubelet"]
    rows: dict[str, staticpods.PodRow] = {}
    unreachable = []
    for kubelet in kubelets:
        try:
            rows.update((row.component, row) for row in staticpods.pod_rows(
                staticpods.kubelet_pods(kubelet.health, credentials)))
        except grpc.RpcError:
            unreachable.append(kubelet.name)
    worst = 0
    table = [("COMPONENT", "RUNS AS", "STATUS", "PHASE", "READY", "RESTARTS", "LOG")]
    for name, data in components.items():
        component = Component(**data)
        ok = healthy(component, credentials)
        worst = worst or (0 if ok else 1)
        row = rows.get(name)
        if component.static_pod:
            where, phase = f"pod {staticpods.NAMESPACE}/{component.static_pod}", row.phase if row else "unknown"
            if row is None:  # the kubelet does not answer: what it labelled the running container with
                count = staticpods.pod_restarts_in_docker(component.static_pod, staticpods.pod_base_name(component))
            ready, restarts = (row.ready, str(row.restarts)) if row else ("-", "?" if count is None else str(count))
        else:  # the kubelet: Docker restarts it
            count = staticpods.docker_restart_count(component.container)
            where, phase, ready = f"container {component.container}", "-", "-"
            restarts = "?" if count is None else str(count)
        table.append((name, where, "healthy" if ok else "DOWN", phase, ready, restarts, str(component.log_path(state))))
    print("\n".join(staticpods.format_table(table)))
    for name in unreachable:
        print(f"({name} did not answer: the static pods' phase is unknown, their restarts as it labelled them)")
    return worst


def join_token(args: argparse.Namespace) -> int:
    """What a new machine needs to join (kubeadm token create --print-join-command): a join
    token appended to the API server's bootstrap token file (re-read when it changes), in a
    bootstrap kubeconfig naming the API server's token address on the LAN and the cluster CA;
    the cluster's kube-proxy kubeconfig; and cluster.env for scripts/join-node.sh. In <state>/join/."""
    state = Path(args.state_dir).resolve()
    recorded = load_state(state)
    api_args = recorded.get("components", {}).get("apiserver", {}).get("args", [])
    network = recorded.get("network")
    if "--token-listen" not in api_args or not network:
        print("no cluster is running here (make up starts one)", file=sys.stderr)
        return 1
    # The address other machines reach: the one `up --api-address` named, else the host's on
    # the simulated LAN (which namespaces on this machine reach).
    host = network.get("api_address") or HostNetwork(network["host_bridge"], network["host_network"]).gateway
    api_port = int(api_args[api_args.index("--listen") + 1].split(",")[0].rpartition(":")[2])
    token_port = int(token_address(f"127.0.0.1:{api_port}").rpartition(":")[2])
    server = args.server or f"{host}:{api_port}"
    pki = ClusterPKI(state)
    token = pki.new_bootstrap_token(datetime.timedelta(seconds=args.ttl))
    join = state / "join"
    join.mkdir(parents=True, exist_ok=True)
    kubeconfig.write(join / "bootstrap.conf", kubeconfig.render(
        cluster="kybernetes", server=f"{server.rpartition(':')[0]}:{token_port}",
        ca_certificate=pki.ca.certificate_pem, user="bootstrap", token=token,
    ))
    # The cluster's kube-proxy identity, as kubeadm hands every node's kube-proxy one credential.
    proxy = pki.credentials("kube-proxy")
    kubeconfig.write(join / "kube-proxy.conf", kubeconfig.render(
        cluster="kybernetes", server=server, ca_certificate=proxy.ca_certificate, user="system:kube-proxy",
        certificate=proxy.certificate, key=proxy.key,
    ))
    service_cidr = api_args[api_args.index("--service-cluster-ip-range") + 1]
    (join / "cluster.env").write_text(
        f"API_SERVER={server}\nCLUSTER_DNS={cluster_dns_ip(service_cidr)}\n"
        f"CLUSTER_CIDR={network['cluster_cidr']}\nSERVICE_CIDR={service_cidr}\n"
        f"PAUSE_IMAGE={network.get('pause_image', 'kybernetes/pause:latest')}\n"
    )
    print(f"join token {token.split('.')[0]}.… valid for {args.ttl} s; what a new node needs is in {join}/")
    print(f"on the new machine (a checkout with `make images venv` run): scripts/join-node.sh {join} NAME ITS-LAN-IP")
    return 0


def _print_next_steps(plan: ClusterPlan, user_kubeconfig: str) -> None:
    kubecfg = str(REPO / ".venv" / "bin" / "kubecfg")
    admin = plan.state_dir / "admin.conf"
    if not user_kubeconfig:
        kubecfg += f" --kubeconfig {admin}"
    pki = plan.state_dir / "pki"
    token = (pki / "tokens.csv").read_text().split(",")[0]
    grpcurl = REPO / ".venv" / "bin" / "grpcurl"
    first_api = plan.api.split(",")[0]
    # The first node's address, where the guestbook's frontend answers on its node port.
    node_ip = next(
        (c.args[c.args.index("--node-ip") + 1] for c in plan.components if c.program == "kubelet"), "127.0.0.1"
    )
    print(
        f"""
cluster is up: {len(plan.nodes)} node(s) {', '.join(plan.nodes)}; API at {plan.api}; cluster DNS at {plan.cluster_dns}
try:
  {kubecfg} get nodes
  {kubecfg} apply -f examples/guestbook/
  {kubecfg} get pods -o wide
  {kubecfg} get svc      # services on their CLUSTER-IP, from the host and from pods
  busybox wget -q -O - http://{node_ip}:30001/     # the guestbook's frontend on its node port
  {grpcurl} -cacert {pki}/ca.crt -cert {pki}/admin.crt -key {pki}/admin.key {first_api} list
  {grpcurl} -cacert {pki}/ca.crt -H 'authorization: Bearer {token}' {token_address(first_api)} list
  {REPO / ".venv" / "bin" / "kubectl"} --kubeconfig {plan.state_dir / "kubeconfig"} get pods -A     # the REST API
kubeconfig: {user_kubeconfig or admin}   certificates: {pki}/
logs:    {plan.state_dir / 'logs'}/
status:  make status      stop: make down"""
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status", "join-token"):
        command = sub.add_parser(name)
        command.add_argument("--state-dir", default=str(REPO / ".kybernetes"))
        if name == "join-token":
            command.add_argument("--ttl", type=int, default=24 * 3600, help="seconds the token is valid (default 24 h)")
            command.add_argument(
                "--server", default="", help="the token address the new node reaches (default: as started)"
            )
        if name == "up":
            command.add_argument("--nodes", type=int, default=1)
            command.add_argument("--mode", choices=("processes", "containers"), default="processes")
            command.add_argument("--busybox-image", default="kybernetes/busybox:latest")
            command.add_argument("--pause-image", default="kybernetes/pause:latest")
            command.add_argument("--component-image", default="kybernetes/kybernetes:latest")
            command.add_argument("--etcd-image", default="kybernetes/etcd:latest")
            command.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each component")
            # Isolation, so a second cluster (e.g. a test's) can run beside `make up`'s.
            command.add_argument("--etcd-port", type=int, default=ETCD_PORT, help="etcd client port (peer: +1)")
            command.add_argument(
                "--api-port", type=int, default=API_PORT,
                help="the API server's port, its bearer-token port the next one; with --ha the second API "
                "server's two follow (default %(default)s)",
            )
            command.add_argument(
                "--rest-port", type=int, default=REST_PORT,
                help="the Kubernetes REST API's port (kubectl's; with --ha the second API server's is two "
                "above) (default %(default)s)",
            )
            command.add_argument(
                "--ha", action="store_true",
                help=f"highly available: {HA_ETCD_MEMBERS} etcd members (client ports from --etcd-port, two "
                f"apart), {HA_REPLICAS} API servers, controller managers and replicators, each client knowing every "
                "API server",
            )
            command.add_argument(
                "--api-address", default="",
                help="this machine's address on a real LAN: the API server listens there too (and its "
                "certificate names it), and `join-token` gives it to new machines (default: none)",
            )
            command.add_argument(
                "--node-network", default="127.0.0",
                help="one node: its address is <network>.1 (default 127.0.0, the host's loopback)",
            )
            command.add_argument(
                "--host-network", default=HOST_NETWORK,
                help="the simulated LAN: the host takes its first address, node N (with several nodes) "
                "the next ones (default %(default)s)",
            )
            command.add_argument("--host-bridge", default=HOST_BRIDGE, help="the LAN's bridge (default %(default)s)")
            command.add_argument(
                "--pod-bridge", default=POD_BRIDGE, help="each node's bridge for its pods (default %(default)s)"
            )
            command.add_argument(
                "--cluster-cidr", default=DEFAULT_CLUSTER_CIDR,
                help="the pods' addresses; each node gets a /24 of it (default %(default)s)",
            )
            command.add_argument("--node-prefix", default="", help="prefix of node names (default: none)")
            command.add_argument("--container-prefix", default="kyb-", help="prefix of component container names")
            command.add_argument(
                "--apiserver-arg", action="append", default=[], help="extra flag for the API server (repeatable)"
            )
            command.add_argument(
                "--replicator-arg", action="append", default=[], help="extra flag for the replicator (repeatable)"
            )
            command.add_argument(
                "--controller-manager-arg", action="append", default=[],
                help="extra flag for the controller manager (the scheduler and the controllers; repeatable)",
            )
            command.add_argument(
                "--service-cidr", default=SERVICE_CIDR,
                help="service cluster IP range; the cluster DNS is its tenth address (default %(default)s)",
            )
            command.add_argument(
                "--dns-port", type=int, default=DNS_PORT, help="kube-dns's port on the host's LAN address"
            )
            command.add_argument(
                "--user-kubeconfig", default=str(kubeconfig.DEFAULT_KUBECONFIG),
                help="where to write the admin's kubeconfig for kubecfg; empty: only <state-dir>/admin.conf "
                "(default %(default)s)",
            )
            command.add_argument(
                "--dns-upstream", action="append", default=[], metavar="IP[:PORT]",
                help="where kube-dns forwards other names (default: the host's resolv.conf)",
            )
            command.add_argument(
                "--proxy-mode", choices=("nftables", "iptables", "userspace"), default="nftables",
                help="kube-proxy's data path (default %(default)s)",
            )
    args = parser.parse_args(argv)
    if args.command == "up" and args.nodes < 1:
        parser.error("--nodes must be at least 1")
    sys.exit({"up": up, "down": down, "status": status, "join-token": join_token}[args.command](args))


if __name__ == "__main__":
    main()
