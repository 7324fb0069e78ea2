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
import signal
import sys
from typing import Awaitable, Callable

from services.common.client import resolve_server
from services.common.flags import positive_duration
from services.common.log import configure_logging, get_logger

from . import endpoints_controller, nodelifecycle, scheduler
from .nodelifecycle import DEFAULT_EVICTION_TIMEOUT, DEFAULT_GRACE_PERIOD
from .scheduler.scheduler import DEFAULT_BIND_CONCURRENCY

log = get_logger()

ControllerFactory = Callable[[str, argparse.Namespace], Awaitable[None]]


def _option(args: argparse.Namespace, name: str, default: float) -> float:
    # Tolerates a namespace built without these flags (e.g. by a test).
    return getattr(args, name, default)


async def _run_scheduler(api_address: str, args: argparse.Namespace) -> None:
    await scheduler.run(
        api_address,
        node_grace_period=_option(args, "node_monitor_grace_period", DEFAULT_GRACE_PERIOD),
        bind_concurrency=int(_option(args, "scheduler_bind_concurrency", DEFAULT_BIND_CONCURRENCY)),
    )


async def _run_endpoints(api_address: str, args: argparse.Namespace) -> None:
    await endpoints_controller.run(api_address)


async def _run_nodelifecycle(api_address: str, args: argparse.Namespace) -> None:
    await nodelifecycle.run(
        api_address,
        grace_period=_option(args, "node_monitor_grace_period", DEFAULT_GRACE_PERIOD),
        eviction_timeout=_option(args, "pod_eviction_timeout", DEFAULT_EVICTION_TIMEOUT),
    )


# name -> coroutine factory(api_address, args)
CONTROLLERS: dict[str, ControllerFactory] = {
    "scheduler": _run_scheduler,
    "endpoints": _run_endpoints,
    "nodelifecycle": _run_nodelifecycle,
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


async def _guarded(name: str, factory: ControllerFactory, api_address: str, args: argparse.Namespace) -> None:
    """A controller that dies is logged and restarted: one bug must not leave the cluster unmanaged."""
    delay = 1.0
    while True:
        try:
            await factory(api_address, args)
            log.warning("controller_exited", controller=name, restart_in=delay)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("controller_failed", controller=name, restart_in=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


async def start(names: list[str], api_address: str, args: argparse.Namespace) -> list[asyncio.Task]:
    tasks = []
    for name in names:
        factory = CONTROLLERS.get(name)
        if factory is None:
            log.warning("controller_unavailable", controller=name, known=",".join(CONTROLLERS))
            continue
        tasks.append(asyncio.create_task(_guarded(name, factory, api_address, args), name=f"controller-{name}"))
    return tasks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.apiserver.controllers",
        description="Runs the API server's controllers on their own, against an API server.",
    )
    parser.add_argument("--server", default=None, help="API server address (default $KYBERNETES_SERVER or 127.0.0.1:8080)")
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = resolve_server(args.server)
    tasks = await start(names, server, args)
    log.info("controllers_started", server=server, controllers=",".join(names))
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    log.info("controllers_stopped")
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(asyncio.run(_serve(parse_args(argv))))


if __name__ == "__main__":
    main()
