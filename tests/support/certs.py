"""Certificates made in the test, with ``cryptography``: a private CA, a relay certificate it
signed for 127.0.0.1 and localhost, and a self-signed one that nobody trusts.

The relay's side is an ``ssl.SSLContext`` for aiosmtpd; the client's side is the CA's PEM
file, handed to mailmag the way an operator would (``MAILMAG_SMTP_CA_FILE``).
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Certificates:
    ca_file: Path  # the private CA (what the client trusts)
    trusted_cert: Path  # the relay's certificate, signed by that CA
    trusted_key: Path
    untrusted_cert: Path  # a self-signed certificate for the same names
    untrusted_key: Path

    def server_context(self, *, trusted: bool = True) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if trusted:
            context.load_cert_chain(self.trusted_cert, self.trusted_key)
        else:
            context.load_cert_chain(self.untrusted_cert, self.untrusted_key)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _leaf(
    subject_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = datetime.now(UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(issuer)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def make_certificates(directory: Path) -> Certificates:
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("mailmag test CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    relay_key = ec.generate_private_key(ec.SECP256R1())
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    paths = Certificates(
        ca_file=directory / "ca.pem",
        trusted_cert=directory / "relay.pem",
        trusted_key=directory / "relay.key",
        untrusted_cert=directory / "stranger.pem",
        untrusted_key=directory / "stranger.key",
    )
    pem = serialization.Encoding.PEM
    paths.ca_file.write_bytes(ca.public_bytes(pem))
    paths.trusted_cert.write_bytes(_leaf(relay_key, ca_name, ca_key).public_bytes(pem))
    _write_key(relay_key, paths.trusted_key)
    paths.untrusted_cert.write_bytes(
        _leaf(stranger_key, _name("localhost"), stranger_key).public_bytes(pem)
    )
    _write_key(stranger_key, paths.untrusted_key)
    return paths
