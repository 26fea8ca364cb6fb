"""A village doctor's working day in a real headless Chromium: logging in as each role,
finding a patient by pinyin initials, registering one (stopped by a wrong check character and
by a duplicate), recording a visit and finding it in the chart and in the FHIR API, switching
language, and an administrator adding a user who then logs in. Screenshots of the main pages
go to ``test-artifacts/screenshots``."""

from __future__ import annotations

import datetime as dt
import random
import re
import uuid
from typing import Any

from playwright.sync_api import Page, expect

from records.pinyin import name_keys
from records.validation.resident_id import RESIDENT_ID_SYSTEM, make_resident_id
from tests.web.conftest import WebApp, log_in, screenshot

HOME_HEADINGS = {
    "village-doctor": "乡村医生",
    "township-doctor": "乡镇卫生院医生",
    "specialist": "专科医生",
    "analyst": "卫健委分析员",
    "admin": "系统管理员",
}
_GIVEN = "国军建明志伟强平文斌学福成海龙德俊宏忠义刚华祥宝山林涛鹏飞勇东"


def new_person(rng: random.Random) -> tuple[str, str, dt.date]:
    """A name nobody in the demo has, a valid resident ID, and its birth date."""
    name = "纳" + "".join(rng.choice(_GIVEN) for _ in range(2)) + rng.choice("甲乙丙丁")
    born = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(18000))
    return name, make_resident_id("640121", born, rng.randrange(1000), "male"), born


def wrong_check_character(number: str) -> str:
    last = "0123456789X"
    return number[:17] + last[(last.index(number[17]) + 1) % 11]


def test_each_role_logs_in_to_its_own_home_page(browser_page: Page, web: WebApp) -> None:
    page = browser_page
    for username, role_name in HOME_HEADINGS.items():
        log_in(page, username)
        expect(page.locator("main h1")).to_contain_text("您好")
        expect(page.locator("main")).to_contain_text(role_name)
        if username in ("village-doctor", "township-doctor"):
            expect(page.get_by_role("heading", name="本机构今日就诊")).to_be_visible()
        if username == "admin":
            expect(page.get_by_role("link", name="机构目录").first).to_be_visible()
        screenshot(page, web, f"home-{username}")
        page.get_by_role("button", name="退出登录").click()
        expect(page).to_have_url(re.compile(r".*/login$"))


def test_find_a_patient_by_pinyin_initials(browser_page: Page, web: WebApp) -> None:
    patient = web.village_patients()[0]
    name = patient["name"][0]["text"]
    initials = name_keys(name, patient["name"][0].get("family"))[1]
    page = browser_page
    log_in(page, "village-doctor")
    page.get_by_label("姓名、拼音或首字母、身份证号或电话").type(initials, delay=60)
    result = page.locator(f'#patient-results a[href="/patients/{patient["id"]}"]')
    expect(result).to_contain_text(name)
    screenshot(page, web, "search-by-initials")
    result.click()
    expect(page.locator("h1")).to_have_text(name)
    expect(page.locator("main")).to_contain_text("现患疾病")
    screenshot(page, web, "chart")
    fits = "document.documentElement.scrollWidth <= window.innerWidth"
    assert page.evaluate(fits)  # nothing sticks out sideways at 1024×768
    page.set_viewport_size({"width": 800, "height": 1280})  # a 10-inch tablet, upright
    assert page.evaluate(fits)
    screenshot(page, web, "chart-tablet")


def fill_registration(page: Page, name: str, resident_id: str) -> None:
    page.goto("/patients/new")
    page.get_by_label("姓名", exact=True).fill(name)
    page.get_by_label("居民身份证号").fill(resident_id)
    page.get_by_label("电话").fill("13912345678")


