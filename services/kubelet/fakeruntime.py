"""A container runtime with no containers: a hollow node's (hollow.py) stand-in for Docker.

It implements runtime.ContainerRuntime as DockerRuntime does, and records every
change in the same ContainerCache, which is where the pod workers, the status
manager and the kubelet's loops read Docker's state from; so the kubelet above
it runs unchanged. A container is made `created`, then `running` when started,
at once (after `latency` seconds, 0 by default), and runs until it is stopped:
SIGTERM is honoured at once (exit code 0; with no grace period, SIGKILL: 137).
`kill()` makes one die as a crash would (the kubelet restarts it per the pod's
restartPolicy). Exec probes succeed, logs are empty, every image is present and
runs as root.

Nothing outlives the process: a restarted hollow node starts with no containers.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from dataclasses import replace
from typing import AsyncIterator, Callable

from .containers import CREATED, EXITED, RUNNING, ContainerCache, ContainerInfo
from .dockerspec import CreateRequest
from .naming import LABEL_POD_UID
from .runtime import RuntimeCallError

FAKE_RUNTIME_VERSION = "hollow"
# Exit codes of a container stopped by SIGTERM (as the pause image answers it) and by SIGKILL.
EXIT_TERMINATED = 0
EXIT_KILLED = 137

_pids = itertools.count(100_000)


class FakeRuntime:
    """This node's containers, in memory; every change also goes to the cache."""

    def __init__(self, node: str, cache: ContainerCache, *, latency: float = 0.0) -> None:
        self.node = node
        self.cache = cache
        self.version = FAKE_RUNTIME_VERSION
        self.latency = latency
        self._containers: dict[str, ContainerInfo] = {}
        self._names: dict[str, str] = {}  # name -> id
        self.calls: dict[str, int] = {}  # counts by verb, for benches and tests

    async def _call(self, verb: str) -> None:
        self.calls[verb] = self.calls.get(verb, 0) + 1
        # A call is a suspension point, as Docker's are: other pods' workers run meanwhile.
        await asyncio.sleep(self.latency)

    def _record(self, info: ContainerInfo) -> ContainerInfo:
        self._containers[info.id] = info
        self._names[info.name] = info.id
        return self.cache.put(info)

    # --- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        await self._call("version")

    def start_events(self, on_reconnected: Callable[[], None] | None = None) -> None:
        """Nothing to follow: every change is made here and recorded as it is made."""

    async def close(self) -> None:
        pass

    # --- reading ---------------------------------------------------------------------------

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        await self._call("inspect")
        info = self._containers.get(container_id)
        if info is None:
            self.cache.remove(container_id)
            return None
        return self.cache.put(info)

    async def list_all(self) -> list[ContainerInfo]:
        await self._call("list")
        return [self.cache.put(info) for info in list(self._containers.values())]

    async def image_user(self, image: str) -> str:
        await self._call("inspect_image")
        return ""

    async def pod_uids_on_host(self) -> set[str]:
        return {info.labels.get(LABEL_POD_UID, "") for info in self._containers.values()} - {""}

    async def resync(self) -> None:
        await self._call("list")
        for cached in self.cache.all():
            if cached.id not in self._containers:
                self.cache.remove(cached.id)
        for info in list(self._containers.values()):
            self.cache.put(info)

    # --- changing --------------------------------------------------------------------------

    async def create(self, request: CreateRequest) -> ContainerInfo:
        await self._call("create")
        if request.name in self._names:
            existing = self._containers[self._names[request.name]]
            self.cache.put(existing)
            raise RuntimeCallError(f'Conflict. The container name "/{request.name}" is already in use')
        return self._record(ContainerInfo(
            id=secrets.token_hex(32), name=request.name, labels=dict(request.labels), state=CREATED,
            created_at=time.time(), image=request.image, image_id=f"sha256:{request.image}",
            sandbox_id=request.sandbox_id,
        ))

    async def start(self, info: ContainerInfo) -> ContainerInfo:
        await self._call("start")
        current = self._containers.get(info.id)
        if current is None:
            self.cache.remove(info.id)
            raise RuntimeCallError(f"container {info.name} vanished before it started")
        if current.state != CREATED:
            return self.cache.put(current)
        return self._record(replace(current, state=RUNNING, started_at=time.time(), pid=next(_pids)))

    async def stop(self, info: ContainerInfo, grace_seconds: float) -> None:
        await self._call("kill")
        self._exit(info.id, EXIT_TERMINATED if grace_seconds > 0 else EXIT_KILLED)

    def kill(self, container_id: str, exit_code: int = EXIT_KILLED) -> bool:
        """The container dies now, as a crash or an OOM kill would; False if it was not running."""
        return self._exit(container_id, exit_code)

    def _exit(self, container_id: str, exit_code: int) -> bool:
        current = self._containers.get(container_id)
        if current is None or current.state != RUNNING:
            return False
        self._record(replace(current, state=EXITED, exit_code=exit_code, finished_at=time.time(), pid=0))
        return True

    async def remove(self, info: ContainerInfo) -> None:
        await self._call("remove")
        current = self._containers.pop(info.id, None)
        if current is not None and self._names.get(current.name) == info.id:
            del self._names[current.name]
        self.cache.remove(info.id)

    async def exec(self, container_id: str, command: list[str], timeout: float) -> tuple[int, bytes]:
        await self._call("exec")
        info = self._containers.get(container_id)
        if info is None or info.state != RUNNING:
            raise RuntimeCallError(f"container {container_id[:12]} is not running")
        return 0, b""

    async def logs(
        self, container_id: str, *, follow: bool, tail_lines: int, timestamps: bool
    ) -> AsyncIterator[bytes]:
        await self._call("logs")
        if container_id not in self._containers:
            raise RuntimeCallError("the container is gone")
        return
        yield b""  # an async generator with nothing to say

    # --- reading for tests and benches -------------------------------------------------------

    def containers(self) -> list[ContainerInfo]:
        return list(self._containers.values())

    def running(self) -> int:
        return sum(1 for info in self._containers.values() if info.state == RUNNING)
