"""Real manifests from ``../shared/manifests/`` (read in place, never copied) and synthetic
copies re-signed with a test key made at test time (manifest.md section 12)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import pytest
import time_machine
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from subscriptions.manifest import reader

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT.parent / "shared" / "manifests"
REDHAT_CA = MANIFESTS / "candlepin-redhat-ca.crt"

VALID = ["fam-manifest_foreman-ansible-modules.zip", "robottelo-expired-manifest-2022-01.zip",
         "robottelo-expired-manifest-2023-03.zip"]
MODIFIED = ["katello-manifest_small.zip", "katello-manifest_small_modified-2017.zip",
            "katello-manifest_small_modified.zip"]
UNKNOWN_SIGNER = ["katello-legacy-fake-manifest-2011-11.zip",
                  "katello-legacy-fake-manifest-syncable-2012-01.zip",
                  "katello-legacy-fake-manifest-syncable-2012-04.zip",
                  "katello-legacy-fake-manifest-syncable-2012-05.zip",
                  "katello-legacy-fake-manifest-syncable-without-nature-2012-05.zip"]
ALL = VALID + MODIFIED + UNKNOWN_SIGNER


def data(name: str) -> bytes:
    return (MANIFESTS / name).read_bytes()


@cache
def created(name: str) -> datetime:
    """The manifest's export time (meta.json ``created``)."""
    archive = reader.open_archive(data(name), 64 * 1024 * 1024)
    return reader.parse_export(archive.export).created


def at_export(name: str, after: timedelta = timedelta(minutes=5)):
    """Pin the clock just after the manifest was exported (its subscriptions then active)."""
    return time_machine.travel(created(name) + after, tick=True)


def trust(settings, tmp_path: Path, *certs: Path | bytes) -> Path:
    """Make ``SAM_MANIFEST_TRUST_DIR`` a fresh directory holding these certificates: a file
    path becomes a symbolic link (the shared file stays in place), bytes are written."""
    directory = tmp_path / "upstream"
    directory.mkdir(exist_ok=True)
    for number, cert in enumerate(certs):
        target = directory / f"cert{number}.pem"
        if isinstance(cert, Path):
            target.symlink_to(cert)
        else:
            target.write_bytes(cert)
    settings.SAM_MANIFEST_TRUST_DIR = str(directory)
    return directory


@pytest.fixture
def trust_redhat(settings, tmp_path):
    return trust(settings, tmp_path, REDHAT_CA)


# --- Synthetic manifests ------------------------------------------------------------------------

class ManifestSigner:
    """A throw-away RSA key and self-signed certificate, as QE tooling uses to re-sign."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sam test manifest signer")])
        now = datetime.now(UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=3650))
                     .sign(self.key, hashes.SHA256()))
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, export: bytes) -> bytes:
        return self.key.sign(export, padding.PKCS1v15(), hashes.SHA256())


@cache
def signer() -> ManifestSigner:
    return ManifestSigner()


def zip_of(entries: dict[str, bytes], comment: bytes = b"") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
        zf.comment = comment
    return out.getvalue()


def export_entries(name: str) -> dict[str, bytes]:
    """The files of a real manifest's consumer_export.zip."""
    outer = zipfile.ZipFile(io.BytesIO(data(name)))
    inner = zipfile.ZipFile(io.BytesIO(outer.read("consumer_export.zip")))
    return {info.filename: inner.read(info) for info in inner.infolist()}


def outer(export: bytes, signature: bytes) -> bytes:
    return zip_of({"consumer_export.zip": export, "signature": signature})


def resign(name: str, edit: Callable[[dict[str, dict]], None] | None = None,
           extra: dict[str, bytes] | None = None) -> bytes:
    """A copy of a real manifest whose JSON files were changed by ``edit`` (a dict of path →
    parsed JSON, changed in place), re-zipped and signed with the test key."""
    entries = export_entries(name)
    docs = {n: json.loads(v) for n, v in entries.items() if n.endswith(".json")}
    if edit is not None:
        edit(docs)
    entries.update({n: json.dumps(d).encode() for n, d in docs.items()})
    entries.update(extra or {})
    export = zip_of(entries)
    return outer(export, signer().sign(export))


def set_created(docs: dict[str, dict], when: datetime) -> None:
    docs["export/meta.json"]["created"] = when.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def entitlements(docs: dict[str, dict]) -> list[dict]:
    return [d for n, d in docs.items() if n.startswith("export/entitlements/")]
