"""The audit trail: every look and every refusal recorded, searchable by the patient's own
clinic and the administrators, and a hash chain that shows a row changed by hand."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from health.auth.audit import BATCH_EVENTS, Actor, AuditWriter, chain_key, login_event
from health.auth.tables import audit_chain
from health.core.clock import utcnow
from health.core.database import Database
from records.indexing import SearchIndexer
from records.tables import resource_versions, resources
from records.validation import validate_resource
from tests.auth.conftest import SYSTEM, Network, fhir_client
from tests.conftest import BACKENDS, fresh_database
from tests.services import AppServer, change_database, query_database, wait_until

REST = "http://terminology.hl7.org/CodeSystem/audit-event-type|rest"


def events(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    response = client.get("/AuditEvent", params={"_count": "200", "_sort": "-date", **params})
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", []) if "resource" in e]


def settled(
    client: httpx.Client,
    chosen: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    **params: str,
) -> list[dict[str, Any]]:
    """The chosen events, once the audit writer has committed them (reads' records are
    handed to it without waiting, and commit with its next batch)."""
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        found[:] = chosen(events(client, **params))
        return bool(found)

    wait_until(ready, what="the audit records", timeout=30)
    return found


def by(event: dict[str, Any]) -> str:
    return str(event["agent"][0].get("altId"))


def subtype(event: dict[str, Any]) -> str:
    return str(event["subtype"][0]["code"])


def entities(event: dict[str, Any]) -> set[str]:
    return {e["what"]["reference"] for e in event.get("entity", []) if "what" in e}


class TestEveryLookIsRecorded:
    def test_a_read_names_who_what_whose_and_from_where(self, network: Network) -> None:
        a = network.patients["a"]
        with network.as_user("village-doctor") as doctor:
            assert doctor.get(f"/Observation/{a.observation}").status_code == 200
        with network.as_user("admin") as admin:
            found = settled(
                admin,
                lambda trail: [e for e in trail if subtype(e) == "read"],
                entity=f"Observation/{a.observation}",
                altid="village-doctor",
            )
        assert found, "the read was not audited"
        event = found[0]
        assert event["action"] == "R" and event["outcome"] == "0"
        assert f"Patient/{a.id}" in entities(event)
        agent = event["agent"][0]
        assert agent["role"][0]["coding"][0]["code"] == "village_doctor"
        assert agent["who"]["reference"] == f"Practitioner/{network.practitioner('village-doctor')}"
        assert agent["network"]["address"] == "127.0.0.1"
        organization = agent["extension"][0]["valueReference"]["reference"]
        assert organization == f"Organization/{network.organizations['640121105201']}"

    def test_a_search_records_the_query_and_the_patients_it_showed(self, network: Network) -> None:
        a = network.patients["a"]
        with network.as_user("township-doctor") as township:
            township.get("/Condition", params={"code:text": a.marker})
        with network.as_user("admin") as admin:
            searches = settled(
                admin,
                lambda trail: [e for e in trail if subtype(e) == "search-type"],
                patient=a.id,
                altid="township-doctor",
            )
        assert searches
        query = next(e for e in searches[0]["entity"] if e["role"]["code"] == "24")
        assert a.marker in query["description"]
        assert f"Condition/{a.condition}" in entities(searches[0])

    def test_a_search_by_identity_keeps_the_question_not_the_number(self, network: Network) -> None:
        """The trail is long-lived and append-only: a search by identifier is recorded with
        its parameters and the patient it found, but not the identifier it was given.

        Only the trail's Patient searches by identifier are looked at: the session's other
        searches about her (by the text of her condition, which is her marker) keep their
        parameters, as they should."""
        a = network.patients["a"]
        with network.as_user("village-doctor") as doctor:
            found = doctor.get("/Patient", params={"identifier": f"{SYSTEM}|{a.marker}"})
            assert [e["resource"]["id"] for e in found.json()["entry"]] == [a.id]

        def by_identifier(event: dict[str, Any]) -> bool:
            queries = [e for e in event["entity"] if e["role"]["code"] == "24"]
            return any(q["description"].startswith("GET Patient?identifier=") for q in queries)

        with network.as_user("admin") as admin:
            searches = settled(
                admin,
                lambda trail: [
                    e for e in trail if subtype(e) == "search-type" and by_identifier(e)
                ],
                patient=a.id,
                altid="village-doctor",
            )
        query = next(e for e in searches[0]["entity"] if e["role"]["code"] == "24")
        assert query["description"] == "GET Patient?identifier=…"
        assert base64.b64decode(query["query"]).decode() == "GET Patient?identifier=…"
        assert a.marker not in orjson.dumps(searches).decode()

    def test_refusals_are_recorded_and_the_patients_clinic_sees_them(
        self, network: Network
    ) -> None:
        a = network.patients["a"]
        with network.as_user("hostile") as hostile:
            assert hostile.get(f"/Patient/{a.id}").status_code == 404
        # The patient's own clinic asks who tried to see her record.
        with network.as_user("village-doctor") as doctor:
            tried = settled(
                doctor,
                lambda trail: [e for e in trail if by(e) == "hostile"],
                entity=f"Patient/{a.id}",
            )
        assert tried and tried[0]["outcome"] == "4"
        # The one who tried cannot read the trail about the patient.
        with network.as_user("hostile") as hostile:
            assert events(hostile, entity=f"Patient/{a.id}") == []
        with network.as_user("specialist") as specialist:
            assert specialist.get("/AuditEvent").status_code == 403

    def test_a_search_over_several_patients_is_one_event_per_patient(
        self, network: Network
    ) -> None:
        a, b = network.patients["a"], network.patients["b"]
        marker = uuid.uuid4().hex
        with network.as_user("township-doctor") as township:
            found = township.get("/Patient", params={"_id": f"{a.id},{b.id}", "m": marker})
            assert found.status_code == 200
        with network.as_user("admin") as admin:

            def both(trail: list[dict[str, Any]]) -> list[dict[str, Any]]:
                found = [e for e in trail if marker in str(e)]
                return found if len(found) >= 2 else []

            trail = settled(admin, both, altid="township-doctor")
        assert sorted(entities(e) & {f"Patient/{a.id}", f"Patient/{b.id}"} for e in trail) in (
            [{f"Patient/{a.id}"}, {f"Patient/{b.id}"}],
            [{f"Patient/{b.id}"}, {f"Patient/{a.id}"}],
        )
        # b's clinic sees the event about b, and it names nobody else's record.
        with network.as_user("hostile") as hostile:
            seen = [e for e in events(hostile, altid="township-doctor") if marker in str(e)]
        assert [entities(e) for e in seen] == [{f"Patient/{b.id}"}]

    def test_audit_events_are_valid_fhir(self, network: Network) -> None:
        with network.as_user("admin") as admin:
            trail = events(admin, _count="50")
        assert len(trail) >= 10
        for event in trail:
            validate_resource(event)

    def test_writes_are_recorded_with_what_they_wrote(self, network: Network) -> None:
        b = network.patients["b"]
        with network.as_user("hostile") as hostile:
            created = hostile.post(
                "/Observation",
                json={
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "脉搏"},
                    "subject": {"reference": f"Patient/{b.id}"},
                },
            ).json()
        with network.as_user("admin") as admin:
            found = events(admin, entity=f"Observation/{created['id']}")
        assert [subtype(e) for e in found] == ["create"]
        assert found[0]["action"] == "C" and f"Patient/{b.id}" in entities(found[0])

    def test_logins_and_failed_logins_are_recorded(self, network: Network) -> None:
        username = f"ghost-{uuid.uuid4().hex[:8]}"
        httpx.post(
            f"{network.server.url}/auth/token",
            data={"grant_type": "client_credentials"},
            auth=(username, "guess"),
        )
        with network.as_user("admin") as admin:
            failed = events(admin, altid=username)
        assert failed and failed[0]["outcome"] == "4"
        assert failed[0]["type"]["code"] == "110114"  # DICOM User Authentication
        # A guessed password is never written down.
        assert "guess" not in str(failed[0])

    def test_break_glass_is_granted_for_a_while_audited_and_reported(
        self, network: Network
    ) -> None:
        a = network.patients["a"]

        def conditions(doctor: httpx.Client) -> list[str]:
            found = doctor.get("/Condition", params={"subject": f"Patient/{a.id}"})
            assert found.status_code == 200, found.text
            return [e["resource"]["id"] for e in found.json().get("entry", [])]

        with network.as_user("hostile") as hostile:
            assert hostile.get(f"/Patient/{a.id}").status_code == 404
            assert conditions(hostile) == []
            url = f"{network.server.url}/auth/break-glass"
            headers = {"Authorization": hostile.headers["Authorization"]}
            no_reason = httpx.post(url, json={"patient": a.id, "reason": " "}, headers=headers)
            assert no_reason.status_code == 400 and no_reason.json()["field"] == "reason"
            unknown = httpx.post(
                url, json={"patient": str(uuid.uuid4()), "reason": "昏迷急诊"}, headers=headers
            )
            assert unknown.status_code == 404
            opened = httpx.post(url, json={"patient": a.id, "reason": "昏迷急诊"}, headers=headers)
            assert opened.status_code == 201, opened.text
            assert hostile.get(f"/Patient/{a.id}").status_code == 200
            assert hostile.get(f"/Patient/{a.id}/$everything").json()["total"] >= 4
            # A search of her records by type finds them too, not only the compartment.
            assert conditions(hostile) == [a.condition]
        with network.as_user("admin") as admin:
            alerts = [
                e for e in events(admin, entity=f"Patient/{a.id}") if subtype(e) == "break-glass"
            ]
            report = httpx.get(
                f"{network.server.url}/auth/break-glass",
                headers={"Authorization": admin.headers["Authorization"]},
            ).json()
        assert alerts and by(alerts[0]) == "hostile"
        assert alerts[0]["agent"][0]["purposeOfUse"][0]["coding"][0]["code"] == "BTG"
        assert any(r["patient"] == a.id and r["reason"] == "昏迷急诊" for r in report)
        # Only doctors may break the glass; the opening ends by itself (20 s here).
        with network.as_user("analyst") as analyst:
            refused = httpx.post(
                url,
                json={"patient": a.id, "reason": "想看看"},
                headers={"Authorization": analyst.headers["Authorization"]},
            )
            assert refused.status_code == 403
        with network.as_user("hostile") as hostile:
            wait_until(
                lambda: hostile.get(f"/Patient/{a.id}").status_code == 404,
                what="the end of the break-glass opening",
                timeout=90,
            )
            assert conditions(hostile) == []


@pytest.fixture(params=BACKENDS)
def lone_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AppServer]:
    server = AppServer(fresh_database(request, request.param, tmp_path)).start()
    yield server
    server.stop()


def test_audit_verify_finds_a_row_changed_by_hand(lone_server: AppServer) -> None:
    with fhir_client(lone_server, lone_server.system_token()) as system:
        patient = system.post("/Patient", json={"resourceType": "Patient"}).json()
        for _ in range(3):
            system.get(f"/Patient/{patient['id']}")
    intact = lone_server.cli("audit", "verify")
    assert intact.startswith("audit trail intact")
    url = lone_server.database_url
    ((rid, content),) = query_database(
        url,
        "SELECT v.rid, v.content FROM resource_versions v JOIN audit_chain c ON 1 = 1 "
        "JOIN resources r ON r.rid = v.rid AND r.res_id = c.event_id "
        "WHERE c.position = 3",
    )
    assert '"read"' in content
    # Someone with the database password makes the read look like a search.
    change_database(
        url,
        "UPDATE resource_versions SET content = replace(content, '\"read\"', '\"search-type\"') "
        f"WHERE rid = {rid}",
    )
    verified = lone_server.run("audit", "verify")
    assert verified.returncode == 1 and verified.stdout == ""  # nothing claims it is intact
    assert "audit entry 3" in verified.stderr and "altered" in verified.stderr
    # Removing an event from the store is found as well.
    change_database(url, f"DELETE FROM resources WHERE rid = {rid}")
    removed = lone_server.run("audit", "verify")
    assert removed.returncode == 1 and "gone from the store" in removed.stderr


def test_every_read_is_on_the_trail_once_the_server_has_stopped(lone_server: AppServer) -> None:
    """Reads hand their records to the audit writer without waiting; a server that stops
    writes every one of them first."""
    with fhir_client(lone_server, lone_server.system_token()) as system:
        patient = system.post("/Patient", json={"resourceType": "Patient"}).json()
        for _ in range(40):
            assert system.get(f"/Patient/{patient['id']}").status_code == 200
    lone_server.stop()
    ((reads,),) = query_database(
        lone_server.database_url,
        "SELECT count(*) FROM resource_versions WHERE res_type = 'AuditEvent' "
        'AND content LIKE \'%"code":"read"%\' '
        f"AND content LIKE '%Patient/{patient['id']}%'",
    )
    assert reads == 40
    assert lone_server.run("audit", "verify").returncode == 0


async def test_a_write_waits_for_its_own_audit_event_not_for_the_backlog(
    database_url: str,
) -> None:
    """Searches hand their events over without waiting and can pile up thousands of them; a
    write, which waits until its event is on the trail, is written with the next batch
    rather than after all of them. Every event is on the chain once the writer closes.

    What is measured is the write's place on the chain, not how much of the backlog is
    there when the write returns: the writer goes on with the next batch meanwhile, and on
    a slow machine that batch can commit before the test looks."""
    database = Database(database_url)
    writer = AuditWriter(database, SearchIndexer(), chain_key(secrets.token_bytes(32)))
    reader = Actor(id=f"user:reader-{uuid.uuid4().hex[:8]}", address="127.0.0.1")
    author = Actor(id=f"user:writer-{uuid.uuid4().hex[:8]}", address="127.0.0.1")
    ours = {actor.id.partition(":")[2]: actor for actor in (reader, author)}  # type: ignore[union-attr]

    async def on_the_chain() -> list[str]:
        async with database.transaction(write=False) as session:
            rows = await session.execute(
                select(resource_versions.c.content)
                .select_from(audit_chain)
                .join(resources, resources.c.res_id == audit_chain.c.event_id)
                .join(resource_versions, resource_versions.c.rid == resources.c.rid)
                .where(audit_chain.c.position > start, resources.c.res_type == "AuditEvent")
                .order_by(audit_chain.c.position)
            )
            who = [orjson.loads(c)["agent"][0]["who"]["identifier"]["value"] for (c,) in rows]
            return [ours[name].id for name in who if name in ours]  # type: ignore[misc]

    try:
        async with database.transaction(write=False) as session:
            start = (
                await session.execute(select(func.coalesce(func.max(audit_chain.c.position), 0)))
            ).scalar_one()
        backlog = 4 * BATCH_EVENTS
        for _ in range(backlog):
            await writer.record(
                login_event(reader, succeeded=True, method="password", now=utcnow()), wait=False
            )
        await writer.record(
            login_event(author, succeeded=True, method="password", now=utcnow()), wait=True
        )
        written = await on_the_chain()
        assert author.id in written
        # Chained with the first batch: fewer than a batch of the backlog went before it.
        assert written.index(author.id) < BATCH_EVENTS < backlog
        await writer.close()
        written = await on_the_chain()
        assert set(written) == {reader.id, author.id}
        assert len(written) == backlog + 1
    finally:
        await writer.close()
        await database.dispose()
