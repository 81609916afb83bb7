"""Operations on products, subscriptions, pools and entitlements, and system resolution.

Every function takes the org (or ids) explicitly and runs in a transaction. Entitlements of a
system only change while holding that system's advisory lock (``sam.locks.SYSTEM``); a guest's
resolution also holds its host's lock, so guests of one host never double-attach the host.
Scarce quantity is taken with a compare-and-set UPDATE, backed by the pool's CHECK constraint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import OperationalError, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from orgs.models import ActivationKey, Organization, System
from orgs.services import require_org
from sam import inputs, locks
from sam.errors import EntitlementRefused, NotFound
from sam.ids import parse_uuid
from sam.task_slots import TaskSlot
from subscriptions import certificates, compliance, engine, pending
from subscriptions.catalog import LoadedCatalog, entitlements_of, load_catalog
from subscriptions.models import (
    UNLIMITED,
    CoverageSnapshot,
    Entitlement,
    EntitlementEvent,
    Pool,
    Product,
    Subscription,
)

log = logging.getLogger(__name__)

MAX_QUANTITY = 10_000_000
# Product attributes the engine reads as whole numbers (pool sizes are derived from them).
INT_ATTRIBUTES = ("virt_limit", "instance_multiplier", "sockets")


# --- Products and subscriptions ---------------------------------------------------------------

def _product(org: Organization, sku: str, field_name: str = "product") -> Product:
    try:
        return Product.objects.get(org=org, sku=str(sku))
    except Product.DoesNotExist:
        raise ValidationError(
            f"{field_name}: product {sku!r} does not exist in organization {org.key}.",
            code="unknown_product",
        ) from None


def clean_attributes(attributes: object) -> dict[str, str]:
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
        inputs.check_text(name, "attribute names")
        cleaned[name.strip()] = inputs.check_text(
            str(value).lower() if isinstance(value, bool) else str(value), f"attribute {name!r}")
    limit = cleaned.get("virt_limit")
    if limit is not None and limit.lower() != "unlimited":
        if not limit.isdigit() or int(limit) < 1:
            raise ValidationError(
                f"virt_limit must be a positive integer or 'unlimited', not {limit!r}.",
                code="invalid",
            )
    for name in INT_ATTRIBUTES:
        value = cleaned.get(name, "").strip()
        # Pool quantities are derived from these (× the subscription's quantity): each must
        # fit the pool's integer column; the products are checked when pools are made.
        if value.isdigit() and (len(value) > 10 or int(value) > inputs.INT32_MAX):
            raise ValidationError(f"{name} must be at most {inputs.INT32_MAX}, not {value}.",
                                  code="invalid")
    return cleaned


@transaction.atomic
def create_product(org: Organization, sku: str, name: str, attributes: dict[str, Any] | None = None,
                   provided: Iterable[str] = (), derived: str | None = None,
                   trigger: str = "product") -> Product:
    """Create or update the product ``sku`` of ``org`` (idempotent by sku).

    Changed attributes of an existing product regenerate the pools built from it
    (``regenerate_product_pools``); the API, the admin and the import all come through here."""
    require_org(org)
    sku = inputs.check_text(str(sku or "").strip(), "sku")
    if not sku or len(sku) > 64:
        raise ValidationError("sku must be 1-64 characters.", code="invalid")
    name = inputs.check_text(str(name or "").strip(), "name")
    if not name:
        raise ValidationError("name must not be empty.", code="invalid")
    attrs = clean_attributes(attributes)
    provided_products = [_product(org, p, "provided") for p in provided]
    derived_product = _product(org, derived, "derived") if derived else None
    before = (Product.objects.select_for_update().filter(org=org, sku=sku)
              .values_list("attributes", flat=True).first())
    product, _ = Product.objects.update_or_create(
        org=org, sku=sku,
        defaults={"name": name, "attributes": attrs, "derived_product": derived_product},
    )
    product.provided_products.set(provided_products)
    if before is not None and before != attrs:
        regenerate_product_pools(org, [product], trigger)
    return product


# --- Pools follow their product (domain.md 3.6) -----------------------------------------------

@transaction.atomic
def regenerate_product_pools(org: Organization, products: Iterable[Product | int],
                             trigger: str = "product") -> set[int]:
    """Bring every pool built from these products to what domain.md 3.1-3.3 give for their
    current attributes, after the attributes changed.

    Covers the NORMAL and UNMAPPED_GUEST pools of every subscription of (or deriving) the
    products and the host-derived pools (per entitlement or per stack) made from those
    subscriptions: quantities and flags follow, pools the attributes no longer give are
    removed and new ones made. Entitlements beyond a reduced quantity are revoked newest first;
    the systems concerned are re-resolved after commit. The one function every writer of product
    attributes calls (API, web import, admin, manifest import). Returns the revoked systems.
    """
    require_org(org)
    ids = {p.pk if isinstance(p, Product) else int(p) for p in products}
    affected: set[int] = set()
    for subscription in (Subscription.objects.filter(org=org)
                         .filter(Q(product_id__in=ids) | Q(derived_product_id__in=ids))
                         .select_related("product", "derived_product").order_by("id")):
        affected |= regenerate_subscription_pools(subscription, trigger, "product_changed")
    enqueue_coverage_seekers(org, None, trigger, also=affected)
    return affected


def _derived_pool_wanted(pool: Pool, subscription: Subscription) -> bool:
    """Whether an existing host-derived pool of ``subscription`` is still what 3.3 gives."""
    if engine.virt_limit(subscription.product) is None:
        return False
    stack = engine.stacking_id(subscription.product)
    if pool.type == Pool.Type.STACK_DERIVED:
        return stack is not None and pool.source_stack_id == stack
    return stack is None


def regenerate_subscription_pools(subscription: Subscription, trigger: str,
                                  reason: str = "subscription_reduced") -> set[int]:
    """One subscription's pools to what its product, quantity and dates give now, in place;
    its entitlements end with it. Returns the systems to re-resolve and enqueues nothing, so a
    caller that changes many subscriptions (a manifest import) enqueues once.

    The pool rows are locked first: a concurrent grant (a compare-and-set UPDATE of
    ``consumed``) waits for this transaction and then sees the new quantity, so the CHECK
    ``consumed <= quantity`` holds at every commit."""
    # (A pool size beyond its column raises before anything changed; callers roll back.)
    specs = {spec.type: spec for spec in _check_pool_quantities(subscription)}
    limit = engine.virt_limit(subscription.product)
    guest_product = subscription.derived_product or subscription.product
    common = {"start": subscription.start, "end": subscription.end}
    affected: set[int] = set()
    pools = list(Pool.objects.select_for_update().filter(subscription=subscription).order_by("id"))
    for pool in pools:
        if pool.type in (Pool.Type.NORMAL, Pool.Type.UNMAPPED_GUEST):
            spec = specs.pop(pool.type, None)
            if spec is None:
                affected |= _remove_pool(pool, trigger, reason)
                continue
            affected |= _shrink_pool(pool, spec.quantity, trigger, reason)
            Pool.objects.filter(pk=pool.pk).update(
                quantity=spec.quantity, product=spec.product, attributes=spec.attributes,
                virt_only=spec.virt_only, physical_only=spec.physical_only,
                unmapped_guests_only=spec.unmapped_guests_only,
                multi_entitlement=spec.multi_entitlement, updated=timezone.now(), **common)
        elif pool.type in (Pool.Type.ENTITLEMENT_DERIVED, Pool.Type.STACK_DERIVED):
            if not _derived_pool_wanted(pool, subscription):
                affected |= _remove_pool(pool, trigger, reason)
                continue
            affected |= _shrink_pool(pool, limit, trigger, reason)
            Pool.objects.filter(pk=pool.pk).update(quantity=limit, product=guest_product,
                                                   updated=timezone.now(), **common)
    for spec in specs.values():  # pools the attributes give now and did not before
        Pool.objects.create(
            org_id=subscription.org_id, subscription=subscription, type=spec.type,
            product=spec.product, quantity=spec.quantity, attributes=spec.attributes,
            virt_only=spec.virt_only, physical_only=spec.physical_only,
            unmapped_guests_only=spec.unmapped_guests_only,
            multi_entitlement=spec.multi_entitlement, **common)
    if limit is not None:
        # Hosts entitled to the subscription get the derived pool 3.3 now gives them.
        for ent in (Entitlement.objects.filter(pool__subscription=subscription,
                                               pool__type__in=[Pool.Type.NORMAL, Pool.Type.BONUS])
                    .select_related("system", "pool__subscription__product",
                                    "pool__subscription__derived_product")
                    .order_by("created", "id")):
            if not engine.makes_derived_pool(ent.pool, ent.system):
                continue
            stack = engine.stacking_id(subscription.product)
            exists = (Pool.objects.filter(type=Pool.Type.STACK_DERIVED, requires_host=ent.system,
                                          source_stack_id=stack) if stack else
                      Pool.objects.filter(type=Pool.Type.ENTITLEMENT_DERIVED,
                                          source_entitlement=ent)).exists()
            if not exists:
                _ensure_derived_pool(ent.system, ent.pool, ent)
                affected |= set(System.objects.filter(current_host=ent.system)
                                .values_list("id", flat=True))
    if pools:  # without pools there are no entitlements to follow the dates
        ents = Entitlement.objects.filter(pool__subscription=subscription)
        ents.filter(pool__unmapped_guests_only=False).exclude(end=subscription.end) \
            .update(end=subscription.end)
        ents.filter(end__gt=subscription.end).update(end=subscription.end)  # temporary ones only shorten
        changed = set(ents.values_list("system_id", flat=True))
        compliance.refresh(changed)  # dates feed compliantUntil
        certificates.sync(changed)  # and the certificates' validity: re-issued
    return affected


_REVOKE_RELATED = ("system", "pool__product", "pool__subscription__product", "pool__requires_host")


def _remove_pool(pool: Pool, trigger: str, reason: str) -> set[int]:
    """Revoke (and log) every entitlement of a pool the inputs no longer give, then delete it."""
    ents = list(pool.entitlements.select_related(*_REVOKE_RELATED))
    affected = revoke_entitlements(ents, reason, trigger) | {e.system_id for e in ents}
    Pool.objects.filter(pk=pool.pk).delete()
    return affected


def _check_date(value: object, label: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValidationError(f"{label} must be a date-time.", code="invalid")
    if timezone.is_naive(value):
        raise ValidationError(f"{label} must carry a time zone.", code="invalid")
    try:
        return inputs.check_datetime(value, label)
    except inputs.BadInput as exc:
        raise ValidationError(exc.text, code="invalid_dates") from None


def _check_dates(start: datetime, end: datetime) -> None:
    """Both inside 1900-01-01..9999-01-01 (what every reader can handle), end after start."""
    _check_date(start, "start")
    _check_date(end, "end")
    if end <= start:
        raise ValidationError("end must be after start.", code="invalid_dates")


def _year_after(start: datetime) -> datetime:
    """The default end: the same day a year later (29 February → 28 February)."""
    try:
        return start.replace(year=start.year + 1)
    except ValueError:  # 29 February, or beyond year 9999 (refused by _check_dates)
        if start.year >= 9999:
            raise ValidationError("end must be given: one year after start is beyond "
                                  "9999-01-01.", code="invalid_dates") from None
        return start.replace(year=start.year + 1, day=28)


def _check_pool_quantities(subscription: Subscription) -> list[engine.PoolSpec[Any]]:
    """The pools of ``subscription``, refused (400) when a derived size (quantity ×
    instance_multiplier, × virt_limit) does not fit the pool's integer column."""
    specs = engine.pools_for_subscription(subscription)
    for spec in specs:
        if spec.quantity > inputs.INT32_MAX:
            raise ValidationError(
                f"The {spec.type} pool would hold {spec.quantity} units (quantity × the "
                f"product's instance_multiplier or virt_limit); at most {inputs.INT32_MAX}.",
                code="invalid_quantity")
    return specs


