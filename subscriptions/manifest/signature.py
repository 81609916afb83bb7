"""The manifest's signature: SHA256withRSA (PKCS#1 v1.5) over the exact bytes of
``consumer_export.zip``, checked against the upstream certificates the operator trusts
(manifest.md section 8). Red Hat's is "Red Hat Candlepin Authority", published in the
Candlepin source tree as ``config/candlepin/candlepin-redhat-ca.crt`` (see the README).

The trusted certificates are the PEM (or DER) files in ``SAM_MANIFEST_TRUST_DIR``, read at
each check, so one added with ``manage.py trust_manifest_cert`` counts at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from django.conf import settings

log = logging.getLogger(__name__)

VALID = "valid"
INVALID = "invalid"  # no trusted certificate verifies it
UNTRUSTED = "untrusted"  # nothing to check against: no trusted certificate is configured
MAX_CERT_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Check:
    status: str
    message: str
    signer: str = ""  # subject of the certificate that verified it
    fingerprint: str = ""

    @property
    def valid(self) -> bool:
        return self.status == VALID


def trust_dir() -> Path:
    return Path(settings.SAM_MANIFEST_TRUST_DIR).expanduser()


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, or the one of a DER file; ValueError if none."""
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def trusted_certificates(directory: Path | None = None) -> list[x509.Certificate]:
    """The certificates in the trust directory; unreadable files are logged and skipped."""
    directory = directory or trust_dir()
    if not directory.is_dir():
        return []
    certs = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            if path.stat().st_size > MAX_CERT_FILE_BYTES:
                raise ValueError("file too large")
            certs.extend(load_certificates(path.read_bytes()))
        except (OSError, ValueError) as exc:
            log.warning("manifest trust: %s is not a certificate, ignored (%s)", path, exc)
    return certs


def verify(export: bytes, signature: bytes, certs: list[x509.Certificate] | None = None) -> Check:
    """Does any trusted RSA certificate verify ``signature`` over ``export``?"""
    certs = trusted_certificates() if certs is None else certs
    rsa_certs = [c for c in certs if isinstance(c.public_key(), rsa.RSAPublicKey)]
    if not rsa_certs:
        return Check(UNTRUSTED, "The signature could not be checked: no trusted upstream certificate is "
                                f"configured (add one with manage.py trust_manifest_cert; directory "
                                f"{trust_dir()}).")
    for cert in rsa_certs:
        try:
            cert.public_key().verify(signature, export, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            continue
        return Check(VALID, "Signed by a trusted upstream certificate.",
                     signer=cert.subject.rfc4514_string()[:255], fingerprint=fingerprint(cert))
    return Check(INVALID, f"The signature does not verify with any of the {len(rsa_certs)} trusted upstream "
                          "certificate(s): the manifest was modified or signed by another key.")


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
