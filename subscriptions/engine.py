"""Entitlement rules as pure computation (domain.md sections 3, 4, 5 and 7).

Nothing here touches the database: callers load the rows (with their related objects) and
pass them in, so every rule can be read, tested and reused by resolution, explanation and the
API without hidden queries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from orgs.models import Organization, System
from subscriptions.models import UNLIMITED, Entitlement, Pool, Product, Subscription

# --- Refusal reasons (stable keys used by the API, the UI and explanations) ------------------

REFUSALS = {
    "virt_only": "the pool is for virtual guests only",
    "physical_only": "the pool is for physical systems only",
    "host_mismatch": "the pool is for guests of another host",
    "unmapped_has_host": "the temporary pool is only for guests whose host is unknown",
    "unmapped_window_passed": "the guest registered too long ago for a temporary entitlement",
    "pool_exhausted": "no units left in the pool",
    "pool_expired": "the subscription has ended",
    "pool_not_started": "the subscription has not started yet",
    "already_entitled": "the system already has an entitlement from this pool",
    "multi_entitlement_unsupported": "the pool does not support more than one unit",
    "org_mismatch": "the pool belongs to another organization",
    "bad_quantity": "the quantity must be a positive whole number",
}


def refusal_message(reason: str, pool: Pool | None = None) -> str:
    text = REFUSALS.get(reason, reason)
    if reason == "pool_exhausted" and pool is not None:
        return f"pool exhausted ({pool.consumed} of {pool.quantity} used)"
    return text


# --- Attributes ------------------------------------------------------------------------------

def attr(product: Product, name: str, default: str | None = None) -> str | None:
    value = (product.attributes or {}).get(name)
    return default if value is None else str(value)


def is_true(value: str | None) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes"}


def virt_limit(product: Product) -> int | None:
    """``virt_limit`` as guests per host: -1 unlimited, None when absent or not positive."""
    raw = attr(product, "virt_limit")
    if raw is None:
        return None
    if raw.strip().lower() == "unlimited":
        return UNLIMITED
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value > 0 else None


def int_attr(product: Product, name: str, default: int) -> int:
    try:
        value = int(str(attr(product, name, str(default))).strip())
    except ValueError:
        return default
    return value if value > 0 else default


def stacking_id(product: Product) -> str | None:
    value = attr(product, "stacking_id")
    return value or None


# --- Pools from a subscription (domain.md 3.1-3.2) -------------------------------------------

@dataclass(frozen=True)
class PoolSpec:
    type: str
    product: Product
    quantity: int
    attributes: dict
    virt_only: bool = False
    physical_only: bool = False
    unmapped_guests_only: bool = False
    multi_entitlement: bool = False


def pools_for_subscription(subscription: Subscription) -> list[PoolSpec]:
    """The NORMAL pool, plus an UNMAPPED_GUEST pool when the product has ``virt_limit``."""
    product = subscription.product
    multiplier = int_attr(product, "instance_multiplier", 1)
    quantity = UNLIMITED if subscription.quantity == UNLIMITED else subscription.quantity * multiplier
    specs = [
        PoolSpec(
            type=Pool.Type.NORMAL,
            product=product,
            quantity=quantity,
            attributes={},
            virt_only=is_true(attr(product, "virt_only")),
            physical_only=is_true(attr(product, "physical_only")),
            multi_entitlement=is_true(attr(product, "multi-entitlement")),
        )
    ]
    limit = virt_limit(product)
    if limit is not None:
        guest_product = subscription.derived_product or product
        specs.append(
            PoolSpec(
                type=Pool.Type.UNMAPPED_GUEST,
                product=guest_product,
                quantity=UNLIMITED if UNLIMITED in (limit, quantity) else limit * quantity,
                attributes={"virt_only": "true", "pool_derived": "true",
                            "unmapped_guests_only": "true"},
                virt_only=True,
                unmapped_guests_only=True,
            )
        )
    return specs


def derived_pool_product(pool: Pool) -> Product:
    """What guests of a host get from a host's entitlement to ``pool`` (derived if present)."""
    return pool.subscription.derived_product or pool.subscription.product


