"""Guarded tasks: nothing a process starts may die silently.

asyncio keeps only weak references to tasks, and a task whose exception is
never retrieved dies without a word. A TaskGroup holds a strong reference to
every task it starts until it ends, and gives each one of two fates:

- `spawn(coro)`: runs once (a bind, a status write); an exception is logged.
- `guard(factory)`: meant to run forever (a watch, a controller's workers). If
  it raises or returns, the death is logged and it is started again after a
  back-off (reset once it ran a while); with `fatal=True` it is not restarted:
  the group fails and `wait()` raises, so the process exits non-zero.

`close()` cancels everything, waits, and logs any task that would not stop.
The model is kopf's guarded tasks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Coroutine

from services.common.log import get_logger

from .backoff import Backoff

# A guarded task that ran this long before dying starts its back-off over.
HEALTHY_AFTER = 60.0
_STOP_TIMEOUT = 5.0


class TaskFailed(Exception):
    """A fatal guarded task ended; the process cannot go on without it."""


class TaskGroup:
    def __init__(self, name: str, *, restart_initial: float = 0.5, restart_max: float = 30.0) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failed: asyncio.Future[None] | None = None
        self._restart_initial = restart_initial
        self._restart_max = restart_max
        self._log = get_logger(group=name)

    def __len__(self) -> int:
        return len(self._tasks)

    def _failure(self) -> asyncio.Future[None]:
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        return self._failed

    def _keep(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Runs a coroutine once; its exception (if any) is logged, never lost."""

        async def once() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log.exception("task_failed", task=name)

        return self._keep(asyncio.create_task(once(), name=name))

    def guard(
        self, factory: Callable[[], Awaitable[None]], *, name: str, fatal: bool = False
    ) -> asyncio.Task[Any]:
        """Runs factory() for as long as the group lives, restarting it with back-off."""
        failure = self._failure()
        backoff = Backoff(self._restart_initial, self._restart_max, jitter=0.2)

        async def forever() -> None:
            while True:
                started = time.monotonic()
                try:
                    await factory()
                    error: BaseException | None = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    error = exc
                if fatal:
                    self._log.error("task_ended_fatal", task=name, error=repr(error) if error else None)
                    if not failure.done():
                        failure.set_exception(TaskFailed(f"{name}: {error!r}" if error else f"{name} returned"))
                    return
                if time.monotonic() - started >= HEALTHY_AFTER:
                    backoff.reset()
                delay = backoff.failure()
                if error is not None:
                    self._log.error("task_failed_restarting", task=name, restart_in=round(delay, 2),
                                    exc_info=error)
                else:
                    self._log.warning("task_returned_restarting", task=name, restart_in=round(delay, 2))
                await asyncio.sleep(delay)

        return self._keep(asyncio.create_task(forever(), name=name))

    async def wait(self) -> None:
        """Returns never; raises TaskFailed when a fatal task ends. Shielded: cancelling one
        waiter must not cancel the group's failure future that the others (and guard) share."""
        await asyncio.shield(self._failure())

    async def close(self) -> None:
        """Cancels every task and waits for them; a task that ignores cancellation is reported."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=_STOP_TIMEOUT)
        for task in pending:
            self._log.warning("task_did_not_stop", task=task.get_name())
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                self._log.error("task_failed_on_close", task=task.get_name(), exc_info=task.exception())
