"""TCP forwarding for one service port: a listener and a connection per client.

Everything runs as callbacks of the loop's Reactor (an edge-triggered epoll
set, see reactor.py), with no task, stream or transport per connection: on
these machines that per-connection overhead, not the byte copying, bounds the
rate of short connections. Each TcpConnection is held in its listener's
`connections` set from accept until both of its sockets are closed.

Bytes move in two stages per direction:
- copy: recv_into a shared scratch buffer and send at once. Short exchanges
  (requests, replies) stay here and cost no extra file descriptor.
- splice: once one read brings 64 KiB or more the direction is a bulk stream,
  and from then on bytes go socket -> pipe -> socket with os.splice, inside the
  kernel, up to a pipe's worth (1 MiB) per call. Where splice is missing (or
  with use_splice=False) the copy stage simply goes on.
Either way a direction reads only after the previous read is fully written, so
what the proxy holds per direction is bounded by one buffer (back-pressure: a
slow reader slows the writer on the other side instead of growing memory).

Half-close: EOF from one side shuts down the write side towards the other, and
the other direction keeps flowing until it ends too. An error on either socket
(reset, broken pipe) aborts both with a reset.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import fcntl
import logging
import os
import select
import socket
import struct
import time
from typing import Any

from .balancer import Backend, RoundRobinBalancer
from .counters import PortCounters
from .reactor import READABLE, WRITABLE, Reactor, reactor_for

COPY_CHUNK = 256 * 1024
# A single read of this much means a bulk stream: switch the direction to splice.
SPLICE_THRESHOLD = 64 * 1024
PIPE_SIZE = 1024 * 1024
# Kept open for reuse by later bulk streams; a pipe is only pooled when empty.
PIPE_POOL_MAX = 64
# Reads (or accepts) one callback does before yielding the loop to others.
READ_BUDGET = 16
ACCEPT_BUDGET = 64
# After EMFILE/ENFILE/ENOBUFS the listener pauses instead of spinning on accept.
ACCEPT_PAUSE = 0.1

_SPLICE = getattr(os, "splice", None)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), spelled out for older Pythons
_LINGER_RESET = struct.pack("ii", 1, 0)
_NONBLOCK_STREAM = socket.SOCK_STREAM | getattr(socket, "SOCK_NONBLOCK", 0)
_RDHUP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR  # the peer shut its side (or failed)
_FAILED = select.EPOLLHUP | select.EPOLLERR
_scratch = bytearray(COPY_CHUNK)
_scratch_view = memoryview(_scratch)


class _PipePool:
    """Non-blocking pipes of up to PIPE_SIZE for splice, reused across connections."""

    def __init__(self) -> None:
        self._free: list[tuple[int, int]] = []
        self._works: bool | None = None

    def works(self) -> bool:
        if self._works is None:
            if _SPLICE is None:
                self._works = False
            else:
                try:
                    self.give_back(self.take())
                    self._works = True
                except OSError:
                    self._works = False
        return self._works

    def take(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(write_fd, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # over the per-user pipe limit: the default size (64 KiB) still works
        return read_fd, write_fd

    def give_back(self, pipe: tuple[int, int]) -> None:
        if len(self._free) < PIPE_POOL_MAX:
            self._free.append(pipe)
        else:
            self.discard(pipe)

    @staticmethod
    def discard(pipe: tuple[int, int]) -> None:
        os.close(pipe[0])
        os.close(pipe[1])


_pipe_pool = _PipePool()


def splice_available() -> bool:
    return _pipe_pool.works()


def _family_of(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def bind_tcp(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening socket on host:port (raises OSError, e.g. EADDRINUSE)."""
    sock = socket.socket(_family_of(host), socket.SOCK_STREAM)
    try:
        # Rebinding right after a restart must not wait for TIME_WAIT to clear;
        # a port another socket listens on still fails with EADDRINUSE.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Forward small writes at once: a reply split in two must not wait for an
        # ACK. Accepted sockets inherit the option (Linux): one call per port.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _debug_enabled(log: Any) -> bool:
    is_enabled_for = getattr(log, "is_enabled_for", None)
    if is_enabled_for is None:
        return False
    try:
        return bool(is_enabled_for(logging.DEBUG))
    except Exception:
        return False


