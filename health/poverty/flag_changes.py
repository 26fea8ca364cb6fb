"""Every flag change, recorded in the transaction that makes it: the one way out of a recompute.

:func:`record_flag_changes` is called by each recompute batch (full or incremental) with the
batch's :class:`~health.poverty.flags.FlagChange` list, inside the batch's transaction,
after the Flags are written. It

* appends each change to ``poverty_flag_changes`` — the log that ``health registry export``
  writes out for registries that take files — and puts it in the outbox
  (``health.core.outbox``, topic ``REGISTRY_FLAG_TOPIC``, keyed by household, idempotency
  key ``registry.flag:<seq>``) for the registry feed (``integrations.registry_feed``);
* opens a follow-up case (``health.poverty.cases``) for a household that has a flag raised
  and no open case, and ends the open case of a household that is gone.

Nothing here leaves the transaction: a rolled-back batch records nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from health.core.ids import new_resource_id
from health.core.naming import (
    ILLNESS_POVERTY_FLAG_KINDS,
    ILLNESS_POVERTY_TAG,
    REGISTRY_FLAG_TOPIC,
)
from health.core.outbox import enqueue_many
from health.poverty import repository
from health.poverty.cases import SERVICE_NAME, ended_with_household, new_case
from health.poverty.flags import FlagChange, flag_meta
from health.poverty.households import Household, household_from_group
from health.poverty.rules import RULE_NAMES
from health.poverty.tables import poverty_flag_changes
from records.store import NewResource, ResourceStore
from records.validation import validate_resource

#: action -> (Chinese, English), as the export writes them.
ACTIONS: dict[str, tuple[str, str]] = {
    "raised": ("新增预警", "raised"),
    "updated": ("证据更新", "evidence updated"),
    "deactivated": ("解除预警", "deactivated"),
}


async def record_flag_changes(
    store: ResourceStore,
    changes: Sequence[FlagChange],
    *,
    households: Mapping[str, Household | None],
    at: dt.datetime,
    rules_version: str,
    unfollowed: Mapping[str, str] | None = None,
) -> None:
    """Log ``changes`` and open or end the cases they call for, in ``store``'s transaction.

    ``households``: each changed household as assessed (None: the Group is gone or is no
    household any more). ``unfollowed``: households with an active flag that never had a
    case (group id -> that flag), which get one too. ``store`` writes with the service's
    authority.
    """
    if unfollowed:
        await _follow_up(store, [], households, at, dict(unfollowed))
    if not changes:
        return
    session = store.session
    labels: dict[str, Household | None] = {}
    for change in changes:
        if change.group_id not in labels:
            labels[change.group_id] = households.get(change.group_id) or await _former(
                session, change.group_id, at
            )
    logged = [
        {
            "changed_at": at,
            "action": change.action,
            "group_id": change.group_id,
            "household_number": _attr(labels[change.group_id], "number"),
            "household_name": _attr(labels[change.group_id], "name"),
            "township": _attr(labels[change.group_id], "township"),
            "village": _attr(labels[change.group_id], "village"),
            "rule": change.rule,
            "kind": change.kind,
            "flag_id": change.flag_id,
            "rules_version": rules_version,
        }
        for change in changes
    ]
    seqs = (
        await session.execute(
            insert(poverty_flag_changes).returning(
                poverty_flag_changes.c.seq, sort_by_parameter_order=True
            ),
            logged,
        )
    ).scalars()
    await enqueue_many(
        session,
        topic=REGISTRY_FLAG_TOPIC,
        items=[
            (
                f"household:{row['group_id']}",
                f"{REGISTRY_FLAG_TOPIC}:{seq}",
                registry_payload(seq, row),
            )
            for seq, row in zip(seqs, logged, strict=True)
        ],
    )
    await _follow_up(store, changes, households, at)


def registry_payload(seq: int, change: Mapping[str, Any]) -> dict[str, Any]:
    """What the registry feed sends for one logged change (``integrations.registry_feed``):
    the change's number, time and kind, the household as the registry knows it, the flag."""
    changed_at = change["changed_at"]
    if changed_at.tzinfo is None:
        changed_at = changed_at.replace(tzinfo=dt.UTC)
    action, kind, rule = change["action"], change["kind"], change["rule"]
    return {
        "seq": seq,
        "changedAt": changed_at.isoformat(),
        "action": action,
        "actionText": ACTIONS[action][0],
        "household": {
            "number": change["household_number"],
            "name": change["household_name"],
            "township": change["township"],
            "village": change["village"],
            "reference": f"Group/{change['group_id']}",
        },
        "flag": {
            "reference": f"Flag/{change['flag_id']}",
            "kind": kind,
            "kindText": ILLNESS_POVERTY_FLAG_KINDS.get(kind, (kind, ""))[0],
            "rule": rule,
            "ruleText": RULE_NAMES.get(rule, (rule, ""))[0],
            "rulesVersion": change["rules_version"],
        },
    }


