"""What each role's home page lists: the day's work.

A village or township doctor sees today's visits at her clinic; a specialist the patients
shared with him by an active consent; a commission analyst the active illness-poverty
flags. Each list is a search through the person's own access policy.
"""

from __future__ import annotations

from typing import Any

from health.core.naming import (
    ILLNESS_POVERTY_FLAG_KINDS,
    ILLNESS_POVERTY_FLAG_SYSTEM,
    ILLNESS_POVERTY_RULE_SYSTEM,
    ILLNESS_POVERTY_TAG,
)
from health.poverty.rules import RULE_NAMES
from health.web.display import concept_text, local_time, reference_id, today
from health.web.i18n import language_of
from health.web.signed_in import SignedIn


async def worklist(me: SignedIn) -> list[dict[str, Any]]:
    role = me.role
    if role in ("village_doctor", "township_doctor") and me.user.organization_id:
        encounters = await me.search(
            "Encounter",
            [
                ("service-provider", f"Organization/{me.user.organization_id}"),
                ("date", f"ge{today().isoformat()}"),
                ("_sort", "-date"),
                ("_count", "30"),
            ],
        )
        return [
            {
                "patient": reference_id(e.get("subject"), "Patient"),
                "name": str((e.get("subject") or {}).get("display") or ""),
                "when": local_time((e.get("period") or {}).get("start")),
                "what": "; ".join(concept_text(r) for r in e.get("reasonCode") or []),
            }
            for e in encounters
            if e.get("resourceType") == "Encounter"
        ]
    if role == "specialist" and me.user.practitioner_id:
        consents = await me.search(
            "Consent",
            [
                ("actor", f"Practitioner/{me.user.practitioner_id}"),
                ("status", "active"),
                ("_count", "50"),
            ],
        )
        return [
            {
                "patient": reference_id(c.get("patient"), "Patient"),
                "name": str((c.get("patient") or {}).get("display") or ""),
                "when": str((c.get("provision") or {}).get("period", {}).get("end") or "")[:10],
                "what": "",
            }
            for c in consents
            if c.get("resourceType") == "Consent"
        ]
    if role == "commission_analyst":
        flags = await me.search(
            "Flag",
            [
                ("_tag", f"{ILLNESS_POVERTY_TAG['system']}|{ILLNESS_POVERTY_TAG['code']}"),
                ("_count", "50"),
            ],
        )
        english = language_of(me.request) == "en"
        return [
            {
                "patient": reference_id(f.get("subject"), "Patient"),
                "name": str((f.get("subject") or {}).get("display") or ""),
                "when": str((f.get("period") or {}).get("start") or "")[:10],
                "what": _flag_label(f, english=english),
            }
            for f in flags
            if f.get("resourceType") == "Flag" and f.get("status") == "active"
        ]
    return []


def _flag_label(flag: dict[str, Any], *, english: bool) -> str:
    """What an illness-poverty flag says, in the page's language: the kind and the rule by
    their codes (the stored text carries both languages)."""
    names = []
    for coding in (flag.get("code") or {}).get("coding") or []:
        table = {
            ILLNESS_POVERTY_FLAG_SYSTEM: ILLNESS_POVERTY_FLAG_KINDS,
            ILLNESS_POVERTY_RULE_SYSTEM: RULE_NAMES,
        }.get(coding.get("system"))
        if table and coding.get("code") in table:
            names.append(table[coding["code"]][1 if english else 0])
    if not names:
        return concept_text(flag.get("code"))
    return (": " if english else "：").join(names)
