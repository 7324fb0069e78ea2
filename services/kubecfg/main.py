"""kubecfg: kubectl-style verbs over the Kybernetes API.

    kubecfg apply -f DIR_OR_FILE          kubecfg get pods -l 'tier in (frontend)' -o wide
    kubecfg describe rc web               kubecfg scale rc web --replicas 5
    kubecfg delete rc web --cascade=false kubecfg logs web-x2b9 -f
    kubecfg auth can-i create pods        kubecfg auth whoami

The API server is --server, else $KYBERNETES_SERVER, else 127.0.0.1:6443.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from importlib import metadata
from typing import NoReturn, Sequence

import grpc

from services.common.client import ApiClient, cluster_access, resolve_server
from services.common.kubeconfig import KubeconfigError
from services.common.resources import DEFAULT_NAMESPACE

from . import auth, commands
from .errors import CONNECTION_CODES, CommandError, server_error, unreachable

PROG = "kubecfg"


class _Parser(argparse.ArgumentParser):
    """Usage errors as kubectl prints them: `error: ...` and where to find help."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"error: {message}\nSee '{self.prog} --help' for usage.\n")


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f'expected true or false, got "{text}"')


def _common() -> _Parser:
    """Flags every verb takes, after the verb too (`kubecfg get pods -n x`)."""
    common = _Parser(add_help=False)
    # SUPPRESS: a flag given before the verb is not reset by the verb's parser.
    common.add_argument("--server", "-s", default=argparse.SUPPRESS, help="API server host:port")
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="kubeconfig file")
    common.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context")
    common.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="namespace (default: default)")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--server", "-s", default=None,
        help="API server host:port, overriding the kubeconfig's (default: the kubeconfig's)",
    )
    parser.add_argument(
        "--kubeconfig", default=None,
        help="kubeconfig file: server, CA and your credentials "
        "(default: $KYBERNETES_CONFIG, else ~/.kybernetes/config)",
    )
    parser.add_argument("--context", default=None, help="the kubeconfig context to use (default: its current-context)")
    parser.add_argument("-n", "--namespace", default=None, help="namespace (default: default)")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    common = [_common()]

    apply = verbs.add_parser("apply", parents=common, help="create or update objects from manifests")
    apply.add_argument("-f", "--filename", action="append", required=True, help="file, directory or - (stdin)")

    create = verbs.add_parser("create", parents=common, help="create objects from manifests")
    create.add_argument("-f", "--filename", action="append", required=True, help="file, directory or - (stdin)")

    get = verbs.add_parser("get", parents=common, help="list objects as a table, YAML or JSON")
    get.add_argument("resources", nargs="*", metavar="KIND [NAME...] | KIND/NAME...")
    get.add_argument("-l", "--selector", default="", help="label selector, e.g. 'tier in (frontend),env!=dev'")
    get.add_argument("--field-selector", default="", help="field selector, e.g. spec.nodeName=node-1")
    get.add_argument("-o", "--output", default="", choices=commands.OUTPUT_FORMATS)
    get.add_argument("-w", "--watch", action="store_true", help="after listing, print changes as they happen")
    get.add_argument("--watch-only", action="store_true", help="print changes only, without the initial list")
    get.add_argument("--output-watch-events", action="store_true", help="add an EVENT column when watching")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("--show-labels", action="store_true")
    get.add_argument("--no-headers", action="store_true")

    describe = verbs.add_parser("describe", parents=common, help="show objects in detail")
    describe.add_argument("resources", nargs="+", metavar="KIND [NAME...] | KIND/NAME...")
    describe.add_argument("-l", "--selector", default="")
    describe.add_argument("-A", "--all-namespaces", action="store_true")

    delete = verbs.add_parser("delete", parents=common, help="delete objects by name, file or selector")
    delete.add_argument("resources", nargs="*", metavar="KIND [NAME...] | KIND/NAME...")
    delete.add_argument("-f", "--filename", action="append", default=[])
    delete.add_argument("-l", "--selector", default="")
    delete.add_argument("--all", action="store_true", help="every object of the kind in the namespace")
    delete.add_argument(
        "--cascade", nargs="?", const="background", default="background",
        help="background (default: an RC's pods go too), foreground (the RC stays until its pods are gone) "
        "or orphan (=false: they stay)",
    )
    delete.add_argument("--ignore-not-found", nargs="?", const=True, default=False, type=_bool)
    delete.add_argument("--wait", nargs="?", const=True, default=True, type=_bool,
                        help="wait until a gracefully deleted object is gone (default true)")
    delete.add_argument("--timeout", type=float, default=0, help="seconds to wait with --wait (0: no limit)")
    delete.add_argument(
        "--grace-period", type=int, default=-1,
        help="seconds a pod gets to stop (-1: its terminationGracePeriodSeconds; 0 means 1 unless --force)",
    )
    delete.add_argument(
        "--force", nargs="?", const=True, default=False, type=_bool,
        help="with --grace-period=0 (the default then): remove from the API at once, without waiting for "
        "the containers to stop",
    )
    delete.add_argument("--now", nargs="?", const=True, default=False, type=_bool,
                        help="signal the pod to stop at once (--grace-period=1)")

    scale = verbs.add_parser("scale", parents=common, help="set a replication controller's replicas")
    scale.add_argument("resources", nargs="+", metavar="rc NAME | rc/NAME")
    scale.add_argument("--replicas", type=int, required=True)
    scale.add_argument("--current-replicas", type=int, default=-1, help="precondition: only if it has this many now")

    logs = verbs.add_parser("logs", parents=common, help="print a container's output (from its node's kubelet)")
    logs.add_argument("pod", metavar="POD")
    logs.add_argument("-c", "--container", default="")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--tail", type=int, default=-1, help="last N lines (-1: all)")
    logs.add_argument("--timestamps", action="store_true")

    auth.add_parser(verbs, common)

    verbs.add_parser("version", parents=common, help="print the client version and the server address")
    return parser


