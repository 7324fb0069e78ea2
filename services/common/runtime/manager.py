"""The controller manager: one per process, owning what its control loops share.

A process that runs control loops (the API server's controllers, the
replicator, and the ones to come) builds one Manager around its API client
and adds its controllers. Each controller, in `setup`, asks the manager for
the informers it needs and registers its event handlers; controllers that ask
for the same (kind, namespace, selectors) share one informer, so one watch and
one cache per kind serve them all (client-go's SharedInformerFactory). `run`
then starts every informer, waits until all have their first snapshot, and
starts each controller's `run` as a guarded task: a controller that crashes is
logged and restarted with back-off, its informers and caches untouched
(controller-runtime's Manager). Cancelling `run` stops everything.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from services.common.client import ApiClient
from .informer import Informer
from services.common.log import get_logger
from services.common.resources import Kind

from .tasks import TaskGroup

InformerKey = tuple[str, str, str, str]  # (kind, namespace, label selector, field selector)


class Controller(Protocol):
    """A control loop on the shared runtime."""

    name: str

    def setup(self, manager: Manager) -> None:
        """Takes informers from the manager and registers event handlers; no I/O."""

    async def run(self) -> None:
        """Runs once every informer is synced, until cancelled (workers, periodic checks)."""


class Manager:
    def __init__(self, client: ApiClient, *, name: str) -> None:
        self.client = client
        self.name = name
        self.tasks = TaskGroup(name)
        self._informers: dict[InformerKey, Informer] = {}
        self._controllers: list[Controller] = []
        self._synced = asyncio.Event()
        self._log = get_logger(manager=name)

    def informer(
        self, kind: Kind, *, namespace: str = "", label_selector: str = "", field_selector: str = ""
    ) -> Informer:
        """The shared informer for this kind and selection (made on first request)."""
        key = (kind.name, namespace, label_selector, field_selector)
        informer = self._informers.get(key)
        if informer is None:
            if self._synced.is_set():
                raise RuntimeError("informers must be requested in setup(), before the manager runs")
            informer = Informer(
                self.client, kind, namespace=namespace, label_selector=label_selector, field_selector=field_selector
            )
            self._informers[key] = informer
        return informer

    def use_informer(self, informer: Informer) -> None:
        """Shares an informer made elsewhere (e.g. a test's deliberately lagging one) as if
        the manager had made it; later requests for its kind and selection get it."""
        key = (informer.kind.name, informer.namespace, informer.label_selector, informer.field_selector)
        if key in self._informers:
            raise RuntimeError(f"an informer for {informer.kind.plural} is already in use")
        self._informers[key] = informer

    def add(self, controller: Controller) -> None:
        controller.setup(self)
        self._controllers.append(controller)

    @property
    def controllers(self) -> list[Controller]:
        return list(self._controllers)

    async def wait_synced(self) -> None:
        await self._synced.wait()

    async def run(self) -> None:
        """Starts informers, waits for their snapshots, runs the controllers; until cancelled."""
        try:
            for informer in self._informers.values():
                self.tasks.guard(informer.run, name=f"informer-{informer.kind.plural}")
            await asyncio.gather(*(informer.wait_synced() for informer in self._informers.values()))
            self._synced.set()
            self._log.info(
                "controllers_synced",
                controllers=",".join(c.name for c in self._controllers),
                informers=",".join(sorted(i.kind.plural for i in self._informers.values())),
            )
            for controller in self._controllers:
                self.tasks.guard(controller.run, name=f"controller-{controller.name}")
            await self.tasks.wait()
        finally:
            await self.tasks.close()
