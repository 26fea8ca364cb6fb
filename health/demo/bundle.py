"""What every demo resource shares: its meta (demo tag, test-data label) and how it is written.

The demo seed must be idempotent: running ``health seed --demo`` twice writes nothing the
second time. So every demo resource carries an identifier and is written as a conditional
create (``POST`` + ``ifNoneExist: identifier=<system>|<value>``). Resources with a natural
identifier use it (resident ID, organisation code, staff number, 户编号); the rest — clinical
records and coverage — get one under ``DEMO_RECORD_SYSTEM``.
"""

from __future__ import annotations

from typing import Any

from health.core.naming import DEMO_TAG, NAMESPACE, TEST_DATA_LABEL
from integrations.directory_csv import conditional_entry, full_url

#: Identifier system for demo resources that have no natural identifier (encounters,
#: conditions, observations, medication requests, coverages, EOBs, practitioner roles).
#: Patient records are ``<seed>-<patient>-<kind>-<nnn>``, e.g. ``2026-P00017-enc-003``: the
#: seed keeps two demo data sets from colliding, the patient handle keeps them unique.
#: Practitioner roles, part of the seed-independent directory, are ``directory-<staff>-role``.
DEMO_RECORD_SYSTEM = f"{NAMESPACE}/sid/demo-record"


def demo_meta() -> dict[str, Any]:
    """A fresh meta with the demo tag and the test-data security label."""
    return {"tag": [dict(DEMO_TAG)], "security": [dict(TEST_DATA_LABEL)]}


def demo_entry(resource: dict[str, Any], system: str, value: str) -> dict[str, Any]:
    """A conditional-create entry for ``resource`` identified by ``system|value``, tagged demo."""
    identifiers = list(resource.get("identifier", []))
    if not any(i.get("system") == system and i.get("value") == value for i in identifiers):
        identifiers.insert(0, {"system": system, "value": value})
    # Rebuilt so that meta and identifier come first, as a reader of the JSON expects.
    ordered = {
        "resourceType": resource["resourceType"],
        "meta": resource.get("meta") or demo_meta(),
        "identifier": identifiers,
    }
    ordered.update((key, val) for key, val in resource.items() if key not in ordered)
    return conditional_entry(ordered, system, value, create_only=True)


def record_url(resource_type: str, value: str) -> str:
    """The fullUrl of the demo record ``value`` of ``resource_type`` (for references in-bundle)."""
    return full_url(resource_type, DEMO_RECORD_SYSTEM, value)


def record_entry(resource: dict[str, Any], value: str) -> dict[str, Any]:
    """A conditional-create entry for a demo record identified under DEMO_RECORD_SYSTEM."""
    return demo_entry(resource, DEMO_RECORD_SYSTEM, value)
