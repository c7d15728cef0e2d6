"""Who is calling: login sessions (a browser cookie or an API bearer token, the same kind of
random token, stored only as its SHA-256) and the CSRF check for cookie-authenticated requests.

A request authenticated by its cookie must carry the session's CSRF token (form field
``csrf_token`` or header ``X-CSRF-Token``) to change anything. A bearer token needs none:
browsers never attach one on their own. The login form, which has no session yet, uses a
double-submit cookie.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi import Request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from kubetune_studio.errors import Forbidden, Unauthenticated
from kubetune_studio.security import new_token, same, token_hash, verify_password
from kubetune_studio.store.schema import Labeler, LoginSession, now

SESSION_COOKIE = "kubetune_studio_session"
LOGIN_CSRF_COOKIE = "kubetune_studio_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
BAD_LOGIN = "email or password is wrong"
UNKNOWN_EMAIL_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$e4KzuvICvxQutSubykPoaw"
    "$jCJR3FKmfd4G9SpQ2bZj12VsHd2h2Rjqd5fAHror8Kg"
)
"""The hash of a random password nobody knows: checked when the email is unknown, so a wrong
email takes as long as a wrong password."""


@dataclass(frozen=True)
class Caller:
    labeler: Labeler
    login: LoginSession
    by_cookie: bool


def log_in(session: Session, email: str, password: str, hours: float) -> tuple[Labeler, str, str]:
    """(labeler, session token, CSRF token) for a right email and password."""
    labeler = session.scalar(select(Labeler).where(Labeler.email == email.strip().lower()))
    stored = labeler.password_hash if labeler is not None else UNKNOWN_EMAIL_HASH
    if not verify_password(stored, password) or labeler is None or not labeler.active:
        raise Unauthenticated(BAD_LOGIN)
    token = create_login(session, labeler, hours)
    login = session.scalar(select(LoginSession).where(LoginSession.token_hash == token_hash(token)))
    assert login is not None
    return labeler, token, login.csrf_token


def create_login(session: Session, labeler: Labeler, hours: float) -> str:
    """A new login session for the labeler; its token (the store keeps only the hash)."""
    token = new_token()
    session.execute(delete(LoginSession).where(LoginSession.expires_at < now()))
    session.add(
        LoginSession(
            labeler_id=labeler.id,
            token_hash=token_hash(token),
            csrf_token=new_token(),
            expires_at=now() + timedelta(hours=hours),
        )
    )
    session.flush()
    return token


def log_out(session: Session, login: LoginSession) -> None:
    session.delete(login)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def identify(session: Session, request: Request) -> Caller | None:
    token = bearer_token(request)
    by_cookie = token is None
    if token is None:
        token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    login = session.scalar(select(LoginSession).where(LoginSession.token_hash == token_hash(token)))
    if login is None or _aware(login.expires_at) < now() or not login.labeler.active:
        return None
    return Caller(labeler=login.labeler, login=login, by_cookie=by_cookie)


def require_caller(session: Session, request: Request) -> Caller:
    caller = identify(session, request)
    if caller is None:
        raise Unauthenticated("log in first (your session is missing or has expired)")
    return caller


def require_admin(caller: Caller) -> None:
    if not caller.labeler.is_admin:
        raise Forbidden("this needs an admin account")


def check_csrf(caller: Caller, request: Request, form_token: str | None) -> None:
    """Refuses a cookie-authenticated change without the session's CSRF token."""
    if not caller.by_cookie:
        return
    given = form_token or request.headers.get(CSRF_HEADER)
    if not same(given, caller.login.csrf_token):
        raise Forbidden("CSRF token missing or wrong; reload the page and try again")


def check_login_csrf(request: Request, form_token: str | None) -> None:
    if not same(form_token, request.cookies.get(LOGIN_CSRF_COOKIE)):
        raise Forbidden("CSRF token missing or wrong; reload the page and try again")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
