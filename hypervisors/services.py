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
from orgs import consumers
from orgs.models import ConsumerIdentity, Organization, System, SystemEvent
from orgs.services import require_org
from sam import inputs, locks, metrics
from sam.errors import NotFound
from sam.ids import normalize_guest_uuid, parse_uuid
from subscriptions import compliance
from subscriptions import services as subscriptions
from subscriptions.models import Entitlement, Pool
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
        text = "" if value is None else (
            str(value).lower() if isinstance(value, bool) else str(value))
        cleaned[inputs.check_text(name, "fact names")] = inputs.check_text(text, f"fact {name!r}")
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
        cleaned.append(inputs.check_tree({str(k): str(v) for k, v in item.items() if v is not None},
                                         "installed_products"))
    return cleaned


def _clean_name(name) -> str:
    name = inputs.check_text(str(name or "").strip(), "name")
    if not name:
        raise ValidationError("name must not be empty.", code="invalid")
    return name[:MAX_NAME]


def _clean_hypervisor_id(value) -> str:
    text = inputs.check_text(normalize_guest_uuid(value or ""), "hypervisor id")
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

PLACEHOLDER_DMI = {"not settable", "not present", "not specified", "none", "",
                   "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
                   "03000200-0400-0500-0006-000700080009"}


def register_system(org: Organization, name: str, facts: dict | None = None,
                    installed_products: list | None = None, type: str = System.Type.SYSTEM,
                    uuid=None, hypervisor_id: str | None = None, autoheal: bool = True,
                    registered_at: datetime | None = None, trigger: str = "registration",
                    resolve: bool = True, clone_check: bool = False) -> System:
    """Register a machine (the API, and subscription-manager through ``register_consumer``).

    A non-guest with ``dmi.system.uuid`` and no hypervisor id takes that UUID as hypervisor id;
    if virt-who already created a hypervisor with it, that system is updated and returned
    instead of creating a second one (domain.md S12). With ``clone_check`` a row that already
    has a subscription-manager identity is never taken over: the newcomer gets its own row and
    both are flagged as a possible clone (two live registered systems are never merged).
    ``resolve`` False: nothing is attached (a client registering without ``--auto-attach``).
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
    if identity["dmi_uuid"] in PLACEHOLDER_DMI:
        identity["dmi_uuid"] = None  # firmware placeholders match nothing (Katello's lesson)
    if hv_id is None and not identity["is_guest"] and identity["dmi_uuid"]:
        hv_id = identity["dmi_uuid"]
    now = timezone.now()
    clone_of = None
    with transaction.atomic():
        locks.xact_lock(locks.ORG_REPORT, org.id)
        existing = System.objects.filter(org=org, hypervisor_id=hv_id).first() if hv_id else None
        if clone_check and identity["dmi_uuid"]:
            clone_of = (System.objects.filter(org=org, dmi_uuid=identity["dmi_uuid"],
                                              identity__isnull=False).order_by("id").first())
            if clone_of is not None and existing is not None and existing.pk == clone_of.pk:
                existing, hv_id = None, None  # a registered system's row is never taken over
        if existing is not None:
            System.objects.filter(pk=existing.pk).update(
                name=name, facts=facts, installed_products=products, autoheal=autoheal,
                last_checkin=now, **identity,
            )
            ingest.invalidate_report_shortcut([existing.pk])  # the registration took it over
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
        if clone_of is not None:
            _flag_clone(org, system, clone_of)
        if resolve:
            subscriptions.enqueue_resolution([system.id], trigger)
        else:
            compliance.refresh([system.id])
    system.refresh_from_db()
    return system


def _flag_clone(org: Organization, system: System, other: System) -> None:
    message = (f"dmi.system.uuid {system.dmi_uuid} is also the hardware id of registered system "
               f"{other.name} ({other.uuid}): a possible clone.")
    SystemEvent.objects.bulk_create([
        SystemEvent(org=org, system=system, kind=SystemEvent.Kind.POSSIBLE_CLONE, message=message,
                    data={"other": str(other.uuid), "dmi_uuid": system.dmi_uuid}),
        SystemEvent(org=org, system=other, kind=SystemEvent.Kind.POSSIBLE_CLONE,
                    message=f"Registered system {system.name} ({system.uuid}) has the same "
                            f"dmi.system.uuid {system.dmi_uuid}: a possible clone.",
                    data={"other": str(system.uuid), "dmi_uuid": system.dmi_uuid}),
    ])


ENGINE_FACTS = ("cpu.cpu_socket(s)", "cpu.core(s)_per_socket")


def _engine_facts(facts: dict) -> dict:
    """The facts resolution reads: ``virt.*``, sockets, cores."""
    return {k: v for k, v in facts.items() if k.startswith("virt.") or k in ENGINE_FACTS}


def update_system(org: Organization, system_uuid, name: str | None = None,
                  facts: dict | None = None, installed_products: list | None = None,
                  autoheal: bool | None = None, trigger: str = "system_update") -> System:
    """Change a system: each argument given replaces that field, the others stay.

    Only a real change (compared with what is stored) of the installed products, of the facts
    the engine reads or of ``autoheal`` re-resolves an autoheal system (domain.md 6):
    subscription-manager re-sends unchanged facts often, and that triggers nothing.
    """
    system = get_system(org, system_uuid)
    fields: dict = {}
    if name is not None:
        clean_name = _clean_name(name)
        if clean_name != system.name:
            fields["name"] = clean_name
    if facts is not None:
        clean = _clean_facts(facts)
        if clean != system.facts:
            fields["facts"] = clean
            fields.update(ingest.identity(clean))
            if fields["dmi_uuid"] in PLACEHOLDER_DMI:
                fields["dmi_uuid"] = None
    if installed_products is not None:
        products = _clean_installed(installed_products)
        if products != system.installed_products:
            fields["installed_products"] = products
    if autoheal is not None:
        if not isinstance(autoheal, bool):
            raise ValidationError("autoheal must be true or false.", code="invalid")
        if autoheal != system.autoheal:
            fields["autoheal"] = autoheal
    if not fields:
        return system
    now = timezone.now()
    engine_change = (
        "installed_products" in fields
        or fields.get("autoheal") is True
        or ("facts" in fields and _engine_facts(fields["facts"]) != _engine_facts(system.facts))
    )
    with transaction.atomic():
        locks.xact_lock(locks.ORG_REPORT, org.id)
        System.objects.filter(pk=system.pk).update(**fields)
        if {"name", "facts"} & set(fields):  # what a report describes: re-apply it next time
            ingest.invalidate_report_shortcut([system.pk])
        if "facts" in fields and fields.get("virt_uuid") != system.virt_uuid:
            if fields.get("virt_uuid"):
                ingest.refresh_current_hosts_of(org, [system.id], now)
            else:  # no longer a guest, or no virt.uuid: it has no host
                System.objects.filter(pk=system.pk).update(current_host=None)
        if engine_change:
            compliance.refresh([system.id])
            if fields.get("autoheal", system.autoheal):
                subscriptions.enqueue_resolution([system.id], trigger)
    system.refresh_from_db()
    return system


@dataclass
class DeletionImpact:
    """What deleting a system takes away (the UI's confirmation page says it before)."""

    entitlements: list  # its own entitlements, revoked (the first ``limit``)
    guests: list  # systems whose current host it is: their host becomes unknown
    derived_pools: int  # pools its guests inherit from it, deleted
    guest_entitlements: list  # guests' entitlements from those pools, revoked
    counts: dict  # the full number of each list: entitlements, guests, guest_entitlements


def deletion_impact(org: Organization, system: System, limit: int = 50) -> DeletionImpact:
    """What ``delete_system`` would revoke or change, read without changing anything (each
    list at most ``limit`` long; the counts on the page come from the full querysets)."""
    ents = (Entitlement.objects.filter(org=org, system=system)
            .select_related("pool__product", "pool__subscription").order_by("pool__product__sku", "id"))
    guests = System.objects.filter(org=org, current_host=system).order_by("name", "id")
    derived = Pool.objects.filter(org=org, requires_host=system)
    inherited = (Entitlement.objects.filter(org=org, pool__requires_host=system)
                 .select_related("system", "pool__product").order_by("system__name", "id"))
    counts = {"entitlements": ents.count(), "guests": guests.count(),
              "guest_entitlements": inherited.count()}
    return DeletionImpact(list(ents[:limit]), list(guests[:limit]), derived.count(),
                          list(inherited[:limit]), counts)


def delete_system(org: Organization, system_uuid, trigger: str = "system_deleted",
                  deleted_by: str = "") -> None:
    """Unregister a system: its entitlements are revoked and logged, derived pools of a host
    disappear, and its guests move to their next reported host (or none) and are re-resolved.
    A tombstone keeps its uuid: later requests for it answer 410 with ``deletedId``."""
    system = get_system(org, system_uuid)
    now = timezone.now()
    with transaction.atomic():
        consumers.tombstone(system, deleted_by)
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


# --- subscription-manager consumers -----------------------------------------------------------

PURPOSE_FIELDS = ("service_level", "role", "usage", "addons", "release_ver", "content_tags")


def _clean_purpose(values: dict) -> dict:
    cleaned = {}
    for name, value in values.items():
        if name not in PURPOSE_FIELDS or value is None:
            continue
        if name in ("addons", "content_tags"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValidationError(f"{name} must be a list of strings.", code="invalid")
            cleaned[name] = [inputs.check_text(v, name)[:255] for v in value][:100]
        else:
            if not isinstance(value, str):
                raise ValidationError(f"{name} must be a string.", code="invalid")
            cleaned[name] = inputs.check_text(value.strip(), name)[:255]
    return cleaned


def register_consumer(org: Organization, name: str, facts: dict | None, installed_products: list | None,
                      *, type: str = System.Type.SYSTEM, hypervisor_id: str | None = None,
                      autoheal: bool = True, via: str = ConsumerIdentity.Via.PASSWORD,
                      registered_by: str = "", purpose: dict | None = None,
                      auto_attach: bool = False) -> System:
    """subscription-manager's ``POST /consumers``: the system (one lifecycle with the API and
    virt-who: ``register_system``), its identity certificate and stored compliance, in one
    transaction. Attaches only when asked (``auto_attach``: resolved before returning)."""
    purpose = _clean_purpose(purpose or {})
    with transaction.atomic():
        system = register_system(org, name, facts, installed_products, type=type,
                                 hypervisor_id=hypervisor_id, autoheal=autoheal,
                                 resolve=False, clone_check=True)
        consumers.create_identity(system, via=via, registered_by=registered_by, **purpose)
    metrics.registered(via)
    if auto_attach:
        subscriptions.resolve_system(system.id, "registration")
    return System.objects.select_related("org", "identity", "current_host").get(pk=system.pk)


def update_consumer(system: System, *, name: str | None = None, facts: dict | None = None,
                    installed_products: list | None = None, autoheal: bool | None = None,
                    purpose: dict | None = None) -> System:
    """``PUT /consumers/{uuid}``: each field present replaces that field; absent ones stay."""
    purpose = _clean_purpose(purpose or {})
    with transaction.atomic():
        system = update_system(system.org, system.uuid, name=name, facts=facts,
                               installed_products=installed_products, autoheal=autoheal,
                               trigger="consumer_update")
        if purpose:
            ConsumerIdentity.objects.filter(system=system).update(updated=timezone.now(), **purpose)
    return System.objects.select_related("org", "identity", "current_host").get(pk=system.pk)
