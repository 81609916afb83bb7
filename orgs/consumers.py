"""Consumer identities: the key pair and identity certificate of a system registered by
subscription-manager, their renewal and revocation, and the tombstones of deleted systems.

Revocation is by serial: consumer authentication (``orgs.certauth``) accepts only the current
serial (or, after an automatic renewal, the previous one until the new one is first presented
or the old one expires), so issuing a new serial revokes the old certificate at once.
"""

from __future__ import annotations

from datetime import datetime

from cryptography.hazmat.primitives import serialization
from django.db import IntegrityError, transaction
from django.utils import timezone

from orgs.models import ConsumerIdentity, DeletedSystem, System
from sam import clientcert, pki


def _issue(system: System, key_public, now: datetime) -> tuple[int, str, datetime]:
    # 63 random bits: a collision is practically impossible, and the unique index on
    # ``serial`` would refuse it (the request fails and the client retries), so no lookup.
    serial = pki.new_serial()
    cert = pki.issue_identity(system.org.key, str(system.uuid), system.name, key_public, serial, now)
    return serial, pki.pem(cert), cert.not_valid_after_utc


def create_identity(system: System, via: str = ConsumerIdentity.Via.PASSWORD,
                    registered_by: str = "", **purpose) -> ConsumerIdentity:
    """A new key pair (from the stock) and identity certificate for ``system``."""
    key = pki.KEYS.take()
    now = timezone.now()
    serial, cert_pem, not_after = _issue(system, key.public_key(), now)
    fields = dict(sealed_key=pki.seal_key(key), serial=serial, cert_pem=cert_pem,
                  not_after=not_after, previous_serial=None, previous_not_after=None,
                  registered_via=via, registered_by=registered_by[:255], **purpose)
    # An INSERT: registration never takes over a row that already has an identity (a clone
    # gets its own row, hypervisors.services.register_system), under the org's lock.
    return ConsumerIdentity.objects.create(system=system, **fields)


def key_pem(identity: ConsumerIdentity) -> str:
    return pki.open_key_pem(identity.sealed_key).decode("ascii")


def public_key(identity: ConsumerIdentity):
    """The consumer's public key, from the key pair sam sealed itself: cryptography's RSA
    validation (~50 ms a key) would only re-check sam's own work, so it is skipped."""
    private = serialization.load_pem_private_key(pki.open_key_pem(identity.sealed_key), None,
                                                 unsafe_skip_rsa_key_validation=True)
    return private.public_key()


def regenerate(identity: ConsumerIdentity) -> ConsumerIdentity:
    """``identity --regenerate``: a new serial; the old certificate is refused from now on."""
    with transaction.atomic():
        identity = ConsumerIdentity.objects.select_for_update().select_related(
            "system__org").get(pk=identity.pk)
        serial, cert_pem, not_after = _issue(identity.system, public_key(identity), timezone.now())
        identity.serial, identity.cert_pem, identity.not_after = serial, cert_pem, not_after
        identity.previous_serial = identity.previous_not_after = None
        identity.save(update_fields=["serial", "cert_pem", "not_after", "previous_serial",
                                     "previous_not_after", "updated"])
    clientcert.close_after_response()  # a keep-alive client reconnects with the new certificate
    return identity


def renew_if_due(identity: ConsumerIdentity, now: datetime | None = None) -> ConsumerIdentity:
    """Inside ``GET /consumers/{uuid}``: within ``IDENTITY_RENEW_WITHIN`` of expiry a new
    certificate is issued; the previous one keeps working until the new one is first used or
    it expires (only rhsmcertd installs the new one)."""
    now = now or timezone.now()
    if identity.not_after - now > pki.IDENTITY_RENEW_WITHIN:
        return identity
    with transaction.atomic():
        locked = ConsumerIdentity.objects.select_for_update().select_related(
            "system__org").get(pk=identity.pk)
        if locked.not_after - now > pki.IDENTITY_RENEW_WITHIN:
            return locked  # renewed by a concurrent request
        old_serial, old_end = locked.serial, locked.not_after
        serial, cert_pem, not_after = _issue(locked.system, public_key(locked), now)
        locked.previous_serial, locked.previous_not_after = old_serial, old_end
        locked.serial, locked.cert_pem, locked.not_after = serial, cert_pem, not_after
        locked.save(update_fields=["serial", "cert_pem", "not_after", "previous_serial",
                                   "previous_not_after", "updated"])
    return locked


def retire_previous(identity: ConsumerIdentity) -> None:
    """The renewed certificate was presented: the previous one stops working."""
    if identity.previous_serial is not None:
        ConsumerIdentity.objects.filter(pk=identity.pk, serial=identity.serial).update(
            previous_serial=None, previous_not_after=None)
        identity.previous_serial = identity.previous_not_after = None


def tombstone(system: System, deleted_by: str = "") -> None:
    """Remember a deleted system's uuid: later requests for it answer 410 + ``deletedId``."""
    try:
        with transaction.atomic():
            DeletedSystem.objects.create(uuid=system.uuid, org_id=system.org_id,
                                         name=system.name[:255], deleted_by=deleted_by[:255])
    except IntegrityError:
        pass  # already there


def deleted(uuid) -> DeletedSystem | None:
    return DeletedSystem.objects.filter(uuid=uuid).first()


def serial_entry(identity: ConsumerIdentity) -> dict:
    """Candlepin's CertificateSerialDTO for the identity certificate."""
    return {"id": identity.serial, "serial": identity.serial, "revoked": False,
            "expiration": identity.not_after.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "collected": False}
