"""A pod's DNS settings and its /etc/resolv.conf (pure).

As Kubernetes' kubelet (pkg/kubelet/network/dns/dns.go, GetPodDNS), by the
pod's `dnsPolicy`:

- `ClusterFirst` (the default; `ClusterFirstWithHostNet` is the same here, as
  no pod uses the host network): the kubelet's `--cluster-dns` servers only,
  the search list `<ns>.svc.<domain> svc.<domain> <domain>` followed by the
  node's, and `options ndots:5`. A kubelet without `--cluster-dns` falls back
  to `Default` (Kubernetes warns with an event; the kubelet logs it once).
- `Default`: the node's resolv.conf (the kubelet's `--resolv-conf`).
- `None`: nothing but `dnsConfig`.

`dnsConfig` is then merged in: its nameservers and searches appended (without
duplicates), its options replacing those of the same name. Last, the limits of
libc's resolver: 3 nameservers, 32 search domains of at most 253 characters,
2048 characters in the search line; what is over is dropped, with a warning.

The node's loopback name servers are never given to a pod: a pod's loopback is
its own (Docker drops them from a container's resolv.conf for the same reason).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from kybernetes.v1 import pod_pb2

DNS_CLUSTER_FIRST = "ClusterFirst"
DNS_CLUSTER_FIRST_WITH_HOST_NET = "ClusterFirstWithHostNet"
DNS_DEFAULT = "Default"
DNS_NONE = "None"
DNS_POLICIES = (DNS_CLUSTER_FIRST, DNS_CLUSTER_FIRST_WITH_HOST_NET, DNS_DEFAULT, DNS_NONE)
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_HOST_RESOLV_CONF = "/etc/resolv.conf"
CLUSTER_FIRST_OPTIONS = ("ndots:5",)

# libc's limits, as Kubernetes' validation states them.
MAX_NAMESERVERS = 3
MAX_SEARCH_PATHS = 32
MAX_SEARCH_LIST_CHARS = 2048
MAX_SEARCH_PATH_CHARS = 253  # a DNS-1123 subdomain; longer ones abort glibc 2.28's resolver


@dataclass(frozen=True)
class PodDns:
    """Name servers, search domains and options ("ndots:5", "rotate"), in order."""

    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    # What had to be dropped to fit libc's limits, for the log.
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def resolv_conf(self) -> str:
        """The file, as Kubernetes' runtime writes it: nameserver lines, then search, then options."""
        lines = [f"nameserver {server}" for server in self.nameservers]
        if self.searches:
            lines.append("search " + " ".join(self.searches))
        if self.options:
            lines.append("options " + " ".join(self.options))
        return "".join(line + "\n" for line in lines)


def _option_name(option: str) -> str:
    return option.split(":", 1)[0]


def _merge_options(existing: Iterable[str], new: Iterable[str]) -> tuple[str, ...]:
    """Options by name: a later one replaces an earlier one of the same name, in its place."""
    merged: dict[str, str] = {}
    for option in (*existing, *new):
        merged[_option_name(option)] = option
    return tuple(merged.values())


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _is_loopback(server: str) -> bool:
    try:
        return ipaddress.ip_address(server.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def parse_resolv_conf(text: str) -> PodDns:
    """The node's resolv.conf, as Kubernetes reads it (parseResolvConf): every
    nameserver but loopback ones, the last search line (without "." and
    trailing dots), the options (the last of each name)."""
    nameservers: list[str] = []
    searches: list[str] = []
    options: tuple[str, ...] = ()
    for line in text.splitlines():
        if line.startswith(("#", ";")):
            continue
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "nameserver" and len(fields) >= 2:
            if not _is_loopback(fields[1]):
                nameservers.append(fields[1])
        elif fields[0] == "search":
            # Normally there is one search line; of several, the last one wins.
            searches = [domain.rstrip(".") for domain in fields[1:] if domain != "."]
        elif fields[0] == "options":
            options = _merge_options(options, fields[1:])
    return PodDns(tuple(nameservers), tuple(searches), options)


def dns_policy(pod: pod_pb2.Pod) -> str:
    return pod.spec.dns_policy or DNS_CLUSTER_FIRST


def uses_cluster_dns(policy: str) -> bool:
    return policy in ("", DNS_CLUSTER_FIRST, DNS_CLUSTER_FIRST_WITH_HOST_NET)


def cluster_searches(namespace: str, cluster_domain: str) -> tuple[str, ...]:
    """`<ns>.svc.<domain> svc.<domain> <domain>`; none without a cluster domain."""
    if not cluster_domain:
        return ()
    return (f"{namespace}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain)


def _fit_limits(dns: PodDns) -> PodDns:
    warnings: list[str] = []
    nameservers = dns.nameservers
    if len(nameservers) > MAX_NAMESERVERS:
        nameservers = nameservers[:MAX_NAMESERVERS]
        warnings.append(
            f"Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: "
            f"{' '.join(nameservers)}"
        )
    searches = list(dns.searches)
    exceeded = len(searches) > MAX_SEARCH_PATHS
    searches = searches[:MAX_SEARCH_PATHS]
    kept = [domain for domain in searches if len(domain) <= MAX_SEARCH_PATH_CHARS]
    exceeded = exceeded or len(kept) != len(searches)
    while kept and len(" ".join(kept)) > MAX_SEARCH_LIST_CHARS:
        kept.pop()  # the last ones go first
        exceeded = True
    if exceeded:
        warnings.append(
            "Search Line limits were exceeded, some search paths have been omitted, the applied search line is: "
            + " ".join(kept)
        )
    return PodDns(nameservers, tuple(kept), dns.options, tuple(warnings))


def pod_dns(
    pod: pod_pb2.Pod, *, cluster_dns: Sequence[str], cluster_domain: str = DEFAULT_CLUSTER_DOMAIN, host: PodDns,
) -> PodDns:
    """The pod's DNS settings from its dnsPolicy and dnsConfig, the kubelet's
    --cluster-dns and --cluster-domain, and the node's resolv.conf (`host`,
    from parse_resolv_conf)."""
    policy = dns_policy(pod)
    if policy == DNS_NONE:
        base = PodDns()
    elif uses_cluster_dns(policy) and cluster_dns:
        # The cluster DNS is the only server: it forwards what it does not answer itself.
        base = PodDns(
            tuple(cluster_dns),
            _unique((*cluster_searches(pod.metadata.namespace, cluster_domain), *host.searches)),
            CLUSTER_FIRST_OPTIONS,
        )
    else:
        # Default, and ClusterFirst with no cluster DNS known (Kubernetes' fallback).
        base = host
    if pod.spec.HasField("dns_config"):
        config = pod.spec.dns_config
        base = PodDns(
            _unique((*base.nameservers, *config.nameservers)),
            _unique((*base.searches, *config.searches)),
            _merge_options(
                base.options,
                (f"{option.name}:{option.value}" if option.value else option.name for option in config.options),
            ),
        )
    return _fit_limits(base)
