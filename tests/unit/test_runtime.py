"""The controller runtime on its own: guarded tasks, shared informers, the manager's order of start."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.common.resources import NODES, PODS
from services.common.runtime import Manager, TaskFailed, TaskGroup
from services.common.runtime.informer import Informer


async def test_a_guarded_task_that_dies_is_restarted() -> None:
    group = TaskGroup("test", restart_initial=0.001, restart_max=0.001)
    runs = 0
    third = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            third.set()
            await asyncio.Event().wait()
        raise RuntimeError("boom")

    group.guard(flaky, name="flaky")
    await asyncio.wait_for(third.wait(), 5)
    assert runs == 3
    await group.close()
    assert len(group) == 0


async def test_a_fatal_task_that_ends_fails_the_group() -> None:
    group = TaskGroup("test")

    async def dies() -> None:
        raise ValueError("no etcd")

    group.guard(dies, name="critical", fatal=True)
    with pytest.raises(TaskFailed, match="critical"):
        await asyncio.wait_for(group.wait(), 5)
    await group.close()


async def test_spawned_tasks_are_held_until_done_and_their_errors_do_not_escape() -> None:
    group = TaskGroup("test")
    gate = asyncio.Event()
    finished: list[str] = []

    async def work(name: str, fail: bool) -> None:
        await gate.wait()
        finished.append(name)
        if fail:
            raise RuntimeError(name)

    group.spawn(work("a", False), name="a")
    group.spawn(work("b", True), name="b")
    assert len(group) == 2
    gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert sorted(finished) == ["a", "b"] and len(group) == 0


async def test_close_cancels_what_runs() -> None:
    group = TaskGroup("test")
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    group.guard(forever, name="forever")
    await asyncio.sleep(0)
    await group.close()
    assert cancelled.is_set()


class _NoClient:
    """Informers are made lazily and do no I/O until they run."""


def test_controllers_asking_for_the_same_selection_share_one_informer() -> None:
    manager = Manager(_NoClient(), name="test")  # type: ignore[arg-type]
    pods = manager.informer(PODS)
    assert manager.informer(PODS) is pods
    assert manager.informer(NODES) is not pods
    assert manager.informer(PODS, field_selector="spec.nodeName=n1") is not pods


def test_an_informer_made_elsewhere_is_shared_like_the_managers_own() -> None:
    manager = Manager(_NoClient(), name="test")  # type: ignore[arg-type]
    own = Informer(_NoClient(), PODS)  # type: ignore[arg-type]
    manager.use_informer(own)
    assert manager.informer(PODS) is own
    with pytest.raises(RuntimeError):
        manager.use_informer(Informer(_NoClient(), PODS))  # type: ignore[arg-type]


class _FakeInformer(Informer):
    def __init__(self, kind: Any, log: list[str]) -> None:
        super().__init__(_NoClient(), kind)  # type: ignore[arg-type]
        self.events = log

    async def run(self) -> None:
        self.events.append(f"watch {self.kind.plural}")
        self._synced.set()
        await asyncio.Event().wait()


class _Recorder:
    def __init__(self, name: str, log: list[str], crash_first: bool = False) -> None:
        self.name = name
        self.log = log
        self.crash_first = crash_first
        self.running = asyncio.Event()

    def setup(self, manager: Manager) -> None:
        self.log.append(f"setup {self.name}")
        manager.informer(PODS)

    async def run(self) -> None:
        self.log.append(f"run {self.name}")
        if self.crash_first:
            self.crash_first = False
            raise RuntimeError("first run fails")
        self.running.set()
        await asyncio.Event().wait()


async def test_controllers_run_once_every_informer_is_synced_and_are_restarted_after_a_crash() -> None:
    log: list[str] = []
    manager = Manager(_NoClient(), name="test")  # type: ignore[arg-type]
    manager.tasks = TaskGroup("test", restart_initial=0.001, restart_max=0.001)
    manager.use_informer(_FakeInformer(PODS, log))
    first, second = _Recorder("a", log), _Recorder("b", log, crash_first=True)
    manager.add(first)
    manager.add(second)
    runner = asyncio.create_task(manager.run())
    await asyncio.wait_for(asyncio.gather(first.running.wait(), second.running.wait()), 5)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert log[:3] == ["setup a", "setup b", "watch pods"]
    assert sorted(log[3:]) == ["run a", "run b", "run b"]


async def test_a_cancelled_waiter_leaves_the_group_able_to_report_a_failure() -> None:
    group = TaskGroup("test")
    waiter = asyncio.create_task(group.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)

    async def dies() -> None:
        raise ValueError("later")

    group.guard(dies, name="late", fatal=True)
    with pytest.raises(TaskFailed, match="late"):
        await asyncio.wait_for(group.wait(), 5)
    await group.close()
