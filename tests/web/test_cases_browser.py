"""A township case worker in a real headless Chromium: from the menu to the list of cases,
into a demo household's case, and its next step taken with the page's form; the case's
screenshot goes to ``test-artifacts/screenshots``."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.web.conftest import WebApp, log_in, screenshot


def test_a_case_worker_verifies_a_case_from_the_list(browser_page: Page, web: WebApp) -> None:
    page = browser_page
    log_in(page, "case-worker")
    page.get_by_role("link", name="因病致贫返贫帮扶案例").click()
    expect(page.locator("main h1")).to_have_text("因病致贫返贫帮扶案例")
    page.select_option("#filter-township", "闽宁镇")
    page.get_by_role("button", name="查看").click()
    expect(page).to_have_url(re.compile(r".*/cases\?.*township="))
    waiting = page.locator("tr.case", has_text="已识别").first
    number = waiting.locator("a.case-link").inner_text()
    waiting.locator("a.case-link").click()

    expect(page.locator("main h1")).to_contain_text(number)
    expect(page.locator("#stage")).to_contain_text("已识别")
    expect(page.locator("#evidence")).to_have_attribute(
        "href", re.compile(r"^/dashboard/households/")
    )
    page.select_option("#stage-choice", "verified")
    page.get_by_label("备注（入户核实情况、所做工作）").fill("入户核实：家中两人患慢性病，情况属实")
    page.get_by_role("button", name="保存").click()

    expect(page.locator("#step-saved")).to_have_text("已保存。")
    expect(page.locator("#stage")).to_contain_text("已入户核实")
    expect(page.locator("#steps")).to_contain_text("入户核实：家中两人患慢性病，情况属实")
    expect(page.locator("#steps")).to_contain_text("卫健委帮扶专干")
    screenshot(page, web, "case")

    page.locator("#evidence").click()
    expect(page.get_by_role("heading", name=re.compile("标记依据")).first).to_be_visible()
