"""kube-apiserver: the API over etcd, plus the scheduler and controllers by default."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from services.common import kubeconfig
from services.common.kubeconfig import ClusterAccess
from services.common.flags import positive_duration, positive_int
from services.common.log import configure_logging
from services.common.pki import CertificateAuthority
from services.common.transport import ClientCredentials, add_serving_flags, serving_from_args
from services.common.servicemain import run_service, stop_on_signals

from .controllers import add_controller_flags, check_controller_flags
from .ipallocator import (
    DEFAULT_SERVICE_CLUSTER_IP_RANGE,
    DEFAULT_SERVICE_NODE_PORT_RANGE,
    NodePortRange,
    RangeError,
    ServiceIPRange,
)
from .auth.authenticate import Authenticator
from .auth.replicaslimit import DEFAULT_MAX_REPLICAS
from .server import ApiServer, listen_addresses
from .strategies import DEFAULT_EVENT_TTL
from .watchcache import DEFAULT_BOOKMARK_INTERVAL, DEFAULT_HISTORY_AGE, DEFAULT_HISTORY_BYTES

if TYPE_CHECKING:
    from .rest.server import RestServer

DEFAULT_LISTEN = "127.0.0.1:6443"
# Every call a gRPC server answers leaves a reference cycle (grpc.aio's method lookup: its
# coroutine's scope and the closure that holds it, with the call's metadata, ~0.9 KiB), which
# only a collection frees. At the services' young threshold (GC_THRESHOLDS: 50,000) the cycles
# of up to ~10,000 calls wait at once, scattered among the watch cache's objects; the API server
# answers every component's calls, so it collects every 10,000. With bench.apimemory's load
# (30,000 pods through their three versions; three runs each, issue 16): RSS per pod 2.07-2.09x
# -> 1.84-1.85x the encoding, the same time spent collecting (0.4-0.7 s over the load) and
# shorter pauses (the longest young collection 82-89 -> 17-22 ms).
GC_THRESHOLDS = (10_000, 20, 100)
DEFAULT_CONTROLLERS = "scheduler,endpoints,nodelifecycle,nodeipam"
# The ports the components listen on by default (make up's), which node ports may not take.
COMPONENT_PORTS = {
    2379: "etcd",
    2380: "etcd's peers",
    6443: "the API server",
    6444: "the API server's token port",
    10249: "kube-proxy's status",
    10250: "the kubelet's API",
    10053: "kube-dns",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kube-apiserver", description=__doc__)
    parser.add_argument("--listen", default=DEFAULT_LISTEN,
                        help="gRPC address, or several comma-separated (default %(default)s)")
    parser.add_argument(
        "--etcd-servers",
        default="127.0.0.1:2379",
        help="comma-separated etcd client endpoints (default %(default)s)",
    )
    parser.add_argument(
        "--controllers",
        default=DEFAULT_CONTROLLERS,
        help="controllers to run in this process, comma-separated; empty for none (default %(default)s)",
    )
    parser.add_argument("--watch-history", type=int, default=20_000, help="events kept per kind for resuming watches")
    parser.add_argument(
        "--watch-history-bytes", type=positive_int, default=DEFAULT_HISTORY_BYTES, metavar="BYTES",
        help="and at most this many bytes of their objects per kind (default %(default)s)",
    )
    parser.add_argument(
        "--watch-history-age", type=positive_duration, default=DEFAULT_HISTORY_AGE, metavar="SECONDS",
        help="and only events this recent, but for each kind's last 100 (default %(default)s, Kubernetes' "
        "eventFreshDuration): a watch broken longer re-lists",
    )
    parser.add_argument(
        "--watch-queue", type=int, default=10_000, help="events a watcher may fall behind before it is cut off"
    )
    parser.add_argument("--bookmark-interval", type=float, default=DEFAULT_BOOKMARK_INTERVAL,
                        help="seconds between idle watch bookmarks (default %(default)s, Kubernetes' one minute: "
                        "each is a message to every idle watcher, thousands with a thousand nodes)")
    parser.add_argument(
        "--event-ttl", type=positive_duration, default=float(DEFAULT_EVENT_TTL), metavar="DURATION",
        help="how long an event is kept after its last write, e.g. 1h, 30m (default %(default)s seconds)",
    )
    parser.add_argument(
        "--shutdown-grace", type=float, default=5.0, help="seconds to finish in-flight calls on SIGTERM"
    )
    parser.add_argument("--no-request-log", action="store_true", help="do not log one line per request")
    parser.add_argument(
        "--service-cluster-ip-range",
        default=DEFAULT_SERVICE_CLUSTER_IP_RANGE,
        help="CIDR services' cluster IPs are allocated from; its first address is kept for the "
        "`kubernetes` service (default %(default)s)",
    )
    parser.add_argument(
        "--service-node-port-range",
        default=DEFAULT_SERVICE_NODE_PORT_RANGE,
        help="ports NodePort services' node ports are allocated from, FIRST-LAST inclusive (default %(default)s)",
    )
    add_controller_flags(parser)
    security = parser.add_argument_group("security (TLS, authentication, admission)")
    add_serving_flags(security, what="the API server")
    security.add_argument(
        "--token-listen",
        default="",
        metavar="HOST:PORT",
        help="a second TLS address (or several, comma-separated) that asks for no client certificate: bearer "
        "tokens, bootstrap tokens and anonymous health checks (grpcio cannot make a client certificate optional "
        "on one port)",
    )
    security.add_argument(
        "--rest-listen",
        default="",
        metavar="HOST:PORT",
        help="the Kubernetes REST API's address, or several comma-separated (kubectl, client libraries): "
        "TLS with an optional client "
        "certificate or a bearer token, the same authorization as gRPC; off when empty (default)",
    )
    security.add_argument(
        "--kubelet-client-certificate",
        default=None,
        metavar="FILE",
        help="the client certificate the REST API shows kubelets (pods/log); they are checked against "
        "--client-ca-file",
    )
    security.add_argument(
        "--kubelet-client-key", default=None, metavar="FILE", help="key of --kubelet-client-certificate"
    )
    security.add_argument(
        "--token-auth-file",
        default=None,
        metavar="FILE",
        help='static bearer tokens, CSV: token,user,uid[,"group1,group2"]',
    )
    security.add_argument(
        "--bootstrap-token-file",
        default=None,
        metavar="FILE",
        help="join tokens, one per line: <id>.<secret>[,<expiry RFC 3339>]; re-read when it changes",
    )
    security.add_argument(
        "--etcd-cafile", default=None, metavar="FILE", help="CA that etcd's serving certificate is signed by"
    )
    security.add_argument(
        "--etcd-certfile", default=None, metavar="FILE", help="client certificate the API server shows etcd"
    )
    security.add_argument("--etcd-keyfile", default=None, metavar="FILE", help="key of --etcd-certfile")
    security.add_argument(
        "--cluster-signing-cert-file",
        default=None,
        metavar="FILE",
        help="the cluster CA's certificate, to sign joining nodes' certificates",
    )
    security.add_argument(
        "--cluster-signing-key-file",
        default=None,
        metavar="FILE",
        help="the cluster CA's key (without it, Certificates.Sign is unavailable)",
    )
    security.add_argument(
        "--controllers-kubeconfig",
        default=None,
        metavar="FILE",
        help="kubeconfig the in-process controllers authenticate with (its server is ignored)",
    )
    security.add_argument(
        "--pod-security-default",
        choices=("privileged", "baseline", "restricted"),
        default="baseline",
        help="Pod Security level of namespaces without the enforce label (default %(default)s)",
    )
    security.add_argument(
        "--max-replicas",
        type=positive_int,
        default=DEFAULT_MAX_REPLICAS,
        metavar="N",
        help="the most pods one replication controller may ask for; more is RESOURCE_EXHAUSTED "
        "(default %(default)s)",
    )
    security.add_argument(
        "--insecure-dev",
        action="store_true",
        help="plaintext, no authentication or authorization: development only, never make up's",
    )
    args = parser.parse_args(argv)
    # Checked now, so that a bad range stops the server with a usage error before it starts.
    try:
        services = ServiceIPRange.parse(args.service_cluster_ip_range).network
        node_ports = NodePortRange.parse(args.service_node_port_range)
    except RangeError as error:
        parser.error(str(error))
    pods = check_controller_flags(parser, args).cluster
    # A pod address that is also a service address would be routed to a node and DNATed by every proxy.
    if args.allocate_node_cidrs and services.version == pods.version and services.overlaps(pods):
        parser.error(f"--cluster-cidr {pods} overlaps --service-cluster-ip-range {services}")
    # A node port is answered on every node's address: one that is also a component's port
    # would let a service take the kubelet's API, etcd or this server over on every node.
    reserved = dict(COMPONENT_PORTS)
    for flag, addresses in (
        ("--listen", args.listen), ("--token-listen", args.token_listen), ("--rest-listen", args.rest_listen)
    ):
        for address in listen_addresses(addresses):
            reserved[int(address.rpartition(":")[2])] = f"this API server's {flag}"
    clashes = [f"{port} ({what})" for port, what in sorted(reserved.items()) if node_ports.allows(port)]
    if clashes:
        parser.error(f"--service-node-port-range {node_ports} holds ports the cluster's components use: "
                     + ", ".join(clashes))
    args.serving = serving_from_args(parser, args)
    if args.serving is not None and args.controllers.strip() and not args.controllers_kubeconfig:
        parser.error("--controllers-kubeconfig is required for the in-process controllers (or --controllers=)")
    if bool(args.kubelet_client_certificate) != bool(args.kubelet_client_key):
        parser.error("--kubelet-client-certificate and --kubelet-client-key go together")
    etcd_tls = [args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile]
    if any(etcd_tls) and not all(etcd_tls):
        parser.error("--etcd-cafile, --etcd-certfile and --etcd-keyfile go together")
    return args


async def serve(args: argparse.Namespace) -> int:
    log = configure_logging("apiserver")
    server = ApiServer(
        [e.strip() for e in args.etcd_servers.split(",") if e.strip()],
        watch_history=args.watch_history,
        watch_history_bytes=args.watch_history_bytes,
        watch_history_age=args.watch_history_age,
        watcher_capacity=args.watch_queue,
        event_ttl=max(1, round(args.event_ttl)),
        bookmark_interval=args.bookmark_interval,
        log_requests=not args.no_request_log,
        service_cluster_ip_range=args.service_cluster_ip_range,
        service_node_port_range=args.service_node_port_range,
        serving=args.serving,
        authenticator=Authenticator(token_file=args.token_auth_file, bootstrap_token_file=args.bootstrap_token_file),
        pod_security_default=args.pod_security_default,
        max_replicas=args.max_replicas,
        # Without allocation, podCIDRs come from elsewhere: only overlap and immutability are checked.
        cluster_cidr=args.cluster_cidr if args.allocate_node_cidrs else None,
        node_cidr_mask_size=args.node_cidr_mask_size,
        etcd_credentials=(
            ClientCredentials.from_files(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile)
            if args.etcd_cafile
            else None
        ),
        signing_ca=(
            CertificateAuthority.from_files(args.cluster_signing_cert_file, args.cluster_signing_key_file)
            if args.cluster_signing_key_file
            else None
        ),
    )
    stop = stop_on_signals()
    # The REST layer (aiohttp and all) takes ~0.2 s to import: in a thread, over etcd's round
    # trips at start, so that it neither delays the gRPC API nor, once that serves, holds up
    # its answers (health checks included) while it imports.
    rest_class = asyncio.ensure_future(asyncio.to_thread(_import_rest_server)) if args.rest_listen else None
    port = await server.start(args.listen, args.token_listen or None)
    rest = None
    if rest_class is not None:
        rest = (await rest_class)(
            server.registries,
            authenticator=server.authenticator,
            authorizer=server.authorizer,
            serving=args.serving,
            log_requests=not args.no_request_log,
            shutdown_grace=args.shutdown_grace,
            kubelet_credentials=(
                ClientCredentials.from_files(args.client_ca_file, args.kubelet_client_certificate,
                                             args.kubelet_client_key)
                if args.serving is not None and args.client_ca_file and args.kubelet_client_certificate
                else None
            ),
        )
        await rest.start(args.rest_listen)
    controllers = await start_controllers(args, port)
    log.info(
        "apiserver_serving",
        listen=args.listen,
        token_listen=args.token_listen or None,
        rest_listen=args.rest_listen or None,
        tls=args.serving is not None,
        etcd=server.storage.target,
        controllers=args.controllers or None,
    )
    await stop.wait()
    log.info("apiserver_stopping")
    for task in controllers:
        task.cancel()
    await asyncio.gather(*controllers, return_exceptions=True)
    if rest is not None:  # first: its requests use the registries the gRPC server's stop closes
        await rest.stop()
    await server.stop(args.shutdown_grace)
    log.info("apiserver_stopped")
    return 0


def _import_rest_server() -> type[RestServer]:
    from .rest.server import RestServer

    return RestServer


async def start_controllers(args: argparse.Namespace, port: int) -> list[asyncio.Task]:
    """Runs the in-process controllers as clients of this server's own API."""
    names = [n.strip() for n in args.controllers.split(",") if n.strip()]
    if not names:
        return []
    from . import controllers

    address = f"127.0.0.1:{port}"
    if args.controllers_kubeconfig:
        access = kubeconfig.load(Path(args.controllers_kubeconfig))
        access = ClusterAccess(address, access.credentials, user=access.user)
    else:  # --insecure-dev
        access = ClusterAccess(address, None)
    return await controllers.start(names, access, args)


def main(argv: list[str] | None = None) -> None:
    run_service(serve(parse_args(argv)), gc_thresholds=GC_THRESHOLDS)


if __name__ == "__main__":
    main()
