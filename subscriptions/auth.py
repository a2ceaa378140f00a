"""Staff authentication for the JSON API: personal API tokens, sent as ``Bearer`` tokens.

A token is ``mm_`` and 32 random URL-safe bytes; only its SHA-256 is stored, so a database
leak reveals no usable token. Tokens can expire and be revoked at once. ``require_roles``
makes a FastAPI dependency that lets through only active staff in the given roles.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session, select

from mailer.clock import utcnow
from subscriptions.deps import RuntimeDep
from subscriptions.models import PartyCredential, StaffRole, StaffToken, StaffUser

TOKEN_PREFIX = "mm_"  # noqa: S105 (a prefix, not a secret)
_bearer = HTTPBearer(auto_error=False, description="A staff API token (mailmag admin token).")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_token(
    session: Session, user: StaffUser, *, label: str = "", expires_at: datetime | None = None
) -> str:
    """Create a token for ``user``; the clear token is returned once and never stored."""
    assert user.id is not None
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        StaffToken(
            staff_id=user.id, token_hash=token_hash(token), label=label, expires_at=expires_at
        )
    )
    return token


def staff_for_token(session: Session, token: str) -> StaffUser | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        return None
    row = session.exec(
        select(StaffToken, StaffUser)
        .join(StaffUser)
        .where(StaffToken.token_hash == token_hash(token))
    ).first()
    if row is None:
        return None
    stored, user = row
    now = utcnow()
    if stored.revoked_at is not None or (stored.expires_at and stored.expires_at <= now):
        return None
    return user if user.active else None


def require_roles(*roles: StaffRole) -> Callable[..., StaffUser]:
    """A dependency admitting active staff with one of ``roles`` (admins always)."""
    allowed = set(roles) | {StaffRole.admin}

    def dependency(
        runtime: RuntimeDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> StaffUser:
        # A short read of its own: a request-long session would hold SQLite's write lock
        # (non-GET requests take it at BEGIN) while the route's own work waits for it.
        user = None
        if credentials is not None:
            with Session(runtime.engine, expire_on_commit=False) as session:
                user = staff_for_token(session, credentials.credentials)
        if user is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "a valid staff API token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if user.role not in allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "your role may not do this")
        return user

    return dependency


# --- machine credentials of processors and joint users ------------------------------------------

PARTY_TOKEN_PREFIX = "mp_"  # noqa: S105 (a prefix, not a secret)


def issue_party_credential(
    session: Session, party: str, party_kind: str, *, expires_at: datetime, label: str = ""
) -> tuple[PartyCredential, str]:
    """Create a credential for ``party``; the clear token is returned once and never stored."""
    token = PARTY_TOKEN_PREFIX + secrets.token_urlsafe(32)
    credential = PartyCredential(
        party=party,
        party_kind=party_kind,
        token_hash=token_hash(token),
        label=label,
        expires_at=expires_at,
    )
    session.add(credential)
    return credential, token


def credential_for_token(session: Session, token: str) -> PartyCredential | None:
    """The live credential behind ``token``: not expired, not revoked."""
    if not token.startswith(PARTY_TOKEN_PREFIX) or len(token) > 100:
        return None
    stored = session.exec(
        select(PartyCredential).where(PartyCredential.token_hash == token_hash(token))
    ).first()
    if stored is None or stored.revoked_at is not None or stored.expires_at <= utcnow():
        return None
    return stored
