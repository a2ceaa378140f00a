"""Staff authentication for the JSON API: personal API tokens, sent as ``Bearer`` tokens.

A token is ``mm_`` and 32 random URL-safe bytes; only its SHA-256 is stored, so a database
leak reveals no usable token. Tokens can expire and be revoked at once. Which roles may call
which route is ``subscriptions.access``'s business.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from sqlmodel import Session, select

from mailer.clock import utcnow
from subscriptions.models import PartyCredential, StaffToken, StaffUser

TOKEN_PREFIX = "mm_"  # noqa: S105 (a prefix, not a secret)


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
