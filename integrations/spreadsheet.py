"""Lists as files another office opens: CSV and XLSX with a header row.

CSV is written in UTF-8 with a byte-order mark by default (Excel on a Chinese Windows then
reads the Chinese correctly) or GB18030, the encoding many government systems still export
in; XLSX with openpyxl. A text cell that begins like a formula (``=``, ``+``, ``-``, ``@``)
is written with a leading apostrophe, so that opening an export never runs what someone typed
into a note.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from openpyxl import Workbook

Format = Literal["csv", "xlsx"]
FORMATS: tuple[Format, ...] = ("csv", "xlsx")
MEDIA_TYPES: dict[Format, str] = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _safe(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    return str(_safe(value))


def _xlsx_cell(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, Decimal):
        return float(value)
    return _safe(value)


def table_bytes(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    fmt: Format,
    *,
    sheet: str = "Sheet1",
    encoding: str = "utf-8-sig",
) -> bytes:
    """The file's bytes: ``headers`` then one line per row."""
    if fmt == "csv":
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\r\n")
        writer.writerow(headers)
        for row in rows:
            writer.writerow([_csv_cell(v) for v in row])
        return text.getvalue().encode(encoding)
    book = Workbook(write_only=True)
    page = book.create_sheet(sheet[:31])
    page.append(list(headers))
    for row in rows:
        page.append([_xlsx_cell(v) for v in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def format_of(path: Path) -> Format:
    """The format a file name asks for; ValueError for anything but .csv and .xlsx."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"{path.name}: the file must end in .csv or .xlsx")
    return suffix  # type: ignore[return-value]
