"""The message bus between parts of the service: Redis between processes, memory within one.

It carries events (a record changed, a consult room's signalling) to whoever listens now; it
is not a queue and keeps nothing for listeners that are not there. Durable hand-overs go
through the outbox table instead (see ARCHITECTURE.md, decision 5).

One Redis server may serve several deployments (a staging service beside production, two
cities): each deployment's channels, counters and leases carry its namespace, by default
named after its database (:func:`bus_namespace`), so that one deployment never hears
another's record changes, counts another's failed logins or takes another's consult rooms.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson

logger = logging.getLogger(__name__)


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...
    async def close(self) -> None: ...


class MessageBus(Protocol):
    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...
    async def subscribe(self, channel: str) -> Subscription: ...
    async def hit(self, key: str, window_seconds: int) -> int:
        """Count one event under ``key``; how many there were in the current window.

        Fixed windows shared by every process on the bus: what rate limits need.
        """
        ...

    async def hits(self, key: str, window_seconds: int) -> int:
        """How many events were counted under ``key`` in the current window."""

    async def claim(self, name: str, holder: str, ttl_seconds: float) -> str:
        """Hold the lease ``name`` for ``holder`` if it is free or already theirs; who holds it.

        Holding it for ``ttl_seconds`` from now: a holder renews by claiming again before
        then, and a holder that dies loses it when that time runs out. What one process
        owns for the others (a consult room's worker) is decided this way.
        """
        ...

    async def release(self, name: str, holder: str) -> None:
        """Give up the lease ``name`` if ``holder`` holds it; anyone else's stays."""
        ...

    async def close(self) -> None: ...


class _QueueSubscription:
    def __init__(self, bus: InProcessBus, channel: str) -> None:
        self._bus = bus
        self._channel = channel
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield await self.queue.get()

    async def close(self) -> None:
        self._bus._subscribers[self._channel].discard(self)


class InProcessBus:
    """Delivers to subscribers in this process only; a full subscriber loses the message."""

    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[_QueueSubscription]] = defaultdict(set)
        self._counters: dict[str, tuple[int, int]] = {}  # key -> (window number, count)
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (holder, monotonic expiry)

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        # Copy through JSON so that subscribers see what Redis subscribers would see.
        decoded = orjson.loads(orjson.dumps(message))
        for subscription in list(self._subscribers.get(channel, ())):
            try:
                subscription.queue.put_nowait(decoded)
            except asyncio.QueueFull:
                logger.warning("bus subscriber on %s is full; message dropped", channel)

    async def subscribe(self, channel: str) -> Subscription:
        subscription = _QueueSubscription(self, channel)
        self._subscribers[channel].add(subscription)
        return subscription

    async def hit(self, key: str, window_seconds: int) -> int:
        window = int(time.time() // window_seconds)
        if len(self._counters) > 100_000:  # drop finished windows rather than grow forever
            self._counters = {k: v for k, v in self._counters.items() if v[0] >= window}
        current, count = self._counters.get(key, (window, 0))
        count = count + 1 if current == window else 1
        self._counters[key] = (window, count)
        return count

    async def hits(self, key: str, window_seconds: int) -> int:
        current, count = self._counters.get(key, (0, 0))
        return count if current == int(time.time() // window_seconds) else 0

    async def claim(self, name: str, holder: str, ttl_seconds: float) -> str:
        now = time.monotonic()
        current = self._leases.get(name)
        if current is not None and current[0] != holder and current[1] > now:
            return current[0]
        self._leases[name] = (holder, now + ttl_seconds)
        return holder

    async def release(self, name: str, holder: str) -> None:
        current = self._leases.get(name)
        if current is not None and current[0] == holder:
            del self._leases[name]

    async def close(self) -> None:
        self._subscribers.clear()


class _RedisSubscription:
    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for raw in self._pubsub.listen():
            if raw.get("type") == "message":
                yield orjson.loads(raw["data"])

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()


# Set the lease when it is free or the caller's; either way, answer who holds it.
_CLAIM_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return current
"""
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisBus:
    """Redis publish/subscribe: every process subscribed to a channel gets each message.

    Every channel and key is prefixed with ``namespace`` (the deployment's; see the module
    docstring)."""

    def __init__(self, url: str, namespace: str = "") -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(url)
        self._claim = self._redis.register_script(_CLAIM_SCRIPT)
        self._release = self._redis.register_script(_RELEASE_SCRIPT)
        self._prefix = f"{namespace}:" if namespace else ""

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        await self._redis.publish(self._prefix + channel, orjson.dumps(message))

    async def hit(self, key: str, window_seconds: int) -> int:
        window = int(time.time() // window_seconds)
        name = f"{self._prefix}hits:{key}:{window}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, window_seconds * 2)
            count, _ = await pipe.execute()
        return int(count)

    async def hits(self, key: str, window_seconds: int) -> int:
        window = int(time.time() // window_seconds)
        return int(await self._redis.get(f"{self._prefix}hits:{key}:{window}") or 0)

    async def claim(self, name: str, holder: str, ttl_seconds: float) -> str:
        ttl_ms = max(1, int(ttl_seconds * 1000))
        current = await self._claim(keys=[f"{self._prefix}lease:{name}"], args=[holder, ttl_ms])
        return current.decode() if isinstance(current, bytes) else str(current)

    async def release(self, name: str, holder: str) -> None:
        await self._release(keys=[f"{self._prefix}lease:{name}"], args=[holder])

    async def subscribe(self, channel: str) -> Subscription:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._prefix + channel)
        return _RedisSubscription(pubsub)

    async def close(self) -> None:
        await self._redis.aclose()


def bus_namespace(database_url: str, chosen: str | None = None) -> str:
    """The deployment's namespace on a shared Redis: ``chosen`` (``HEALTH_BUS_NAMESPACE``)
    if set, else named after the database its processes share (the URL without its
    password, hashed: processes that name the same database alike share a namespace)."""
    if chosen:
        return chosen
    from sqlalchemy.engine import make_url

    where = make_url(database_url).render_as_string(hide_password=True)
    return "health-" + hashlib.sha256(where.encode()).hexdigest()[:16]


def create_bus(redis_url: str | None, namespace: str) -> MessageBus:
    """Redis when ``redis_url`` is set (with the deployment's ``namespace``), else the
    in-process bus (one process; nothing to share)."""
    return RedisBus(redis_url, namespace) if redis_url else InProcessBus()
