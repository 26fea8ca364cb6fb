"""The outbox delivers what a committed change called for — once, in order, with retries —
to a real HTTP receiver on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from health.core.database import Database
from health.core.outbox import (
    DEAD,
    DELIVERED,
    PENDING,
    OutboxDelivery,
    enqueue,
    messages,
    send_again,
)
from integrations.http_delivery import HttpDelivery, signature
from integrations.notifications import SmsGateway, WeChatGateway
from tests.receivers import Receiver
from tests.services import AppServer


@pytest.fixture
def topic() -> str:
    """A topic of the test's own: messages other tests left behind are not its business."""
    return f"test.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    instance = Receiver().start()
    yield instance
    instance.stop()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    instance = Database(database_url)
    yield instance
    await instance.dispose()


def delivery(
    database: Database, receiver: Receiver, topic: str, **options: object
) -> OutboxDelivery:
    options.setdefault("retry_base_seconds", 0.05)
    options.setdefault("poll_seconds", 0.05)
    return OutboxDelivery(
        database,
        {topic: HttpDelivery(receiver.url, token="gateway-token")},
        **options,  # type: ignore[arg-type]
    )


async def wait_for(receiver: Receiver, count: int) -> None:
    await asyncio.to_thread(receiver.wait_for, lambda r: len(r) >= count)


async def status_of(database: Database, key: str) -> list[str]:
    async with database.transaction(write=False) as session:
        return [m.status for m in await messages(session, key=key)]


async def until_status(database: Database, key: str, wanted: list[str]) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while await status_of(database, key) != wanted:
        assert asyncio.get_running_loop().time() < deadline, await status_of(database, key)
        await asyncio.sleep(0.02)


async def test_a_committed_message_is_delivered_once_and_a_rolled_back_one_never(
    database: Database, receiver: Receiver, topic: str
) -> None:
    key = f"consult/{uuid.uuid4()}"
    with pytest.raises(RuntimeError):
        async with database.transaction(write=True) as session:
            await enqueue(session, topic=topic, key=key, payload={"n": "rolled back"})
            raise RuntimeError("the change failed")
    async with database.transaction(write=True) as session:
        idempotency = await enqueue(session, topic=topic, key=key, payload={"n": "kept"})
        # The same message enqueued again (a retried request) is kept once.
        await enqueue(
            session, topic=topic, key=key, payload={"n": "kept"}, idempotency_key=idempotency
        )
    worker = delivery(database, receiver, topic)
    worker.start()
    try:
        await wait_for(receiver, 1)
        await until_status(database, key, [DELIVERED])
    finally:
        await worker.close()
    assert [r.body for r in receiver.requests] == [{"n": "kept"}]
    sent = receiver.requests[0]
    assert sent.headers["idempotency-key"] == idempotency
    assert sent.headers["authorization"] == "Bearer gateway-token"


async def test_failures_are_retried_with_growing_waits_under_one_idempotency_key(
    database: Database, receiver: Receiver, topic: str
) -> None:
    key = f"consult/{uuid.uuid4()}"
    receiver.fail_with = [503, 503, 429, 500]
    async with database.transaction(write=True) as session:
        await enqueue(session, topic=topic, key=key, payload={"n": 1})
    worker = delivery(database, receiver, topic, retry_base_seconds=0.1)
    worker.start()
    try:
        await wait_for(receiver, 5)
        await until_status(database, key, [DELIVERED])
    finally:
        await worker.close()
    attempts = receiver.requests
    assert [r.status for r in attempts] == [503, 503, 429, 500, 200]
    assert len({r.headers["idempotency-key"] for r in attempts}) == 1
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    # Waits of 0.1, 0.2, 0.4, 0.8 s (±20 % jitter): each at least its doubling's lower bound
    # (a loaded machine only adds to them).
    assert all(gap >= 0.1 * 2**n * 0.8 for n, gap in enumerate(gaps)), gaps
    async with database.transaction(write=False) as session:
        (message,) = await messages(session, key=key)
    assert message.attempts == 5 and message.delivered_at is not None


