"""Operations on products, subscriptions, pools and entitlements, and system resolution.

Every function takes the org (or ids) explicitly and runs in a transaction. Entitlements of a
system only change while holding that system's advisory lock (``sam.locks.SYSTEM``); a guest's
resolution also holds its host's lock, so guests of one host never double-attach the host.
Scarce quantity is taken with a compare-and-set UPDATE, backed by the pool's CHECK constraint.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import OperationalError, transaction
from django.db.models import F, Q
from django.utils import timezone

from orgs.models import Organization, System
from orgs.services import require_org
from sam import locks
from sam.errors import EntitlementRefused, NotFound
from sam.ids import parse_uuid
from subscriptions import engine
from subscriptions.models import (
    UNLIMITED,
    Entitlement,
    EntitlementEvent,
    Pool,
    Product,
    Subscription,
)

log = logging.getLogger(__name__)

MAX_QUANTITY = 10_000_000


# --- Products and subscriptions ---------------------------------------------------------------

def _product(org: Organization, sku: str, field_name: str = "product") -> Product:
    try:
        return Product.objects.get(org=org, sku=str(sku))
    except Product.DoesNotExist:
        raise ValidationError(
            f"{field_name}: product {sku!r} does not exist in organization {org.key}.",
            code="unknown_product",
        ) from None


def clean_attributes(attributes) -> dict[str, str]:
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise ValidationError("attributes must be an object of name → value.", code="invalid")
    cleaned = {}
    for name, value in attributes.items():
        if not isinstance(name, str) or not name.strip():
            raise ValidationError("attribute names must be non-empty strings.", code="invalid")
        if isinstance(value, (dict, list)) or value is None:
            raise ValidationError(f"attribute {name!r} must be a plain value.", code="invalid")
        cleaned[name.strip()] = str(value).lower() if isinstance(value, bool) else str(value)
    limit = cleaned.get("virt_limit")
    if limit is not None and limit.lower() != "unlimited":
        if not limit.isdigit() or int(limit) < 1:
            raise ValidationError(
                f"virt_limit must be a positive integer or 'unlimited', not {limit!r}.",
                code="invalid",
            )
    return cleaned


@transaction.atomic
def create_product(org: Organization, sku: str, name: str, attributes: dict | None = None,
                   provided: Iterable[str] = (), derived: str | None = None) -> Product:
    """Create or update the product ``sku`` of ``org`` (idempotent by sku)."""
    require_org(org)
    sku = str(sku or "").strip()
    if not sku or len(sku) > 64:
        raise ValidationError("sku must be 1-64 characters.", code="invalid")
    name = str(name or "").strip()
    if not name:
        raise ValidationError("name must not be empty.", code="invalid")
    attrs = clean_attributes(attributes)
    provided_products = [_product(org, p, "provided") for p in provided]
    derived_product = _product(org, derived, "derived") if derived else None
    product, _ = Product.objects.update_or_create(
        org=org, sku=sku,
        defaults={"name": name, "attributes": attrs, "derived_product": derived_product},
    )
    product.provided_products.set(provided_products)
    return product


def _check_dates(start: datetime, end: datetime) -> None:
    for label, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime):
            raise ValidationError(f"{label} must be a date-time.", code="invalid")
        if timezone.is_naive(value):
            raise ValidationError(f"{label} must carry a time zone.", code="invalid")
    if end <= start:
        raise ValidationError("end must be after start.", code="invalid_dates")


def _check_quantity(quantity) -> int:
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise ValidationError("quantity must be a whole number.", code="invalid_quantity")
    if quantity != UNLIMITED and not 1 <= quantity <= MAX_QUANTITY:
        raise ValidationError(
            f"quantity must be between 1 and {MAX_QUANTITY}, or -1 for unlimited (got {quantity}).",
            code="invalid_quantity",
        )
    return quantity


@transaction.atomic
def create_subscription(org: Organization, product: str, quantity: int,
                        start: datetime | None = None, end: datetime | None = None,
                        derived: str | None = None, contract_number: str = "",
                        account_number: str = "", order_number: str = "",
                        trigger: str = "subscription") -> Subscription:
    """Create a subscription and its pools; systems that may use them are re-resolved."""
    require_org(org)
    _check_quantity(quantity)
    now = timezone.now()
    start = start or now
    end = end or start.replace(year=start.year + 1)
    _check_dates(start, end)
    main = _product(org, product)
    derived_product = _product(org, derived, "derived") if derived else main.derived_product
    subscription = Subscription.objects.create(
        org=org, product=main, derived_product=derived_product, quantity=quantity,
        start=start, end=end, contract_number=contract_number, account_number=account_number,
        order_number=order_number,
    )
    for spec in engine.pools_for_subscription(subscription):
        Pool.objects.create(
            org=org, subscription=subscription, type=spec.type, product=spec.product,
            quantity=spec.quantity, start=start, end=end, attributes=spec.attributes,
            virt_only=spec.virt_only, physical_only=spec.physical_only,
            unmapped_guests_only=spec.unmapped_guests_only,
            multi_entitlement=spec.multi_entitlement,
        )
    enqueue_resolution(_systems_wanting_coverage(org), trigger)
    return subscription


def get_subscription(org: Organization, subscription_uuid) -> Subscription:
    require_org(org)
    key = parse_uuid(subscription_uuid, "subscription")
    try:
        return Subscription.objects.select_related("product").get(org=org, uuid=key)
    except Subscription.DoesNotExist:
        raise NotFound(f"Subscription {key} does not exist in organization {org.key}.") from None


@transaction.atomic
def update_subscription(org: Organization, subscription_uuid, quantity: int | None = None,
                        start: datetime | None = None, end: datetime | None = None,
                        trigger: str = "subscription") -> Subscription:
    """Change quantity or dates. Over-consumed pools lose their newest entitlements first."""
    subscription = get_subscription(org, subscription_uuid)
    Subscription.objects.select_for_update().filter(pk=subscription.pk).first()
    if quantity is not None:
        _check_quantity(quantity)
        subscription.quantity = quantity
    subscription.start = start or subscription.start
    subscription.end = end or subscription.end
    _check_dates(subscription.start, subscription.end)
    subscription.save()
    affected: set[int] = set()
    for spec in engine.pools_for_subscription(subscription):
        pool = Pool.objects.filter(subscription=subscription, type=spec.type).first()
        if pool is None:
            Pool.objects.create(
                org=org, subscription=subscription, type=spec.type, product=spec.product,
                quantity=spec.quantity, start=subscription.start, end=subscription.end,
                attributes=spec.attributes, virt_only=spec.virt_only,
                physical_only=spec.physical_only,
                unmapped_guests_only=spec.unmapped_guests_only,
                multi_entitlement=spec.multi_entitlement,
            )
            continue
        affected |= _shrink_pool(pool, spec.quantity, trigger)
        Pool.objects.filter(pk=pool.pk).update(
            quantity=spec.quantity, start=subscription.start, end=subscription.end
        )
    Pool.objects.filter(subscription=subscription).exclude(
        type__in=[Pool.Type.NORMAL, Pool.Type.UNMAPPED_GUEST]
    ).update(start=subscription.start, end=subscription.end)
    enqueue_resolution(affected | set(_systems_wanting_coverage(org)), trigger)
    return subscription


def _shrink_pool(pool: Pool, quantity: int, trigger: str) -> set[int]:
    """Revoke the newest entitlements until ``pool`` fits ``quantity``; return the systems."""
    if quantity == UNLIMITED:
        return set()
    excess = pool.consumed - quantity
    affected: set[int] = set()
    if excess <= 0:
        return affected
    for ent in pool.entitlements.select_related("system").order_by("-created", "-id"):
        if excess <= 0:
            break
        affected |= revoke_entitlements([ent], "subscription_reduced", trigger)
        affected.add(ent.system_id)
        excess -= ent.quantity
    return affected


@transaction.atomic
def delete_subscription(org: Organization, subscription_uuid, trigger: str = "subscription") -> None:
    """Delete a subscription: every entitlement from its pools is revoked and logged first."""
    subscription = get_subscription(org, subscription_uuid)
    ents = list(Entitlement.objects.filter(pool__subscription=subscription)
                .select_related("system", "pool__product"))
    affected = revoke_entitlements(ents, "subscription_deleted", trigger)
    affected |= {e.system_id for e in ents}
    subscription.delete()
    enqueue_resolution(affected, trigger)


def _systems_wanting_coverage(org: Organization) -> list[int]:
    """Systems that may be able to use a new or changed pool: those with installed products
    and the org's hypervisors. Resolution is idempotent, so a wider net costs only time."""
    return list(
        System.objects.filter(org=org, autoheal=True)
        .exclude(installed_products=[]).values_list("id", flat=True)
    )


