"""The outbox: what must reach another system, written in the transaction of the change that
calls for it, and delivered afterwards (ARCHITECTURE.md, decision 5).

:func:`enqueue` adds a message to the ``outbox`` table inside the caller's transaction, so
the message exists exactly when the change does: a rolled-back change sends nothing, a
committed one is never lost to a crash. :class:`OutboxDelivery`, one per worker process,
hands due messages to the deliverer of their ``topic`` (an SMS gateway, the poverty
registry...) and records the outcome:

- **retries** with exponential backoff (``base × 2^(attempt−1)``, capped, with ±20 %
  jitter so that workers do not retry in step) after a failure;
- an **idempotency key** per message, the same on every attempt: a receiver that stores it
  can tell a repeat from a new message, so a delivery that succeeded but was not recorded
  (the worker died in between) does not count twice. Enqueueing the same key twice keeps
  the first message only;
- **ordering per key**: messages sharing a ``key`` (one consult, one household) are
  delivered one at a time in the order they were written; a message waits while an earlier
  one of its key is still pending, however many workers deliver;
- a **dead-letter** state: a message that fails permanently (the receiver said it is wrong)
  or ``max_attempts`` times stops being tried; it stays in the table, with its last error,
  for an operator (``health outbox``) to look at and send again. A later message of the
  same key is then delivered (the dead one no longer holds its key up).

Workers claim a message for ``lease_seconds`` before delivering it; a worker that dies
mid-delivery leaves its claim to lapse and another worker tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from health.core.clock import utcnow
from health.core.database import Database
from health.core.schema import SurrogateKey, metadata

logger = logging.getLogger(__name__)

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"

outbox = Table(
    "outbox",
    metadata,
    Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    #: Which deliverer takes it: ``notification``, ``registry.flag``...
    Column("topic", String(64), nullable=False),
    #: Messages of one key are delivered in order, one at a time.
    Column("key", String(200), nullable=False),
    #: Sent with every attempt; unique, so enqueueing the same message twice keeps one.
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    #: The worker delivering it now, until ``claimed_until``.
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Index(None, "status", "next_attempt_at"),
    Index(None, "key", "status"),
)


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    topic: str
    key: str
    idempotency_key: str
    payload: dict[str, Any]
    status: str
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    delivered_at: dt.datetime | None
    last_error: str | None

    @classmethod
    def from_row(cls, row: Any) -> OutboxMessage:
        return cls(
            id=row.id,
            topic=row.topic,
            key=row.key,
            idempotency_key=row.idempotency_key,
            payload=orjson.loads(row.payload),
            status=row.status,
            attempts=row.attempts,
            created_at=_aware(row.created_at),
            next_attempt_at=_aware(row.next_attempt_at),
            delivered_at=_aware(row.delivered_at) if row.delivered_at else None,
            last_error=row.last_error,
        )


class DeliveryFailed(Exception):
    """A delivery that did not succeed. ``permanent``: trying again cannot help (the
    receiver refused the message as it is); the message goes to the dead letters at once."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Deliverer(Protocol):
    """Delivers the messages of one topic. Returning means delivered; raising
    :class:`DeliveryFailed` (or anything else: a retry) means not."""

    async def deliver(self, message: OutboxMessage) -> None: ...

    async def close(self) -> None:
        """Let go of connections (at shutdown)."""
        ...


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


async def enqueue(
    session: AsyncSession,
    *,
    topic: str,
    key: str,
    payload: dict[str, Any],
    idempotency_key: str | None = None,
    not_before: dt.datetime | None = None,
) -> str:
    """Add a message in ``session``'s transaction; its idempotency key.

    A message whose ``idempotency_key`` is already in the outbox is not added again.
    """
    chosen = idempotency_key or uuid.uuid4().hex
    present = await session.execute(select(outbox.c.id).where(outbox.c.idempotency_key == chosen))
    if present.first() is not None:
        return chosen
    now = utcnow()
    await session.execute(
        insert(outbox).values(
            topic=topic,
            key=key,
            idempotency_key=chosen,
            payload=orjson.dumps(payload).decode(),
            status=PENDING,
            attempts=0,
            created_at=now,
            next_attempt_at=not_before or now,
        )
    )
    return chosen


async def messages(
    session: AsyncSession,
    *,
    topic: str | None = None,
    status: str | None = None,
    key: str | None = None,
    limit: int = 100,
) -> list[OutboxMessage]:
    """Messages, oldest first: all, or those of a topic, a status, a key."""
    query = select(outbox).order_by(outbox.c.id).limit(limit)
    if topic is not None:
        query = query.where(outbox.c.topic == topic)
    if status is not None:
        query = query.where(outbox.c.status == status)
    if key is not None:
        query = query.where(outbox.c.key == key)
    return [OutboxMessage.from_row(r) for r in (await session.execute(query)).all()]


