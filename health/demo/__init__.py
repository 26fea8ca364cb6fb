"""The demo data set that ``health seed --demo`` writes, as FHIR transaction Bundles.

``build_demo_bundles`` is pure and deterministic: the same seed gives the same bundles,
byte for byte. The directory is the same for every seed; the seed decides the people.

The first bundle is the directory (clinics, hospitals, staff, the insurer); then come
patient bundles of about ``PATIENTS_PER_BUNDLE`` patients, whole households each.
A patient bundle is self-contained: it refers to its own entries by ``urn:uuid`` and to the
directory by conditional references (``Organization?identifier=<system>|<code>``), so the
bundles must be posted in order, the directory first.

Every entry is a conditional create keyed by an identifier, so seeding twice writes nothing
the second time; everything carries the demo tag and the test-data security label
(``health.core.naming``), so a real deployment can find and remove it.

Modules: ``directory`` (the network and staff), ``people`` (names, resident IDs, phones),
``households`` (Patients, household Groups, Coverage), ``clinical`` (illnesses, visits,
observations, prescriptions), ``costs`` (settlement and ExplanationOfBenefit), ``bundle``
(demo meta and identifiers).
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from health.demo.bundle import DEMO_RECORD_SYSTEM, demo_meta
from health.demo.clinical import choose_burdened, clinical_entries
from health.demo.directory import build_directory, directory_bundle
from health.demo.households import build_households, draw_registry_details, household_entries
from integrations.directory_csv import transaction_bundle

__all__ = ["DEMO_AS_OF", "DEMO_RECORD_SYSTEM", "PATIENTS_PER_BUNDLE", "build_demo_bundles"]

#: The day the demo's three years of history end. Fixed, not today, so that the same seed
#: gives the same data — and the same resident IDs — whenever it is run.
DEMO_AS_OF = dt.date(2026, 10, 31)
#: Patient bundles are cut at whole households once they hold at least this many patients.
PATIENTS_PER_BUNDLE = 50


def build_demo_bundles(
    *, seed: int = 2026, patients: int = 300, as_of: dt.date = DEMO_AS_OF
) -> list[dict[str, Any]]:
    """The demo's transaction Bundles: the directory first, then the patients by household.

    ``patients`` is exact (0 gives the directory alone; 1 is refused, a household has at
    least two members).
    """
    if patients < 0:
        raise ValueError("patients must not be negative")
    directory = build_directory()
    bundles = [directory_bundle(directory)]
    rng = random.Random(seed)

    households = build_households(rng, directory, patients, as_of)
    choose_burdened(rng, households)
    for household in households:
        draw_registry_details(household)
    entries: list[dict[str, Any]] = []
    in_bundle = 0
    for household in households:
        entries.extend(household_entries(household, seed, as_of))
        entries.extend(clinical_entries(rng, directory, household, seed, as_of))
        in_bundle += len(household.members)
        if in_bundle >= PATIENTS_PER_BUNDLE:
            bundles.append(transaction_bundle(entries, meta=demo_meta()))
            entries, in_bundle = [], 0
    if entries:
        bundles.append(transaction_bundle(entries, meta=demo_meta()))
    return bundles
