"""The pages' forms over plain HTTP: what they refuse and why (beside the field, nothing
written), what they write as FHIR, and that each admin change is on the audit trail."""

from __future__ import annotations

import datetime as dt
import random
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from health.core.naming import HOUSEHOLD_NUMBER_SYSTEM, HOUSEHOLD_RELATIONSHIP_URL
from records.validation.resident_id import RESIDENT_ID_SYSTEM, make_resident_id
from records.vitals import VITALS, read_vital
from tests.web.conftest import Session, WebApp


def form_of(html: str) -> dict[str, str]:
    """The hidden fields of the page's first form that carries a visit key or a CSRF token."""
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html))


@pytest.fixture
def doctor(web: WebApp) -> Iterator[Session]:
    session = Session(web, "village-doctor")
    yield session
    session.close()


@pytest.fixture
def admin(web: WebApp) -> Iterator[Session]:
    session = Session(web, "admin")
    yield session
    session.close()


def register(doctor: Session, **fields: str) -> httpx.Response:
    page = doctor.http.get("/patients/new").text
    data = {"csrf_token": form_of(page)["csrf_token"], "clinic": "", **fields}
    clinic = re.search(r'<select id="clinic" name="clinic">\s*<option value="([^"]+)"', page)
    assert clinic
    data.setdefault("clinic", clinic.group(1))
    if not data["clinic"]:
        data["clinic"] = clinic.group(1)
    return doctor.http.post("/patients/new", data=data)


def new_patient(doctor: Session, rng: random.Random, **extra: str) -> tuple[str, str]:
    name = "冶" + rng.choice("福成海龙德俊") + rng.choice("甲乙丙丁戊己庚辛")
    born = dt.date(1960, 1, 1) + dt.timedelta(days=rng.randrange(15000))
    number = make_resident_id("640121", born, rng.randrange(1000), "female")
    response = register(doctor, name=name, resident_id=number, **extra)
    assert response.status_code == 303, response.text[-2000:]
    return response.headers["location"].split("/patients/")[1].split("?")[0], number


class TestVitals:
    def test_units_are_converted_to_the_stored_unit(self) -> None:
        assert read_vital(VITALS["weight"], "130", "jin").value == Decimal("65.0")
        assert read_vital(VITALS["temperature"], "98.6", "degF").value == Decimal("37.0")
        assert read_vital(VITALS["glucose"], "126", "mg/dL").value == Decimal("7.0")
        assert read_vital(VITALS["height"], "1.62", "m").value == Decimal("162.0")

    def test_unusual_warns_and_impossible_refuses(self) -> None:
        assert read_vital(VITALS["systolic"], "245", "mmHg").problem == "implausible"
        assert read_vital(VITALS["systolic"], "900", "mmHg").problem == "impossible"
        assert read_vital(VITALS["temperature"], "37.2", "Cel").problem == ""
        # 37 typed with the unit left at ℉ is 2.8 ℃: impossible, caught before it is saved.
        assert read_vital(VITALS["temperature"], "37", "degF").problem == "impossible"
        assert read_vital(VITALS["glucose"], "seven", "mmol/L").problem == "number"


class TestRegistration:
    def test_sex_and_birth_date_are_cross_checked_with_the_id(self, doctor: Session) -> None:
        number = make_resident_id("640121", dt.date(1980, 5, 17), 123, "female")
        response = register(
            doctor, name="马测试", resident_id=number, gender="male", birth_date="1980-05-18"
        )
        assert response.status_code == 400
        assert "身份证号显示此人为女性" in response.text
        assert "身份证号显示出生日期为1980-05-17" in response.text

    def test_a_form_without_its_token_is_refused(self, doctor: Session, web: WebApp) -> None:
        number = make_resident_id("640121", dt.date(1981, 5, 17), 125, "female")
        response = doctor.http.post(
            "/patients/new", data={"name": "马无令", "resident_id": number, "clinic": web.village}
        )
        assert response.status_code == 403
        assert (
            web.system.get(
                "/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{number}"}
            ).json()["total"]
            == 0
        )

    def test_a_person_registered_at_another_clinic_is_not_registered_twice(
        self, doctor: Session, web: WebApp
    ) -> None:
        """The doctor cannot see the other clinic's record, so the page's own look for it
        finds nothing; the record service refuses the second record all the same."""
        clinics = web.system.get("/Organization", params={"_count": "100"}).json()["entry"]
        elsewhere = next(
            e["resource"]["id"]
            for e in clinics
            if e["resource"]["id"] != web.village and "卫生室" in e["resource"].get("name", "")
        )
        rng = random.Random(uuid.uuid4().int)
        born = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(15000))
        number = make_resident_id("640121", born, rng.randrange(1000), "female")
        there = web.system.post(
            "/Patient",
            json={
                "resourceType": "Patient",
                "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": number}],
                "name": [{"text": "冶秀梅", "family": "冶", "given": ["秀梅"]}],
                "gender": "female",
                "birthDate": born.isoformat(),
                "managingOrganization": {"reference": f"Organization/{elsewhere}"},
            },
        )
        assert there.status_code == 201, there.text
        response = register(doctor, name="冶秀梅", resident_id=number)
        assert response.status_code == 409
        assert "此人已在您不负责的卫生室登记" in response.text
        found = web.system.get("/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{number}"})
        assert [e["resource"]["id"] for e in found.json()["entry"]] == [there.json()["id"]]

    def test_insured_patients_get_their_coverage(self, doctor: Session, web: WebApp) -> None:
        patient, number = new_patient(doctor, random.Random(uuid.uuid4().int), insured="yes")
        coverage = web.system.get("/Coverage", params={"beneficiary": f"Patient/{patient}"}).json()
        assert coverage["entry"][0]["resource"]["subscriberId"] == number