def _attr(household: Household | None, name: str) -> str | None:
    value = getattr(household, name, None) if household is not None else None
    return str(value)[:128] if value else None


async def _former(session: AsyncSession, group_id: str, at: dt.datetime) -> Household | None:
    """What a household that is gone was, from its Group's last content."""
    data = await repository.last_group_content(session, group_id)
    if data is None:
        return None
    return household_from_group(group_id, data, at.date())


async def _follow_up(
    store: ResourceStore,
    changes: Sequence[FlagChange],
    households: Mapping[str, Household | None],
    at: dt.datetime,
    opening: dict[str, str] | None = None,
) -> None:
    raised: dict[str, str] = dict(opening or {})
    for change in changes:
        if change.action == "raised":
            raised.setdefault(change.group_id, change.flag_id)
    gone = sorted({c.group_id for c in changes if households.get(c.group_id) is None})
    open_cases = await repository.open_cases_of(store.session, sorted({*raised, *gone}))
    creates: list[NewResource] = []
    for group_id, flag_id in sorted(raised.items()):
        household = households.get(group_id)
        if household is None or group_id in open_cases:
            continue
        meta = flag_meta(household)
        meta["tag"] = [t for t in meta["tag"] if t.get("code") != ILLNESS_POVERTY_TAG["code"]]
        task = new_case(group_id, flag_id, at=at, meta=meta, opened_by=SERVICE_NAME)
        validate_resource(task)
        creates.append(NewResource("Task", new_resource_id(), task))
    if creates:
        await store.create_many(creates)
    for group_id in gone:
        task_id = open_cases.get(group_id)
        if task_id is None:
            continue
        current = await store.current("Task", task_id)
        if current is None or current.content is None:
            continue
        body = ended_with_household(orjson.loads(current.content), at)
        validate_resource(body)
        await store.update("Task", task_id, body)


# -- reading the log back --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoggedChange:
    seq: int
    changed_at: dt.datetime
    action: str
    group_id: str
    household_number: str | None
    household_name: str | None
    township: str | None
    village: str | None
    rule: str
    kind: str
    flag_id: str
    rules_version: str

    @property
    def label(self) -> tuple[str, str, str]:
        """(change, kind, rule) in Chinese, as people and registries read them."""
        return (
            ACTIONS[self.action][0],
            ILLNESS_POVERTY_FLAG_KINDS.get(self.kind, (self.kind, ""))[0],
            RULE_NAMES.get(self.rule, (self.rule, ""))[0],
        )


async def logged_changes(
    session: AsyncSession,
    *,
    after_seq: int = 0,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[LoggedChange]:
    """The logged changes after ``after_seq`` (and from ``since``, before ``until``), in order."""
    t = poverty_flag_changes.c
    query = select(poverty_flag_changes).where(t.seq > after_seq).order_by(t.seq)
    if since is not None:
        query = query.where(t.changed_at >= since)
    if until is not None:
        query = query.where(t.changed_at < until)
    rows = await session.execute(query)
    return [
        LoggedChange(
            row.seq,
            row.changed_at,
            row.action,
            row.group_id,
            row.household_number,
            row.household_name,
            row.township,
            row.village,
            row.rule,
            row.kind,
            row.flag_id,
            row.rules_version,
        )
        for row in rows
    ]
