"""Docker through its SDK: create, start, stop, remove, inspect, list, exec,
logs and the event stream, for this node's containers only.

Every blocking SDK call runs in a bounded thread pool (run_in_executor), so
the event loop never blocks and Docker sees a few calls at a time, which is
where it is fastest. Long waits (a stop's grace period, a log stream, the
event stream) never hold a pool thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, AsyncIterator, Callable, Protocol

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from services.common.log import get_logger

from .containers import CREATED, EXITED, RUNNING, ContainerCache, ContainerInfo, info_from_inspect, summary_state
from .dockerspec import CreateRequest
from .naming import LABEL_POD_UID, node_filter

log = get_logger(module="kubelet.runtime")

# Events that say nothing about a container's lifecycle (probes' execs, attach...).
_IGNORED_EVENT_PREFIXES = (
    "exec_", "attach", "detach", "resize", "top", "export", "commit", "copy", "archive", "extract",
)
# How long to wait for a container to be gone after SIGKILL before asking Docker.
_KILL_WAIT_SECONDS = 10.0


# The priority of the Docker calls made in the current task: lower goes first.
# Pod workers set it to their pod's arrival order, so that when calls queue up
# (a burst of new pods) the earlier pods' calls run first and those pods come up
# one after another, instead of every pod waiting for the last one's turn.
# Calls outside a pod (listing, inspecting after an event) go first.
call_priority: contextvars.ContextVar[int] = contextvars.ContextVar("docker_call_priority", default=0)


class ImageMissingError(Exception):
    """The image is not on the node; the kubelet never pulls."""


class RuntimeCallError(Exception):
    """Docker refused a call; the message is Docker's explanation."""


class ContainerRuntime(Protocol):
    """What the kubelet needs of a container runtime: DockerRuntime, or a hollow node's
    FakeRuntime (fakeruntime.py). Each records what it learns and does in `cache`."""

    node: str
    cache: ContainerCache
    version: str

    async def connect(self) -> None: ...

    def start_events(self, on_reconnected: Callable[[], None] | None = None) -> None: ...

    async def close(self) -> None: ...

    async def inspect(self, container_id: str) -> ContainerInfo | None: ...

    async def list_all(self) -> list[ContainerInfo]: ...

    async def image_user(self, image: str) -> str: ...

    async def pod_uids_on_host(self) -> set[str]: ...

    async def resync(self) -> None: ...

    async def create(self, request: CreateRequest) -> ContainerInfo: ...

    async def start(self, info: ContainerInfo) -> ContainerInfo: ...

    async def stop(self, info: ContainerInfo, grace_seconds: float) -> None: ...

    async def remove(self, info: ContainerInfo) -> None: ...

    async def exec(self, container_id: str, command: list[str], timeout: float) -> tuple[int, bytes]: ...

    def logs(
        self, container_id: str, *, follow: bool, tail_lines: int, timestamps: bool
    ) -> AsyncIterator[bytes]: ...


def _explain(error: APIError) -> str:
    explanation = error.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or error)