async def test_a_refused_message_is_a_dead_letter_at_once_and_can_be_sent_again(
    database: Database, receiver: Receiver, topic: str
) -> None:
    key = f"consult/{uuid.uuid4()}"
    receiver.fail_with = [422]
    async with database.transaction(write=True) as session:
        await enqueue(session, topic=topic, key=key, payload={"n": 1})
    worker = delivery(database, receiver, topic)
    worker.start()
    try:
        await until_status(database, key, [DEAD])
        assert len(receiver.requests) == 1
        async with database.transaction(write=False) as session:
            (dead,) = await messages(session, key=key)
        assert dead.last_error is not None and "HTTP 422" in dead.last_error
        # An operator sends it again (the gateway was fixed).
        async with database.transaction(write=True) as session:
            assert await send_again(session, message_id=dead.id)
        worker.wake()
        await until_status(database, key, [DELIVERED])
    finally:
        await worker.close()
    assert [r.status for r in receiver.requests] == [422, 200]


async def test_a_message_that_keeps_failing_stops_after_max_attempts(
    database: Database, receiver: Receiver, topic: str
) -> None:
    key = f"consult/{uuid.uuid4()}"
    receiver.fail_with = [503] * 10
    async with database.transaction(write=True) as session:
        await enqueue(session, topic=topic, key=key, payload={"n": 1})
    worker = delivery(database, receiver, topic, max_attempts=3, retry_base_seconds=0.01)
    worker.start()
    try:
        await until_status(database, key, [DEAD])
    finally:
        await worker.close()
    assert len(receiver.requests) == 3


