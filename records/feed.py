"""The change feed: every committed change, announced on the bus channel ``records.changes``.

Whoever commits a write announces its changes after the commit — the ``/fhir`` routes, the
bulk importer, the services that write records themselves — so a listener (flag recompute,
notifications) hears of every change, whichever door it came in by. The bus keeps nothing
for listeners that are not there: a listener that must not miss anything re-reads history.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from health.core.bus import MessageBus
from records.store import Change

logger = logging.getLogger(__name__)

#: Bus channel announcing each committed change: {"type", "id", "versionId", "method"}.
CHANGES_CHANNEL = "records.changes"


def change_message(change: Change) -> dict[str, Any]:
    return {
        "type": change.res_type,
        "id": change.res_id,
        "versionId": change.version,
        "method": change.method,
    }


async def announce(bus: MessageBus, changes: Iterable[Change]) -> None:
    """Announce committed ``changes``; a failure is logged, never raised (the data is safe)."""
    for change in changes:
        try:
            await bus.publish(CHANGES_CHANNEL, change_message(change))
        except Exception:  # the record is committed; a listener that missed it can re-read history
            logger.exception("could not announce %s/%s on the bus", change.res_type, change.res_id)
