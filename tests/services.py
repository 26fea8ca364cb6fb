"""Real servers for tests and benchmarks: a throwaway PostgreSQL cluster, Redis, and the app.

Each starts on a free loopback port in a temporary folder and is removed afterwards. The
PostgreSQL cluster is made with the machine's own ``initdb`` (run as the ``postgres`` user
when we are root, as PostgreSQL refuses to run as root). ``HEALTH_TEST_POSTGRES_URL`` and
``HEALTH_TEST_REDIS_URL`` point the suite at servers that are already running instead.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED = PROJECT_ROOT.parent / "shared"


class ServiceUnavailable(RuntimeError):
    """The machine lacks what a server needs; the message says what to install."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, *, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as error:  # still starting
            last = error
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not become ready in {timeout:.0f} s ({last})")


def signal_group(process: subprocess.Popen[Any], signum: int) -> None:
    """Send ``signum`` to the process group of ``process``, started with
    ``start_new_session=True``: the process and whatever it started (runuser's postgres, a
    server's workers), so that none of them outlives a kill."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _as_postgres_user(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def query_database(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one read-only SQL statement, through the project's own engine setup."""
    import asyncio

    from sqlalchemy import text

    from health.core.database import Database

    async def fetch() -> list[tuple[Any, ...]]:
        database = Database(database_url)
        try:
            async with database.transaction(write=False) as session:
                return [tuple(row) for row in (await session.execute(text(sql))).all()]
        finally:
            await database.dispose()

    return asyncio.run(fetch())


class PostgresServer:
    def __init__(self, *, fsync: bool = False) -> None:
        self.external = os.environ.get("HEALTH_TEST_POSTGRES_URL")
        self.fsync = fsync
        self.process: subprocess.Popen[bytes] | None = None
        self.directory: str | None = None
        self.port = 0

    def start(self) -> PostgresServer:
        if self.external:
            return self
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = candidates[-1] if candidates else shutil.which("initdb")
        if initdb is None:
            raise ServiceUnavailable("PostgreSQL is not installed (apt-get install postgresql)")
        bin_dir = Path(initdb).parent
        self.directory = tempfile.mkdtemp(prefix="health-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        data = os.path.join(self.directory, "data")
        subprocess.run(
            _as_postgres_user(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    data,
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.port = free_port()
        settings = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.directory}",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=256MB",
        ]
        if not self.fsync:
            settings += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        self.process = subprocess.Popen(
            _as_postgres_user(
                [str(bin_dir / "postgres"), "-D", data, "-p", str(self.port), *settings]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(
            lambda: (
                subprocess.run(
                    [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                    capture_output=True,
                ).returncode
                == 0
            ),
            what="PostgreSQL",
        )
        return self

    def url(self, database: str = "postgres") -> str:
        if self.external:
            base = self.external.rsplit("/", 1)[0]
            return f"{base}/{database}"
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import asyncio

        import asyncpg

        admin = self.url("postgres").replace("postgresql+asyncpg://", "postgresql://")

        async def create() -> None:
            connection = await asyncpg.connect(admin)
            try:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await connection.execute(f'CREATE DATABASE "{name}"')
            finally:
                await connection.close()

        asyncio.run(create())
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None:
            # To the process group: as root the process is runuser, which ignores SIGINT and
            # does not pass it on, so postgres itself must get it (SIGINT: fast shutdown).
            # Sent to runuser alone, the stop waited 30 s, killed runuser and left postgres
            # running.
            signal_group(self.process, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
            if self.process.poll() is None:
                signal_group(self.process, signal.SIGKILL)
                self.process.wait()
            self.process = None
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


class RedisServer:
    def __init__(self) -> None:
        self.external = os.environ.get("HEALTH_TEST_REDIS_URL")
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> RedisServer:
        if self.external:
            return self
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceUnavailable("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")

        wait_until(ping, what="Redis")
        return self

    @property
    def url(self) -> str:
        return self.external or f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class AppServer:
    """``health serve`` in a subprocess, on a database that has been migrated.

    Each server has its own signing secret; :meth:`cli` runs ``health`` commands against the
    same database with the same secret, and :meth:`system_token` is the bearer token of a
    system client with every scope (``system/*.cruds``), as a hospital system would hold.
    """

    def __init__(
        self,
        database_url: str,
        *,
        redis_url: str | None = None,
        workdir: Path | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.workdir = workdir or PROJECT_ROOT
        self.settings = settings or {}
        self.secret = secrets.token_hex(32)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._token: tuple[str, float] | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTH_")}
        env["HEALTH_DATABASE_URL"] = self.database_url
        env["HEALTH_SECRET_KEY"] = self.secret
        if self.redis_url:
            env["HEALTH_REDIS_URL"] = self.redis_url
        env.update(self.settings)
        return env

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``health ARGS...`` with this server's settings."""
        return subprocess.run(
            [sys.executable, "-m", "health.cli", *args],
            cwd=self.workdir,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def cli(self, *args: str, input: str | None = None) -> str:
        """The standard output of ``health ARGS...``, which must succeed."""
        done = self.run(*args, input=input)
        if done.returncode != 0:
            raise RuntimeError(f"health {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def client_token(self, client_id: str, secret: str, scope: str | None = None) -> str:
        form = {"grant_type": "client_credentials"}
        if scope:
            form["scope"] = scope
        response = httpx.post(
            f"{self.url}/auth/token", data=form, auth=(client_id, secret), timeout=60
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def system_token(self) -> str:
        """A system client's token with every scope, renewed well before it expires."""
        if self._token is None or time.monotonic() - self._token[1] > 600:
            registered = json.loads(self.cli("client", "add", "tests", "--scope", "system/*.cruds"))
            token = self.client_token(registered["client_id"], registered["client_secret"])
            self._token = (token, time.monotonic())
        return self._token[0]

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.system_token()}"}

    def start(self) -> AppServer:
        self.port = free_port()
        log = tempfile.NamedTemporaryFile(prefix="health-app-", suffix=".log", delete=False)
        self.log_path = Path(log.name)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "health.cli", "serve", "--port", str(self.port)],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the app exited: {self.log()}")
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200

        wait_until(healthy, what="the app")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""

    def kill(self) -> None:
        """``kill -9``: no shutdown, no cleanup, as a crash or a power cut."""
        if self.process is not None:
            signal_group(self.process, signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None


def change_database(database_url: str, sql: str) -> None:
    """Run one SQL statement that changes the database, as someone with its password could."""
    import asyncio

    from sqlalchemy import text

    from health.core.database import Database

    async def run() -> None:
        database = Database(database_url)
        try:
            async with database.transaction(write=True) as session:
                await session.execute(text(sql))
        finally:
            await database.dispose()

    asyncio.run(run())
