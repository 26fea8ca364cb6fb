"""Demo accounts, one for every role, placed in the demo directory.

Each is tied to a real entry of the demo network: the village doctor and the township doctor
are staff of 闽宁镇原隆村卫生室 and of 闽宁镇卫生院 (the village clinic lies under that
township), the specialist is a cardiologist of 银川市第一人民医院, the analyst works at the
health commission, and so does the case worker, the one demo account with the case-worker
right (households' names and identity numbers on the dashboard).
They share one demo password, printed by ``health seed --demo``; a real
deployment creates its own users with ``health user add`` and never runs the demo seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from health.auth import accounts
from health.core.clock import utcnow
from health.core.database import Database
from health.core.naming import ORGANIZATION_CODE_SYSTEM, PRACTITIONER_NUMBER_SYSTEM
from health.demo.directory import COMMISSION_CODE, build_directory
from records.criteria import Criteria
from records.indexing import SearchIndexer

DEMO_PASSWORD = "yinchuan-demo"
#: The clinics the doctors work at.
VILLAGE_CLINIC = "640121105201"  # 闽宁镇原隆村卫生室
TOWNSHIP_CENTRE = "640121105000"  # 永宁县闽宁镇卫生院
CARDIOLOGY = "640100H01-D01"  # 银川市第一人民医院心血管内科


@dataclass(frozen=True)
class DemoUser:
    username: str
    role: str
    organization_code: str | None
    #: Whether the account is one of the clinic's staff (its Practitioner is the first one).
    staff: bool
    display_name: str
    #: Whether the account has the case-worker right (names on the dashboard).
    case_worker: bool = False


DEMO_USERS = (
    DemoUser("village-doctor", "village_doctor", VILLAGE_CLINIC, True, "原隆村乡村医生"),
    DemoUser("township-doctor", "township_doctor", TOWNSHIP_CENTRE, True, "闽宁镇卫生院医生"),
    DemoUser("specialist", "specialist", CARDIOLOGY, True, "心血管内科专科医生"),
    DemoUser("analyst", "commission_analyst", COMMISSION_CODE, False, "卫健委分析员"),
    DemoUser("case-worker", "commission_analyst", COMMISSION_CODE, False, "卫健委帮扶专干", True),
    DemoUser("admin", "admin", None, False, "系统管理员"),
)


async def _find(session: AsyncSession, indexer: SearchIndexer, res_type: str, criteria: str) -> str:
    ids = await Criteria.parse(res_type, criteria, indexer).find_ids(session, limit=1)
    if not ids:
        raise LookupError(f"the demo directory has no {res_type} matching {criteria}")
    return ids[0]


async def seed_demo_users(
    database: Database, indexer: SearchIndexer
) -> list[tuple[DemoUser, bool]]:
    """Create the demo accounts that do not exist yet; (user, created now?) for each."""
    staff_of = {
        clinic.code: clinic.staff[0] for clinic in build_directory().clinics() if clinic.staff
    }
    result = []
    async with database.transaction(write=True) as session:
        for demo in DEMO_USERS:
            if await accounts.get_user(session, username=demo.username) is not None:
                result.append((demo, False))
                continue
            organization = practitioner = None
            display = demo.display_name
            if demo.organization_code:
                organization = await _find(
                    session,
                    indexer,
                    "Organization",
                    f"identifier={ORGANIZATION_CODE_SYSTEM}|{demo.organization_code}",
                )
            if demo.staff and demo.organization_code:
                staff = staff_of[demo.organization_code]
                practitioner = await _find(
                    session,
                    indexer,
                    "Practitioner",
                    f"identifier={PRACTITIONER_NUMBER_SYSTEM}|{staff.number}",
                )
                display = f"{staff.name.text}（{demo.display_name}）"
            await accounts.add_user(
                session,
                username=demo.username,
                role=demo.role,
                organization_id=organization,
                practitioner_id=practitioner,
                display_name=display,
                password=DEMO_PASSWORD,
                case_worker=demo.case_worker,
                now=utcnow(),
            )
            result.append((demo, True))
    return result
