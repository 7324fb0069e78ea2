"""The node agent: sources -> desired pods -> one worker per pod -> Docker.

Wiring and the loops that are not any single pod's: Docker's event stream
(through the container cache) and a periodic resync wake the pod workers;
once every source has reported, containers and pod directories of pods no
source wants any more are removed.

With an API server the kubelet also watches every service (one informer, as
Kubernetes' kubelet does) for the service variables of the containers it
starts; what a container gets is decided when it is created (envvars.py), and
a pod's resolv.conf when its sandbox is (resolvconf.py).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from dataclasses import dataclass
from typing import Any

from kybernetes.v1 import pod_pb2, service_pb2
from services.common.client import ApiClient
from services.common.events import EventRecorder, NullRecorder
from services.common.clusternet import DEFAULT_CLUSTER_CIDR
from services.common.kubeconfig import ClusterAccess
from services.common.transport import ServingCertificate
from services.common.log import get_logger
from services.common.resources import NODES, SERVICES
from services.common.runtime import Backoff, TaskGroup
from services.common.runtime.informer import Informer

from .containers import ContainerCache, ContainerInfo
from .dockerspec import ContainerConfigError
from .envvars import MASTER_SERVICE_NAMESPACE, MASTER_SERVICES, pod_service_environment
from .mirror import MirrorManager
from .node import DEFAULT_REPORT_FREQUENCY, NodeStatusReporter
from .nodelease import DEFAULT_LEASE_DURATION_SECONDS, NodeLease, renew_interval
from .podworker import NodeContext, PodWorker
from .probes import ProbeManager
from .runtime import ContainerRuntime, DockerRuntime
from .bootstrap import BootstrapPlan
from .server import KubeletServer
from .sources import (
    SOURCE_API,
    ApiSource,
    FileSource,
    HttpSource,
    PodConfig,
    ServerSource,
    pod_source,
)
from .hostports import HostPortManager
from .naming import static_pod_name
from .podnetwork import DEFAULT_BRIDGE, DEFAULT_POD_CIDR, DEFAULT_STATE_DIR, PodNetwork, PodNetworkError
from .resolvconf import (
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_HOST_RESOLV_CONF,
    PodDns,
    dns_policy,
    parse_resolv_conf,
    pod_dns,
    uses_cluster_dns,
)
from .statusmanager import StatusManager
from .volumes import VolumeManager

log = get_logger(module="kubelet")

# How long a pod from the API server waits for the first list of services before
# its containers fail with CreateContainerConfigError (and are retried with back-off).
SERVICES_SYNC_TIMEOUT = 5.0


@dataclass
class KubeletConfig:
    node_name: str
    server: str | None = None
    # How to reach and authenticate to the API server (its address and this node's
    # certificate); None: plaintext to `server` (an --insecure-dev API server).
    access: ClusterAccess | None = None
    listen: str = "127.0.0.1:10250"
    # The kubelet API's TLS: its serving certificate and the CA its callers' certificates
    # chain to; None: plaintext (tests of a kubelet on its own, with --insecure-dev).
    serving: ServingCertificate | None = None
    # Join with a bootstrap token: `access` and `serving` come from it at start (bootstrap.py).
    bootstrap: BootstrapPlan | None = None
    root_dir: str = "/var/lib/kybernetes/kubelet"
    manifest_path: str | None = None
    file_check_frequency: float = 20.0
    manifest_url: str | None = None
    http_check_frequency: float = 20.0
    node_status_frequency: float = 10.0
    # The status is posted when it changes, and at least this often (the Lease is the heartbeat).
    node_status_report_frequency: float = DEFAULT_REPORT_FREQUENCY
    node_lease_duration_seconds: int = DEFAULT_LEASE_DURATION_SECONDS
    sync_frequency: float = 10.0
    pause_image: str = "kybernetes/pause:latest"
    restart_backoff_initial: float = 10.0
    restart_backoff_max: float = 300.0
    docker_concurrency: int = 4
    # "kubenet": the kubelet wires each pod sandbox itself (podnetwork.py);
    # "docker": every sandbox on Docker's bridge, as Docker networks containers.
    network_plugin: str = "kubenet"
    # The pods' range: None with an API server takes the Node's spec.podCIDR (and without
    # one, DEFAULT_POD_CIDR); given, it is used as is (kubelets sharing one bridge and pool).
    pod_cidr: str | None = None
    # Pod traffic to these addresses keeps the pod's source address (the cluster's pod range).
    non_masquerade_cidr: str = DEFAULT_CLUSTER_CIDR
    pod_bridge: str = DEFAULT_BRIDGE
    network_state_dir: str = DEFAULT_STATE_DIR
    node_ip: str = "127.0.0.1"
    docker_host: str | None = None
    seccomp_default: bool = False
    # The cluster DNS servers for ClusterFirst pods; none: such pods get the node's (as Default).
    cluster_dns: tuple[str, ...] = ()
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    # The node's resolver configuration, for Default pods and the search list of ClusterFirst ones.
    resolv_conf: str = DEFAULT_HOST_RESOLV_CONF


class Kubelet:
    def __init__(self, config: KubeletConfig) -> None:
        self.config = config
        node = config.node_name
        self.cache = ContainerCache(self._on_pod_containers_changed)
        self.runtime = self._make_runtime()
        self.volumes = VolumeManager(config.root_dir, node)
        self.backoff = Backoff(config.restart_backoff_initial, config.restart_backoff_max)
        self.probes = self._make_probes()
        with_api_server = config.access is not None or bool(config.server)
        self.network = self._make_network(with_api_server)
        # The host ports of the pods on that network (Docker publishes those of its own bridge).
        self.hostports = self._make_hostports()
        self.pod_config = PodConfig(self._on_pods_changed, self._cleanup_orphans_soon)
        self.client: ApiClient | None = None
        if config.access is not None:
            self.client = ApiClient.for_access(config.access)
        elif config.server:
            self.client = ApiClient(config.server, credentials=None)
        # The node's events (source.host: the node), written through the API server.
        self.recorder = self._make_recorder()
        if self.recorder is not None:
            self.probes.recorder = self.recorder
        self.mirror: MirrorManager | None = None
        # This node's own Node object: its podCIDR configures the pod network.
        self.own_node: Informer | None = None
        self.reporter: NodeStatusReporter | None = None
        self.lease: NodeLease | None = None
        self.api_source: ApiSource | None = None
        # Every service, for the containers' service variables; none without an API server.
        self.services: Informer | None = None
        if self.client is not None:
            self.mirror = MirrorManager(self.client, node, self.pod_config, self._on_mirror_ready)
            self.api_source = ApiSource(self.client, node, self.pod_config, self.mirror.on_event)
            self.services = Informer(self.client, SERVICES)
            # Its own Node: the status stored (posted only when it differs), and the podCIDR.
            self.own_node = Informer(self.client, NODES, field_selector=f"metadata.name={node}")
            if self.network is not None and not self.network.configured:
                self.own_node.add_handler(self._on_own_node)
        self.status = StatusManager(
            self.client,
            api_pod=self.api_source.get if self.api_source is not None else (lambda namespace, name: None),
            mirror_pod=self.mirror.get if self.mirror is not None else (lambda namespace, name: None),
        )
        self.file_source = (
            FileSource(config.manifest_path, node, self.pod_config, config.file_check_frequency)
            if config.manifest_path else None
        )
        self.http_source = (
            HttpSource(config.manifest_url, node, self.pod_config, config.http_check_frequency)
            if config.manifest_url else None
        )
        self.server_source = ServerSource(config.root_dir, node, self.pod_config)
        self.context = NodeContext(
            node=node, node_ip=config.node_ip, pause_image=config.pause_image, runtime=self.runtime,
            cache=self.cache, volumes=self.volumes, probes=self.probes, backoff=self.backoff,
            publish_status=self.status.publish, source_of=pod_source,
            runtime_default_seccomp=config.seccomp_default, network=self.network, hostports=self.hostports,
            service_environment=self.service_environment, pod_dns=self.pod_dns,
            pod_terminated=self.status.pod_terminated, recorder=self.recorder or NullRecorder(),
            resync_interval=config.sync_frequency,
        )
        self.workers: dict[str, PodWorker] = {}
        self._worker_sequence = itertools.count(1)
        self.server = self._make_server()
        # The kubelet's loops (sources, mirror, heartbeat, resync) are guarded: one that
        # dies is logged and restarted with back-off; one-off jobs are held until done.
        self.tasks = TaskGroup("kubelet")
        self._started = False
        self._warned_no_cluster_dns = False
        # The node's resolv.conf as last read, and what it parsed to (_host_dns; threads share it).
        self._host_resolv_conf: tuple[str | None, PodDns] = (None, PodDns())
        self._log = log.bind(node=node)

    # --- what the node runs on (a hollow node, hollow.py, runs on stand-ins) ----------------

    def _make_runtime(self) -> ContainerRuntime:
        config = self.config
        return DockerRuntime(
            config.node_name, self.cache, concurrency=config.docker_concurrency, base_url=config.docker_host
        )

    def _make_probes(self) -> ProbeManager:
        return ProbeManager(self.runtime, self._poke)

    def _make_recorder(self) -> EventRecorder | None:
        if self.client is None:
            return None
        return EventRecorder(self.client, "kubelet", host=self.config.node_name)

    def _make_network(self, with_api_server: bool) -> PodNetwork | None:
        config = self.config
        if config.network_plugin != "kubenet":
            return None
        return PodNetwork(
            config.node_name,
            config.pod_cidr or (None if with_api_server else DEFAULT_POD_CIDR),
            config.pod_bridge,
            config.network_state_dir,
            config.non_masquerade_cidr,
        )

    def _make_hostports(self) -> HostPortManager | None:
        if self.network is None:
            return None
        return HostPortManager(self.config.node_name, self.config.node_ip, self.config.pod_bridge)

    def _make_server(self) -> KubeletServer:
        return KubeletServer(self, self.config.listen, self.config.serving)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.recorder is not None:
            self.recorder.start()
        await self.runtime.connect()
        # Events first, then the list: nothing that happens in between is missed.
        self.runtime.start_events(on_reconnected=self.request_resync)
        adopted = await self.runtime.list_all()
        self._log.info(
            "kubelet_starting", docker=self.runtime.version, containers_found=len(adopted),
            pods_found=len({c.pod_uid for c in adopted}),
        )
        if self.network is not None and self.network.configured:
            await self.network.setup()
            await self._collect_network_garbage()
        if self.hostports is not None:
            # The last kubelet left its host ports' table: rewritten from the pods that run on.
            await self.hostports.adopt(adopted)
        self._started = True
        await self.server_source.load()
        port = await self.server.start()
        if self.file_source is not None:
            self.tasks.guard(self.file_source.run, name="file-source")
        if self.http_source is not None:
            self.tasks.guard(self.http_source.run, name="http-source")
        if self.api_source is not None and self.mirror is not None and self.client is not None:
            self.tasks.spawn(self._mark_mirror_synced(), name="mirror-synced")
            self.tasks.guard(self.api_source.run, name="api-source")
            self.tasks.guard(self.mirror.run, name="mirror-pods")
            if self.services is not None:
                self.tasks.guard(self.services.run, name="services-informer")
            self.reporter = reporter = NodeStatusReporter(
                self.client, self.config.node_name, node_ip=self.config.node_ip, hostname=socket.gethostname(),
                kubelet_port=port, runtime_version=self.runtime.version,
                frequency=self.config.node_status_frequency, network_not_ready=self._network_not_ready,
                report_frequency=self.config.node_status_report_frequency, stored_node=self._stored_node,
            )
            self.tasks.guard(reporter.run, name="node-status")
            self.lease = NodeLease(
                self.client, self.config.node_name, lease_duration_seconds=self.config.node_lease_duration_seconds,
                interval=renew_interval(self.config.node_lease_duration_seconds, self.config.node_status_frequency),
                node_uid=lambda: reporter.node_uid,
            )
            self.tasks.guard(self.lease.run, name="node-lease")
            if self.own_node is not None:
                self.tasks.guard(self.own_node.run, name="own-node-informer")
        self.tasks.guard(self._resync_loop, name="resync")

    async def _collect_network_garbage(self) -> None:
        assert self.network is not None
        # Addresses of pods gone while no kubelet watched (any node's: the pool is the host's).
        await self.network.collect_garbage(await self.runtime.pod_uids_on_host())

    def _network_not_ready(self) -> str | None:
        """Why pods cannot be networked yet (the node reports NotReady for it); None when they can."""
        if self.network is None or self.network.configured:
            return None
        return "network is not ready: the node has no pod range (spec.podCIDR) yet"

    def _stored_node(self) -> Any:
        """This node's Node as last seen through its informer (None until synced)."""
        if self.own_node is None or not self.own_node.synced:
            return None
        return self.own_node.get("", self.config.node_name)

    async def _on_own_node(self, event_type: str, node: Any, old: Any) -> None:
        """The Node's podCIDR, once the range allocator set it, configures the pod network;
        pods waiting for an address go on at once, and the node turns Ready."""
        if event_type == "DELETED" or not node.spec.pod_cidr or self.network is None:
            return
        try:
            configured = await self.network.configure(node.spec.pod_cidr)
        except PodNetworkError as error:
            self._log.error("pod_network_setup_failed", pod_cidr=node.spec.pod_cidr, error=str(error))
            return
        if configured:
            await self._collect_network_garbage()
            if self.reporter is not None:
                self.reporter.poke()
            for worker in list(self.workers.values()):
                worker.poke()

    async def _mark_mirror_synced(self) -> None:
        assert self.api_source is not None and self.mirror is not None
        await self.api_source.informer.wait_synced()
        self.mirror.set_synced()

    async def stop(self) -> None:
        """Stops the kubelet; its pods keep running (a new kubelet adopts them)."""
        await self.server.stop()
        await self.tasks.close()
        await asyncio.gather(*(worker.stop() for worker in list(self.workers.values())), return_exceptions=True)
        self.probes.close()
        await self.status.close()
        await self.runtime.close()
        if self.recorder is not None:
            await self.recorder.close()
        if self.client is not None:
            await self.client.close()

    # --- desired pods -> workers -----------------------------------------------------------

    def _on_pods_changed(self, uids: set[str]) -> None:
        for uid in uids:
            pod = self.pod_config.get(uid)
            worker = self.workers.get(uid)
            if pod is not None:
                if worker is None:
                    worker = self._new_worker(uid)
                worker.update(pod)
            elif worker is not None:
                worker.update(None)
            elif self._started and self.cache.for_pod(uid):
                self._new_worker(uid).update(None)
        if self.mirror is not None:
            self.mirror.trigger()

    def _new_worker(self, uid: str) -> PodWorker:
        worker = PodWorker(self.context, uid, self._on_worker_finished, priority=next(self._worker_sequence))
        self.workers[uid] = worker
        worker.start()
        return worker

    def _on_worker_finished(self, uid: str) -> None:
        self.workers.pop(uid, None)
        if self.pod_config.get(uid) is None:
            self.status.forget(uid)

    def _on_pod_containers_changed(self, uid: str) -> None:
        worker = self.workers.get(uid)
        if worker is not None:
            worker.poke()
        elif (
            self._started and self.pod_config.all_ready and self.pod_config.get(uid) is None
            and self.cache.for_pod(uid)
        ):
            self._log.info("orphan_pod_containers_found", pod_uid=uid)
            self._new_worker(uid).update(None)

    def _poke(self, uid: str) -> None:
        worker = self.workers.get(uid)
        if worker is not None:
            worker.poke()

    def _on_mirror_ready(self, uid: str) -> None:
        self.status.resend(uid)

    # --- what a pod's containers are started with --------------------------------------------

    async def service_environment(self, pod: pod_pb2.Pod) -> dict[str, str]:
        """The service variables of the pod's containers (Kubernetes' getServiceEnvVarMap).

        None without an API server. A pod from the API server waits for the
        first list of services, so that a kubelet restart does not start
        containers without them (Kubernetes' rule); static pods take what is known."""
        informer = self.services
        if informer is None:
            return {}
        if not informer.synced and pod_source(pod) == SOURCE_API:
            try:
                await informer.wait_synced(SERVICES_SYNC_TIMEOUT)
            except TimeoutError:
                raise ContainerConfigError(
                    "services have not yet been read at least once, cannot construct envvars"
                ) from None
        namespace = pod.metadata.namespace
        services: list[service_pb2.Service] = informer.in_namespace(namespace)
        if namespace != MASTER_SERVICE_NAMESPACE:
            for name in sorted(MASTER_SERVICES):
                master = informer.get(MASTER_SERVICE_NAMESPACE, name)
                if master is not None:
                    services.append(master)
        return pod_service_environment(services, pod)

    def _host_dns(self) -> PodDns:
        try:
            with open(self.config.resolv_conf) as file:
                text = file.read()
        except OSError as error:
            self._log.warning("host_resolv_conf_unreadable", path=self.config.resolv_conf, error=str(error))
            return PodDns()
        # Read at every pod's start (an edit of the node's file counts from the next pod on), parsed
        # only when it changed: parsing was a tenth of a thousand hollow kubelets' CPU (issue 16).
        if text != self._host_resolv_conf[0]:
            self._host_resolv_conf = (text, parse_resolv_conf(text))
        return self._host_resolv_conf[1]

    async def pod_dns(self, pod: pod_pb2.Pod) -> PodDns:
        """The pod's DNS settings (its resolv.conf), read against the node's resolv.conf now."""
        host = await asyncio.to_thread(self._host_dns)
        dns = pod_dns(pod, cluster_dns=self.config.cluster_dns, cluster_domain=self.config.cluster_domain, host=host)
        if uses_cluster_dns(dns_policy(pod)) and not self.config.cluster_dns and not self._warned_no_cluster_dns:
            self._warned_no_cluster_dns = True
            self._log.warning(
                "cluster_dns_missing",
                detail="kubelet has no --cluster-dns: ClusterFirst pods get the node's resolv.conf (as Default)",
            )
        for warning in dns.warnings:
            self._log.warning("pod_dns_config_limits", pod=f"{pod.metadata.namespace}/{pod.metadata.name}",
                              detail=warning)
        return dns

    # --- housekeeping ------------------------------------------------------------------------

    def request_resync(self) -> None:
        """Relists the runtime and syncs every pod now (Docker's events were lost a while)."""
        self.tasks.spawn(self._resync_once(sync_every_pod=True), name="resync-now")

    async def _resync_loop(self) -> None:
        # The runtime's relist and the orphans' cleanup; each pod worker syncs its pod
        # periodically on its own (NodeContext.resync_interval, jittered).
        while True:
            await asyncio.sleep(self.config.sync_frequency)
            await self._resync_once(sync_every_pod=False)

    async def _resync_once(self, *, sync_every_pod: bool) -> None:
        try:
            await self.runtime.resync()
        except Exception as error:
            self._log.warning("docker_resync_failed", error=str(error))
            return
        if sync_every_pod:
            for worker in list(self.workers.values()):
                worker.poke()
        if self.pod_config.all_ready:
            await self._cleanup_orphans()

    def _cleanup_orphans_soon(self) -> None:
        if self._started and self.pod_config.all_ready:
            self.tasks.spawn(self._cleanup_orphans(), name="orphans")

    async def _cleanup_orphans(self) -> None:
        """Containers and pod directories of pods that no source wants."""
        desired = {pod.metadata.uid for pod in self.pod_config.pods()}
        for uid in self.cache.pod_uids() - desired - set(self.workers):
            if uid:
                self._log.info("orphan_pod_removing", pod_uid=uid)
                self._new_worker(uid).update(None)
        known = desired | set(self.workers) | self.cache.pod_uids()
        orphaned = await asyncio.to_thread(self.volumes.orphaned_pod_dirs, known)
        # Again after the listing: a pod may have got a worker while it ran.
        for uid in set(orphaned) - desired - set(self.workers) - self.cache.pod_uids():
            self._log.info("orphan_pod_directory_removing", pod_uid=uid)
            await self.volumes.cleanup(uid)

    # --- queries (the gRPC server) -------------------------------------------------------------

    def list_pods(self) -> list[pod_pb2.Pod]:
        pods = []
        for pod in sorted(self.pod_config.pods(), key=lambda p: (p.metadata.namespace, p.metadata.name)):
            copy = pod_pb2.Pod()
            copy.CopyFrom(pod)
            status = self.status.get(pod.metadata.uid)
            if status is not None:
                copy.status.CopyFrom(status)
            pods.append(copy)
        return pods

    def find_pod(self, namespace: str, name: str) -> pod_pb2.Pod | None:
        """A pod by name; a static pod also by the name in its manifest."""
        return self.pod_config.find(namespace, name) or self.pod_config.find(
            namespace, static_pod_name(name, self.config.node_name)
        )

    def latest_container(self, uid: str, container_name: str) -> ContainerInfo | None:
        attempts = [info for info in self.cache.for_pod(uid) if info.container_name == container_name]
        return attempts[-1] if attempts else None

    def is_api_pod(self, pod: pod_pb2.Pod) -> bool:
        return pod_source(pod) == SOURCE_API
