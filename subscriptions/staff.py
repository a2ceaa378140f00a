"""Staff accounts: passwords (argon2id), browser sessions, TOTP second factor.

A browser session is a random token in an HttpOnly cookie; only its SHA-256 is stored, with
the session's CSRF token. It ends after ``SESSION_IDLE`` without use, after ``SESSION_MAX``
in any case, at logout, when the staff member ends it from their account page, and, for every
session of the account, when the password changes or the account is deactivated.

TOTP (RFC 6238, 30-second steps, one step of clock drift either way) is required for
admins and optional for the other roles. Its seed is stored encrypted with a key derived
from the app secret, and a code is accepted once: the step it belongs to is remembered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache

import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import update
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.ratelimit import Limit, SlidingWindow
from subscriptions.auth import token_hash
from subscriptions.errors import AlreadyExists, InvalidInput
from subscriptions.models import (
    StaffRole,
    StaffSession,
    StaffToken,
    StaffUser,
    StaffUserCreate,
)

_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """Verified against when no account matches, so an unknown address costs the same time
    (made on first use: an argon2 hash takes a fifth of a second)."""
    return _hasher.hash(secrets.token_urlsafe(16))


SESSION_COOKIE = "mm_session"
SESSION_IDLE = timedelta(hours=2)
SESSION_MAX = timedelta(hours=12)
_TOUCH_EVERY = timedelta(minutes=1)  # last_seen_at is written at most this often
MIN_PASSWORD = 12
TOTP_ISSUER = "mailmag"


MAX_CODE_TRIES = 5
DEVICE_COOKIE = "mm_device"
DEVICE_DAYS = 180


@dataclass
class LoginGuard:
    """Login limits of one process, each over 15 minutes, so that nobody can lock a staff
    member out by failing to log in as them:

    - ``by_address_client``: 10 attempts at one address from one client;
    - ``by_client``: 30 attempts from one client, whatever the addresses;
    - ``by_address``: 50 attempts at one address from clients it never logged in from, which
      slows guessing spread over many clients without shutting the owner out: a client that
      completed a login to the account (password, and TOTP where it has one) carries a
      device cookie for it (``DEVICE_COOKIE``, a keyed digest of the address, for
      ``DEVICE_DAYS``), and is held back only by its own attempts (``by_address_client``);
    - ``wrong_codes``: wrong TOTP codes per half-way session, which then ends.

    A device cookie lets nobody in: it only spares its client the limits that strangers'
    attempts fill. The owner on a new device during an attack on their address waits the
    15 minutes out, or logs in from a device they used before.
    """

    device_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    by_address_client: SlidingWindow = field(default_factory=lambda: SlidingWindow(Limit(10, 900)))
    by_client: SlidingWindow = field(default_factory=lambda: SlidingWindow(Limit(30, 900)))
    by_address: SlidingWindow = field(default_factory=lambda: SlidingWindow(Limit(50, 900)))
    wrong_codes: SlidingWindow = field(
        default_factory=lambda: SlidingWindow(Limit(MAX_CODE_TRIES, 900))
    )

    @classmethod
    def for_secret(cls, app_secret: bytes) -> LoginGuard:
        """The guard whose device cookies every process of this deployment reads alike."""
        return cls(device_key=hmac.new(app_secret, b"mailmag/staff-device/v1", "sha256").digest())

    def device_cookie(self, address: str) -> str:
        """The device cookie of a client that logged in to the account at ``address``."""
        normalised = normalise_staff_email(address)
        return hmac.new(self.device_key, normalised.encode(), "sha256").hexdigest()

    def refusal(self, address: str, client: str, device: str) -> float | None:
        """Count one login attempt at ``address`` from ``client`` (with the ``device``
        cookie it sent, or ""): None when it may go ahead, else seconds to wait."""
        held = [self.by_address_client.check(f"{address}\n{client}")]
        if not hmac.compare_digest(device.encode(), self.device_cookie(address).encode()):
            held += [self.by_client.check(client), self.by_address.check(address)]
        waits = [wait for wait in held if wait is not None]
        return max(waits) if waits else None


def normalise_staff_email(email: str) -> str:
    return email.strip().lower()


def create_staff_user(*, session: Session, data: StaffUserCreate) -> StaffUser:
    email = normalise_staff_email(data.email)
    if session.exec(select(StaffUser).where(StaffUser.email == email)).first() is not None:
        raise AlreadyExists(f"a staff account for {email} already exists")
    user = StaffUser(
        email=email,
        display_name=data.display_name,
        role=data.role,
        password_hash=_hasher.hash(data.password),
    )
    session.add(user)
    session.flush()
    return user


def verify_password(user: StaffUser, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def authenticate(session: Session, email: str, password: str) -> StaffUser | None:
    """The active account with this address and password, in the same time either way."""
    user = session.exec(
        select(StaffUser).where(StaffUser.email == normalise_staff_email(email))
    ).first()
    if user is None or not user.active:
        verify_password(StaffUser(email="", role=StaffRole.viewer, password_hash=_dummy_hash()), "")
        return None
    return user if verify_password(user, password) else None


def set_password(session: Session, user: StaffUser, password: str) -> None:
    """A new password; every session of the account ends (API tokens stay: they are listed,
    and revocable, on the account page)."""
    if not MIN_PASSWORD <= len(password) <= 1024:
        raise InvalidInput("password", f"a password has {MIN_PASSWORD} to 1024 characters")
    user.password_hash = _hasher.hash(password)
    user.password_changed_at = utcnow()
    session.add(user)
    end_sessions(session, user)


def deactivate(session: Session, user: StaffUser) -> None:
    """The account can no longer log in; its sessions and API tokens end now."""
    user.active = False
    session.add(user)
    end_sessions(session, user)
    assert user.id is not None
    session.execute(
        update(StaffToken)
        .where(col(StaffToken.staff_id) == user.id, col(StaffToken.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )


# --- sessions ---------------------------------------------------------------------------------


def open_session(
    session: Session, user: StaffUser, *, second_factor: bool, source: str, user_agent: str
) -> tuple[StaffSession, str]:
    """A new browser session; the clear cookie token is returned once."""
    assert user.id is not None
    token = secrets.token_urlsafe(32)
    now = utcnow()
    row = StaffSession(
        staff_id=user.id,
        token_hash=token_hash(token),
        csrf_token=secrets.token_urlsafe(32),
        second_factor=second_factor,
        created_at=now,
        last_seen_at=now,
        expires_at=now + SESSION_MAX,
        source=source[:100],
        user_agent=user_agent[:300],
    )
    session.add(row)
    session.flush()
    return row, token


def live_session(session: Session, token: str) -> tuple[StaffSession, StaffUser] | None:
    """The session behind a cookie: not revoked, not expired, not idle, its account active
    and its password unchanged since it began. Its last use is recorded (at most once a
    minute)."""
    if not token or len(token) > 100:
        return None
    row = session.exec(
        select(StaffSession, StaffUser)
        .join(StaffUser)
        .where(StaffSession.token_hash == token_hash(token))
    ).first()
    if row is None:
        return None
    found, user = row
    now = utcnow()
    if (
        found.revoked_at is not None
        or found.expires_at <= now
        or found.last_seen_at + SESSION_IDLE <= now
        or not user.active
        or found.created_at < user.password_changed_at
    ):
        return None
    if now - found.last_seen_at >= _TOUCH_EVERY:
        session.execute(
            update(StaffSession).where(col(StaffSession.id) == found.id).values(last_seen_at=now)
        )
        session.commit()
    return found, user


def end_session(session: Session, found: StaffSession) -> None:
    session.execute(
        update(StaffSession)
        .where(col(StaffSession.id) == found.id, col(StaffSession.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )


def end_sessions(session: Session, user: StaffUser) -> int:
    """End every session of ``user``; how many were live."""
    assert user.id is not None
    result = session.execute(
        update(StaffSession)
        .where(col(StaffSession.staff_id) == user.id, col(StaffSession.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)


def sessions_of(session: Session, user: StaffUser) -> list[StaffSession]:
    now = utcnow()
    rows = session.exec(
        select(StaffSession)
        .where(
            StaffSession.staff_id == user.id,
            col(StaffSession.revoked_at).is_(None),
            StaffSession.expires_at > now,
            StaffSession.last_seen_at > now - SESSION_IDLE,
        )
        .order_by(col(StaffSession.last_seen_at).desc())
    ).all()
    return list(rows)


# --- TOTP -------------------------------------------------------------------------------------


class SecretBox:
    """Encrypts TOTP seeds with a key derived from the app secret (Fernet)."""

    def __init__(self, app_secret: bytes) -> None:
        key = hashlib.sha256(b"mailmag totp seed\x00" + app_secret).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, seed: str) -> str:
        return self._fernet.encrypt(seed.encode("ascii")).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise InvalidInput("totp", "the seed cannot be read with this secret key") from None


@dataclass(frozen=True, slots=True)
class Enrolment:
    seed: str
    uri: str
    qr_svg: str


def new_enrolment(email: str, seed: str | None = None) -> Enrolment:
    seed = seed or pyotp.random_base32()
    uri = pyotp.TOTP(seed).provisioning_uri(name=email, issuer_name=TOTP_ISSUER)
    svg = segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff")
    return Enrolment(seed=seed, uri=uri, qr_svg=svg)


def _matching_step(seed: str, code: str, at: float) -> int | None:
    totp = pyotp.TOTP(seed)
    step = totp.timecode(datetime.fromtimestamp(at, tz=UTC))
    for candidate in (step, step - 1, step + 1):
        if hmac.compare_digest(totp.generate_otp(candidate), code):
            return candidate
    return None


def check_code(
    session: Session, user: StaffUser, code: str, box: SecretBox, *, seed: str | None = None
) -> bool:
    """Whether ``code`` is a current TOTP code of ``user`` (or of ``seed`` while enrolling)
    not used before; a good code is used up."""
    code = code.strip().replace(" ", "")
    if not (len(code) == 6 and code.isdigit()):
        return False
    if seed is None:
        if user.totp_secret is None:
            return False
        seed = box.open(user.totp_secret)
    step = _matching_step(seed, code, time.time())
    if step is None or (user.totp_last_step is not None and step <= user.totp_last_step):
        return False
    user.totp_last_step = step
    session.add(user)
    return True


def enrol(session: Session, user: StaffUser, seed: str, code: str, box: SecretBox) -> bool:
    """Turn TOTP on with ``seed`` once ``code`` proves the authenticator has it."""
    if not check_code(session, user, code, box, seed=seed):
        return False
    user.totp_secret = box.seal(seed)
    session.add(user)
    return True


def needs_second_factor(user: StaffUser) -> bool:
    """Whether a password alone is not enough to log in."""
    return user.totp_secret is not None or user.role is StaffRole.admin
