"""kube-proxy: serves each service's cluster IP and node port on this node, forwarding to its endpoints.

Three data paths (`--proxy-mode`), the same behaviour to a client (cluster IPs,
node ports on --node-ip, refusals for no endpoints and for the rest of
--service-cluster-ip-range): `nftables` programs an nftables table of the
proxy's own (nftables.py); `iptables`, a fallback for kernels without
nftables, chains of its own (iptables.py); `userspace` relays every service
port through a listener on --bind-address, where an nftables table of portals
sends the cluster IPs and node ports (userspace.py). `--cleanup` deletes this
node's table and chains, whichever mode made them, and the pod routes, and exits.

With `--pod-routes` (the default) the proxy also routes every other node's pod
range via that node's address (flannel's host-gw; routes.py), from a watch of Nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket

from services.common.client import client_from_args
from services.common.transport import add_serving_flags, serving_from_args
from services.common.flags import add_api_client_flags, duration, positive_duration
from services.common.log import configure_logging
from services.common.resources import ENDPOINTS, NODES, SERVICES
from services.common.runtime import TaskFailed, TaskGroup
from services.common.runtime.informer import Informer
from services.common.servicemain import run_service, run_until_signalled

from . import iptables, iptproxier, nftables
from .balancer import DEFAULT_AFFINITY_TIMEOUT
from .datapath import MODES, DataPath
from .iptproxier import IptablesOptions, IptablesProxier
from .nftproxier import NftOptions, NftProxier, cleanup
from .proxier import ProxyOptions
from .routes import ROUTE_PROTOCOL, PodRoutes, RouteApplier
from .status import StatusServer
from .syncrunner import SyncError
from .userspace import UserspaceProxier

DEFAULT_STATUS_LISTEN = "127.0.0.1:10249"
DEFAULT_PROXY_MODE = "nftables"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kube-proxy", description=__doc__)
    add_api_client_flags(parser)
    parser.add_argument(
        "--proxy-mode", choices=MODES, default=DEFAULT_PROXY_MODE,
        help="nftables: cluster IPs and node ports in an nftables table; iptables: the same in iptables "
        "chains (kernels without nftables); userspace: a relay on --bind-address, reached through an nftables "
        "table of portals (default %(default)s)",
    )
    parser.add_argument(
        "--cleanup", action="store_true",
        help="delete this node's nftables table and iptables chains (any mode's) and the pod routes, and exit",
    )
    parser.add_argument(
        "--pod-routes", action=argparse.BooleanOptionalAction, default=True,
        help="route every other node's spec.podCIDR via its InternalIP (host-gw), kept in step with a watch of "
        f"Nodes; routes are marked with protocol {ROUTE_PROTOCOL} and left in place when the proxy stops. Inert when "
        "no other node's InternalIP is on a network of this host (e.g. every node on a loopback address) "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--bind-address", default="127.0.0.1",
        help="userspace mode: the address of the relay's listeners, a local port per service port, where the "
        "portals send clients (default %(default)s: reachable only through them)",
    )
    parser.add_argument("--node-name", default=socket.gethostname(), help="this node's name (default: the host name)")
    parser.add_argument(
        "--node-ip", default="127.0.0.1",
        help="the node's address, where node ports answer (default %(default)s, as the kubelet's)",
    )
    parser.add_argument(
        "--service-cluster-ip-range", default=nftables.DEFAULT_SERVICE_CIDR,
        help="the cluster IP range; an address in it that no service has is refused "
        "(default %(default)s, as the API server's)",
    )
    parser.add_argument(
        "--min-sync-period", type=duration, default=0.05,
        help="least time between two transactions of kernel rules; changes meanwhile are batched "
        "(default %(default)ss)",
    )
    parser.add_argument(
        "--sync-period", type=positive_duration, default=30.0,
        help="how often to check that the kernel rules are still there (default %(default)ss)",
    )
    parser.add_argument(
        "--load-balance", choices=(nftables.BALANCE_RANDOM, nftables.BALANCE_ROUND_ROBIN),
        default=nftables.BALANCE_RANDOM,
        help="nftables and iptables modes: how a connection picks an endpoint (default %(default)s, as "
        "Kubernetes; the userspace relay goes round robin)",
    )
    parser.add_argument(
        "--status-listen", default=DEFAULT_STATUS_LISTEN,
        help="gRPC address of the proxy's Status service (default %(default)s)",
    )
    parser.add_argument(
        "--connect-timeout", type=positive_duration, default=3.0,
        help="seconds to wait for a backend to accept before trying the next (default %(default)s)",
    )
    parser.add_argument(
        "--udp-idle-timeout", type=positive_duration, default=30.0,
        help="seconds a UDP client session lives without traffic (default %(default)s)",
    )
    parser.add_argument(
        "--session-affinity-timeout", type=positive_duration,
        default=DEFAULT_AFFINITY_TIMEOUT,
        help="seconds a ClientIP affinity lasts without connections (default %(default)s, as Kubernetes)",
    )
    parser.add_argument(
        "--bind-retry-max", type=positive_duration, default=30.0,
        help="longest pause between attempts to listen on a port that is taken (default %(default)s)",
    )
    parser.add_argument(
        "--shutdown-grace", type=positive_duration, default=5.0,
        help="seconds open connections get to finish on SIGTERM (default %(default)s)",
    )
    parser.add_argument(
        "--no-splice", action="store_true",
        help="copy bulk streams through user space instead of splicing them in the kernel",
    )
    add_serving_flags(parser, what="the proxy's Status service")
    parser.add_argument("--insecure-dev", action="store_true",
                        help="a plaintext Status service: development only")
    args = parser.parse_args(argv)
    # --cleanup serves nothing: it needs no certificate.
    args.serving = None if args.cleanup else serving_from_args(parser, args)
    try:
        ipaddress.IPv4Network(args.service_cluster_ip_range)
    except ValueError as error:
        parser.error(f"--service-cluster-ip-range: {error} (an IPv4 network such as 10.96.0.0/12)")
    for flag, value in (("--node-ip", args.node_ip), ("--bind-address", args.bind_address)):
        try:
            ipaddress.IPv4Address(value)
        except ValueError as error:
            parser.error(f"{flag}: {error} (an IPv4 address)")
    return args


def make_data_path(args: argparse.Namespace) -> DataPath:
    common: dict = dict(
        node_name=args.node_name,
        service_cidr=args.service_cluster_ip_range,
        node_ips=(args.node_ip,),
        balance=args.load_balance,
        affinity_timeout=args.session_affinity_timeout,
        min_sync_period=args.min_sync_period,
        sync_period=args.sync_period,
    )
    if args.proxy_mode == "nftables":
        return NftProxier(NftOptions(**common))
    if args.proxy_mode == "iptables":
        return IptablesProxier(IptablesOptions(**common))
    relay = ProxyOptions(
        bind_address=args.bind_address,
        connect_timeout=args.connect_timeout,
        udp_idle_timeout=args.udp_idle_timeout,
        affinity_timeout=args.session_affinity_timeout,
        bind_retry_max=args.bind_retry_max,
        use_splice=not args.no_splice,
    )
    return UserspaceProxier(relay, NftOptions(**common))


async def clean_up(args: argparse.Namespace) -> int:
    """Deletes the node's nftables table (nftables and userspace modes) and iptables chains."""
    log = configure_logging("kube-proxy").bind(node=args.node_name)
    table = nftables.table_name(args.node_name)
    chains = f"{iptables.PREFIX}*-{iptables.node_tag(args.node_name)}"
    failed = False
    try:
        await cleanup(table)
    except SyncError as error:
        failed = True
        log.error("cleanup_failed", table=f"ip {table}", error=str(error))
    routes = RouteApplier()
    routes_removed = 0
    if routes.available():
        try:
            routes_removed = await routes.remove_all()
        except SyncError as error:
            failed = True
            log.error("cleanup_failed", routes=f"proto {ROUTE_PROTOCOL}", error=str(error))
    else:
        log.info("cleanup_routes_skipped", reason="ip (iproute2) not installed")
    removed = 0
    if iptproxier.available():
        try:
            removed = await iptproxier.cleanup_chains(args.node_name)
        except SyncError as error:
            failed = True
            log.error("cleanup_failed", chains=chains, error=str(error))
    else:
        log.info("cleanup_iptables_skipped", reason="iptables-restore or iptables-save not installed")
    if failed:
        return 1
    log.info("cleanup_done", table=f"ip {table}", chains=chains, iptables_chains_removed=removed,
             pod_routes_removed=routes_removed)
    return 0


