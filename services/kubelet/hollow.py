"""Hollow kubelets (Kubernetes' kubemark): the real kubelet on stand-ins for the machine.

A HollowKubelet is the Kubelet class itself — its sources, pod workers, status
manager, mirror pods, node heartbeat and resync — with the parts that touch the
host swapped for ones that touch nothing:

- the container runtime: fakeruntime.FakeRuntime ("runs" containers at once, in memory);
- the pod network: HollowPodNetwork, addresses from the Node's podCIDR handed out by an
  in-memory allocator (no bridge, no veth, no iptables, no address files);
- host ports: RecordingHostPorts, the manager's bookkeeping (a port another pod of the node
  holds fails the sandbox, as it would) with no socket held and the table only recorded;
- probes: exec probes run on the fake runtime (and pass); TCP and HTTP ones pass without
  connecting (the pod addresses lead nowhere);
- the kubelet's own API: off unless asked for (`serve`), then plaintext on a free port.

So a thousand of them fit in one process (tools/hollownodes.py runs N on one
asyncio loop), each with its own API connection and node identity, and what
they load the control plane with is what real kubelets would send. Pod
volumes are real directories under the hollow node's root dir.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Sequence

from kybernetes.v1 import pod_pb2

from .fakeruntime import FakeRuntime
from .hostports import HostPortError, HostPortManager, PortMapping, _Held, open_failure, resolve
from .kubelet import Kubelet, KubeletConfig
from .podnetwork import DEFAULT_POD_CIDR, AddressPool, Allocation, PodNetwork, PodNetworkError, parse_pod_cidr
from .probes import ProbeManager
from .runtime import ContainerRuntime
from .server import KubeletServer

class MemoryAddressPool(AddressPool):
    """The pod range's addresses, handed out in memory (this node's alone: no files, no sharing)."""

    def __init__(self, directory: Path, network: ipaddress.IPv4Network, node: str) -> None:
        super().__init__(directory, network, node)
        self._own: dict[str, str] = {}
        self._taken: set[str] = set()

    def load(self) -> dict[str, str]:
        return self._own

    def allocate(self, pod_uid: str) -> str:
        if pod_uid in self._own:
            return self._own[pod_uid]
        first = int(self.network.network_address)
        for step in range(1, self._size + 1):  # the last one handed out comes last
            offset = (self._cursor + step) % self._size
            address = ipaddress.IPv4Address(first + offset)
            text = str(address)
            if address == self.gateway or text in self._taken:
                continue
            if address in (self.network.network_address, self.network.broadcast_address):
                continue
            self._cursor = offset
            self._taken.add(text)
            self._own[pod_uid] = text
            return text
        raise PodNetworkError(f"pod network {self.network} has no free address")

    def allocations(self) -> list[Allocation]:
        return [Allocation(address, self.node, uid) for uid, address in self._own.items()]

    def release(self, pod_uid: str) -> None:
        address = self._own.pop(pod_uid, None)
        if address is not None:
            self._taken.discard(address)

    def release_unowned(self, live_pod_uids: set[str], min_age: float = 0.0) -> list[Allocation]:
        freed = [allocation for allocation in self.allocations() if allocation.pod_uid not in live_pod_uids]
        for allocation in freed:
            self.release(allocation.pod_uid)
        return freed


class HollowPodNetwork(PodNetwork):
    """The pod network's bookkeeping with nothing in the kernel: the range (the Node's
    podCIDR), an address per pod, and which sandboxes are "wired"."""

    def __init__(self, node: str, cidr: str | None = None) -> None:
        super().__init__(node, None, state_dir="/nonexistent")
        self._attached: set[str] = set()
        if cidr is not None:
            self._pool = self._new_pool(cidr, "--pod-cidr")

    def _new_pool(self, cidr: str, source: str) -> AddressPool:
        return MemoryAddressPool(Path(self.state_dir), parse_pod_cidr(cidr, source), self.node)

    async def setup(self) -> None:
        self._log.info("hollow_pod_network_ready", pod_cidr=str(self.network))

    async def address_for(self, pod_uid: str) -> str:
        return self.pool.allocate(pod_uid)

    async def release(self, pod_uid: str) -> None:
        if self._pool is not None:
            self._pool.release(pod_uid)

    def attached(self, sandbox_id: str) -> bool:
        return sandbox_id in self._attached

    async def attach(self, sandbox_id: str, pid: int, address: str) -> None:
        self._attached.add(sandbox_id)

    async def write_pod_files(
        self, pod_dir: str, pod_ip: str, hostname: str, resolv_conf_text: str | None = None
    ) -> dict[str, str]:
        return {}  # nothing reads them: no container mounts anything

    async def collect_garbage(self, live_pod_uids: set[str]) -> None:
        if self._pool is not None:
            self._pool.release_unowned(live_pod_uids)


class RecordingHostPorts(HostPortManager):
    """The node's host ports as bookkeeping: conflicts between its pods are refused, the table
    is computed and recorded, and no socket is opened (hollow nodes share the host's ports)."""

    def __init__(self, node: str, node_ip: str) -> None:
        super().__init__(node, node_ip, "hollow", nft=self._record, set_route_localnet=False)
        self.transactions = 0

    async def _record(self, script: str) -> None:
        self.transactions += 1

    async def reserve(self, uid: str, pod: str, mappings: Sequence[PortMapping]) -> None:
        wanted = {resolve(mapping, self.node_ip) for mapping in mappings}
        stale = [host for host, held in self._held.items() if held.uid == uid and host not in wanted]
        if stale:
            await self._unpublish(uid, stale)
        for host in sorted(wanted):
            holder = next((other for where, other in self._held.items() if other.uid != uid and where.conflicts(host)),
                          None)
            if holder is not None:
                raise HostPortError(open_failure(host, pod, "address already in use"))
        for host in sorted(wanted):
            if host not in self._held:
                self._hold(host, _Held(uid, pod, None))


class PassingProbes(ProbeManager):
    """Probes on their real schedule (initial delay, period, thresholds); exec probes run on the
    fake runtime, TCP and HTTP ones pass without connecting."""

    async def _try(
        self, probe: pod_pb2.Probe, container: pod_pb2.Container, container_id: str, pod_ip: str, timeout: float
    ) -> tuple[bool, str]:
        if probe.HasField("exec"):
            return await super()._try(probe, container, container_id, pod_ip, timeout)
        return True, ""


class NoKubeletServer(KubeletServer):
    """The kubelet API left off: no listener (the Node reports port 0)."""

    def __init__(self, kubelet: Kubelet) -> None:
        # Not KubeletServer's __init__: that makes a gRPC server.
        self.listen = ""
        self.serving = None
        self.port = 0

    async def start(self) -> int:
        return 0

    async def stop(self, grace: float = 2.0) -> None:
        pass


class HollowKubelet(Kubelet):
    """The kubelet on a fake runtime and a pod network of bookkeeping only (see the module)."""

    def __init__(self, config: KubeletConfig, *, serve: bool = False, runtime_latency: float = 0.0) -> None:
        self._serve = serve
        self._runtime_latency = runtime_latency
        os.makedirs(config.root_dir, exist_ok=True)
        super().__init__(config)

    @property
    def fake_runtime(self) -> FakeRuntime:
        assert isinstance(self.runtime, FakeRuntime)
        return self.runtime

    def _make_runtime(self) -> ContainerRuntime:
        return FakeRuntime(self.config.node_name, self.cache, latency=self._runtime_latency)

    def _make_probes(self) -> ProbeManager:
        return PassingProbes(self.runtime, self._poke)

    def _make_network(self, with_api_server: bool) -> PodNetwork | None:
        # As the real one: with an API server, the Node's podCIDR (once allocated).
        cidr = self.config.pod_cidr or (None if with_api_server else DEFAULT_POD_CIDR)
        return HollowPodNetwork(self.config.node_name, cidr)

    def _make_hostports(self) -> HostPortManager | None:
        return RecordingHostPorts(self.config.node_name, self.config.node_ip)

    def _make_server(self) -> KubeletServer:
        if self._serve:
            return KubeletServer(self, self.config.listen, self.config.serving)
        return NoKubeletServer(self)


def hollow_config(node_name: str, root_dir: str, **overrides: object) -> KubeletConfig:
    """A hollow node's configuration: the real defaults, its own root dir, the kubelet API on
    a free loopback port (when served), plaintext."""
    config = KubeletConfig(node_name=node_name, root_dir=root_dir, listen="127.0.0.1:0")
    for name, value in overrides.items():
        if not hasattr(config, name):
            raise TypeError(f"KubeletConfig has no field {name!r}")
        setattr(config, name, value)
    return config
