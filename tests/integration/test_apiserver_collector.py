"""Why the API server collects garbage more often than the other services: every call a grpc.aio
server answers leaves a reference cycle behind, and only a collection frees it (issue 16)."""

from __future__ import annotations

import asyncio
import gc

import grpc

from services.apiserver.main import GC_THRESHOLDS as API_SERVER_GC_THRESHOLDS
from services.common.servicemain import GC_THRESHOLDS

CALLS = 4_000


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


def _waiting_cycles() -> int:
    """Calls whose cycle is still in memory: grpc.aio makes one _HandlerCallDetails per call."""
    return sum(type(obj).__name__ == "_HandlerCallDetails" for obj in gc.get_objects())


async def _calls_leave(thresholds: tuple[int, int, int]) -> int:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(_echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("probe.Echo", {"Echo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    saved = gc.get_threshold()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/probe.Echo/Echo")
            await echo(b"warm")
            gc.collect()
            gc.set_threshold(*thresholds)
            before = _waiting_cycles()
            for _ in range(CALLS):
                await echo(b"x", metadata=(("x-caller", "probe"),))
            return _waiting_cycles() - before
    finally:
        gc.set_threshold(*saved)
        await server.stop(None)
        gc.collect()


def test_each_call_a_grpc_server_answers_leaves_a_cycle_until_a_collection() -> None:
    waiting = asyncio.run(_calls_leave((0, 0, 0)))  # threshold 0: no automatic collection
    assert waiting >= CALLS, (
        "grpc.aio no longer leaves a cycle per call: the API server may collect at the services' "
        "thresholds again (services/apiserver/main.py, GC_THRESHOLDS)"
    )
    assert _waiting_cycles() == 0  # a collection frees them


def test_the_api_server_keeps_a_few_thousand_calls_cycles_waiting_at_most() -> None:
    # At the services' thresholds none of these calls' cycles has been collected yet ...
    assert asyncio.run(_calls_leave(GC_THRESHOLDS)) >= CALLS - 100
    # ... at the API server's, at most its young threshold's worth of objects (five per cycle).
    assert asyncio.run(_calls_leave(API_SERVER_GC_THRESHOLDS)) <= API_SERVER_GC_THRESHOLDS[0] // 5 + 100
