from __future__ import annotations

import base64
import json
import stat
import threading
from pathlib import Path

import jwt
import pytest

from health.auth.tokens import InvalidToken, TokenSigner, load_or_create_secret

SECRET = b"k" * 32
NOW = 1_750_000_000.0


def signer(secret: bytes = SECRET, issuer: str = "https://health.example/auth") -> TokenSigner:
    return TokenSigner(secret, issuer=issuer)


def issue(token_signer: TokenSigner, *, ttl_seconds: int = 300, now: float = NOW) -> str:
    token, _ = token_signer.issue(
        subject="user:wangfang",
        role="doctor",
        organization="org-1",
        practitioner="prac-7",
        scope="user/Observation.rs openid",
        ttl_seconds=ttl_seconds,
        now=now,
    )
    return token


def base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TestTokenSigner:
    def test_round_trip(self) -> None:
        token_signer = signer()
        token, issued = token_signer.issue(
            subject="user:wangfang",
            role="doctor",
            organization="org-1",
            practitioner=None,
            scope="user/Observation.rs",
            patient="pat-3",
            ttl_seconds=300,
            now=NOW,
        )
        verified = token_signer.verify(token, now=NOW + 10)
        assert verified == issued
        assert verified.subject == "user:wangfang"
        assert verified.practitioner is None
        assert verified.patient == "pat-3"
        assert verified.expires_at == int(NOW) + 300
        assert verified.token_id

    def test_the_case_worker_right_travels_only_when_given(self) -> None:
        token_signer = signer()
        assert token_signer.verify(issue(token_signer), now=NOW).case_worker is False
        token, _ = token_signer.issue(
            subject="user:caseworker",
            role="commission_analyst",
            organization="org-1",
            practitioner=None,
            scope="user/*.cruds",
            case_worker=True,
            ttl_seconds=300,
            now=NOW,
        )
        assert token_signer.verify(token, now=NOW).case_worker is True
        # A token whose claim is not a boolean is malformed, never read as the right.
        forged = jwt.encode(
            {**jwt.decode(token, options={"verify_signature": False}), "case_worker": "yes"},
            SECRET,
            algorithm="HS256",
        )
        with pytest.raises(InvalidToken, match="malformed"):
            token_signer.verify(forged, now=NOW)

    def test_each_token_has_its_own_id(self) -> None:
        token_signer = signer()
        first = token_signer.verify(issue(token_signer), now=NOW)
        second = token_signer.verify(issue(token_signer), now=NOW)
        assert first.token_id != second.token_id

    def test_expired_token_is_refused(self) -> None:
        token_signer = signer()
        token = issue(token_signer, ttl_seconds=60)
        with pytest.raises(InvalidToken, match="expired") as raised:
            token_signer.verify(token, now=NOW + 120)
        assert token not in str(raised.value)

    def test_token_from_the_future_is_refused(self) -> None:
        token_signer = signer()
        token = issue(token_signer, now=NOW + 600)
        with pytest.raises(InvalidToken, match="future"):
            token_signer.verify(token, now=NOW)

    def test_changed_payload_is_refused(self) -> None:
        token_signer = signer()
        header, payload, signature = issue(token_signer).split(".")
        middle = len(payload) // 2
        changed = "A" if payload[middle] != "A" else "B"
        forged = ".".join([header, payload[:middle] + changed + payload[middle + 1 :], signature])
        with pytest.raises(InvalidToken):
            token_signer.verify(forged, now=NOW)

    def test_raised_role_with_the_old_signature_is_refused(self) -> None:
        token_signer = signer()
        header, payload, signature = issue(token_signer).split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["role"] = "admin"
        forged = ".".join([header, base64url(json.dumps(claims).encode()), signature])
        with pytest.raises(InvalidToken, match="signature"):
            token_signer.verify(forged, now=NOW)

    def test_token_signed_with_another_secret_is_refused(self) -> None:
        token = issue(signer(secret=b"o" * 32))
        with pytest.raises(InvalidToken, match="signature"):
            signer().verify(token, now=NOW)

    def test_unsigned_alg_none_token_is_refused(self) -> None:
        token_signer = signer()
        genuine = token_signer.verify(issue(token_signer), now=NOW)
        header = base64url(b'{"alg":"none","typ":"JWT"}')
        payload = base64url(
            json.dumps(
                {
                    "iss": "https://health.example/auth",
                    "aud": "fhir",
                    "sub": "user:wangfang",
                    "iat": genuine.issued_at,
                    "exp": genuine.expires_at,
                    "jti": "forged",
                    "role": "admin",
                    "scope": "system/*.cruds",
                }
            ).encode()
        )
        with pytest.raises(InvalidToken, match="algorithm"):
            token_signer.verify(f"{header}.{payload}.", now=NOW)

    def test_wrong_issuer_is_refused(self) -> None:
        token = issue(signer(issuer="https://elsewhere.example/auth"))
        with pytest.raises(InvalidToken, match="issuer"):
            signer().verify(token, now=NOW)

    def test_garbage_is_malformed(self) -> None:
        with pytest.raises(InvalidToken, match="malformed"):
            signer().verify("not.a.token", now=NOW)

    def test_short_secret_is_rejected(self) -> None:
        with pytest.raises(ValueError):
            TokenSigner(b"short", issuer="https://health.example/auth")


class TestLoadOrCreateSecret:
    def test_creates_private_file_and_returns_same_secret_later(self, tmp_path: Path) -> None:
        path = tmp_path / "keys" / "nested" / "token.key"
        first = load_or_create_secret(path)
        assert len(first) >= 32
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert bytes.fromhex(path.read_text()) == first
        assert load_or_create_secret(path) == first
        # No candidate files are left behind beside the key.
        assert [entry.name for entry in path.parent.iterdir()] == ["token.key"]

    def test_racing_workers_end_with_one_key(self, tmp_path: Path) -> None:
        path = tmp_path / "token.key"
        workers = 8
        start = threading.Barrier(workers)
        keys: list[bytes] = []
        lock = threading.Lock()

        def worker() -> None:
            start.wait(timeout=10)
            key = load_or_create_secret(path)
            with lock:
                keys.append(key)

        threads = [threading.Thread(target=worker) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert len(keys) == workers
        assert len(set(keys)) == 1
        assert bytes.fromhex(path.read_text()) == keys[0]

    def test_secret_shared_by_two_signers_verifies_across_them(self, tmp_path: Path) -> None:
        path = tmp_path / "token.key"
        issuing = TokenSigner(load_or_create_secret(path), issuer="https://health.example/auth")
        checking = TokenSigner(load_or_create_secret(path), issuer="https://health.example/auth")
        assert checking.verify(issue(issuing), now=NOW).subject == "user:wangfang"
