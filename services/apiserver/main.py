"""kube-apiserver: the API over etcd, plus the scheduler and controllers by default."""

from __future__ import annotations

import argparse
import asyncio

from services.common.log import configure_logging
from services.common.servicemain import run_service, stop_on_signals

from .controllers import add_controller_flags
from .ipallocator import (
    DEFAULT_SERVICE_CLUSTER_IP_RANGE,
    DEFAULT_SERVICE_NODE_PORT_RANGE,
    NodePortRange,
    RangeError,
    ServiceIPRange,
)
from .server import ApiServer

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_CONTROLLERS = "scheduler,endpoints,nodelifecycle"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kube-apiserver", description=__doc__)
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="gRPC address (default %(default)s)")
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
        "--watch-queue", type=int, default=10_000, help="events a watcher may fall behind before it is cut off"
    )
    parser.add_argument("--bookmark-interval", type=float, default=5.0, help="seconds between idle watch bookmarks")
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
    args = parser.parse_args(argv)
    # Checked now, so that a bad range stops the server with a usage error before it starts.
    try:
        ServiceIPRange.parse(args.service_cluster_ip_range)
        NodePortRange.parse(args.service_node_port_range)
    except RangeError as error:
        parser.error(str(error))
    return args


async def serve(args: argparse.Namespace) -> int:
    log = configure_logging("apiserver")
    server = ApiServer(
        [e.strip() for e in args.etcd_servers.split(",") if e.strip()],
        watch_history=args.watch_history,
        watcher_capacity=args.watch_queue,
        bookmark_interval=args.bookmark_interval,
        log_requests=not args.no_request_log,
        service_cluster_ip_range=args.service_cluster_ip_range,
        service_node_port_range=args.service_node_port_range,
    )
    stop = stop_on_signals()
    port = await server.start(args.listen)
    controllers = await start_controllers(args, port)
    log.info("apiserver_serving", listen=args.listen, etcd=server.storage.target, controllers=args.controllers or None)
    await stop.wait()
    log.info("apiserver_stopping")
    for task in controllers:
        task.cancel()
    await asyncio.gather(*controllers, return_exceptions=True)
    await server.stop(args.shutdown_grace)
    log.info("apiserver_stopped")
    return 0


async def start_controllers(args: argparse.Namespace, port: int) -> list[asyncio.Task]:
    """Runs the in-process controllers as clients of this server's own API."""
    names = [n.strip() for n in args.controllers.split(",") if n.strip()]
    if not names:
        return []
    from . import controllers

    return await controllers.start(names, f"127.0.0.1:{port}", args)


def main(argv: list[str] | None = None) -> None:
    run_service(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