def makes_derived_pool(pool: Pool, system: System) -> bool:
    """A non-guest entitled to a pool whose product has ``virt_limit`` gets a derived pool."""
    return (
        not system.is_guest
        and pool.type in (Pool.Type.NORMAL, Pool.Type.BONUS)
        and virt_limit(pool.subscription.product) is not None
    )


# --- What covers what ------------------------------------------------------------------------

class Catalog:
    """The org's products with the engineering products each provides (one load per run)."""

    def __init__(self, products: Iterable[Product]):
        self.by_id: dict[int, Product] = {}
        self.provides: dict[int, frozenset[str]] = {}
        self.names: dict[str, str] = {}
        for product in products:
            self.by_id[product.id] = product
            provided = {p.sku for p in product.provided_products.all()}
            self.provides[product.id] = frozenset({product.sku} | provided)
            self.names[product.sku] = product.name

    def pool_provides(self, pool: Pool) -> frozenset[str]:
        return self.provides.get(pool.product_id, frozenset({pool.product.sku}))

    def host_pool_provides_for_guests(self, pool: Pool) -> frozenset[str]:
        """Products a guest gets once its host is entitled to ``pool``."""
        product = derived_pool_product(pool)
        return self.provides.get(product.id, frozenset({product.sku}))

    def name(self, sku: str) -> str:
        return self.names.get(sku, sku)


# --- Pre-entitlement checks (domain.md 4) ----------------------------------------------------

@dataclass
class SystemView:
    """What the checks need to know about a system at one moment."""

    system: System
    host_id: int | None
    held_pool_ids: set[int] = field(default_factory=set)

    @property
    def is_guest(self) -> bool:
        return self.system.is_guest


def within_unmapped_window(system: System, org: Organization, now: datetime) -> bool:
    return now < system.registered_at + org.unmapped_window


def check_pool(view: SystemView, pool: Pool, org: Organization, now: datetime,
               quantity: int = 1) -> str | None:
    """The first reason ``view.system`` may not take ``quantity`` of ``pool``, or None."""
    system = view.system
    if pool.org_id != system.org_id:
        return "org_mismatch"
    if quantity < 1:
        return "bad_quantity"
    if now >= pool.end:
        return "pool_expired"
    if now < pool.start:
        return "pool_not_started"
    if pool.virt_only and not system.is_guest:
        return "virt_only"
    if pool.physical_only and system.is_guest:
        return "physical_only"
    if pool.requires_host_id is not None and pool.requires_host_id != view.host_id:
        return "host_mismatch"
    if pool.unmapped_guests_only:
        if view.host_id is not None:
            return "unmapped_has_host"
        if not within_unmapped_window(system, org, now):
            return "unmapped_window_passed"
        if system.registered_at + org.unmapped_lifetime <= now:
            # A temporary entitlement would already have ended (lifetime shorter than window).
            return "unmapped_window_passed"
    if pool.id in view.held_pool_ids and not pool.multi_entitlement:
        return "already_entitled"
    if quantity > 1 and not pool.multi_entitlement:
        return "multi_entitlement_unsupported"
    if pool.quantity != UNLIMITED and pool.quantity - pool.consumed < quantity:
        return "pool_exhausted"
    return None


# --- Ordering of candidates (domain.md 5, step 5) --------------------------------------------

def guest_rank(pool: Pool, host_id: int | None) -> int:
    if pool.requires_host_id is not None and pool.requires_host_id == host_id:
        return 0
    if pool.virt_only:
        return 1
    return 2


def candidate_order(pool: Pool, units: int, host_id: int | None = None) -> tuple:
    """Best first: host's pools, other virt-only, normal; then fewest units, soonest end."""
    return (guest_rank(pool, host_id), units, pool.end, pool.created, pool.id)


def units_for_stack(system: System, product: Product, covered_sockets: int) -> int:
    """Units of a socket-stacked product still needed to cover the system's sockets."""
    per_unit = int_attr(product, "sockets", 0)
    if per_unit <= 0:
        return 1
    missing = system.sockets - covered_sockets
    return max(1, math.ceil(missing / per_unit))


