from __future__ import annotations

from health.auth.passwords import hash_password, needs_rehash, password_problem, verify_password


class TestHashing:
    def test_right_password_verifies(self) -> None:
        stored = hash_password("correct horse battery")
        assert verify_password(stored, "correct horse battery")

    def test_wrong_password_does_not_verify(self) -> None:
        stored = hash_password("correct horse battery")
        assert not verify_password(stored, "correct horse batterY")
        assert not verify_password(stored, "")

    def test_hash_is_argon2id_and_does_not_contain_the_password(self) -> None:
        stored = hash_password("correct horse battery")
        assert stored.startswith("$argon2id$")
        assert "correct horse battery" not in stored

    def test_hashes_are_salted(self) -> None:
        first = hash_password("correct horse battery")
        second = hash_password("correct horse battery")
        assert first != second
        assert verify_password(first, "correct horse battery")
        assert verify_password(second, "correct horse battery")

    def test_malformed_stored_hash_is_a_mismatch_not_an_error(self) -> None:
        for stored in (
            "",
            "not a hash",
            "$argon2id$v=19$m=x",
            "$argon2id$v=19$m=65536,t=3,p=4$a$b",
        ):
            assert verify_password(stored, "correct horse battery") is False

    def test_fresh_hash_needs_no_rehash_but_a_weaker_one_does(self) -> None:
        assert not needs_rehash(hash_password("correct horse battery"))
        weak = "$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ$ZFF5cJ4n7BN4CeOkZ4Dv0g"
        assert needs_rehash(weak)


class TestPasswordProblem:
    def test_acceptable_passwords(self) -> None:
        assert password_problem("correct horse battery") is None
        assert password_problem("abcdefghij") is None
        assert password_problem("1234567890a") is None

    def test_too_short(self) -> None:
        problem = password_problem("abc123xyz")
        assert problem is not None
        assert "10 characters" in problem

    def test_digits_only(self) -> None:
        problem = password_problem("12345678901234")
        assert problem is not None
        assert "digits" in problem