def test_register_a_patient_checked_for_wrong_ids_and_duplicates(
    browser_page: Page, web: WebApp
) -> None:
    rng = random.Random(uuid.uuid4().int)
    name, number, born = new_person(rng)
    page = browser_page
    log_in(page, "village-doctor")

    fill_registration(page, name, wrong_check_character(number))
    expect(page.locator(".field-error.live")).to_contain_text("校验码")  # said while typing
    page.get_by_role("button", name="登记", exact=True).click()
    expect(page.locator("#resident_id-error")).to_contain_text("校验码")
    screenshot(page, web, "register-wrong-check-character")
    assert (
        web.system.get(
            "/Patient",
            params={"identifier": f"{RESIDENT_ID_SYSTEM}|{wrong_check_character(number)}"},
        )
        .json()
        .get("total", 0)
        == 0
    )

    fill_registration(page, name, number)
    # The ID fills in the birth date and the sex.
    expect(page.get_by_label("出生日期")).to_have_value(born.isoformat())
    expect(page.get_by_label("性别")).to_have_value("male")
    page.get_by_role("button", name="登记", exact=True).click()
    expect(page.locator("h1")).to_have_text(name)
    expect(page.locator("main")).to_contain_text("患者已登记")
    patient_url = page.url.split("?")[0]

    fill_registration(page, name, number)
    page.get_by_role("button", name="登记", exact=True).click()
    expect(page.locator(".notice.bad")).to_contain_text("此身份证号已登记")
    existing = page.locator(".notice.bad a")
    expect(existing).to_contain_text(name)
    screenshot(page, web, "register-duplicate-id")

    # Another number, the same name and birth date: offered the record, then registered anyway.
    other = make_resident_id("640121", born, (int(number[14:17]) + 2) % 1000, "male")
    fill_registration(page, name, other)
    page.get_by_role("button", name="登记", exact=True).click()
    expect(page.locator(".notice.warn")).to_contain_text("已登记同名")
    page.get_by_label("这是另一个人：仍然登记").check()
    page.get_by_role("button", name="登记", exact=True).click()
    expect(page.locator("main")).to_contain_text("患者已登记")
    assert page.url.split("?")[0] != patient_url
    found = web.system.get("/Patient", params={"name": name}).json()
    assert found["total"] == 2


def test_record_a_visit_and_see_it_in_the_chart_and_the_api(
    browser_page: Page, web: WebApp
) -> None:
    rng = random.Random(uuid.uuid4().int)
    name, number, _born = new_person(rng)
    page = browser_page
    log_in(page, "village-doctor")
    fill_registration(page, name, number)
    page.get_by_role("button", name="登记", exact=True).click()
    expect(page.locator("h1")).to_have_text(name)
    patient_id = page.url.split("/patients/")[1].split("?")[0]

    page.get_by_role("link", name="记录今日就诊").click()
    complaint = f"头晕三天 {uuid.uuid4().hex[:6]}"
    page.get_by_label("就诊原因").fill(complaint)
    page.get_by_label("收缩压").fill("152")
    page.get_by_label("舒张压").fill("96")
    page.get_by_label("体重").fill("130")
    page.locator("select[name=weight_unit]").select_option("jin")  # 130 斤 = 65 kg
    page.get_by_label("体温").fill("41.6")
    expect(page.locator("[data-warning-for=temperature]")).to_be_visible()
    picker = page.locator("#diagnosis_query")
    picker.type("gxy", delay=80)
    option = page.locator("#icd10-options [role=option][data-code=I10]")
    expect(option).to_contain_text("特发性（原发性）高血压")
    option.click()
    expect(page.locator("[data-chosen]")).to_contain_text("I10")
    page.locator("[name=medicine_0]").fill("苯磺酸氨氯地平片 5mg")
    page.locator("[name=dosage_0]").fill("口服，每日1次，每次1片")
    page.locator("[name=days_0]").fill("30")
    page.get_by_label("诊查费").fill("10")
    page.get_by_label("药品费").fill("45.50")
    page.get_by_label("城乡居民基本医疗保险").fill("30")
    expect(page.locator("[data-out-of-pocket]")).to_have_text("¥25.50")
    screenshot(page, web, "visit-form")
    page.get_by_role("button", name="保存就诊记录").click()
    # 41.6 ℃ is unusual: the visit waits for the doctor to confirm it.
    expect(page.locator("main")).to_contain_text("部分数值不常见")
    page.get_by_label("我已核对这些不常见的数值：保存").check()
    page.get_by_role("button", name="保存就诊记录").click()
    expect(page.locator("main")).to_contain_text("就诊记录已保存")
    visit = page.locator("details.encounter").first
    expect(visit).to_contain_text("特发性（原发性）高血压")
    visit.locator("summary").click()
    expect(visit).to_contain_text(complaint)
    expect(visit).to_contain_text("152/96")
    expect(visit).to_contain_text("65.0 kg")
    expect(visit).to_contain_text("¥25.50")
    expect(page.locator("#conditions-h + ul")).to_contain_text("I10")
    screenshot(page, web, "chart-after-visit")

    # The same visit through the FHIR API, as one transaction's shapes.
    doctor = web.as_user("village-doctor")
    bundle = doctor.get(
        "/Encounter",
        params={
            "patient": patient_id,
            "_revinclude": "Observation:encounter",
            "_count": "10",
        },
    ).json()
    resources: list[dict[str, Any]] = [e["resource"] for e in bundle["entry"]]
    encounter = next(r for r in resources if r["resourceType"] == "Encounter")
    assert encounter["reasonCode"][0]["text"] == complaint
    by_code = {
        o["code"]["coding"][0]["code"]: o for o in resources if o["resourceType"] == "Observation"
    }
    assert by_code["29463-7"]["valueQuantity"] == {
        "value": 65.0,
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    }
    assert by_code["8310-5"]["valueQuantity"]["code"] == "Cel"
    components = {c["code"]["coding"][0]["code"]: c for c in by_code["85354-9"]["component"]}
    assert components["8480-6"]["valueQuantity"]["value"] == 152
    assert components["8462-4"]["valueQuantity"]["code"] == "mm[Hg]"
    condition = doctor.get(
        f"/Condition?patient={patient_id}&code=http://hl7.org/fhir/sid/icd-10|I10"
    ).json()["entry"][0]["resource"]
    assert condition["code"]["coding"][0]["display"] == "特发性（原发性）高血压"
    medicine = doctor.get(f"/MedicationRequest?patient={patient_id}").json()["entry"][0]
    assert medicine["resource"]["medicationCodeableConcept"]["text"] == "苯磺酸氨氯地平片 5mg"
    eob = doctor.get(f"/ExplanationOfBenefit?patient={patient_id}").json()["entry"][0]["resource"]
    totals = {t["category"]["coding"][0]["code"]: t["amount"]["value"] for t in eob["total"]}
    assert totals == {
        "submitted": 55.5,
        "benefit": 30.0,
        "basic-medical-insurance": 30.0,
        "serious-illness-insurance": 0.0,
        "medical-assistance": 0.0,
        "out-of-pocket": 25.5,
    }
    assert eob["item"][0]["encounter"][0]["reference"] == f"Encounter/{encounter['id']}"
    doctor.close()


