"""Telling people about their consults: SMS and WeChat gateway adapters, and the log.

Other parts of the service put a notification in the outbox (``health.core.outbox``) under
the topic :data:`NOTIFICATION_TOPIC`, with this payload::

    {"event": "consult.accepted",            # what happened
     "subject": "ServiceRequest/123",        # what it is about
     "text": "您申请的会诊已被接受……",        # the message, ready to send (Chinese)
     "recipient": {"reference": "Practitioner/9", "display": "马秀兰",
                   "phone": "13995112233", "wechat": null}}

The deployment chooses the notifier (``HEALTH_NOTIFIER``): ``log`` writes a line to the
service's log and sends nothing (the embedded default: nothing leaves the machine); ``sms``
and ``wechat`` POST to the gateway at ``HEALTH_NOTIFY_GATEWAY_URL``:

- SMS: ``{"to": "<mobile>", "text": "...", "reference": "<idempotency key>"}``;
- WeChat (企业微信-style message API): ``{"touser": "<openid or mobile>", "msgtype": "text",
  "text": {"content": "..."}, "reference": "<idempotency key>"}``.

A recipient without the address the channel needs is a permanent failure (a dead letter an
operator can see), not a retry.
"""

from __future__ import annotations

import logging
from typing import Any

from health.core.outbox import Deliverer, DeliveryFailed, OutboxMessage
from health.core.settings import Settings
from integrations.http_delivery import HttpDelivery

logger = logging.getLogger(__name__)

NOTIFICATION_TOPIC = "notification"


def _recipient(message: OutboxMessage) -> dict[str, Any]:
    recipient = message.payload.get("recipient")
    if not isinstance(recipient, dict):
        raise DeliveryFailed("the notification names no recipient", permanent=True)
    return recipient


class LogNotifier:
    """Notifications to the service's log only (who and what event, not the text)."""

    async def deliver(self, message: OutboxMessage) -> None:
        recipient = _recipient(message)
        logger.info(
            "notification %s for %s about %s",
            message.payload.get("event"),
            recipient.get("reference"),
            message.payload.get("subject"),
        )

    async def close(self) -> None:
        return None


class SmsGateway(HttpDelivery):
    """Text messages through an SMS gateway's HTTP API."""

    def body(self, message: OutboxMessage) -> dict[str, Any]:
        phone = _recipient(message).get("phone")
        if not phone:
            raise DeliveryFailed("the recipient has no mobile number on file", permanent=True)
        return {
            "to": phone,
            "text": message.payload.get("text", ""),
            "reference": message.idempotency_key,
        }


class WeChatGateway(HttpDelivery):
    """Messages through a WeChat (WeCom) message gateway."""

    def body(self, message: OutboxMessage) -> dict[str, Any]:
        recipient = _recipient(message)
        to = recipient.get("wechat") or recipient.get("phone")
        if not to:
            raise DeliveryFailed("the recipient has no WeChat account or mobile", permanent=True)
        return {
            "touser": to,
            "msgtype": "text",
            "text": {"content": message.payload.get("text", "")},
            "reference": message.idempotency_key,
        }


def notifier(settings: Settings) -> Deliverer:
    """The deliverer of notifications the settings ask for."""
    if settings.notifier == "log":
        return LogNotifier()
    if not settings.notify_gateway_url:
        raise ValueError(f"HEALTH_NOTIFIER={settings.notifier} needs HEALTH_NOTIFY_GATEWAY_URL")
    gateway = SmsGateway if settings.notifier == "sms" else WeChatGateway
    return gateway(settings.notify_gateway_url, token=settings.notify_gateway_token)
