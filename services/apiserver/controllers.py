"""The controllers that run inside the API server process, as clients of its API.

`kube-apiserver --controllers=scheduler,endpoints,nodelifecycle,nodeipam` (the
default) starts them over loopback gRPC. To run them on their own instead (e.g. one
scheduler for several API servers), turn them off there (`--controllers=`) and
start them here: `python -m services.apiserver.controllers --server ADDR
--controllers scheduler`. The flags are the same in both places.

Where several run (one per API server, or standalone copies), they elect a leader
through the Lease `kube-system/kube-controller-manager` (`--leader-elect`, on by
default, as kube-controller-manager's): only the holder runs the controllers; the
others wait to take over. The election runs beside the API server, never in its way:
the server serves whether or not its controllers lead.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Callable

from services.common.client import ApiClient, cluster_access
from services.common.events import EventRecorder
from services.common.kubeconfig import ClusterAccess, KubeconfigError
from services.common.flags import add_api_client_flags, boolean, positive_duration, positive_int
from services.common.log import configure_logging, get_logger
from services.common.runtime import Controller, Manager
from services.common.runtime.leaderelection import (
    LeaderElector,
    add_leader_election_flags,
    check_leader_election_flags,
    leader_election_config,
)
from services.common.servicemain import run_service, run_until_signalled

from .endpoints_controller import EndpointsController
from .nodeipam import DEFAULT_CLUSTER_CIDR, DEFAULT_NODE_CIDR_MASK_SIZE, ClusterRanges, NodeIpamController
from .nodelifecycle import DEFAULT_EVICTION_TIMEOUT, DEFAULT_GRACE_PERIOD, NodeLifecycleController
from .scheduler.scheduler import DEFAULT_BIND_CONCURRENCY, Scheduler

log = get_logger()


def _option(args: argparse.Namespace, name: str, default: float) -> float:
    # Tolerates a namespace built without these flags (e.g. by a test).
    return getattr(args, name, default)


def _scheduler(args: argparse.Namespace, recorder: EventRecorder) -> Controller:
    return Scheduler(
        bind_concurrency=int(_option(args, "scheduler_bind_concurrency", DEFAULT_BIND_CONCURRENCY)),
        recorder=recorder.for_component("default-scheduler"),
    )


def _endpoints(args: argparse.Namespace, recorder: EventRecorder) -> Controller:
    return EndpointsController()


def _nodelifecycle(args: argparse.Namespace, recorder: EventRecorder) -> Controller:
    return NodeLifecycleController(
        grace_period=_option(args, "node_monitor_grace_period", DEFAULT_GRACE_PERIOD),
        eviction_timeout=_option(args, "pod_eviction_timeout", DEFAULT_EVICTION_TIMEOUT),
        recorder=recorder.for_component("node-controller"),
    )


def _nodeipam(args: argparse.Namespace, recorder: EventRecorder) -> Controller:
    return NodeIpamController(
        cluster_cidr=getattr(args, "cluster_cidr", DEFAULT_CLUSTER_CIDR),
        node_cidr_mask_size=getattr(args, "node_cidr_mask_size", DEFAULT_NODE_CIDR_MASK_SIZE),
    )


# name -> factory(args, recorder): every controller this package can run.
CONTROLLERS: dict[str, Callable[[argparse.Namespace, EventRecorder], Controller]] = {
    "scheduler": _scheduler,
    "endpoints": _endpoints,
    "nodelifecycle": _nodelifecycle,
    "nodeipam": _nodeipam,
}


# The lease the controllers elect their leader with (kube-controller-manager's).
LEASE_NAME = "kube-controller-manager"


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
    parser.add_argument(
        "--allocate-node-cidrs",
        type=boolean,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="the nodeipam controller gives each Node a pod range (spec.podCIDR) from --cluster-cidr; "
        "false leaves podCIDRs to whoever registers the Nodes (default %(default)s)",
    )
    parser.add_argument(
        "--cluster-cidr",
        default=DEFAULT_CLUSTER_CIDR,
        metavar="CIDR",
        help="the pods' addresses: every Node's podCIDR is cut from it; must not overlap "
        "--service-cluster-ip-range (default %(default)s)",
    )
    parser.add_argument(
        "--node-cidr-mask-size",
        type=positive_int,
        default=DEFAULT_NODE_CIDR_MASK_SIZE,
        metavar="BITS",
        help="prefix length of each Node's podCIDR (default %(default)s: 254 pod addresses per node)",
    )
    add_leader_election_flags(parser, default_name=LEASE_NAME)


def check_controller_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ClusterRanges:
    """Checks what one flag cannot check alone, so that a bad pair stops the process at once."""
    check_leader_election_flags(parser, args)
    try:
        return ClusterRanges.parse(args.cluster_cidr, args.node_cidr_mask_size)
    except ValueError as error:
        parser.error(str(error))


def _enabled(names: list[str], args: argparse.Namespace) -> list[str]:
    # As Kubernetes' controller manager: nodeipam runs only with --allocate-node-cidrs.
    if "nodeipam" in names and not getattr(args, "allocate_node_cidrs", True):
        log.info("controller_disabled", controller="nodeipam", reason="--allocate-node-cidrs=false")
        return [name for name in names if name != "nodeipam"]
    return names


async def run(names: list[str], access: ClusterAccess, args: argparse.Namespace) -> None:
    """Runs the named controllers on one manager (one informer per kind for all of them) until
    cancelled; with leader election, only while this copy holds the lease (a new manager, with
    fresh informers and controllers, each time it leads again)."""
    names = _enabled(names, args)
    if not names:
        return
    client = ApiClient.for_access(access, timeout=30.0)
    # One event recorder for the process; each controller records as its own component.
    recorder = EventRecorder(client, "kube-controller-manager")

    async def lead() -> None:
        manager = Manager(client, name="controllers")
        for name in names:
            manager.add(CONTROLLERS[name](args, recorder))
        recorder.start()
        await manager.run()

    # A namespace built without the election flags (e.g. by a test) runs as a lone copy.
    election = leader_election_config(args) if hasattr(args, "leader_elect") else None
    try:
        if election is None:
            await lead()
        else:
            await LeaderElector(client, election).run_forever(lead)
    finally:
        await recorder.close()
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
    args = parser.parse_args(argv)
    check_controller_flags(parser, args)
    return args


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