# --- Entitlements: grant and revoke -----------------------------------------------------------

@dataclass
class _Run:
    """What one resolution or manual change did, for events and follow-up work."""

    trigger: str
    now: datetime = field(default_factory=timezone.now)
    to_resolve: set[int] = field(default_factory=set)
    attached: list[Entitlement] = field(default_factory=list)
    revoked: int = 0


def _event(ent: Entitlement, action: str, reason: str, trigger: str, system: System,
           pool: Pool) -> EntitlementEvent:
    host = pool.requires_host.name if pool.requires_host_id and pool.requires_host else ""
    return EntitlementEvent(
        org_id=ent.org_id, system_id=system.id, system_uuid=system.uuid, system_name=system.name,
        pool_uuid=pool.uuid, pool_type=pool.type, product_sku=pool.product.sku,
        entitlement_uuid=ent.uuid, quantity=ent.quantity, action=action, reason=reason,
        trigger=trigger, host_name=host,
    )


def _take_units(pool: Pool, quantity: int) -> bool:
    """Compare-and-set: consume ``quantity`` units if they are still there."""
    updated = (
        Pool.objects.filter(pk=pool.pk)
        .filter(Q(quantity=UNLIMITED) | Q(consumed__lte=F("quantity") - quantity))
        .update(consumed=F("consumed") + quantity)
    )
    if updated:
        pool.consumed += quantity
    return bool(updated)


