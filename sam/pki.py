"""sam's certificate authority: it signs the server's TLS certificate and consumers' identities.

One CA per installation (consumer-api.md section 1): ``SAM_CA_CERT``/``SAM_CA_KEY`` when the
operator brings one, otherwise ``$SAM_DATA_DIR/pki/ca.crt`` + ``ca.key`` created once under an
exclusive lock on ``pki/.lock`` (several processes starting at once agree on one pair; several
machines share it by pointing ``SAM_CA_CERT``/``SAM_CA_KEY`` at the same files).

Consumers' private keys are kept encrypted with a key derived from ``SECRET_KEY`` (Fernet);
generating RSA-2048 costs tens of milliseconds, so ``KeyStock`` keeps a few spare pairs made
in the background for registrations to take.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import secrets
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from sam.tls import ensure_pair, host_names

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
CA_DAYS = 20 * 365
SERVER_DAYS = 730
IDENTITY_YEARS = 5
IDENTITY_RENEW_WITHIN = timedelta(days=90)  # renewed inside GET /consumers/{uuid} (Candlepin's)
KEY_SIZE = 2048


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    cert_path: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ski(public) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public)


def _make_ca() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sam"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"sam CA {secrets.token_hex(4)}"),
    ])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(_ski(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _private_pem(key)


def pki_dir() -> Path:
    return Path(settings.DATA_DIR) / "pki"


def _configured_paths() -> tuple[Path, Path] | None:
    cert = (os.environ.get("SAM_CA_CERT") or "").strip()
    key = (os.environ.get("SAM_CA_KEY") or "").strip()
    if not cert and not key:
        return None
    if not (cert and key):
        raise ImproperlyConfigured("Set both SAM_CA_CERT and SAM_CA_KEY, or neither (sam then "
                                   "keeps its own CA in $SAM_DATA_DIR/pki).")
    return Path(cert), Path(key)


def ensure_ca() -> tuple[Path, Path, bool]:
    """``(cert_path, key_path, created)`` of the CA: the configured pair, or the data dir's,
    created on first use under a lock."""
    configured = _configured_paths()
    if configured:
        for path in configured:
            if not path.is_file():
                raise ImproperlyConfigured(f"SAM_CA_CERT/SAM_CA_KEY: {path} does not exist.")
        return configured[0], configured[1], False
    return ensure_pair(pki_dir(), CA_CERT_NAME, CA_KEY_NAME, _make_ca)


_authority_lock = threading.Lock()
_authority: dict[tuple, Authority] = {}


def authority() -> Authority:
    """The loaded CA (cached per process and per path/mtime: a replaced file is reloaded)."""
    cert_path, key_path, _ = ensure_ca()
    stamp = (str(cert_path), cert_path.stat().st_mtime_ns, str(key_path), key_path.stat().st_mtime_ns)
    with _authority_lock:
        found = _authority.get(stamp)
        if found is None:
            data = cert_path.read_bytes()
            try:
                cert = x509.load_pem_x509_certificate(data)
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            except ValueError as exc:
                raise ImproperlyConfigured(f"The CA in {cert_path}/{key_path} is not a PEM "
                                           f"certificate and unencrypted key ({exc}).") from None
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ImproperlyConfigured("The CA key must be an RSA key.")
            found = Authority(cert, key, cert_path)
            _authority.clear()
            _authority[stamp] = found
        return found


def ca_fingerprint(cert: x509.Certificate | None = None) -> str:
    cert = cert or authority().cert
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def ca_pin(cert: x509.Certificate | None = None) -> str:
    """``sha256//<base64>`` of the CA's public key, for ``curl --pinnedpubkey``."""
    cert = cert or authority().cert
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def trust_bundle() -> bytes:
    """What clients install (``/pub/sam-ca.pem``): the CA, plus an upgraded installation's
    self-signed ``tls/sam.crt`` (its virt-who hosts trust it) and the issuers of a custom
    ``SAM_TLS_CERT`` (or the certificate itself when it is self-signed)."""
    ca = authority()
    parts = [ca.cert_pem]
    candidates: list[x509.Certificate] = []
    legacy = Path(settings.DATA_DIR) / "tls" / "sam.crt"
    custom = (os.environ.get("SAM_TLS_CERT") or "").strip()
    for path, is_custom in ((legacy, False), (Path(custom), True) if custom else (None, None)):
        if path is None:
            continue
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError):
            continue
        if is_custom and len(certs) > 1:
            candidates += certs[1:]
        elif certs and certs[0].subject == certs[0].issuer:
            candidates.append(certs[0])
    for cert in candidates:
        data = cert.public_bytes(serialization.Encoding.PEM)
        if data not in parts:
            parts.append(data)
    return b"".join(parts)


