"""Logging in: web sessions and their CSRF protection, lockout and throttling, the SMART app
launch (driven by fhirclient, a real SMART client), refresh-token rotation and replay,
client_credentials, and what every response carries (security headers, closed CORS, no
personal data in the logs)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import secrets
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fhirclient.client import FHIRClient

from records.validation.resident_id import RESIDENT_ID_SYSTEM, make_resident_id
from tests.auth.conftest import Network, fhir_client
from tests.services import AppServer

DEMO_PASSWORD = "yinchuan-demo"
REDIRECT = "http://127.0.0.1:9/callback"


def form_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


def hidden_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html))


class Browser:
    """What a browser does for these pages: keeps cookies, reads forms, posts them back."""

    def __init__(self, server: AppServer) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=60, follow_redirects=False)

    def login(
        self, username: str, password: str = DEMO_PASSWORD, next: str = "/"
    ) -> httpx.Response:
        page = self.http.get("/login", params={"next": next})
        assert page.status_code == 200
        return self.http.post(
            "/login",
            data={
                "username": username,
                "password": password,
                "csrf_token": form_token(page.text),
                "next": next,
            },
        )

    def csrf(self) -> str:
        return form_token(self.http.get("/").text)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def browser(network: Network) -> Iterator[Browser]:
    client = Browser(network.server)
    yield client
    client.close()


class TestWebLogin:
    def test_login_sets_a_protected_session_and_shows_the_home_page(self, browser: Browser) -> None:
        response = browser.login("village-doctor")
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert "health_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        home = browser.http.get("/")
        assert home.status_code == 200
        assert "原隆村乡村医生" in home.text  # her name on the page, in Chinese by default
        assert home.headers["content-type"].startswith("text/html")

    def test_wrong_password_and_unknown_user_answer_alike(self, browser: Browser) -> None:
        wrong = browser.login("village-doctor", "not-the-password")
        unknown = browser.login(f"nobody-{uuid.uuid4().hex[:8]}", "not-the-password")
        assert wrong.status_code == unknown.status_code == 401
        assert "用户名或密码错误" in wrong.text and "用户名或密码错误" in unknown.text

    def test_next_never_leaves_the_site(self, browser: Browser) -> None:
        response = browser.login("village-doctor", next="https://evil.example/steal")
        assert response.headers["location"] == "/"

    def test_a_login_form_without_its_token_is_refused(self, network: Network) -> None:
        forged = httpx.post(
            f"{network.server.url}/login",
            data={"username": "village-doctor", "password": DEMO_PASSWORD, "csrf_token": "x"},
        )
        assert forged.status_code == 403
        assert "health_session" not in forged.headers.get("set-cookie", "")

    def test_forms_and_api_writes_need_the_sessions_csrf_token(
        self, network: Network, browser: Browser
    ) -> None:
        assert browser.login("hostile", "hostile-password-1").status_code == 303
        patient = network.patients["b"].id
        # Another site makes her browser post: no token, nothing done.
        assert (
            browser.http.post(
                "/access/break-glass", data={"patient": patient, "reason": "forged request"}
            ).status_code
            == 403
        )
        reading = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "体温"},
            "subject": {"reference": f"Patient/{patient}"},
        }
        headers = {"Content-Type": "application/fhir+json"}
        refused = browser.http.post("/fhir/Observation", json=reading, headers=headers)
        assert refused.status_code == 403
        # Her own page's script sends the token: accepted, and reads need none.
        accepted = browser.http.post(
            "/fhir/Observation",
            json=reading,
            headers={**headers, "X-CSRF-Token": browser.csrf()},
        )
        assert accepted.status_code == 201
        assert browser.http.get(f"/fhir/Patient/{patient}").status_code == 200
        assert browser.http.post("/logout").status_code == 403  # logout is a form too
        assert browser.http.get("/").status_code == 200

    def test_logout_ends_the_session(self, browser: Browser) -> None:
        browser.login("township-doctor")
        stolen = browser.http.cookies.get("health_session")
        response = browser.http.post("/logout", data={"csrf_token": browser.csrf()})
        assert response.status_code == 303
        again = httpx.get(f"{browser.http.base_url}/", cookies={"health_session": stolen or ""})
        assert again.status_code == 303 and again.headers["location"].startswith("/login")

    def test_language_switch(self, browser: Browser) -> None:
        browser.http.get("/lang/en")
        page = browser.http.get("/login")
        assert 'lang="en"' in page.text and "Log in" in page.text


class TestBruteForce:
    def test_repeated_failures_lock_the_account_until_reset(self, network: Network) -> None:
        username = f"lock-{uuid.uuid4().hex[:8]}"
        network.server.cli(
            "user",
            "add",
            username,
            "--role",
            "village_doctor",
            "--org",
            "640121105201",
            "--password-stdin",
            input="right-password-1\n",
        )
        browser = Browser(network.server)
        try:
            for _ in range(5):
                assert browser.login(username, "wrong-password").status_code == 401
            # A guesser cannot tell the locked account from a name that does not exist.
            guessed = browser.login(username, "another-guess")
            unknown = browser.login(f"nobody-{uuid.uuid4().hex[:8]}", "another-guess")
            assert guessed.status_code == unknown.status_code == 401
            assert "锁定" not in guessed.text and "用户名或密码" in guessed.text
            # Whoever knows the password is told why it does not work.
            locked = browser.login(username, "right-password-1")
            assert locked.status_code == 401 and "锁定" in locked.text
            network.server.cli("user", "password", username, input="new-password-22\n")
            assert browser.login(username, "new-password-22").status_code == 303
        finally:
            browser.close()

    def test_too_many_attempts_from_one_address_are_throttled(self, network: Network) -> None:
        # A second server on the same database, with its own counters and a low limit.
        server = AppServer(
            network.server.database_url,
            settings={"HEALTH_LOGINS_PER_ADDRESS_PER_MINUTE": "3"},
        )
        server.secret = network.server.secret
        server.start()
        browser = Browser(server)
        try:
            statuses = [browser.login("analyst", "wrong-password").status_code for _ in range(4)]
            assert statuses == [401, 401, 401, 429]
            assert browser.login("analyst").status_code == 429  # even the right one, for now
        finally:
            browser.close()
            server.stop()

    def test_disabling_a_user_ends_her_sessions(self, network: Network) -> None:
        username = f"leaver-{uuid.uuid4().hex[:8]}"
        network.server.cli(
            "user",
            "add",
            username,
            "--role",
            "village_doctor",
            "--org",
            "640121105202",
            "--password-stdin",
            input="leaving-soon-1\n",
        )
        browser = Browser(network.server)
        try:
            assert browser.login(username, "leaving-soon-1").status_code == 303
            assert browser.http.get("/").status_code == 200
            network.server.cli("user", "disable", username)
            assert browser.http.get("/").status_code == 303
            assert browser.login(username, "leaving-soon-1").status_code == 401
        finally:
            browser.close()


def _app_client(network: Network, scope: str) -> str:
    registered = json.loads(
        network.server.cli(
            "client",
            "add",
            f"app-{uuid.uuid4().hex[:6]}",
            "--scope",
            scope,
            "--redirect-uri",
            REDIRECT,
            "--public",
        )
    )
    assert registered["client_secret"] is None
    return str(registered["client_id"])


def _approve(browser: Browser, authorize_url: str, **extra: str) -> httpx.Response:
    page = browser.http.get(authorize_url)
    assert page.status_code == 200, page.text[:1000]
    fields = hidden_fields(page.text)
    return browser.http.post("/auth/authorize", data={**fields, "decision": "allow", **extra})


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def _authorize_url(network: Network, client_id: str, scope: str, challenge: str) -> str:
    query = httpx.QueryParams(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "scope": scope,
            "state": "s1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "aud": f"{network.server.url}/fhir",
        }
    )
    return f"/auth/authorize?{query}"


def _code(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text[:1000]
    location = response.headers["location"]
    assert location.startswith(REDIRECT)
    return parse_qs(urlsplit(location).query)["code"][0]


def _exchange(network: Network, **form: str) -> httpx.Response:
    return httpx.post(f"{network.server.url}/auth/token", data=form)


def _redeem(network: Network, client_id: str, code: str, verifier: str) -> httpx.Response:
    return _exchange(
        network,
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        code_verifier=verifier,
        client_id=client_id,
    )


def _offline_login(network: Network, browser: Browser) -> tuple[str, str, str]:
    """The village doctor approves a new app with offline access: (client id, code, verifier)."""
    client_id = _app_client(network, "user/*.rs offline_access")
    verifier, challenge = _pkce()
    browser.login("village-doctor")
    url = _authorize_url(network, client_id, "user/*.rs offline_access", challenge)
    return client_id, _code(_approve(browser, url)), verifier


class TestSmartLaunch:
    def test_fhirclient_launches_against_the_server(
        self, network: Network, browser: Browser
    ) -> None:
        client_id = _app_client(network, "user/*.rs openid fhirUser offline_access")
        smart = FHIRClient(
            settings={
                "app_id": client_id,
                "api_base": f"{network.server.url}/fhir",
                "redirect_uri": REDIRECT,
                "scope": "user/*.rs openid fhirUser offline_access",
            }
        )
        try:
            assert smart.prepare() is False  # it must authorize first
            assert browser.login("village-doctor").status_code == 303
            approved = _approve(browser, smart.authorize_url.replace(network.server.url, ""))
            assert approved.status_code == 303
            smart.handle_callback(approved.headers["location"])
            assert smart.ready
            a = network.patients["a"]
            patient = smart.server.request_json(f"Patient/{a.id}")
            assert patient["id"] == a.id
            # The token acts for her: another clinic's patient stays hidden.
            with pytest.raises(Exception, match="404"):
                smart.server.request_json(f"Patient/{network.patients['b'].id}")
            # user/*.rs: reading, not writing.
            write = httpx.post(
                f"{network.server.url}/fhir/Patient",
                json={"resourceType": "Patient"},
                headers={
                    "Authorization": f"Bearer {smart.server.auth.access_token}",
                    "Content-Type": "application/fhir+json",
                },
            )
            assert write.status_code == 403
            assert smart.server.auth.refresh_token
        finally:
            smart.server.session.close()

    def test_refresh_tokens_rotate_and_a_replay_revokes_the_login(
        self, network: Network, browser: Browser
    ) -> None:
        client_id, code, verifier = _offline_login(network, browser)
        first = _redeem(network, client_id, code, verifier).json()
        assert first["token_type"] == "Bearer" and first["refresh_token"]
        # The code was spent: a second exchange is refused and revokes what it gave.
        replayed_code = _redeem(network, client_id, code, verifier)
        assert replayed_code.status_code == 400
        assert replayed_code.json()["error"] == "invalid_grant"
        refused = _exchange(
            network,
            grant_type="refresh_token",
            refresh_token=first["refresh_token"],
            client_id=client_id,
        )
        assert refused.status_code == 400

    def test_a_stolen_refresh_token_dies_with_the_users(
        self, network: Network, browser: Browser
    ) -> None:
        client_id, code, verifier = _offline_login(network, browser)
        tokens = _redeem(network, client_id, code, verifier).json()
        stolen = tokens["refresh_token"]
        rotated = _exchange(
            network, grant_type="refresh_token", refresh_token=stolen, client_id=client_id
        )
        assert rotated.status_code == 200
        newest = rotated.json()["refresh_token"]
        assert newest != stolen
        # The thief replays the old one: refused, and the user's newest one is revoked too.
        replay = _exchange(
            network, grant_type="refresh_token", refresh_token=stolen, client_id=client_id
        )
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        after = _exchange(
            network, grant_type="refresh_token", refresh_token=newest, client_id=client_id
        )
        assert after.status_code == 400

    def test_pkce_is_required_and_checked(self, network: Network, browser: Browser) -> None:
        client_id = _app_client(network, "user/*.rs")
        _verifier, challenge = _pkce()
        browser.login("village-doctor")
        no_pkce = browser.http.get(
            _authorize_url(network, client_id, "user/*.rs", challenge).replace(
                "code_challenge_method=S256", "code_challenge_method=plain"
            )
        )
        assert no_pkce.status_code == 303 and "error=invalid_request" in no_pkce.headers["location"]
        code = _code(_approve(browser, _authorize_url(network, client_id, "user/*.rs", challenge)))
        wrong = _redeem(network, client_id, code, _pkce()[0])
        assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"

    def test_an_unregistered_redirect_is_never_followed(
        self, network: Network, browser: Browser
    ) -> None:
        client_id = _app_client(network, "user/*.rs")
        browser.login("village-doctor")
        url = _authorize_url(network, client_id, "user/*.rs", _pkce()[1]).replace(
            "127.0.0.1%3A9", "evil.example"
        )
        page = browser.http.get(url)
        assert page.status_code == 400
        assert "evil.example" not in page.headers.get("location", "")

    def test_a_patient_launch_sees_that_patient_only(
        self, network: Network, browser: Browser
    ) -> None:
        client_id = _app_client(network, "patient/*.rs launch/patient")
        verifier, challenge = _pkce()
        browser.login("township-doctor")
        url = _authorize_url(network, client_id, "patient/*.rs launch/patient", challenge)
        # She may only choose a patient in her care.
        outside = _approve(browser, url, patient=network.patients["c"].id)
        assert outside.status_code == 400
        a = network.patients["a"]
        code = _code(_approve(browser, url, patient=a.id))
        tokens = _redeem(network, client_id, code, verifier).json()
        assert tokens["patient"] == a.id
        with fhir_client(network.server, tokens["access_token"]) as app:
            assert app.get(f"/Patient/{a.id}").status_code == 200
            assert app.get(f"/Observation/{a.observation}").status_code == 200
            # The township doctor sees b too, but this launch is for a.
            assert app.get(f"/Patient/{network.patients['b'].id}").status_code == 404


class TestClientCredentials:
    def _system(self, network: Network, scope: str) -> tuple[str, str]:
        registered = json.loads(
            network.server.cli("client", "add", f"his-{uuid.uuid4().hex[:6]}", "--scope", scope)
        )
        return registered["client_id"], registered["client_secret"]

    def test_a_system_gets_what_it_was_registered_for_and_no_more(self, network: Network) -> None:
        client_id, secret = self._system(network, "system/Patient.rs")
        token = httpx.post(
            f"{network.server.url}/auth/token",
            data={"grant_type": "client_credentials", "scope": "system/*.cruds"},
            auth=(client_id, secret),
        ).json()
        assert token["scope"] == "system/Patient.rs"
        assert "refresh_token" not in token
        with fhir_client(network.server, token["access_token"]) as his:
            assert his.get(f"/Patient/{network.patients['c'].id}").status_code == 200
            assert his.get(f"/Observation/{network.patients['c'].observation}").status_code == 403
            assert his.post("/Patient", json={"resourceType": "Patient"}).status_code == 403

    def test_a_wrong_secret_is_refused(self, network: Network) -> None:
        client_id, _ = self._system(network, "system/*.rs")
        refused = httpx.post(
            f"{network.server.url}/auth/token",
            data={"grant_type": "client_credentials"},
            auth=(client_id, "wrong"),
        )
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
        assert refused.headers["cache-control"] == "no-store"

    def test_smart_configuration_describes_the_endpoints(self, network: Network) -> None:
        for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
            config = httpx.get(f"{network.server.url}{path}").json()
            assert config["token_endpoint"] == f"{network.server.url}/auth/token"
            assert "S256" in config["code_challenge_methods_supported"]
            assert "permission-v2" in config["capabilities"]


class TestWhatResponsesCarry:
    def test_security_headers_on_pages_and_api(self, network: Network) -> None:
        for response in (
            httpx.get(f"{network.server.url}/login"),
            httpx.get(f"{network.server.url}/fhir/metadata"),
            network.system.get(f"/Patient/{network.patients['a'].id}"),
        ):
            headers = response.headers
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["cache-control"] == "no-store"
            assert headers["referrer-policy"] == "no-referrer"

    def test_cors_is_closed_unless_configured(self, network: Network) -> None:
        preflight = httpx.options(
            f"{network.server.url}/fhir/Patient",
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert "access-control-allow-origin" not in preflight.headers

    def test_no_resident_id_name_or_token_reaches_the_log(self, network: Network) -> None:
        resident_id = make_resident_id("640121", dt.date(1961, 3, 9), 417, "female")
        token = network.token("village-doctor")
        with network.as_user("village-doctor") as doctor:
            doctor.get("/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{resident_id}"})
            doctor.get("/Patient", params={"name": "马福兰"})
            doctor.post(
                "/Patient",
                json={
                    "resourceType": "Patient",
                    "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": resident_id[:-1] + "0"}],
                },
            )
        log = network.server.log_path.read_text(errors="replace") if network.server.log_path else ""
        assert "GET /fhir/Patient?" in log  # the requests are logged...
        for secret in (resident_id, resident_id[:-1] + "0", "马福兰", token):
            assert secret not in log  # ...without what they carried
