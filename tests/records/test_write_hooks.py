"""Write hooks: another part's rules, inside every write's transaction, through whichever door.

A hook registered on the records context sees each write before it commits, can refuse it
(nothing of it is kept) or write more in the same transaction (kept, audited and announced
with it), and can ask for work after the commit (done only if the write committed). Run on
SQLite and PostgreSQL, as a system caller through the real gate and audit trail.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from health.auth.audit import AuditWriter, chain_key
from health.auth.gate import Gate, RequestCaller, actor_of
from health.auth.policy import Subject
from health.auth.scopes import parse_scopes
from health.auth.tokens import TokenSigner
from health.core.bus import InProcessBus
from health.core.database import Database
from health.core.settings import Settings
from records.api.service import RecordsContext, resources_of
from records.feed import CHANGES_CHANNEL
from records.hooks import WriteContext
from records.indexing import SearchIndexer
from records.interactions import FhirRequest
from records.outcome import FhirError

BASE = "http://hooks.test/fhir"


@pytest.fixture(scope="module")
def indexer() -> SearchIndexer:
    return SearchIndexer()


@dataclass
class FlagRule:
    """A hook for the tests: refuses Patients named 拒绝, writes a Flag for every new Patient,
    and records what it saw and what ran after commits."""

    seen: list[list[str]] = field(default_factory=list)
    announced: list[str] = field(default_factory=list)

    async def __call__(self, write: WriteContext) -> None:
        self.seen.append([f"{c.res_type}/{c.method}" for c in write.changes])
        for change in write.changes:
            if change.res_type != "Patient" or change.method != "POST":
                continue
            patient = await write.content(change)
            assert patient is not None
            if patient["name"][0]["text"] == "拒绝":
                raise FhirError.of(
                    422,
                    "This patient is refused by the rule",
                    code="business-rule",
                    expression="Patient.name",
                )
            flag = await write.write(
                {
                    "resourceType": "Flag",
                    "status": "active",
                    "code": {"text": "new patient"},
                    "subject": {"reference": f"Patient/{change.res_id}"},
                }
            )

            async def announce(flag_id: str = flag["id"]) -> None:
                self.announced.append(flag_id)

            write.after_commit(announce)


@dataclass
class Setup:
    context: RecordsContext
    caller: RequestCaller
    rule: FlagRule
    bus: InProcessBus

    async def perform(self, request: FhirRequest) -> Any:
        return await self.context.perform(self.caller, request, base_url=BASE)

    async def search(self, query: str) -> list[dict[str, Any]]:
        res_type, _, params = query.partition("?")
        result = await self.perform(FhirRequest("GET", res_type, query=params))
        return resources_of(result)


@pytest.fixture
async def setup(database_url: str, indexer: SearchIndexer) -> AsyncIterator[Setup]:
    database = Database(database_url)
    bus = InProcessBus()
    secret = secrets.token_bytes(32)
    audit = AuditWriter(database, indexer, chain_key(secret))
    settings = Settings(database_url=database_url)
    gate = Gate(
        settings=settings,
        database=database,
        indexer=indexer,
        signer=TokenSigner(secret, issuer=settings.issuer),
        audit=audit,
    )
    subject = Subject(
        id="client:hospital",
        role="system",
        organization=None,
        practitioner=None,
        scopes=parse_scopes("system/*.cruds"),
    )
    caller = RequestCaller(subject, gate.policy(subject), actor_of(subject, None), gate)
    rule = FlagRule()
    context = RecordsContext(
        database=database,
        indexer=indexer,
        bus=bus,
        base_url=BASE,
        max_page_size=100,
        default_page_size=50,
        max_body_bytes=1 << 20,
        authenticate=gate.authenticate,
        write_hooks=[rule],
    )
    yield Setup(context, caller, rule, bus)
    await audit.close()
    await database.dispose()


def patient(name: str, marker: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test", "value": marker}],
        "name": [{"text": name}],
    }


async def test_a_hook_writes_more_in_the_same_transaction_audited_and_announced(
    setup: Setup,
) -> None:
    changes = await setup.bus.subscribe(CHANGES_CHANNEL)
    marker = uuid.uuid4().hex
    created = await setup.perform(FhirRequest("POST", "Patient", body=patient("马兰", marker)))
    patient_id = created.version.res_id
    (flag,) = await setup.search(f"Flag?subject=Patient/{patient_id}")
    assert setup.rule.announced == [flag["id"]]
    # The change feed announces both, and the request's audit record names both.
    announced = [await anext(aiter(changes)) for _ in range(2)]
    assert {(m["type"], m["id"]) for m in announced} == {
        ("Patient", patient_id),
        ("Flag", flag["id"]),
    }
    events = await setup.search(f"AuditEvent?entity=Flag/{flag['id']}")
    (creation,) = [e for e in events if e["subtype"][0]["code"] == "create"]
    named = {e["what"]["reference"] for e in creation["entity"] if "what" in e}
    assert {f"Patient/{patient_id}", f"Flag/{flag['id']}"} <= named
    await changes.close()


async def test_a_refusal_keeps_nothing_and_runs_nothing_after(setup: Setup) -> None:
    marker = uuid.uuid4().hex
    with pytest.raises(FhirError) as refused:
        await setup.perform(FhirRequest("POST", "Patient", body=patient("拒绝", marker)))
    assert refused.value.status == 422
    assert refused.value.issues[0].expression == ("Patient.name",)
    assert await setup.search(f"Patient?identifier=urn:test|{marker}") == []
    assert setup.rule.announced == []


async def test_a_transaction_bundle_is_one_write_and_one_refusal_undoes_it_all(
    setup: Setup,
) -> None:
    kept, refused = uuid.uuid4().hex, uuid.uuid4().hex

    def entry(name: str, marker: str) -> dict[str, Any]:
        return {"resource": patient(name, marker), "request": {"method": "POST", "url": "Patient"}}

    bundle = {"resourceType": "Bundle", "type": "transaction"}
    await setup.perform(
        FhirRequest(
            "POST", "", body={**bundle, "entry": [entry("马兰", kept), entry("丁香", kept)]}
        )
    )
    assert setup.rule.seen[-1] == ["Patient/POST", "Patient/POST"]  # one call for the Bundle
    assert len(await setup.search(f"Patient?identifier=urn:test|{kept}")) == 2
    with pytest.raises(FhirError):
        await setup.perform(
            FhirRequest(
                "POST",
                "",
                body={**bundle, "entry": [entry("马兰", refused), entry("拒绝", refused)]},
            )
        )
    assert await setup.search(f"Patient?identifier=urn:test|{refused}") == []


async def test_in_a_batch_a_refusal_undoes_its_own_entry_only(setup: Setup) -> None:
    marker = uuid.uuid4().hex
    entries = [
        {"resource": patient(name, marker), "request": {"method": "POST", "url": "Patient"}}
        for name in ("马兰", "拒绝", "丁香")
    ]
    result = await setup.perform(
        FhirRequest("POST", "", body={"resourceType": "Bundle", "type": "batch", "entry": entries})
    )
    statuses = [e["response"]["status"] for e in result.body["entry"]]
    assert statuses == ["201 Created", "422 Unprocessable Entity", "201 Created"]
    kept = await setup.search(f"Patient?identifier=urn:test|{marker}")
    assert sorted(p["name"][0]["text"] for p in kept) == ["丁香", "马兰"]
    flags = [await setup.search(f"Flag?subject=Patient/{p['id']}") for p in kept]
    assert [len(f) for f in flags] == [1, 1]
    assert len(setup.rule.announced) == 2  # the refused entry's work after commit never ran
