"""The ``health`` command: migrate, serve, seed, import, and the directory import."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from health.core.settings import get_settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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

    uvicorn.run("health.app:create_app", factory=True, host=host, port=port, workers=workers)


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
        try:
            for bundle in bundles:
                outcome = await process_bundle(database, indexer, bundle)
                written += outcome.changes
                entries += len(outcome.response["entry"])
        finally:
            await database.dispose()
        return written, entries - written

    try:
        written, unchanged = asyncio.run(run())
    except FhirError as error:
        raise click.ClickException(f"demo seed failed: {error}") from None
    click.echo(f"demo data: {written} resources written, {unchanged} already up to date")


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
def consult_join(
    consult_id: str, token: str, server: str, video: Path | None, duration: float
) -> None:
    """Join a consult with a test pattern (or --video) and a tone; print what was received."""
    import orjson

    from consult.client import consult_socket_url, run_client

    summary = asyncio.run(
        run_client(
            consult_socket_url(server, consult_id),
            token=token,
            seconds=duration,
            video_file=video,
        )
    )
    click.echo(orjson.dumps(summary).decode())
    if summary["errors"]:
        sys.exit(1)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    main()
