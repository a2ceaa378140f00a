"""Signed tokens for links in mails and for the sign-up form.

A link token names a subscriber by their random ``token_key`` (never their id or address),
is bound to one action by the signing salt (an unsubscribe token cannot erase an account),
and carries an optional scope (a magazine slug). The signature is a full HMAC-SHA256
(256 bits). ``max_age`` decides how long a token is good for; unsubscribe links are
read without one, so they keep working for years.
"""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum

from itsdangerous import BadData, BadSignature, SignatureExpired, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode, base64_encode

from subscriptions.errors import BadToken
from subscriptions.i18n import N_


class Action(StrEnum):
    confirm = "confirm"
    unsubscribe = "unsubscribe"
    preferences = "preferences"
    erase = "erase"
    form = "form"  # the sign-up form's single-use token
    verify = "verify"  # proves a privacy request came from the address it names
    disclosure = "disclosure"  # opens the person's disclosure bundle


def new_token_key() -> str:
    """A fresh random subject key: 128 bits, URL-safe."""
    return secrets.token_urlsafe(16)


def _canonical(token: str) -> bool:
    """Each part in the one base64 spelling of its bytes: the spare bits of a part's last
    character would otherwise give several spellings of one genuine token."""
    try:
        return all(base64_encode(base64_decode(part)).decode() == part for part in token.split("."))
    except (BadData, ValueError, UnicodeError):
        return False


class LinkSigner:
    def __init__(self, secret: bytes) -> None:
        self._serializers = {
            action: URLSafeTimedSerializer(
                secret,
                salt=f"mailmag/{action.value}/v1",
                signer_kwargs={"digest_method": hashlib.sha256},
            )
            for action in Action
        }

    def make(self, action: Action, subject: str, scope: str = "") -> str:
        token = self._serializers[action].dumps([subject, scope])
        return str(token)

    def read(self, action: Action, token: str, *, max_age: int | None = None) -> tuple[str, str]:
        """The (subject, scope) a valid token names; ``BadToken`` otherwise."""
        if not token or len(token) > 512 or not _canonical(token):
            raise BadToken(N_("This link is not valid."))
        try:
            payload = self._serializers[action].loads(token, max_age=max_age)
        except SignatureExpired:
            raise BadToken(N_("This link has expired.")) from None
        except (BadSignature, ValueError, TypeError):
            raise BadToken(N_("This link is not valid.")) from None
        if (
            not isinstance(payload, list)
            or len(payload) != 2
            or not all(isinstance(part, str) for part in payload)
        ):
            raise BadToken(N_("This link is not valid."))
        return payload[0], payload[1]
