"""DKIM signing (RFC 6376) with dkimpy, when a key is configured.

The signature covers the headers receivers and the RFC 8058 one-click rule care about:
From, To, Subject, Date, Message-ID, List-Id, List-Unsubscribe, List-Unsubscribe-Post,
Feedback-ID, MIME-Version and Content-Type, with relaxed header and simple body
canonicalisation. Signing happens per message, after assembly, since every body differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dkim

SIGNED_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"feedback-id",
    b"mime-version",
    b"content-type",
)


@dataclass(frozen=True, slots=True)
class DKIMSigner:
    domain: str
    selector: str
    private_key: bytes = field(repr=False)

    def sign(self, message: bytes) -> bytes:
        """``message`` with a DKIM-Signature header in front."""
        signature: bytes = dkim.sign(
            message,
            self.selector.encode("ascii"),
            self.domain.encode("ascii"),
            self.private_key,
            canonicalize=(b"relaxed", b"simple"),
            include_headers=list(SIGNED_HEADERS),
        )
        return signature + message