class TestHousehold:
    def test_start_join_change_and_leave(self, doctor: Session, web: WebApp) -> None:
        rng = random.Random(uuid.uuid4().int)
        number = f"640121105201{rng.randrange(900000, 999999)}"
        head, _ = new_patient(
            doctor, rng, household_number=number, relationship="head", registry_status="monitored"
        )
        spouse, _ = new_patient(doctor, rng)
        page = doctor.http.get(f"/patients/{spouse}/household").text
        joined = doctor.http.post(
            f"/patients/{spouse}/household",
            data={
                "csrf_token": form_of(page)["csrf_token"],
                "action": "join",
                "household_number": number,
                "relationship": "spouse",
            },
        )
        assert joined.status_code == 303
        chart = doctor.http.get(f"/patients/{head}").text
        assert number in chart and "防返贫监测户" in chart and "配偶" in chart

        group = web.system.get(
            "/Group", params={"identifier": f"{HOUSEHOLD_NUMBER_SYSTEM}|{number}"}
        ).json()["entry"][0]["resource"]
        relationships = {
            m["entity"]["reference"]: next(
                e["valueCodeableConcept"]["coding"][0]["code"]
                for e in m["extension"]
                if e["url"] == HOUSEHOLD_RELATIONSHIP_URL
            )
            for m in group["member"]
        }
        assert relationships == {f"Patient/{head}": "ONESELF", f"Patient/{spouse}": "SPS"}
        assert group["quantity"] == 2

        # A second head is refused beside the field.
        page = doctor.http.get(f"/patients/{spouse}/household").text
        refused = doctor.http.post(
            f"/patients/{spouse}/household",
            data={
                "csrf_token": form_of(page)["csrf_token"],
                "action": "relationship",
                "relationship": "head",
            },
        )
        assert refused.status_code == 400 and "此家庭户已有户主" in refused.text

        left = doctor.http.post(
            f"/patients/{spouse}/household",
            data={"csrf_token": form_of(page)["csrf_token"], "action": "leave"},
        )
        assert left.status_code == 303
        assert "未加入家庭户" in doctor.http.get(f"/patients/{spouse}").text
        group = web.system.get(f"/Group/{group['id']}").json()
        assert group["quantity"] == 1


class TestVisit:
    def visit_form(self, doctor: Session, patient: str) -> dict[str, str]:
        page = doctor.http.get(f"/patients/{patient}/visit").text
        return {**form_of(page), "complaint": "咳嗽两天"}

    def encounters(self, web: WebApp, patient: str) -> int:
        return int(web.system.get("/Encounter", params={"patient": patient}).json()["total"])

    def test_impossible_values_are_refused_and_nothing_is_written(
        self, doctor: Session, web: WebApp
    ) -> None:
        patient, _ = new_patient(doctor, random.Random(uuid.uuid4().int))
        data = {
            **self.visit_form(doctor, patient),
            "systolic": "900",
            "diastolic": "80",
            "diagnosis_query": "Z99.99",
            "fee_drugs": "12.345",
            "paid_basic": "5",
        }
        response = doctor.http.post(f"/patients/{patient}/visit", data=data)
        assert response.status_code == 400
        assert re.search(r'id="systolic-error"[^>]*>900 mmHg 不可能正确', response.text)
        assert "请从输入时出现的列表中选择诊断" in response.text
        assert 'id="fee_drugs-error"' in response.text
        assert self.encounters(web, patient) == 0

    def test_a_form_sent_twice_records_one_visit(self, doctor: Session, web: WebApp) -> None:
        patient, _ = new_patient(doctor, random.Random(uuid.uuid4().int))
        data = {**self.visit_form(doctor, patient), "diagnosis": "J06.9", "heart_rate": "88"}
        first = doctor.http.post(f"/patients/{patient}/visit", data=data)
        second = doctor.http.post(f"/patients/{patient}/visit", data=data)
        assert first.status_code == second.status_code == 303
        assert self.encounters(web, patient) == 1
        condition = web.system.get("/Condition", params={"patient": patient}).json()
        assert condition["total"] == 1

    def test_a_known_condition_is_followed_up_not_diagnosed_again(
        self, doctor: Session, web: WebApp
    ) -> None:
        patient, _ = new_patient(doctor, random.Random(uuid.uuid4().int))
        for _ in range(2):
            data = {**self.visit_form(doctor, patient), "diagnosis": "I10"}
            assert doctor.http.post(f"/patients/{patient}/visit", data=data).status_code == 303
        assert web.system.get("/Condition", params={"patient": patient}).json()["total"] == 1
        encounters = web.system.get("/Encounter", params={"patient": patient}).json()["entry"]
        diagnosed = {e["resource"]["diagnosis"][0]["condition"]["reference"] for e in encounters}
        assert len(diagnosed) == 1