# --- Compliance (domain.md 7) ----------------------------------------------------------------

@dataclass
class ProductStatus:
    product_id: str
    status: str  # valid | partial | invalid
    reasons: list[str]
    entitlements: list[Entitlement]


@dataclass
class Compliance:
    status: str  # valid | partial | invalid | disabled
    products: dict[str, ProductStatus]
    reasons: list[dict]
    partial_stacks: dict[str, list[Entitlement]]

    @property
    def compliant(self) -> bool:
        return not self.reasons


def active(entitlement: Entitlement, now: datetime) -> bool:
    return entitlement.start <= now < entitlement.end and entitlement.pool.start <= now < entitlement.pool.end


def stack_coverage(system: System, entitlements: Iterable[Entitlement]) -> dict[str, tuple[int, list]]:
    """Sockets covered per stacking id (sum of ``sockets × quantity``), for non-guests."""
    stacks: dict[str, tuple[int, list]] = {}
    for ent in entitlements:
        product = ent.pool.product
        stack = stacking_id(product)
        if stack is None:
            continue
        sockets, ents = stacks.get(stack, (0, []))
        per_unit = int_attr(product, "sockets", 0)
        stacks[stack] = (sockets + per_unit * ent.quantity if per_unit else sockets, ents + [ent])
    return stacks


def stack_short(system: System, product: Product, stacks: dict[str, tuple[int, list]]) -> bool:
    """True when a socket-limited stack does not cover the system's sockets (guests exempt)."""
    if system.is_guest or int_attr(product, "sockets", 0) <= 0:
        return False
    stack = stacking_id(product)
    if stack is None:
        return int_attr(product, "sockets", 0) < system.sockets
    return stacks.get(stack, (0, []))[0] < system.sockets


def compliance(system: System, entitlements: list[Entitlement], catalog: Catalog,
               org: Organization, now: datetime) -> Compliance:
    """Status per installed product and for the system, with Candlepin's reason keys."""
    current = [e for e in entitlements if active(e, now)]
    stacks = stack_coverage(system, current)
    products: dict[str, ProductStatus] = {}
    reasons: list[dict] = []
    partial_stacks: dict[str, list[Entitlement]] = {}
    for stack, (sockets, ents) in stacks.items():
        if stack_short(system, ents[0].pool.product, stacks):
            partial_stacks[stack] = ents
            reasons.append({"key": "SOCKETS", "message":
                            f"Only supports {sockets} of {system.sockets} sockets.",
                            "attributes": {"stack_id": stack, "has": str(system.sockets),
                                           "covered": str(sockets)}})
    for product_id in system.installed_product_ids:
        covering = [e for e in current if product_id in catalog.pool_provides(e.pool)]
        if not covering:
            products[product_id] = ProductStatus(product_id, "invalid", ["NOTCOVERED"], [])
            reasons.append({"key": "NOTCOVERED", "message": "Not supported by a valid subscription.",
                            "attributes": {"product_id": product_id,
                                           "name": catalog.name(product_id)}})
            continue
        full = [e for e in covering
                if not e.pool.unmapped_guests_only and not stack_short(system, e.pool.product, stacks)]
        if full:
            products[product_id] = ProductStatus(product_id, "valid", [], covering)
            continue
        keys = []
        if any(e.pool.unmapped_guests_only for e in covering):
            keys.append("UNMAPPEDGUEST")
        if any(stack_short(system, e.pool.product, stacks) for e in covering):
            keys.append("SOCKETS")
        products[product_id] = ProductStatus(product_id, "partial", keys, covering)
    for ent in current:
        if ent.pool.unmapped_guests_only:
            reasons.append({"key": "UNMAPPEDGUEST", "message":
                            "Guest has not been reported on any host and is using a temporary "
                            "unmapped guest subscription.",
                            "attributes": {"entitlement_id": str(ent.uuid)}})
    if org.content_access_mode == Organization.ContentAccess.SCA:
        status = "disabled"
    elif not reasons:
        status = "valid"
    elif any(p.status == "invalid" for p in products.values()):
        status = "invalid"
    else:
        status = "partial"
    return Compliance(status, products, reasons, partial_stacks)
