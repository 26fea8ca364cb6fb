"""A running app with the demo network and a few demo households, per database, and a real
headless Chromium driven by Playwright.

The demo seed with 20 patients puts its first households in 闽宁镇's villages — the first
in 原隆村, the demo village doctor's clinic — so the village doctor has patients of her own
and the township doctor sees them all. Screenshots go to ``test-artifacts/screenshots``.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from health.cli import run_migrations
from health.core.naming import ORGANIZATION_CODE_SYSTEM
from tests.conftest import BACKENDS
from tests.services import PROJECT_ROOT, AppServer, PostgresServer

T = TypeVar("T")

DEMO_PASSWORD = "yinchuan-demo"
VILLAGE = "640121105201"  # 闽宁镇原隆村卫生室
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
CHROMIUM = os.environ.get("HEALTH_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
]
ROLES = {
    "village-doctor": "village_doctor",
    "township-doctor": "township_doctor",
    "specialist": "specialist",
    "analyst": "commission_analyst",
    "case-worker": "commission_analyst",
    "admin": "admin",
}


@dataclass
class WebApp:
    server: AppServer
    backend: str
    system: httpx.Client
    village: str  # the Organization id of 原隆村卫生室

    @property
    def url(self) -> str:
        return self.server.url

    def token(self, username: str) -> str:
        return self.server.cli("user", "token", username).strip()

    def as_user(self, username: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/fhir",
            headers={"Authorization": f"Bearer {self.token(username)}"},
            timeout=60,
        )

    def village_patients(self) -> list[dict[str, Any]]:
        found = self.system.get(
            "/Patient", params={"organization": f"Organization/{self.village}", "_count": "50"}
        ).json()
        return [e["resource"] for e in found.get("entry", [])]


@pytest.fixture(scope="session", params=BACKENDS)
def web(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebApp]:
    backend = request.param
    folder = tmp_path_factory.mktemp(f"web-{backend}")
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{folder / 'health.db'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = in_thread(postgres.create_database, f"health_web_{uuid.uuid4().hex[:12]}")
    in_thread(run_migrations, url)
    server = AppServer(url, settings={"HEALTH_LOGINS_PER_ADDRESS_PER_MINUTE": "200"})
    server.cli("seed", "--demo", "--patients", "20")
    server.start()
    app = web_app(server, backend)
    try:
        yield app
    finally:
        app.system.close()
        server.stop()


def web_app(server: AppServer, backend: str) -> WebApp:
    """A running app with the demo directory, as the tests hold it: a system client with
    every scope, and the id of the demo village clinic."""
    system = httpx.Client(
        base_url=f"{server.url}/fhir",
        headers={"Authorization": f"Bearer {server.system_token()}"},
        timeout=60,
    )
    found = system.get(
        "/Organization", params={"identifier": f"{ORGANIZATION_CODE_SYSTEM}|{VILLAGE}"}
    ).json()
    return WebApp(server, backend, system, found["entry"][0]["resource"]["id"])


def in_thread(work: Callable[..., T], *args: Any) -> T:
    """Run ``work`` in a thread of its own: Playwright's sync API keeps an event loop running
    in the test thread, where ``asyncio.run`` (migrations, creating a database) cannot."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work, *args).result()


class Session:
    """A person's browser session over plain HTTP (cookies, forms), for the page walker."""

    def __init__(self, app: WebApp, username: str, password: str = DEMO_PASSWORD) -> None:
        self.http = httpx.Client(base_url=app.url, timeout=60, follow_redirects=False)
        page = self.http.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, page.text[:500]
        response = self.http.post(
            "/login",
            data={"username": username, "password": password, "csrf_token": token.group(1)},
        )
        assert response.status_code == 303, response.text[:500]

    def csrf(self) -> str:
        token = re.search(r'name="csrf-token" content="([^"]+)"', self.http.get("/").text)
        assert token
        return token.group(1)

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Chromium through Playwright's sync API, for one module: while it runs, its event loop
    holds the main thread, which asyncio tests of other folders need after these."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium: Any, web: WebApp) -> Iterator[Any]:
    """A fresh browser context (no cookies) at 1024×768 in Chinese, as a clinic's old PC."""
    context = chromium.new_context(
        viewport={"width": 1024, "height": 768}, locale="zh-CN", base_url=web.url
    )
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def screenshot(page: Any, web: WebApp, name: str) -> Path:
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{web.backend}-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page: Any, username: str, password: str = DEMO_PASSWORD) -> None:
    page.goto("/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit].primary")
    page.wait_for_url(re.compile(r".*/$"))
