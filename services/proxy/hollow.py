"""Hollow proxies (Kubernetes' kubemark): the real proxy with a data path that programs nothing.

`RecordingDataPath` is the nftables data path (nftproxier.NftProxier: the sync
runner's coalescing, adoption and incremental plans, the rules of every
service computed by nftables.py) whose transactions are recorded instead of
run by `nft`; the probe finds its table always intact, and the host is not
touched. `HollowProxy` is the proxy's informer wiring (main.serve) around one,
without the Status service and the pod routes. tools/hollownodes.py runs one
beside each hollow kubelet.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from services.common.client import ApiClient
from services.common.log import get_logger
from services.common.resources import ENDPOINTS, SERVICES
from services.common.runtime import TaskGroup
from services.common.runtime.informer import Informer

from .nftproxier import NftOptions, NftProxier

log = get_logger(module="proxy.hollow")


@dataclass
class Recorded:
    """What a recording data path would have programmed."""

    transactions: int = 0
    bytes: int = 0
    last_script: str = ""


class RecordingDataPath(NftProxier):
    """The nftables data path, with each transaction recorded rather than sent to the kernel."""

    mode = "recording"

    def __init__(self, options: NftOptions, *, keep_last: bool = False) -> None:
        options.set_route_localnet = False
        options.clean_other_modes = False
        self.recorded = Recorded()
        self._keep_last = keep_last
        super().__init__(options, nft=self._record)

    async def _record(self, script: str) -> None:
        self.recorded.transactions += 1
        self.recorded.bytes += len(script)
        if self._keep_last:
            self.recorded.last_script = script

    async def _intact(self) -> bool:
        return True

    def _prepare_host(self) -> None:
        pass

    async def _clean_other_modes(self) -> None:
        pass

    async def shutdown(self, grace: float) -> None:
        pass

    def programmed_services(self) -> int:
        """Services whose rules the last transactions hold."""
        return len(self.installed.by_service)


class HollowProxy:
    """One node's proxy: the services and endpoints informers feeding a RecordingDataPath."""

    def __init__(self, client: ApiClient, node_name: str, options: NftOptions | None = None) -> None:
        self.client = client
        self.node_name = node_name
        self.data_path = RecordingDataPath(options or NftOptions(node_name=node_name))
        self.endpoints = Informer(client, ENDPOINTS)
        self.services = Informer(client, SERVICES)
        self.endpoints.add_handler(self.data_path.on_endpoints_event)
        self.services.add_handler(self.data_path.on_service_event)
        self.tasks = TaskGroup(f"hollow-proxy-{node_name}")

    async def start(self) -> None:
        async def run_services() -> None:
            # As the proxy does: services after the endpoints' snapshot.
            await self.endpoints.wait_synced()
            await self.services.run()

        async def report_synced() -> None:
            await asyncio.gather(self.endpoints.wait_synced(), self.services.wait_synced())
            self.data_path.mark_synced()

        self.tasks.guard(self.endpoints.run, name="informer-endpoints")
        self.tasks.guard(run_services, name="informer-services")
        self.tasks.guard(self.data_path.run, name="data-path")
        self.tasks.spawn(report_synced(), name="report-synced")

    async def stop(self) -> None:
        await self.tasks.close()
        await self.data_path.shutdown(0)
        await self.client.close()
