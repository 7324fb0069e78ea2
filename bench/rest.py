"""The Kubernetes REST API against the gRPC API, side by side in one run (issue 15): creates/s,
a List of 5,000 pods, and watch delay (write to event), each through both, on the same API
server (TLS, the admin's client certificate, every call authenticated and authorized, as
`make up` runs it). REST is driven as client libraries drive it: aiohttp, JSON bodies, the
answer read and parsed; gRPC with the project's client, the answer decoded.

Run: `python -m bench.rest` (starts its own etcd and API server on free loopback ports;
about a minute). Figures alternate REST and gRPC rounds so that the noise of a shared machine
falls on both, and print medians and REST/gRPC ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import tempfile
import time
import uuid
from typing import Any

import aiohttp

from bench.apiserver import Plane, fmt_ms, make_pod, percentile, run_concurrently
from kybernetes.v1 import meta_pb2
from services.apiserver.rest.jsonconv import object_to_json
from services.common.resources import PODS
from tools.processes import dev_pki


class RestPlane(Plane):
    """bench.apiserver's secure Plane, its API server serving the REST API too."""

    def __init__(self, state: str) -> None:
        super().__init__(state, secure=True, rest=True)
        pki = dev_pki()
        self.ssl = ssl.create_default_context(cafile=str(pki.ca_file))
        cert, key = pki.pair("admin")
        self.ssl.load_cert_chain(cert, key)
        self.base = f"https://{self.api.rest_address}"

    def session(self, connections: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl, limit=connections))


async def grpc_creates(plane: RestPlane, namespace: str, total: int, concurrency: int) -> float:
    async with plane.client() as client:
        stub = client.stub(PODS)
        pods = [make_pod(f"g-{i}", namespace) for i in range(total)]
        seconds, _ = await run_concurrently(total, concurrency, lambda i: stub.Create(pods[i]))
    return total / seconds


async def rest_creates(plane: RestPlane, namespace: str, total: int, concurrency: int) -> float:
    url = f"{plane.base}/api/v1/namespaces/{namespace}/pods"
    bodies = [json.dumps(object_to_json(PODS, make_pod(f"r-{i}", namespace))).encode() for i in range(total)]
    async with plane.session(concurrency) as session:

        async def create(i: int) -> None:
            async with session.post(url, data=bodies[i], headers={"Content-Type": "application/json"}) as response:
                json.loads(await response.read())
                if response.status != 201:
                    raise RuntimeError(f"REST create: {response.status}")

        seconds, _ = await run_concurrently(total, concurrency, create)
    return total / seconds


async def grpc_list(plane: RestPlane, namespace: str) -> tuple[int, float]:
    async with plane.client() as client:
        started = time.perf_counter()
        listing = await client.list(PODS, namespace)
        return len(listing.items), time.perf_counter() - started


async def rest_list(plane: RestPlane, namespace: str) -> tuple[int, float]:
    async with plane.session(1) as session:
        started = time.perf_counter()
        async with session.get(f"{plane.base}/api/v1/namespaces/{namespace}/pods") as response:
            listing = json.loads(await response.read())
        return len(listing["items"]), time.perf_counter() - started