class TestRoles:
    @pytest.mark.parametrize(
        ("username", "path"),
        [("analyst", "/patients/new"), ("admin", "/patients"), ("specialist", "/admin/users")],
    )
    def test_pages_of_other_roles_are_refused(self, web: WebApp, username: str, path: str) -> None:
        session = Session(web, username)
        response = session.http.get(path)
        session.close()
        assert response.status_code == 403 and "此页面供其他角色使用" in response.text

    def test_pages_are_compressed(self, doctor: Session) -> None:
        response = doctor.http.get("/patients/new", headers={"Accept-Encoding": "gzip"})
        assert response.headers["content-encoding"] == "gzip"
        assert response.num_bytes_downloaded < len(response.content) / 2


def listed_state(web: WebApp, username: str) -> str:
    """The account's state as ``health user list`` shows it."""
    for line in web.server.cli("user", "list").splitlines():
        if line.split()[0] == username:
            return line.split()[4]
    raise KeyError(username)


def login_status(web: WebApp, username: str, password: str) -> int:
    with httpx.Client(base_url=web.url, timeout=60) as http:
        token = form_of(http.get("/login").text)["csrf_token"]
        data = {"username": username, "password": password, "csrf_token": token}
        return http.post("/login", data=data).status_code


def audit_events(web: WebApp, subtype: str, username: str) -> list[dict[str, Any]]:
    client = web.as_user("admin")
    found = client.get("/AuditEvent", params={"subtype": subtype, "_count": "200"}).json()
    client.close()
    return [
        e["resource"]
        for e in found.get("entry", [])
        if e["resource"]["entity"][0]["what"]["identifier"]["value"] == username
    ]


