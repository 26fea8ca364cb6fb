"""Errors and warnings as FHIR OperationOutcome issues.

Everything in ``records`` that refuses a request raises :class:`FhirError`; the API turns it
into an OperationOutcome with the HTTP status it carries. ``Issue.expression`` names the field
(FHIRPath, e.g. ``Patient.identifier[0].value``) so a client can show the person what to fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue: severity and code from the FHIR value sets."""

    diagnostics: str
    code: str = "invalid"  # http://hl7.org/fhir/ValueSet/issue-type
    severity: str = "error"  # fatal | error | warning | information
    expression: tuple[str, ...] = ()

    def as_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue

    def under(self, prefix: str) -> Issue:
        """The same issue placed inside a container, e.g. ``Bundle.entry[2].resource``.

        An expression that starts at the resource (``Patient.gender``) loses its type name, so
        it reads ``Bundle.entry[2].resource.gender``, which is valid FHIRPath.
        """
        return Issue(
            diagnostics=self.diagnostics,
            code=self.code,
            severity=self.severity,
            expression=tuple(_rebase(prefix, e) for e in self.expression) or (prefix,),
        )


def _rebase(prefix: str, expression: str) -> str:
    head, dot, rest = expression.partition(".")
    if dot and head[:1].isupper() and "[" not in head:
        return f"{prefix}.{rest}"
    return f"{prefix}.{expression}"


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.as_fhir() for i in issues]}


@dataclass
class FhirError(Exception):
    """A request the server refuses, with the HTTP status and the issues that say why."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return "; ".join(i.diagnostics for i in self.issues) or f"HTTP {self.status}"

    @classmethod
    def of(
        cls,
        status: int,
        diagnostics: str,
        *,
        code: str = "invalid",
        expression: str | None = None,
    ) -> FhirError:
        return cls(
            status,
            [Issue(diagnostics, code=code, expression=(expression,) if expression else ())],
        )

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)
