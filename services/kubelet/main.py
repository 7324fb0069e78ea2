"""`kubelet`: the node agent.

    python -m services.kubelet.main --node-name node-1 --server 127.0.0.1:6443 \\
        --manifest-path /etc/kybernetes/manifests --listen 127.0.0.1:10250

Without --server the kubelet runs its static pods (manifest path, URL and
submitted pods) on its own. Stopping the kubelet leaves its pods running; the
next kubelet of the same node name adopts them.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from pathlib import Path

from services.common.clusternet import DEFAULT_CLUSTER_CIDR
from services.common.client import cluster_access
from services.common.flags import duration, positive_int
from services.common import kubeconfig
from services.common.kubeconfig import KubeconfigError, add_kubeconfig_flag
from services.common.log import configure_logging
from services.common.servicemain import run_service, stop_on_signals
from services.common.transport import add_serving_flags, serving_from_args

from .bootstrap import BootstrapError, BootstrapPlan, bootstrap
from .kubelet import Kubelet, KubeletConfig
from .podnetwork import DEFAULT_BRIDGE, DEFAULT_POD_CIDR, DEFAULT_STATE_DIR, PodNetwork, PodNetworkError
from .resolvconf import DEFAULT_CLUSTER_DOMAIN, DEFAULT_HOST_RESOLV_CONF


def ip_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of IP addresses ("" for none)."""
    addresses = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            addresses.append(str(ipaddress.ip_address(part)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not an IP address") from None
    return tuple(addresses)


def parse_args(argv: list[str] | None = None) -> KubeletConfig:
    parser = argparse.ArgumentParser(prog="kubelet", description="Runs the pods bound to this node on Docker.")
    parser.add_argument("--server", default=None,
                        help="API server address (HOST:PORT), overriding --kubeconfig's; neither: static pods only")
    add_kubeconfig_flag(parser)
    add_serving_flags(parser, what="the kubelet's API")
    parser.add_argument("--insecure-dev", action="store_true",
                        help="plaintext API with no caller checks, and plaintext to --server: development only")
    parser.add_argument("--bootstrap-kubeconfig", default=None, metavar="FILE",
                        help="join with a token (kubeadm's TLS bootstrap): this kubeconfig names the API server's "
                        "token address, the cluster CA and a bootstrap token; the node's certificates are asked "
                        "for at start and kept in --cert-dir, its kubeconfig written to --kubeconfig")
    parser.add_argument("--cert-dir", default=None, metavar="DIR",
                        help="where a joining node keeps its keys and certificates (default <root-dir>/pki)")
    parser.add_argument("--node-name", default=socket.gethostname(), help="this node's name (default: the host name)")
    parser.add_argument("--listen", default="127.0.0.1:10250", help="address of the kubelet's own gRPC API")
    parser.add_argument("--root-dir", default="/var/lib/kybernetes/kubelet", help="where pod volumes and state live")
    parser.add_argument("--manifest-path", default=None, help="a static pod manifest file or a directory of them")
    parser.add_argument("--file-check-frequency", type=duration, default=20.0, help="manifest path re-read period")
    parser.add_argument("--manifest-url", default=None, help="a URL serving static pod manifests")
    parser.add_argument("--http-check-frequency", type=duration, default=20.0, help="manifest URL fetch period")
    parser.add_argument("--node-status-frequency", type=duration, default=10.0,
                        help="how often the node's status is computed (and posted if it changed); the node Lease is "
                        "renewed this often too, or every quarter of its duration when that is sooner (default 10s)")
    parser.add_argument("--node-status-report-frequency", type=duration, default=300.0,
                        help="the node's status is posted at least this often even when it did not change "
                        "(default 5m, Kubernetes'); its Lease is the heartbeat")
    parser.add_argument("--node-lease-duration-seconds", type=positive_int, default=40,
                        help="the node Lease's leaseDurationSeconds (default %(default)s)")
    parser.add_argument("--sync-frequency", type=duration, default=10.0,
                        help="period of the full resync with Docker (events do the rest)")
    parser.add_argument("--pause-image", default="kybernetes/pause:latest", help="the pods' infra container image")
    parser.add_argument("--restart-backoff-initial", type=duration, default=10.0,
                        help="delay of the second restart of a crashing container (the first is at once)")
    parser.add_argument("--restart-backoff-max", type=duration, default=300.0, help="cap of the restart back-off")
    parser.add_argument("--docker-concurrency", type=positive_int, default=4, help="Docker calls in flight at most")
    parser.add_argument(
        "--node-ip", default="127.0.0.1", help="the node's address: reported, pods' hostIP and hostPorts"
    )
    parser.add_argument(
        "--docker-host", default=None, help="Docker daemon URL (default: $DOCKER_HOST or the local socket)"
    )
    parser.add_argument("--seccomp-default", action="store_true",
                        help="run every container under Docker's default seccomp profile "
                             "(default: Unconfined, as Kubernetes does unless this is set)")
    parser.add_argument("--network-plugin", choices=("kubenet", "docker"), default="kubenet",
                        help="kubenet: the kubelet wires each pod into its bridge (default); "
                             "docker: Docker's bridge networking for every pod")
    parser.add_argument("--pod-cidr", default=None,
                        help="kubenet: the pods' addresses. With an API server the default is the Node's "
                             "spec.podCIDR (set by the range allocator; the kubelet waits for it); given, it is used "
                             f"instead (kubelets sharing one bridge and pool). Without one: {DEFAULT_POD_CIDR}")
    parser.add_argument("--non-masquerade-cidr", default=DEFAULT_CLUSTER_CIDR,
                        help="kubenet: pod traffic to this range keeps the pod's address (the cluster's pod range); "
                             "the rest leaves masqueraded as the node (default %(default)s)")
    parser.add_argument("--pod-bridge", default=DEFAULT_BRIDGE, help="kubenet: the node's bridge (default %(default)s)")
    parser.add_argument("--network-state-dir", default=DEFAULT_STATE_DIR,
                        help="kubenet: the host's address pool, shared by its kubelets (default %(default)s)")
    parser.add_argument("--cluster-dns", type=ip_list, default=(),
                        help="comma-separated DNS server IPs for ClusterFirst pods (default: none, and such pods "
                             "get the node's resolv.conf)")
    parser.add_argument("--cluster-domain", default=DEFAULT_CLUSTER_DOMAIN,
                        help="the cluster's DNS domain, in pods' search list (default %(default)s)")
    parser.add_argument("--resolv-conf", default=DEFAULT_HOST_RESOLV_CONF,
                        help="the node's resolver configuration, for Default pods and ClusterFirst search paths "
                             "(default %(default)s)")
    args = parser.parse_args(argv)
    try:
        PodNetwork(args.node_name, args.pod_cidr, args.pod_bridge, args.network_state_dir, args.non_masquerade_cidr)
    except PodNetworkError as error:
        parser.error(str(error))
    if args.restart_backoff_max < args.restart_backoff_initial:
        parser.error("--restart-backoff-max must be at least --restart-backoff-initial")
    for flag in ("file_check_frequency", "http_check_frequency", "node_status_frequency",
                 "node_status_report_frequency", "sync_frequency"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    bootstrap_plan = None
    if args.bootstrap_kubeconfig:
        if not args.server:
            parser.error("--bootstrap-kubeconfig needs --server: the API server's client-certificate address")
        cert_dir = Path(args.cert_dir or Path(args.root_dir) / "pki")
        bootstrap_plan = BootstrapPlan(
            Path(args.bootstrap_kubeconfig), Path(args.kubeconfig or cert_dir / "kubelet.conf"), cert_dir, args.server
        )
    serving = None if bootstrap_plan is not None else serving_from_args(parser, args)
    access = None
    if bootstrap_plan is None and not args.insecure_dev and (args.kubeconfig or args.server):
        try:
            # Only an explicit --kubeconfig (or --server with $KYBERNETES_CONFIG) puts the
            # kubelet in API mode: without either it runs its static pods alone.
            access = cluster_access(args.kubeconfig, args.server)
        except KubeconfigError as error:
            parser.error(f"--kubeconfig: {error}")
        if access.credentials is None:
            parser.error("--kubeconfig: the API server is reached over TLS: the kubeconfig needs its CA "
                         "and this node's client certificate (or --insecure-dev)")
    return KubeletConfig(
        node_name=args.node_name,
        server=access.server if access is not None else args.server,
        access=access,
        serving=serving,
        bootstrap=bootstrap_plan,
        listen=args.listen,
        root_dir=args.root_dir,
        manifest_path=args.manifest_path,
        file_check_frequency=args.file_check_frequency,
        manifest_url=args.manifest_url,
        http_check_frequency=args.http_check_frequency,
        node_status_frequency=args.node_status_frequency,
        node_status_report_frequency=args.node_status_report_frequency,
        node_lease_duration_seconds=args.node_lease_duration_seconds,
        sync_frequency=args.sync_frequency,
        pause_image=args.pause_image,
        restart_backoff_initial=args.restart_backoff_initial,
        restart_backoff_max=args.restart_backoff_max,
        docker_concurrency=args.docker_concurrency,
        node_ip=args.node_ip,
        docker_host=args.docker_host,
        seccomp_default=args.seccomp_default,
        network_plugin=args.network_plugin,
        pod_cidr=args.pod_cidr,
        non_masquerade_cidr=args.non_masquerade_cidr,
        pod_bridge=args.pod_bridge,
        network_state_dir=args.network_state_dir,
        cluster_dns=args.cluster_dns,
        cluster_domain=args.cluster_domain.strip("."),
        resolv_conf=args.resolv_conf,
    )


async def run(config: KubeletConfig) -> int:
    log = configure_logging("kubelet").bind(node=config.node_name)
    if config.bootstrap is not None:
        try:
            config.access, config.serving = await bootstrap(config.bootstrap, config.node_name, config.node_ip)
        except (BootstrapError, kubeconfig.KubeconfigError) as error:
            log.error("kubelet_bootstrap_failed", error=str(error))
            return 1
        config.server = config.access.server
    kubelet = Kubelet(config)
    try:
        await kubelet.start()
    except Exception as error:
        log.error("kubelet_start_failed", error=str(error))
        await kubelet.stop()
        return 1
    log.info(
        "kubelet_started", listen=config.listen, server=config.server or "none", root_dir=config.root_dir,
        tls=config.serving is not None, user=config.access.user if config.access is not None else None,
    )
    stop = stop_on_signals()
    await stop.wait()
    log.info("kubelet_stopping")
    await kubelet.stop()
    return 0


def main(argv: list[str] | None = None) -> None:
    run_service(run(parse_args(argv)))


if __name__ == "__main__":
    main()
