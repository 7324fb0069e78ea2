"""API server benchmark: creates/s vs raw etcd, List of 5,000 pods, watch delay.

Run: `python -m bench.apiserver` (starts its own etcd and API server on free
loopback ports; takes about a minute). Prints figures and the ratios the
issue's targets are stated in, all measured in this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid

import aetcd
import grpc

from kybernetes.v1 import meta_pb2, pod_pb2
from services.common.client import ApiClient
from tools.processes import ApiServerProcess, EtcdProcess
from services.common.resources import PODS

IMAGE = "kybernetes/busybox:latest"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_pod(name: str, namespace: str) -> pod_pb2.Pod:
    return pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace, labels={"app": "bench", "tier": "web"}),
        spec=pod_pb2.PodSpec(
            containers=[
                pod_pb2.Container(
                    name="web",
                    image=IMAGE,
                    command=["httpd", "-f", "-p", "8080"],
                    ports=[pod_pb2.ContainerPort(container_port=8080, name="http")],
                )
            ]
        ),
    )


async def run_concurrently(total: int, concurrency: int, operation) -> tuple[float, list[float]]:
    """Runs operation(i) for i < total with `concurrency` in flight; returns (seconds, latencies)."""
    latencies: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            await operation(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def bench_raw_etcd(etcd_endpoint: str, total: int, concurrency: int, value: bytes) -> float:
    """Create-if-absent transactions, one per object, straight through aetcd."""
    host, _, port = etcd_endpoint.rpartition(":")
    client = aetcd.Client(host=host, port=int(port))
    await client.connect()
    prefix = f"/bench/raw/{uuid.uuid4().hex[:6]}/"

    async def create(i: int) -> None:
        key = f"{prefix}{i}".encode()
        await client.transaction(
            compare=[client.transactions.create(key) == 0],
            success=[client.transactions.put(key, value)],
            failure=[],
        )

    try:
        seconds, _ = await run_concurrently(total, concurrency, create)
    finally:
        await client.close()
    return total / seconds


async def bench_creates(address: str, total: int, concurrency: int) -> tuple[float, list[float]]:
    namespace = f"bench-c{concurrency}-{uuid.uuid4().hex[:4]}"
    async with ApiClient(address) as client:
        stub = client.stub(PODS)
        pods = [make_pod(f"pod-{i}", namespace) for i in range(total)]
        seconds, latencies = await run_concurrently(total, concurrency, lambda i: stub.Create(pods[i]))
    return total / seconds, latencies


async def bench_list(address: str, namespace: str, repeats: int = 5) -> tuple[int, list[float]]:
    async with ApiClient(address) as client:
        times, count = [], 0
        for _ in range(repeats):
            started = time.perf_counter()
            listing = await client.list(PODS, namespace)
            times.append(time.perf_counter() - started)
            count = len(listing.items)
    return count, times


def _watch_worker(address: str, namespace: str, watchers: int, expected: int, ready, results) -> None:
    """A process holding `watchers` watch streams; reports write-to-event delays."""

    async def run() -> list[float]:
        channel = grpc.aio.insecure_channel(address)
        stub = PODS.stub(channel)
        delays: list[float] = []
        done = asyncio.Event()
        finished = 0

        async def watch() -> None:
            nonlocal finished
            call = stub.Watch(meta_pb2.ListOptions(namespace=namespace))
            seen = 0
            async for event in call:
                if event.type != "ADDED":
                    continue
                delays.append(time.time() - float(event.object.metadata.annotations["sent"]))
                seen += 1
                if seen == expected:
                    break
            call.cancel()
            finished += 1
            if finished == watchers:
                done.set()

        tasks = [asyncio.create_task(watch()) for _ in range(watchers)]
        await asyncio.sleep(1.0)  # let every stream register
        ready.set()
        await asyncio.wait_for(done.wait(), 300)
        await asyncio.gather(*tasks)
        await channel.close()
        return delays

    results.put(asyncio.run(run()))


async def bench_watch(address: str, watchers: int, events: int, rate: float, processes: int) -> list[float]:
    namespace = f"bench-w{watchers}-{uuid.uuid4().hex[:4]}"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers, readies = [], []
    for index in range(processes):
        share = watchers // processes + (1 if index < watchers % processes else 0)
        ready = context.Event()
        worker = context.Process(target=_watch_worker, args=(address, namespace, share, events, ready, results))
        worker.start()
        workers.append(worker)
        readies.append(ready)
    for ready in readies:
        await asyncio.to_thread(ready.wait, 60)
    async with ApiClient(address) as client:
        for i in range(events):
            pod = make_pod(f"w-{i}", namespace)
            pod.metadata.annotations["sent"] = repr(time.time())
            await client.create(pod)
            await asyncio.sleep(1 / rate)
    delays: list[float] = []
    for _ in workers:
        delays += await asyncio.to_thread(results.get, True, 300)
    for worker in workers:
        worker.join(30)
    return delays


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="kyb-bench-") as state:
        etcd = EtcdProcess(state)
        api = ApiServerProcess(
            etcd.endpoint, "--controllers=", "--no-request-log", log_path=os.path.join(state, "api.log")
        )
        try:
            value = make_pod("pod-00000", "bench-raw").SerializeToString()
            print(f"# API server benchmark ({args.pods} pods per run, pod object {len(value)} bytes)")
            print("creates:")
            print(
                f"  {'concurrency':>11} {'api creates/s':>14} {'p50':>9} {'p99':>9} {'raw etcd txn/s':>15} {'ratio':>6}"
            )
            for concurrency in args.concurrency:
                raw = await bench_raw_etcd(etcd.endpoint, args.pods, concurrency, value)
                rate, latencies = await bench_creates(api.address, args.pods, concurrency)
                print(
                    f"  {concurrency:>11} {rate:>14.0f} {fmt_ms(percentile(latencies, 0.5)):>9} "
                    f"{fmt_ms(percentile(latencies, 0.99)):>9} {raw:>15.0f} {rate / raw:>6.2f}"
                )
            namespace = f"bench-list-{uuid.uuid4().hex[:4]}"
            async with ApiClient(api.address) as client:
                stub = client.stub(PODS)
                await run_concurrently(args.pods, 64, lambda i: stub.Create(make_pod(f"l-{i}", namespace)))
            count, times = await bench_list(api.address, namespace)
            print(
                f"list: {count} pods in {fmt_ms(statistics.median(times))} "
                f"(median of {len(times)}, best {fmt_ms(min(times))})"
            )
            print("watch delay, write to event (steady creates):")
            for watchers in args.watchers:
                delays = await bench_watch(
                    api.address, watchers, args.watch_events, args.watch_rate, args.watch_processes
                )
                print(
                    f"  {watchers:>5} watchers: {len(delays)} events at {args.watch_rate:.0f} writes/s, "
                    f"p50 {fmt_ms(percentile(delays, 0.5))}, p99 {fmt_ms(percentile(delays, 0.99))}"
                )
        finally:
            api.stop()
            etcd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--watchers", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--watch-events", type=int, default=100)
    parser.add_argument("--watch-rate", type=float, default=20.0)
    parser.add_argument("--watch-processes", type=int, default=4)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
