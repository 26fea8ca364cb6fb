"""The CapabilityStatement at ``/fhir/metadata``: what this server really does, nothing more."""

from __future__ import annotations

from typing import Any

from health.core.clock import fhir_instant, utcnow
from records.definitions import resource_types
from records.indexing import SearchIndexer

_INSTANCE_AND_TYPE = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
]


#: What each parameter type accepts on this server, told once in ``rest.documentation``.
MODIFIERS = {
    "string": "Prefix match, case- and accent-insensitive; Chinese text matches anywhere. "
    "Modifiers :exact, :contains, :missing.",
    "token": "system|code, code, |code, system|. Modifiers :not, :text, :missing, "
    ":of-type (identifiers), :in and :not-in (value sets the FHIR R4B package enumerates), "
    ":below and :above (code systems of the FHIR R4B package).",
    "reference": "id, Type/id or absolute URL. Modifiers :Type, :identifier "
    "(Reference.identifier), :missing; chains (subject:Patient.name) and _has.",
    "date": "Prefixes eq ne gt lt ge le sa eb ap; a date without a zone is China time. "
    "Modifier :missing.",
    "number": "Prefixes eq ne gt lt ge le sa eb ap, with the precision written. Modifier :missing.",
    "quantity": "[prefix]value[|system|code]; prefixes eq ne gt lt ge le sa eb ap. "
    "Modifier :missing.",
    "uri": "Modifiers :below, :above, :missing.",
    "composite": "Components separated by $ (code$value, or chromosome$start$end), each "
    "with its type's prefixes. Modifier :missing.",
}


def capability_statement(
    *,
    base_url: str,
    indexer: SearchIndexer,
    software_version: str,
    security: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The statement; ``security`` is ``rest.security`` as the application defines it."""
    rest_resources = []
    for res_type in sorted(resource_types()):
        search_params = [
            {
                "name": "_id",
                "definition": "http://hl7.org/fhir/SearchParameter/Resource-id",
                "type": "token",
            }
        ]
        for code, kind in sorted(indexer.parameters(res_type).items()):
            entry = {"name": code, "type": kind}
            definition = indexer.definition(res_type, code)
            if definition is not None:
                entry["definition"] = definition["url"]
            search_params.append(entry)
        rest_resources.append(
            {
                "type": res_type,
                "interaction": [{"code": code} for code in _INSTANCE_AND_TYPE],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": True,
                "conditionalRead": "full-support",
                "conditionalUpdate": True,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "logical"],
                "searchParam": search_params,
                "searchInclude": ["*"],
                "searchRevInclude": ["*"],
            }
        )
        if res_type == "Patient":
            rest_resources[-1]["operation"] = [
                {
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                }
            ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": fhir_instant(utcnow()),
        "publisher": "Yinchuan resettlement-area telemedicine service",
        "kind": "instance",
        "software": {"name": "yinchuan-health", "version": software_version},
        "implementation": {
            "description": "银川移民地区远程医疗与健康档案共享 FHIR 服务",
            "url": base_url,
        },
        "fhirVersion": "4.3.0",
        "format": ["application/fhir+json", "application/json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Search by every official search parameter of type string, token, date, "
                    "reference, quantity, number, uri and composite, with their modifiers "
                    "and prefixes (by type below); chains, _has, _include/_revinclude "
                    "(:iterate), compartments, Patient/$everything, _sort, _summary, "
                    "_elements, _total; GET and POST _search. Patient.phonetic matches "
                    "pinyin and initials. Not supported, and reported as ignored (400 with "
                    "Prefer: handling=strict): _text, _content, _filter, _contained, "
                    "_containedType, _query; token :in/:not-in/:below/:above beyond the "
                    "terminology of the FHIR R4B package are refused with 400. "
                    + " ".join(f"{kind}: {text}" for kind, text in MODIFIERS.items())
                ),
                **({"security": security} if security else {}),
                "resource": rest_resources,
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                    {"code": "search-system"},
                ],
            }
        ],
    }