async def serve(args: argparse.Namespace) -> int:
    log = configure_logging("kube-proxy").bind(node=args.node_name)
    proxier = make_data_path(args)
    status = StatusServer(proxier, args.node_name, args.serving)
    try:
        await status.start(args.status_listen)
    except OSError as error:
        log.error("status_listen_failed", error=str(error))
        return 1

    client = client_from_args(args, timeout=30.0)
    endpoints_informer = Informer(client, ENDPOINTS)
    services_informer = Informer(client, SERVICES)
    endpoints_informer.add_handler(proxier.on_endpoints_event)
    services_informer.add_handler(proxier.on_service_event)

    async def run_services() -> None:
        # Services start after the endpoints snapshot, so each service opens
        # with its backends instead of with none for a moment.
        await endpoints_informer.wait_synced()
        await services_informer.run()

    async def report_synced() -> None:
        await asyncio.gather(endpoints_informer.wait_synced(), services_informer.wait_synced())
        proxier.mark_synced()

    # A watch the API server rejects leaves the proxy blind: exit so a supervisor notices.
    # So does a data path that stops: its rules would go stale.
    tasks = TaskGroup("kube-proxy")
    tasks.guard(endpoints_informer.run, name="informer-endpoints", fatal=True)
    tasks.guard(run_services, name="informer-services", fatal=True)
    tasks.guard(proxier.run, name=f"data-path-{proxier.mode}", fatal=True)
    tasks.spawn(report_synced(), name="report-synced")
    if args.pod_routes:
        # Routes that fail to apply are retried, never fatal: the services work without them.
        nodes_informer = Informer(client, NODES)
        pod_routes = PodRoutes(nodes_informer, args.node_name, RouteApplier(), resync_period=args.sync_period)
        tasks.guard(nodes_informer.run, name="informer-nodes", fatal=True)
        tasks.guard(pod_routes.run, name="pod-routes")
    started: dict = dict(
        mode=proxier.mode, server=client.server, node_ip=args.node_ip,
        service_cluster_ip_range=args.service_cluster_ip_range, status_listen=args.status_listen,
        pod_routes=f"proto {ROUTE_PROTOCOL}" if args.pod_routes else "off",
    )
    if isinstance(proxier, NftProxier):
        started.update(table=f"ip {proxier.table}")
    elif isinstance(proxier, IptablesProxier):
        started.update(chains=f"{iptables.PREFIX}*-{proxier.tag}")
    elif isinstance(proxier, UserspaceProxier):
        started.update(table=f"ip {proxier.table}", bind_address=args.bind_address,
                       data_path="copy" if args.no_splice else "splice")
    log.info("proxy_started", **started)
    try:
        exit_code = await run_until_signalled(tasks.wait(), name="kube-proxy")
    except TaskFailed as failure:
        log.error("proxy_task_stopped", error=str(failure))
        exit_code = 1
    log.info("proxy_stopping", open_connections=proxier.active_connections())
    await tasks.close()
    await proxier.shutdown(args.shutdown_grace)
    await status.stop(grace=1.0)
    await client.close()
    log.info("proxy_stopped")
    return exit_code


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_service(clean_up(args) if args.cleanup else serve(args))


if __name__ == "__main__":
    main()
