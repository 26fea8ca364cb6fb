"""Township case workers working illness-poverty cases, on both databases: the list (their
own first, overdue ones marked and filterable), a step through the JSON API and through the
page's form — each step in the Task's history, an AuditEvent of the person and an
announcement on the change feed — wrong steps named, stale versions refused, and everybody
but case workers refused, through the pages, the API and ``/fhir`` alike.

The app runs on Redis here so that the test hears the change feed as any listener would. The
households are written into a township of the test's own; their cases are opened by the
recompute, as in production.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from redis import Redis

from health.core.bus import bus_namespace
from health.core.database import Database
from health.poverty.cases import NEXT_STAGES, Person, Step, advance, read_case
from records.feed import CHANGES_CHANNEL
from records.indexing import SearchIndexer
from tests.conftest import BACKENDS, fresh_database
from tests.poverty.factories import House, Town
from tests.services import AppServer, RedisServer
from tests.web.conftest import DEMO_PASSWORD, Session, WebApp, web_app

CHINA = dt.timezone(dt.timedelta(hours=8))
WORKER = "township-worker"  # a case worker with a Practitioner, so cases can be theirs
WORKER_NAME = "闽宁镇帮扶专干"


@dataclass
class Place:
    app: WebApp
    redis_url: str
    township: str
    practitioner: str  # the worker's
    houses: dict[str, House]  # "a", "b", "c"
    tasks: dict[str, str]  # the same keys -> Task id of the household's case

    def task(self, key: str) -> dict[str, Any]:
        found = self.app.system.get(f"/Task/{self.tasks[key]}")
        assert found.status_code == 200, found.text
        return dict(found.json())


@pytest.fixture(scope="module", params=BACKENDS)
def place(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
) -> Iterator[Place]:
    url = fresh_database(request, request.param, tmp_path_factory.mktemp("cases"))
    server = AppServer(
        url, redis_url=redis_server.url, settings={"HEALTH_LOGINS_PER_ADDRESS_PER_MINUTE": "200"}
    )
    server.cli("seed", "--demo", "--patients", "0")
    server.start()
    app = web_app(server, request.param)
    system = app.system
    try:
        practitioner = system.get("/Practitioner", params={"_count": "1"}).json()["entry"][0][
            "resource"
        ]["id"]
        server.cli(
            "user", "add", WORKER, "--role", "commission_analyst", "--org", "640100WJW",
            "--practitioner", practitioner, "--name", WORKER_NAME, "--case-worker",
            "--password-stdin", input=DEMO_PASSWORD + "\n",
        )  # fmt: skip
        township = f"测{uuid.uuid4().hex[:6]}镇"
        town = Town()
        houses = {}
        for key in ("a", "b", "c"):
            house = town.household(
                f"C{uuid.uuid4().hex[:8]}{key}",
                [f"测{key}甲{uuid.uuid4().hex[:4]}", f"测{key}乙"],
                income="3000",
                township=township,
                village="甲村",
                status="monitored",
            )
            town.eob(
                house.members[0],
                dt.datetime.now(CHINA).date().isoformat(),
                billed="40000",
                out_of_pocket="40000",
            )
            houses[key] = house

        async def write() -> None:
            database = Database(url)
            try:
                await town.write(database, SearchIndexer())
            finally:
                await database.dispose()

        asyncio.run(write())
        server.cli("poverty", "recompute")
        tasks = {}
        for key, house in houses.items():
            found = system.get("/Task", params={"subject": f"Group/{house.id}"}).json()
            (entry,) = found["entry"]
            tasks[key] = entry["resource"]["id"]
        # Household a's head is a patient of the demo village clinic, so its doctor sees
        # the household and its case.
        head = system.get(f"/Patient/{houses['a'].members[0].id}").json()
        head["managingOrganization"] = {"reference": f"Organization/{app.village}"}
        assert system.put(f"/Patient/{head['id']}", json=head).status_code == 200
        yield Place(
            app,
            redis_server.url,
            township,
            practitioner,
            houses,
            tasks,
        )
    finally:
        system.close()
        server.stop()


@pytest.fixture(scope="module")
def worker(place: Place) -> Iterator[Session]:
    session = Session(place.app, WORKER)
    yield session
    session.close()


def _csrf(session: Session) -> dict[str, str]:
    return {"X-CSRF-Token": session.csrf()}


def _step(
    session: Session, task: str, body: dict[str, Any], version: int | str | None
) -> httpx.Response:
    headers = _csrf(session)
    if version is not None:
        headers["If-Match"] = f'W/"{version}"' if isinstance(version, int) else version
    return session.http.post(f"/api/cases/{task}/steps", json=body, headers=headers)


def _version(place: Place, key: str) -> int:
    return int(place.task(key)["meta"]["versionId"])


def _refused(answer: httpx.Response, status: int, field: str | None) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json().get("field") == field, answer.text


class TestTheList:
    def test_own_cases_come_first_and_overdue_ones_are_marked_and_filterable(
        self, place: Place, worker: Session
    ) -> None:
        # Case c's next step was due yesterday (a hospital system moves the date, as a
        # case opened long ago would have it).
        overdue = place.task("c")
        yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        overdue["restriction"] = {"period": {"end": yesterday.isoformat()}}
        assert place.app.system.put(f"/Task/{overdue['id']}", json=overdue).status_code == 200
        # The worker takes case b on.
        taken = _step(
            worker, place.tasks["b"], {"stage": "assigned", "worker": place.practitioner}, None
        )
        assert taken.status_code == 200, taken.text
        assert taken.json()["owner"]["reference"] == f"Practitioner/{place.practitioner}"

        listed = worker.http.get("/api/cases", params={"township": place.township}).json()
        order = [c["task_id"] for c in listed["cases"]]
        assert order == [place.tasks["b"], place.tasks["c"], place.tasks["a"]]
        by_task = {c["task_id"]: c for c in listed["cases"]}
        assert by_task[place.tasks["b"]]["mine"] is True
        assert [t for t, c in by_task.items() if c["overdue"]] == [place.tasks["c"]]
        assert listed["total"] == 3

        only = worker.http.get(
            "/api/cases", params={"township": place.township, "overdue": "1"}
        ).json()
        assert [c["task_id"] for c in only["cases"]] == [place.tasks["c"]]
        mine = worker.http.get("/api/cases", params={"township": place.township, "mine": "1"})
        assert [c["task_id"] for c in mine.json()["cases"]] == [place.tasks["b"]]
        stage = worker.http.get(
            "/api/cases", params={"township": place.township, "stage": "verified"}
        )
        assert stage.json()["cases"] == []

        page = worker.http.get("/cases", params={"township": place.township})
        assert page.status_code == 200
        rows = re.findall(
            r'<tr class="case([^"]*)"><td><a class="case-link" href="/cases/([^"]+)"', page.text
        )
        assert {task: marks.split() for marks, task in rows} == {
            place.tasks["b"]: ["mine"],
            place.tasks["c"]: ["overdue"],
            place.tasks["a"]: [],
        }
        assert "逾期" in page.text

    @pytest.mark.parametrize(
        ("name", "value"),
        [("stage", "done"), ("overdue", "maybe"), ("limit", "0"), ("offset", "x")],
    )
    def test_a_bad_filter_is_a_400_that_names_it(
        self, worker: Session, name: str, value: str
    ) -> None:
        _refused(worker.http.get("/api/cases", params={name: value}), 400, name)

    def test_the_dashboard_counts_overdue_cases_by_township_down_to_the_list(
        self, place: Place, worker: Session
    ) -> None:
        analyst = Session(place.app, "analyst")
        try:
            body = analyst.http.get(
                "/api/dashboard/figures", params={"township": place.township}
            ).json()
            (bar,) = body["overdue"]
            assert (bar["key"], bar["households"]) == (place.township, 1)
            listed = analyst.http.get(bar["list"]).json()
            assert [h["task_id"] for h in listed["households"]] == [place.tasks["c"]]
            assert listed["households"][0]["overdue"] is True
            page = analyst.http.get("/dashboard/households", params=dict(listed["filters"]))
            assert page.status_code == 200 and "逾期" in page.text
            assert "/cases?" not in analyst.http.get("/dashboard").text
        finally:
            analyst.close()
        # A case worker goes from the township's overdue bar to the cases to work.
        dashboard = worker.http.get("/dashboard", params={"township": place.township}).text
        link = re.search(r'<a class="work-cases" href="([^"]+)"', dashboard)
        assert link is not None
        cases = worker.http.get(link.group(1).replace("&amp;", "&"))
        assert cases.status_code == 200 and place.tasks["c"] in cases.text
        assert place.tasks["a"] not in cases.text


class TestAStep:
    def test_a_step_through_the_api_is_in_the_history_audited_and_announced(
        self, place: Place, worker: Session
    ) -> None:
        task = place.tasks["a"]
        version = _version(place, "a")
        redis = Redis.from_url(place.redis_url)
        feed = redis.pubsub()
        feed.subscribe(f"{bus_namespace(place.app.server.database_url)}:{CHANGES_CHANNEL}")
        try:
            feed.get_message(timeout=5)  # the subscription's confirmation
            taken = _step(worker, task, {"stage": "verified", "note": "入户核实：属实"}, version)
            assert taken.status_code == 200, taken.text
            assert taken.headers["ETag"] == f'W/"{version + 1}"'
            assert taken.json()["stage"] == "verified"
            assert taken.json()["next"] == ["assisted", "rejected"]
            heard = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                message = feed.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is None:
                    continue
                change = orjson.loads(message["data"])
                heard.append(change)
                if change["type"] == "Task" and change["id"] == task:
                    break
            assert {"type": "Task", "id": task, "versionId": version + 1, "method": "PUT"} in heard
        finally:
            feed.close()
            redis.close()

        history = place.app.system.get(f"/Task/{task}/_history").json()
        latest = max(
            (e["resource"] for e in history["entry"]), key=lambda r: int(r["meta"]["versionId"])
        )
        assert latest["meta"]["versionId"] == str(version + 1)
        assert latest["businessStatus"]["coding"][0]["code"] == "verified"
        step = latest["extension"][-1]["extension"]
        assert {"url": "note", "valueString": "入户核实：属实"} in step
        author = next(p["valueReference"] for p in step if p["url"] == "author")
        assert author == {
            "reference": f"Practitioner/{place.practitioner}",
            "display": WORKER_NAME,
        }

        with place.app.as_user("admin") as admin:
            events = admin.get(
                "/AuditEvent", params={"entity": f"Task/{task}", "altid": WORKER, "_count": "50"}
            ).json()
        updates = [
            e["resource"]
            for e in events.get("entry", [])
            if e["resource"]["action"] == "U" and e["resource"]["outcome"] == "0"
        ]
        assert len(updates) == 1

        shown = worker.http.get(f"/api/cases/{task}")
        assert shown.status_code == 200 and shown.headers["ETag"] == f'W/"{version + 1}"'
        body = shown.json()
        assert [s["stage"] for s in body["steps"]] == ["identified", "verified"]
        assert body["household"]["number"] == place.houses["a"].number
        assert body["household"]["evidence"] == f"/api/dashboard/households/{place.houses['a'].id}"

    def test_wrong_steps_name_the_field_and_write_nothing(
        self, place: Place, worker: Session
    ) -> None:
        task = place.tasks["a"]
        version = _version(place, "a")
        wrong: list[tuple[Any, int, str]] = [
            ({"stage": "closed"}, 409, "stage"),
            ({"stage": "identified"}, 409, "stage"),
            ({"stage": "nonsense"}, 422, "stage"),
            ({"stage": "assisted"}, 422, "help"),
            ({"stage": "assisted", "help": ["cash"]}, 422, "help"),
            ({"stage": "rejected"}, 422, "reason"),
            ({"stage": "assisted", "help": ["other"], "note": "长" * 2001}, 422, "note"),
            ({"stage": 5}, 400, "stage"),
            ({"stage": "assisted", "help": "medical-assistance"}, 400, "help"),
            (["verified"], 400, "body"),
            ({"stage": "assisted", "help": ["other"], "version": "two"}, 400, "version"),
        ]
        for body, status, field in wrong:
            _refused(_step(worker, task, body, version), status, field)
        _refused(_step(worker, task, {"stage": "rejected", "reason": "x"}, "v2"), 400, "If-Match")
        _refused(_step(worker, str(uuid.uuid4()), {"stage": "verified"}, None), 404, "task")
        assert _version(place, "a") == version

    def test_a_stale_version_is_a_412_and_changes_nothing(
        self, place: Place, worker: Session
    ) -> None:
        task = place.tasks["a"]
        version = _version(place, "a")
        body = {"stage": "assisted", "help": ["medical-assistance"]}
        _refused(_step(worker, task, body, version - 1), 412, "If-Match")
        _refused(_step(worker, task, {**body, "version": version - 1}, None), 412, "If-Match")
        assert _version(place, "a") == version
        taken = _step(worker, task, {**body, "version": version}, None)
        assert taken.status_code == 200, taken.text
        assert taken.json()["help"] == ["medical-assistance"]

    def test_the_page_s_form_takes_a_step_and_a_stale_form_says_so_in_chinese(
        self, place: Place, worker: Session
    ) -> None:
        task = place.tasks["b"]
        page = worker.http.get(f"/cases/{task}")
        assert page.status_code == 200
        assert f'href="/dashboard/households/{place.houses["b"].id}"' in page.text
        options = re.findall(r'<option value="([a-z]*)"', page.text.split('id="stage-choice"')[1])
        assert options[:3] == ["", "verified", "rejected"]  # nothing chosen until the worker does
        form = {
            "csrf_token": re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1),  # type: ignore[union-attr]
            "version": re.search(r'name="version" value="(\d+)"', page.text).group(1),  # type: ignore[union-attr]
        }
        unchosen = worker.http.post(f"/cases/{task}/steps", data={**form, "stage": ""})
        assert unchosen.status_code == 400 and 'id="stage-error"' in unchosen.text
        missing = worker.http.post(f"/cases/{task}/steps", data={**form, "stage": "verified"})
        assert missing.status_code == 422
        assert 'id="note-error"' in missing.text and "请填写入户核实的情况" in missing.text

        saved = worker.http.post(
            f"/cases/{task}/steps", data={**form, "stage": "verified", "note": "已入户，情况属实"}
        )
        assert saved.status_code == 303 and saved.headers["location"] == f"/cases/{task}?done=1"
        shown = worker.http.get(saved.headers["location"]).text
        assert "已保存" in shown and "已入户，情况属实" in shown
        steps = shown.split('id="steps"')[1].split("</table>")[0]
        assert steps.count("<tr>") == 4  # head, identified, assigned, verified

        stale = worker.http.post(
            f"/cases/{task}/steps",
            data={**form, "stage": "assisted", "help": ["dibao-referral"]},
        )
        assert stale.status_code == 412
        assert "其他人刚刚办理了这个案例" in stale.text
        assert place.task("b")["businessStatus"]["coding"][0]["code"] == "verified"

    def test_a_case_whose_flag_has_ended_is_still_the_worker_s(
        self, place: Place, worker: Session
    ) -> None:
        """Help removed the cause: the flag ends and the household leaves the analysts'
        view, but its case is monitored and closed all the same."""
        active = place.app.system.get(
            "/Flag", params={"subject": f"Group/{place.houses['c'].id}", "status": "active"}
        ).json()
        flags = [e["resource"] for e in active.get("entry", [])]
        flags = [f for f in flags if f["resourceType"] == "Flag"]
        assert flags
        for flag in flags:
            flag["status"] = "inactive"
            flag["period"]["end"] = dt.datetime.now(dt.UTC).isoformat()
            assert place.app.system.put(f"/Flag/{flag['id']}", json=flag).status_code == 200
        with place.app.as_user("analyst") as analyst:
            assert analyst.get(f"/Task/{place.tasks['c']}").status_code == 404
        shown = worker.http.get(f"/api/cases/{place.tasks['c']}")
        assert shown.status_code == 200
        rejected = _step(
            worker,
            place.tasks["c"],
            {"stage": "rejected", "reason": "入户核实：已有医疗救助"},
            shown.json()["version"],
        )
        assert rejected.status_code == 200, rejected.text
        assert rejected.json()["open"] is False and rejected.json()["next"] == []


class TestWhoMayNot:
    @pytest.mark.parametrize("username", ["analyst", "village-doctor", "admin"])
    def test_anybody_but_a_case_worker_is_refused_the_pages_and_the_api(
        self, place: Place, username: str
    ) -> None:
        session = Session(place.app, username)
        try:
            task = place.tasks["a"]
            assert session.http.get("/api/cases").status_code == 403
            assert session.http.get(f"/api/cases/{task}").status_code == 403
            step = _step(session, task, {"stage": "rejected", "reason": "x"}, None)
            assert step.status_code == 403
            assert session.http.get("/cases").status_code == 403
            assert session.http.get(f"/cases/{task}").status_code == 403
        finally:
            session.close()

    def test_nobody_signed_in_is_sent_to_log_in(self, place: Place) -> None:
        with httpx.Client(base_url=place.app.url) as nobody:
            assert nobody.get("/api/cases").status_code == 401
            assert nobody.post(f"/api/cases/{place.tasks['a']}/steps", json={}).status_code == 401
            page = nobody.get("/cases")
            assert page.status_code == 303 and page.headers["location"].startswith("/login")

    def test_the_worker_s_token_works_and_a_write_needs_the_session_s_csrf_token(
        self, place: Place, worker: Session
    ) -> None:
        token = place.app.token(WORKER)
        listed = httpx.get(
            f"{place.app.url}/api/cases", headers={"Authorization": f"Bearer {token}"}
        )
        assert listed.status_code == 200 and listed.json()["total"] >= 2
        no_csrf = worker.http.post(
            f"/api/cases/{place.tasks['a']}/steps", json={"stage": "monitoring"}
        )
        assert no_csrf.status_code == 403

    def test_a_revoked_right_ends_at_once_even_for_a_token_issued_with_it(
        self, place: Place
    ) -> None:
        username = f"cw-{uuid.uuid4().hex[:6]}"
        place.app.server.cli(
            "user", "add", username, "--role", "commission_analyst", "--org", "640100WJW",
            "--case-worker",
        )  # fmt: skip
        token = place.app.token(username)
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{place.app.url}/api/cases", headers=headers).status_code == 200
        place.app.server.cli("user", "case-worker", username, "--revoke")
        assert httpx.get(f"{place.app.url}/api/cases", headers=headers).status_code == 403
        # A step that was legal while the user had the right (the token still says so).
        task = place.task("a")
        step = Step("monitoring", dt.datetime.now(dt.UTC), Person(None, username))
        body = {**advance(task, step), "id": task["id"]}
        written = httpx.put(f"{place.app.url}/fhir/Task/{task['id']}", json=body, headers=headers)
        assert written.status_code == 403, written.text
        assert place.task("a")["meta"]["versionId"] == task["meta"]["versionId"]


class TestThroughFhir:
    """The same rules for a client writing the case's Task through ``/fhir``."""

    def _next_version(self, place: Place, key: str, author: Person) -> dict[str, Any]:
        """The case's Task after its next legal step forward, whatever stage earlier tests
        left it at; the step's stage is the body's ``businessStatus``."""
        task = place.task(key)
        stage = read_case(task["id"], task).stage
        forward = next(s for s in NEXT_STAGES[stage] if s not in (stage, "rejected"))
        step = Step(
            forward,
            dt.datetime.now(dt.UTC),
            author,
            "季度回访",
            help=("medical-assistance",) if forward == "assisted" else (),
        )
        return {**advance(task, step), "id": task["id"]}

    @staticmethod
    def _stage_of(body: dict[str, Any]) -> str:
        return str(body["businessStatus"]["coding"][0]["code"])

    def test_analysts_and_doctors_may_not_write_a_case_s_task(self, place: Place) -> None:
        worker = Person(f"Practitioner/{place.practitioner}", WORKER_NAME)
        body = self._next_version(place, "a", worker)
        for username in ("analyst", "village-doctor"):
            with place.app.as_user(username) as client:
                # The doctor sees the case of her patient's household, but its steps are
                # the case workers'.
                assert client.get(f"/Task/{body['id']}").status_code == 200
                refused = client.put(f"/Task/{body['id']}", json=body)
                assert refused.status_code == 403, (username, refused.text)
        with place.app.as_user("case-worker") as other:
            # Another case worker cannot write a step in this one's name.
            refused = other.put(f"/Task/{body['id']}", json=body)
            assert refused.status_code == 403
            assert refused.json()["issue"][0]["expression"] == ["Task.extension.author"]

    def test_a_case_worker_takes_one_legal_step_and_nothing_else(self, place: Place) -> None:
        worker = Person(f"Practitioner/{place.practitioner}", WORKER_NAME)
        task = place.task("a")
        with place.app.as_user(WORKER) as client:
            copy = {k: v for k, v in task.items() if k not in ("id", "meta")}
            created = client.post("/Task", json={**copy, "meta": {"tag": task["meta"]["tag"]}})
            assert created.status_code == 403, created.text
            rewritten = {**task, "extension": task["extension"][:-1]}  # its last step gone
            refused = client.put(f"/Task/{task['id']}", json=rewritten)
            assert refused.status_code == 422
            assert refused.json()["issue"][0]["expression"] == ["Task.extension"]
            body = self._next_version(place, "a", worker)
            jump = orjson.loads(orjson.dumps(body))
            # Back to the start: never a legal step, from any stage.
            jump["extension"][-1]["extension"][0]["valueCode"] = "identified"
            refused = client.put(f"/Task/{task['id']}", json=jump)
            assert refused.status_code == 409
            assert refused.json()["issue"][0]["expression"] == ["Task.extension.stage"]
            assert client.delete(f"/Task/{task['id']}").status_code == 403
            done = client.put(
                f"/Task/{task['id']}",
                json=body,
                headers={"If-Match": f'W/"{task["meta"]["versionId"]}"'},
            )
            assert done.status_code == 200, done.text
        assert place.task("a")["businessStatus"]["coding"][0]["code"] == self._stage_of(body)
