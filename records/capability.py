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
            search_params.append({"name": code, "type": kind})
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
                    "reference, quantity, number and uri, with their modifiers and prefixes; "
                    "chains, _has, _include/_revinclude (:iterate), compartments, "
                    "Patient/$everything, _sort, _summary, _elements, _total; GET and "
                    "POST _search. Patient.phonetic matches pinyin and initials. Composite "
                    "parameters of a token and one value (code-value-quantity and 35 more) "
                    "are supported; the five others are not."
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