# --- The server certificate --------------------------------------------------------------------

def server_names() -> list[str]:
    names = [n.strip().lower() for n in [settings.SAM_HOSTNAME, *settings.ALLOWED_HOSTS] if n]
    names = [n.lstrip(".") for n in names if n != "*" and "*" not in n]
    result = []
    for n in [*names, *host_names()]:
        try:
            ipaddress.ip_address(n)
            continue
        except ValueError:
            pass
        if n and n.isascii() and n not in result:
            result.append(n)
    return result


def issue_server_cert(names: list[str] | None = None, days: int = SERVER_DAYS) -> tuple[bytes, bytes]:
    """(chain PEM = leaf + CA, key PEM): a server certificate for ``names`` (+ localhost,
    127.0.0.1, ::1) issued by sam's CA."""
    ca = authority()
    names = names or server_names()
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    cn = names[0] if len(names[0]) <= 64 else "sam"
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    san += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sam"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=True, content_commitment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_ski(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem, _private_pem(key)


def ensure_server_cert(directory: Path | str) -> tuple[Path, Path, bool]:
    """``(cert_path, key_path, created)`` in ``directory`` (``tls/``): an existing pair is kept
    (an upgraded installation's self-signed one too: its virt-who hosts trust it), otherwise a
    pair issued by the CA is written, the chain in ``sam.crt``."""
    return ensure_pair(directory, "sam.crt", "sam.key", issue_server_cert)


# --- Consumer keys and identity certificates ---------------------------------------------------

def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)


