"""Which content access mode each consumer is shown: the one place that decides it (issue 14).

subscription-manager 1.30 (RHEL 10) registers only with an org in Simple Content Access
(rhsm-wire.md 0); 1.28/1.29 need entitlement mode for attach, entitlement certificates and
auto-heal. An org's ``content_access_mode`` is ``entitlement`` or ``sca`` for every consumer, or
``per_client``: SCA to the clients that require it, recognised from the request's
``x-subscription-manager-version`` / ``User-Agent``, and from the fact ``distribution.version``
when the client names no version. That per-client decision is stored on the system at
registration and made again when the version or ``distribution.version`` changes.

The mode is presentation only: the engine accounts every system alike (entitlements consume
pool quantity); a consumer shown SCA gets the SCA content certificate and no entitlement
certificates. A change of what a consumer is shown is applied by
``subscriptions.content_access`` (in the request at registration, else by the worker).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from orgs.models import ConsumerIdentity, ContentAccessCertificate, Organization, System
from sam import pki
from sam.task_slots import TaskSlot

ENTITLEMENT = "entitlement"
SCA = "sca"
WIRE = {ENTITLEMENT: "entitlement", SCA: "org_environment"}  # Candlepin's contentAccessMode
LABELS = {ENTITLEMENT: "Entitlement", SCA: "Simple Content Access"}
SCA_FROM_CLIENT = (1, 30)  # subscription-manager 1.30 refuses entitlement-mode orgs
SCA_FROM_RHEL = 10  # distribution.version of RHEL 10, which ships 1.30
CERT_LIFETIME = timedelta(days=365)  # as Candlepin's SCA certificate
MAX_VERSION = 64

_UA_VERSION = re.compile(r"subscription-manager/(\d+\.\d+[0-9A-Za-z.\-_+]*)")
_NUMBERS = re.compile(r"^(\d+)(?:\.(\d+))?")


def _numbers(text: str) -> tuple[int, int] | None:
    match = _NUMBERS.match((text or "").strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def client_version(meta) -> str:
    """subscription-manager's version from a request's headers (``META``); "" when it names
    none (python-rhsm alone sends ``unknown``)."""
    header = str(meta.get("HTTP_X_SUBSCRIPTION_MANAGER_VERSION", "")).strip()
    if _numbers(header):
        return header[:MAX_VERSION]
    match = _UA_VERSION.search(str(meta.get("HTTP_USER_AGENT", "")))
    return match.group(1)[:MAX_VERSION] if match else ""


def requires_sca(version: str, facts: dict | None) -> bool:
    """A client that only works with SCA: 1.30 or later; without a version, a system whose
    ``distribution.version`` is RHEL 10 or later."""
    numbers = _numbers(version)
    if numbers is not None:
        return numbers >= SCA_FROM_CLIENT
    distribution = _numbers(str((facts or {}).get("distribution.version", "")))
    return distribution is not None and distribution[0] >= SCA_FROM_RHEL


def mode_for(org: Organization, client_requires_sca: bool) -> str:
    """``entitlement`` or ``sca`` as the org's setting applies to such a client."""
    setting = org.content_access_mode
    if setting == Organization.ContentAccess.SCA:
        return SCA
    if setting == Organization.ContentAccess.PER_CLIENT and client_requires_sca:
        return SCA
    return ENTITLEMENT


def presented(system: System) -> str:
    """The mode ``system`` is shown (its org's setting and its stored per-client decision)."""
    return mode_for(system.org, system.client_requires_sca)


def is_sca(system: System) -> bool:
    return presented(system) == SCA


def wire_mode(system: System) -> str:
    return WIRE[presented(system)]


def wire_mode_for_request(org: Organization, meta) -> str:
    """What a caller that is not a consumer (Basic: ``register --username`` asking for its
    orgs, ``GET /owners/{key}``) is shown: decided from its own client version."""
    return WIRE[mode_for(org, requires_sca(client_version(meta), None))]


def sca_q(prefix: str = "") -> Q:
    """Systems shown SCA (``prefix`` e.g. ``system__`` from a related model)."""
    mode = f"{prefix}org__content_access_mode"
    return Q(**{mode: Organization.ContentAccess.SCA}) | Q(
        **{mode: Organization.ContentAccess.PER_CLIENT, f"{prefix}client_requires_sca": True})


