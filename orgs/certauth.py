"""Consumer authentication by identity certificate (the third credential beside passwords and
tokens in ``orgs.auth``): who a request with a client certificate is.

The certificate comes from ``sam.clientcert`` (sam's own TLS layer, or a trusted proxy's
header) and is re-checked here: signed by sam's CA, inside its validity, CN = the uuid of a
live system whose current identity serial it carries (or the previous one during a renewal's
grace). A deleted system answers ``Gone`` (410 with ``deletedId``).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.x509.oid import NameOID
from django.utils import timezone

from orgs import consumers
from orgs.auth import BadCredentials
from orgs.models import ConsumerIdentity, System
from sam import clientcert, pki
from sam.ids import parse_uuid


class Gone(Exception):
    """The consumer was deleted: 410 with ``deletedId``."""

    def __init__(self, uuid: str):
        self.uuid = uuid
        super().__init__(f"Unit {uuid} has been deleted")


@dataclass
class ConsumerPrincipal:
    system: System
    identity: ConsumerIdentity

    @property
    def org(self):
        return self.system.org


def consumer_principal(request) -> ConsumerPrincipal | None:
    """The consumer of the request's client certificate; None without one. ``BadCredentials``
    for a certificate sam does not accept, ``Gone`` for a deleted consumer's."""
    presented = clientcert.presented_certificate(request)
    if not presented:
        return None
    try:
        cert = pki.verify_client_cert(presented)
    except pki.UntrustedCertificate:
        raise BadCredentials("Invalid client certificate.") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        uuid = parse_uuid(names[0].value if names else "")
    except Exception:
        raise BadCredentials("Invalid client certificate.") from None
    identity = (ConsumerIdentity.objects.select_related("system__org", "system__current_host")
                .filter(system__uuid=uuid).first())
    if identity is None:
        if consumers.deleted(uuid):
            raise Gone(str(uuid))
        raise BadCredentials("Invalid client certificate.")
    serial = cert.serial_number
    if serial == identity.serial:
        consumers.retire_previous(identity)
    elif not (serial == identity.previous_serial and identity.previous_not_after
              and identity.previous_not_after > timezone.now()):
        raise BadCredentials("Invalid client certificate.")  # revoked (regenerated) or unknown
    return ConsumerPrincipal(identity.system, identity)