async def counts(session: AsyncSession) -> dict[tuple[str, str], int]:
    """How many messages of each (topic, status)."""
    rows = await session.execute(
        select(outbox.c.topic, outbox.c.status, func.count()).group_by(
            outbox.c.topic, outbox.c.status
        )
    )
    return {(r[0], r[1]): int(r[2]) for r in rows.all()}


async def send_again(session: AsyncSession, *, message_id: int) -> bool:
    """Put a dead letter back in line, with its attempts reset; whether there was one."""
    done = await session.execute(
        update(outbox)
        .where(outbox.c.id == message_id, outbox.c.status == DEAD)
        .values(status=PENDING, attempts=0, next_attempt_at=utcnow(), claimed_until=None)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def backoff_seconds(attempts: int, *, base: float, cap: float, jitter: float = 0.2) -> float:
    """The wait after the ``attempts``-th failure: base·2^(attempts−1), capped, jittered."""
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    return delay * (1 + random.uniform(-jitter, jitter))


class OutboxDelivery:
    """Delivers this worker's share of the outbox, in the background, until closed."""

    def __init__(
        self,
        database: Database,
        deliverers: Mapping[str, Deliverer],
        *,
        worker_id: str | None = None,
        max_attempts: int = 10,
        retry_base_seconds: float = 2.0,
        retry_max_seconds: float = 3600.0,
        poll_seconds: float = 1.0,
        lease_seconds: float = 60.0,
        batch: int = 20,
    ) -> None:
        self.database = database
        self.deliverers = dict(deliverers)
        self.worker_id = worker_id or uuid.uuid4().hex
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox delivery")

    def wake(self) -> None:
        """Look for due messages now rather than at the next poll (after an enqueue)."""
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                delivered = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away: try again at the next poll
                logger.exception("outbox delivery failed; trying again")
                delivered = 0
            if delivered:
                continue  # there may be more due now (the next of a key)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def run_once(self) -> int:
        """Deliver the messages due now (one per key); how many were attempted."""
        claimed = await self._claim()
        await asyncio.gather(*(self._deliver(m) for m in claimed))
        return len(claimed)

    async def _claim(self) -> list[OutboxMessage]:
        now = utcnow()
        earlier = outbox.alias("earlier")
        due = (
            select(outbox.c.id)
            .where(
                outbox.c.status == PENDING,
                outbox.c.topic.in_(self.deliverers),
                outbox.c.next_attempt_at <= now,
                or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now),
                # The first pending message of its key: ordering per key.
                ~exists().where(
                    earlier.c.key == outbox.c.key,
                    earlier.c.status == PENDING,
                    earlier.c.id < outbox.c.id,
                ),
            )
            .order_by(outbox.c.id)
            .limit(self.batch)
        )
        claimed: list[OutboxMessage] = []
        async with self.database.transaction(write=True) as session:
            ids = [row.id for row in (await session.execute(due)).all()]
            until = now + dt.timedelta(seconds=self.lease_seconds)
            for message_id in ids:
                # Conditional, so two workers never both take one message.
                done = await session.execute(
                    update(outbox)
                    .where(
                        outbox.c.id == message_id,
                        outbox.c.status == PENDING,
                        or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now),
                    )
                    .values(claimed_by=self.worker_id, claimed_until=until)
                )
                if done.rowcount:  # type: ignore[attr-defined]
                    row = (
                        await session.execute(select(outbox).where(outbox.c.id == message_id))
                    ).one()
                    claimed.append(OutboxMessage.from_row(row))
        return claimed

    async def _deliver(self, message: OutboxMessage) -> None:
        deliverer = self.deliverers[message.topic]
        error: str | None = None
        permanent = False
        try:
            await deliverer.deliver(message)
        except DeliveryFailed as failure:
            error, permanent = str(failure), failure.permanent
        except Exception as failure:
            error = f"{type(failure).__name__}: {failure}"
        attempts = message.attempts + 1
        now = utcnow()
        values: dict[str, Any] = {"attempts": attempts, "claimed_by": None, "claimed_until": None}
        if error is None:
            values.update(status=DELIVERED, delivered_at=now, last_error=None)
        elif permanent or attempts >= self.max_attempts:
            values.update(status=DEAD, last_error=error[:2000])
            logger.warning(
                "outbox message %s (%s) is a dead letter after %d attempts: %s",
                message.id,
                message.topic,
                attempts,
                error[:200],
            )
        else:
            wait = backoff_seconds(
                attempts, base=self.retry_base_seconds, cap=self.retry_max_seconds
            )
            values.update(last_error=error[:2000], next_attempt_at=now + dt.timedelta(seconds=wait))
            logger.info(
                "outbox message %s (%s) failed (attempt %d), again in %.1f s: %s",
                message.id,
                message.topic,
                attempts,
                wait,
                error[:200],
            )
        async with self.database.transaction(write=True) as session:
            await session.execute(
                update(outbox)
                .where(and_(outbox.c.id == message.id, outbox.c.claimed_by == self.worker_id))
                .values(**values)
            )
