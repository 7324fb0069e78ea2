"""The one way tests wait for something to happen: poll a check until it is done.

The contract (the same for `eventually` and `eventually_blocking`):

- `check()` is called with no arguments. For `eventually` it may be a coroutine
  function (or return any awaitable): the result is awaited.
- **Done**: `check` returns a truthy value. The wait returns that value, so a check
  can hand back what it found (a pod, a reply). A check written with `assert`
  must therefore end with `return True` (or the value), and a check whose answer
  may be empty (no pods left, zero) returns True rather than the empty value: an
  empty list or 0 means "not yet", and the wait times out saying `last: []`.
- **Not done yet**: `check` returns a falsy value, or raises `AssertionError`
  (whose message says what it saw instead), or raises one of the exception
  types the caller lists in `retry_on` (say `OSError` while a port is not open
  yet, or `grpc.aio.AioRpcError` while an object does not exist yet).
- Any other exception is a failure at once: a broken check is not "not yet".
- After `timeout` seconds without "done", `AssertionError`:
  ``timed out after 60s waiting for <what>; last: <last value or error>``,
  chained to the last error seen.

The first check runs at once. The pauses between checks start at 10 ms and
double up to `interval`, so a cheap in-process condition is seen within
milliseconds while a check that costs a subprocess or a Docker call is not
repeated more often than every `interval` seconds. The last check runs at the
deadline, not one pause before it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Callable

# Long enough for Docker on a busy two-core machine; a test that passes never waits this long.
DEFAULT_TIMEOUT = 60.0
DEFAULT_INTERVAL = 0.25
FIRST_PAUSE = 0.01
_SHOWN = 1000  # characters of the last value in the failure message


class _Poll:
    """The bookkeeping both front doors share: the deadline, the pauses, the verdict, the message."""

    def __init__(
        self, check: Callable[[], Any], timeout: float, interval: float, what: str | None,
        retry_on: tuple[type[BaseException], ...],
    ) -> None:
        self.timeout = timeout
        self.interval = interval
        self.what = what or getattr(check, "__qualname__", None) or repr(check)
        self.retry_on = (AssertionError, *retry_on)
        self.deadline = time.monotonic() + timeout
        self.pause = min(FIRST_PAUSE, interval)
        self.last: Any = None
        self.last_error: BaseException | None = None

    def done(self, value: Any) -> bool:
        self.last, self.last_error = value, None
        return bool(value)

    def not_yet(self, error: BaseException) -> None:
        self.last, self.last_error = error, error

    def next_pause(self) -> float | None:
        """Seconds to wait before the next check; None once the deadline has passed."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return None
        pause = min(self.pause, remaining)
        self.pause = min(self.pause * 2, self.interval)
        return pause

    def failure(self) -> AssertionError:
        last = self.last_error if self.last_error is not None else self.last
        shown = f"{type(last).__name__}: {last}" if isinstance(last, BaseException) else repr(last)
        if len(shown) > _SHOWN:
            shown = shown[:_SHOWN] + "..."
        return AssertionError(f"timed out after {self.timeout:g}s waiting for {self.what}; last: {shown}")


async def eventually(
    check: Callable[[], Any],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    what: str | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
) -> Any:
    """Polls `check` (sync, or async) from a running event loop until it is done; see the module docstring."""
    poll = _Poll(check, timeout, interval, what, retry_on)
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except poll.retry_on as error:
            poll.not_yet(error)
        else:
            if poll.done(value):
                return value
        pause = poll.next_pause()
        if pause is None:
            raise poll.failure() from poll.last_error
        await asyncio.sleep(pause)


def eventually_blocking(
    check: Callable[[], Any],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    what: str | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
) -> Any:
    """`eventually` for synchronous tests whose checks block (subprocesses, HTTP):
    the same contract, sleeping the thread between checks."""
    poll = _Poll(check, timeout, interval, what, retry_on)
    while True:
        try:
            value = check()
        except poll.retry_on as error:
            poll.not_yet(error)
        else:
            if inspect.isawaitable(value):
                if inspect.iscoroutine(value):
                    value.close()  # never awaited: no "coroutine was never awaited" warning
                raise TypeError(f"eventually_blocking got an awaitable from {poll.what}: use `await eventually(...)`")
            if poll.done(value):
                return value
        pause = poll.next_pause()
        if pause is None:
            raise poll.failure() from poll.last_error
        time.sleep(pause)
