"""UDP forwarding for one service port: a session per client address.

A client's first datagram opens a session: a UDP socket connected to the next
backend in turn, so the backend's replies come back on that socket and are sent
to the client from the service port. A session idle for `idle_timeout` seconds
is closed; the client's next datagram opens a new one (and may land on another
backend, unless ClientIP affinity pins it). A backend that answers with ICMP
port unreachable (seen as ECONNREFUSED on the connected socket) is marked failed
and the session closed, so the client's next datagram goes elsewhere.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from .balancer import RoundRobinBalancer
from .counters import PortCounters

MAX_DATAGRAM = 65535
# Datagrams handled per readiness callback, so one busy socket cannot starve the loop.
RECEIVE_BATCH = 64

Address = tuple[Any, ...]


def _family_of(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def bind_udp(host: str, port: int) -> socket.socket:
    """A UDP socket bound to host:port (raises OSError, e.g. EADDRINUSE)."""
    sock = socket.socket(_family_of(host), socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class UdpListener:
    def __init__(
        self,
        sock: socket.socket,
        balancer: RoundRobinBalancer,
        counters: PortCounters,
        *,
        idle_timeout: float,
        log: Any = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.balancer = balancer
        self.counters = counters
        self.idle_timeout = idle_timeout
        self.log = log
        self.sessions: dict[Address, UdpSession] = {}
        self._fd = sock.fileno()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def connections(self) -> dict[Address, "UdpSession"]:
        return self.sessions

    def start(self) -> None:
        self.loop.add_reader(self._fd, self._on_datagram)

    def close(self) -> None:
        """Stops the port; sessions cannot outlive it (replies leave through it)."""
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self._fd)
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for session in list(self.sessions.values()):
            session.close()
        self.sock.close()

    def abort_connections(self) -> None:
        for session in list(self.sessions.values()):
            session.close()

    def _on_datagram(self) -> None:
        for _ in range(RECEIVE_BATCH):
            try:
                data, client = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. an ICMP error for an earlier reply to a client: not fatal
            self.counters.bytes_in += len(data)
            session = self.sessions.get(client)
            if session is None:
                session = self._open_session(client)
                if session is None:
                    continue
            if not session.send(data):
                # The backend refused (ICMP seen on this send): once more through another.
                session = self._open_session(client)
                if session is not None:
                    session.send(data)

    def _open_session(self, client: Address) -> "UdpSession | None":
        for backend in self.balancer.plan(client[0]):
            sock = None
            try:
                sock = socket.socket(_family_of(backend[0]), socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.connect(backend)
            except OSError as error:
                if sock is not None:
                    sock.close()
                self.counters.connect_failures += 1
                self.balancer.failed(backend)
                if self.log is not None:
                    self.log.info("backend_connect_failed", backend=f"{backend[0]}:{backend[1]}", error=str(error))
                continue
            self.balancer.succeeded(client[0], backend)
            session = UdpSession(self, client, backend, sock)
            self.sessions[client] = session
            self.counters.connections_total += 1
            self.counters.connections_active += 1
            self._schedule_sweep()
            return session
        return None

    def reply(self, data: bytes, client: Address) -> None:
        try:
            self.sock.sendto(data, client)
        except (BlockingIOError, InterruptedError):
            return  # the send buffer is full: UDP may drop, as the network would
        except OSError:
            return
        self.counters.bytes_out += len(data)

    def session_closed(self, session: "UdpSession") -> None:
        if self.sessions.get(session.client) is session:
            del self.sessions[session.client]
        self.counters.connections_active -= 1

    def _schedule_sweep(self) -> None:
        if self._sweep_handle is None and not self._closed:
            self._sweep_handle = self.loop.call_later(max(self.idle_timeout / 2, 0.01), self._sweep)

    def _sweep(self) -> None:
        self._sweep_handle = None
        deadline = time.monotonic() - self.idle_timeout
        for session in list(self.sessions.values()):
            if session.last_active <= deadline:
                session.close()
        if self.sessions:
            self._schedule_sweep()


class UdpSession:
    __slots__ = ("listener", "client", "backend", "sock", "fd", "last_active", "closed")

    def __init__(self, listener: UdpListener, client: Address, backend: tuple[str, int], sock: socket.socket) -> None:
        self.listener = listener
        self.client = client
        self.backend = backend
        self.sock = sock
        self.fd = sock.fileno()
        self.last_active = time.monotonic()
        self.closed = False
        listener.loop.add_reader(self.fd, self._on_reply)

    def send(self, data: bytes) -> bool:
        """Forwards one datagram; False when the backend is known to refuse."""
        self.last_active = time.monotonic()
        try:
            self.sock.send(data)
        except ConnectionRefusedError:
            self._backend_refused()
            return False
        except (BlockingIOError, InterruptedError):
            pass  # dropped: the socket buffer is full
        except OSError:
            pass
        return True

    def _on_reply(self) -> None:
        for _ in range(RECEIVE_BATCH):
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                self._backend_refused()
                return
            except OSError:
                return
            self.last_active = time.monotonic()
            self.listener.reply(data, self.client)

    def _backend_refused(self) -> None:
        listener = self.listener
        listener.counters.connect_failures += 1
        listener.balancer.failed(self.backend)
        if listener.log is not None:
            listener.log.info("backend_refused", backend=f"{self.backend[0]}:{self.backend[1]}", protocol="UDP")
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.listener.loop.remove_reader(self.fd)
        self.sock.close()
        self.listener.session_closed(self)
