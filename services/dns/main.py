"""kube-dns: cluster DNS from Watch. Answers `<svc>.<ns>.svc.<cluster-domain>` (A, SRV) and the
cluster IPs' reverse names (PTR) from the API's services and endpoints; forwards everything else
to upstream resolvers."""

from __future__ import annotations

import argparse
import time

import dns.exception
import dns.name

from services.common.client import client_from_args
from services.common.flags import add_api_client_flags, positive_duration, positive_int
from services.common.log import configure_logging
from services.common.runtime import Manager
from services.common.servicemain import run_service, run_until_signalled

from .controller import DnsController
from .forwarder import (
    DEFAULT_RESOLV_CONF,
    DEFAULT_TIMEOUT,
    Forwarder,
    Upstream,
    parse_address,
    parse_upstream,
    upstreams_from_resolv_conf,
)
from .records import DEFAULT_DOMAIN, DEFAULT_TTL, RecordIndex
from .server import DEFAULT_MAX_CONCURRENT, DnsServer

DEFAULT_LISTEN = "127.0.0.1:10053"
MAX_TTL = 2**31 - 1


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_address(text, 53)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _upstreams(text: str) -> list[Upstream]:
    try:
        return [parse_upstream(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _domain(text: str) -> str:
    try:
        name = dns.name.from_text(text)
    except dns.exception.DNSException as error:
        raise argparse.ArgumentTypeError(f'"{text}" is not a domain name: {error}') from None
    if name == dns.name.root:
        raise argparse.ArgumentTypeError("the cluster domain cannot be the root")
    return name.to_text(omit_final_dot=True).lower()


def _ttl(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_TTL:
        raise argparse.ArgumentTypeError(f'"{text}" is not a TTL (whole seconds, 0 to {MAX_TTL})')
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kube-dns", description=__doc__)
    add_api_client_flags(parser)
    parser.add_argument(
        "--listen", type=_listen, default=DEFAULT_LISTEN, metavar="IP:PORT",
        help="where to serve DNS, UDP and TCP (default %(default)s)",
    )
    parser.add_argument(
        "--cluster-domain", type=_domain, default=DEFAULT_DOMAIN,
        help="the zone kube-dns is authoritative for (default %(default)s)",
    )
    parser.add_argument(
        "--ttl", type=_ttl, default=DEFAULT_TTL, metavar="SECONDS",
        help="TTL of the cluster's records, and of their negative answers (default %(default)s)",
    )
    parser.add_argument(
        "--upstream", type=_upstreams, action="append", default=None, metavar="IP[:PORT]",
        help="resolver for names outside the cluster; repeat or comma-separate to give several, tried in "
        "order (default: the nameservers in --resolv-conf that are not loopback, read at start; a loopback "
        "resolver there is host-local or kube-dns itself)",
    )
    parser.add_argument(
        "--resolv-conf", default=DEFAULT_RESOLV_CONF, metavar="PATH",
        help="where the default upstreams come from when --upstream is not given (default %(default)s)",
    )
    parser.add_argument(
        "--upstream-timeout", type=positive_duration, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help="how long to wait for each upstream before trying the next (default %(default)s)",
    )
    parser.add_argument(
        "--max-concurrent", type=positive_int, default=DEFAULT_MAX_CONCURRENT,
        help="forwarded queries in flight at once; beyond it clients get REFUSED (default %(default)s)",
    )
    parser.add_argument(
        "--endpoint-pod-names", action="store_true",
        help="name a headless service's endpoints without a hostname after their pod, not their dashed IP "
        "(CoreDNS's endpoint_pod_names)",
    )
    args = parser.parse_args(argv)
    if args.upstream is not None:
        args.upstream = [upstream for group in args.upstream for upstream in group]
        listen = Upstream(*args.listen)
        if listen in args.upstream:
            parser.error(f"--upstream: {listen} is kube-dns's own --listen address (a forwarding loop)")
    return args


async def serve(args: argparse.Namespace) -> int:
    log = configure_logging("kube-dns")
    upstreams = args.upstream if args.upstream is not None else upstreams_from_resolv_conf(args.resolv_conf)
    if not upstreams:
        log.warning("dns_no_upstreams", resolv_conf=args.resolv_conf, effect="names outside the cluster get SERVFAIL")
    index = RecordIndex(args.cluster_domain, ttl=args.ttl, serial=int(time.time()))
    server = DnsServer(
        index, Forwarder(upstreams, timeout=args.upstream_timeout), max_concurrent=args.max_concurrent
    )
    client = client_from_args(args, timeout=30.0)
    manager = Manager(client, name="dns")
    manager.add(DnsController(index, endpoint_pod_names=args.endpoint_pod_names))

    async def run() -> None:
        # Bound under run_until_signalled, so a SIGTERM right after the port opens is a clean stop.
        host, port = args.listen
        try:
            port = await server.start(host, port)
        except OSError as error:
            log.error("dns_listen_failed", listen=f"{host}:{port}", error=str(error))
            return  # run_until_signalled: exit 1
        log.info(
            "dns_starting", listen=f"{host}:{port}", zone=index.zone.to_text(), server=client.server,
            upstreams=",".join(str(upstream) for upstream in upstreams) or None,
        )
        await manager.run()

    try:
        code = await run_until_signalled(run(), name="dns")
    finally:
        await server.close()
        await client.close()
    log.info(
        "dns_stopped", queries=server.queries, answered=server.answered, forwarded=server.forwarded,
        malformed=server.malformed, refused=server.refused, upstream_failures=server.forwarder.failures,
    )
    return code


def main(argv: list[str] | None = None) -> None:
    run_service(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
