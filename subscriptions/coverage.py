"""Coverage counts of an org, set-based, and the daily snapshots behind the dashboard chart.

Guest, hypervisor, covered / temporarily covered / not covered and "has a subscription" are
defined once, in ``orgs.models.SystemQuerySet``. Each count is one aggregate query whatever the
size of the org; the dashboard caches them for ``CACHE_SECONDS`` (and drops the cached copy as
soon as an entitlement event or a new system appears, so a change shows at once without scanning
on every page view).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime

from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Model, Q
from django.utils import timezone

from orgs.models import Organization, System
from subscriptions.models import CoverageSnapshot, Entitlement, EntitlementEvent

CACHE_SECONDS = 60


@dataclass(frozen=True)
class Coverage:
    guests_covered: int = 0
    guests_temporary: int = 0
    guests_uncovered: int = 0
    hypervisors_with: int = 0
    hypervisors_without: int = 0

    @property
    def guests(self) -> int:
        return self.guests_covered + self.guests_temporary + self.guests_uncovered

    @property
    def hypervisors(self) -> int:
        return self.hypervisors_with + self.hypervisors_without

    def as_dict(self) -> dict:
        return asdict(self)


def current_entitlements(now: datetime):
    """Entitlements in force at ``now`` (``EntitlementQuerySet.in_force``)."""
    return Entitlement.objects.in_force(now)


def compute(org: Organization, now: datetime | None = None) -> Coverage:
    """The five counts in two aggregate queries (guests, hypervisors), with the definitions of
    ``SystemQuerySet`` (the lists the dashboard links to filter with the same ones)."""
    now = now or timezone.now()
    systems = System.objects.filter(org=org).with_coverage(now)
    guests = systems.guests().aggregate(
        covered=Count("pk", filter=Q(has_full=True)),
        temporary=Count("pk", filter=Q(has_full=False, has_temp=True)),
        uncovered=Count("pk", filter=Q(subscribed=False)))
    hypervisors = systems.hypervisors().aggregate(yes=Count("pk", filter=Q(subscribed=True)),
                                                  no=Count("pk", filter=Q(subscribed=False)))
    return Coverage(guests["covered"], guests["temporary"], guests["uncovered"],
                    hypervisors["yes"], hypervisors["no"])


def data_version(*also: type[Model]) -> tuple:
    """Cheap change marker (primary-key maxima, index-only): a new entitlement event or system,
    or a new row of a model in ``also`` (the dashboard adds its reports), means cached numbers
    are stale."""
    counted: tuple[type[Model], ...] = (EntitlementEvent, System, *also)
    tables = [model._meta.db_table for model in counted]
    sql = "SELECT " + ", ".join(f"(SELECT MAX(id) FROM {table})" for table in tables)
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return tuple(cursor.fetchone())


def cached(org: Organization, version: tuple | None = None) -> Coverage:
    """``compute`` cached per org for ``CACHE_SECONDS``, refreshed early when data changed
    (``version``: a ``data_version()`` the caller already read)."""
    key = f"sam:coverage:{org.pk}"
    version = version if version is not None else data_version()
    hit = cache.get(key)
    if hit is not None and hit[0] == version:
        return Coverage(**hit[1])
    value = compute(org)
    cache.set(key, (version, value.as_dict()), CACHE_SECONDS)
    return value


def record_snapshot(org: Organization, day: date | None = None) -> CoverageSnapshot:
    """Upsert the org's snapshot of ``day`` (today by default): running twice changes nothing."""
    day = day or timezone.localdate()
    snapshot, _ = CoverageSnapshot.objects.update_or_create(
        org=org, day=day, defaults=compute(org).as_dict())
    return snapshot


def record_all(day: date | None = None) -> int:
    count = 0
    for org in Organization.objects.order_by("pk").only("pk"):
        record_snapshot(org, day)
        count += 1
    return count
