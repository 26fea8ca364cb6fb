"""The health commission's dashboard: the page, its drill-down lists and evidence, its JSON API
and its exports.

Only commission analysts open it (admins keep to the directory and the audit trail, as the
access policy has it; doctors follow their own patients). Every figure comes from
:mod:`health.poverty.dashboard`; a figure's bar links to the list of the households behind
it, a household to its evidence (the flag's rule, the measures against their thresholds, the
diagnoses and costs the RiskAssessment holds). The figures, lists and evidence are read from
the illness-poverty service's derived tables and stored RiskAssessments by hand
(:func:`health.poverty.dashboard.evidence`), not through the records API: the analyst policy
over a whole city is too slow for a page. Each read is put on the person's own audit trail
here, with every resource and patient it showed. Households are named by their registry number and
village; names and resident identity numbers appear only for users with the case-worker
right (``health user add --case-worker``), and each household list or household read is an
AuditEvent of the person.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import asdict
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from health.auth import accounts
from health.auth.endpoints import api_caller
from health.auth.gate import Gate, RequestCaller
from health.core.clock import utcnow
from health.core.database import Database
from health.core.naming import ILLNESS_POVERTY_COSTS_URL, ILLNESS_POVERTY_MEASURE_URL
from health.core.problems import Problem
from health.poverty import dashboard as figures
from health.poverty.cases import STAGES
from health.poverty.dashboard import BadParameter, Filters
from health.poverty.disease_groups import title as disease_title
from health.poverty.money import from_fen
from health.poverty.rules import RULE_NAMES
from health.web.charts import Bar, bars_svg, columns_svg
from health.web.display import yuan
from health.web.i18n import language_of
from health.web.signed_in import SignedIn, signed_in
from integrations.spreadsheet import FORMATS, MEDIA_TYPES, table_bytes
from records.access import AccessEvent

router = APIRouter()
_CHINA = dt.timezone(dt.timedelta(hours=8), "CST")
ROLE = "commission_analyst"
PAGE_SIZE = 50
BAND_NAMES: dict[str, tuple[str, str]] = {
    "0-5k": ("5千元以下", "under ¥5,000"),
    "5k-10k": ("5千–1万元", "¥5,000–10,000"),
    "10k-20k": ("1万–2万元", "¥10,000–20,000"),
    "20k-50k": ("2万–5万元", "¥20,000–50,000"),
    "50k+": ("5万元及以上", "¥50,000 and more"),
    "none": ("尚无费用数据", "no figures yet"),
}
#: Export headers (Chinese, as the commission's offices file them); names only for case workers.
EXPORT_HEADERS = [
    "户编号",
    "乡镇",
    "村",
    "帮扶阶段",
    "识别时间",
    "下一步期限",
    "责任人",
    "近12个月自付费用（元）",
    "触发规则",
    "病种（ICD-10章）",
]
NAMED_HEADERS = ["户主姓名", "家庭成员及身份证号"]


# -- who is asking -------------------------------------------------------------------------


class Viewer:
    """Who reads the dashboard: their caller (policy and audit trail) and their right."""

    def __init__(self, caller: RequestCaller, case_worker: bool) -> None:
        self.caller = caller
        self.case_worker = case_worker


async def _api_viewer(request: Request) -> Viewer:
    gate: Gate = request.app.state.gate
    caller = await api_caller(request)
    if caller.subject.role != ROLE:
        raise Problem(403, "Forbidden", "The dashboard is for health commission analysts")
    case_worker = False
    if caller.subject.id and caller.subject.id.startswith("user:"):
        async with gate.database.transaction(write=False) as session:
            user = await accounts.get_user(session, username=caller.subject.id[5:])
        case_worker = bool(user and user.case_worker and not user.disabled)
    return Viewer(caller, case_worker)


async def _page_viewer(request: Request) -> tuple[SignedIn, Viewer]:
    me = await signed_in(request)
    me.require_role(ROLE)
    return me, Viewer(me.caller, me.user.case_worker)


def _database(request: Request) -> Database:
    database: Database = request.app.state.gate.database
    return database


def _filters(request: Request) -> Filters:
    try:
        return Filters.parse(dict(request.query_params))
    except BadParameter as error:
        raise Problem(400, "Invalid parameter", str(error), field=error.name) from None


def _paging(request: Request) -> tuple[int, int]:
    values = []
    for name, default, top in (("limit", PAGE_SIZE, figures.PAGE_LIMIT), ("offset", 0, None)):
        raw = request.query_params.get(name)
        try:
            value = default if raw in (None, "") else int(str(raw))
        except ValueError:
            raise Problem(400, "Invalid parameter", f"{name}: a whole number", field=name) from None
        if value < (1 if name == "limit" else 0) or (top is not None and value > top):
            limits = f"1 to {top}" if top else "0 or more"
            raise Problem(400, "Invalid parameter", f"{name}: {limits}", field=name)
        values.append(value)
    return values[0], values[1]


async def _audit(
    viewer: Viewer,
    what: str,
    rows: list[figures.HouseholdRow],
    names: dict[str, list[figures.Member]],
) -> None:
    """Each household list the person was shown, on their audit trail (with the patients
    whose names they saw, when they have the right)."""
    patients: dict[str, tuple[tuple[str, str], ...]] = {
        m.patient_id: (("Patient", m.patient_id),)
        for members in names.values()
        for m in members
        if m.patient_id
    }
    await viewer.caller.audit(
        AccessEvent(
            interaction="search-type",
            action="E",
            status=200,
            request=what,
            resources=tuple(("Group", r.group_id) for r in rows),
            patients=patients,
        )
    )


# -- the figures ---------------------------------------------------------------------------


async def _figures(request: Request, filters: Filters) -> dict[str, Any]:
    """Every figure, each in a read transaction of its own and all at once: on PostgreSQL the
    eight aggregates then take about as long as the slowest, not their sum."""
    database = _database(request)
    readers = {
        "township": figures.by_township,
        "overdue": figures.overdue_by_township,
        "village": figures.by_village,
        "rule": figures.by_rule,
        "disease_group": figures.by_disease_group,
        "month": figures.by_month,
        "band": figures.by_band,
        "time_to_help": figures.time_to_help,
        "households": figures.count_households,
    }

    async def read(reader: Any) -> Any:
        async with database.transaction(write=False) as session:
            return await reader(session, filters)

    found = await asyncio.gather(*(read(reader) for reader in readers.values()))
    return dict(zip(readers, found, strict=True))


def _label(kind: str, key: str, english: bool) -> str:
    if kind == "rule":
        return RULE_NAMES.get(key, (key, key))[1 if english else 0]
    if kind == "disease_group":
        try:
            return disease_title(key)[1 if english else 0]
        except KeyError:
            return key
    if kind == "band":
        return BAND_NAMES[key][1 if english else 0]
    if not key:
        return "unknown" if english else "未登记"
    return key


def _json_counts(kind: str, counts: list[figures.Count], filters: Filters) -> list[dict[str, Any]]:
    out = []
    for count in counts:
        item: dict[str, Any] = {
            "key": count.key,
            "label": _label(kind, count.key, english=False),
            "households": count.households,
            "list": "/api/dashboard/households?" + urlencode(_drill(kind, count, filters).query()),
        }
        if count.parent is not None:
            item["township"] = count.parent
        out.append(item)
    return out


def _drill(kind: str, count: figures.Count, filters: Filters) -> Filters:
    if kind == "overdue":
        return filters.narrowed(overdue="1", township=count.key or None)
    if kind == "village":
        return filters.narrowed(township=count.parent or None, village=count.key or None)
    return filters.narrowed(**{kind: count.key or None})


@router.get("/api/dashboard/figures")
async def api_figures(request: Request) -> JSONResponse:
    """Every figure of the dashboard at once, each bar with the link to its households."""
    await _api_viewer(request)
    filters = _filters(request)
    found = await _figures(request, filters)
    body: dict[str, Any] = {
        "filters": filters.query(),
        "households": found["households"],
        "time_to_help": asdict(found["time_to_help"]),
    }
    for kind in ("township", "overdue", "village", "rule", "disease_group", "month", "band"):
        body[kind] = _json_counts(kind, found[kind], filters)
    return JSONResponse(body)


# -- the lists -----------------------------------------------------------------------------


def _row_json(row: figures.HouseholdRow, members: list[figures.Member] | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "group_id": row.group_id,
        "household_number": row.household_number,
        "township": row.township,
        "village": row.village,
        "task_id": row.task_id,
        "stage": row.stage,
        "opened_at": row.opened_at.isoformat(),
        "due_at": row.due_at.isoformat() if row.due_at else None,
        "owner": row.owner_name,
        "overdue": row.due_at is not None and row.due_at < utcnow(),
        "out_of_pocket": str(from_fen(row.out_of_pocket_fen))
        if row.out_of_pocket_fen is not None
        else None,
        "rules": list(row.rules),
        "disease_groups": list(row.disease_groups),
        "evidence": f"/api/dashboard/households/{row.group_id}",
    }
    if members is not None:
        item["name"] = row.name
        item["members"] = [
            {"name": m.name, "resident_id": m.resident_id, "relationship": m.relationship}
            for m in members
        ]
    return item


async def _rows(
    request: Request, viewer: Viewer, filters: Filters, *, limit: int, offset: int
) -> tuple[int, list[figures.HouseholdRow], dict[str, list[figures.Member]]]:
    async with _database(request).transaction(write=False) as session:
        total = await figures.count_households(session, filters)
        rows = await figures.households(
            session, filters, limit=limit, offset=offset, with_names=viewer.case_worker
        )
        names = (
            await figures.members(session, [r.group_id for r in rows]) if viewer.case_worker else {}
        )
    query = urlencode(filters.query())
    await _audit(viewer, f"dashboard/households?{query}", rows, names)
    return total, rows, names


@router.get("/api/dashboard/households")
async def api_households(request: Request) -> JSONResponse:
    """The households behind a figure (its filters), a page at a time."""
    viewer = await _api_viewer(request)
    filters = _filters(request)
    limit, offset = _paging(request)
    total, rows, names = await _rows(request, viewer, filters, limit=limit, offset=offset)
    return JSONResponse(
        {
            "filters": filters.query(),
            "total": total,
            "limit": limit,
            "offset": offset,
            "households": [
                _row_json(r, names.get(r.group_id, []) if viewer.case_worker else None)
                for r in rows
            ],
        }
    )


def _export_rows(
    rows: list[figures.HouseholdRow], names: dict[str, list[figures.Member]], named: bool
) -> list[list[Any]]:
    out = []
    for r in rows:
        line: list[Any] = [
            r.household_number,
            r.township or "",
            r.village or "",
            STAGES.get(r.stage, (r.stage,))[0],
            r.opened_at.astimezone(_CHINA).replace(tzinfo=None),
            r.due_at.astimezone(_CHINA).replace(tzinfo=None) if r.due_at else None,
            r.owner_name or "",
            from_fen(r.out_of_pocket_fen) if r.out_of_pocket_fen is not None else None,
            "；".join(RULE_NAMES.get(x, (x,))[0] for x in r.rules),
            "；".join(r.disease_groups),
        ]
        if named:
            line.append(r.name or "")
            line.append(
                "；".join(
                    f"{m.name or ''} {m.resident_id or ''}".strip()
                    for m in names.get(r.group_id, [])
                )
            )
        out.append(line)
    return out


async def _export(request: Request, viewer: Viewer, fmt: str) -> Response:
    if fmt not in FORMATS:
        raise Problem(400, "Invalid parameter", "format: csv or xlsx", field="format")
    filters = _filters(request)
    _total, rows, names = await _rows(
        request, viewer, filters, limit=figures.EXPORT_LIMIT, offset=0
    )
    headers = EXPORT_HEADERS + (NAMED_HEADERS if viewer.case_worker else [])
    data = table_bytes(
        headers,
        _export_rows(rows, names, viewer.case_worker),
        fmt,  # type: ignore[arg-type]
        sheet="因病致贫返贫户",
    )
    return Response(
        data,
        media_type=MEDIA_TYPES[fmt],  # type: ignore[index]
        headers={"Content-Disposition": f'attachment; filename="poverty-households.{fmt}"'},
    )


@router.get("/api/dashboard/households.{fmt}")
async def api_export(request: Request, fmt: str) -> Response:
    """The list as a CSV or XLSX file with Chinese headers."""
    return await _export(request, await _api_viewer(request), fmt)


# -- a household's evidence ----------------------------------------------------------------


async def _evidence(request: Request, viewer: Viewer, group_id: str) -> dict[str, Any] | None:
    async with _database(request).transaction(write=False) as session:
        found = await figures.household(session, group_id)
        names = await figures.members(session, [group_id]) if found else {}
        stored = await figures.evidence(session, group_id)
    if found is None:
        return None
    flags = []
    shown: list[tuple[str, str]] = [("Group", group_id)]
    patients: dict[str, list[tuple[str, str]]] = {}
    for flag in found.flags:
        item: dict[str, Any] = {
            "flag_id": flag["flag_id"],
            "rule": flag["rule"],
            "rule_name": RULE_NAMES.get(flag["rule"] or "", ("", ""))[0],
            "kind": flag["kind"],
            "since": _iso(flag["started_at"]),
            "measures": [],
            "costs": {},
            "diagnoses": [],
        }
        shown.append(("Flag", flag["flag_id"]))
        assessment = stored.assessments.get(flag["assessment_id"] or "")
        if assessment:
            shown.append(("RiskAssessment", flag["assessment_id"]))
            item.update(
                _assessment_evidence(
                    assessment,
                    mask={} if viewer.case_worker else _masks(names.get(group_id, [])),
                )
            )
            for reference in item.pop("basis"):
                res_id = reference.removeprefix("Condition/")
                condition = stored.conditions.get(res_id) if reference != res_id else None
                if condition is None:
                    continue
                item["diagnoses"].append(_diagnosis(condition))
                patient = str(condition["subject"]["reference"]).removeprefix("Patient/")
                patients.setdefault(patient, []).append(("Condition", res_id))
        flags.append(item)
    body: dict[str, Any] = {
        "group_id": found.group_id,
        "household_number": found.number,
        "township": found.township,
        "village": found.village,
        "size": found.size,
        "status": found.status,
        "income_per_capita": str(from_fen(found.income_per_capita_fen))
        if found.income_per_capita_fen is not None
        else None,
        "figures": {
            k: (
                str(from_fen(v))
                if k in _MONEY
                else (
                    _iso(v)
                    if isinstance(v, dt.datetime)
                    else (v.isoformat() if isinstance(v, dt.date) else v)
                )
            )
            for k, v in (found.figures or {}).items()
            if k != "group_id"
        },
        "disease_groups": list(found.disease_groups),
        "cases": [
            {
                "task_id": c["task_id"],
                "stage": c["stage"],
                "open": c["open"],
                "opened_at": _iso(c["opened_at"]),
                "first_assisted_at": _iso(c["first_assisted_at"]),
                "owner": c["owner_name"],
                "help": (c["help"] or "").split(),
            }
            for c in found.cases
        ],
        "flags": flags,
    }
    if viewer.case_worker:
        members = names.get(group_id, [])
        body["members"] = [
            {"name": m.name, "resident_id": m.resident_id, "relationship": m.relationship}
            for m in members
        ]
    if viewer.case_worker:
        for member in names.get(group_id, []):
            if member.patient_id:
                patients.setdefault(member.patient_id, []).append(("Patient", member.patient_id))
    await viewer.caller.audit(
        AccessEvent(
            interaction="read",
            action="R",
            status=200,
            request=f"dashboard/households/{group_id}",
            resources=tuple(shown),
            patients={p: tuple(r) for p, r in patients.items()},
        )
    )
    return body


def _iso(moment: dt.datetime | None) -> str | None:
    """An instant as ISO 8601 with its offset (SQLite gives them back naive, in UTC)."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).isoformat()