def _check_quantity(quantity: object) -> int:
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
    start = _check_date(start or now, "start")
    end = end or _year_after(start)
    _check_dates(start, end)
    for label, text in (("contract_number", contract_number), ("account_number", account_number),
                        ("order_number", order_number)):
        inputs.check_text(text, label)
    main = _product(org, product)
    derived_product = _product(org, derived, "derived") if derived else main.derived_product
    specs = _check_pool_quantities(Subscription(
        org=org, product=main, derived_product=derived_product, quantity=quantity))
    subscription = Subscription.objects.create(
        org=org, product=main, derived_product=derived_product, quantity=quantity,
        start=start, end=end, contract_number=contract_number, account_number=account_number,
        order_number=order_number,
    )
    for spec in specs:
        Pool.objects.create(
            org=org, subscription=subscription, type=spec.type, product=spec.product,
            quantity=spec.quantity, start=start, end=end, attributes=spec.attributes,
            virt_only=spec.virt_only, physical_only=spec.physical_only,
            unmapped_guests_only=spec.unmapped_guests_only,
            multi_entitlement=spec.multi_entitlement,
        )
    enqueue_coverage_seekers(org, subscription, trigger)
    return subscription


def get_subscription(org: Organization, subscription_uuid: object) -> Subscription:
    require_org(org)
    key = parse_uuid(subscription_uuid, "subscription")
    try:
        return Subscription.objects.select_related("product").get(org=org, uuid=key)
    except Subscription.DoesNotExist:
        raise NotFound(f"Subscription {key} does not exist in organization {org.key}.") from None