def _grant(run: _Run, system: System, pool: Pool, quantity: int, reason: str) -> Entitlement | None:
    """Create the entitlement (caller holds the system's lock and ran the checks)."""
    if not _take_units(pool, quantity):
        return None
    end = pool.end
    if pool.unmapped_guests_only:
        end = min(end, system.registered_at + system.org.unmapped_lifetime)
    ent = Entitlement.objects.create(
        org_id=system.org_id, system=system, pool=pool, quantity=quantity, start=run.now,
        end=end, multi_entitlement=pool.multi_entitlement,
    )
    EntitlementEvent.objects.bulk_create([_event(ent, "attached", reason, run.trigger, system, pool)])
    run.attached.append(ent)
    if engine.makes_derived_pool(pool, system):
        _ensure_derived_pool(system, pool, ent)
        # Trigger: a host's entitlement was added -> its guests may now be covered.
        run.to_resolve |= set(
            System.objects.filter(current_host=system).values_list("id", flat=True)
        )
    return ent


def _ensure_derived_pool(host: System, pool: Pool, ent: Entitlement) -> Pool:
    """The host-restricted pool its guests inherit (domain.md 3.3)."""
    subscription = pool.subscription
    limit = engine.virt_limit(subscription.product)
    product = engine.derived_pool_product(pool)
    stack = engine.stacking_id(subscription.product)
    attributes = {"virt_only": "true", "pool_derived": "true", "requires_host": str(host.uuid)}
    if stack:
        existing = Pool.objects.filter(
            type=Pool.Type.STACK_DERIVED, requires_host=host, source_stack_id=stack
        ).first()
        if existing:
            return existing
        return Pool.objects.create(
            org_id=host.org_id, subscription=subscription, type=Pool.Type.STACK_DERIVED,
            product=product, quantity=limit, start=pool.start, end=pool.end,
            attributes=attributes, virt_only=True, requires_host=host, source_stack_id=stack,
        )
    return Pool.objects.create(
        org_id=host.org_id, subscription=subscription, type=Pool.Type.ENTITLEMENT_DERIVED,
        product=product, quantity=limit, start=pool.start, end=pool.end,
        attributes=attributes, virt_only=True, requires_host=host, source_entitlement=ent,
    )