_MONEY = {"billed", "basic", "serious", "assistance", "other", "out_of_pocket"}


def _masks(members: list[figures.Member]) -> dict[str, str]:
    """What stands for each member's name in an analyst's evidence: the relationship to the
    head of the household (户主, 配偶…), as the measures' texts name the members."""
    return {
        m.name: f"[{m.relationship or '家庭成员'}]"
        for m in sorted(members, key=lambda m: -len(m.name or ""))
        if m.name
    }


def _masked(text: Any, mask: dict[str, str]) -> Any:
    if not isinstance(text, str):
        return text
    for name, stand_in in mask.items():
        text = text.replace(name, stand_in)
    return text


def _assessment_evidence(assessment: dict[str, Any], *, mask: dict[str, str]) -> dict[str, Any]:
    """The rule's measures and the costs from a RiskAssessment — never its subject's name;
    the members' names in the measures' texts replaced as ``mask`` says."""
    measures = []
    for prediction in assessment.get("prediction") or []:
        parts: dict[str, Any] = {}
        for extension in prediction.get("extension") or []:
            if extension.get("url") != ILLNESS_POVERTY_MEASURE_URL:
                continue
            for part in extension.get("extension") or []:
                value = next((v for k, v in part.items() if k.startswith("value")), None)
                if isinstance(value, dict):
                    value = value.get("value")
                parts[part.get("url")] = value
        measures.append(
            {
                "measure": parts.get("measure"),
                "label": _masked((prediction.get("outcome") or {}).get("text"), mask),
                "value": parts.get("value"),
                "threshold": parts.get("threshold"),
                "comparator": parts.get("comparator"),
                "met": parts.get("met"),
                "rationale": _masked(prediction.get("rationale"), mask),
            }
        )
    costs: dict[str, Any] = {}
    for extension in assessment.get("extension") or []:
        if extension.get("url") != ILLNESS_POVERTY_COSTS_URL:
            continue
        for part in extension.get("extension") or []:
            value = next((v for k, v in part.items() if k.startswith("value")), None)
            if isinstance(value, dict) and "value" in value:
                value = value["value"]
            costs[part.get("url")] = value
    basis = [str(b.get("reference") or "") for b in assessment.get("basis") or []]
    return {"measures": measures, "costs": costs, "basis": basis}


