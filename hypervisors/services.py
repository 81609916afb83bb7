"""The host→guest mapping and the lifecycle of systems that take part in it.

System registration lives here (not in ``orgs``) because a registering guest must be linked to
the host that reports it, and the mapping is this app's: ``orgs`` ← ``subscriptions`` ←
``hypervisors``. Every change of the mapping updates ``System.current_host`` set-based and
enqueues resolution of exactly the registered guests it affects (domain.md 6).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from hypervisors.models import GuestHostInterval, GuestId
from orgs.models import Organization, System
from sam import locks
from sam.errors import NotFound
from sam.ids import normalize_guest_uuid, parse_uuid, swapped_uuid
from subscriptions import services as subscriptions

MAX_NAME = 250


# --- Input cleaning ---------------------------------------------------------------------------

def _require_org(org) -> Organization:
    if not isinstance(org, Organization) or org.pk is None or not Organization.objects.filter(
        pk=org.pk
    ).exists():
        raise ValidationError("Unknown organization.", code="unknown_org")
    return org


def _clean_facts(facts) -> dict[str, str]:
    if facts is None:
        return {}
    if not isinstance(facts, dict):
        raise ValidationError("facts must be an object of name → value.", code="invalid")
    cleaned = {}
    for name, value in facts.items():
        if not isinstance(name, str) or not name:
            raise ValidationError("fact names must be non-empty strings.", code="invalid")
        if isinstance(value, (dict, list)):
            raise ValidationError(f"fact {name!r} must be a plain value.", code="invalid")
        cleaned[name] = "" if value is None else (
            str(value).lower() if isinstance(value, bool) else str(value))
    return cleaned


def _clean_installed(products) -> list[dict]:
    if products is None:
        return []
    if not isinstance(products, list):
        raise ValidationError("installed_products must be a list.", code="invalid")
    cleaned = []
    for item in products:
        if isinstance(item, (str, int)) and not isinstance(item, bool):
            item = {"productId": str(item)}
        if not isinstance(item, dict) or not str(item.get("productId") or "").strip():
            raise ValidationError("each installed product needs a productId.", code="invalid")
        cleaned.append({k: str(v) for k, v in item.items() if v is not None})
    return cleaned


def _clean_name(name) -> str:
    name = str(name or "").strip()
    if not name:
        raise ValidationError("name must not be empty.", code="invalid")
    return name[:MAX_NAME]


def _clean_hypervisor_id(value) -> str:
    text = normalize_guest_uuid(value or "")
    if not text:
        raise ValidationError("hypervisor id must not be empty.", code="invalid")
    if len(text) > 255:
        raise ValidationError("hypervisor id is longer than 255 characters.", code="invalid")
    return text


def _identity_columns(facts: dict[str, str]) -> dict:
    """The indexed copies of the facts that link guests to hosts and hardware to hypervisors."""
    is_guest = facts.get("virt.is_guest", "").strip().lower() == "true"
    virt = normalize_guest_uuid(facts.get("virt.uuid", "")) or None
    dmi = normalize_guest_uuid(facts.get("dmi.system.uuid", "")) or None
    return {
        "is_guest": is_guest,
        "virt_uuid": virt if is_guest else None,
        "virt_uuid_swapped": swapped_uuid(virt) if (is_guest and virt) else None,
        "dmi_uuid": dmi,
    }


# --- Current host -----------------------------------------------------------------------------

def _newest_host(org_id: int):
    """Subquery: the host of the most recently written guest-id row matching a system's
    ``virt.uuid`` in either byte order (served by ``guestid_org_guest_upd_idx``)."""
    return Subquery(
        GuestId.objects.filter(org_id=org_id)
        .filter(Q(guest_uuid=OuterRef("virt_uuid")) | Q(guest_uuid=OuterRef("virt_uuid_swapped")))
        .order_by("-updated", "-id").values("host_id")[:1]
    )


def refresh_current_hosts(org: Organization, guest_uuids: Iterable[str], now: datetime) -> list[int]:
    """Recompute ``current_host`` of the registered guests reported under these UUIDs.

    Set-based: one SELECT of the guests whose host changes, two UPDATEs. Returns the ids of all
    registered guests with those UUIDs (the ones to re-resolve).
    """
    uuids = sorted({normalize_guest_uuid(u) for u in guest_uuids if u})
    if not uuids:
        return []
    guests = System.objects.filter(org=org, is_guest=True).filter(
        Q(virt_uuid__in=uuids) | Q(virt_uuid_swapped__in=uuids)
    )
    rows = list(guests.annotate(new_host=_newest_host(org.id))
                .values_list("id", "current_host_id", "new_host"))
    gained = [gid for gid, old, new in rows if new is not None and new != old]
    lost = [gid for gid, old, new in rows if new is None and old is not None]
    if gained:
        System.objects.filter(id__in=gained).update(
            current_host=_newest_host(org.id), host_unknown_since=None
        )
    if lost:
        System.objects.filter(id__in=lost).update(current_host=None, host_unknown_since=now)
    return [gid for gid, _, _ in rows]


def _hosts_of(org: Organization, uuids: list[str]) -> dict[str, int]:
    """The current host id of each reported guest UUID (newest row wins)."""
    hosts: dict[str, tuple] = {}
    for uuid, host_id, updated, row_id in GuestId.objects.filter(
        org=org, guest_uuid__in=uuids
    ).values_list("guest_uuid", "host_id", "updated", "id"):
        if uuid not in hosts or (updated, row_id) > hosts[uuid][1:]:
            hosts[uuid] = (host_id, updated, row_id)
    return {uuid: value[0] for uuid, value in hosts.items()}


def _record_timeline(org: Organization, before: dict[str, int], after: dict[str, int],
                     now: datetime, source: str) -> list[tuple[str, int | None, int | None]]:
    """Close and open host intervals of the UUIDs whose current host changed."""
    moves = [(u, before.get(u), after.get(u)) for u in sorted(set(before) | set(after))
             if before.get(u) != after.get(u)]
    if not moves:
        return moves
    GuestHostInterval.objects.filter(
        org=org, guest_uuid__in=[u for u, _, _ in moves], ended__isnull=True
    ).update(ended=now)
    hosts = {s.id: s for s in System.objects.filter(id__in={n for _, _, n in moves if n})}
    GuestHostInterval.objects.bulk_create([
        GuestHostInterval(org=org, guest_uuid=u, host_id=new, host_name=hosts[new].name,
                          host_hypervisor_id=hosts[new].hypervisor_id or "", started=now,
                          source=source)
        for u, _, new in moves if new is not None
    ])
    return moves


# --- The mapping primitive --------------------------------------------------------------------

@dataclass
class GuestListChange:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    moves: list[tuple[str, int | None, int | None]] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def clean_guest_list(guests) -> dict[str, dict[str, str]]:
    """Reported guests (strings or ``{guestId, attributes}``) → uuid → attributes. Empty ids are
    dropped; a UUID listed twice keeps its last attributes."""
    if not isinstance(guests, list):
        raise ValidationError("guestIds must be a list.", code="invalid")
    cleaned: dict[str, dict[str, str]] = {}
    for item in guests:
        if isinstance(item, str):
            uuid, attributes = item, {}
        elif isinstance(item, dict):
            uuid, attributes = item.get("guestId"), item.get("attributes") or {}
            if not isinstance(attributes, dict):
                raise ValidationError("guest attributes must be an object.", code="invalid")
        else:
            raise ValidationError("each guest must be a UUID string or an object.", code="invalid")
        uuid = normalize_guest_uuid(uuid or "") if isinstance(uuid, str) or uuid is None else None
        if uuid is None:
            raise ValidationError("guestId must be a string.", code="invalid")
        if not uuid:
            continue
        if len(uuid) > 64:
            raise ValidationError(f"guestId {uuid[:70]!r} is longer than 64 characters.",
                                  code="invalid")
        cleaned[uuid] = {str(k): str(v) for k, v in attributes.items()}
    return cleaned


def set_guest_list(org: Organization, host: System, guests, source: str = "",
                   trigger: str = "report") -> GuestListChange:
    """Make ``guests`` the complete guest list of ``host`` (domain.md 2, virt-who-api.md).

    New UUIDs are added, missing ones removed, rows whose attributes changed are rewritten (a
    fresh ``updated`` makes this host the guest's current host). Registered guests affected
    get their current host updated and are re-resolved after commit. No change → no trigger.
    """
    _require_org(org)
    wanted = clean_guest_list(guests)
    if host.org_id != org.id:
        raise NotFound(f"Host {host.uuid} does not exist in organization {org.key}.")
    now = timezone.now()
    with transaction.atomic():
        locks.xact_lock(locks.ORG_REPORT, org.id)
        existing = {g.guest_uuid: g for g in GuestId.objects.filter(host=host)}
        removed = sorted(set(existing) - set(wanted))
        added = sorted(set(wanted) - set(existing))
        changed = sorted(u for u in set(wanted) & set(existing)
                         if existing[u].attributes != wanted[u])
        change = GuestListChange(added=added, removed=removed, changed=changed)
        if not change.any:
            return change
        touched = removed + added + changed
        before = _hosts_of(org, touched)
        GuestId.objects.filter(host=host, guest_uuid__in=removed).delete()
        GuestId.objects.bulk_create([
            GuestId(org=org, host=host, guest_uuid=u, attributes=wanted[u], updated=now)
            for u in added
        ])
        for uuid in changed:
            GuestId.objects.filter(pk=existing[uuid].pk).update(attributes=wanted[uuid], updated=now)
        after = _hosts_of(org, touched)
        change.moves = _record_timeline(org, before, after, now, source)
        change.resolved = refresh_current_hosts(org, touched + [
            s for s in (swapped_uuid(u) for u in touched) if s], now)
        subscriptions.enqueue_resolution(change.resolved, trigger)
        return change


def report_hypervisor(org: Organization, hypervisor_id: str, name: str | None = None,
                      facts: dict | None = None, guests: list | None = None,
                      reporter_id: str | None = None, create_missing: bool = True,
                      source: str = "") -> tuple[System | None, str]:
    """Apply one reported hypervisor: match by id, then by ``dmi.system.uuid``; create it if
    missing. Returns the system and ``created`` / ``updated`` / ``unchanged`` / ``missing``.

    ``guests`` None leaves the guest list alone; ``[]`` clears it. ``facts`` None leaves them.
    """
    _require_org(org)
    hv_id = _clean_hypervisor_id(hypervisor_id)
    clean = _clean_facts(facts) if facts is not None else None
    now = timezone.now()
    with transaction.atomic():
        locks.xact_lock(locks.ORG_REPORT, org.id)
        system = System.objects.filter(org=org, hypervisor_id=hv_id).first()
        if system is None and clean and clean.get("dmi.system.uuid"):
            system = (System.objects.filter(org=org, dmi_uuid=normalize_guest_uuid(
                clean["dmi.system.uuid"])).order_by("-updated", "-id").first())
        status = "unchanged"
        if system is None:
            if not create_missing:
                return None, "missing"
            facts_now = clean if clean is not None else {"uname.machine": "x86_64"}
            system = System.objects.create(
                org=org, type=System.Type.HYPERVISOR,
                name=(name or hypervisor_id.lstrip("#"))[:MAX_NAME],
                facts=facts_now, hypervisor_id=hv_id, reporter_id=reporter_id,
                last_checkin=now, registered_at=now, **_identity_columns(facts_now),
            )
            status = "created"
        else:
            fields = {"last_checkin": now}
            if system.hypervisor_id != hv_id:
                fields["hypervisor_id"] = hv_id
            if system.type != System.Type.HYPERVISOR:
                fields["type"] = System.Type.HYPERVISOR
            if name and name[:MAX_NAME] != system.name:
                fields["name"] = name[:MAX_NAME]
            if clean is not None and clean != system.facts:
                fields["facts"] = clean
                fields.update(_identity_columns(clean))
            if len(fields) > 1:
                status = "updated"
            if reporter_id and reporter_id != system.reporter_id:
                fields["reporter_id"] = reporter_id
            System.objects.filter(pk=system.pk).update(**fields)
            system.refresh_from_db()
        if guests is not None:
            change = set_guest_list(org, system, guests, source=source)
            if change.any and status == "unchanged":
                status = "updated"
        return system, status


# --- System lifecycle -------------------------------------------------------------------------

def register_system(org: Organization, name: str, facts: dict | None = None,
                    installed_products: list | None = None, type: str = System.Type.SYSTEM,
                    uuid=None, hypervisor_id: str | None = None, autoheal: bool = True,
                    registered_at: datetime | None = None, trigger: str = "registration") -> System:
    """Register a machine (subscription-manager ``POST /consumers``).

    A non-guest with ``dmi.system.uuid`` and no hypervisor id takes that UUID as hypervisor id;
    if virt-who already created a hypervisor with it, that system is updated and returned
    instead of creating a second one (domain.md S12).
    """
    _require_org(org)
    if type not in System.Type.values:
        raise ValidationError(f"Unknown system type {type!r}; use one of "
                              f"{', '.join(System.Type.values)}.", code="invalid")
    name = _clean_name(name)
    facts = _clean_facts(facts)
    products = _clean_installed(installed_products)
    if not isinstance(autoheal, bool):
        raise ValidationError("autoheal must be true or false.", code="invalid")
    public_id = parse_uuid(uuid, "uuid") if uuid is not None else None
    hv_id = _clean_hypervisor_id(hypervisor_id) if hypervisor_id else None
    identity = _identity_columns(facts)
    if hv_id is None and not identity["is_guest"] and identity["dmi_uuid"]:
        hv_id = identity["dmi_uuid"]
    now = timezone.now()
    with transaction.atomic():
        locks.xact_lock(locks.ORG_REPORT, org.id)
        existing = System.objects.filter(org=org, hypervisor_id=hv_id).first() if hv_id else None
        if existing is not None:
            System.objects.filter(pk=existing.pk).update(
                name=name, facts=facts, installed_products=products, autoheal=autoheal,
                last_checkin=now, **identity,
            )
            system = existing
        else:
            if public_id and System.objects.filter(uuid=public_id).exists():
                raise ValidationError(f"A system with uuid {public_id} already exists.",
                                      code="duplicate")
            system = System(
                org=org, type=type, name=name, facts=facts, installed_products=products,
                hypervisor_id=hv_id, autoheal=autoheal, last_checkin=now,
                registered_at=registered_at or now, **identity,
            )
            if public_id:
                system.uuid = public_id
            system.save()
        if identity["virt_uuid"]:
            refresh_current_hosts(org, [identity["virt_uuid"]], now)
        subscriptions.enqueue_resolution([system.id], trigger)
    system.refresh_from_db()
    return system


def get_system(org: Organization, system_uuid) -> System:
    _require_org(org)
    key = parse_uuid(system_uuid, "system")
    try:
        return System.objects.select_related("org", "current_host").get(org=org, uuid=key)
    except System.DoesNotExist:
        raise NotFound(f"System {key} does not exist in organization {org.key}.") from None


def update_system(org: Organization, system_uuid, name: str | None = None,
                  facts: dict | None = None, installed_products: list | None = None,
                  autoheal: bool | None = None, trigger: str = "system_update") -> System:
    """Change a system; new facts or installed products re-resolve it (domain.md 6)."""
    system = get_system(org, system_uuid)
    fields: dict = {}
    if name is not None:
        fields["name"] = _clean_name(name)
    if facts is not None:
        clean = _clean_facts(facts)
        fields["facts"] = clean
        fields.update(_identity_columns(clean))
    if installed_products is not None:
        fields["installed_products"] = _clean_installed(installed_products)
    if autoheal is not None:
        if not isinstance(autoheal, bool):
            raise ValidationError("autoheal must be true or false.", code="invalid")
        fields["autoheal"] = autoheal
    now = timezone.now()
    with transaction.atomic():
        locks.xact_lock(locks.ORG_REPORT, org.id)
        System.objects.filter(pk=system.pk).update(**fields)
        uuids = {system.virt_uuid, fields.get("virt_uuid")} - {None}
        if "facts" in fields and uuids:
            if not fields.get("virt_uuid"):
                System.objects.filter(pk=system.pk).update(current_host=None)
            refresh_current_hosts(org, uuids, now)
        if {"facts", "installed_products", "autoheal"} & set(fields):
            subscriptions.enqueue_resolution([system.id], trigger)
    system.refresh_from_db()
    return system


def delete_system(org: Organization, system_uuid, trigger: str = "system_deleted") -> None:
    """Unregister a system: its entitlements are revoked and logged, derived pools of a host
    disappear, and its guests move to their next reported host (or none) and are re-resolved."""
    system = get_system(org, system_uuid)
    now = timezone.now()
    with transaction.atomic():
        locks.xact_lock(locks.ORG_REPORT, org.id)
        locks.xact_lock(locks.SYSTEM, system.id)
        ents = list(system.entitlements.select_related(
            "system", "pool__product", "pool__subscription__product", "pool__requires_host"))
        affected = subscriptions.revoke_entitlements(ents, "system_deleted", trigger)
        reported = list(GuestId.objects.filter(host=system).values_list("guest_uuid", flat=True))
        before = _hosts_of(org, reported)
        guests = list(System.objects.filter(current_host=system).values_list("id", flat=True))
        # Guest entitlements from this host's derived pools went with the pools (logged above).
        GuestId.objects.filter(host=system).delete()
        _record_timeline(org, before, _hosts_of(org, reported), now, trigger)
        refreshed = refresh_current_hosts(org, reported + [
            s for s in (swapped_uuid(u) for u in reported) if s], now)
        System.objects.filter(current_host=system).update(current_host=None, host_unknown_since=now)
        system_id = system.id
        system.delete()
        affected = (affected | set(guests) | set(refreshed)) - {system_id}
        subscriptions.enqueue_resolution(affected, trigger)