class TcpListener:
    """Accepts clients on one bound socket and forwards each to a backend."""

    def __init__(
        self,
        sock: socket.socket,
        balancer: RoundRobinBalancer,
        counters: PortCounters,
        *,
        connect_timeout: float,
        use_splice: bool = True,
        log: Any = None,
        reactor: Reactor | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.reactor = reactor or reactor_for(self.loop)
        self.sock = sock
        self.balancer = balancer
        self.counters = counters
        self.connect_timeout = connect_timeout
        self.use_splice = use_splice and splice_available()
        self.log = log
        # Per-connection log lines only at debug level: they cost more than the forwarding.
        self.trace = _debug_enabled(log)
        self.connections: set[TcpConnection] = set()
        self._fd = sock.fileno()
        self._closed = False
        self._pause_handle: asyncio.TimerHandle | None = None
        # Connect attempts in progress, oldest first (one timeout for all, so
        # deadlines come in order and one timer serves them).
        self._connecting: collections.deque[tuple[float, TcpConnection, int]] = collections.deque()
        self._timeout_handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.sock.setblocking(False)
        self.reactor.add(self._fd, self._on_event, write=False)

    def close(self) -> None:
        """Stops accepting; open connections carry on until they end."""
        if self._closed:
            return
        self._closed = True
        if self._pause_handle is not None:
            self._pause_handle.cancel()
        self.reactor.forget(self._fd)
        self.sock.close()

    def abort_connections(self) -> None:
        for connection in list(self.connections):
            connection.abort()

    def _on_event(self, events: int = 0) -> None:
        if self._closed or self._pause_handle is not None:
            return
        accept = self.sock.accept
        for _ in range(ACCEPT_BUDGET):
            try:
                client, address = accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                # Out of descriptors or buffers: pause briefly rather than spin.
                if self.log is not None:
                    self.log.warning("accept_failed", error=str(error))
                self._pause_handle = self.loop.call_later(ACCEPT_PAUSE, self._resume)
                return
            client.setblocking(False)
            TcpConnection(self, client, address[0]).start()
        self.reactor.again(self._on_event)  # more may be waiting: edge-triggered, so ask again

    def _resume(self) -> None:
        self._pause_handle = None
        self._on_event()

    # Connect timeouts -----------------------------------------------------

    def watch_connect(self, connection: "TcpConnection", attempt: int) -> None:
        pending = self._connecting
        # Connects mostly finish in order: drop the finished ones at the head
        # now, so the queue does not hold closed connections until the timer.
        while pending and pending[0][1].connecting != pending[0][2]:
            pending.popleft()
        pending.append((time.monotonic() + self.connect_timeout, connection, attempt))
        if self._timeout_handle is None:
            self._timeout_handle = self.loop.call_later(self.connect_timeout, self._expire_connects)

    def _expire_connects(self) -> None:
        self._timeout_handle = None
        now = time.monotonic()
        pending = self._connecting
        while pending:
            deadline, connection, attempt = pending[0]
            if connection.connecting != attempt:
                pending.popleft()  # connected, failed or moved on already
                continue
            if deadline > now:
                break
            pending.popleft()
            connection.connect_timed_out()
        if pending:
            self._timeout_handle = self.loop.call_later(max(pending[0][0] - now, 0.001), self._expire_connects)


class TcpConnection:
    """One client: connects to a backend (skipping dead ones), then two pumps."""

    __slots__ = (
        "listener", "reactor", "client", "client_fd", "client_ip", "backend", "backend_sock",
        "backend_fd", "plan", "attempt", "connecting", "upstream", "downstream", "closed",
    )

    def __init__(self, listener: TcpListener, client: socket.socket, client_ip: str) -> None:
        self.listener = listener
        self.reactor = listener.reactor
        self.client = client
        self.client_fd = client.fileno()
        self.client_ip = client_ip
        self.backend: Backend | None = None
        self.backend_sock: socket.socket | None = None
        self.backend_fd = -1
        self.plan: list[Backend] = []
        self.attempt = 0
        # The attempt number whose connect is in flight, or 0.
        self.connecting = 0
        self.upstream: _Pump | None = None
        self.downstream: _Pump | None = None
        self.closed = False
        listener.connections.add(self)
        counters = listener.counters
        counters.connections_total += 1
        counters.connections_active += 1

    def start(self) -> None:
        self.plan = self.listener.balancer.plan(self.client_ip)
        self._connect_next()

    # Connecting -----------------------------------------------------------

    def _connect_next(self) -> None:
        plan = self.plan
        while self.attempt < len(plan):
            backend = plan[self.attempt]
            self.attempt += 1
            try:
                sock = socket.socket(_family_of(backend[0]), _NONBLOCK_STREAM)
            except OSError as error:
                self._connect_failed(backend, error.errno or 0)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as bind_tcp's clients
            code = sock.connect_ex(backend)
            if code == 0 or code == errno.EINPROGRESS:
                self.backend, self.backend_sock, self.backend_fd = backend, sock, sock.fileno()
                self.reactor.add(self.backend_fd, self._on_backend_event)
                if code == 0:
                    self._connected()
                else:
                    self.connecting = self.attempt
                    self.listener.watch_connect(self, self.attempt)
                return
            sock.close()
            self._connect_failed(backend, code)
        self._give_up()

    def _on_backend_event(self, events: int) -> None:
        if self.connecting:
            if events & _FAILED:
                sock = self.backend_sock
                assert sock is not None
                self._drop_backend_attempt(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.ECONNREFUSED)
                return
            if not events & select.EPOLLOUT:
                return  # a connecting socket turns writable once established
            self.connecting = 0
            self._connected()
            # Edge-triggered: what the backend already sent (a greeting) comes
            # with this very event, and no other edge will announce it.
        if events & READABLE and self.downstream is not None:
            self.downstream.on_src_ready(events)
        if events & WRITABLE and self.upstream is not None and not self.closed:
            self.upstream.on_dst_ready()

    def _on_client_event(self, events: int) -> None:
        if events & READABLE and self.upstream is not None:
            self.upstream.on_src_ready(events)
        if events & WRITABLE and self.downstream is not None and not self.closed:
            self.downstream.on_dst_ready()

    def connect_timed_out(self) -> None:
        self._drop_backend_attempt(errno.ETIMEDOUT)

    def _drop_backend_attempt(self, code: int) -> None:
        self.connecting = 0
        sock, backend = self.backend_sock, self.backend
        assert sock is not None and backend is not None
        self.reactor.forget(self.backend_fd)
        sock.close()
        self.backend_sock, self.backend_fd = None, -1
        self._connect_failed(backend, code)
        self._connect_next()

    def _connect_failed(self, backend: Backend, code: int) -> None:
        listener = self.listener
        listener.counters.connect_failures += 1
        listener.balancer.failed(backend)
        if listener.log is not None:
            listener.log.info(
                "backend_connect_failed", backend=f"{backend[0]}:{backend[1]}",
                error=os.strerror(code) if code else "unknown",
            )

    def _give_up(self) -> None:
        """No backend could be reached: reset the client, so it sees a refusal, not an empty reply."""
        listener = self.listener
        if listener.trace:
            listener.log.debug("no_backend_reachable", client=self.client_ip, tried=len(self.plan))
        _reset_and_close(self.client)
        self._closed()

    def _connected(self) -> None:
        listener = self.listener
        backend_sock = self.backend_sock
        assert backend_sock is not None and self.backend is not None
        listener.balancer.succeeded(self.client_ip, self.backend)
        if listener.trace:
            backend = f"{self.backend[0]}:{self.backend[1]}"
            listener.log.debug("connection_opened", client=self.client_ip, backend=backend)
        client = self.client
        counters = listener.counters
        self.upstream = _Pump(self, client, backend_sock, counters, inbound=True)
        self.downstream = _Pump(self, backend_sock, client, counters, inbound=False)
        # Registering reports what is already readable, e.g. the client's request.
        # Writes to the client are watched once one cannot complete (see _Pump._wait_for_dst).
        self.reactor.add(self.client_fd, self._on_client_event, write=False)

    # Ending ---------------------------------------------------------------

    def pump_finished(self, pump: "_Pump") -> None:
        """A direction reached EOF: half-close towards its receiver, or close all when both did."""
        other = self.downstream if pump is self.upstream else self.upstream
        if other is not None and not other.finished:
            try:
                pump.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the receiver is gone; its own direction will say so
            return
        self.reactor.forget(self.client_fd)
        self.reactor.forget(self.backend_fd)
        self.client.close()
        if self.backend_sock is not None:
            self.backend_sock.close()
        self._closed()

    def abort(self) -> None:
        """Ends the connection at once, resetting both sides."""
        if self.closed:
            return
        self.connecting = 0
        for pump in (self.upstream, self.downstream):
            if pump is not None:
                pump.stop(clean=False)
        self.reactor.forget(self.client_fd)
        _reset_and_close(self.client)
        if self.backend_sock is not None:
            self.reactor.forget(self.backend_fd)
            _reset_and_close(self.backend_sock)
        self._closed()

    def _closed(self) -> None:
        self.closed = True
        listener = self.listener
        listener.counters.connections_active -= 1
        listener.connections.discard(self)
        if listener.trace:
            listener.log.debug("connection_closed", client=self.client_ip)


def _reset_and_close(sock: socket.socket) -> None:
    if sock.fileno() < 0:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


class _Pump:
    """Moves bytes from src to dst until src's EOF."""

    __slots__ = (
        "connection", "reactor", "src", "dst", "src_fd", "dst_fd", "counters", "inbound",
        "pending", "pipe", "in_pipe", "blocked", "dst_watched", "bulk", "finished", "splice_ok",
    )

    def __init__(
        self,
        connection: TcpConnection,
        src: socket.socket,
        dst: socket.socket,
        counters: PortCounters,
        *,
        inbound: bool,
    ) -> None:
        self.connection = connection
        self.reactor = connection.reactor
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.counters = counters
        self.inbound = inbound
        self.pending: bytes = b""  # copy stage: read but not yet written
        self.pipe: tuple[int, int] | None = None  # splice stage
        self.in_pipe = 0
        self.blocked = False  # waiting for dst to take more
        # Whether dst is watched for writes: the backend is from its connect, the client on demand.
        self.dst_watched = inbound
        self.bulk = False
        self.finished = False
        self.splice_ok = connection.listener.use_splice

    def on_src_ready(self, events: int) -> None:
        if not self.blocked and not self.finished:
            self._run(events)

    def on_dst_ready(self) -> None:
        if not self.blocked or self.finished:
            return
        try:
            if self.pipe is not None and self.in_pipe:
                if not self._drain_pipe():
                    return
            else:
                sent = self.dst.send(self.pending)
                self.pending = self.pending[sent:]
                if self.pending:
                    return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.connection.abort()
            return
        self.blocked = False
        if self.bulk:
            self._unwatch_dst()
        self._run(0)

    def _resume(self) -> None:
        if not self.blocked and not self.finished and not self.connection.closed:
            self._run(0)

    def _count(self, n: int) -> None:
        if self.inbound:
            self.counters.bytes_in += n
        else:
            self.counters.bytes_out += n

    def _run(self, events: int) -> None:
        """Reads src and writes dst until src is drained, dst is full, or the budget is spent.

        events is the epoll mask that woke us, or 0 when we do not know (resumed):
        then only EAGAIN proves src drained. With a mask and no hang-up in it, a
        short read proves it too (any later arrival raises a new edge), which
        saves a read per exchange.
        """
        for _ in range(READ_BUDGET):
            if self.pipe is not None:
                if not self._splice_once():
                    return
                continue
            try:
                n = self.src.recv_into(_scratch)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.connection.abort()
                return
            if n == 0:
                self._end_of_stream()
                return
            self._count(n)
            try:
                sent = self.dst.send(_scratch_view[:n])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.connection.abort()
                return
            if sent < n:
                self.pending = bytes(_scratch_view[sent:n])
                self._wait_for_dst()
                return
            if n >= SPLICE_THRESHOLD and not self.bulk:
                self._become_bulk()
            if n < COPY_CHUNK and events and not events & _RDHUP:
                return
        self.reactor.again(self._resume)

    def _splice_once(self) -> bool:
        """One socket -> pipe -> socket step; False when this run must stop."""
        assert self.pipe is not None and _SPLICE is not None
        try:
            n = _SPLICE(self.src_fd, self.pipe[1], PIPE_SIZE, flags=_SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.connection.abort()
            return False
        if n == 0:
            self._end_of_stream()
            return False
        self._count(n)
        self.in_pipe = n
        try:
            if self._drain_pipe():
                return True
        except OSError:
            self.connection.abort()
            return False
        self._wait_for_dst()
        return False

    def _become_bulk(self) -> None:
        """This direction carries a bulk stream: move it in the kernel from now on (splice).

        And watch dst for writes only while blocked on it: otherwise every ACK
        that frees room in its buffer (dozens per MiB) wakes us for nothing
        while we wait for src.
        """
        self.bulk = True
        self._unwatch_dst()
        if self.splice_ok:
            try:
                self.pipe = _pipe_pool.take()
            except OSError:
                self.splice_ok = False  # out of descriptors: keep copying

    def _wait_for_dst(self) -> None:
        self.blocked = True
        if not self.dst_watched:
            self.dst_watched = True
            self.reactor.watch_writes(self.dst_fd, True)

    def _unwatch_dst(self) -> None:
        if self.dst_watched:
            self.dst_watched = False
            self.reactor.watch_writes(self.dst_fd, False)

    def _drain_pipe(self) -> bool:
        assert self.pipe is not None and _SPLICE is not None
        read_fd, dst_fd = self.pipe[0], self.dst_fd
        while self.in_pipe:
            try:
                self.in_pipe -= _SPLICE(read_fd, dst_fd, self.in_pipe, flags=_SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                return False
        return True

    def _end_of_stream(self) -> None:
        self.stop(clean=True)
        self.connection.pump_finished(self)

    def stop(self, *, clean: bool) -> None:
        if self.finished:
            return
        self.finished = True
        if self.pipe is not None:
            if clean and self.in_pipe == 0:
                _pipe_pool.give_back(self.pipe)
            else:
                _pipe_pool.discard(self.pipe)
            self.pipe = None