def _diagnosis(condition: dict[str, Any]) -> dict[str, str]:
    for coding in (condition.get("code") or {}).get("coding") or []:
        if coding.get("system") == "http://hl7.org/fhir/sid/icd-10":
            return {"code": str(coding.get("code")), "display": str(coding.get("display") or "")}
    return {"code": "", "display": str((condition.get("code") or {}).get("text") or "")}


@router.get("/api/dashboard/households/{group_id}")
async def api_household(request: Request, group_id: str) -> JSONResponse:
    """A household's evidence: its cases, the rules that flagged it, their measures, the
    diagnoses and the costs."""
    viewer = await _api_viewer(request)
    body = await _evidence(request, viewer, group_id)
    if body is None:
        raise Problem(404, "Not found", f"No illness-poverty household {group_id}")
    return JSONResponse(body)


# -- the pages -----------------------------------------------------------------------------


def _bars(kind: str, counts: list[figures.Count], filters: Filters, english: bool) -> list[Bar]:
    return [
        Bar(
            (f"{c.parent} · " if kind == "village" and c.parent else "")
            + _label(kind, c.key, english),
            c.households,
            "/dashboard/households?" + urlencode(_drill(kind, c, filters).query()),
        )
        for c in counts
    ]


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard_page(request: Request) -> Response:
    me, _viewer = await _page_viewer(request)
    filters = _filters(request)
    found = await _figures(request, filters)
    english = language_of(request) == "en"
    _ = me.gettext
    charts = []
    for kind, heading in (
        ("township", _("Open cases by township")),
        ("overdue", _("Overdue cases by township")),
        ("village", _("Open cases by village")),
        ("rule", _("Open cases by rule")),
        ("disease_group", _("Open cases by disease group")),
        ("band", _("Out-of-pocket costs of the last twelve months")),
    ):
        bars = _bars(kind, found[kind][:15], filters, english)
        chart: dict[str, Any] = {
            "heading": heading,
            "svg": bars_svg(heading, bars),
            "bars": bars,
            "cases": None,
        }
        if kind == "overdue" and me.user.case_worker:
            # A case worker goes from a township's overdue cases to working them.
            chart["cases"] = [
                "/cases?" + urlencode({"overdue": "1", "township": c.key}) for c in found[kind][:15]
            ]
        charts.append(chart)
    months = _bars("month", found["month"], filters, english)
    return me.render(
        "dashboard/dashboard.html",
        filters=filters,
        total=found["households"],
        waiting=found["time_to_help"],
        charts=charts,
        trend=columns_svg(_("Open cases by month opened"), months),
        months=months,
        list_link="/dashboard/households?" + urlencode(filters.query()),
    )