def revoke_entitlements(ents: Iterable[Entitlement], reason: str, trigger: str) -> set[int]:
    """Delete entitlements, give their units back, delete the derived pools they fed (and so
    their guests' entitlements), and log every change. Returns systems to re-resolve."""
    ents = list(ents)
    if not ents:
        return set()
    ids = {e.id for e in ents}
    affected: set[int] = set()
    events = [_event(e, "revoked", reason, trigger, e.system, e.pool) for e in ents]

    # Derived pools die with their source: the host's entitlement, or the last of its stack.
    doomed = set(Pool.objects.filter(source_entitlement_id__in=ids).values_list("id", flat=True))
    for ent in ents:
        stack = engine.stacking_id(ent.pool.subscription.product)
        if stack and not ent.system.is_guest and not Entitlement.objects.filter(
            system_id=ent.system_id, pool__subscription__product__attributes__stacking_id=stack
        ).exclude(id__in=ids).exists():
            doomed |= set(Pool.objects.filter(
                type=Pool.Type.STACK_DERIVED, requires_host_id=ent.system_id, source_stack_id=stack
            ).values_list("id", flat=True))
    if doomed:
        for gent in (Entitlement.objects.filter(pool_id__in=doomed).exclude(id__in=ids)
                     .select_related("system", "pool__product", "pool__requires_host")):
            events.append(_event(gent, "revoked", "source_revoked", trigger, gent.system, gent.pool))
            affected.add(gent.system_id)

    for ent in ents:
        if ent.pool_id not in doomed:
            Pool.objects.filter(pk=ent.pool_id, consumed__gte=ent.quantity).update(
                consumed=F("consumed") - ent.quantity
            )
        if engine.makes_derived_pool(ent.pool, ent.system):
            # Trigger: a host's entitlement was revoked -> its guests are re-resolved.
            affected |= set(System.objects.filter(current_host_id=ent.system_id)
                            .values_list("id", flat=True))
    if doomed:
        Pool.objects.filter(id__in=doomed).delete()  # cascades to the guests' entitlements
    Entitlement.objects.filter(id__in=ids).delete()
    EntitlementEvent.objects.bulk_create(events)
    return affected


# --- Manual attach / remove -------------------------------------------------------------------

def get_system(org: Organization, system_uuid) -> System:
    """A system of ``org`` by its public uuid; NotFound (404) otherwise."""
    require_org(org)
    key = parse_uuid(system_uuid, "system")
    try:
        return System.objects.select_related("org", "current_host").get(org=org, uuid=key)
    except System.DoesNotExist:
        raise NotFound(f"System {key} does not exist in organization {org.key}.") from None


def _lock_system(system: System) -> None:
    keys = {system.id}
    if system.current_host_id:
        keys.add(system.current_host_id)
    locks.xact_lock_many(locks.SYSTEM, keys)


def attach(org: Organization, system_uuid, pool_uuid, quantity: int = 1,
           trigger: str = "manual") -> Entitlement:
    """Attach a pool to a system by hand; a refused check raises ``EntitlementRefused``."""
    require_org(org)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        raise ValidationError("quantity must be a positive whole number.", code="invalid_quantity")
    pool_key = parse_uuid(pool_uuid, "pool")
    with transaction.atomic():
        system = get_system(org, system_uuid)
        _lock_system(system)
        system = System.objects.select_related("org", "current_host").get(pk=system.pk)
        try:
            pool = org_pools(org).get(uuid=pool_key)
        except Pool.DoesNotExist:
            raise NotFound(f"Pool {pool_key} does not exist in organization {org.key}.") from None
        run = _Run(trigger=trigger)
        view = engine.SystemView(system, system.current_host_id, _held_pool_ids(system))
        reason = engine.check_pool(view, pool, org, run.now, quantity)
        if reason is None:
            ent = _grant(run, system, pool, quantity, "manual")
            if ent is None:
                reason = "pool_exhausted"
        if reason is not None:
            raise EntitlementRefused(reason, engine.refusal_message(reason, pool))
        enqueue_resolution(run.to_resolve, "host_entitlement")
        return ent


