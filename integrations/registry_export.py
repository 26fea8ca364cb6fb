"""The flag changes as a file for a poverty household registry that takes files.

Some registries (建档立卡 / 防返贫监测 systems) take no HTTP feed, only files a township
uploads. ``health registry export`` writes every illness-poverty flag change — each raised,
updated or deactivated flag, the same changes the registry feed delivers — as CSV or XLSX
with the registry's Chinese headers, in the order they were committed. ``变更序号`` is the
cursor: the next export starts after the last number a registry has received
(``--after``), so nothing is sent twice and nothing is skipped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from pathlib import Path

from integrations.spreadsheet import format_of, table_bytes

#: The columns, in the registry's words.
HEADERS = (
    "变更序号",
    "变更时间",
    "户编号",
    "户主姓名",
    "乡镇",
    "行政村",
    "变更类型",
    "预警类型",
    "触发规则",
    "规则版本",
    "标记编号",
)
SHEET = "因病致贫返贫预警变更"
CHINA_TIME = dt.timezone(dt.timedelta(hours=8))


@dataclass(frozen=True, slots=True)
class RegistryFlagChange:
    """One line of the file, in the order of :data:`HEADERS`."""

    seq: int
    changed_at: str  # 2026-10-31 14:05:00, China Standard Time
    household_number: str
    head_name: str
    township: str
    village: str
    change_type: str  # 新增预警 / 证据更新 / 解除预警
    warning_type: str  # 因病致贫风险, 高额医疗费用预警...
    rule: str
    rules_version: str
    flag: str  # Flag/<id>


def china_time(moment: dt.datetime) -> str:
    at = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return at.astimezone(CHINA_TIME).strftime("%Y-%m-%d %H:%M:%S")


def export_bytes(
    changes: Iterable[RegistryFlagChange], fmt: str, *, encoding: str = "utf-8-sig"
) -> bytes:
    kind = format_of(Path(f"x.{fmt}"))
    return table_bytes(HEADERS, (astuple(c) for c in changes), kind, sheet=SHEET, encoding=encoding)


def write_export(
    path: Path, changes: Iterable[RegistryFlagChange], *, encoding: str = "utf-8-sig"
) -> None:
    """Write the file; its name's suffix (.csv or .xlsx) chooses the format."""
    path.write_bytes(export_bytes(changes, format_of(path), encoding=encoding))
