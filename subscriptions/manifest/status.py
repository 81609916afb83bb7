"""An org's manifest at a glance: its distributor, the manifest's expiry (the identity
certificate, as Katello shows it), its subscriptions' ends and the last import. One function
serves the API, the manifest page and the dashboard."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.utils import timezone

from orgs.models import Organization
from subscriptions.models import ManifestImport, Subscription, UpstreamDistributor

EXPIRY_WARNING = timedelta(days=90)


@dataclass
class Expiry:
    when: datetime | None
    expired: bool = False
    expires_soon: bool = False
    days_left: int | None = None


def expiry(when: datetime | None, now: datetime) -> Expiry:
    if when is None:
        return Expiry(None)
    return Expiry(when, expired=when <= now, expires_soon=now < when <= now + EXPIRY_WARNING,
                  days_left=max(0, (when - now).days))


@dataclass
class ManifestStatus:
    distributor: UpstreamDistributor | None
    last_import: ManifestImport | None
    manifest_expiry: Expiry
    subscriptions: list[Subscription] = field(default_factory=list)  # soonest end first

    @property
    def imported(self) -> bool:
        return self.distributor is not None


def manifest_status(org: Organization, now: datetime | None = None, limit: int = 50) -> ManifestStatus:
    """Three queries whatever the size of the org."""
    now = now or timezone.now()
    distributor = UpstreamDistributor.objects.filter(org=org).first()
    last = ManifestImport.objects.filter(org=org).defer("payload").order_by("-created", "-id").first()
    subs = list(Subscription.objects.filter(org=org, managed=True).select_related("product")
                .order_by("end", "id")[:limit])
    for sub in subs:
        sub.expiry = expiry(sub.end, now)
    expires = distributor.id_cert_expires if distributor else None
    return ManifestStatus(distributor, last, expiry(expires, now), subs)