def remove_entitlement(org: Organization, entitlement_uuid, trigger: str = "manual") -> None:
    """Remove an entitlement by hand; derived pools it fed go, their guests are re-resolved."""
    require_org(org)
    key = parse_uuid(entitlement_uuid, "entitlement")
    with transaction.atomic():
        try:
            ent = Entitlement.objects.select_related("system", "pool").get(org=org, uuid=key)
        except Entitlement.DoesNotExist:
            raise NotFound(f"Entitlement {key} does not exist in organization {org.key}.") from None
        _lock_system(ent.system)
        ent = (Entitlement.objects.select_related(
            "system", "pool__product", "pool__subscription__product", "pool__requires_host")
            .filter(pk=ent.pk).first())
        if ent is None:  # removed meanwhile
            return
        affected = revoke_entitlements([ent], "manual", trigger)
        enqueue_resolution(affected | {ent.system_id}, "host_entitlement")


# --- Resolution (domain.md 5) -----------------------------------------------------------------

def org_pools(org: Organization):
    return Pool.objects.filter(org=org).select_related(
        "product", "subscription__product", "subscription__derived_product", "requires_host"
    )


def usable_pools(org: Organization, now: datetime, host_id: int | None = None) -> list[Pool]:
    """Current pools a system could draw from: the org's shared pools plus the derived pools
    of ``host_id``. Other hosts' derived pools (one per hypervisor: thousands) are left out."""
    host_filter = Q(requires_host__isnull=True)
    if host_id is not None:
        host_filter |= Q(requires_host_id=host_id)
    return list(org_pools(org).filter(host_filter, end__gt=now, start__lte=now))


def _held_pool_ids(system: System) -> set[int]:
    return set(Entitlement.objects.filter(system=system).values_list("pool_id", flat=True))


def entitlements_of(system: System) -> list[Entitlement]:
    return list(
        Entitlement.objects.filter(system=system).select_related(
            "system", "pool__product", "pool__subscription__product",
            "pool__subscription__derived_product", "pool__requires_host",
        ).order_by("created", "id")
    )


def load_catalog(org: Organization) -> engine.Catalog:
    return engine.Catalog(Product.objects.filter(org=org).prefetch_related("provided_products"))


@dataclass
class Resolution:
    system_id: int
    attached: int
    revoked: int


def resolve_system(system_id: int, trigger: str = "heal",
                   queued: frozenset[int] = frozenset()) -> Resolution | None:
    """Bring one system's entitlements to the best coverage of its installed products.

    Idempotent; serialised per system and per host. Returns None for a deleted system.
    """
    for _ in range(5):
        with transaction.atomic():
            head = System.objects.filter(pk=system_id).only("id", "current_host_id").first()
            if head is None:
                return None
            _lock_system(head)  # the system and its host, in ascending id order
            system = System.objects.select_related("org", "current_host").filter(pk=system_id).first()
            if system is None:
                return None
            if system.current_host_id != head.current_host_id:
                # The host changed before we got the locks: start again rather than take a
                # lock out of order (which could deadlock with another resolution).
                continue
            run = _Run(trigger=trigger)
            _resolve(run, system)
            # ``queued``: systems later in the caller's batch, which will be resolved anyway.
            enqueue_resolution(run.to_resolve - {system.id} - queued, "host_entitlement")
            return Resolution(system.id, len(run.attached), run.revoked)
    raise OperationalError(f"system {system_id}: its host kept changing; resolution retried later")


