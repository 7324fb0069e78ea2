"""The controllers that run inside the API server process, as clients of its API.

`kube-apiserver --controllers=scheduler,endpoints,nodelifecycle` (the default)
starts them over loopback gRPC. To run them on their own instead (e.g. one
scheduler for several API servers), turn them off there (`--controllers=`) and
start them here: `python -m services.apiserver.controllers --server ADDR
--controllers scheduler`. The flags are the same in both places.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Callable

from services.common.client import ApiClient, cluster_access
from services.common.kubeconfig import ClusterAccess, KubeconfigError
from services.common.flags import add_api_client_flags, positive_duration
from services.common.log import configure_logging, get_logger
from services.common.runtime import Controller, Manager
from services.common.servicemain import run_service, run_until_signalled

from .endpoints_controller import EndpointsController
from .nodelifecycle import DEFAULT_EVICTION_TIMEOUT, DEFAULT_GRACE_PERIOD, NodeLifecycleController
from .scheduler.scheduler import DEFAULT_BIND_CONCURRENCY, Scheduler

log = get_logger()


def _option(args: argparse.Namespace, name: str, default: float) -> float:
    # Tolerates a namespace built without these flags (e.g. by a test).
    return getattr(args, name, default)


def _scheduler(args: argparse.Namespace) -> Controller:
    return Scheduler(
        node_grace_period=_option(args, "node_monitor_grace_period", DEFAULT_GRACE_PERIOD),
        bind_concurrency=int(_option(args, "scheduler_bind_concurrency", DEFAULT_BIND_CONCURRENCY)),
    )


def _endpoints(args: argparse.Namespace) -> Controller:
    return EndpointsController()


def _nodelifecycle(args: argparse.Namespace) -> Controller:
    return NodeLifecycleController(
        grace_period=_option(args, "node_monitor_grace_period", DEFAULT_GRACE_PERIOD),
        eviction_timeout=_option(args, "pod_eviction_timeout", DEFAULT_EVICTION_TIMEOUT),
    )


# name -> factory(args): every controller this package can run.
CONTROLLERS: dict[str, Callable[[argparse.Namespace], Controller]] = {
    "scheduler": _scheduler,
    "endpoints": _endpoints,
    "nodelifecycle": _nodelifecycle,
}


def add_controller_flags(parser: argparse.ArgumentParser) -> None:
    """The controllers' tuning flags, shared by kube-apiserver and the standalone runner."""
    parser.add_argument(
        "--node-monitor-grace-period",
        type=positive_duration,
        default=DEFAULT_GRACE_PERIOD,
        metavar="SECONDS",
        help="a node whose last heartbeat is older than this is not ready (default %(default)s)",
    )
    parser.add_argument(
        "--pod-eviction-timeout",
        type=positive_duration,
        default=DEFAULT_EVICTION_TIMEOUT,
        metavar="SECONDS",
        help="pods of a node not ready for this long are deleted, to be recreated elsewhere (default %(default)s)",
    )
    parser.add_argument(
        "--scheduler-bind-concurrency",
        type=int,
        default=DEFAULT_BIND_CONCURRENCY,
        metavar="N",
        help="binds the scheduler keeps in flight (default %(default)s)",
    )


async def run(names: list[str], access: ClusterAccess, args: argparse.Namespace) -> None:
    """Runs the named controllers on one manager (one informer per kind for all of them) until cancelled."""
    client = ApiClient.for_access(access, timeout=30.0)
    manager = Manager(client, name="controllers")
    for name in names:
        manager.add(CONTROLLERS[name](args))
    try:
        await manager.run()
    finally:
        await client.close()


async def start(names: list[str], access: ClusterAccess, args: argparse.Namespace) -> list[asyncio.Task]:
    """Starts the known controllers among `names` in the background (unknown ones are logged)."""
    known = []
    for name in names:
        if name in CONTROLLERS:
            known.append(name)
        else:
            log.warning("controller_unavailable", controller=name, known=",".join(CONTROLLERS))
    if not known:
        return []
    return [asyncio.create_task(run(known, access, args), name="controllers")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.apiserver.controllers",
        description="Runs the API server's controllers on their own, against an API server.",
    )
    add_api_client_flags(parser)
    parser.add_argument(
        "--controllers",
        default=",".join(CONTROLLERS),
        help="controllers to run, comma-separated (default %(default)s)",
    )
    add_controller_flags(parser)
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> int:
    configure_logging("controllers")
    names = [n.strip() for n in args.controllers.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTROLLERS]
    if unknown:
        print(f"--controllers: unknown {', '.join(unknown)} (known: {', '.join(CONTROLLERS)})", file=sys.stderr)
        return 2
    try:
        access = cluster_access(args.kubeconfig, args.server)
    except KubeconfigError as error:
        print(f"--kubeconfig: {error}", file=sys.stderr)
        return 2
    log.info("controllers_starting", server=access.server, user=access.user, controllers=",".join(names))
    code = await run_until_signalled(run(names, access, args), name="controllers")
    log.info("controllers_stopped")
    return code


def main(argv: list[str] | None = None) -> None:
    run_service(_serve(parse_args(argv)))


if __name__ == "__main__":
    main()
