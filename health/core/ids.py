"""Identifiers the server assigns."""

from __future__ import annotations

import re
import uuid

#: FHIR's rule for a resource id (``id`` datatype).
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def new_resource_id() -> str:
    """A server-assigned logical id: a random UUID, unguessable and unique across clinics."""
    return str(uuid.uuid4())


def is_valid_resource_id(value: str) -> bool:
    return bool(FHIR_ID.match(value))