def test_switch_language(browser_page: Page, web: WebApp) -> None:
    page = browser_page
    log_in(page, "township-doctor")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    page.get_by_role("link", name="English").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    expect(page.get_by_role("heading", name="Find a patient")).to_be_visible()
    screenshot(page, web, "home-english")
    page.get_by_role("link", name="中文").click()
    expect(page.get_by_role("button", name="退出登录")).to_be_visible()


def test_an_admin_adds_a_user_who_can_then_log_in(
    browser_page: Page, web: WebApp, chromium: Any
) -> None:
    username = f"doctor-{uuid.uuid4().hex[:8]}"
    password = "new-doctor-password-1"
    page = browser_page
    log_in(page, "admin")
    page.goto("/admin/users")
    page.get_by_role("link", name="添加用户").click()
    page.get_by_label("用户名").fill(username)
    page.get_by_label("姓名").fill("马新医生")
    page.get_by_label("角色").select_option("village_doctor")
    page.get_by_label("工作单位").select_option(web.village)
    page.get_by_label("密码").fill(password)
    screenshot(page, web, "admin-new-user")
    page.get_by_role("button", name="创建用户").click()
    expect(page.locator("main")).to_contain_text("用户已创建")
    page.goto("/admin/users")
    expect(page.get_by_role("link", name=username)).to_be_visible()
    screenshot(page, web, "admin-users")

    other = chromium.new_context(viewport={"width": 1024, "height": 768}, base_url=web.url)
    try:
        newcomer = other.new_page()
        newcomer.goto("/login")
        newcomer.fill("#username", username)
        newcomer.fill("#password", password)
        newcomer.click("button[type=submit].primary")
        # The administrator's password is not hers: she chooses her own before anything else.
        newcomer.wait_for_url(re.compile(r".*/account/password\?next=%2F$"))
        expect(newcomer.locator("main")).to_contain_text("您的密码由管理员设置")
        newcomer.get_by_label("当前密码").fill(password)
        newcomer.get_by_label("新密码", exact=True).fill("her-own-password-2")
        newcomer.get_by_label("再次输入新密码").fill("her-own-password-2")
        screenshot(newcomer, web, "change-password")
        newcomer.get_by_role("button", name="修改密码").click()
        newcomer.wait_for_url(re.compile(r".*/$"))
        expect(newcomer.locator("main")).to_contain_text("马新医生")
        expect(newcomer.locator("main")).to_contain_text("原隆村卫生室")
    finally:
        other.close()

    admin = web.as_user("admin")
    events = admin.get("/AuditEvent", params={"subtype": "user-create", "_count": "50"}).json()
    described = [
        e["resource"]["entity"][0]["what"]["identifier"]["value"] for e in events.get("entry", [])
    ]
    assert username in described
    admin.close()
