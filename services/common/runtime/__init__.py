"""The controller runtime every control loop runs on.

- `Manager`: one per process; shared informers, controllers started once synced.
- `TaskGroup`: guarded tasks (logged and restarted, or fatal), never a silent death.
- `Backoff`: the one back-off type (per key, doubling to a cap, optional jitter).
- `WorkQueue` / `run_workers`: a keyed, rate-limited queue synced by a pool of workers.

A reconciler built on it is a pure `plan(observed, now) -> actions` plus an
`apply(actions)` that only does I/O; see nodelifecycle and the kubelet's pod
worker for the pattern.
"""

from .backoff import Backoff
from .manager import Controller, Manager
from .tasks import TaskFailed, TaskGroup
from .workqueue import WorkQueue, run_workers

__all__ = ["Backoff", "Controller", "Manager", "TaskFailed", "TaskGroup", "WorkQueue", "run_workers"]
