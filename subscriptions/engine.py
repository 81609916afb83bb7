"""Entitlement rules as pure computation (domain.md sections 3, 4, 5 and 7).

Nothing here touches the database and nothing imports the models: callers pass rows that have
the attributes the protocols below name (model instances with their related rows loaded, or
plain objects in tests), and the catalog as plain data (``subscriptions.catalog`` loads it). So
every rule can be read, unit-tested and reused by resolution, explanation and the API without
hidden queries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

UNLIMITED = -1  # a quantity without bound (pools, subscriptions, virt_limit)
# Pool types (the values of ``subscriptions.models.Pool.Type``, Candlepin's names).
NORMAL = "NORMAL"
UNMAPPED_GUEST = "UNMAPPED_GUEST"
BONUS = "BONUS"


# --- What the rules read (model rows satisfy these; tests pass plain objects) -----------------

class ProductRow(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def sku(self) -> str: ...
    @property
    def attributes(self) -> Mapping[str, Any] | None: ...


P = TypeVar("P", bound=ProductRow)  # the caller's product rows come back as they went in
P_co = TypeVar("P_co", bound=ProductRow, covariant=True)


class SubscriptionRow(Protocol[P_co]):
    @property
    def product(self) -> P_co: ...
    @property
    def derived_product(self) -> P_co | None: ...
    @property
    def quantity(self) -> int: ...
    @property
    def managed(self) -> bool: ...


class PoolRow(Protocol[P_co]):
    @property
    def id(self) -> int: ...
    @property
    def org_id(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def product(self) -> P_co: ...
    @property
    def product_id(self) -> int: ...
    @property
    def subscription(self) -> SubscriptionRow[P_co]: ...
    @property
    def quantity(self) -> int: ...
    @property
    def consumed(self) -> int: ...
    @property
    def start(self) -> datetime: ...
    @property
    def end(self) -> datetime: ...
    @property
    def created(self) -> datetime: ...
    @property
    def virt_only(self) -> bool: ...
    @property
    def physical_only(self) -> bool: ...
    @property
    def unmapped_guests_only(self) -> bool: ...
    @property
    def multi_entitlement(self) -> bool: ...
    @property
    def requires_host_id(self) -> int | None: ...


AnyPool = PoolRow[ProductRow]


class SystemRow(Protocol):
    @property
    def org_id(self) -> int: ...
    @property
    def is_guest(self) -> bool: ...
    @property
    def registered_at(self) -> datetime: ...
    @property
    def sockets(self) -> int: ...
    @property
    def installed_product_ids(self) -> Sequence[str]: ...


class OrgRow(Protocol):
    @property
    def unmapped_window(self) -> timedelta: ...
    @property
    def unmapped_lifetime(self) -> timedelta: ...


class EntitlementRow(Protocol):
    @property
    def pool(self) -> AnyPool: ...
    @property
    def start(self) -> datetime: ...
    @property
    def end(self) -> datetime: ...
    @property
    def quantity(self) -> int: ...
    @property
    def uuid(self) -> Any: ...


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


def refusal_message(reason: str, pool: AnyPool | None = None) -> str:
    text = REFUSALS.get(reason, reason)
    if reason == "pool_exhausted" and pool is not None:
        return f"pool exhausted ({pool.consumed} of {pool.quantity} used)"
    return text


# --- Attributes ------------------------------------------------------------------------------

def attr(product: ProductRow, name: str, default: str | None = None) -> str | None:
    value = (product.attributes or {}).get(name)
    return default if value is None else str(value)


def is_true(value: str | None) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes"}


def virt_limit(product: ProductRow) -> int | None:
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


def int_attr(product: ProductRow, name: str, default: int) -> int:
    try:
        value = int(str(attr(product, name, str(default))).strip())
    except ValueError:
        return default
    return value if value > 0 else default


def stacking_id(product: ProductRow) -> str | None:
    value = attr(product, "stacking_id")
    return value or None


# --- Pools from a subscription (domain.md 3.1-3.2) -------------------------------------------

@dataclass(frozen=True)
class PoolSpec(Generic[P]):
    type: str
    product: P
    quantity: int
    attributes: dict[str, str]
    virt_only: bool = False
    physical_only: bool = False
    unmapped_guests_only: bool = False
    multi_entitlement: bool = False


def pools_for_subscription(subscription: SubscriptionRow[P]) -> list[PoolSpec[P]]:
    """The NORMAL pool, plus an UNMAPPED_GUEST pool when the product has ``virt_limit``."""
    product = subscription.product
    # A manifest's quantity was multiplied upstream: Candlepin skips instance_multiplier for
    # pools with an upstream pool id (manifest.md 2.2 and 4).
    multiplier = 1 if subscription.managed else int_attr(product, "instance_multiplier", 1)
    quantity = UNLIMITED if subscription.quantity == UNLIMITED else subscription.quantity * multiplier
    specs = [
        PoolSpec(
            type=NORMAL,
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
                type=UNMAPPED_GUEST,
                product=guest_product,
                quantity=UNLIMITED if UNLIMITED in (limit, quantity) else limit * quantity,
                attributes={"virt_only": "true", "pool_derived": "true",
                            "unmapped_guests_only": "true"},
                virt_only=True,
                unmapped_guests_only=True,
            )
        )
    return specs


def derived_pool_product(pool: PoolRow[P]) -> P:
    """What guests of a host get from a host's entitlement to ``pool`` (derived if present)."""
    return pool.subscription.derived_product or pool.subscription.product


def is_host_subscription(pool: AnyPool) -> bool:
    """A **host subscription** (one with virtual guests): a NORMAL pool whose product has
    ``virt_limit``; attached to a hypervisor, its guests get the derived pool."""
    return pool.type == NORMAL and virt_limit(pool.subscription.product) is not None


