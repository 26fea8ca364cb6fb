"""The clinic directory as FHIR: one clinic record becomes an Organization and a Location.

This module owns two things:

* the mapping from a directory record (code, name, kind, parent, address, phone, position)
  to transaction-Bundle entries, shared by ``health directory import FILE.csv`` and the demo
  seed (``health.demo.directory``) so the two always describe a clinic the same way;
* reading a directory CSV file (``health directory import``), checking every row and
  reporting every problem at once.

Bundle conventions (the transaction processor in ``records/`` applies them):

* every entry is a conditional write keyed by the resource's identifier — a conditional
  update ``PUT Organization?identifier=<system>|<code>`` for an import, so re-importing an
  unchanged file changes nothing and a changed row updates its resource; or a conditional
  create (``POST`` with ``ifNoneExist``) for the demo seed, so re-seeding is a no-op;
* every entry has ``fullUrl: urn:uuid:<uuid5 of type|system|value>``, stable from run to run,
  and references between entries of one bundle use that ``urn:uuid`` — the processor maps it
  to whichever id the conditional write ended on. This is what lets a parent appear after
  its children in the file: the order of entries does not matter;
* references to resources outside the bundle (written by an earlier bundle) are conditional
  references, ``Organization?identifier=<system>|<code>``.

CSV file rules (documented for the people who prepare the file):

* encoding UTF-8 with or without BOM, or GB18030 (what Excel saves on a Chinese Windows);
* one header row, Chinese or English names (see ``COLUMN_ALIASES``); columns it does not
  know are ignored; 机构编码/code, 机构名称/name and 机构类型/kind are required;
* codes are ASCII letters, digits, ``-``, ``_`` and ``.`` and unique within the file;
* 机构类型 is 乡镇卫生院, 村卫生室, 医院, 科室 or the English codes; 社区卫生服务中心 and
  社区卫生服务站 (urban resettlement communities) count as township centre and village clinic;
* 村卫生室 (village-clinic) rows need the code of a 乡镇卫生院 (township-health-centre) and
  科室 (department) rows the code of a 医院 (hospital) as parent, and the parent must be in
  the same file: the file describes the whole network it touches, so a typo in a parent
  code is caught here rather than surfacing as a dangling reference. Township centres and
  hospitals are the top of the network and have no parent;
* longitude and latitude come together, as decimal degrees inside China (longitude 73–136,
  latitude 3–54, which also catches the two columns swapped);
* a Location is written for every clinic and hospital row; departments are part of their
  hospital's building and get none.

Rows are numbered as a spreadsheet shows them: the header is row 1, the first clinic row 2.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from health.core.naming import (
    LOCATION_CODE_SYSTEM,
    NAMESPACE,
    ORGANIZATION_CODE_SYSTEM,
    ORGANIZATION_KIND_SYSTEM,
)

Resource = dict[str, Any]
Entry = dict[str, Any]

#: The standard organisation type code system (prov = healthcare provider, dept = department).
HL7_ORGANIZATION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/organization-type"
_LOCATION_PHYSICAL_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/location-physical-type"

# Fixed namespace for the entries' urn:uuid fullUrls: the same resource gets the same fullUrl
# in every run, which keeps bundles byte-for-byte reproducible.
_FULL_URL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, f"{NAMESPACE}/bundle-entry")

OrganizationKind = Literal["township-health-centre", "village-clinic", "hospital", "department"]


@dataclass(frozen=True, slots=True)
class KindInfo:
    """How one kind of organisation is coded and where it sits in the network."""

    code: OrganizationKind
    display: str  # Chinese name, as on the clinic's sign
    hl7_type: str  # code in HL7_ORGANIZATION_TYPE_SYSTEM
    hl7_display: str
    parent_kind: OrganizationKind | None  # the kind its parent must be; None: no parent
    has_location: bool


KINDS: dict[str, KindInfo] = {
    info.code: info
    for info in (
        KindInfo("township-health-centre", "乡镇卫生院", "prov", "Healthcare Provider", None, True),
        KindInfo(
            "village-clinic",
            "村卫生室",
            "prov",
            "Healthcare Provider",
            "township-health-centre",
            True,
        ),
        KindInfo("hospital", "医院", "prov", "Healthcare Provider", None, True),
        KindInfo("department", "科室", "dept", "Hospital Department", "hospital", False),
    )
}
# The Chinese names a file may use for each kind. Urban resettlement communities have a
# community health service centre/station in the place of a township centre/village clinic;
# they play the same part in the network.
_KIND_BY_NAME: dict[str, OrganizationKind] = {info.display: info.code for info in KINDS.values()}
_KIND_BY_NAME.update(
    {"社区卫生服务中心": "township-health-centre", "社区卫生服务站": "village-clinic"}
)


# --------------------------------------------------------------------------------------
# Bundle helpers shared with the demo seed


def full_url(resource_type: str, system: str, value: str) -> str:
    """The stable ``urn:uuid:`` fullUrl of the resource identified by ``system|value``."""
    return f"urn:uuid:{uuid.uuid5(_FULL_URL_NAMESPACE, f'{resource_type}|{system}|{value}')}"


def identifier_query(resource_type: str, system: str, value: str) -> str:
    """``Type?identifier=system|value``: the search a conditional write or reference makes."""
    return f"{resource_type}?identifier={system}|{value}"


def conditional_reference(
    resource_type: str, system: str, value: str, display: str | None = None
) -> dict[str, str]:
    """A reference by identifier to a resource written by another bundle."""
    reference = {"reference": identifier_query(resource_type, system, value)}
    if display:
        reference["display"] = display
    return reference


def conditional_entry(
    resource: Resource, system: str, value: str, *, create_only: bool = False
) -> Entry:
    """A transaction entry writing ``resource`` keyed by its identifier ``system|value``.

    ``create_only`` makes a conditional create (``POST`` + ``ifNoneExist``: an existing match
    is left untouched); otherwise a conditional update (``PUT Type?identifier=...``).
    """
    resource_type = resource["resourceType"]
    url = full_url(resource_type, system, value)
    if create_only:
        request = {
            "method": "POST",
            "url": resource_type,
            "ifNoneExist": f"identifier={system}|{value}",
        }
    else:
        request = {"method": "PUT", "url": identifier_query(resource_type, system, value)}
    return {"fullUrl": url, "resource": resource, "request": request}


def transaction_bundle(entries: Iterable[Entry], *, meta: Mapping[str, Any] | None = None) -> dict:
    """A FHIR transaction Bundle of ``entries``."""
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction"}
    if meta:
        bundle["meta"] = dict(meta)
    bundle["entry"] = list(entries)
    return bundle


# --------------------------------------------------------------------------------------
# Directory records to FHIR


@dataclass(frozen=True, slots=True)
class DirectoryRecord:
    """One organisation of the clinic network, as a directory lists it.

    ``address`` is a FHIR Address (a dict): the demo fills the structured parts, a CSV row
    only its free text.
    """

    code: str
    name: str
    kind: OrganizationKind
    parent_code: str | None = None
    address: Mapping[str, Any] | None = None
    phone: str | None = None
    longitude: float | None = None
    latitude: float | None = None


def organization_reference(code: str, records_in_bundle: Mapping[str, Any]) -> dict[str, str]:
    """Reference to organisation ``code``: by urn:uuid if in this bundle, else by identifier."""
    if code in records_in_bundle:
        return {"reference": full_url("Organization", ORGANIZATION_CODE_SYSTEM, code)}
    return conditional_reference("Organization", ORGANIZATION_CODE_SYSTEM, code)


def directory_record_entries(
    record: DirectoryRecord,
    *,
    records_in_bundle: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    create_only: bool = False,
) -> list[Entry]:
    """The Organization entry for ``record`` and, for clinics and hospitals, its Location.

    ``records_in_bundle`` maps the codes written by the same bundle (to anything): a parent
    among them is referenced by urn:uuid, any other by identifier.
    """
    info = KINDS[record.kind]
    telecom = [{"system": "phone", "value": record.phone, "use": "work"}] if record.phone else None
    organization: Resource = {"resourceType": "Organization"}
    if meta:
        organization["meta"] = _copy_meta(meta)
    organization["identifier"] = [{"system": ORGANIZATION_CODE_SYSTEM, "value": record.code}]
    organization["active"] = True
    organization["type"] = [
        {
            "coding": [
                {"system": ORGANIZATION_KIND_SYSTEM, "code": info.code, "display": info.display},
                {
                    "system": HL7_ORGANIZATION_TYPE_SYSTEM,
                    "code": info.hl7_type,
                    "display": info.hl7_display,
                },
            ],
            "text": info.display,
        }
    ]
    organization["name"] = record.name
    if telecom:
        organization["telecom"] = telecom
    if record.address:
        organization["address"] = [dict(record.address)]
    if record.parent_code:
        organization["partOf"] = organization_reference(record.parent_code, records_in_bundle)
    entries = [
        conditional_entry(
            organization, ORGANIZATION_CODE_SYSTEM, record.code, create_only=create_only
        )
    ]
    if not info.has_location:
        return entries

    location: Resource = {"resourceType": "Location"}
    if meta:
        location["meta"] = _copy_meta(meta)
    location["identifier"] = [{"system": LOCATION_CODE_SYSTEM, "value": record.code}]
    location["status"] = "active"
    location["name"] = record.name
    location["mode"] = "instance"
    if telecom:
        location["telecom"] = [dict(point) for point in telecom]
    if record.address:
        location["address"] = dict(record.address)
    location["physicalType"] = {
        "coding": [{"system": _LOCATION_PHYSICAL_TYPE_SYSTEM, "code": "bu", "display": "Building"}],
        "text": "院址",
    }
    if record.longitude is not None and record.latitude is not None:
        location["position"] = {"longitude": record.longitude, "latitude": record.latitude}
    location["managingOrganization"] = {
        "reference": full_url("Organization", ORGANIZATION_CODE_SYSTEM, record.code)
    }
    entries.append(
        conditional_entry(location, LOCATION_CODE_SYSTEM, record.code, create_only=create_only)
    )
    return entries


def directory_entries(
    records: Sequence[DirectoryRecord],
    *,
    meta: Mapping[str, Any] | None = None,
    create_only: bool = False,
) -> list[Entry]:
    """Entries for all ``records``, parents referenced within the bundle when present."""
    in_bundle = {record.code: record for record in records}
    entries: list[Entry] = []
    for record in records:
        entries.extend(
            directory_record_entries(
                record, records_in_bundle=in_bundle, meta=meta, create_only=create_only
            )
        )
    return entries


def _copy_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    # Each resource gets its own lists and codings, so a later edit of one cannot leak into all.
    return {key: [dict(item) for item in value] for key, value in meta.items()}


# --------------------------------------------------------------------------------------
# The CSV file


class DirectoryFileError(ValueError):
    """The directory file cannot be imported; ``problems`` lists every fault found."""

    def __init__(self, problems: Sequence[str], source: str = "directory file") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


#: Header names a file may use, Chinese or English, for each field.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "code": ("机构编码", "code"),
    "name": ("机构名称", "name"),
    "kind": ("机构类型", "kind"),
    "parent_code": ("上级机构编码", "parent_code"),
    "address": ("地址", "address"),
    "phone": ("电话", "phone"),
    "longitude": ("经度", "longitude"),
    "latitude": ("纬度", "latitude"),
}
_REQUIRED_COLUMNS = ("code", "name", "kind")
_FIELD_BY_HEADER = {
    alias.casefold(): field_name
    for field_name, aliases in COLUMN_ALIASES.items()
    for alias in aliases
}
_CODE = re.compile(r"^[A-Za-z0-9._-]+$")
_ROW = re.compile(r"^row (\d+)")
_PHONE = re.compile(r"^\+?[0-9][0-9 -]{4,19}$")
# China's extent in decimal degrees; a point outside is a typo or swapped columns.
_LONGITUDE_RANGE = (Decimal(73), Decimal(136))
_LATITUDE_RANGE = (Decimal(3), Decimal(54))


def read_directory_text(path: Path) -> str:
    """The file's text: UTF-8 (a BOM is dropped) or, failing that, GB18030."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError as error:
        raise DirectoryFileError(
            [f"byte {error.start}: the file is neither UTF-8 nor GB18030 text"], str(path)
        ) from None