def _row_view(
    row: figures.HouseholdRow, names: dict[str, list[figures.Member]], english: bool
) -> dict[str, Any]:
    return {
        "row": row,
        "stage": STAGES.get(row.stage, (row.stage, row.stage))[1 if english else 0],
        "opened": row.opened_at.astimezone(_CHINA).strftime("%Y-%m-%d"),
        "due": row.due_at.astimezone(_CHINA).strftime("%Y-%m-%d") if row.due_at else "",
        "oop": yuan(from_fen(row.out_of_pocket_fen)) if row.out_of_pocket_fen is not None else "",
        "overdue": row.due_at is not None and row.due_at < utcnow(),
        "rules": [RULE_NAMES.get(x, (x, x))[1 if english else 0] for x in row.rules],
        "members": names.get(row.group_id, []),
    }


@router.get("/dashboard/households", response_class=HTMLResponse)
async def households_page(request: Request) -> Response:
    me, viewer = await _page_viewer(request)
    filters = _filters(request)
    limit, offset = _paging(request)
    total, rows, names = await _rows(request, viewer, filters, limit=limit, offset=offset)
    english = language_of(request) == "en"
    _ = me.gettext
    query = filters.query()
    return me.render(
        "dashboard/households.html",
        filters=filters,
        shown=[
            (key, _("Overdue") if key == "overdue" else _label(key, value, english))
            for key, value in query.items()
        ],
        total=total,
        rows=[_row_view(r, names, english) for r in rows],
        case_worker=viewer.case_worker,
        csv_link="/dashboard/households.csv?" + urlencode(query),
        xlsx_link="/dashboard/households.xlsx?" + urlencode(query),
        next_link=(
            "/dashboard/households?" + urlencode({**query, "offset": offset + limit})
            if offset + limit < total
            else None
        ),
    )