@transaction.atomic
def update_subscription(org: Organization, subscription_uuid: object, quantity: int | None = None,
                        start: datetime | None = None, end: datetime | None = None,
                        trigger: str = "subscription") -> Subscription:
    """Change quantity or dates; its pools are regenerated (domain.md 3.6). Over-consumed pools
    lose their newest entitlements first."""
    subscription = get_subscription(org, subscription_uuid)
    refuse_managed(subscription)
    Subscription.objects.select_for_update().filter(pk=subscription.pk).first()
    if quantity is not None:
        _check_quantity(quantity)
        subscription.quantity = quantity
    subscription.start = start or subscription.start
    subscription.end = end or subscription.end
    _check_dates(subscription.start, subscription.end)
    subscription.save()
    affected = regenerate_subscription_pools(subscription, trigger, "subscription_reduced")
    enqueue_coverage_seekers(org, subscription, trigger, also=affected)
    return subscription


def _shrink_pool(pool: Pool, quantity: int | None, trigger: str, reason: str) -> set[int]:
    """Revoke the newest entitlements until ``pool`` (its row locked by the caller) fits
    ``quantity``; return the systems to re-resolve."""
    if quantity is None or quantity == UNLIMITED:
        return set()
    excess = pool.consumed - quantity
    affected: set[int] = set()
    if excess <= 0:
        return affected
    for ent in pool.entitlements.select_related(*_REVOKE_RELATED).order_by("-created", "-id"):
        if excess <= 0:
            break
        affected |= revoke_entitlements([ent], reason, trigger)
        affected.add(ent.system_id)
        excess -= ent.quantity
    return affected


