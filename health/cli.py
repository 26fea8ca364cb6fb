"""The ``health`` command: migrate, serve, seed, import, reindex, the directory and registry
imports, the illness-poverty flags, users, API clients, the audit trail and consults."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncSession

from health.core.settings import get_settings

if TYPE_CHECKING:
    import datetime as dt

    from health.core.database import Database
    from health.poverty.rules import RuleSet
    from records.indexing import SearchIndexer
    from records.store import Change

PROJECT_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@click.group()
def main() -> None:
    """银川移民地区远程医疗服务 — Yinchuan resettlement-area telemedicine service."""


def run_migrations(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (HEALTH_DATABASE_URL)."""
    settings = get_settings()
    run_migrations(settings.database_url)
    click.echo(f"database at {_safe_url(settings.database_url)} is up to date")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn worker processes")
def serve(host: str, port: int, workers: int) -> None:
    """Serve the web app and the FHIR API."""
    import uvicorn

    from health.core.log_redaction import uvicorn_log_config

    uvicorn.run(
        "health.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=uvicorn_log_config(),
    )


@main.command()
def worker() -> None:
    """Deliver the outbox (notifications, the registry feed) until stopped, without serving
    HTTP: production runs several beside ``health serve`` with HEALTH_DELIVER_IN_SERVE=false.
    Workers share the work through the outbox table; none sends a message another holds."""
    import signal

    from health.app import outbox_delivery
    from health.core.database import Database

    async def run() -> None:
        settings = get_settings()
        database = Database(settings.database_url)
        delivery = outbox_delivery(database, settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        delivery.start()
        topics = ", ".join(sorted(delivery.deliverers))
        click.echo(f"worker {delivery.worker_id} delivering {topics}", err=True)
        try:
            await stop.wait()
        finally:
            await delivery.close()
            for deliverer in delivery.deliverers.values():
                await deliverer.close()
            await database.dispose()

    asyncio.run(run())


@main.command()
@click.option(
    "--demo", is_flag=True, required=True, help="load the demo clinic network and patients"
)
@click.option("--patients", default=300, show_default=True, type=int)
def seed(demo: bool, patients: int) -> None:
    """Load the demo data (marked as demo: meta.tag demo and the HTEST security label)."""
    from health.core.database import Database
    from health.demo import build_demo_bundles
    from records.importer import process_bundle
    from records.indexing import SearchIndexer
    from records.outcome import FhirError

    bundles = build_demo_bundles(patients=patients)

    async def run() -> tuple[int, int]:
        database = Database(get_settings().database_url)
        indexer = SearchIndexer()
        written = entries = 0
        changes: list[Change] = []
        try:
            for bundle in bundles:
                outcome = await process_bundle(database, indexer, bundle)
                written += outcome.changes
                entries += len(outcome.response["entry"])
                changes.extend(outcome.written)
            await _after_writes(database, indexer, changes)
        finally:
            await database.dispose()
        return written, entries - written

    try:
        written, unchanged = asyncio.run(run())
    except FhirError as error:
        raise click.ClickException(f"demo seed failed: {error}") from None
    click.echo(f"demo data: {written} resources written, {unchanged} already up to date")

    from health.demo.users import DEMO_PASSWORD, DemoUser, seed_demo_users

    async def users() -> list[tuple[DemoUser, bool]]:
        database = Database(get_settings().database_url)
        try:
            return list(await seed_demo_users(database, SearchIndexer()))
        finally:
            await database.dispose()

    click.echo(f"demo users (password for each: {DEMO_PASSWORD}):")
    for account, created in asyncio.run(users()):
        state = "created" if created else "exists"
        click.echo(f"  {account.username:16} {account.role:20} {state}")


@main.command(name="import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--jobs", type=int, default=None, help="worker processes (default: one per CPU)")
def import_command(paths: tuple[Path, ...], jobs: int | None) -> None:
    """Import Bundle files (JSON, .gz) and NDJSON; a directory means every such file in it."""
    from tqdm import tqdm

    from records.importer import expand_paths, import_files

    files = expand_paths(paths)
    if not files:
        raise click.ClickException("no importable files (.json, .json.gz, .ndjson) found")
    with tqdm(total=len(files), unit="file", desc="importing", file=sys.stderr) as bar:

        def progress(result: object) -> None:
            bar.update(1)

        results = import_files(get_settings().database_url, files, jobs=jobs, progress=progress)

    async def follow() -> None:
        from health.core.database import Database
        from records.indexing import SearchIndexer

        database = Database(get_settings().database_url)
        try:
            await _after_writes(database, SearchIndexer(), [c for r in results for c in r.changes])
        finally:
            await database.dispose()

    asyncio.run(follow())
    failed = [r for r in results if r.error]
    total = sum(r.resources for r in results)
    click.echo(
        f"imported {total} resources from {len(results) - len(failed)} of {len(results)} files"
    )
    for result in failed:
        click.echo(f"FAILED {result.path}: {result.error}", err=True)
    if failed:
        sys.exit(1)


@main.command(name="reindex")
@click.argument("resource_type", required=False)
def reindex_command(resource_type: str | None) -> None:
    """Rebuild the search indexes (of one resource type, or all); resumes after a crash."""
    from tqdm import tqdm

    from health.core.database import Database
    from records.definitions import resource_types
    from records.indexing import SearchIndexer
    from records.reindex import reindex

    if resource_type is not None and resource_type not in resource_types():
        raise click.ClickException(f"'{resource_type}' is not a FHIR R4B resource type")

    async def run() -> None:
        database = Database(get_settings().database_url)
        bar = tqdm(unit="resource", desc="reindexing", file=sys.stderr)
        try:
            report = await reindex(
                database,
                SearchIndexer(),
                res_type=resource_type,
                on_start=lambda total: setattr(bar, "total", total),
                on_batch=bar.update,
            )
        finally:
            bar.close()
            await database.dispose()
        resumed = " (resumed an interrupted run)" if report.resumed_from else ""
        click.echo(f"reindexed {report.resources} resources{resumed}")

    asyncio.run(run())


@main.group()
def directory() -> None:
    """The clinic directory (townships, villages, hospitals, departments)."""


@directory.command(name="import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def directory_import(csv_file: Path) -> None:
    """Load a deployment's own clinic network from CSV (UTF-8 or GB18030)."""
    from health.core.database import Database
    from integrations.directory_csv import DirectoryFileError, directory_bundle_from_csv
    from records.importer import process_bundle
    from records.indexing import SearchIndexer
    from records.outcome import FhirError

    try:
        bundle = directory_bundle_from_csv(csv_file)
    except DirectoryFileError as error:
        raise click.ClickException(str(error)) from None

    async def run() -> int:
        database = Database(get_settings().database_url)
        try:
            response = (await process_bundle(database, SearchIndexer(), bundle)).response
        finally:
            await database.dispose()
        return len(response["entry"])

    try:
        count = asyncio.run(run())
    except FhirError as error:
        raise click.ClickException(f"directory import failed: {error}") from None
    click.echo(f"directory: {count} organisations and locations loaded from {csv_file}")


@main.group()
def icd10() -> None:
    """The ICD-10 list (Chinese and English names) the diagnosis picker searches."""


@icd10.command(name="import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--title", default=None, help="the edition's name, e.g. 国家临床版2.0")
def icd10_import(csv_file: Path, title: str | None) -> None:
    """Load a deployment's full ICD-10 edition from CSV (UTF-8 or GB18030), replacing the
    village list shipped with the service; running servers pick it up at once."""
    from health.core.database import Database
    from health.terminology.icd10 import Icd10FileError, concepts_from_csv, import_bundle
    from records.importer import process_bundle
    from records.indexing import SearchIndexer
    from records.outcome import FhirError

    try:
        concepts = concepts_from_csv(csv_file.read_bytes(), source=str(csv_file))
    except Icd10FileError as error:
        raise click.ClickException(str(error)) from None
    bundle = import_bundle(concepts, title=title or csv_file.stem)

    async def run() -> None:
        database = Database(get_settings().database_url)
        try:
            await process_bundle(database, SearchIndexer(), bundle, scan_identifiers=False)
        finally:
            await database.dispose()

    try:
        asyncio.run(run())
    except FhirError as error:
        raise click.ClickException(f"ICD-10 import failed: {error}") from None
    click.echo(f"ICD-10: {len(concepts)} codes loaded from {csv_file}")


# -- users, clients, audit -----------------------------------------------------------------


def _in_transaction(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work(session)`` in one write transaction of the configured database; an
    AccountError (input the operator must fix) becomes the command's error message."""
    from health.auth.accounts import AccountError
    from health.core.database import Database

    async def run() -> T:
        database = Database(get_settings().database_url)
        try:
            async with database.transaction(write=True) as session:
                return await work(session)
        finally:
            await database.dispose()

    try:
        return asyncio.run(run())
    except AccountError as error:
        raise click.ClickException(str(error)) from None


def _read_password(password_stdin: bool) -> str | None:
    if not password_stdin:
        return None
    return sys.stdin.readline().rstrip("\r\n")


async def _organization_id(session: AsyncSession, given: str | None) -> str | None:
    """An Organization's id, given its id or its code in the directory (640121105201)."""
    from sqlalchemy import select

    from health.core.naming import ORGANIZATION_CODE_SYSTEM
    from records.criteria import Criteria
    from records.indexing import SearchIndexer
    from records.tables import resources

    if not given:
        return None
    found = await session.execute(
        select(resources.c.res_id).where(
            resources.c.res_type == "Organization", resources.c.res_id == given
        )
    )
    if found.first() is not None:
        return given
    ids = await Criteria.parse(
        "Organization", f"identifier={ORGANIZATION_CODE_SYSTEM}|{given}", SearchIndexer()
    ).find_ids(session)
    return ids[0] if len(ids) == 1 else given


@main.group()
def user() -> None:
    """User accounts: people who log in, each with one role at one organisation."""


@user.command(name="add")
@click.argument("username")
@click.option(
    "--role",
    required=True,
    type=click.Choice(
        ["village_doctor", "township_doctor", "specialist", "commission_analyst", "admin"]
    ),
)
@click.option("--org", "organization", help="the Organization's id or directory code")
@click.option("--practitioner", help="the user's Practitioner id in the directory")
@click.option("--name", "display_name", help="the name shown on pages and in the audit trail")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@click.option(
    "--case-worker",
    is_flag=True,
    help="may see households' names and identity numbers on the commission's dashboard",
)
@click.option(
    "--temporary",
    is_flag=True,
    help="the person must choose her own password at her first login",
)
def user_add(
    username: str,
    role: str,
    organization: str | None,
    practitioner: str | None,
    display_name: str | None,
    password_stdin: bool,
    case_worker: bool,
    temporary: bool,
) -> None:
    """Create a user (without --password-stdin the account cannot log in until one is set)."""
    from health.auth import accounts
    from health.core.clock import utcnow

    password = _read_password(password_stdin)

    async def work(session: AsyncSession) -> Any:
        return await accounts.add_user(
            session,
            username=username,
            role=role,
            organization_id=await _organization_id(session, organization),
            practitioner_id=practitioner,
            display_name=display_name,
            password=password,
            case_worker=case_worker,
            temporary_password=temporary,
            now=utcnow(),
        )

    created = _in_transaction(work)
    click.echo(f"user {created.username} ({created.role}) created")


@user.command(name="list")
def user_list() -> None:
    """List the users."""
    from health.auth import accounts

    async def work(session: AsyncSession) -> Any:
        return await accounts.list_users(session)

    for account in _in_transaction(work):
        state = "disabled" if account.disabled else "active"
        if account.password_change_required and not account.disabled:
            state = "temporary"  # active, once she has chosen her own password
        click.echo(
            f"{account.username:24} {account.role:20} {account.organization_id or '-':38} "
            f"{account.practitioner_id or '-':38} {state:9} {account.display_name or ''}"
        )


@user.command(name="disable")
@click.argument("username")
def user_disable(username: str) -> None:
    """Disable a user: their sessions and refresh tokens end at once."""
    from health.auth import accounts

    async def work(session: AsyncSession) -> Any:
        await accounts.disable_user(session, username=username)
        return None

    _in_transaction(work)
    click.echo(f"user {username} disabled")


@user.command(name="case-worker")
@click.argument("username")
@click.option("--revoke", is_flag=True, help="take the right away instead of giving it")
def user_case_worker(username: str, revoke: bool) -> None:
    """Give a user the case-worker right (names and identity numbers on the dashboard)."""
    from health.auth import accounts

    async def work(session: AsyncSession) -> Any:
        await accounts.set_case_worker(session, username=username, case_worker=not revoke)
        return None

    _in_transaction(work)
    click.echo(f"case-worker right of {username} {'revoked' if revoke else 'given'}")


@user.command(name="password")
@click.argument("username")
@click.option(
    "--temporary",
    is_flag=True,
    help="the person must choose her own password at her first login",
)
def user_password(username: str, temporary: bool) -> None:
    """Set a user's password, read from standard input; unlocks the account and ends the
    logins made with the old one."""
    from health.auth import accounts

    password = _read_password(True) or ""

    async def work(session: AsyncSession) -> Any:
        await accounts.set_password(
            session, username=username, password=password, temporary=temporary
        )
        return None

    _in_transaction(work)
    click.echo(f"password of {username} set")


@user.command(name="token")
@click.argument("username")
@click.option("--scope", default="user/*.cruds", show_default=True, help="SMART scopes")
@click.option("--ttl", type=int, default=None, help="lifetime in seconds (default: settings)")
def user_token(username: str, scope: str, ttl: int | None) -> None:
    """Print a bearer access token for USERNAME (an operator's command, for scripts)."""
    from health.auth import accounts
    from health.auth.scopes import parse_scopes
    from health.auth.tokens import TokenSigner, service_secret
    from health.core.settings import VAR_DIR

    settings = get_settings()
    try:
        scopes = parse_scopes(scope)
    except ValueError as error:
        raise click.ClickException(f"scope: {error}") from None
    if "system" in scopes.contexts() or not scopes.scopes:
        raise click.ClickException("scope: a user's token takes user/ or patient/ scopes")
    if "patient" in scopes.contexts():
        raise click.ClickException("scope: patient/ scopes need a patient launch (the web login)")
    if ttl is not None and ttl <= 0:
        raise click.ClickException("ttl: give a positive number of seconds")

    async def work(session: AsyncSession) -> Any:
        return await accounts.get_user(session, username=username)

    account = _in_transaction(work)
    if account is None or account.disabled:
        raise click.ClickException(f"username: no active user {username}")
    signer = TokenSigner(
        service_secret(settings.secret_key, VAR_DIR / "secret.key"), issuer=settings.issuer
    )
    token, _claims = signer.issue(
        subject=f"user:{username}",
        role=account.role,
        organization=account.organization_id,
        practitioner=account.practitioner_id,
        scope=str(scopes),
        case_worker=account.case_worker,
        ttl_seconds=ttl or settings.access_token_ttl,
    )
    click.echo(token)


@main.group()
def client() -> None:
    """API clients: systems (client_credentials) and apps people log in to (SMART launch)."""


@client.command(name="add")
@click.argument("name")
@click.option("--scope", required=True, help="the most it may ask for, e.g. system/*.rs")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="an app's redirect URI")
@click.option("--public", is_flag=True, help="an app that cannot keep a secret (PKCE only)")
def client_add(name: str, scope: str, redirect_uris: tuple[str, ...], public: bool) -> None:
    """Register a client; prints JSON with client_id and client_secret (shown only once)."""
    import json

    from health.auth import accounts
    from health.core.clock import utcnow

    async def work(session: AsyncSession) -> Any:
        return await accounts.add_client(
            session,
            name=name,
            scope=scope,
            now=utcnow(),
            redirect_uris=redirect_uris,
            public=public,
        )

    client_id, secret = _in_transaction(work)
    click.echo(json.dumps({"client_id": client_id, "client_secret": secret}))


@main.group()
def audit() -> None:
    """The audit trail."""


@audit.command(name="verify")
def audit_verify() -> None:
    """Check the audit trail's hash chain; exit status 1 if it was tampered with."""
    from health.auth.audit import ChainReport, chain_key, verify
    from health.auth.tokens import service_secret
    from health.core.database import Database
    from health.core.settings import VAR_DIR

    settings = get_settings()
    key = chain_key(service_secret(settings.secret_key, VAR_DIR / "secret.key"))

    async def run() -> ChainReport:
        database = Database(settings.database_url)
        try:
            return await verify(database, key)
        finally:
            await database.dispose()

    report = asyncio.run(run())
    if report.intact:
        click.echo(f"audit trail intact: {report.checked} entries")
        return
    for problem in report.problems:
        click.echo(f"TAMPERED: {problem}", err=True)
    click.echo(
        f"audit trail NOT intact: {len(report.problems)} problem(s) in {report.checked} entries",
        err=True,
    )
    sys.exit(1)


@main.group()
def outbox() -> None:
    """Messages to other systems (notifications, registry feeds) and their delivery."""


@outbox.command(name="status")
def outbox_status() -> None:
    """How many messages of each topic are pending, delivered and dead."""
    from health.core import outbox as messages

    async def work(session: AsyncSession) -> Any:
        return await messages.counts(session)

    counts = _in_transaction(work)
    if not counts:
        click.echo("the outbox is empty")
    for (topic, status), count in sorted(counts.items()):
        click.echo(f"{topic:24} {status:10} {count}")


@outbox.command(name="dead")
@click.option("--topic", default=None, help="only this topic")
def outbox_dead(topic: str | None) -> None:
    """The dead letters: messages given up on, with their last error."""
    from health.core import outbox as messages

    async def work(session: AsyncSession) -> Any:
        return await messages.messages(session, topic=topic, status=messages.DEAD, limit=1000)

    for message in _in_transaction(work):
        click.echo(
            f"{message.id}\t{message.topic}\t{message.key}\t{message.attempts} attempts\t"
            f"{message.last_error}"
        )


@outbox.command(name="retry")
@click.argument("message_ids", nargs=-1, required=True, type=int)
def outbox_retry(message_ids: tuple[int, ...]) -> None:
    """Send dead letters again (after fixing what refused them)."""
    from health.core import outbox as messages

    async def work(session: AsyncSession) -> Any:
        return [await messages.send_again(session, message_id=i) for i in message_ids]

    done = _in_transaction(work)
    for message_id, again in zip(message_ids, done, strict=True):
        click.echo(f"{message_id}: {'queued again' if again else 'not a dead letter'}")
    if not all(done):
        sys.exit(1)


@main.group()
def consult() -> None:
    """Video consults."""


@consult.command(name="join")
@click.argument("consult_id")
@click.option("--token", required=True, help="bearer token of the joining participant")
@click.option("--server", default="http://127.0.0.1:8000", show_default=True)
@click.option(
    "--video",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="send this file's video instead of the test pattern",
)
@click.option("--duration", default=30.0, show_default=True, type=float, help="seconds to stay")
@click.option(
    "--vitals",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="send the vital-sign readings of this JSON-lines file, as a device gateway",
)
def consult_join(
    consult_id: str,
    token: str,
    server: str,
    video: Path | None,
    duration: float,
    vitals: Path | None,
) -> None:
    """Join a consult with a test pattern (or --video) and a tone; print what was received.

    With --vitals, each line of the file is a reading ({"kind": "blood-pressure",
    "systolic": 148, "diastolic": 92, "unit": "mm[Hg]"}, optionally "afterSeconds"), sent
    over the call's data channel; the summary's "replies" say where each was kept.
    """
    import orjson

    from consult.client import consult_socket_url, read_vitals, run_client

    try:
        readings = read_vitals(vitals) if vitals is not None else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--vitals") from None
    summary = asyncio.run(
        run_client(
            consult_socket_url(server, consult_id),
            token=token,
            seconds=duration,
            video_file=video,
            vitals=readings,
        )
    )
    click.echo(orjson.dumps(summary).decode())
    if summary["errors"]:
        sys.exit(1)


@main.group()
def registry() -> None:
    """The poverty household registry (建档立卡 / 防返贫监测)."""


@registry.command(name="import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def registry_import(file: Path) -> None:
    """Load households from the registry's export: CSV (UTF-8 or GB18030) or XLSX, one row per
    member. Rows that cannot be matched or that conflict are listed; exit status 1 if any
    household could not be imported."""
    from health.core.database import Database
    from integrations.household_registry import (
        RegistryFileError,
        import_registry,
        read_registry_file,
    )
    from records.indexing import SearchIndexer
    from records.outcome import FhirError

    try:
        sheet = read_registry_file(file)
    except RegistryFileError as error:
        raise click.ClickException(str(error)) from None

    async def run() -> list[str]:
        database = Database(get_settings().database_url)
        indexer = SearchIndexer()
        try:
            report = await import_registry(database, indexer, sheet)
            await _after_writes(database, indexer, report.changes)
        finally:
            await database.dispose()
        if report.households_skipped:
            raise _Incomplete(report.lines())
        return report.lines()

    try:
        lines = asyncio.run(run())
    except RegistryFileError as error:
        raise click.ClickException(str(error)) from None
    except FhirError as error:
        raise click.ClickException(f"registry import failed: {error}") from None
    except _Incomplete as incomplete:
        click.echo("\n".join(incomplete.lines))
        sys.exit(1)
    click.echo("\n".join(lines))


@registry.command(name="export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--after",
    type=int,
    default=0,
    show_default=True,
    help="only changes after this 变更序号 (the last one the registry has)",
)
@click.option("--since", help="only changes from this day on (China time), e.g. 2026-10-01")
@click.option("--until", help="only changes before this day (China time)")
@click.option(
    "--encoding",
    type=click.Choice(["utf-8", "gb18030"]),
    default="utf-8",
    show_default=True,
    help="of a CSV file",
)
def registry_export(
    file: Path, after: int, since: str | None, until: str | None, encoding: str
) -> None:
    """Write the illness-poverty flag changes (raised, evidence updated, deactivated) as CSV
    or XLSX (by FILE's suffix) with the registry's Chinese headers, in the order they were
    made."""
    import datetime as dt

    from health.core.database import Database
    from health.poverty.flag_changes import logged_changes
    from integrations.registry_export import RegistryFlagChange, china_time, write_export
    from integrations.spreadsheet import format_of

    try:
        format_of(file)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="FILE") from None
    china = dt.timezone(dt.timedelta(hours=8))
    start, end = _date(since), _date(until)

    async def run() -> list[RegistryFlagChange]:
        database = Database(get_settings().database_url)
        try:
            async with database.transaction(write=False) as session:
                logged = await logged_changes(
                    session,
                    after_seq=after,
                    since=dt.datetime.combine(start, dt.time(), china) if start else None,
                    until=dt.datetime.combine(end, dt.time(), china) if end else None,
                )
        finally:
            await database.dispose()
        rows = []
        for change in logged:
            action, kind, rule = change.label
            rows.append(
                RegistryFlagChange(
                    change.seq,
                    china_time(change.changed_at),
                    change.household_number or "",
                    (change.household_name or "").removesuffix("户"),
                    change.township or "",
                    change.village or "",
                    action,
                    kind,
                    rule,
                    change.rules_version,
                    f"Flag/{change.flag_id}",
                )
            )
        return rows

    rows = asyncio.run(run())
    write_export(file, rows, encoding="utf-8-sig" if encoding == "utf-8" else "gb18030")
    if rows:
        click.echo(
            f"wrote {len(rows)} flag changes (变更序号 {rows[0].seq}–{rows[-1].seq}) to {file}"
        )
    else:
        click.echo(f"no flag changes after 变更序号 {after}; wrote the headers to {file}")


class _Incomplete(Exception):
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines


@main.group()
def poverty() -> None:
    """Illness-poverty flags (因病致贫 / 因病返贫) on households."""


def _rules(path: Path | None) -> RuleSet:
    from health.poverty.rules import RuleFileError, load_rules

    try:
        return load_rules(path or get_settings().poverty_rules)
    except RuleFileError as error:
        raise click.ClickException(str(error)) from None


def _date(value: str | None) -> dt.date | None:
    import datetime as dt

    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a date such as 2026-10-31") from None


@poverty.command(name="recompute")
@click.option("--as-of", "as_of", help="day of assessment (default: today, China time)")
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="rule file (default: HEALTH_POVERTY_RULES or the shipped defaults)",
)
@click.option("--jobs", type=int, default=None, help="worker processes (default: one per CPU)")
def poverty_recompute(as_of: str | None, rules_path: Path | None, jobs: int | None) -> None:
    """Recompute every household's flags; flags whose cause is gone become inactive."""
    import os

    from health.poverty.service import recompute_all_in_processes

    rules = _rules(rules_path)
    day = _date(as_of)
    settings = get_settings()
    report = asyncio.run(
        recompute_all_in_processes(
            settings.database_url,
            rules,
            redis_url=settings.redis_url,
            as_of=day,
            processes=jobs or os.cpu_count() or 1,
        )
    )
    click.echo("\n".join(report.lines()))


@poverty.command(name="household")
@click.argument("number")
@click.option("--as-of", "as_of", help="day of assessment (default: today, China time)")
def poverty_household(number: str, as_of: str | None) -> None:
    """A household's medical costs over the last 12 months, per person and in all, split by
    payer (basic insurance, serious-illness insurance, medical assistance, out-of-pocket),
    and its illness-poverty flags."""
    from health.core.database import Database
    from health.poverty.service import IllnessPovertyService
    from records.indexing import SearchIndexer

    rules = _rules(None)
    day = _date(as_of)

    async def run() -> list[str] | None:
        database = Database(get_settings().database_url)
        try:
            service = IllnessPovertyService(database, SearchIndexer(), rules)
            costs = await service.household_costs(number, as_of=day)
        finally:
            await database.dispose()
        return costs.lines() if costs else None

    lines = asyncio.run(run())
    if lines is None:
        raise click.ClickException(f"no household has 户编号 {number}")
    click.echo("\n".join(lines))


@poverty.command(name="rebuild-costs")
def poverty_rebuild_costs() -> None:
    """Rebuild the table of bill amounts (poverty_costs) from the stored ExplanationOfBenefits,
    Claims and Invoices, after the way they are read has changed; resumes after a crash."""
    from tqdm import tqdm

    from health.core.database import Database
    from health.poverty.derived import BILL_AMOUNTS
    from records.derived import rebuild

    async def run() -> int:
        database = Database(get_settings().database_url)
        bar = tqdm(unit="bill", desc="bill amounts", file=sys.stderr)
        try:
            return await rebuild(
                database,
                BILL_AMOUNTS,
                on_start=lambda total: setattr(bar, "total", total),
                on_batch=bar.update,
            )
        finally:
            bar.close()
            await database.dispose()

    click.echo(f"bill amounts rebuilt from {asyncio.run(run())} bills")


@poverty.command(name="cases")
@click.option("--all", "everything", is_flag=True, help="closed and rejected cases too")
@click.option("--overdue", is_flag=True, help="only open cases whose next step is overdue")
def poverty_cases(everything: bool, overdue: bool) -> None:
    """The illness-poverty follow-up cases, the next due first: Task id, household, stage,
    due date (逾期 when overdue), the township worker and the help given."""
    import datetime as dt

    from health.core.clock import utcnow
    from health.poverty.cases import STAGES
    from health.poverty.casework import CaseRow, list_cases

    now = utcnow()

    async def work(session: AsyncSession) -> list[CaseRow]:
        return await list_cases(
            session, open_only=not everything, overdue_at=now if overdue else None
        )

    china = dt.timezone(dt.timedelta(hours=8))
    rows = _in_transaction(work)
    if not rows:
        click.echo("no cases")
    for row in rows:
        due = row.due_at.astimezone(china).date().isoformat() if row.due_at else "-"
        late = " 逾期 overdue" if row.overdue(now) and row.stage in STAGES else ""
        click.echo(
            f"{row.task_id}\t{row.household_number or '-'} {row.household_name or ''}\t"
            f"{row.township or ''}{row.village or ''}\t{STAGES[row.stage][0]} {row.stage}\t"
            f"due {due}{late}\t{row.owner_name or '未指派 unassigned'}\t{row.help or ''}"
        )


@poverty.command(name="case-step")
@click.argument("task_id")
@click.argument("stage")
@click.option(
    "--as",
    "username",
    required=True,
    help="the case worker taking the step (a user with the case-worker right)",
)
@click.option("--note", help="what was found or done (required for verified)")
@click.option(
    "--help-given",
    "help_given",
    multiple=True,
    help="with assisted: medical-assistance, serious-illness-insurance, special-treatment, "
    "family-doctor-contract, dibao-referral, temporary-assistance, other",
)
@click.option("--reason", help="with rejected: why")
@click.option("--worker", help="with assigned: the township worker's Practitioner id")
def poverty_case_step(
    task_id: str,
    stage: str,
    username: str,
    note: str | None,
    help_given: tuple[str, ...],
    reason: str | None,
    worker: str | None,
) -> None:
    """Take one step on a case as a case worker (through the records, audited as theirs):
    STAGE is verified, assisted, monitoring, closed, rejected, or assigned (with --worker)."""
    from health.app import DEFAULT_FHIR_BASE, case_actor, gate_for, records_context
    from health.auth import accounts
    from health.auth.tokens import service_secret
    from health.core.bus import create_bus
    from health.core.clock import utcnow
    from health.core.database import Database
    from health.core.settings import VAR_DIR
    from health.poverty.cases import STAGES, CaseStepError, CaseView
    from health.poverty.casework import take_step
    from records.indexing import SearchIndexer
    from records.outcome import FhirError

    options = {"stage": "STAGE", "task": "TASK_ID", "help": "--help-given"}
    settings = get_settings()

    async def run() -> CaseView:
        database = Database(settings.database_url)
        bus = create_bus(settings.redis_url, settings.bus_prefix)
        gate = gate_for(
            settings,
            database,
            SearchIndexer(),
            service_secret(settings.secret_key, VAR_DIR / "secret.key"),
        )
        try:
            async with database.transaction(write=False) as session:
                user = await accounts.get_user(session, username=username)
            if user is None or user.disabled:
                raise CaseStepError("as", f"no active user {username}")
            caller = gate.user_caller(user)
            author = (await case_actor(gate)(caller)).case_worker
            if author is None:
                raise CaseStepError("as", f"{username} has not the case-worker right", status=403)
            case, _version = await take_step(
                records_context(settings, gate, bus),
                caller,
                task_id,
                base_url=settings.fhir_base_url or DEFAULT_FHIR_BASE,
                stage=stage,
                author=author,
                at=utcnow(),
                note=note,
                help=help_given,
                reason=reason,
                worker=worker,
            )
            return case
        finally:
            await gate.audit.close()
            await bus.close()
            await database.dispose()

    try:
        case = asyncio.run(run())
    except CaseStepError as error:
        raise click.BadParameter(
            str(error), param_hint=options.get(error.field, f"--{error.field}")
        ) from None
    except FhirError as error:
        raise click.ClickException(f"refused ({error.status}): {error}") from None
    label = STAGES[case.stage][0]
    owner = case.owner.name if case.owner else "未指派 unassigned"
    click.echo(f"Task/{task_id}: {label} {case.stage}, {owner}")


@poverty.command(name="check-rules")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def poverty_check_rules(file: Path) -> None:
    """Check a rule file; print what it sets, or every faulty key."""
    rules = _rules(file)
    click.echo(f"{file}: rules version {rules.version}, valid")
    from health.poverty.rules import RULE_NAMES

    for rule, (chinese, english) in RULE_NAMES.items():
        state = "enabled" if rules.enabled(rule) else "DISABLED"
        click.echo(f"  {chinese} {english}: {state}")


async def _after_writes(
    database: Database, indexer: SearchIndexer, changes: Iterable[Change]
) -> None:
    """Announce what a command wrote, and bring the illness-poverty flags of the households it
    touched up to date: a running ``health serve`` on the in-process bus cannot hear this
    process, so the command does the incremental recompute itself."""
    from health.core.bus import create_bus
    from health.poverty.rules import RuleFileError, load_rules
    from health.poverty.service import IllnessPovertyService
    from records.feed import announce

    changes = list(changes)
    if not changes:
        return
    settings = get_settings()
    bus = create_bus(settings.redis_url, settings.bus_prefix)
    try:
        await announce(bus, changes)
        try:
            rules = load_rules(settings.poverty_rules)
        except RuleFileError as error:
            click.echo(f"illness-poverty flags not recomputed: {error}", err=True)
            return
        service = IllnessPovertyService(database, indexer, rules, bus=bus)
        report = await service.recompute_for_changes(changes)
    finally:
        await bus.close()
    if report.changed:
        click.echo(
            f"illness-poverty flags: {sum(report.raised.values())} raised, "
            f"{sum(report.updated.values())} updated, "
            f"{sum(report.deactivated.values())} deactivated"
        )


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    main()