async def test_messages_of_one_key_arrive_in_order_while_other_keys_go_ahead(
    database: Database, receiver: Receiver, topic: str
) -> None:
    slow, other = f"consult/{uuid.uuid4()}", f"consult/{uuid.uuid4()}"
    failures = {"first": 3}

    def answer(body: dict[str, str]) -> int | None:
        if body["n"] == "first" and failures["first"]:
            failures["first"] -= 1
            return 503
        return 200

    receiver.answer = answer
    async with database.transaction(write=True) as session:
        for n in ("first", "second", "third"):
            await enqueue(session, topic=topic, key=slow, payload={"key": slow, "n": n})
        await enqueue(session, topic=topic, key=other, payload={"key": other, "n": "other"})
    # Two workers deliver together, as two server processes would.
    workers = [delivery(database, receiver, topic, retry_base_seconds=0.1) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        await until_status(database, slow, [DELIVERED] * 3)
        await until_status(database, other, [DELIVERED])
    finally:
        for worker in workers:
            await worker.close()
    delivered = [r.body["n"] for r in receiver.requests if r.status == 200]
    assert [n for n in delivered if n != "other"] == ["first", "second", "third"]
    # The other key did not wait for the failing one.
    assert delivered.index("other") < delivered.index("first")


async def test_a_worker_that_died_mid_delivery_leaves_the_message_to_another(
    database: Database, receiver: Receiver, topic: str
) -> None:
    key = f"consult/{uuid.uuid4()}"
    async with database.transaction(write=True) as session:
        await enqueue(session, topic=topic, key=key, payload={"n": 1})
    # The first worker claims the message and dies before delivering (nothing recorded).
    doomed = delivery(database, receiver, topic, lease_seconds=0.5)
    claimed = await doomed._claim()
    assert [m.key for m in claimed if m.key == key] == [key]
    assert await status_of(database, key) == [PENDING]
    survivor = delivery(database, receiver, topic)
    survivor.start()
    try:
        await until_status(database, key, [DELIVERED])
    finally:
        await survivor.close()
    assert len([r for r in receiver.requests if r.body == {"n": 1}]) == 1


async def test_signed_deliveries_carry_a_verifiable_signature(
    database: Database, receiver: Receiver, topic: str
) -> None:
    key = f"registry/{uuid.uuid4()}"
    secret = b"shared-with-the-registry"
    worker = OutboxDelivery(
        database,
        {topic: HttpDelivery(receiver.url, signing_secret=secret)},
        poll_seconds=0.05,
    )
    async with database.transaction(write=True) as session:
        await enqueue(session, topic=topic, key=key, payload={"household": "640121"})
    worker.start()
    try:
        await until_status(database, key, [DELIVERED])
    finally:
        await worker.close()
    (sent,) = [r for r in receiver.requests if r.body == {"household": "640121"}]
    timestamp = sent.headers["x-signature-timestamp"]
    assert sent.headers["x-signature"] == signature(secret, timestamp, sent.raw)
    assert sent.headers["x-signature"] != signature(b"another secret", timestamp, sent.raw)


async def test_gateways_shape_notifications_and_refuse_recipients_without_an_address(
    database: Database, receiver: Receiver, topic: str
) -> None:
    sms_key, wechat_key, nobody = (f"consult/{uuid.uuid4()}" for _ in range(3))
    notification = {
        "event": "consult.accepted",
        "subject": "ServiceRequest/1",
        "text": "您申请的会诊已被接受",
        "recipient": {"reference": "Practitioner/9", "phone": "13995112233", "wechat": None},
    }
    worker = OutboxDelivery(
        database,
        {
            f"{topic}.sms": SmsGateway(receiver.url),
            f"{topic}.wechat": WeChatGateway(receiver.url),
        },
        poll_seconds=0.05,
    )
    async with database.transaction(write=True) as session:
        await enqueue(session, topic=f"{topic}.sms", key=sms_key, payload=notification)
        await enqueue(session, topic=f"{topic}.wechat", key=wechat_key, payload=notification)
        await enqueue(
            session,
            topic=f"{topic}.sms",
            key=nobody,
            payload={**notification, "recipient": {"reference": "Practitioner/8"}},
        )
    worker.start()
    try:
        await until_status(database, sms_key, [DELIVERED])
        await until_status(database, wechat_key, [DELIVERED])
        await until_status(database, nobody, [DEAD])
    finally:
        await worker.close()
    bodies = [r.body for r in receiver.requests]
    assert {"to": "13995112233", "text": "您申请的会诊已被接受"}.items() <= next(
        b for b in bodies if "to" in b
    ).items()
    wechat = next(b for b in bodies if "touser" in b)
    assert wechat["touser"] == "13995112233"
    assert wechat["text"] == {"content": "您申请的会诊已被接受"}
    assert len(bodies) == 2  # the recipient without a number was never sent


async def test_an_operator_sees_dead_letters_and_sends_them_again(
    database: Database, database_url: str, receiver: Receiver, topic: str
) -> None:
    key = f"consult/{uuid.uuid4()}"
    receiver.fail_with = [400]
    async with database.transaction(write=True) as session:
        await enqueue(session, topic=topic, key=key, payload={"n": 1})
    worker = delivery(database, receiver, topic)
    worker.start()
    try:
        await until_status(database, key, [DEAD])
    finally:
        await worker.close()
    operator = AppServer(database_url)
    dead = await asyncio.to_thread(operator.cli, "outbox", "dead", "--topic", topic)
    (line,) = dead.strip().splitlines()
    message_id, listed_topic, listed_key, attempts, error = line.split("\t")
    assert (listed_topic, listed_key, attempts) == (topic, key, "1 attempts")
    assert "HTTP 400" in error
    status = await asyncio.to_thread(operator.cli, "outbox", "status")
    assert any(line.split() == [topic, DEAD, "1"] for line in status.splitlines())
    again = await asyncio.to_thread(operator.cli, "outbox", "retry", message_id)
    assert again.strip() == f"{message_id}: queued again"
    assert await status_of(database, key) == [PENDING]
    refused = await asyncio.to_thread(operator.run, "outbox", "retry", message_id)
    assert refused.returncode == 1 and "not a dead letter" in refused.stdout
