"""kube-replicator: keeps every replication controller's pods at spec.replicas, through the API.

Several copies may run: they elect a leader through the Lease kube-system/kube-replicator
(--leader-elect, on by default) and only the leader acts."""

from __future__ import annotations

import argparse

from services.common.client import client_from_args
from services.common.events import EventRecorder
from services.common.flags import add_api_client_flags, positive_duration, positive_int
from services.common.log import configure_logging
from services.common.runtime import Manager
from services.common.runtime.leaderelection import (
    LeaderElector,
    add_leader_election_flags,
    check_leader_election_flags,
    leader_election_config,
)
from services.common.servicemain import run_service, run_until_signalled

from .expectations import DEFAULT_TIMEOUT
from .manager import DEFAULT_CONCURRENCY, DEFAULT_RESYNC_PERIOD, DEFAULT_WORKERS, ReplicationManager

# The lease the replicators elect their leader with.
LEASE_NAME = "kube-replicator"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kube-replicator", description=__doc__)
    add_api_client_flags(parser)
    parser.add_argument(
        "--workers", type=positive_int, default=DEFAULT_WORKERS,
        help="controllers synced at once (default %(default)s)",
    )
    parser.add_argument(
        "--concurrency", type=positive_int, default=DEFAULT_CONCURRENCY,
        help="pod creates/deletes in flight across all controllers (default %(default)s)",
    )
    parser.add_argument(
        "--resync-period", type=positive_duration, default=DEFAULT_RESYNC_PERIOD, metavar="SECONDS",
        help="every controller is synced again this often, as a safety net (default %(default)s)",
    )
    parser.add_argument(
        "--expectations-timeout", type=positive_duration, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help="how long to wait for the watch to show our own creates/deletes before acting again "
        "(default %(default)s)",
    )
    add_leader_election_flags(parser, default_name=LEASE_NAME)
    args = parser.parse_args(argv)
    check_leader_election_flags(parser, args)
    return args


async def serve(args: argparse.Namespace) -> int:
    log = configure_logging("replicator")
    client = client_from_args(args, timeout=30.0)
    # Kubernetes' component name for these events.
    recorder = EventRecorder(client, "replication-controller")
    # One per term as leader: a new term starts from fresh informers and expectations.
    terms: list[ReplicationManager] = []

    async def lead() -> None:
        replicator = ReplicationManager(
            workers=args.workers,
            concurrency=args.concurrency,
            resync_period=args.resync_period,
            expectations_timeout=args.expectations_timeout,
            recorder=recorder,
        )
        terms.append(replicator)
        manager = Manager(client, name="replicator")
        manager.add(replicator)
        await manager.run()

    election = leader_election_config(args)
    main = lead() if election is None else LeaderElector(client, election).run_forever(lead)
    log.info("replicator_starting", server=client.server, leader_elect=election is not None)
    recorder.start()
    try:
        code = await run_until_signalled(main, name="replicator")
    finally:
        await recorder.close()
        await client.close()
    log.info(
        "replicator_stopped",
        created=sum(term.created for term in terms),
        deleted=sum(term.deleted for term in terms),
    )
    return code


def main(argv: list[str] | None = None) -> None:
    run_service(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
