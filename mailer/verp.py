"""Opaque per-delivery tokens for the VERP return path and the List-Unsubscribe mailto.

A token is the delivery's id and a 64-bit check value, encrypted as one AES block under a
key derived from the secret: 26 base32 characters that say nothing about the delivery, the
subscriber or the address, and that nobody without the key can forge (a forged block
decrypts to a wrong check value). It is safe in an address's local part (lower-case letters
and digits only).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

TOKEN_LENGTH = 26
# The delivery id that test sends' tokens name. No delivery row has it (ids start at 1), so a
# bounce to a test message's return path matches nothing, and its links open a page that
# says the message was a test (subscriptions.access).
TEST_DELIVERY = 0


class DeliveryTokens:
    def __init__(self, secret: bytes) -> None:
        key = hmac.new(secret, b"mailmag/delivery-token/v1", hashlib.sha256).digest()
        self._cipher = Cipher(algorithms.AES(key[:16]), modes.ECB())  # noqa: S305 (one block)
        self._check = key[16:24]

    def make(self, delivery_id: int) -> str:
        block = struct.pack(">Q", delivery_id) + self._check
        encryptor = self._cipher.encryptor()
        sealed = encryptor.update(block) + encryptor.finalize()
        return base64.b32encode(sealed).decode("ascii").rstrip("=").lower()

    def read(self, token: str) -> int | None:
        """The delivery id a genuine token names; None for anything else. Letter case does not
        matter (mail systems may fold the local part of a return path), but only the one
        encoding of the sealed block is accepted: the spare bits of the last letter count."""
        if len(token) != TOKEN_LENGTH:
            return None
        try:
            sealed = base64.b32decode(token.upper() + "======")
        except (ValueError, TypeError):
            return None
        if base64.b32encode(sealed).decode("ascii").rstrip("=") != token.upper():
            return None
        decryptor = self._cipher.decryptor()
        block = decryptor.update(sealed) + decryptor.finalize()
        if not hmac.compare_digest(block[8:], self._check):
            return None
        delivery_id: int = struct.unpack(">Q", block[:8])[0]
        return delivery_id
