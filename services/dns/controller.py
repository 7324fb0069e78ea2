"""Keeps the record index in step with the API, through the shared services and endpoints informers.

No work queue: an event recomputes one service's records from the informers' caches (a pure
`service_records` call) and swaps them into the index in one synchronous step, so a query never
sees half an update and the index trails the watch by no more than the handler's own run. An
Endpoints event matters only to a headless service (a cluster IP's records never depend on its
endpoints), so endpoint churn costs ClusterIP services nothing. The informers report every
change, deletions missed across a re-list included, so the index needs no periodic resync.

`run` (started by the manager once both informers hold their first snapshot) marks the index
ready: until then cluster names get SERVFAIL rather than an NXDOMAIN resolvers would cache.
"""

from __future__ import annotations

import asyncio

from kybernetes.v1 import endpoints_pb2, service_pb2
from services.common.log import get_logger
from services.common.resources import ENDPOINTS, SERVICES
from services.common.runtime import Manager
from services.common.runtime.informer import Informer

from .records import RecordIndex, is_headless, service_records

log = get_logger(controller="dns")


class DnsController:
    name = "dns"

    def __init__(self, index: RecordIndex, *, endpoint_pod_names: bool = False) -> None:
        self.index = index
        self.endpoint_pod_names = endpoint_pod_names

    def setup(self, manager: Manager) -> None:
        self.services: Informer = manager.informer(SERVICES)
        self.endpoints: Informer = manager.informer(ENDPOINTS)
        self.services.add_handler(self._on_service)
        self.endpoints.add_handler(self._on_endpoints)

    def _on_service(self, event_type: str, service: service_pb2.Service, old: service_pb2.Service | None) -> None:
        self.sync(service.metadata.namespace, service.metadata.name)

    def _on_endpoints(
        self, event_type: str, endpoints: endpoints_pb2.Endpoints, old: endpoints_pb2.Endpoints | None
    ) -> None:
        service = self.services.get(endpoints.metadata.namespace, endpoints.metadata.name)
        if service is not None and is_headless(service):
            self.sync(endpoints.metadata.namespace, endpoints.metadata.name)

    def sync(self, namespace: str, name: str) -> None:
        """Recomputes one service's records from the caches (the informers update theirs before
        calling handlers, so a deleted object is already gone here)."""
        service = self.services.get(namespace, name)
        if service is None:
            changed = self.index.remove((namespace, name))
        else:
            records = service_records(
                service, self.endpoints.get(namespace, name), self.index.zone,
                endpoint_pod_names=self.endpoint_pod_names,
            )
            changed = self.index.replace((namespace, name), records)
        if changed:
            log.debug("dns_records_updated", service=f"{namespace}/{name}", serial=self.index.serial)

    async def run(self) -> None:
        if not self.index.ready:
            self.index.ready = True
            log.info("dns_ready", services=len(self.services), with_records=len(self.index))
        await asyncio.Event().wait()  # the handlers do the work; the manager cancels this at stop
