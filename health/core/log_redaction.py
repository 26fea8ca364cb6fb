"""Keep personal data out of the logs.

Search URLs carry names and resident identity numbers (``Patient?identifier=...|6401...``), so
the access log writes each request's path without its query string. Error logs carry types
and paths, and the database engine hides statement parameters (``health.core.database``).

The audit trail must say what was asked, so it keeps a search's query, but not the values
that name a person: :func:`redact_query`.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any
from urllib.parse import unquote_plus

#: Search parameters whose values name or reach a person (Patient, Practitioner,
#: RelatedPerson, Person): identity numbers, names, pinyin, telephone numbers, e-mail,
#: addresses, birth dates; and the ``:identifier`` modifier of references. ``address-city``,
#: ``address-postalcode``... are covered by prefix.
IDENTIFYING_PARAMETERS = frozenset(
    {
        "identifier",
        "name",
        "family",
        "given",
        "phonetic",
        "telecom",
        "phone",
        "email",
        "birthdate",
        "access_token",
    }
)
#: A resident identity number (GB 11643) anywhere in a text, whatever carries it.
RESIDENT_ID_PATTERN = re.compile(r"(?<![0-9A-Za-z])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")
REDACTED = "…"


def _identifying(name: str) -> bool:
    """Whether the search parameter ``name`` (``subject:Patient.name``, ``_has:X:p:phonetic``,
    ``subject:identifier``) compares its value with identifying data somewhere along it. On
    the safe side: ``Organization?name=`` and ``Location?address=`` count too."""
    links = re.split(r"[.:]", name)
    return any(link in IDENTIFYING_PARAMETERS or link.startswith("address") for link in links)


def redact_query(query: str) -> str:
    """``query`` (a URL's query string, as sent) with the values of identifying parameters
    replaced by ``…`` and any resident identity number elsewhere likewise; everything else,
    codes, dates and result parameters, as it was. ``identifier=…&code=I10&_count=20``."""
    parts = []
    for part in query.split("&"):
        name, equals, _value = part.partition("=")
        if equals and _identifying(unquote_plus(name)):
            part = f"{name}={REDACTED}"
        parts.append(RESIDENT_ID_PATTERN.sub(REDACTED, part))
    return "&".join(parts)


class DropQueryStrings(logging.Filter):
    """For uvicorn's access log: its records' third argument is the path with the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path, question, _query = args[2].partition("?")
            if question:
                record.args = (*args[:2], f"{path}?…", *args[3:])
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging configuration with :class:`DropQueryStrings` on the access log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["drop_query_strings"] = {"()": DropQueryStrings}
    config["handlers"]["access"]["filters"] = ["drop_query_strings"]
    return config