def makes_derived_pool(pool: AnyPool, system: SystemRow) -> bool:
    """A non-guest entitled to a pool whose product has ``virt_limit`` gets a derived pool."""
    return (
        not system.is_guest
        and pool.type in (NORMAL, BONUS)
        and virt_limit(pool.subscription.product) is not None
    )


# --- What covers what ------------------------------------------------------------------------

@dataclass(frozen=True)
class CatalogProduct:
    """One product of the org as the catalog needs it: plain data, no database behind it."""

    id: int
    sku: str
    name: str
    provided: frozenset[str] = frozenset()  # SKUs of the engineering products it provides


class Catalog:
    """The org's products with the engineering products each provides (one load per run:
    ``subscriptions.catalog.load_catalog``)."""

    def __init__(self, products: Iterable[CatalogProduct]) -> None:
        self.provides: dict[int, frozenset[str]] = {}
        self.names: dict[str, str] = {}
        for product in products:
            self.provides[product.id] = frozenset({product.sku} | product.provided)
            self.names[product.sku] = product.name

    def pool_provides(self, pool: AnyPool) -> frozenset[str]:
        return self.provides.get(pool.product_id, frozenset({pool.product.sku}))

    def host_pool_provides_for_guests(self, pool: AnyPool) -> frozenset[str]:
        """Products a guest gets once its host is entitled to ``pool``."""
        product = derived_pool_product(pool)
        return self.provides.get(product.id, frozenset({product.sku}))

    def name(self, sku: str) -> str:
        return self.names.get(sku, sku)


# --- Pre-entitlement checks (domain.md 4) ----------------------------------------------------

@dataclass
class SystemView:
    """What the checks need to know about a system at one moment."""

    system: SystemRow
    host_id: int | None
    held_pool_ids: set[int] = field(default_factory=set)

    @property
    def is_guest(self) -> bool:
        return self.system.is_guest


def within_unmapped_window(system: SystemRow, org: OrgRow, now: datetime) -> bool:
    return now < system.registered_at + org.unmapped_window


def check_pool(view: SystemView, pool: AnyPool, org: OrgRow, now: datetime,
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

def guest_rank(pool: AnyPool, host_id: int | None) -> int:
    if pool.requires_host_id is not None and pool.requires_host_id == host_id:
        return 0
    if pool.virt_only:
        return 1
    return 2


def candidate_order(pool: AnyPool, units: int, host_id: int | None = None) -> tuple[Any, ...]:
    """Best first: host's pools, other virt-only, normal; then fewest units, soonest end."""
    return (guest_rank(pool, host_id), units, pool.end, pool.created, pool.id)


def units_for_stack(system: SystemRow, product: ProductRow, covered_sockets: int) -> int:
    """Units of a socket-stacked product still needed to cover the system's sockets."""
    per_unit = int_attr(product, "sockets", 0)
    if per_unit <= 0:
        return 1
    missing = system.sockets - covered_sockets
    return max(1, math.ceil(missing / per_unit))


# --- Compliance (domain.md 7) ----------------------------------------------------------------

E = TypeVar("E", bound=EntitlementRow)  # the caller's entitlement rows come back as they went in


@dataclass
class ProductStatus(Generic[E]):
    product_id: str
    status: str  # valid | partial | invalid
    reasons: list[str]
    entitlements: list[E]


@dataclass
class Compliance(Generic[E]):
    status: str  # valid | partial | invalid | disabled
    products: dict[str, ProductStatus[E]]
    reasons: list[dict[str, Any]]
    partial_stacks: dict[str, list[E]]

    @property
    def compliant(self) -> bool:
        return not self.reasons


def active(entitlement: EntitlementRow, now: datetime) -> bool:
    return entitlement.start <= now < entitlement.end and entitlement.pool.start <= now < entitlement.pool.end


def stack_coverage(system: SystemRow, entitlements: Iterable[E]) -> dict[str, tuple[int, list[E]]]:
    """Sockets covered per stacking id (sum of ``sockets × quantity``), for non-guests."""
    stacks: dict[str, tuple[int, list[E]]] = {}
    for ent in entitlements:
        product = ent.pool.product
        stack = stacking_id(product)
        if stack is None:
            continue
        sockets, ents = stacks.get(stack, (0, []))
        per_unit = int_attr(product, "sockets", 0)
        stacks[stack] = (sockets + per_unit * ent.quantity if per_unit else sockets, ents + [ent])
    return stacks


def stack_short(system: SystemRow, product: ProductRow,
                stacks: Mapping[str, tuple[int, Sequence[E]]]) -> bool:
    """True when a socket-limited stack does not cover the system's sockets (guests exempt)."""
    if system.is_guest or int_attr(product, "sockets", 0) <= 0:
        return False
    stack = stacking_id(product)
    if stack is None:
        return int_attr(product, "sockets", 0) < system.sockets
    return stacks.get(stack, (0, []))[0] < system.sockets


def compliance(system: SystemRow, entitlements: Sequence[E], catalog: Catalog,
               org: OrgRow, now: datetime) -> Compliance[E]:
    """Status per installed product and for the system, with Candlepin's reason keys. The
    content access mode plays no part: consumers shown SCA are accounted alike and only the
    wire says ``disabled`` to them (orgs.content_access; domain.md 7)."""
    current = [e for e in entitlements if active(e, now)]
    stacks = stack_coverage(system, current)
    products: dict[str, ProductStatus[E]] = {}
    reasons: list[dict[str, Any]] = []
    partial_stacks: dict[str, list[E]] = {}
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
    if not reasons:
        status = "valid"
    elif any(p.status == "invalid" for p in products.values()):
        status = "invalid"
    else:
        status = "partial"
    return Compliance(status, products, reasons, partial_stacks)
