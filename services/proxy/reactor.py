"""An edge-triggered epoll set for the TCP data path, driven by the asyncio loop.

asyncio's add_reader/remove_reader cost ~6 us of Python per pair, and a proxied
connection needs several as its sockets switch between waiting to read and
waiting to write. Here every socket is registered once, edge-triggered, and
closing it removes it from the set. A socket is watched for writing only when
its owner asks (`watch_writes`: typically once a write to it cannot complete),
so write-side changes nobody waits for (the ACK of our FIN, room freed in a
buffer we are not filling) raise no event, which would cost a callback. The epoll
descriptor itself is one reader of the asyncio loop, so everything still runs
on the loop's thread, between its other callbacks (gRPC, watches).

Handlers are called with the epoll event mask. Being edge-triggered, a handler
must carry on until the socket says EAGAIN or its peer cannot take more; one
that stops early to let others run asks to be called again with `again`.
Events of a batch that arrive for a descriptor forgotten earlier in the same
batch are dropped: its number may already belong to a new socket, whose own
readiness epoll reports afresh when it is added.
"""

from __future__ import annotations

import asyncio
import select
from typing import Callable

Handler = Callable[[int], None]

READABLE = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
WRITABLE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
_BOTH_EDGE = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_READ_EDGE = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
# Events taken per loop turn: bounded, so the rest of the loop keeps its turn.
MAX_EVENTS = 256
# Polls per loop turn while handlers keep adding descriptors.
DISPATCH_POLLS = 4


class Reactor:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._again: list[Callable[[], None]] = []
        self._again_scheduled = False
        self._closed = False
        self._forgotten: set[int] = set()  # during a dispatch: fds closed since its poll
        self._dispatching = False
        self._added = False  # during a dispatch: a descriptor was added since its poll
        self.loop.add_reader(self._epoll.fileno(), self._dispatch)

    def add(self, fd: int, handler: Handler, *, write: bool = True) -> None:
        """Watches fd (edge-triggered) until it is closed: for reading, and for writing unless write=False."""
        self._handlers[fd] = handler
        self._epoll.register(fd, _BOTH_EDGE if write else _READ_EDGE)
        self._added = True

    def watch_writes(self, fd: int, write: bool) -> None:
        """Starts or stops watching fd for writing (always for reading); reports at once what is ready already."""
        self._epoll.modify(fd, _BOTH_EDGE if write else _READ_EDGE)

    def forget(self, fd: int) -> None:
        """Drops fd's handler; call right before closing fd (closing unregisters it)."""
        self._handlers.pop(fd, None)
        if self._dispatching:
            self._forgotten.add(fd)

    def again(self, callback: Callable[[], None]) -> None:
        """Runs callback on the next loop turn (a handler that yielded before EAGAIN)."""
        self._again.append(callback)
        if not self._again_scheduled:
            self._again_scheduled = True
            self.loop.call_soon(self._run_again)

    def _run_again(self) -> None:
        self._again_scheduled = False
        callbacks, self._again = self._again, []
        for callback in callbacks:
            callback()

    def _dispatch(self) -> None:
        handlers = self._handlers
        forgotten = self._forgotten
        poll = self._epoll.poll
        self._dispatching = True
        try:
            for _ in range(DISPATCH_POLLS):
                self._added = False
                for fd, events in poll(0, MAX_EVENTS):
                    if forgotten and fd in forgotten:
                        continue
                    handler = handlers.get(fd)
                    if handler is not None:
                        handler(events)
                if not self._added:
                    break
                # A socket added meanwhile is often ready already (a loopback
                # connect is established, an accepted client has sent its
                # request): serve it now rather than on another loop turn.
                forgotten.clear()
        finally:
            self._dispatching = False
            forgotten.clear()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._handlers.clear()


_reactors: dict[asyncio.AbstractEventLoop, Reactor] = {}


def reactor_for(loop: asyncio.AbstractEventLoop) -> Reactor:
    """The loop's shared reactor (one epoll set per event loop)."""
    reactor = _reactors.get(loop)
    if reactor is None or reactor._closed:
        reactor = _reactors[loop] = Reactor(loop)
        # Forget it with its loop, so a closed loop's reactor is not reused.
        _prune_closed_loops()
    return reactor


def _prune_closed_loops() -> None:
    for loop in [loop for loop in _reactors if loop.is_closed()]:
        reactor = _reactors.pop(loop)
        reactor._closed = True
        reactor._epoll.close()
