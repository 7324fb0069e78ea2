"""The UDP and TCP listeners, on one address and port.

Concurrency: everything runs on the event loop. A query the index answers is answered inline
(in `datagram_received`, or in its TCP connection's task): parse, a few dict reads, encode; no
task. Only a forwarded query waits, in a task of its own for UDP; at most `max_concurrent`
forwards are in flight across UDP and TCP, beyond which clients get REFUSED (as CoreDNS's
forward plugin does) rather than the process growing without bound. asyncio keeps only weak
references to tasks, so each one is held in a set until it ends.

TCP uses RFC 1035's framing (a 2-byte length before each message); queries on one connection
are answered in order, and a connection idle for `tcp_idle_timeout` is closed (RFC 7766).

Replies fit the client: over UDP at most 512 bytes, or with EDNS the client's payload size
capped at ours (1232: no IP fragmentation); a larger reply is truncated with TC set, and the
client retries over TCP (up to 65535 bytes). Garbage never raises out of a handler: a malformed
query gets FORMERR (or is dropped), with one throttled log line, values truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import dns.message
import dns.rcode

from services.common.log import get_logger

from .answer import CLASSIC_UDP_SIZE, UDP_PAYLOAD, Forward, MalformedQuery, answer, error_response, parse_query
from .forwarder import Forwarder
from .records import RecordIndex
from .throttle import Throttle

DEFAULT_MAX_CONCURRENT = 1000
DEFAULT_TCP_IDLE_TIMEOUT = 10.0
TCP_MAX_SIZE = 65535
_SHOWN = 200  # characters of a value in a log line

log = get_logger(part="server")

# What handling a packet locally leads to: bytes to send back, a query to forward, or nothing.
Outcome = bytes | dns.message.Message | None


def _peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"[:_SHOWN]
    return str(address)[:_SHOWN]


class DnsServer:
    def __init__(
        self,
        index: RecordIndex,
        forwarder: Forwarder,
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        tcp_idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT,
    ) -> None:
        self.index = index
        self.forwarder = forwarder
        self.max_concurrent = max_concurrent
        self.tcp_idle_timeout = tcp_idle_timeout
        # Counters, logged at stop.
        self.queries = 0
        self.answered = 0  # from the index
        self.forwarded = 0
        self.malformed = 0
        self.refused = 0  # too many forwards in flight
        self._forwarding = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._throttle = Throttle()

    async def start(self, host: str, port: int) -> int:
        """Listens on UDP and TCP; returns the port (useful with port 0: TCP takes UDP's)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), local_addr=(host, port))
        self._udp = transport
        port = transport.get_extra_info("sockname")[1]
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, host, port, reuse_address=True)
        except BaseException:
            transport.close()
            raise
        return port

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()

    # -- one packet ---------------------------------------------------------------

    def handle_locally(self, wire: bytes, peer: str, *, udp: bool) -> Outcome:
        """Parses and answers from the index; returns the reply, or the query to forward."""
        self.queries += 1
        try:
            query = parse_query(wire)
        except MalformedQuery as error:
            self.malformed += 1
            self._warn(
                "dns_malformed_query", peer=peer, size=len(wire), reason=error.reason,
                head=wire[:16].hex(), replied=error.reply is not None,
            )
            return error.reply
        try:
            result = answer(query, self.index)
        except Exception as error:  # a bug costs this query (SERVFAIL), never the server
            self._warn("dns_answer_failed", peer=peer, error=f"{type(error).__name__}: {error}")
            return self._encode(error_response(query, dns.rcode.SERVFAIL), query, udp=udp)
        if isinstance(result, Forward):
            if self._forwarding >= self.max_concurrent:
                self.refused += 1
                self._warn("dns_forward_refused", peer=peer, in_flight=self._forwarding)
                return self._encode(error_response(query, dns.rcode.REFUSED), query, udp=udp)
            return query
        self.answered += 1
        return self._encode(result, query, udp=udp)

    async def forward(self, query: dns.message.Message, peer: str, *, udp: bool) -> bytes | None:
        self.forwarded += 1
        self._forwarding += 1
        try:
            response = await self.forwarder.resolve(query)
            return self._encode(response, query, udp=udp)
        except Exception as error:  # the client gets no answer; the server goes on
            self._warn("dns_forward_failed", peer=peer, error=f"{type(error).__name__}: {error}")
            return None
        finally:
            self._forwarding -= 1

    def _encode(self, response: dns.message.Message, query: dns.message.Message, *, udp: bool) -> bytes | None:
        if not udp:
            limit = TCP_MAX_SIZE
        elif query.edns >= 0:
            limit = min(max(CLASSIC_UDP_SIZE, query.payload), UDP_PAYLOAD)
        else:
            limit = CLASSIC_UDP_SIZE
        try:
            return response.to_wire(max_size=limit, prefer_truncation=True)
        except Exception as error:
            self._warn("dns_encode_failed", error=f"{type(error).__name__}: {error}")
            return None

    def _warn(self, event: str, **fields: Any) -> None:
        if self._throttle.allow():
            shown = {key: value[:_SHOWN] if isinstance(value, str) else value for key, value in fields.items()}
            log.warning(event, **shown, suppressed=self._throttle.take_suppressed())

    # -- UDP ----------------------------------------------------------------------

    def on_datagram(self, wire: bytes, address: Any, transport: asyncio.DatagramTransport) -> None:
        peer = _peer(address)
        outcome = self.handle_locally(wire, peer, udp=True)
        if isinstance(outcome, bytes):
            transport.sendto(outcome, address)
        elif outcome is not None:
            self._spawn(self._forward_udp(outcome, address, peer, transport), name=f"dns-forward-{peer}")

    async def _forward_udp(
        self, query: dns.message.Message, address: Any, peer: str, transport: asyncio.DatagramTransport
    ) -> None:
        reply = await self.forward(query, peer, udp=True)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, address)

    def _spawn(self, coro: Any, *, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- TCP ----------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # held so close() can cancel it
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        peer = _peer(writer.get_extra_info("peername"))
        try:
            while True:
                header = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle_timeout)
                wire = await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), self.tcp_idle_timeout)
                outcome = self.handle_locally(wire, peer, udp=False)
                if isinstance(outcome, dns.message.Message):
                    reply = await self.forward(outcome, peer, udp=False)
                else:
                    reply = outcome
                if reply is None:
                    return  # nothing sensible to say on this stream: close it
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # the client went away or went quiet
        except Exception as error:
            self._warn("dns_tcp_failed", peer=peer, error=f"{type(error).__name__}: {error}")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport is not a DatagramTransport subclass: cast, don't check.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.transport is None:
            return
        try:
            self.server.on_datagram(data, addr, self.transport)
        except Exception:  # never let one packet take the listener down
            log.exception("dns_udp_failed", peer=_peer(addr))

    def error_received(self, exc: Exception) -> None:
        # E.g. ICMP port unreachable for a client that left: nothing to do.
        log.debug("dns_udp_error", error=str(exc)[:_SHOWN])
