"""``manage.py trust_manifest_cert FILE``: trust an upstream certificate to sign manifests.

The certificate (PEM or DER; Red Hat's is ``candlepin-redhat-ca.crt`` from the Candlepin
source tree, see the README) is written as PEM into ``SAM_MANIFEST_TRUST_DIR`` under its
fingerprint, and its SHA-256 fingerprint is printed so the operator can compare it with the
published one. ``--list`` shows what is trusted.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from subscriptions.manifest import signature


def _describe(cert) -> str:
    return (f"{signature.fingerprint(cert)}\n  subject {cert.subject.rfc4514_string()}\n"
            f"  valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}")


class Command(BaseCommand):
    help = "Trust an upstream certificate (PEM or DER) to verify the signature of imported manifests."

    def add_arguments(self, parser):
        parser.add_argument("file", nargs="?", help="the certificate file, e.g. candlepin-redhat-ca.crt")
        parser.add_argument("--list", action="store_true", dest="list_only",
                            help="list the trusted certificates")

    def handle(self, *args, file, list_only, **options):
        directory = signature.trust_dir()
        if list_only:
            certs = signature.trusted_certificates()
            self.stdout.write(f"{len(certs)} trusted upstream certificate(s) in {directory}")
            for cert in certs:
                self.stdout.write(_describe(cert))
            return
        if not file:
            raise CommandError("Name the certificate file to trust (or use --list).")
        try:
            data = Path(file).read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc.strerror or exc}.") from None
        try:
            certs = signature.load_certificates(data)
        except ValueError:
            raise CommandError(f"{file} is not an X.509 certificate (PEM or DER).") from None
        if not certs:
            raise CommandError(f"{file} holds no certificate.")
        for cert in certs:
            if not isinstance(cert.public_key(), rsa.RSAPublicKey):
                raise CommandError("Only RSA certificates can verify manifest signatures "
                                   f"({cert.subject.rfc4514_string()} is not one).")
        directory.mkdir(parents=True, exist_ok=True)
        for cert in certs:
            target = directory / f"{signature.fingerprint(cert).replace(':', '').lower()[:32]}.pem"
            existed = target.exists()
            target.write_bytes(signature.pem(cert))
            target.chmod(0o644)
            verb = "Already trusted" if existed else "Trusted"
            self.stdout.write(self.style.SUCCESS(f"{verb}: {_describe(cert)}"))
            if cert.not_valid_after_utc < timezone.now():
                self.stdout.write(self.style.WARNING(
                    "  note: the certificate has expired; signatures are still checked with its key"))
        self.stdout.write(f"Written to {directory}; imports use it from now on.")
