"""A consult signalling worker in its own process, for tests that kill one (``kill -9``).

Run as ``python -m tests.consult.worker_process REDIS_URL PORT LEASE_SECONDS [DATABASE_URL
SECRET_HEX RECORDING_DIR]``; it prints ``ready`` once it serves. With the last three its hub
keeps what calls produce in that app's records (``tests.consult.on_record``) and records
calls into that folder.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from consult.rooms import ConsultRooms
from health.core.bus import RedisBus
from health.core.settings import Settings
from tests.consult.conftest import signalling_app
from tests.consult.on_record import records_on


def main() -> None:
    redis_url, port, lease_seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    on_record = sys.argv[4:7]
    bus = RedisBus(redis_url)
    settings = Settings(consult_recording_dir=Path(on_record[2])) if on_record else Settings()
    rooms = ConsultRooms(bus=bus, settings=settings, lease_seconds=lease_seconds)
    inner = signalling_app(rooms)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if on_record:
                parts = await stack.enter_async_context(
                    records_on(on_record[0], on_record[1], "http://localhost/fhir")
                )
                rooms.records = rooms.call_data.records = parts.call_records()
            await rooms.start()
            print("ready", flush=True)
            yield
            await rooms.close()
            await bus.close()

    app = Starlette(routes=inner.routes, lifespan=lifespan)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
