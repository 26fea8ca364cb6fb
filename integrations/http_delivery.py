"""Outbox messages delivered by HTTP POST to another system, the way every gateway here wants.

Each attempt sends the message's ``Idempotency-Key`` (the same on every attempt, so the
receiver can drop a repeat), an optional bearer token, and, when a signing secret is set,
``X-Signature: sha256=<hex HMAC-SHA256 of timestamp.body>`` with ``X-Signature-Timestamp``,
so the receiver can check who sent it and when (the registry feed signs its deliveries).

What the answer means for the outbox: 2xx is delivered; 408, 425, 429, 5xx and network
failures are worth trying again; any other 4xx is the receiver refusing this message as it
is, a permanent failure (a dead letter at once).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx
import orjson

from health.core.outbox import DeliveryFailed, OutboxMessage

RETRYABLE = frozenset({408, 425, 429})


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Signature`` value of a body sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class HttpDelivery:
    """POSTs what :meth:`body` makes of each message to ``url``."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        signing_secret: bytes | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.token = token
        self.signing_secret = signing_secret
        self._client = httpx.AsyncClient(timeout=timeout)

    def body(self, message: OutboxMessage) -> dict[str, Any]:
        """What to send for a message; by default its payload as it is."""
        return message.payload

    async def deliver(self, message: OutboxMessage) -> None:
        body = orjson.dumps(self.body(message))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": message.idempotency_key,
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.signing_secret is not None:
            timestamp = str(int(time.time()))
            headers["X-Signature-Timestamp"] = timestamp
            headers["X-Signature"] = signature(self.signing_secret, timestamp, body)
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as error:
            raise DeliveryFailed(f"{type(error).__name__}: {error}") from None
        if response.is_success:
            return
        detail = f"HTTP {response.status_code}: {response.text[:300]}"
        status = response.status_code
        raise DeliveryFailed(detail, permanent=400 <= status < 500 and status not in RETRYABLE)

    async def close(self) -> None:
        await self._client.aclose()
