"""The scheduler: binds each pending pod to a node (filters, then scores, then Bind).

`cache` keeps per-node aggregates, `filters` and `scores` are pure functions of
them, and `scheduler` is the loop that ties them to the API.
"""

from .scheduler import Scheduler

__all__ = ["Scheduler"]