def _resolve(run: _Run, system: System) -> None:
    org = system.org
    now = run.now
    ents = entitlements_of(system)
    host_id = system.current_host_id if system.is_guest else None

    # Steps 1 and 3: drop what the system no longer qualifies for.
    stale: list[tuple[Entitlement, str]] = []
    for ent in ents:
        pool = ent.pool
        if ent.end <= now or pool.end <= now:
            stale.append((ent, "expired"))
        elif system.is_guest and host_id is not None and pool.requires_host_id not in (None, host_id):
            stale.append((ent, "host_mismatch"))
        elif system.is_guest and host_id is not None and pool.unmapped_guests_only:
            stale.append((ent, "unmapped_has_host"))
    for reason in {r for _, r in stale}:
        batch = [e for e, r in stale if r == reason]
        run.to_resolve |= revoke_entitlements(batch, reason, run.trigger)
        run.revoked += len(batch)
    stale_ids = {e.id for e, _ in stale}
    ents = [e for e in ents if e.id not in stale_ids]

    if not (system.autoheal and org.autobind_enabled):
        return
    if org.content_access_mode == Organization.ContentAccess.SCA:
        return
    catalog = load_catalog(org)
    wanted = _uncovered(system, ents, catalog, now)
    if not wanted:
        return
    pools = usable_pools(org, now, host_id)

    # Step 3: host auto-attach first, so the guest can inherit from the host's derived pool.
    host = system.current_host if system.is_guest else None
    if host is not None and host.autoheal and org.hypervisor_autobind_enabled:
        _host_auto_attach(run, host, wanted, pools, catalog)
        pools = usable_pools(org, now, host_id)

    # Step 5: attach pools for what is still uncovered, best first.
    view = engine.SystemView(system, host_id, {e.pool_id for e in ents})
    for product_id in sorted(wanted):
        ents = entitlements_of(system)
        if product_id not in _uncovered(system, ents, catalog, now):
            continue
        view.held_pool_ids = {e.pool_id for e in ents}
        _attach_best(run, system, view, product_id, ents, pools, catalog)


def _uncovered(system: System, ents: list[Entitlement], catalog: engine.Catalog,
               now: datetime) -> set[str]:
    status = engine.compliance(system, ents, catalog, system.org, now)
    return {pid for pid, s in status.products.items()
            if s.status == "invalid" or (s.status == "partial" and "SOCKETS" in s.reasons)}


def _attach_best(run: _Run, system: System, view: engine.SystemView, product_id: str,
                 ents: list[Entitlement], pools: list[Pool], catalog: engine.Catalog) -> None:
    stacks = engine.stack_coverage(system, ents)
    options = []
    for pool in pools:
        if product_id not in catalog.pool_provides(pool):
            continue
        units = 1
        if not system.is_guest and pool.multi_entitlement:
            stack = engine.stacking_id(pool.product)
            covered = stacks.get(stack, (0, []))[0] if stack else 0
            units = engine.units_for_stack(system, pool.product, covered)
            if pool.quantity != UNLIMITED:
                units = max(1, min(units, pool.quantity - pool.consumed))
        if engine.check_pool(view, pool, system.org, run.now, units) is None:
            options.append((engine.candidate_order(pool, units, view.host_id), pool, units))
    for _, pool, units in sorted(options, key=lambda o: o[0]):
        if _grant(run, system, pool, units, "auto_attach") is not None:
            return


