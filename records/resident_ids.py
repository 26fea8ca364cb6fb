"""One Patient per resident identity number, whichever clinic registered her.

A person has one record, held by the clinic that manages her (``records.custodians``);
her illness-poverty flags add up the costs of that one record. A second Patient with her
number, registered by a clinic that could not see the first, would split her costs and her
history in two, so a write that gives a Patient a resident identity number another Patient
has is refused (409, ``duplicate``), whoever writes it and whether or not the writer may see
the other record. The refusal does not say who holds it: the clinic that manages her can
transfer her record, and a doctor in need can open it by break-glass.

The check is a write hook, so every door (the API, Bundles, the pages) passes it; the
service's own bulk writes (imports, the demo seed) do not. A number already on the
Patient before the write is not checked again, so records that predate the rule can still
be corrected. Two concurrent writes of the same number hold the number's lock (the one a
conditional create on it takes) and the second finds the first.
"""

from __future__ import annotations

from typing import Any

from records.hooks import WriteContext
from records.outcome import FhirError
from records.validation.resident_id import RESIDENT_ID_SYSTEM


def _numbers(patient: dict[str, Any] | None) -> dict[str, int]:
    """The resident identity numbers among a Patient's own identifiers, with their indexes."""
    found: dict[str, int] = {}
    for index, identifier in enumerate((patient or {}).get("identifier") or []):
        if isinstance(identifier, dict) and identifier.get("system") == RESIDENT_ID_SYSTEM:
            value = identifier.get("value")
            if isinstance(value, str):
                found.setdefault(value, index)
    return found


def _criteria(number: str) -> str:
    return f"identifier={RESIDENT_ID_SYSTEM}|{number}"


async def one_patient_per_resident_id(write: WriteContext) -> None:
    """The hook: register it on ``RecordsContext.write_hooks``."""
    claimed: dict[str, tuple[str, int]] = {}  # number -> (the Patient claiming it, index)
    for change in write.changes:
        if change.res_type != "Patient" or change.method == "DELETE":
            continue
        before = _numbers(await write.previous(change))
        for number, index in _numbers(await write.content(change)).items():
            if number not in before:
                claimed.setdefault(number, (change.res_id, index))
    if not claimed:
        return
    await write.store.hold_criteria(("Patient", _criteria(n)) for n in sorted(claimed))
    for number, (patient_id, index) in claimed.items():
        holders = await write.search("Patient", _criteria(number))
        if any(holder.get("id") != patient_id for holder in holders):
            raise FhirError.of(
                409,
                "Another patient record has this resident identity number: a person has one "
                "record, kept by the clinic that manages her. Ask that clinic to transfer it, "
                "or open it by break-glass",
                code="duplicate",
                expression=f"Patient.identifier[{index}].value",
            )
