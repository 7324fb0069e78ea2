"""kube-proxy: forwards each service's port on this node to the service's endpoints, round robin."""

from __future__ import annotations

import argparse
import socket

from services.common.client import ApiClient, resolve_server
from services.common.flags import positive_duration
from services.common.log import configure_logging
from services.common.resources import ENDPOINTS, SERVICES
from services.common.runtime import TaskFailed, TaskGroup
from services.common.runtime.informer import Informer
from services.common.servicemain import run_service, run_until_signalled

from .balancer import DEFAULT_AFFINITY_TIMEOUT
from .proxier import Proxier, ProxyOptions
from .status import StatusServer

DEFAULT_STATUS_LISTEN = "127.0.0.1:10249"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kube-proxy", description=__doc__)
    parser.add_argument(
        "--server", default=None,
        help="API server address (default: $KYBERNETES_SERVER, else 127.0.0.1:8080)",
    )
    parser.add_argument(
        "--bind-address", default="0.0.0.0", help="address the service ports listen on (default %(default)s)"
    )
    parser.add_argument("--node-name", default=socket.gethostname(), help="this node's name (default: the host name)")
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
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    log = configure_logging("kube-proxy").bind(node=args.node_name)
    proxier = Proxier(
        ProxyOptions(
            bind_address=args.bind_address,
            connect_timeout=args.connect_timeout,
            udp_idle_timeout=args.udp_idle_timeout,
            affinity_timeout=args.session_affinity_timeout,
            bind_retry_max=args.bind_retry_max,
            use_splice=not args.no_splice,
        )
    )
    status = StatusServer(proxier, args.node_name)
    try:
        await status.start(args.status_listen)
    except OSError as error:
        log.error("status_listen_failed", error=str(error))
        return 1

    client = ApiClient(resolve_server(args.server), timeout=30.0)
    endpoints_informer = Informer(client, ENDPOINTS)
    services_informer = Informer(client, SERVICES)
    endpoints_informer.add_handler(proxier.on_endpoints_event)
    services_informer.add_handler(proxier.on_service_event)

    async def run_services() -> None:
        # Services start after the endpoints snapshot, so each service opens
        # with its backends instead of with none for a moment.
        await endpoints_informer.wait_synced()
        await services_informer.run()

    # A watch the API server rejects leaves the proxy blind: exit so a supervisor notices.
    tasks = TaskGroup("kube-proxy")
    tasks.guard(endpoints_informer.run, name="informer-endpoints", fatal=True)
    tasks.guard(run_services, name="informer-services", fatal=True)
    log.info(
        "proxy_started", server=client.server, bind_address=args.bind_address,
        status_listen=args.status_listen, data_path="copy" if args.no_splice else "splice",
    )
    try:
        exit_code = await run_until_signalled(tasks.wait(), name="kube-proxy")
    except TaskFailed as failure:
        log.error("informer_stopped", error=str(failure))
        exit_code = 1
    log.info("proxy_stopping", open_connections=proxier.active_connections())
    await tasks.close()
    await proxier.shutdown(args.shutdown_grace)
    await status.stop(grace=1.0)
    await client.close()
    log.info("proxy_stopped")
    return exit_code


def main(argv: list[str] | None = None) -> None:
    run_service(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