def directory_bundle_from_csv(path: Path) -> dict:
    """The transaction Bundle (conditional updates) importing the directory file at ``path``."""
    text = read_directory_text(path)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    try:
        return directory_bundle_from_rows(rows)
    except DirectoryFileError as error:
        raise DirectoryFileError(error.problems, str(path)) from None


def directory_bundle_from_rows(rows: Iterable[Sequence[str]]) -> dict:
    """The transaction Bundle for parsed CSV ``rows`` (header first); pure, no file access.

    Raises DirectoryFileError listing every problem with its row number and column.
    """
    records = directory_records_from_rows(rows)
    return transaction_bundle(directory_entries(records))


def directory_records_from_rows(rows: Iterable[Sequence[str]]) -> list[DirectoryRecord]:
    """Check ``rows`` (header first) and return their records, or raise DirectoryFileError."""
    iterator = iter(rows)
    header = next(iterator, None)
    if header is None:
        raise DirectoryFileError(["the file is empty: expected a header row"])
    columns, problems = _read_header(header)
    if problems:
        raise DirectoryFileError(problems)

    records: list[tuple[int, DirectoryRecord]] = []
    for row_number, row in enumerate(iterator, start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank lines, often left at the end by spreadsheets
        values = {
            name: (row[index].strip() if index < len(row) else "")
            for name, index in columns.items()
        }
        record = _read_row(row_number, values, columns, header, problems)
        if record is not None:
            records.append((row_number, record))
    if not records and not problems:
        problems.append("the file has a header but no clinic rows")
    problems.extend(_check_network(records, columns, header))
    if problems:
        # In file order: every message starts "row N", and sorting keeps a row's own order.
        problems.sort(key=_row_of)
        raise DirectoryFileError(problems)
    return [record for _, record in records]


def _row_of(problem: str) -> int:
    match = _ROW.match(problem)
    return int(match.group(1)) if match else 0


def _read_header(header: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    columns: dict[str, int] = {}
    problems: list[str] = []
    for index, raw in enumerate(header):
        name = raw.strip().lstrip("\ufeff").casefold()
        field_name = _FIELD_BY_HEADER.get(name)
        if field_name is None:
            continue
        if field_name in columns:
            problems.append(
                f"row 1: columns '{header[columns[field_name]].strip()}' and '{raw.strip()}' "
                f"both give {field_name}"
            )
            continue
        columns[field_name] = index
    for field_name in _REQUIRED_COLUMNS:
        if field_name not in columns:
            problems.append(f"row 1: missing column {' / '.join(COLUMN_ALIASES[field_name])}")
    return columns, problems


def _column(columns: Mapping[str, int], header: Sequence[str], field_name: str) -> str:
    """The column as the file names it, for messages."""
    return header[columns[field_name]].strip().lstrip("\ufeff")


def _read_row(
    row_number: int,
    values: Mapping[str, str],
    columns: Mapping[str, int],
    header: Sequence[str],
    problems: list[str],
) -> DirectoryRecord | None:
    def problem(field_name: str, message: str) -> None:
        problems.append(
            f"row {row_number}, column {_column(columns, header, field_name)}: {message}"
        )

    ok = True
    code = values["code"]
    if not code:
        problem("code", "missing code")
        ok = False
    elif not _CODE.match(code):
        problem("code", f"code '{code}' may hold only ASCII letters, digits, '-', '_' and '.'")
        ok = False
    name = values["name"]
    if not name:
        problem("name", "missing name")
        ok = False
    kind_text = values["kind"]
    english = KINDS.get(kind_text.lower())
    kind = english.code if english else _KIND_BY_NAME.get(kind_text)
    if kind is None:
        known = ", ".join(f"{info.display}/{info.code}" for info in KINDS.values())
        problem(
            "kind",
            f"unknown kind '{kind_text}' (expected one of {known})"
            if kind_text
            else f"missing kind (expected one of {known})",
        )
        ok = False

    parent_code = values.get("parent_code") or None
    if parent_code is not None and not _CODE.match(parent_code):
        problem(
            "parent_code",
            f"parent code '{parent_code}' may hold only ASCII letters, digits, '-', '_' and '.'",
        )
        ok = False

    phone = values.get("phone") or None
    if phone is not None and not _PHONE.match(phone):
        problem("phone", f"'{phone}' is not a phone number")
        ok = False

    longitude_text, latitude_text = values.get("longitude", ""), values.get("latitude", "")
    longitude, longitude_error = _coordinate(longitude_text, _LONGITUDE_RANGE)
    latitude, latitude_error = _coordinate(latitude_text, _LATITUDE_RANGE)
    if (
        longitude_error
        and latitude_error
        and not any(
            _coordinate(text, bounds)[1]
            for text, bounds in (
                (latitude_text, _LONGITUDE_RANGE),
                (longitude_text, _LATITUDE_RANGE),
            )
        )
    ):
        # Both wrong, both right the other way round: say so once, it is one mistake.
        problem(
            "longitude", f"longitude {longitude_text} and latitude {latitude_text} look swapped"
        )
        ok = False
    else:
        for field_name, error in (("longitude", longitude_error), ("latitude", latitude_error)):
            if error:
                problem(field_name, error)
                ok = False
    if longitude_text and not latitude_text:
        problem("latitude", "longitude given without latitude")
        ok = False
    if latitude_text and not longitude_text:
        problem("longitude", "latitude given without longitude")
        ok = False

    if not ok or kind is None:
        return None
    address_text = values.get("address") or None
    address = {"text": address_text, "country": "CN"} if address_text else None
    return DirectoryRecord(
        code=code,
        name=name,
        kind=kind,
        parent_code=parent_code,
        address=address,
        phone=phone,
        longitude=longitude,
        latitude=latitude,
    )


def _coordinate(text: str, bounds: tuple[Decimal, Decimal]) -> tuple[float | None, str | None]:
    if not text:
        return None, None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None, f"'{text}' is not a number of degrees"
    if not value.is_finite() or not bounds[0] <= value <= bounds[1]:
        return None, f"{text} is outside China ({bounds[0]} to {bounds[1]} degrees)"
    return float(value), None


def _check_network(
    records: Sequence[tuple[int, DirectoryRecord]],
    columns: Mapping[str, int],
    header: Sequence[str],
) -> list[str]:
    """Duplicate codes and parents: missing, absent from the file, or of the wrong kind."""
    problems: list[str] = []
    first_row: dict[str, int] = {}
    by_code: dict[str, DirectoryRecord] = {}
    code_column = _column(columns, header, "code")
    for row_number, record in records:
        if record.code in first_row:
            problems.append(
                f"row {row_number}, column {code_column}: duplicate code '{record.code}' "
                f"(first on row {first_row[record.code]})"
            )
            continue
        first_row[record.code] = row_number
        by_code[record.code] = record

    parent_column = (
        _column(columns, header, "parent_code")
        if "parent_code" in columns
        else "上级机构编码/parent_code"
    )
    for row_number, record in records:
        info = KINDS[record.kind]
        where = f"row {row_number}, column {parent_column}"
        if info.parent_kind is None:
            if record.parent_code:
                problems.append(
                    f"{where}: a {info.display} ({info.code}) has no parent organisation"
                )
            continue
        parent_info = KINDS[info.parent_kind]
        if not record.parent_code:
            problems.append(
                f"{where}: a {info.display} ({info.code}) needs the code of its "
                f"{parent_info.display} ({parent_info.code})"
            )
            continue
        parent = by_code.get(record.parent_code)
        if parent is None:
            problems.append(f"{where}: parent code '{record.parent_code}' is not in the file")
        elif parent.kind != info.parent_kind:
            problems.append(
                f"{where}: parent '{record.parent_code}' is a {KINDS[parent.kind].display} "
                f"({parent.kind}); a {info.display} belongs to a {parent_info.display} "
                f"({parent_info.code})"
            )
    return problems
