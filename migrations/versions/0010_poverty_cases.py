"""poverty cases

The illness-poverty service's other tables (``health.poverty.tables``):

* derived by the record store from the stored resources, filled here from what is stored —
  households and their members (Groups), illness-poverty Flags, follow-up cases and their
  steps (Tasks);
* written by the recompute: the log of flag changes (what ``health registry export`` and the
  registry feed send) and each followed-up household's figures and disease groups (which
  the next ``health poverty recompute`` fills).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 12:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)


def _rid(table: str, *, primary: bool) -> list[sa.SchemaItem]:
    items: list[sa.SchemaItem] = [
        sa.Column("rid", _KEY, nullable=False),
        sa.ForeignKeyConstraint(
            ["rid"], ["resources.rid"], name=op.f(f"fk_{table}_rid_resources"), ondelete="CASCADE"
        ),
    ]
    if primary:
        items.append(sa.PrimaryKeyConstraint("rid", name=op.f(f"pk_{table}")))
    return items


def _serial(table: str) -> list[sa.SchemaItem]:
    return [
        sa.Column("id", _KEY, autoincrement=True, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
    ]


def _fen(*names: str) -> list[sa.Column]:
    return [sa.Column(name, sa.BigInteger(), nullable=True) for name in names]


def _index(table: str, *columns: str) -> None:
    op.create_index(op.f(f"ix_{table}_{'_'.join(columns)}"), table, list(columns))


def upgrade() -> None:
    op.create_table(
        "poverty_households",
        *_rid("poverty_households", primary=True),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("number", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("township", sa.String(128), nullable=True),
        sa.Column("village", sa.String(128), nullable=True),
        sa.Column("main_cause", sa.String(64), nullable=True),
        *_fen("income_per_capita"),
        sa.UniqueConstraint("group_id", name=op.f("uq_poverty_households_group_id")),
    )
    _index("poverty_households", "township", "village")
    _index("poverty_households", "number")

    op.create_table(
        "poverty_household_members",
        *_serial("poverty_household_members"),
        *_rid("poverty_household_members", primary=False),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("resident_id", sa.String(32), nullable=True),
        sa.Column("relationship", sa.String(32), nullable=True),
    )
    for column in ("rid", "group_id", "patient_id"):
        _index("poverty_household_members", column)

    op.create_table(
        "poverty_flags",
        *_rid("poverty_flags", primary=True),
        sa.Column("flag_id", sa.String(64), nullable=False),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(64), nullable=True),
        sa.Column("rules_version", sa.String(64), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("started_at", _WHEN, nullable=True),
        sa.Column("ended_at", _WHEN, nullable=True),
        sa.Column("assessment_id", sa.String(64), nullable=True),
    )
    _index("poverty_flags", "group_id", "active")
    _index("poverty_flags", "active", "rule")

    op.create_table(
        "poverty_cases",
        *_rid("poverty_cases", primary=True),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("opened_at", _WHEN, nullable=False),
        sa.Column("stage_at", _WHEN, nullable=False),
        sa.Column("first_assisted_at", _WHEN, nullable=True),
        sa.Column("closed_at", _WHEN, nullable=True),
        sa.Column("due_at", _WHEN, nullable=True),
        sa.Column("owner_id", sa.String(64), nullable=True),
        sa.Column("owner_name", sa.String(128), nullable=True),
        sa.Column("help", sa.String(255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.UniqueConstraint("task_id", name=op.f("uq_poverty_cases_task_id")),
    )
    _index("poverty_cases", "open", "stage")
    _index("poverty_cases", "group_id")
    _index("poverty_cases", "owner_id")

    op.create_table(
        "poverty_case_steps",
        *_serial("poverty_case_steps"),
        *_rid("poverty_case_steps", primary=False),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("at", _WHEN, nullable=False),
        sa.Column("author", sa.String(128), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("help", sa.String(255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("assignee", sa.String(128), nullable=True),
    )
    _index("poverty_case_steps", "rid")
    _index("poverty_case_steps", "task_id")

    op.create_table(
        "poverty_flag_changes",
        sa.Column("seq", _KEY, autoincrement=True, nullable=False),
        sa.Column("changed_at", _WHEN, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("household_number", sa.String(64), nullable=True),
        sa.Column("household_name", sa.String(128), nullable=True),
        sa.Column("township", sa.String(128), nullable=True),
        sa.Column("village", sa.String(128), nullable=True),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("flag_id", sa.String(64), nullable=False),
        sa.Column("rules_version", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_poverty_flag_changes")),
    )
    _index("poverty_flag_changes", "changed_at")
    _index("poverty_flag_changes", "group_id", "seq")

    op.create_table(
        "poverty_household_figures",
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("assessed_at", _WHEN, nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("window_start", sa.Date(), nullable=False),
        sa.Column("bills", sa.Integer(), nullable=False),
        *_fen("billed", "basic", "serious", "assistance", "other", "out_of_pocket"),
        sa.PrimaryKeyConstraint("group_id", name=op.f("pk_poverty_household_figures")),
    )
    op.create_table(
        "poverty_household_diseases",
        *_serial("poverty_household_diseases"),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("disease_group", sa.String(16), nullable=False),
    )
    _index("poverty_household_diseases", "group_id")
    _index("poverty_household_diseases", "disease_group")

    from health.poverty.derived import CASE_STEPS, CASES, FLAGS, HOUSEHOLD_MEMBERS, HOUSEHOLDS
    from records.derived import refill

    for derived in (HOUSEHOLDS, HOUSEHOLD_MEMBERS, FLAGS, CASES, CASE_STEPS):
        refill(op.get_bind(), derived)


def downgrade() -> None:
    for table in (
        "poverty_household_diseases",
        "poverty_household_figures",
        "poverty_flag_changes",
        "poverty_case_steps",
        "poverty_cases",
        "poverty_flags",
        "poverty_household_members",
        "poverty_households",
    ):
        op.drop_table(table)