def refuse_managed(subscription: Subscription) -> None:
    """Subscriptions from the imported manifest change only by importing the next one."""
    if subscription.managed:
        raise ValidationError(
            f"Subscription {subscription.uuid} comes from the imported manifest and is read-only: "
            "import a new manifest (or delete the manifest) to change it.", code="manifest_managed")


@transaction.atomic
def delete_subscription(org: Organization, subscription_uuid: object,
                        trigger: str = "subscription") -> None:
    """Delete a subscription: every entitlement from its pools is revoked and logged first."""
    subscription = get_subscription(org, subscription_uuid)
    refuse_managed(subscription)
    ents = list(Entitlement.objects.filter(pool__subscription=subscription)
                .select_related("system", "pool__product"))
    affected = revoke_entitlements(ents, "subscription_deleted", trigger)
    affected |= {e.system_id for e in ents}
    subscription.delete()
    enqueue_resolution(affected, trigger)


def enqueue_coverage_seekers(org: Organization, subscription: Subscription | None,
                             trigger: str, also: Iterable[int] = ()) -> None:
    """Re-resolve ``also`` and the systems that may be able to use a new or changed pool:
    self-healing systems with installed products — with ``subscription``, only those with an
    installed product its pools (or its hosts' derived pools) provide; without, all of them.
    Guests covered through their host are among them: host auto-attach runs from the guest's
    resolution.

    Inside ``deferred_resolution`` the org's systems are read once when the block ends, for
    every subscription of the block (an import of 50 subscriptions: one read, not 50)."""
    skus = (None if subscription is None else
            _provided_skus([subscription.product_id, subscription.derived_product_id]))
    deferred = _deferred.get()
    if deferred is not None:
        enqueue_resolution(also, trigger)
        key = (org.id, trigger)
        known = deferred.seekers.get(key, set())
        if known is not None:  # None: every self-healing system already
            deferred.seekers[key] = None if skus is None else known | skus
        return
    enqueue_resolution(set(also) | set(_systems_wanting(org.id, skus)), trigger)