def _version(server: str) -> None:
    try:
        version = metadata.version("kybernetes")
    except metadata.PackageNotFoundError:
        version = "unknown"
    print(f"Client Version: kybernetes {version}")
    print(f"Server Address: {server}")


async def run(args: argparse.Namespace) -> int:
    """Runs one parsed command; returns the exit code."""
    try:
        access = cluster_access(args.kubeconfig, args.server, args.context)
    except KubeconfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    client = ApiClient.for_access(access)
    ctx = commands.Context(
        client=client,
        namespace=args.namespace or access.namespace or DEFAULT_NAMESPACE,
        namespace_given=bool(args.namespace),
    )
    try:
        verb = args.verb
        if verb == "apply":
            await commands.apply(ctx, args.filename)
        elif verb == "create":
            await commands.create(ctx, args.filename)
        elif verb == "get":
            get_options = commands.GetOptions(
                label_selector=args.selector, field_selector=args.field_selector, output=args.output,
                all_namespaces=args.all_namespaces, watch=args.watch, watch_only=args.watch_only,
                show_labels=args.show_labels, no_headers=args.no_headers,
                output_watch_events=args.output_watch_events,
            )
            await commands.get(ctx, commands.parse_resources(args.resources), get_options)
        elif verb == "describe":
            await commands.describe(
                ctx, commands.parse_resources(args.resources),
                label_selector=args.selector, all_namespaces=args.all_namespaces,
            )
        elif verb == "delete":
            delete_options = commands.DeleteOptions(
                label_selector=args.selector, all=args.all, cascade=args.cascade,
                ignore_not_found=args.ignore_not_found, wait=args.wait, timeout=args.timeout,
                grace_period=args.grace_period, force=args.force, now=args.now,
            )
            resources = commands.parse_resources(args.resources, allow_all=False)
            await commands.delete(ctx, resources, args.filename, delete_options)
        elif verb == "scale":
            await commands.scale(ctx, commands.parse_resources(args.resources), args.replicas, args.current_replicas)
        elif verb == "auth":
            await auth.run(ctx, args)
        elif verb == "logs":
            logs_options = commands.LogsOptions(
                container=args.container, follow=args.follow, tail=args.tail, timestamps=args.timestamps
            )
            await commands.logs(ctx, args.pod, logs_options)
    except grpc.aio.AioRpcError as error:  # a request no verb handled itself
        if error.code() in CONNECTION_CODES:
            raise unreachable(error, "the API server", client.server) from None
        raise CommandError(server_error(error)) from None
    finally:
        await client.close()
    return 1 if ctx.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 0
    if args.verb == "version":
        _version(resolve_server(args.server))
        return 0
    try:
        return asyncio.run(run(args))
    except CommandError as error:
        print(str(error), file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, as other CLIs do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
