"""E-mail addresses: validation, normalisation and the keyed digest kept after erasure.

Addresses are validated and normalised with email-validator (internationalised addresses
accepted, domain lower-cased, no DNS look-up at sign-up); the local part keeps the case the
person typed, and mail goes to that spelling. The digest is an HMAC-SHA256 of the whole
normalised address lower-cased, under a key derived from the secret key: it names the
mailbox whatever the case, so it is the key people are matched on (one subscriber per
mailbox), and the suppression list and the erased consent rows recognise an address by it
without storing it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from subscriptions.errors import InvalidInput
from subscriptions.i18n import N_

MAX_ADDRESS_LENGTH = 320


# A plain ASCII dot-atom local part: for it, email-validator's normalised form is the local
# part unchanged followed by the normalised domain, so a domain it accepted once is reused.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


@lru_cache(maxsize=4096)
def _known_domain(domain: str) -> str | None:
    """The normalised domain, if email-validator accepts an address at it, else None."""
    try:
        result = validate_email(f"a@{domain}", check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        return None
    return str(result.domain)


def normalise_address(raw: str) -> str:
    """The normalised form of ``raw``, or ``InvalidInput`` saying what is wrong with it.

    Every address goes through email-validator, but the common case (a plain ASCII local part
    at a domain seen before) takes a shortcut that gives the same result: an import of a
    million rows spends its time storing them, not re-checking the same few domains."""
    candidate = raw.strip()
    if not candidate or len(candidate) > MAX_ADDRESS_LENGTH:
        raise InvalidInput("email", N_("Enter an e-mail address."))
    local, at, domain = candidate.rpartition("@")
    if at and len(local) <= 64 and _PLAIN_LOCAL.fullmatch(local):
        known = _known_domain(domain)
        if known is not None:
            return f"{local}@{known}"
    try:
        result = validate_email(candidate, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        raise InvalidInput("email", N_("This is not a valid e-mail address.")) from None
    return str(result.normalized)


def mailbox_key(address: str) -> str:
    """What names the mailbox of ``address``: its normalised form lower-cased, so that
    ``ALICE@Example.COM``, ``alice@example.com`` and ``Alice@EXAMPLE.com`` are one mailbox.
    (RFC 5321 lets a server tell the cases of a local part apart; no provider does, and a
    person who types their address in capitals means the same mailbox.) An address that is
    not valid is lower-cased as given: a stored one from before a rule changed still finds
    its digest."""
    try:
        normalised = normalise_address(address)
    except InvalidInput:
        normalised = address.strip()
    return normalised.lower()


class AddressHasher:
    """Keyed digests of addresses' mailboxes (``mailbox_key``): the same secret key always
    gives the same digest, whatever the case or form the address is written in."""

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"mailmag/address-digest/v1", hashlib.sha256).digest()

    def digest(self, address: str) -> str:
        key = mailbox_key(address).encode("utf-8")
        return hmac.new(self._key, key, hashlib.sha256).hexdigest()