class TestAdmin:
    def test_disable_enable_and_reset_a_password_each_audited(
        self, admin: Session, web: WebApp
    ) -> None:
        username = f"nurse-{uuid.uuid4().hex[:6]}"
        web.server.cli(
            "user", "add", username, "--role", "village_doctor", "--org", web.village,
            "--password-stdin", input="first-password-1\n",
        )  # fmt: skip
        victim = Session(web, username, "first-password-1")
        page = admin.http.get(f"/admin/users/{username}").text
        token = form_of(page)["csrf_token"]
        post = lambda **data: admin.http.post(  # noqa: E731
            f"/admin/users/{username}", data={"csrf_token": token, **data}
        )
        assert post(action="disable").status_code == 303
        assert victim.http.get("/").status_code == 303  # her session ended
        assert post(action="enable").status_code == 303
        weak = post(action="password", password="12345")
        assert weak.status_code == 400 and "密码至少需要10个字符" in weak.text
        assert post(action="password", password="second-password-2").status_code == 303
        assert victim.http.get("/").headers["location"].startswith("/login")  # ended again
        reset = Session(web, username, "second-password-2")
        assert reset.http.get("/").headers["location"] == "/account/password?next=%2F"
        reset.close()
        for change in ("user-disable", "user-enable", "user-password"):
            (event,) = audit_events(web, change, username)
            assert event["agent"][0]["altId"] == "admin"
            assert "second-password" not in str(event)
        victim.close()

    def test_a_password_set_by_an_administrator_must_be_changed_before_anything_else(
        self, web: WebApp
    ) -> None:
        username = f"nurse-{uuid.uuid4().hex[:6]}"
        web.server.cli(
            "user", "add", username, "--role", "village_doctor", "--org", web.village,
            "--temporary", "--password-stdin", input="given-password-1\n",
        )  # fmt: skip
        assert listed_state(web, username) == "temporary"
        earlier = Session(web, username, "given-password-1")  # another device, before
        person = Session(web, username, "given-password-1")
        for path in ("/", "/patients", "/consult"):
            refused = person.http.get(path)
            assert refused.status_code == 303
            assert refused.headers["location"] == f"/account/password?next={quote(path, safe='')}"
        api = person.http.get("/fhir/Patient", params={"_count": "1"})
        assert api.status_code == 403 and "/account/password" in api.text

        page = person.http.get("/account/password", params={"next": "/patients"})
        assert page.status_code == 200 and "您的密码由管理员设置" in page.text
        hidden = form_of(page.text)
        assert hidden["next"] == "/patients"

        def change(current: str, new: str, repeat: str, **extra: str) -> httpx.Response:
            fields = {**hidden, "current_password": current, "new_password": new}
            return person.http.post(
                "/account/password", data={**fields, "repeat_password": repeat, **extra}
            )

        wrong = change("not-the-password", "chosen-password-2", "chosen-password-2")
        assert wrong.status_code == 401 and "当前密码不正确" in wrong.text
        differ = change("given-password-1", "chosen-password-2", "chosen-password-3")
        assert differ.status_code == 400 and "两次输入的新密码不一致" in differ.text
        same = change("given-password-1", "given-password-1", "given-password-1")
        assert same.status_code == 400 and "新密码不能与当前密码相同" in same.text
        weak = change("given-password-1", "1234567890", "1234567890")
        assert weak.status_code == 400 and "密码不能全是数字" in weak.text
        forged = change(
            "given-password-1", "chosen-password-2", "chosen-password-2", csrf_token="x"
        )
        assert forged.status_code == 403
        assert person.http.get("/").status_code == 303  # nothing above changed it

        done = change("given-password-1", "chosen-password-2", "chosen-password-2")
        assert done.status_code == 303 and done.headers["location"] == "/patients"
        assert person.http.get("/patients").status_code == 200  # this session goes on
        assert earlier.http.get("/").headers["location"].startswith("/login")  # that one ended
        assert listed_state(web, username) == "active"
        assert login_status(web, username, "given-password-1") == 401
        assert login_status(web, username, "chosen-password-2") == 303
        (event,) = audit_events(web, "user-password", username)
        assert event["agent"][0]["altId"] == username
        assert event["entity"][0]["description"] == "password changed by the user"
        assert "chosen-password" not in str(event) and "given-password" not in str(event)
        person.close()
        earlier.close()

    def test_a_new_village_clinic_is_in_the_directory_under_its_township(
        self, admin: Session, web: WebApp
    ) -> None:
        village = web.system.get(f"/Organization/{web.village}").json()
        township = village["partOf"]["reference"].split("/")[1]
        code = f"640121105{random.randrange(300, 999)}"
        page = admin.http.get("/admin/directory/new", params={"kind": "village-clinic"}).text
        response = admin.http.post(
            "/admin/directory/new",
            data={
                "csrf_token": form_of(page)["csrf_token"],
                "code": code,
                "name": f"闽宁镇新村{code[-3:]}卫生室",
                "kind": "village-clinic",
                "parent": township,
                "phone": "0951-1234567",
            },
        )
        assert response.status_code == 303
        found = web.system.get(
            "/Organization",
            params={"identifier": f"https://fhir.yinchuan-health.cn/sid/organization-code|{code}"},
        ).json()["entry"][0]["resource"]
        assert found["partOf"]["reference"] == f"Organization/{township}"
        assert f"闽宁镇新村{code[-3:]}卫生室" in admin.http.get("/admin/directory").text
        client = web.as_user("admin")
        written = client.get("/AuditEvent", params={"entity": f"Organization/{found['id']}"}).json()
        client.close()
        assert written["total"] >= 1

    def test_a_department_needs_a_hospital(self, admin: Session) -> None:
        page = admin.http.get("/admin/directory/new", params={"kind": "department"}).text
        response = admin.http.post(
            "/admin/directory/new",
            data={
                "csrf_token": form_of(page)["csrf_token"],
                "code": "640100H09-D01",
                "name": "无主科室",
                "kind": "department",
                "parent": "",
            },
        )
        assert response.status_code == 400 and "科室须隶属于一家医院" in response.text


#: Ids no record has: name-based UUIDs, which the store never makes (it makes random ones),
#: and the same in every process that collects the tests.
_ABSENT = uuid.uuid5(uuid.NAMESPACE_URL, "https://example.org/absent")


@pytest.mark.parametrize(
    ("who", "path", "says"),
    [
        ("village-doctor", f"/patients/{_ABSENT}", "没有"),
        ("village-doctor", f"/consult/{_ABSENT}", "会诊"),
        ("admin", f"/admin/directory/{_ABSENT}", "没有"),
        ("admin", "/admin/users/nobody-here", "没有"),
    ],
)
def test_what_is_not_there_is_a_404_page_in_chinese(
    web: WebApp, who: str, path: str, says: str
) -> None:
    session = Session(web, who)
    try:
        response = session.http.get(path)
    finally:
        session.close()
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert says in response.text
    assert 'lang="zh-CN"' in response.text
