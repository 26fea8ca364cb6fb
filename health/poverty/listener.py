"""The incremental recompute: flags follow the change feed, inside ``health serve``.

:class:`FlagListener` subscribes to ``records.changes``. A reader task puts each relevant
announcement (a bill, a diagnosis, a contract, a household changed) on a queue; a worker
takes whatever has queued up — one change, or the hundred entries of a transaction Bundle —
and recomputes the households they touch in one go. Nothing polls: the worker waits on the
queue. With several uvicorn workers on Redis every process hears every change; the bus's
shared counter (``MessageBus.hit``) lets the first to count a change handle it. A process of
another deployment that shares the Redis server (a staging service, a second city) hears
none of it: the bus keeps each deployment in its own namespace (``health.core.bus``).

A change the listener misses (the service was down; the bus keeps nothing) is caught by the
next change to the same household or by ``health poverty recompute``, which a deployment
runs nightly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from health.core.bus import MessageBus, Subscription
from health.core.database import Database
from health.core.settings import Settings
from health.poverty.rules import RuleFileError, load_rules
from health.poverty.service import RELEVANT_TYPES, IllnessPovertyService
from records.feed import CHANGES_CHANNEL
from records.indexing import SearchIndexer
from records.store import Change

logger = logging.getLogger(__name__)

#: How long a change's "already handled" count lives on the bus.
_CLAIM_SECONDS = 3600
_RETRY_DELAYS = (0.5, 2.0, 8.0)


class FlagListener:
    """Recomputes the flags of the households that each announced change touches."""

    def __init__(self, service: IllnessPovertyService, bus: MessageBus) -> None:
        self.service = service
        self.bus = bus
        self._queue: asyncio.Queue[Change] = asyncio.Queue()
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(CHANGES_CHANNEL)
        self._tasks = [
            asyncio.create_task(self._read(self._subscription), name="poverty-flags-read"),
            asyncio.create_task(self._work(), name="poverty-flags-work"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._subscription is not None:
            await self._subscription.close()

    async def _read(self, subscription: Subscription) -> None:
        async for message in subscription:
            change = _change(message)
            if change is not None and change.res_type in RELEVANT_TYPES:
                self._queue.put_nowait(change)

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            mine = [c for c in batch if await self._claim(c)]
            if mine:
                await self._recompute(mine)

    async def _claim(self, change: Change) -> bool:
        key = f"poverty-flags:{change.res_type}/{change.res_id}/{change.version}"
        try:
            return await self.bus.hit(key, _CLAIM_SECONDS) == 1
        except Exception:  # the bus is down: better twice than never
            logger.warning("could not claim %s on the bus; handling it here", key)
            return True

    async def _recompute(self, changes: list[Change]) -> None:
        for attempt, delay in enumerate((*_RETRY_DELAYS, None)):
            try:
                report = await self.service.recompute_for_changes(changes)
            except Exception:
                if delay is None:
                    logger.exception(
                        "illness-poverty flags not recomputed for %d changes; "
                        "`health poverty recompute` will catch up",
                        len(changes),
                    )
                    return
                logger.warning("flag recompute failed (attempt %d), retrying", attempt + 1)
                await asyncio.sleep(delay)
                continue
            if report.changed:
                logger.info(
                    "illness-poverty flags: %d changes from %d records",
                    len(report.changes),
                    len(changes),
                )
            return


def _change(message: dict[str, Any]) -> Change | None:
    try:
        return Change(
            str(message["type"]),
            str(message["id"]),
            int(message["versionId"]),
            str(message["method"]),
        )
    except (KeyError, TypeError, ValueError):
        logger.warning("ignoring a change announcement without type/id/versionId: %r", message)
        return None


async def start_flag_listener(
    database: Database, indexer: SearchIndexer, bus: MessageBus, settings: Settings
) -> FlagListener | None:
    """The listener ``health serve`` runs, on the rule file of ``settings``; None (logged)
    when the rule file cannot be used, so that a bad edit does not stop the clinics' service."""
    try:
        rules = await asyncio.to_thread(load_rules, settings.poverty_rules)
    except RuleFileError as error:
        logger.error("illness-poverty flags are NOT being recomputed: %s", error)
        return None
    listener = FlagListener(IllnessPovertyService(database, indexer, rules, bus=bus), bus)
    await listener.start()
    return listener
