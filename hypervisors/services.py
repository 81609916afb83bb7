"""The host→guest mapping and the lifecycle of systems that take part in it.

System registration lives here (not in ``orgs``) because a registering guest must be linked to
the host that reports it, and the mapping is this app's: ``orgs`` ← ``subscriptions`` ←
``hypervisors``. Every change of the mapping updates ``System.current_host`` set-based and
enqueues resolution of exactly the registered guests it affects (domain.md 6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from hypervisors import ingest
from hypervisors.models import GuestId
from orgs.models import Organization, System
from orgs.services import require_org
from sam import locks
from sam.errors import NotFound
from sam.ids import normalize_guest_uuid, parse_uuid
from subscriptions import services as subscriptions
from subscriptions.services import get_system  # noqa: F401  (part of this module's API)

MAX_NAME = 250


# --- Input cleaning ---------------------------------------------------------------------------

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


# --- The mapping primitives (one code path: hypervisors.ingest) ------------------------------

@dataclass
class GuestListChange:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    moves: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    any: bool = False


def set_guest_list(org: Organization, host: System, guests, source: str = "",
                   trigger: str = "report") -> GuestListChange:
    """Make ``guests`` the complete guest list of ``host`` (domain.md 2, virt-who-api.md).

    New UUIDs are added, missing ones removed, rows whose attributes changed are rewritten (a
    fresh ``updated`` makes this host the guest's current host). Registered guests affected
    get their current host updated and are re-resolved after commit. No change → no trigger.
    """
    require_org(org)
    if host.org_id != org.id:
        raise NotFound(f"Host {host.uuid} does not exist in organization {org.key}.")
    try:
        wanted = ingest.clean_guests(guests)
    except ValueError as exc:
        raise ValidationError(f"{exc}.", code="invalid") from None
    key = host.hypervisor_id or f"#{host.uuid}"
    entry = ingest.Entry(hypervisor_id=key, raw_id=host.hypervisor_id or str(host.uuid),
                         guests=wanted, system_id=host.id)
    applied = ingest.apply_entries(org, [entry], source=source, trigger=trigger)
    return GuestListChange(
        added=[g for g, _ in applied.added], removed=[g for g, _ in applied.removed],
        moves=applied.moved, resolved=applied.resolved,
        any=applied.statuses.get(key) == "updated",
    )


def report_hypervisor(org: Organization, hypervisor_id: str, name: str | None = None,
                      facts: dict | None = None, guests: list | None = None,
                      reporter_id: str | None = None, create_missing: bool = True,
                      source: str = "") -> tuple[System | None, str]:
    """Apply one reported hypervisor: match by id, then by ``dmi.system.uuid``; create it if
    missing. Returns the system and ``created`` / ``updated`` / ``unchanged`` / ``missing``.

    ``guests`` None leaves the guest list alone; ``[]`` clears it. ``facts`` None leaves them.
    """
    require_org(org)
    hv_id = _clean_hypervisor_id(hypervisor_id)
    item = {"hypervisorId": {"hypervisorId": hv_id}, "name": name, "facts": facts,
            "guestIds": guests}
    (entry,) = ingest.parse_entries({"hypervisors": [item]})
    if entry.error:
        raise ValidationError(f"{entry.error}.", code="invalid")
    applied = ingest.apply_entries(org, [entry], reporter_id=reporter_id,
                                   create_missing=create_missing, source=source)
    status = applied.statuses[entry.hypervisor_id]
    system_id = applied.system_ids.get(entry.hypervisor_id)
    return (System.objects.get(pk=system_id) if system_id else None), status


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
    require_org(org)
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
    identity = ingest.identity(facts)
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
            ingest.refresh_current_hosts_of(org, [system.id], now)
        subscriptions.enqueue_resolution([system.id], trigger)
    system.refresh_from_db()
    return system


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
        fields.update(ingest.identity(clean))
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
        if "facts" in fields and fields.get("virt_uuid") != system.virt_uuid:
            if fields.get("virt_uuid"):
                ingest.refresh_current_hosts_of(org, [system.id], now)
            else:  # no longer a guest, or no virt.uuid: it has no host
                System.objects.filter(pk=system.pk).update(current_host=None)
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
        guests = list(System.objects.filter(current_host=system).values_list("id", flat=True))
        # Its guest list goes first, through the mapping path (timeline, current hosts).
        if GuestId.objects.filter(host=system).exists():
            key = system.hypervisor_id or f"#{system.uuid}"
            applied = ingest.apply_entries(org, [ingest.Entry(
                hypervisor_id=key, raw_id=key, guests={}, system_id=system.id)],
                now=now, source=trigger, trigger=trigger)
            affected |= set(applied.resolved)
        System.objects.filter(current_host=system).update(current_host=None, host_unknown_since=now)
        system_id = system.id
        system.delete()
        affected = (affected | set(guests)) - {system_id}
        subscriptions.enqueue_resolution(affected, trigger)
