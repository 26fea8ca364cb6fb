"""The registry feed: every illness-poverty flag change, delivered to the poverty household
registry's endpoint (建档立卡 / 防返贫监测 system).

The illness-poverty recompute puts one outbox message per flag change in the transaction that
makes the change (``health.poverty.flag_changes``: topic ``REGISTRY_FLAG_TOPIC``, keyed by
household). This module is only the deliverer the outbox hands those messages to; retries
with backoff, ordering per household, the lease that keeps two workers from sending one
message and the dead letters (``health outbox dead`` / ``retry``) are the outbox's
(``health.core.outbox``).

Each delivery is ``POST HEALTH_REGISTRY_URL`` with the change as JSON::

    {"seq": 42, "changedAt": "2026-10-31T06:05:00+00:00",
     "action": "raised", "actionText": "新增预警",
     "household": {"number": "640121...", "name": "马国军户", "township": "闽宁镇",
                   "village": "原隆村", "reference": "Group/..."},
     "flag": {"reference": "Flag/...", "kind": "...", "kindText": "因病返贫风险",
              "rule": "medical-bill-alert", "ruleText": "高额医疗费用预警",
              "rulesVersion": "2026.1"},
     "idempotencyKey": "registry.flag:42"}

with the headers ``Idempotency-Key`` (the same on every attempt: a registry that keeps it
accepts each change once), ``X-Signature-Timestamp`` (Unix seconds) and, when
``HEALTH_REGISTRY_SECRET`` is set, ``X-Signature: sha256=<hex HMAC-SHA256 of
"<timestamp>.<body>">`` (``integrations.http_delivery.signature``). A 2xx answer is
delivered; 408, 425, 429, 5xx, timeouts and broken connections are tried again; any other
4xx makes the message a dead letter at once.
"""

from __future__ import annotations

from typing import Any

from health.core.naming import REGISTRY_FLAG_TOPIC
from health.core.outbox import OutboxMessage
from health.core.settings import Settings
from integrations.http_delivery import HttpDelivery

TOPIC = REGISTRY_FLAG_TOPIC


class RegistryFeed(HttpDelivery):
    """Flag changes to the registry's endpoint, signed.

    The registry keeps each household's state, so a household's later change never overtakes
    one that became a dead letter: the household waits until an operator sends it again.
    """

    holds_key_when_dead = True

    def body(self, message: OutboxMessage) -> dict[str, Any]:
        return {**message.payload, "idempotencyKey": message.idempotency_key}


def registry_feed(settings: Settings) -> RegistryFeed | None:
    """The feed the settings configure, or None without ``HEALTH_REGISTRY_URL`` (the changes
    then wait in the outbox until it is set)."""
    if not settings.registry_url:
        return None
    return RegistryFeed(
        settings.registry_url,
        signing_secret=settings.registry_secret.encode() if settings.registry_secret else None,
        timeout=settings.registry_timeout_seconds,
    )
