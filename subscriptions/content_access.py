"""A consumer's certificates follow the content access mode it is shown (issue 14).

``orgs.content_access`` decides the mode; here its consequences for certificates are applied:
shown SCA, a consumer holds the SCA content certificate and no entitlement certificates (its
entitlements, the accounting, stay); shown entitlement mode, the reverse. Changes are applied
under the system's lock, the one under which resolution changes its certificates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.db import transaction

from orgs import content_access
from orgs.models import ContentAccessCertificate, System
from subscriptions import certificates
from subscriptions.models import EntitlementCertificate
from subscriptions.services import lock_system


def note_client(system: System, meta: Mapping[str, Any], *, issue_now: bool = False) -> bool:
    """Record the client's version (``orgs.content_access.note_client``); True when what it is
    shown changed. ``issue_now`` (registration, in the request: the client fetches its
    certificates right after) puts an SCA consumer's certificates right at once; otherwise a
    change is applied by the worker."""
    before, now = content_access.note_client(system, meta)
    if issue_now:
        if now == content_access.SCA:
            EntitlementCertificate.objects.filter(system=system).delete()
            content_access.ensure_certificate(system)
    elif now != before:
        content_access.enqueue([system.pk])
    return now != before


def apply(system_ids: Iterable[int]) -> dict[str, int]:
    """Make each consumer's certificates match its mode (idempotent: a redelivered task finds
    them already applied)."""
    done = {"sca": 0, "entitlement": 0}
    systems = (System.objects.filter(pk__in=sorted({int(i) for i in system_ids}),
                                     identity__isnull=False).select_related("org", "identity"))
    for system in systems:
        with transaction.atomic():
            lock_system(system)
            if content_access.is_sca(system):
                EntitlementCertificate.objects.filter(system=system).delete()
                content_access.ensure_certificate(system)
                done["sca"] += 1
            else:
                ContentAccessCertificate.objects.filter(system=system).delete()
                certificates.sync([system.pk])
                done["entitlement"] += 1
    return done