class DockerRuntime:
    def __init__(
        self,
        node: str,
        cache: ContainerCache,
        *,
        concurrency: int = 4,
        probe_concurrency: int = 4,
        base_url: str | None = None,
    ) -> None:
        self.node = node
        self.cache = cache
        self._base_url = base_url
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="docker")
        self._concurrency = concurrency
        self._in_flight = 0
        self._queued: list[tuple[int, int, asyncio.Future]] = []
        self._sequence = itertools.count()
        # Probes' execs can hang until their command ends; they get their own
        # threads so they never delay starting or stopping pods.
        self._exec_executor = ThreadPoolExecutor(max_workers=probe_concurrency, thread_name_prefix="docker-exec")
        self._pool_size = concurrency + probe_concurrency + 2
        self._api: docker.APIClient = None  # made by connect()
        self._filters = node_filter(node)
        # Docker names of containers we are creating right now: their `create`
        # events need no inspect.
        self._creating: set[str] = set()
        self._refreshing: dict[str, bool] = {}
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events_thread: threading.Thread | None = None
        self._events_stream: Any = None
        self._stopping = threading.Event()
        self._on_events_reconnected: Callable[[], None] | None = None
        self.version = ""

    def _make_client(self, max_pool_size: int = 4, version: str = "auto") -> docker.APIClient:
        """A client of its own for each long stream; blocking when version is "auto"."""
        if self._base_url:
            return docker.APIClient(base_url=self._base_url, version=version, max_pool_size=max_pool_size)
        return docker.from_env(max_pool_size=max_pool_size, version=version).api

    def _stream_client(self) -> docker.APIClient:
        return self._make_client(max_pool_size=1, version=self._api.api_version)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs a blocking SDK call on the pool, at most `concurrency` at a time,
        queued calls in call_priority order."""
        loop = asyncio.get_running_loop()
        if self._in_flight >= self._concurrency:
            turn = loop.create_future()
            heapq.heappush(self._queued, (call_priority.get(), next(self._sequence), turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release()  # we were handed a slot we will not use
                raise
        else:
            self._in_flight += 1
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        finally:
            self._release()

    def _release(self) -> None:
        """Hands the slot to the first queued call, or frees it."""
        while self._queued:
            _, _, turn = heapq.heappop(self._queued)
            if not turn.done():
                turn.set_result(None)
                return
        self._in_flight -= 1

    # --- lifecycle -----------------------------------------------------------------

    async def connect(self) -> None:
        """Makes the client (it asks the daemon its API version) and reads Docker's version."""
        self._api = await asyncio.to_thread(self._make_client, self._pool_size)
        info = await self.call(self._api.version)
        self.version = info.get("Version", "")

    def start_events(self, on_reconnected: Callable[[], None] | None = None) -> None:
        """Follows Docker's event stream for this node's containers in a thread."""
        self._loop = asyncio.get_running_loop()
        self._on_events_reconnected = on_reconnected
        self._events_thread = threading.Thread(target=self._events_loop, name="docker-events", daemon=True)
        self._events_thread.start()

    async def close(self) -> None:
        self._stopping.set()
        stream = self._events_stream
        if stream is not None:
            try:
                stream.close()
            except Exception:
                pass
        for task in list(self._tasks):
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._exec_executor.shutdown(wait=False, cancel_futures=True)

    # --- reading -------------------------------------------------------------------

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        """Asks Docker about one container and records the answer; None when gone."""
        try:
            data = await self.call(self._api.inspect_container, container_id)
        except NotFound:
            self.cache.remove(container_id)
            return None
        return self.cache.put(info_from_inspect(data))

    async def list_all(self) -> list[ContainerInfo]:
        """Every container of this node, inspected (used once at start-up to adopt)."""
        summaries = await self.call(self._api.containers, all=True, filters=self._filters)
        infos = await asyncio.gather(*(self.inspect(summary["Id"]) for summary in summaries))
        return [info for info in infos if info is not None]

    async def image_user(self, image: str) -> str:
        """The user an image runs as (its Config.User: "", "name", "uid" or
        "uid:gid"), for the runAsNonRoot check; ImageMissingError when the image is not here."""
        try:
            data = await self.call(self._api.inspect_image, image)
        except NotFound:  # ImageNotFound too
            raise ImageMissingError(image) from None
        return str((data.get("Config") or {}).get("User") or "")

    async def pod_uids_on_host(self) -> set[str]:
        """The pods with a container on this Docker daemon, whatever their node."""
        summaries = await self.call(self._api.containers, all=True, filters={"label": [LABEL_POD_UID]})
        return {(summary.get("Labels") or {}).get(LABEL_POD_UID, "") for summary in summaries} - {""}

    async def resync(self) -> None:
        """Catches up with anything the event stream missed: one list call, and
        an inspect only for containers whose state differs from what we hold."""
        listed_at = time.time()
        summaries = await self.call(self._api.containers, all=True, filters=self._filters)
        seen: set[str] = set()
        stale: list[str] = []
        for summary in summaries:
            container_id = summary["Id"]
            seen.add(container_id)
            cached = self.cache.get(container_id)
            if cached is None:
                stale.append(container_id)
                continue
            state = summary_state(summary)
            if state != cached.state and not (state == CREATED and cached.state == EXITED):
                stale.append(container_id)
        for cached in self.cache.all():
            if cached.id not in seen and cached.created_at < listed_at:
                self.cache.remove(cached.id)
        await asyncio.gather(*(self.inspect(container_id) for container_id in stale))

    # --- changing ------------------------------------------------------------------

    async def create(self, request: CreateRequest) -> ContainerInfo:
        self._creating.add(request.name)
        try:
            host_config = self._api.create_host_config(**request.host_config_kwargs)
            kwargs = {key: value for key, value in request.container_kwargs.items() if value is not None}
            try:
                response = await self.call(
                    self._api.create_container,
                    request.image,
                    name=request.name,
                    labels=request.labels,
                    host_config=host_config,
                    **kwargs,
                )
            except ImageNotFound:
                raise ImageMissingError(request.image) from None
            except APIError as error:
                if error.status_code == 409:
                    # A container of that name exists: left by a crash between
                    # create and record. Learn about it; the next sync decides.
                    await self._adopt_by_name(request.name)
                raise RuntimeCallError(_explain(error)) from None
        finally:
            self._creating.discard(request.name)
        return self.cache.put(ContainerInfo(
            id=response["Id"], name=request.name, labels=dict(request.labels), state=CREATED,
            created_at=time.time(), image=request.image, sandbox_id=request.sandbox_id,
        ))

    async def _adopt_by_name(self, name: str) -> None:
        try:
            data = await self.call(self._api.inspect_container, name)
        except NotFound:
            return
        info = info_from_inspect(data)
        if info.labels.get("io.kybernetes.node") == self.node:
            self.cache.put(info)

    async def start(self, info: ContainerInfo) -> ContainerInfo:
        """Starts a created container. A start Docker refuses (bad command, port
        taken) leaves the container exited with Docker's error and exit code."""
        try:
            await self.call(self._api.start, info.id)
        except NotFound:
            self.cache.remove(info.id)
            raise RuntimeCallError(f"container {info.name} vanished before it started") from None
        except APIError:
            refreshed = await self.inspect(info.id)
            if refreshed is None:
                raise RuntimeCallError(f"container {info.name} vanished before it started") from None
            return refreshed
        return self.cache.put(replace(info, state=RUNNING, started_at=time.time()))

    async def stop(self, info: ContainerInfo, grace_seconds: float) -> None:
        """SIGTERM, up to grace_seconds for the container to exit, then SIGKILL.

        The wait is on the event stream, not on a Docker call, so a long grace
        period holds no thread."""
        current = self.cache.get(info.id) or info
        if current.state != RUNNING:
            return
        if grace_seconds > 0:
            if not await self._signal(info, "SIGTERM"):
                return
            if await self.cache.wait_exited(info.id, grace_seconds):
                return
        if not await self._signal(info, "SIGKILL"):
            return
        if not await self.cache.wait_exited(info.id, _KILL_WAIT_SECONDS):
            await self.inspect(info.id)

    async def _signal(self, info: ContainerInfo, signal: str) -> bool:
        """Sends a signal; False when the container is not running any more."""
        try:
            await self.call(self._api.kill, info.id, signal=signal)
            return True
        except NotFound:
            self.cache.remove(info.id)
            return False
        except APIError as error:
            if error.status_code == 409:  # not running
                await self.inspect(info.id)
                return False
            raise RuntimeCallError(_explain(error)) from None

    async def remove(self, info: ContainerInfo) -> None:
        try:
            await self.call(self._api.remove_container, info.id, force=True)
        except NotFound:
            pass
        except APIError as error:
            if error.status_code != 409:  # 409: removal already in progress
                raise RuntimeCallError(_explain(error)) from None
        self.cache.remove(info.id)

    async def exec(self, container_id: str, command: list[str], timeout: float) -> tuple[int, bytes]:
        """Runs a command in a container (exec probes); the exit code and output."""

        def run() -> tuple[int, bytes]:
            created = self._api.exec_create(container_id, command, stdout=True, stderr=True)
            output = self._api.exec_start(created["Id"])
            code = self._api.exec_inspect(created["Id"]).get("ExitCode")
            return (code if code is not None else -1, output or b"")

        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._exec_executor, run), timeout)

    async def logs(
        self, container_id: str, *, follow: bool, tail_lines: int, timestamps: bool
    ) -> AsyncIterator[bytes]:
        """A container's output, from a thread of its own feeding an asyncio queue."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=256)
        stream_holder: list[Any] = []
        closed = threading.Event()

        def put(item: bytes | BaseException | None) -> None:
            if not closed.is_set():
                asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

        def pump() -> None:
            client = self._stream_client()
            try:
                stream = client.logs(
                    container_id, stream=True, follow=follow, timestamps=timestamps,
                    tail=tail_lines if tail_lines > 0 else "all",
                )
                stream_holder.append(stream)
                for chunk in stream:
                    if closed.is_set():
                        break
                    put(chunk)
                put(None)
            except BaseException as error:  # handed to the reader
                try:
                    put(error)
                except Exception:
                    pass
            finally:
                client.close()

        thread = threading.Thread(target=pump, name=f"docker-logs-{container_id[:12]}", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, NotFound):
                    raise RuntimeCallError("the container is gone")
                if isinstance(item, BaseException):
                    raise RuntimeCallError(str(item))
                yield item
        finally:
            closed.set()
            while not queue.empty():  # unblock a pump waiting on a full queue
                queue.get_nowait()
            for stream in stream_holder:
                try:
                    stream.close()
                except Exception:
                    pass

    # --- events ----------------------------------------------------------------------

    def _events_loop(self) -> None:
        client = self._stream_client()
        since: int | None = None
        first = True
        while not self._stopping.is_set():
            try:
                stream = client.events(
                    since=since, filters={**self._filters, "type": ["container"]}, decode=True
                )
                self._events_stream = stream
                if not first and self._loop is not None and self._on_events_reconnected is not None:
                    self._loop.call_soon_threadsafe(self._on_events_reconnected)
                first = False
                for event in stream:
                    since = int(event.get("time") or time.time())
                    if self._loop is not None:
                        self._loop.call_soon_threadsafe(self._handle_event, event)
            except Exception as error:
                if self._stopping.is_set():
                    break
                log.warning("docker_events_broken", error=str(error))
            if not self._stopping.wait(1.0):
                continue
        client.close()

    def _handle_event(self, event: dict[str, Any]) -> None:
        action = event.get("Action") or event.get("status") or ""
        if not action or action.startswith(_IGNORED_EVENT_PREFIXES):
            return
        container_id = event.get("id") or (event.get("Actor") or {}).get("ID", "")
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        cached = self.cache.get(container_id)
        if action == "destroy":
            self.cache.remove(container_id)
        elif action == "oom":
            self.cache.mark_oom(container_id)
        elif action == "die":
            if cached is None:
                self._refresh(container_id)
                return
            try:
                exit_code = int(attributes.get("exitCode", "0"))
            except ValueError:
                exit_code = -1
            finished = (event.get("timeNano") or 0) / 1e9 or time.time()
            self.cache.mark_exited(container_id, exit_code, finished)
        elif action in ("create", "start"):
            if cached is None and attributes.get("name") not in self._creating:
                self._refresh(container_id)

    def _refresh(self, container_id: str) -> None:
        """One inspect per container at a time; a request during it runs once more after."""
        if container_id in self._refreshing:
            self._refreshing[container_id] = True
            return
        self._refreshing[container_id] = False

        async def run() -> None:
            try:
                while True:
                    try:
                        await self.inspect(container_id)
                    except Exception as error:
                        log.warning("docker_inspect_failed", container=container_id[:12], error=str(error))
                    if not self._refreshing.get(container_id):
                        break
                    self._refreshing[container_id] = False
            finally:
                self._refreshing.pop(container_id, None)

        self.spawn(run())

    def spawn(self, coroutine: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
