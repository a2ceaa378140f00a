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


# Japanese mobile carriers that long let their customers choose addresses breaking RFC 5322's
# dot-atom (a leading or trailing dot, two dots in a row: ``taro..yamada.@docomo.ne.jp``).
# Those addresses are still in use, and the carriers' servers accept them in the quoted form
# RFC 5321 gives them (``"taro..yamada."@docomo.ne.jp``), which every MTA sends. A subdomain
# of one of these counts as it (older au and Willcom addresses had one).
CARRIER_DOMAINS = frozenset(
    {
        "docomo.ne.jp",  # NTT docomo
        "ezweb.ne.jp",  # au (KDDI), the legacy domain
        "au.com",  # au (KDDI): ezweb.ne.jp addresses moved here keeping their local part
        "softbank.ne.jp",  # SoftBank
        "i.softbank.jp",  # SoftBank's iPhone mail, which took over old local parts
        "disney.ne.jp",  # Disney Mobile on SoftBank
        "vodafone.ne.jp",  # SoftBank's predecessor (d./h./t./c./k./r./n./s./q. subdomains)
        "pdx.ne.jp",  # Willcom (di./dj./dk./wm. subdomains)
        "willcom.com",  # Willcom
        "wcm.ne.jp",  # Willcom
        "ymobile.ne.jp",  # Y!mobile, which took Willcom and EMOBILE over
        "y-mobile.ne.jp",  # Y!mobile
        "emnet.ne.jp",  # EMOBILE
    }
)
# The local part of a legacy carrier address: dot-atom characters, dots anywhere (quoted or
# not as typed); nothing that would need escaping inside the quotes.
_CARRIER_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")


def is_carrier_domain(domain: str) -> bool:
    """Whether ``domain`` is one of ``CARRIER_DOMAINS`` or under one."""
    name = domain.lower().rstrip(".")
    return any(name == d or name.endswith("." + d) for d in CARRIER_DOMAINS)


def _carrier_address(local: str, domain: str) -> str | None:
    """The quoted form of a legacy carrier address that breaks the dot-atom only by its
    dots (quoted as typed or not; needless quotes are dropped), or None if ``local@domain``
    is not one."""
    inner = local[1:-1] if len(local) >= 2 and local[0] == local[-1] == '"' else local
    if not _CARRIER_LOCAL.fullmatch(inner) or not inner.strip("."):
        return None
    if not is_carrier_domain(domain):
        return None
    try:
        result = validate_email(
            f'"{inner}"@{domain}', check_deliverability=False, allow_quoted_local=True
        )
    except EmailNotValidError:
        return None
    return str(result.normalized)


def normalise_address(raw: str) -> str:
    """The normalised form of ``raw``, or ``InvalidInput`` saying what is wrong with it.

    Every address goes through email-validator, but the common case (a plain ASCII local part
    at a domain seen before) takes a shortcut that gives the same result: an import of a
    million rows spends its time storing them, not re-checking the same few domains. A
    legacy address at a Japanese carrier (``CARRIER_DOMAINS``) whose local part breaks the
    dot-atom by its dots alone is accepted in its quoted form, which is what is stored, shown
    and sent (RCPT TO and To:); quoting is refused for any other address, as it always was."""
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
        carrier = _carrier_address(local, domain) if at else None
        if carrier is not None:
            return carrier
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
