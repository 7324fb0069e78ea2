"""The controllers that run inside the API server process, as clients of its API."""

from __future__ import annotations

import argparse
import asyncio

from services.common.log import get_logger

log = get_logger()

# name -> coroutine factory(api_address, args); filled in as controllers land.
CONTROLLERS: dict = {}


async def start(names: list[str], api_address: str, args: argparse.Namespace) -> list[asyncio.Task]:
    tasks = []
    for name in names:
        factory = CONTROLLERS.get(name)
        if factory is None:
            log.warning("controller_unavailable", controller=name)
            continue
        tasks.append(asyncio.create_task(factory(api_address, args), name=f"controller-{name}"))
    return tasks
