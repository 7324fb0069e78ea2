"""kube-proxy data path: direct to a backend vs through the proxy, side by side.

Run: python -m bench.proxy [--seconds 1] [--rounds 3]   (about 35 s)

Three kinds of processes, all on loopback: the backends (a bulk sink and a
short request/reply server), the proxy (the real Proxier and listeners, given a
Service and its Endpoints directly, so no API server is needed), and the client
(this process). The same client code measures the direct path and the proxied
one; the proxy runs once with splice and once with the plain copy loop.

- bulk: 1 and 8 parallel streams, each a blocking socket sending 128 KiB
  writes for --seconds; the sink reports the bytes it received, so the figure
  is end to end.
- short: connections per second for request/reply exchanges with 16 in flight
  (asyncio client: connect, send 64 bytes, read the 128-byte reply to EOF,
  close; the server closes after replying, like HTTP/1.0).

Each figure is the median of --rounds samples, the targets taking turns, so a
burst of load from elsewhere on the machine hits them alike. The CPU each
process used per GB or per exchange is printed too: on a machine with fewer
cores than busy processes (2 here, for client, proxy and backends) the ratios
are bound by the sum of those costs, and the proxy's are mostly kernel TCP work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Any

BULK_CHUNK = 128 * 1024
REQUEST = b"GET / HTTP/1.0\r\n" + b"x" * 46 + b"\r\n"  # 64 bytes
REPLY = b"HTTP/1.0 200 OK\r\n" + b"y" * 109 + b"\r\n"  # 128 bytes
SHORT_IN_FLIGHT = 16


# Backends (their own process) -------------------------------------------------------------


def _serve_bulk(listener: socket.socket) -> None:
    def sink(conn: socket.socket) -> None:
        buffer = bytearray(BULK_CHUNK)
        total = 0
        with conn:
            while True:
                n = conn.recv_into(buffer)
                if not n:
                    break
                total += n
            conn.sendall(struct.pack("!Q", total))

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=sink, args=(conn,), daemon=True).start()


class _ReplyProtocol(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= len(REQUEST):
            self.transport.write(REPLY)
            self.transport.close()


def run_backends() -> None:
    bulk = socket.create_server(("127.0.0.1", 0), backlog=128)
    threading.Thread(target=_serve_bulk, args=(bulk,), daemon=True).start()

    async def serve_short() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_ReplyProtocol, "127.0.0.1", 0, backlog=4096, reuse_address=True)
        short_port = server.sockets[0].getsockname()[1]
        print(bulk.getsockname()[1], short_port, flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent goes away

    asyncio.run(serve_short())


# The proxy (its own process) ---------------------------------------------------------------


def run_proxy(bulk_port: int, short_port: int, use_splice: bool) -> None:
    from kybernetes.v1 import endpoints_pb2, meta_pb2, service_pb2

    from services.proxy.proxier import Proxier, ProxyOptions

    async def serve() -> None:
        proxier = Proxier(ProxyOptions(bind_address="127.0.0.1", use_splice=use_splice))
        ports = []
        for name, backend_port in (("bulk", bulk_port), ("short", short_port)):
            proxy_port = _free_port()
            proxier.set_endpoints(endpoints_pb2.Endpoints(
                metadata=meta_pb2.ObjectMeta(namespace="bench", name=name),
                subsets=[endpoints_pb2.EndpointSubset(
                    addresses=[endpoints_pb2.EndpointAddress(ip="127.0.0.1")],
                    ports=[endpoints_pb2.EndpointPort(port=backend_port)],
                )],
            ))
            proxier.set_service(service_pb2.Service(
                metadata=meta_pb2.ObjectMeta(namespace="bench", name=name),
                spec=service_pb2.ServiceSpec(ports=[service_pb2.ServicePort(port=proxy_port)]),
            ))
            ports.append(proxy_port)
        # The proxier has no "listening" event: a setup step, polled.
        while any(p.listener is None for p in proxier.ports.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        print(*ports, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    from services.common.log import configure_logging
    from services.common.servicemain import run_service

    configure_logging("kube-proxy", level="warning")
    run_service(serve())  # as services.proxy.main runs it (its GC settings included)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The client (this process) ------------------------------------------------------------------


def bulk_gbits(port: int, streams: int, seconds: float) -> float:
    payload = b"\0" * BULK_CHUNK
    received = [0] * streams
    barrier = threading.Barrier(streams + 1)

    def stream(index: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            barrier.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            report = b""
            while len(report) < 8:
                chunk = sock.recv(8 - len(report))
                if not chunk:
                    raise ConnectionError("the sink closed without reporting")
                report += chunk
            received[index] = struct.unpack("!Q", report)[0]

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.monotonic()
    for thread in threads:
        thread.join()
    return sum(received) * 8 / (time.monotonic() - started) / 1e9


def short_rate(port: int, seconds: float) -> tuple[float, int]:
    """Exchanges per second with SHORT_IN_FLIGHT at a time, and how many failed."""

    async def run() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        done = failed = 0
        deadline = loop.time() + seconds

        async def worker() -> None:
            nonlocal done, failed
            while loop.time() < deadline:
                sock = socket.socket()
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, ("127.0.0.1", port))
                    await loop.sock_sendall(sock, REQUEST)
                    reply = b""
                    while True:
                        chunk = await loop.sock_recv(sock, 4096)
                        if not chunk:
                            break
                        reply += chunk
                    if reply == REPLY:
                        done += 1
                    else:
                        failed += 1
                except OSError:
                    failed += 1
                finally:
                    sock.close()

        started = loop.time()
        await asyncio.gather(*(worker() for _ in range(SHORT_IN_FLIGHT)))
        return done / (loop.time() - started), failed

    return asyncio.run(run())


def _cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) a process has used: pid, or this process."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spawn(*role: str) -> tuple[subprocess.Popen, list[int]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.proxy", "--role", *role],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    line = process.stdout.readline() if process.stdout else ""
    if not line:
        raise RuntimeError(f"{' '.join(role)} did not start")
    return process, [int(port) for port in line.split()]


class Target:
    """A place the client connects to: a backend directly, or a proxy in front of it."""

    def __init__(self, name: str, bulk_port: int, short_port: int, proxy: subprocess.Popen | None) -> None:
        self.name = name
        self.bulk_port = bulk_port
        self.short_port = short_port
        self.proxy = proxy
        self.samples: dict[str, list[float]] = {}
        # CPU seconds used per unit (GB or connection): proxy, client, backends.
        self.cpu: dict[str, list[tuple[float, float, float]]] = {}


def _cpu_snapshot(target: Target, backends_pid: int) -> tuple[float, float, float]:
    """CPU seconds so far of the proxy (0 for direct), the client (this process) and the backends."""
    proxy = _cpu_seconds(target.proxy.pid) if target.proxy is not None else 0.0
    return proxy, _cpu_seconds(), _cpu_seconds(backends_pid)


def _measure(target: Target, figure: str, seconds: float, backends_pid: int) -> None:
    before = _cpu_snapshot(target, backends_pid)
    started = time.monotonic()
    if figure == "short":
        value, failures = short_rate(target.short_port, seconds)
        if failures:
            raise RuntimeError(f"{failures} short exchanges failed through {target.name}")
        units = value * (time.monotonic() - started)
    else:
        value = bulk_gbits(target.bulk_port, 1 if figure == "bulk1" else 8, seconds)
        units = value * (time.monotonic() - started) / 8  # GB
    after = _cpu_snapshot(target, backends_pid)
    target.samples.setdefault(figure, []).append(value)
    target.cpu.setdefault(figure, []).append(tuple((a - b) / units for a, b in zip(after, before, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one sample (default %(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="samples per figure and target, interleaved (default %(default)s)"
    )
    parser.add_argument("--role", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        if args.role[0] == "backends":
            run_backends()
        else:
            run_proxy(int(args.role[1]), int(args.role[2]), args.role[3] == "splice")
        return

    backends, (bulk_port, short_port) = _spawn("backends")
    targets = [Target("direct", bulk_port, short_port, None)]
    try:
        for mode in ("splice", "copy"):
            proxy, (proxy_bulk, proxy_short) = _spawn("proxy", str(bulk_port), str(short_port), mode)
            targets.append(Target(f"proxy ({mode})", proxy_bulk, proxy_short, proxy))
        for target in targets:
            short_rate(target.short_port, 0.2)  # warm up: first connections, imports, caches

        print(
            f"kube-proxy data path on loopback, {os.cpu_count()} CPUs; median of {args.rounds} samples "
            f"of {args.seconds:g} s per figure, targets interleaved\n"
        )
        print(f"{'':<26}" + "".join(f"{t.name:<26}" for t in targets))
        figures = (
            ("bulk1", "bulk, 1 stream", "Gbit/s"),
            ("bulk8", "bulk, 8 streams", "Gbit/s"),
            ("short", f"short conns, {SHORT_IN_FLIGHT} at once", "conn/s"),
        )
        for figure, label, unit in figures:
            for _ in range(args.rounds):
                for target in targets:
                    _measure(target, figure, args.seconds, backends.pid)
            direct = statistics.median(targets[0].samples[figure])
            cells = []
            for target in targets:
                value = statistics.median(target.samples[figure])
                text = f"{value:,.1f} {unit}" if unit == "Gbit/s" else f"{value:,.0f} {unit}"
                if target.proxy is not None:
                    text += f" {value / direct:4.0%}"
                cells.append(f"{text:<26}")
            print(f"{label:<26}" + "".join(cells), flush=True)

        print("\nCPU used per GB (bulk) or per exchange (short): proxy / client / backends")
        for figure, label, unit in figures:
            bulk = unit == "Gbit/s"
            cells = []
            for target in targets:
                columns = [statistics.median(column) for column in zip(*target.cpu[figure], strict=True)]
                texts = [f"{c:.2f} s" if bulk else f"{c * 1e6:.0f} us" for c in columns]
                if target.proxy is None:
                    texts[0] = "-"
                cells.append(f"{' / '.join(texts):<26}")
            print(f"{label:<26}" + "".join(cells))
        sys.stdout.flush()
    finally:
        for process in [backends, *(t.proxy for t in targets if t.proxy is not None)]:
            if process.stdin:
                process.stdin.close()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


if __name__ == "__main__":
    main()