async def watch_delays(plane: RestPlane, events: int, rate: float) -> tuple[list[float], list[float]]:
    """One REST and one gRPC watch of the same namespace, open together; `events` creates at
    `rate`/s through gRPC, each stamped with its send time: (REST delays, gRPC delays)."""
    namespace = f"bench-rw-{uuid.uuid4().hex[:4]}"
    rest: list[float] = []
    grpc_: list[float] = []

    def record(into: list[float], annotations: dict[str, Any]) -> None:
        into.append(time.time() - float(annotations["sent"]))

    async def rest_watch(ready: asyncio.Event) -> None:
        url = f"{plane.base}/api/v1/namespaces/{namespace}/pods?watch=1"
        async with plane.session(1) as session, session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
            ready.set()
            async for line in response.content:
                event = json.loads(line)
                if event["type"] == "ADDED":
                    record(rest, event["object"]["metadata"]["annotations"])
                    if len(rest) == events:
                        return

    async def grpc_watch(ready: asyncio.Event) -> None:
        async with plane.client() as client:
            call = client.stub(PODS).Watch(meta_pb2.ListOptions(namespace=namespace))
            ready.set()
            async for event in call:
                if event.type == "ADDED":
                    record(grpc_, dict(event.object.metadata.annotations))
                    if len(grpc_) == events:
                        break
            call.cancel()

    readies = [asyncio.Event(), asyncio.Event()]
    watchers = [asyncio.create_task(rest_watch(readies[0])), asyncio.create_task(grpc_watch(readies[1]))]
    await asyncio.gather(*(ready.wait() for ready in readies))
    await asyncio.sleep(0.5)  # both streams registered
    async with plane.client() as client:
        for i in range(events):
            pod = make_pod(f"w-{i}", namespace)
            pod.metadata.annotations["sent"] = repr(time.time())
            await client.create(pod)
            await asyncio.sleep(1 / rate)
    await asyncio.wait_for(asyncio.gather(*watchers), 60)
    return rest, grpc_


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="kyb-bench-rest-") as state:
        plane = RestPlane(state)
        try:
            print(f"# REST (aiohttp, JSON) against gRPC on one API server: {args.pods} creates per run, "
                  f"median of {args.rounds} alternating rounds; TLS and authorization as make up runs them")
            print(f"creates/s:\n  {'concurrency':>11} {'REST':>8} {'gRPC':>8} {'REST/gRPC':>10}")
            for concurrency in args.concurrency:
                figures: dict[str, list[float]] = {"rest": [], "grpc": []}
                for round_ in range(args.rounds):
                    namespace = f"bench-rc-{concurrency}-{round_}-{uuid.uuid4().hex[:4]}"
                    figures["rest"].append(await rest_creates(plane, namespace, args.pods, concurrency))
                    figures["grpc"].append(await grpc_creates(plane, namespace, args.pods, concurrency))
                rest, grpc_ = statistics.median(figures["rest"]), statistics.median(figures["grpc"])
                print(f"  {concurrency:>11} {rest:>8.0f} {grpc_:>8.0f} {rest / grpc_:>10.2f}")

            namespace = f"bench-rl-{uuid.uuid4().hex[:4]}"
            async with plane.client() as client:
                stub = client.stub(PODS)
                await run_concurrently(args.list_pods, 64, lambda i: stub.Create(make_pod(f"l-{i}", namespace)))
            times: dict[str, list[float]] = {"rest": [], "grpc": []}
            for _ in range(args.rounds):
                count, seconds = await rest_list(plane, namespace)
                assert count == args.list_pods, count
                times["rest"].append(seconds)
                count, seconds = await grpc_list(plane, namespace)
                assert count == args.list_pods, count
                times["grpc"].append(seconds)
            rest, grpc_ = statistics.median(times["rest"]), statistics.median(times["grpc"])
            print(f"list of {args.list_pods} pods (read and decoded): REST {fmt_ms(rest)}, gRPC {fmt_ms(grpc_)}, "
                  f"REST/gRPC time {rest / grpc_:.2f}")

            rest_delays, grpc_delays = await watch_delays(plane, args.watch_events, args.watch_rate)
            print(f"watch delay, write to event ({args.watch_events} creates at {args.watch_rate:.0f}/s, "
                  "both streams open together):")
            for name, delays in (("REST", rest_delays), ("gRPC", grpc_delays)):
                print(f"  {name}: p50 {fmt_ms(percentile(delays, 0.5))}, p99 {fmt_ms(percentile(delays, 0.99))}")
        finally:
            plane.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=2000, help="creates per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--list-pods", type=int, default=5000)
    parser.add_argument("--watch-events", type=int, default=200)
    parser.add_argument("--watch-rate", type=float, default=20.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