def _host_auto_attach(run: _Run, host: System, wanted: set[str], pools: list[Pool],
                      catalog: engine.Catalog) -> None:
    """Entitle the guest's host to a subscription with virtual guests that provides what the
    guest lacks — unless a derived pool of that host already offers it (domain.md 5, step 3)."""
    now = run.now
    host_ents = entitlements_of(host)
    view = engine.SystemView(host, None, {e.pool_id for e in host_ents})
    for product_id in sorted(wanted):
        offered = any(
            p.requires_host_id == host.id and product_id in catalog.pool_provides(p)
            and (p.quantity == UNLIMITED or p.consumed < p.quantity)
            for p in pools
        )
        if offered:
            continue
        options = []
        for pool in pools:
            if pool.type != Pool.Type.NORMAL or engine.virt_limit(pool.subscription.product) is None:
                continue
            if product_id not in catalog.host_pool_provides_for_guests(pool):
                continue
            units = 1
            if pool.multi_entitlement and engine.stacking_id(pool.product):
                units = engine.units_for_stack(host, pool.product, 0)
                if pool.quantity != UNLIMITED:
                    units = max(1, min(units, pool.quantity - pool.consumed))
            if engine.check_pool(view, pool, host.org, now, units) is None:
                limit = engine.virt_limit(pool.subscription.product)
                # Prefer unlimited guests, then fewest units, then soonest end.
                options.append(((0 if limit == UNLIMITED else 1, units, pool.end, pool.id),
                                pool, units))
        for _, pool, units in sorted(options, key=lambda o: o[0]):
            if _grant(run, host, pool, units, "host_auto_attach") is not None:
                view.held_pool_ids.add(pool.id)
                pools.extend(Pool.objects.filter(requires_host=host).select_related(
                    "product", "subscription__product", "subscription__derived_product",
                    "requires_host"))
                break


# --- Compliance for callers -------------------------------------------------------------------

def compliance_for(system: System, now: datetime | None = None) -> engine.Compliance:
    now = now or timezone.now()
    return engine.compliance(system, entitlements_of(system), load_catalog(system.org),
                             system.org, now)


# --- Background triggers ----------------------------------------------------------------------

def enqueue_resolution(system_ids: Iterable[int], trigger: str) -> None:
    """Resolve these systems in workers once the current transaction commits (ids only)."""
    ids = sorted({int(i) for i in system_ids})
    if not ids:
        return
    from subscriptions.tasks import resolve_systems

    batch = settings.SAM_RESOLVE_BATCH

    def send() -> None:
        for start in range(0, len(ids), batch):
            resolve_systems.delay(ids[start:start + batch], trigger)

    transaction.on_commit(send)


# --- Periodic sweeps --------------------------------------------------------------------------

def _revoke_per_system(ents: list[Entitlement], reason: str, trigger: str) -> set[int]:
    affected: set[int] = set()
    by_system: dict[int, list[int]] = {}
    for ent in ents:
        by_system.setdefault(ent.system_id, []).append(ent.id)
    for system_id, ent_ids in by_system.items():
        with transaction.atomic():
            system = System.objects.filter(pk=system_id).first()
            if system is None:
                continue
            _lock_system(system)
            current = list(Entitlement.objects.filter(id__in=ent_ids).select_related(
                "system", "pool__product", "pool__subscription__product", "pool__requires_host"))
            affected |= revoke_entitlements(current, reason, trigger)
            affected.add(system_id)
            enqueue_resolution(affected, trigger)
    return affected


def expire_unmapped_entitlements(now: datetime | None = None) -> int:
    """Revoke temporary (unmapped guest) entitlements past their end; returns the count."""
    now = now or timezone.now()
    ents = list(Entitlement.objects.filter(pool__type=Pool.Type.UNMAPPED_GUEST, end__lte=now)
                .only("id", "system_id"))
    _revoke_per_system(ents, "expired", "sweep")
    return len(ents)


def expire_subscriptions(now: datetime | None = None) -> int:
    """Revoke entitlements from pools whose subscription has ended; returns the count."""
    now = now or timezone.now()
    ents = list(Entitlement.objects.filter(Q(pool__end__lte=now) | Q(end__lte=now))
                .only("id", "system_id"))
    _revoke_per_system(ents, "subscription_expired", "sweep")
    return len(ents)


def heal_org(org: Organization) -> int:
    """Enqueue resolution of every self-healing system of the org (the nightly safety net)."""
    ids = list(System.objects.filter(org=org, autoheal=True).values_list("id", flat=True))
    with transaction.atomic():
        enqueue_resolution(ids, "heal")
    return len(ids)