@router.get("/dashboard/households.{fmt}")
async def export_page(request: Request, fmt: str) -> Response:
    _me, viewer = await _page_viewer(request)
    return await _export(request, viewer, fmt)


@router.get("/dashboard/households/{group_id}", response_class=HTMLResponse)
async def household_page(request: Request, group_id: str) -> Response:
    me, viewer = await _page_viewer(request)
    body = await _evidence(request, viewer, group_id)
    _ = me.gettext
    if body is None:
        raise me.not_found(
            _("Not found"), _("There is no such household under follow-up."), "/dashboard"
        )
    english = language_of(request) == "en"
    for flag in body["flags"]:
        flag["rule_name"] = RULE_NAMES.get(flag["rule"] or "", ("", ""))[1 if english else 0]
    for item in body["cases"]:
        item["stage_name"] = STAGES.get(item["stage"], (item["stage"],) * 2)[1 if english else 0]
    return me.render(
        "dashboard/household.html",
        household=body,
        diseases=[disease_title(g)[1 if english else 0] for g in body["disease_groups"]],
        case_worker=viewer.case_worker,
        money=lambda v: yuan(v) if v is not None else "",
    )


@router.get("/api/dashboard/{figure}")
async def api_figure(request: Request, figure: str) -> JSONResponse:
    """One figure: township, overdue (by township), village, rule, disease_group, month, band
    or time_to_help."""
    await _api_viewer(request)
    filters = _filters(request)
    reader = {
        "township": figures.by_township,
        "overdue": figures.overdue_by_township,
        "village": figures.by_village,
        "rule": figures.by_rule,
        "disease_group": figures.by_disease_group,
        "month": figures.by_month,
        "band": figures.by_band,
    }.get(figure)
    async with _database(request).transaction(write=False) as session:
        if figure == "time_to_help":
            return JSONResponse(asdict(await figures.time_to_help(session, filters)))
        if reader is None:
            raise Problem(
                404,
                "No such figure",
                "figure: township, overdue, village, rule, disease_group, month, band, "
                "time_to_help or households",
                field="figure",
            )
        counts = await reader(session, filters)
    return JSONResponse({"filters": filters.query(), figure: _json_counts(figure, counts, filters)})
