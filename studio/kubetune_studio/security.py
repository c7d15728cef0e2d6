"""Passwords (argon2id, via argon2-cffi) and random tokens (stored only as their SHA-256)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_BYTES = 32


def password_hasher() -> PasswordHasher:
    return PasswordHasher()


def hash_password(password: str) -> str:
    return password_hasher().hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return password_hasher().verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    """A random URL-safe token (256 bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """What the store keeps of a session token: a lookup key that cannot be used to log in."""
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two secrets (False when either is missing)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode(), b.encode())