def shown_sca(org: Organization) -> int:
    """How many of the org's registered consumers are shown SCA (the dashboard's line); 0
    without a query in entitlement mode."""
    if org.content_access_mode == Organization.ContentAccess.ENTITLEMENT:
        return 0
    consumers = System.objects.filter(org=org, identity__isnull=False)
    if org.content_access_mode == Organization.ContentAccess.PER_CLIENT:
        consumers = consumers.filter(client_requires_sca=True)
    return consumers.count()


# --- The per-client decision ------------------------------------------------------------------

def note_client(system: System, meta) -> tuple[str, str]:
    """Store the client's version and whether it requires SCA (at registration, and whenever a
    consumer's request shows another version or its facts another ``distribution.version``):
    (mode shown before, mode shown now). ``subscriptions.content_access`` applies a change."""
    version = client_version(meta)
    needs = requires_sca(version, system.facts)
    before = presented(system)
    if version != system.client_version or needs != system.client_requires_sca:
        System.objects.filter(pk=system.pk).update(client_version=version, client_requires_sca=needs)
        system.client_version, system.client_requires_sca = version, needs
    return before, presented(system)


# Filled by subscriptions.tasks (sam/task_slots.py): certificates live above this layer.
apply_task = TaskSlot("subscriptions.tasks.apply_content_access")


def enqueue(system_ids: Iterable[int]) -> None:
    """Apply the mode of these consumers in a worker once the transaction commits."""
    ids = sorted({int(i) for i in system_ids})
    if not ids:
        return

    def send() -> None:
        for start in range(0, len(ids), 500):
            apply_task.delay(ids[start:start + 500])

    transaction.on_commit(send)


def org_changed(org: Organization) -> None:
    """The org's setting changed: every consumer of it is re-applied by the worker."""
    enqueue(ConsumerIdentity.objects.filter(system__org=org).values_list("system_id", flat=True))


# --- The SCA content certificate --------------------------------------------------------------

def payload(system: System) -> dict:
    """The certificate's JSON as Candlepin writes it for SCA: one "Content Access" product
    (sam serves no content, so its content list is empty)."""
    org = system.org
    return {
        "consumer": str(system.uuid), "quantity": 1,
        "subscription": {"sku": org.key, "name": "Simple Content Access"},
        "order": {"number": "", "quantity": 1, "start": "", "end": "", "contract": "",
                  "account": ""},
        "products": [{"id": "content_access", "name": "Content Access", "version": "",
                      "architectures": [], "brand_type": "", "brand_name": "", "content": []}],
        "pool": {},
    }


def ensure_certificate(system: System, *, renew: bool = False) -> ContentAccessCertificate:
    """The consumer's SCA certificate, issued when missing, expiring within a month, or
    ``renew``."""
    now = timezone.now()
    current = ContentAccessCertificate.objects.filter(system=system).first()
    if current is not None and not renew and current.not_after - now > timedelta(days=30):
        return current
    from orgs import consumers

    identity = ConsumerIdentity.objects.get(system=system)
    serial = pki.new_serial()
    start, end = now - timedelta(hours=1), now + CERT_LIFETIME
    data = zlib.compress(json.dumps(payload(system), separators=(",", ":")).encode("utf-8"))
    cert = pki.issue_entitlement(system.org.key, str(system.uuid), consumers.public_key(identity),
                                 serial, start, end, data,
                                 entitlement_type=pki.CONTENT_ACCESS_TYPE)
    row, _ = ContentAccessCertificate.objects.update_or_create(
        system=system, defaults={"serial": serial, "cert_pem": cert, "not_before": start,
                                 "not_after": end, "issued": now.replace(microsecond=0)})
    return row


def certificate_of(system: System) -> ContentAccessCertificate | None:
    """The SCA certificate a consumer shown SCA holds (None for the others)."""
    if not is_sca(system):
        return None
    return ContentAccessCertificate.objects.filter(system=system).first()


def content_listing(cert: ContentAccessCertificate) -> list[str]:
    """``accessible_content``'s ``contentListing`` value: the X.509 part and the rest, which
    the client joins into the certificate file."""
    marker = "-----END CERTIFICATE-----\n"
    head, _, tail = cert.cert_pem.partition(marker)
    return [head + marker, tail]
