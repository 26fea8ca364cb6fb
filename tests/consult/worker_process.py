"""A consult signalling worker in its own process, for tests that kill one (``kill -9``).

Run as ``python -m tests.consult.worker_process REDIS_URL PORT LEASE_SECONDS``; it prints
``ready`` once it serves. (A worker of the whole app that keeps calls' records and is killed
mid-recording is an ``AppServer``: see ``tests/consult/test_recording.py``.)
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette

from consult.rooms import ConsultRooms
from health.core.bus import RedisBus
from health.core.settings import Settings
from tests.consult.conftest import signalling_app


def main() -> None:
    redis_url, port, lease_seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    bus = RedisBus(redis_url)
    rooms = ConsultRooms(bus=bus, settings=Settings(), lease_seconds=lease_seconds)
    inner = signalling_app(rooms)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await rooms.start()
        print("ready", flush=True)
        yield
        await rooms.close()
        await bus.close()

    app = Starlette(routes=inner.routes, lifespan=lifespan)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