def _systems_wanting(org_id: int, skus: set[str] | None) -> list[int]:
    """Self-healing systems with installed products; with ``skus``, one of those installed."""
    rows = (System.objects.filter(org_id=org_id, autoheal=True).exclude(installed_products=[])
            .order_by().values_list("id", "installed_products"))
    if skus is None:
        return [system_id for system_id, _ in rows]
    return [system_id for system_id, installed in rows
            if any(str(p.get("productId")) in skus for p in installed if isinstance(p, dict))]


def _provided_skus(product_ids: Iterable[int | None]) -> set[str]:
    """Skus of these products and of the engineering products they provide (2 queries)."""
    ids = [i for i in product_ids if i is not None]
    skus = set(Product.objects.filter(id__in=ids).values_list("sku", flat=True))
    skus |= set(Product.provided_products.through.objects.filter(from_product_id__in=ids)
                .values_list("to_product__sku", flat=True))
    return skus


# --- Entitlements: grant and revoke -----------------------------------------------------------

@dataclass
class _Run:
    """What one resolution or manual change did, for events and follow-up work."""

    trigger: str
    now: datetime = field(default_factory=timezone.now)
    # The date coverage is sought for (rhsmcertd's ``entitle_date``); entitlements still start now.
    on: datetime | None = None
    to_resolve: set[int] = field(default_factory=set)
    attached: list[Entitlement] = field(default_factory=list)
    revoked: int = 0

    @property
    def at(self) -> datetime:
        return max(self.on, self.now) if self.on is not None else self.now


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
    """Compare-and-set: consume ``quantity`` units if they are still there (an unlimited
    pool's count of consumed units must still fit its column)."""
    updated = (
        Pool.objects.filter(pk=pool.pk)
        .filter(Q(quantity=UNLIMITED, consumed__lte=inputs.INT32_MAX - quantity)
                | Q(consumed__lte=F("quantity") - quantity))
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
    if limit is None:  # callers derive only from products with a virt_limit
        raise ValueError(f"product {subscription.product.sku} has no virt_limit to derive from")
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
    changed = {e.system_id for e in ents}
    if doomed:
        changed |= set(Entitlement.objects.filter(pool_id__in=doomed).exclude(id__in=ids)
                       .values_list("system_id", flat=True))
        Pool.objects.filter(id__in=doomed).delete()  # cascades to the guests' entitlements
    Entitlement.objects.filter(id__in=ids).delete()
    EntitlementEvent.objects.bulk_create(events)
    compliance.refresh(changed)  # same transaction: stored compliance never lags
    return affected


# --- Manual attach / remove -------------------------------------------------------------------

def get_system(org: Organization, system_uuid: object) -> System:
    """A system of ``org`` by its public uuid; NotFound (404) otherwise."""
    require_org(org)
    key = parse_uuid(system_uuid, "system")
    try:
        system: System = System.objects.select_related("org", "current_host").get(org=org, uuid=key)
        return system
    except System.DoesNotExist:
        raise NotFound(f"System {key} does not exist in organization {org.key}.") from None


def lock_system(system: System) -> None:
    """The system's advisory lock (and its host's): entitlements of a system only change
    under it."""
    _lock_system(system)


def _lock_system(system: System) -> None:
    keys = {system.id}
    if system.current_host_id:
        keys.add(system.current_host_id)
    locks.xact_lock_many(locks.SYSTEM, keys)


def attach(org: Organization, system_uuid: object, pool_uuid: object, quantity: int = 1,
           trigger: str = "manual") -> Entitlement:
    """Attach a pool to a system by hand; a refused check raises ``EntitlementRefused``."""
    require_org(org)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= MAX_QUANTITY:
        raise ValidationError(f"quantity must be a whole number from 1 to {MAX_QUANTITY}.",
                              code="invalid_quantity")
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
        if reason is not None or ent is None:
            reason = reason or "pool_exhausted"
            raise EntitlementRefused(reason, engine.refusal_message(reason, pool))
        if trigger == "consumer":  # the client's own ``attach --pool``
            end_client_intent(system)
        compliance.refresh([system.id])
        certificates.sync([system.id])
        enqueue_resolution(run.to_resolve, "host_entitlement")
        return ent


def remove_entitlement(org: Organization, entitlement_uuid: object, trigger: str = "manual") -> None:
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


def remove_own_entitlements(system: System, *, entitlement_uuid: object = None,
                            pool_uuid: object = None,
                            trigger: str = "consumer") -> int:
    """A consumer removes its own entitlements (all, one, or those from one pool); returns how
    many went. Client intent: the system itself is not re-resolved by sam's immediate triggers
    (consumer-api.md), only the guests of a host that lost a subscription are."""
    with transaction.atomic():
        _lock_system(system)
        query = Entitlement.objects.filter(system_id=system.id)
        if entitlement_uuid is not None:
            query = query.filter(uuid=parse_uuid(entitlement_uuid, "entitlement"))
        if pool_uuid is not None:
            query = query.filter(pool__uuid=parse_uuid(pool_uuid, "pool"))
        ents = list(query.select_related("system", "pool__product", "pool__subscription__product",
                                        "pool__requires_host"))
        affected = revoke_entitlements(ents, "removed_by_consumer", trigger)
        if ents:
            inputs_now = System.objects.only("current_host_id", "installed_products").get(pk=system.pk)
            System.objects.filter(pk=system.pk).update(
                self_removed_at=timezone.now(), self_removed_host=inputs_now.current_host_id,
                self_removed_products=sorted(inputs_now.installed_product_ids))
        enqueue_resolution(affected - {system.id}, "host_entitlement")
        return len(ents)


def client_intent_holds(system: System, pools: list[Pool], wanted: set[str],
                        provides: Callable[[Pool], frozenset[str]]) -> bool:
    """Whether ``system`` removed its own entitlements and nothing it depends on changed since
    (consumer-api.md "client intent"): the same host and installed products, and no shared pool
    made or changed afterwards that ``provides`` one of the ``wanted`` products. A host's new
    derived pool does not count: sam's host auto-attach must not undo the consumer's choice."""
    since = system.self_removed_at
    if since is None:
        return False
    if system.current_host_id != system.self_removed_host:
        return False
    if sorted(system.installed_product_ids) != (system.self_removed_products or []):
        return False
    return not any(p.requires_host_id is None and max(p.created, p.updated) > since
                   and wanted & provides(p) for p in pools)


def end_client_intent(system: System) -> None:
    """The consumer asked for coverage itself, or its inputs changed: sam's triggers attach to
    it again."""
    if system.self_removed_at is not None:
        System.objects.filter(pk=system.pk).update(self_removed_at=None, self_removed_host=None,
                                                   self_removed_products=None)
        system.self_removed_at = system.self_removed_host = system.self_removed_products = None


def pools_for_consumer(system: System, on: datetime, list_all: bool = False) -> list[Pool]:
    """The pools ``system`` is shown (``list --available``): those the pre-entitlement checks
    let it take one unit of on ``on``; with ``list_all``, every current pool of its org except
    other hosts' derived pools. Oldest first."""
    host_id = system.current_host_id if system.is_guest else None
    pools = usable_pools(system.org, on, host_id)
    if list_all:
        return pools
    view = engine.SystemView(system, host_id, _held_pool_ids(system))
    return [p for p in pools if engine.check_pool(view, p, system.org, on) is None]


# --- Resolution (domain.md 5) -----------------------------------------------------------------

def org_pools(org: Organization) -> QuerySet[Pool]:
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


@dataclass
class Resolution:
    system_id: int
    attached: int
    revoked: int
    entitlement_ids: tuple[int, ...] = ()  # what this system itself received


def resolve_system(system_id: int, trigger: str = "heal",
                   queued: frozenset[int] = frozenset(), *, on: datetime | None = None,
                   requested: bool = False) -> Resolution | None:
    """Bring one system's entitlements to the best coverage of its installed products.

    Idempotent; serialised per system and per host. Returns None for a deleted system.
    ``on``: cover the system for that date (a client's ``entitle_date``); ``requested``: the
    system asked itself (``attach --auto``), so its own ``autoheal`` switch does not stop it.
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
            run = _Run(trigger=trigger, on=on)
            _resolve(run, system, requested=requested)
            # Stored compliance follows every resolution (installed products may have changed
            # without any entitlement change); ``queued``: systems later in the caller's batch.
            entitlements_changed(system.org, {system.id} | {e.system_id for e in run.attached},
                                 trigger, follow_up=run.to_resolve - {system.id} - queued)
            mine = tuple(e.id for e in run.attached if e.system_id == system.id)
            return Resolution(system.id, len(run.attached), run.revoked, mine)
    raise OperationalError(f"system {system_id}: its host kept changing; resolution retried later")


def _resolve(run: _Run, system: System, requested: bool = False) -> None:
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

    if not ((system.autoheal or requested) and org.autobind_enabled):
        return
    if requested:  # the client's own attach --auto or auto-heal
        end_client_intent(system)
    now = run.at  # from here on: coverage for the requested date
    catalog = load_catalog(org)
    wanted = _uncovered(system, ents, catalog, now)
    if not wanted:
        return
    pools = usable_pools(org, now, host_id)
    if system.self_removed_at is not None:  # client intent: stands until its inputs change
        if client_intent_holds(system, pools, wanted, catalog.pool_provides):
            return
        end_client_intent(system)

    # Step 3: host auto-attach first, so the guest can inherit from the host's derived pool.
    host = system.current_host if system.is_guest else None
    if host is not None and host.autoheal and org.hypervisor_autobind_enabled and not \
            client_intent_holds(host, pools, wanted, catalog.host_pool_provides_for_guests):
        end_client_intent(host)
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
        if engine.check_pool(view, pool, system.org, run.at, units) is None:
            options.append((engine.candidate_order(pool, units, view.host_id), pool, units))
    for _, pool, units in sorted(options, key=lambda o: o[0]):
        if _grant(run, system, pool, units, "auto_attach") is not None:
            return


def _host_auto_attach(run: _Run, host: System, wanted: set[str], pools: list[Pool],
                      catalog: engine.Catalog) -> None:
    """Entitle the guest's host to a subscription with virtual guests that provides what the
    guest lacks — unless a derived pool of that host already offers it (domain.md 5, step 3)."""
    now = run.at
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


def entitlements_changed(org: Organization, system_ids: set[int], trigger: str,
                         follow_up: Iterable[int] = (),
                         known: dict[int, tuple[System, list[Entitlement]]] | None = None,
                         catalog: LoadedCatalog | None = None) -> None:
    """The one hook after a resolution (per system or set-based) changed the entitlements of
    ``system_ids``, called inside its transaction once per system or per batch.

    ``follow_up``: systems whose inputs this changed — the guests of a host that gained or lost
    a subscription — are resolved after commit. Whatever is stored per system and derives from
    its entitlements (compliance, entitlement certificates) is refreshed here, for all
    ``system_ids`` at once; ``known`` and ``catalog``: what the caller already holds of them
    (``compliance.refresh``)."""
    compliance.refresh(system_ids, known, catalog)
    certificates.sync(system_ids, known=known, catalog=catalog)
    enqueue_resolution(set(follow_up) - set(system_ids), "host_entitlement")


# --- Compliance for callers -------------------------------------------------------------------

def compliance_for(system: System, now: datetime | None = None) -> engine.Compliance[Any]:
    now = now or timezone.now()
    return engine.compliance(system, entitlements_of(system), load_catalog(system.org),
                             system.org, now)


# --- Background triggers ----------------------------------------------------------------------

@dataclass
class _Deferred:
    """What a ``deferred_resolution`` block collected: systems (with the first trigger that
    named them), and per (org, trigger) the skus whose pools changed (None: any pool)."""

    systems: dict[int, str] = field(default_factory=dict)
    seekers: dict[tuple[int, str], set[str] | None] = field(default_factory=dict)


_deferred: ContextVar[_Deferred | None] = ContextVar("sam_deferred_resolution", default=None)


@contextmanager
def deferred_resolution() -> Iterator[None]:
    """Collect the resolutions enqueued inside the block and enqueue each system once when it
    ends (after commit, when the block is inside a transaction): an import of N subscriptions
    re-resolves each system once, not N times (performance.md P10). Nothing is enqueued when
    the block raises. Nested blocks join the outermost one."""
    if _deferred.get() is not None:
        yield
        return
    collected = _Deferred()
    token = _deferred.set(collected)
    try:
        yield
    finally:
        _deferred.reset(token)
    for (org_id, trigger), skus in sorted(collected.seekers.items(), key=lambda kv: kv[0]):
        for system_id in _systems_wanting(org_id, skus):
            collected.systems.setdefault(system_id, trigger)
    by_trigger: dict[str, set[int]] = {}
    for system_id, trigger in collected.systems.items():
        by_trigger.setdefault(trigger, set()).add(system_id)
    for trigger, ids in sorted(by_trigger.items()):
        enqueue_resolution(ids, trigger)


resolve_systems_task = TaskSlot("subscriptions.tasks.resolve_systems")  # tasks.py fills it


def enqueue_resolution(system_ids: Iterable[int], trigger: str) -> None:
    """Resolve these systems in workers once the current transaction commits (ids only);
    inside ``deferred_resolution`` once the block ends."""
    ids = sorted({int(i) for i in system_ids})
    if not ids:
        return
    deferred = _deferred.get()
    if deferred is not None:
        for system_id in ids:
            deferred.systems.setdefault(system_id, trigger)
        return
    resolve_systems = resolve_systems_task

    def send() -> None:
        # A few systems (a registration, a fact update): coalesced with the others of the
        # moment into one set-based batch; many: tasks grouped by host.
        if len(ids) < settings.SAM_RESOLVE_BATCH and pending.enabled() and pending.add(ids, trigger):
            return
        for chunk in host_batches(ids, settings.SAM_RESOLVE_BATCH):
            resolve_systems.delay(chunk, trigger)

    transaction.on_commit(send)


def host_batches(ids: list[int], size: int) -> list[list[int]]:
    """``ids`` in tasks of about ``size`` systems, a host's guests (and the host) never split:
    two workers then lock disjoint hosts and resolve side by side, instead of the second
    waiting on the first's host locks (performance.md P5, P10). A host with more guests than
    ``size`` is one task (set-based resolution costs the same statements at any size)."""
    if len(ids) <= size:
        return [ids]
    host_of: dict[int, int] = {}
    for start in range(0, len(ids), 5000):
        host_of.update(System.objects.filter(id__in=ids[start:start + 5000])
                       .values_list("id", "current_host_id"))
    groups: dict[int, list[int]] = {}
    for system_id in ids:  # ascending: each group, and so each task, stays in id order
        groups.setdefault(host_of.get(system_id) or system_id, []).append(system_id)
    batches: list[list[int]] = [[]]
    for _, members in sorted(groups.items()):
        if batches[-1] and len(batches[-1]) + len(members) > size:
            batches.append([])
        batches[-1].extend(members)
    return [sorted(b) for b in batches]


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


# --- Retention (performance.md R10) -----------------------------------------------------------

def prune_history(before: datetime, batch: int = 5000) -> dict[str, int]:
    """Delete entitlement events and coverage snapshots older than ``before``, in batches."""
    events = 0
    while ids := list(EntitlementEvent.objects.filter(created__lt=before).order_by("id")
                      .values_list("id", flat=True)[:batch]):
        events += EntitlementEvent.objects.filter(id__in=ids).delete()[0]
    snapshots = CoverageSnapshot.objects.filter(day__lt=before.date()).delete()[0]
    return {"events": events, "snapshots": snapshots}


# --- Activation keys at registration ---------------------------------------------------------

def apply_key_pools(system: System, keys: Iterable[ActivationKey]) -> list[Entitlement]:
    """Attach the pools of activation keys, in order. A pool that cannot be used does not fail
    the registration (Candlepin's behaviour): it is recorded as a system event."""
    from orgs.models import SystemEvent

    attached = []
    for key in keys:
        for entry in key.pools.all():
            try:
                with transaction.atomic():
                    attached.append(attach(system.org, system.uuid, entry.pool_uuid,
                                           entry.quantity or 1, trigger="activation_key"))
            except (EntitlementRefused, ValidationError) as exc:
                message = exc.message if isinstance(exc, EntitlementRefused) else " ".join(exc.messages)
                SystemEvent.objects.create(
                    org=system.org, system=system, kind=SystemEvent.Kind.KEY_POOL_UNUSABLE,
                    message=f"Activation key {key.name}: pool {entry.pool_uuid} not attached: "
                            f"{message}",
                    data={"key": key.name, "pool": str(entry.pool_uuid)})
    return attached
