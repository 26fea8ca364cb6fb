"""Password hashing with Argon2id, and the rule for what counts as an acceptable new password.

Hashing and verifying take tens of milliseconds of CPU on purpose; async callers run these
functions in a thread (``asyncio.to_thread``) so the event loop keeps serving requests.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MINIMUM_LENGTH = 10

# One hasher for the process, so every hash uses the same parameters and needs_rehash can
# tell when a stored hash was made with older ones.
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """A salted Argon2id hash in PHC string form (``$argon2id$v=19$...``)."""
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``stored_hash``; False, not an error, for a malformed hash."""
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """Whether ``stored_hash`` was made with weaker parameters than the current ones."""
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        # A hash we cannot read should be replaced the next time the password is known.
        return True


def password_problem(password: str) -> str | None:
    """Why ``password`` is not acceptable as a new password, in plain English; None if it is."""
    if len(password) < MINIMUM_LENGTH:
        return f"The password must be at least {MINIMUM_LENGTH} characters long."
    if password.isdigit():
        return "The password must not be made of digits only."
    return None
