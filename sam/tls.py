"""The self-signed server certificate ``manage.py serve`` uses when none is configured.

Created once in ``<data dir>/tls`` (``sam.crt``, ``sam.key`` with mode 0600) and reused on
every later start, so clients that trust it (virt-who's ``ca_cert_dir``) keep working. An
exclusive lock on ``tls/.lock`` stops two processes starting at once from writing
different pairs.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_NAME = "sam.crt"
KEY_NAME = "sam.key"
VALID_DAYS = 730


@dataclass(frozen=True)
class CertInfo:
    subject: str
    not_before: datetime
    not_after: datetime
    dns_names: list[str]
    ip_addresses: list[str]
    sha256: str  # "AB:CD:..." as ``openssl x509 -fingerprint -sha256`` prints it


def host_names() -> list[str]:
    """DNS names for the certificate: localhost and this machine's names (deduplicated)."""
    names = ["localhost"]
    for candidate in (socket.gethostname(), socket.getfqdn()):
        candidate = (candidate or "").strip().rstrip(".").lower()
        if not candidate or not candidate.isascii() or candidate in names:
            continue
        try:
            ipaddress.ip_address(candidate)  # some resolvers answer an address: not a DNS name
            continue
        except ValueError:
            pass
        names.append(candidate)
    return names


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    entries += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    return x509.SubjectAlternativeName(entries)


def generate(names: list[str] | None = None, days: int = VALID_DAYS) -> tuple[bytes, bytes]:
    """A new self-signed (certificate PEM, private key PEM): RSA 2048, SHA-256, server auth."""
    names = names or host_names()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    common_name = names[-1] if len(names[-1]) <= 64 else "sam"
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sam (self-signed)"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    now = datetime.now(UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # tolerate a client clock slightly behind
        .not_valid_after(now + timedelta(days=days))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=True, content_commitment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a temporary file created with ``mode``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it; never widened beyond mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_self_signed(directory: Path | str) -> tuple[Path, Path, bool]:
    """``(cert_path, key_path, created)``: the pair in ``directory``, generated if missing.

    An existing pair is reused as it is (also when it has expired: ``serve`` warns, the
    operator deletes it to get a new one). A half pair (one file lost) is replaced.
    """
    return ensure_pair(directory, CERT_NAME, KEY_NAME, generate)


def ensure_pair(directory: Path | str, cert_name: str, key_name: str,
                make: Callable[[], tuple[bytes, bytes]]) -> tuple[Path, Path, bool]:
    """``(cert_path, key_path, created)``: the pair in ``directory``, or one from ``make()``
    (``(cert_pem, key_pem)``) written under a lock in that directory, so concurrent processes
    starting at once agree on a single pair. A half pair (one file lost) is replaced."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / cert_name, directory / key_name
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if cert_path.is_file() and key_path.is_file():
                return cert_path, key_path, False
            cert_pem, key_pem = make()
            _write(key_path, key_pem, 0o600)
            _write(cert_path, cert_pem, 0o644)
            return cert_path, key_path, True
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def fingerprint(cert: x509.Certificate) -> str:
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def load_certificate(path: Path | str) -> x509.Certificate:
    """The first certificate of a PEM (or DER) file; ``ValueError`` if it holds none."""
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def certificate_info(path: Path | str) -> CertInfo:
    cert = load_certificate(path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    return CertInfo(subject=cert.subject.rfc4514_string(), not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc, dns_names=dns, ip_addresses=ips,
                    sha256=fingerprint(cert))