class KeyStock:
    """RSA key pairs generated ahead by a low-priority background thread, so that a
    registration signs instead of generating (~30-60 ms of CPU each): a burst of registrations
    is served from the stock, refilled when the CPU is idle. Empty stock → generate inline."""

    def __init__(self, size: int = 8):
        self.size = size
        self._keys: deque = deque()
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self) -> rsa.RSAPrivateKey:
        with self._lock:
            key = self._keys.popleft() if self._keys else None
        self.prime()
        return key or new_key()

    def prime(self) -> None:
        """Start (or wake) the filler: ``serve`` calls it when a web process loads the app."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._fill, name="sam-keystock",
                                                daemon=True)
                self._thread.start()
        self._wanted.set()

    def _fill(self) -> None:
        # Lowest CPU priority for this thread only (Linux: threads are scheduled tasks), and
        # OpenSSL releases the GIL while generating: requests always go first.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        while True:
            self._wanted.wait()
            while True:
                with self._lock:
                    if len(self._keys) >= self.size:
                        self._wanted.clear()
                        break
                key = new_key()
                with self._lock:
                    self._keys.append(key)


KEYS = KeyStock(size=32)


@lru_cache(maxsize=4)
def _fernet(secret: str) -> Fernet:
    digest = hashlib.sha256(b"sam consumer keys\0" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal_key(key: rsa.RSAPrivateKey) -> str:
    return _fernet(settings.SECRET_KEY).encrypt(_private_pem(key)).decode("ascii")


def open_key_pem(sealed: str) -> bytes:
    """The PEM of a sealed key; ``ValueError`` when ``SECRET_KEY`` changed since it was sealed."""
    try:
        return _fernet(settings.SECRET_KEY).decrypt(sealed.encode("ascii"))
    except InvalidToken:
        raise ValueError("the consumer key cannot be decrypted with the current SECRET_KEY") from None


def new_serial() -> int:
    """A positive 63-bit serial (fits PostgreSQL's bigint)."""
    return secrets.randbits(63) or 1


def issue_identity(org_key: str, uuid: str, name: str, public_key, serial: int,
                   now: datetime | None = None) -> x509.Certificate:
    """An identity certificate as the client reads it: subject O=org, CN=uuid; SAN dirNames
    (the last one carries the consumer's name); clientAuth; no Red Hat extensions."""
    ca = authority()
    now = now or datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org_key),
                         x509.NameAttribute(NameOID.COMMON_NAME, uuid)])
    shown = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (name or uuid)[:64])])
    end = now.replace(year=now.year + IDENTITY_YEARS) if not (now.month == 2 and now.day == 29) \
        else now + timedelta(days=365 * IDENTITY_YEARS)
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(ca.cert.subject)
        .public_key(public_key).serial_number(serial)
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DirectoryName(subject),
                                                    x509.DirectoryName(shown)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=True, content_commitment=False,
            data_encipherment=True, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(_ski(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )


# Red Hat's entitlement certificate extensions (rhsm-wire.md 4.2): version, type, content tree.
ENT_VERSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.2312.9.6")
ENT_CONTENT_OID = x509.ObjectIdentifier("1.3.6.1.4.1.2312.9.7")
ENT_TYPE_OID = x509.ObjectIdentifier("1.3.6.1.4.1.2312.9.8")
ENTITLEMENT_CERT_VERSION = "3.4"


def _der_utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 127:
        raise ValueError("extension text too long")
    return bytes([0x0C, len(data)]) + data


CONTENT_ACCESS_TYPE = "OrgLevel"  # the SCA certificate's entitlement type (rhsm-wire.md 4.2)


def issue_entitlement(org_key: str, entitlement_id: str, public_key, serial: int,
                      not_before: datetime, not_after: datetime, payload: bytes,
                      entitlement_type: str = "Basic") -> str:
    """A v3 entitlement certificate as subscription-manager parses it: the X.509 part (subject
    O=org, CN=entitlement id, the version/type extensions, an empty content tree) for the
    consumer's own public key, followed by the deflated JSON ``payload`` and the CA's
    signature over it. Issuing one is two signatures, no key generation. ``entitlement_type``
    ``OrgLevel`` makes the SCA content certificate (CN = the consumer's uuid)."""
    ca = authority()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org_key),
                         x509.NameAttribute(NameOID.COMMON_NAME, entitlement_id)])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(ca.cert.subject)
        .public_key(public_key).serial_number(serial)
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.UnrecognizedExtension(ENT_VERSION_OID,
                                                  _der_utf8(ENTITLEMENT_CERT_VERSION)), critical=False)
        .add_extension(x509.UnrecognizedExtension(ENT_TYPE_OID, _der_utf8(entitlement_type)),
                       critical=False)
        .add_extension(x509.UnrecognizedExtension(ENT_CONTENT_OID, b"\x04\x00"), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=True, content_commitment=False,
            data_encipherment=True, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    signature = ca.key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    return (pem(cert) + _armour("ENTITLEMENT DATA", payload) + _armour("RSA SIGNATURE", signature))


def _armour(label: str, data: bytes) -> str:
    text = base64.b64encode(data).decode("ascii")
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


class UntrustedCertificate(Exception):
    """A client certificate sam's CA did not sign, or one outside its validity."""


def verify_client_cert(der_or_pem: bytes, now: datetime | None = None) -> x509.Certificate:
    """The certificate if sam's CA signed it and it is valid now; ``UntrustedCertificate``
    otherwise. Checked here whether it came from sam's own TLS layer or a proxy header."""
    try:
        if der_or_pem.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(der_or_pem)
        else:
            cert = x509.load_der_x509_certificate(der_or_pem)
    except ValueError:
        raise UntrustedCertificate("not a certificate") from None
    ca = authority()
    if cert.issuer != ca.cert.subject:
        raise UntrustedCertificate("not issued by sam's CA")
    try:
        ca.key.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                                   padding.PKCS1v15(), cert.signature_hash_algorithm)
    except (InvalidSignature, TypeError, ValueError):
        raise UntrustedCertificate("signature does not verify against sam's CA") from None
    now = now or datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise UntrustedCertificate("expired or not yet valid")
    return cert
