"""Checks every resource must pass before it is stored.

Three layers, cheapest first where it matters: the structure and primitive formats
(``fhir.resources.R4B``), the required code bindings of the official value sets (which
``fhir.resources`` does not check), and the Chinese resident identity number (GB 11643) on
any identifier that carries its system. Structural faults are HTTP 400; a well-formed resource
that breaks a binding or a business rule is HTTP 422, as the FHIR RESTful API specifies.
"""

from __future__ import annotations

from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class

from records.definitions import resource_types
from records.outcome import FhirError, Issue
from records.validation.bindings import check_bindings
from records.validation.resident_id import (
    RESIDENT_ID_SYSTEM,
    ResidentIdError,
    parse_resident_id,
)

__all__ = ["check_resource_type", "may_carry_resident_id", "validate_resource"]


def check_resource_type(resource_type: str) -> None:
    """404 for a type the server does not know (the spec treats it as an unknown endpoint)."""
    if resource_type not in resource_types():
        raise FhirError.of(404, f"Unknown resource type '{resource_type}'", code="not-supported")


def _loc_expression(resource_type: str, loc: tuple[int | str, ...]) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}"
    return path


def _structure_issues(resource_type: str, data: dict[str, Any]) -> list[Issue]:
    model = get_fhir_model_class(resource_type)
    try:
        model.model_validate(data)
    except pydantic.ValidationError as error:
        issues = []
        for detail in error.errors(include_url=False):
            loc = tuple(p for p in detail["loc"] if not str(p).startswith("function-"))
            expression = _loc_expression(resource_type, loc)
            kind = detail["type"]
            if kind == "extra_forbidden":
                message = f"{expression} is not an element of {resource_type}"
                code = "structure"
            elif kind == "missing":
                message = f"{expression} is required"
                code = "required"
            else:
                message = f"{expression}: {detail['msg']}"
                code = "value"
            issues.append(Issue(message, code=code, expression=(expression,)))
        return issues or [Issue(str(error), code="structure", expression=(resource_type,))]
    except (ValueError, TypeError) as error:  # raised by fhir.resources' own root validators
        return [Issue(str(error), code="structure", expression=(resource_type,))]
    return []


def _walk_identifiers(node: Any, path: str, found: list[tuple[str, dict[str, Any]]]) -> None:
    if isinstance(node, dict):
        if node.get("system") == RESIDENT_ID_SYSTEM and "value" in node:
            found.append((path, node))
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                _walk_identifiers(value, f"{path}.{key}", found)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _walk_identifiers(item, f"{path}[{index}]", found)


def _resident_id_issues(resource_type: str, data: dict[str, Any]) -> list[Issue]:
    found: list[tuple[str, dict[str, Any]]] = []
    _walk_identifiers(data, resource_type, found)
    issues = []
    for path, identifier in found:
        value = identifier.get("value")
        try:
            resident = parse_resident_id(value if isinstance(value, str) else "")
        except ResidentIdError as error:
            issues.append(
                Issue(
                    # Never the number itself: error messages travel and get logged.
                    f"The resident identity number is invalid: {error}",
                    code="value",
                    expression=(f"{path}.value",),
                )
            )
            continue
        # A patient's own number encodes the birth date and sex: they must agree.
        if resource_type == "Patient" and path.startswith("Patient.identifier["):
            birth_date = data.get("birthDate")
            if isinstance(birth_date, str) and len(birth_date) == 10:
                if birth_date != resident.birth_date.isoformat():
                    issues.append(
                        Issue(
                            "birthDate disagrees with the birth date in the resident "
                            "identity number (its digits 7–14)",
                            code="business-rule",
                            expression=("Patient.birthDate",),
                        )
                    )
            gender = data.get("gender")
            if gender in ("male", "female") and gender != resident.sex:
                issues.append(
                    Issue(
                        f"gender {gender} disagrees with the resident identity number, "
                        f"which gives {resident.sex}",
                        code="business-rule",
                        expression=("Patient.gender",),
                    )
                )
    return issues


def may_carry_resident_id(raw_json: bytes) -> bool:
    """False when the JSON a resource (or a whole Bundle) came from cannot hold a resident ID."""
    return RESIDENT_ID_SYSTEM.encode() in raw_json


def validate_resource(data: Any, *, scan_identifiers: bool = True) -> dict[str, Any]:
    """Return ``data`` if it may be stored; raise FhirError (400 or 422) listing every fault.

    ``scan_identifiers=False`` skips the resident-id walk, for callers that know from
    :func:`may_carry_resident_id` that the request holds none.
    """
    if not isinstance(data, dict):
        raise FhirError.of(
            400, "The body must be a JSON object (a FHIR resource)", code="structure"
        )
    resource_type = data.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise FhirError.of(
            400, "resourceType is missing", code="required", expression="resourceType"
        )
    if resource_type not in resource_types():
        raise FhirError.of(
            400,
            f"'{resource_type}' is not a FHIR R4B resource type",
            code="not-supported",
            expression="resourceType",
        )
    issues = _structure_issues(resource_type, data)
    if issues:
        raise FhirError(400, issues)
    issues = check_bindings(data)
    if scan_identifiers:
        issues += _resident_id_issues(resource_type, data)
    if issues:
        raise FhirError(422, issues)
    return data
