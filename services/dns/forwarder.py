"""Forwarding what is not the cluster's to upstream resolvers.

Each upstream is tried in the order given, each with its own timeout, until one answers: UDP
first, and TCP to the same upstream when the UDP answer is truncated. Whatever the upstream
answers (SERVFAIL and NXDOMAIN included) goes back to the client; when none answers, the
client gets SERVFAIL. The query goes out under a fresh random id (so an off-path attacker
cannot guess it from the client's) and the response comes back under the client's.

Default upstreams: the `nameserver` lines of /etc/resolv.conf (the `--resolv-conf` flag) that
are not loopback. A loopback resolver there is a host-local cache (systemd-resolved's
127.0.0.53) or kube-dns itself: from a pod it is the pod, and from the host it can be a loop.
Pass `--upstream` to use one anyway.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Sequence

import dns.asyncquery
import dns.entropy
import dns.exception
import dns.message
import dns.rcode
import dns.resolver

from services.common.log import get_logger

from .answer import error_response
from .throttle import Throttle

DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
DEFAULT_TIMEOUT = 2.0
DNS_PORT = 53

log = get_logger(part="forwarder")


@dataclass(frozen=True)
class Upstream:
    host: str  # an IP address (dnspython's query functions take no host names)
    port: int = DNS_PORT

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """`IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT` -> (ip, port); ValueError with the reason."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f'"{text}": expected [IPv6]:PORT')
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f'"{text}": "{host}" is not an IP address') from None
    return str(address), port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f'"{whole}": "{text}" is not a port number')
    return int(text)


def parse_upstream(text: str) -> Upstream:
    host, port = parse_address(text, DNS_PORT)
    return Upstream(host, port)


def upstreams_from_resolv_conf(path: str = DEFAULT_RESOLV_CONF) -> list[Upstream]:
    """The file's non-loopback nameservers, in order (empty when it has none or is unreadable)."""
    try:
        resolver = dns.resolver.Resolver(filename=path, configure=True)
    except (OSError, dns.exception.DNSException):
        return []
    upstreams = []
    for nameserver in resolver.nameservers:
        text = str(nameserver)
        try:
            address = ipaddress.ip_address(text.split("%")[0])  # drop an IPv6 zone index
        except ValueError:
            continue  # a DoH URL or the like: not for us
        if not address.is_loopback:
            upstreams.append(Upstream(text))
    return upstreams


class Forwarder:
    def __init__(self, upstreams: Sequence[Upstream], *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        self.failures = 0  # queries no upstream answered
        self._throttle = Throttle()

    async def resolve(self, query: dns.message.Message) -> dns.message.Message:
        """The first upstream answer to `query`, under the query's id; SERVFAIL when none answers."""
        client_id = query.id
        query.id = dns.entropy.random_16()
        try:
            for upstream in self.upstreams:
                try:
                    response = await self._ask(query, upstream)
                except (OSError, dns.exception.DNSException) as error:
                    if self._throttle.allow():
                        log.warning(
                            "upstream_failed", upstream=str(upstream), name=str(query.question[0].name)[:100],
                            error=f"{type(error).__name__}: {error}"[:200], suppressed=self._throttle.take_suppressed(),
                        )
                    continue
                response.id = client_id
                return response
        finally:
            query.id = client_id
        self.failures += 1
        return error_response(query, dns.rcode.SERVFAIL)

    async def _ask(self, query: dns.message.Message, upstream: Upstream) -> dns.message.Message:
        try:
            return await dns.asyncquery.udp(
                query, upstream.host, timeout=self.timeout, port=upstream.port,
                ignore_unexpected=True, raise_on_truncation=True,
            )
        except dns.message.Truncated:
            # A truncated answer may even be cut mid-record: ask the same upstream over TCP.
            return await dns.asyncquery.tcp(query, upstream.host, timeout=self.timeout, port=upstream.port)
