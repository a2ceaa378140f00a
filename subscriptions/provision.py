"""Provision to third parties: off, except by a staff action that records its legal basis.

The notice promises no provision to third parties "unless required by law or otherwise".
``provide`` is the only way: it refuses without a legal basis from ``LEGAL_BASES`` (and a
reference to the request, such as a court order number), hands over only the fields asked
for about the people named, and records the transfer with one subject row per person.
"""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import Session, select

from subscriptions.addresses import AddressHasher, normalise_address
from subscriptions.errors import TransferRefused
from subscriptions.models import Subscriber
from subscriptions.registry import PROFILE_FIELDS
from subscriptions.transfers import record_transfer

# APPI Art. 27(1): the exceptions to the consent requirement.
LEGAL_BASES = {
    "law": "required by law (APPI Art. 27(1)(i))",
    "life": "protection of life, body or property (APPI Art. 27(1)(ii))",
    "public-health": "public health or children (APPI Art. 27(1)(iii))",
    "authority": "cooperation with a public authority (APPI Art. 27(1)(iv))",
}


def provide(
    session: Session,
    hasher: AddressHasher,
    *,
    party: str,
    basis: str,
    reference: str,
    addresses: list[str],
    fields: tuple[str, ...],
    staff: str,
) -> dict[str, Any]:
    if basis not in LEGAL_BASES:
        raise TransferRefused(
            f"no provision to a third party without a legal basis: one of {', '.join(LEGAL_BASES)}"
        )
    if not reference.strip():
        raise TransferRefused("name the request (order number, letter reference)")
    unknown = [f for f in fields if f not in PROFILE_FIELDS]
    if unknown or not fields:
        raise TransferRefused(f"unknown fields {unknown}" if unknown else "name the fields")
    people = []
    for raw in addresses:
        digest = hasher.digest(normalise_address(raw))
        subscriber = session.exec(
            select(Subscriber).where(Subscriber.address_digest == digest)
        ).first()
        if subscriber is not None:
            people.append(subscriber)
    record_transfer(
        session,
        party=party,
        party_kind="third_party",
        fields=fields,
        people=[(p.id, p.address_digest) for p in people],
        purpose=f"provision: {reference.strip()}",
        legal_basis=LEGAL_BASES[basis],
        triggered_by=staff,
    )
    return {
        "party": party,
        "legal_basis": LEGAL_BASES[basis],
        "reference": reference,
        "people": [{f: getattr(p, f) for f in fields} for p in people],
    }


def as_json(bundle: dict[str, Any]) -> str:
    return json.dumps(bundle, ensure_ascii=False, indent=2)
