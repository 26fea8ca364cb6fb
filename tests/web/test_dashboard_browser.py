"""The commission's dashboard in a real headless Chromium: an analyst opens it from the menu,
drills down from a township's bar to its households and from one to its evidence, and exports
the list; the dashboard's screenshot goes to ``test-artifacts/screenshots``."""

from __future__ import annotations

import io
import re

from openpyxl import load_workbook
from playwright.sync_api import Page, expect

from tests.web.conftest import WebApp, log_in, screenshot


def test_an_analyst_drills_down_to_a_household_and_exports_the_list(
    browser_page: Page, web: WebApp
) -> None:
    page = browser_page
    log_in(page, "analyst")
    page.get_by_role("link", name="因病致贫返贫统计看板").click()
    expect(page.locator("main h1")).to_have_text("因病致贫返贫统计看板")
    township = page.locator("section", has=page.get_by_role("heading", name="在跟进案例（按乡镇）"))
    expect(township.locator("svg.bars rect.bar").first).to_be_visible()
    screenshot(page, web, "dashboard")

    township.locator("table a").first.click()
    expect(page.locator("main h1")).to_have_text("帮扶跟进户名单")
    expect(page).to_have_url(re.compile(r".*/dashboard/households\?township="))
    rows = page.locator("main table tbody tr")
    listed = rows.count()
    assert listed >= 1
    expect(page.get_by_role("columnheader", name="户主姓名")).to_have_count(0)

    number = page.locator("a.household").first.inner_text()
    page.locator("a.household").first.click()
    expect(page.locator("main h1")).to_contain_text(number)
    expect(page.get_by_role("heading", name=re.compile("标记依据")).first).to_be_visible()
    expect(page.get_by_role("columnheader", name="指标").first).to_be_visible()
    expect(page.get_by_role("heading", name="家庭成员")).to_have_count(0)
    screenshot(page, web, "dashboard-household")
    page.go_back()

    with page.expect_download() as csv_download:
        page.locator("#export-csv").click()
    text = open(csv_download.value.path(), encoding="utf-8-sig").read()
    lines = text.splitlines()
    assert lines[0].startswith("户编号,乡镇,村,帮扶阶段")
    assert "身份证号" not in lines[0]
    assert len(lines) == listed + 1
    assert any(line.startswith(number + ",") for line in lines[1:])

    with page.expect_download() as xlsx_download:
        page.locator("#export-xlsx").click()
    assert xlsx_download.value.suggested_filename.endswith(".xlsx")
    with open(xlsx_download.value.path(), "rb") as source:
        sheet = load_workbook(io.BytesIO(source.read()), read_only=True).active
    assert sheet is not None
    cells = list(sheet.iter_rows(values_only=True))
    assert cells[0][0] == "户编号" and len(cells) == listed + 1
