"""Queries the hypervisor pages of the web UI and the REST API share (architecture.md habit 15:
one definition, no UI importing the API's helpers)."""

from __future__ import annotations

from django.db.models import Count, Exists, IntegerField, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce

from hypervisors.models import GuestId
from orgs.models import System

HISTORY_LENGTH = 20
DETAIL_GUESTS = 100


def attach_registered(org, rows: list[GuestId]) -> list[GuestId]:
    """Set ``registered`` on each guest row: one query for the whole page (both byte orders)."""
    uuids = {row.guest_uuid for row in rows}
    found: dict[str, System] = {}
    if uuids:
        for system in System.objects.filter(org=org).filter(
                Q(virt_uuid__in=uuids) | Q(virt_uuid_swapped__in=uuids)).only(
                "uuid", "name", "virt_uuid", "virt_uuid_swapped").order_by("id"):
            found.setdefault(system.virt_uuid, system)
            if system.virt_uuid_swapped:
                found.setdefault(system.virt_uuid_swapped, system)
    for row in rows:
        row.registered = found.get(row.guest_uuid)  # type: ignore[attr-defined]  # for the page only
    return rows


def guests_of(host: System):
    others = GuestId.objects.filter(org_id=host.org_id, guest_uuid=OuterRef("guest_uuid")).exclude(
        host_id=host.id)
    return GuestId.objects.filter(host=host).annotate(conflict=Exists(others))


def per_host_count(queryset, field: str):
    """Rows of ``queryset`` per host (``field`` points at it), as a subquery annotation."""
    per_host = queryset.filter(**{field: OuterRef("pk")}).order_by().values(field).annotate(
        n=Count("*")).values("n")
    return Coalesce(Subquery(per_host, output_field=IntegerField()), 0)
