"""Staff accounts: creation and password checks (argon2id via argon2-cffi)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlmodel import Session, select

from subscriptions.errors import AlreadyExists
from subscriptions.models import StaffUser, StaffUserCreate

_hasher = PasswordHasher()


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
    except VerificationError:
        return False
