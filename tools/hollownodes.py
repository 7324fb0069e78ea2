"""Hollow nodes (Kubernetes' kubemark), many in one process (dev only).

    python -m tools.hollownodes --nodes 50 --server 127.0.0.1:6443 [--node-prefix hollow-] [--proxies]

runs N hollow kubelets (services/kubelet/hollow.py: the real kubelet on a fake
container runtime and a pod network of bookkeeping only) and, with --proxies,
N hollow proxies (services/proxy/hollow.py: the real proxy with a data path
that records what it would program), all on one asyncio loop. Each kubelet has
its own API connection and its own node identity, `system:node:<name>` in
`system:nodes`, from a certificate issued at start by the cluster CA of --pki
(default: the dev PKI, $KYBERNETES_DEV_PKI, that tests and benches run with);
each proxy has its own connection as `system:kube-proxy`. Its node's pods
"run" as soon as the kubelet starts them, and get addresses from the Node's
podCIDR (the range allocator's), so a control plane with the nodeipam,
scheduler and endpoints controllers serves them as it would real nodes.

It lives in tools/ because it runs two components in one process (components
never import each other). It prints `hollow_nodes_ready nodes=N` on stdout once
every kubelet has started, then a summary line every --report-every seconds, and
stops them all on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from services.common.client import ApiClient
from services.common.flags import duration, positive_duration
from services.common.identity import SYSTEM_NODES
from services.common.kubeconfig import ClusterAccess
from services.common.log import configure_logging
from services.common.servicemain import run_service, stop_on_signals
from services.common.transport import ClientCredentials
from services.kubelet.hollow import HollowKubelet, hollow_config
from services.proxy.hollow import HollowProxy
from services.proxy.nftproxier import NftOptions
from tools.clusterpki import ClusterPKI
from tools.processes import dev_pki


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hollownodes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, required=True, help="how many hollow nodes")
    parser.add_argument("--server", required=True, help="the API server, HOST:PORT")
    parser.add_argument("--node-prefix", default="hollow-", help="node names: <prefix><index> (default %(default)s)")
    parser.add_argument("--first-index", type=int, default=0, help="index of the first node (default 0)")
    parser.add_argument("--proxies", action="store_true", help="a hollow proxy beside each hollow kubelet")
    parser.add_argument("--pki", default=None,
                        help="the cluster's state directory (tools/clusterpki.py) whose CA issues the nodes' "
                        "certificates (default: the dev PKI, $KYBERNETES_DEV_PKI)")
    parser.add_argument("--insecure", action="store_true", help="plaintext to an --insecure-dev API server")
    parser.add_argument("--root-dir", default=None,
                        help="the nodes' root dirs go under it, one each (default: a temporary directory, removed)")
    parser.add_argument("--node-status-frequency", type=positive_duration, default=10.0,
                        help="how often each node computes its status, posted if changed; its Lease is renewed as "
                        "often, or every quarter of the lease duration if sooner (default %(default)ss)")
    parser.add_argument("--node-status-report-frequency", type=positive_duration, default=300.0,
                        help="each node posts its status at least this often (default %(default)ss)")
    parser.add_argument("--node-lease-duration-seconds", type=int, default=40,
                        help="the node Leases' duration (default %(default)s)")
    parser.add_argument("--sync-frequency", type=positive_duration, default=10.0,
                        help="each kubelet's resync period (default %(default)ss)")
    parser.add_argument("--proxy-min-sync-period", type=duration, default=1.0,
                        help="hollow proxies: least time between two recorded transactions (default %(default)ss)")
    parser.add_argument("--runtime-latency", type=duration, default=0.0,
                        help="seconds each fake runtime call takes (default 0: at once)")
    parser.add_argument("--cluster-dns", default="10.96.0.10",
                        help="the DNS server the nodes' ClusterFirst pods are given (default %(default)s)")
    parser.add_argument("--serve", action="store_true",
                        help="each hollow kubelet serves its API (plaintext, a free loopback port)")
    parser.add_argument("--start-concurrency", type=int, default=50,
                        help="kubelets starting at a time (default %(default)s)")
    parser.add_argument("--report-every", type=positive_duration, default=5.0,
                        help="seconds between summary lines on stdout (default %(default)s)")
    parser.add_argument("--log-level", default=os.environ.get("KYBERNETES_LOG_LEVEL", "warning"),
                        help="the components' log level (default warning: a thousand kubelets say a lot)")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if args.node_lease_duration_seconds < 1:
        parser.error("--node-lease-duration-seconds must be at least 1")
    return args


def node_names(prefix: str, count: int, first: int = 0) -> list[str]:
    return [f"{prefix}{index}" for index in range(first, first + count)]


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CollectorPauses:
    """How often the cyclic collector stopped the loop, and for how long at most: a thousand
    nodes' pods are a thousand times the long-lived objects one kubelet holds, the collector
    walks those that survived its young generations, and every hollow node waits for it."""

    SLOW_SECONDS = 0.1

    def __init__(self) -> None:
        self.full = 0
        self.slow = 0
        self.longest = 0.0
        self._began = 0.0
        gc.callbacks.append(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        self.longest = max(self.longest, took)
        self.slow += took > self.SLOW_SECONDS
        if info["generation"] == 2:
            self.full += 1

    def summary(self) -> list[str]:
        return [f"gc_full={self.full}", f"gc_over_100ms={self.slow}", f"gc_longest_ms={self.longest * 1000:.0f}"]


class HollowNodes:
    """N hollow kubelets (and proxies) on this loop."""

    def __init__(self, args: argparse.Namespace, pki: ClusterPKI | None) -> None:
        self.args = args
        self.pki = pki
        self.names = node_names(args.node_prefix, args.nodes, args.first_index)
        self._temporary = args.root_dir is None
        self.root = Path(args.root_dir or tempfile.mkdtemp(prefix="kyb-hollow-"))
        self.kubelets: list[HollowKubelet] = []
        self.proxies: list[HollowProxy] = []
        self.collector = CollectorPauses()

    def _node_access(self, name: str) -> ClusterAccess:
        if self.pki is None:
            return ClusterAccess(self.args.server, None)
        user = f"system:node:{name}"
        return ClusterAccess(self.args.server, self.pki.client_credentials(user, (SYSTEM_NODES,)), user=user)

    def _proxy_client(self, credentials: ClientCredentials | None) -> ApiClient:
        return ApiClient(self.args.server, credentials=credentials, timeout=30.0)

    def build(self) -> None:
        args = self.args
        proxy_credentials = self.pki.credentials("kube-proxy") if self.pki is not None else None
        for name in self.names:
            access = self._node_access(name)
            config = hollow_config(
                name, str(self.root / name),
                server=args.server, access=access if self.pki is not None else None,
                node_status_frequency=args.node_status_frequency, sync_frequency=args.sync_frequency,
                node_status_report_frequency=args.node_status_report_frequency,
                node_lease_duration_seconds=args.node_lease_duration_seconds,
                cluster_dns=tuple(address for address in args.cluster_dns.split(",") if address),
            )
            self.kubelets.append(HollowKubelet(config, serve=args.serve, runtime_latency=args.runtime_latency))
            if args.proxies:
                options = NftOptions(node_name=name, min_sync_period=args.proxy_min_sync_period)
                self.proxies.append(HollowProxy(self._proxy_client(proxy_credentials), name, options))

    async def start(self) -> None:
        gate = asyncio.Semaphore(max(1, self.args.start_concurrency))

        async def start_one(kubelet: HollowKubelet, proxy: HollowProxy | None) -> None:
            async with gate:
                await kubelet.start()
                if proxy is not None:
                    await proxy.start()

        proxies: list[HollowProxy | None] = list(self.proxies) or [None] * len(self.kubelets)
        await asyncio.gather(*(start_one(k, p) for k, p in zip(self.kubelets, proxies, strict=True)))

    async def stop(self) -> None:
        await asyncio.gather(*(kubelet.stop() for kubelet in self.kubelets), return_exceptions=True)
        await asyncio.gather(*(proxy.stop() for proxy in self.proxies), return_exceptions=True)
        if self._temporary:
            shutil.rmtree(self.root, ignore_errors=True)

    def summary(self) -> str:
        pods = sum(len(kubelet.workers) for kubelet in self.kubelets)
        running = sum(kubelet.fake_runtime.running() for kubelet in self.kubelets)
        renewals = sum(kubelet.lease.renewals for kubelet in self.kubelets if kubelet.lease is not None)
        reports = sum(kubelet.reporter.reports for kubelet in self.kubelets if kubelet.reporter is not None)
        fields = [f"nodes={len(self.kubelets)}", f"pod_workers={pods}", f"running_containers={running}",
                  f"lease_renewals={renewals}", f"status_reports={reports}", f"rss_mb={rss_bytes() / 2**20:.0f}",
                  *self.collector.summary()]
        if self.proxies:
            transactions = sum(proxy.data_path.recorded.transactions for proxy in self.proxies)
            services = sum(proxy.data_path.programmed_services() for proxy in self.proxies)
            fields += [f"proxy_transactions={transactions}", f"proxy_services={services}"]
        return "hollow_nodes " + " ".join(fields)


async def run(args: argparse.Namespace) -> int:
    configure_logging("hollownodes", level=args.log_level)
    pki = None if args.insecure else (ClusterPKI(Path(args.pki)) if args.pki else dev_pki())
    nodes = HollowNodes(args, pki)
    stop = stop_on_signals()
    began = time.monotonic()
    nodes.build()
    built = time.monotonic()
    try:
        await nodes.start()
        print(f"hollow_nodes_ready nodes={len(nodes.kubelets)} proxies={len(nodes.proxies)} "
              f"identities_s={built - began:.2f} start_s={time.monotonic() - built:.2f}", flush=True)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), args.report_every)
            except asyncio.TimeoutError:
                print(nodes.summary(), flush=True)
    finally:
        await nodes.stop()
    print(nodes.summary(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    # As every service runs (the kubelets and proxies it hosts included): their collector
    # thresholds and allocator settings, not Python's defaults.
    run_service(run(parse_args(argv)))


if __name__ == "__main__":
    main()
