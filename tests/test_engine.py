"""The entitlement rules of ``subscriptions.engine``, directly, as tables (domain.md 3, 4, 5, 7).

The engine is pure: plain objects stand in for the rows, no database is opened (this module
overrides the suite's session fixture that sets one up), so the whole file runs in a second.
Every refusal key the engine has, and every one domain.md section 4 lists, is asserted here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from subscriptions import engine
from subscriptions.engine import BONUS, NORMAL, UNLIMITED, UNMAPPED_GUEST

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DOMAIN_MD = Path(__file__).resolve().parent.parent.parent / "shared" / "spec" / "domain.md"
# The refusal keys domain.md section 4 names ("..." there: the engine has more, all below).
DOMAIN_REFUSALS = {"virt_only", "physical_only", "host_mismatch", "unmapped_has_host",
                   "unmapped_window_passed", "pool_exhausted", "pool_expired", "already_entitled"}


@pytest.fixture(scope="session", autouse=True)
def _no_stray_test_db_sessions():
    """No database in this module (the suite's fixture of this name would create one)."""
    yield


# --- Plain rows ------------------------------------------------------------------------------

@dataclass
class Product:
    id: int
    sku: str
    name: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Subscription:
    product: Product
    quantity: int = 1
    derived_product: Product | None = None
    managed: bool = False


@dataclass
class Pool:
    id: int = 1
    product: Product = field(default_factory=lambda: Product(1, "RH-4G"))
    subscription: Subscription | None = None
    type: str = NORMAL
    quantity: int = 10
    consumed: int = 0
    start: datetime = NOW - timedelta(days=1)
    end: datetime = NOW + timedelta(days=30)
    created: datetime = NOW - timedelta(days=1)
    org_id: int = 1
    virt_only: bool = False
    physical_only: bool = False
    unmapped_guests_only: bool = False
    multi_entitlement: bool = False
    requires_host_id: int | None = None

    def __post_init__(self) -> None:
        self.subscription = self.subscription or Subscription(self.product)

    @property
    def product_id(self) -> int:
        return self.product.id


@dataclass(frozen=True)
class System:
    org_id: int = 1
    is_guest: bool = False
    registered_at: datetime = NOW - timedelta(hours=1)
    sockets: int = 1
    installed_product_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Org:
    unmapped_window: timedelta = timedelta(hours=24)
    unmapped_lifetime: timedelta = timedelta(days=7)


@dataclass
class Entitlement:
    pool: Pool
    quantity: int = 1
    start: datetime = NOW - timedelta(hours=1)
    end: datetime = NOW + timedelta(days=30)
    uuid: str = "e"


GUEST = System(is_guest=True)
PHYSICAL = System()
HOST_ID = 7


# --- Refusals (domain.md 4) ------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    why: str
    expected: str | None
    pool: Pool = field(default_factory=Pool)
    system: System = PHYSICAL
    host_id: int | None = None
    held: frozenset[int] = frozenset()
    quantity: int = 1
    org: Org = Org()


UNMAPPED = Pool(type=UNMAPPED_GUEST, virt_only=True, unmapped_guests_only=True)
CHECKS = [
    Case("a normal pool with units left", None),
    Case("a pool of another org", "org_mismatch", Pool(org_id=2)),
    Case("zero units", "bad_quantity", quantity=0),
    Case("negative units", "bad_quantity", quantity=-1),
    Case("the subscription ended", "pool_expired", Pool(end=NOW)),
    Case("the subscription has not started", "pool_not_started", Pool(start=NOW + timedelta(seconds=1))),
    Case("virt-only pool, physical system", "virt_only", Pool(virt_only=True)),
    Case("virt-only pool, guest", None, Pool(virt_only=True), GUEST),
    Case("physical-only pool, guest", "physical_only", Pool(physical_only=True), GUEST),
    Case("physical-only pool, physical system", None, Pool(physical_only=True)),
    Case("host's pool, guest of that host", None, Pool(requires_host_id=HOST_ID), GUEST, HOST_ID),
    Case("host's pool, guest of another host", "host_mismatch", Pool(requires_host_id=HOST_ID), GUEST, 8),
    Case("host's pool, guest with no known host", "host_mismatch", Pool(requires_host_id=HOST_ID), GUEST),
    Case("temporary pool, guest with no known host", None, UNMAPPED, GUEST),
    Case("temporary pool, guest with a host", "unmapped_has_host", UNMAPPED, GUEST, HOST_ID),
    Case("temporary pool, registered 25 h ago", "unmapped_window_passed", UNMAPPED,
         System(is_guest=True, registered_at=NOW - timedelta(hours=25))),
    Case("temporary pool, lifetime shorter than the window and over", "unmapped_window_passed",
         UNMAPPED, System(is_guest=True, registered_at=NOW - timedelta(hours=3)),
         org=Org(unmapped_window=timedelta(days=2), unmapped_lifetime=timedelta(hours=2))),
    Case("a second entitlement from the same pool", "already_entitled", held=frozenset({1})),
    Case("a second one with multi-entitlement", None, Pool(multi_entitlement=True), held=frozenset({1})),
    Case("two units without multi-entitlement", "multi_entitlement_unsupported", quantity=2),
    Case("two units with multi-entitlement", None, Pool(multi_entitlement=True), quantity=2),
    Case("no units left", "pool_exhausted", Pool(quantity=4, consumed=4)),
    Case("fewer units left than asked", "pool_exhausted",
         Pool(quantity=4, consumed=3, multi_entitlement=True), quantity=2),
    Case("unlimited pool", None, Pool(quantity=UNLIMITED, consumed=10_000)),
    # Order: the first failing check wins.
    Case("expired and exhausted: expired first", "pool_expired", Pool(end=NOW, consumed=10)),
    Case("virt-only and exhausted: virt_only first", "virt_only", Pool(virt_only=True, consumed=10)),
]


@pytest.mark.parametrize("case", CHECKS, ids=[c.why for c in CHECKS])
def test_check_pool(case):
    view = engine.SystemView(case.system, case.host_id, set(case.held))
    assert engine.check_pool(view, case.pool, case.org, NOW, case.quantity) == case.expected


def test_every_refusal_key_is_asserted():
    asserted = {c.expected for c in CHECKS} - {None}
    assert asserted == set(engine.REFUSALS)
    assert DOMAIN_REFUSALS <= asserted


def test_domain_md_lists_no_other_refusal_key():
    """The keys of domain.md 4 (read from the spec when it is next to the checkout)."""
    if DOMAIN_MD.exists():
        sentence = re.search(r"Each refusal has a stable reason key \((.*?)\)", DOMAIN_MD.read_text(), re.S)
        assert set(re.findall(r"`(\w+)`", sentence.group(1))) == DOMAIN_REFUSALS
    assert DOMAIN_REFUSALS <= set(engine.REFUSALS)


@pytest.mark.parametrize("reason, pool, message", [
    ("pool_exhausted", Pool(quantity=4, consumed=4), "pool exhausted (4 of 4 used)"),
    ("pool_exhausted", None, "no units left in the pool"),
    ("virt_only", Pool(), "the pool is for virtual guests only"),
    ("no_such_key", None, "no_such_key"),
])
def test_refusal_message(reason, pool, message):
    assert engine.refusal_message(reason, pool) == message


# --- Attributes ------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, limit", [
    (None, None), ("4", 4), (4, 4), ("unlimited", UNLIMITED), (" Unlimited ", UNLIMITED),
    ("0", None), ("-2", None), ("four", None),
])
def test_virt_limit(raw, limit):
    attributes = {} if raw is None else {"virt_limit": raw}
    assert engine.virt_limit(Product(1, "P", attributes=attributes)) == limit


@pytest.mark.parametrize("raw, value", [
    (None, 3), ("2", 2), (" 8 ", 8), ("0", 3), ("-1", 3), ("x", 3),
])
def test_int_attr_falls_back_to_the_default(raw, value):
    attributes = {} if raw is None else {"sockets": raw}
    assert engine.int_attr(Product(1, "P", attributes=attributes), "sockets", 3) == value


@pytest.mark.parametrize("raw, true", [("true", True), ("1", True), ("YES", True), (" yes ", True),
                                       ("false", False), ("no", False), (None, False), ("", False)])
def test_is_true(raw, true):
    assert engine.is_true(raw) is true


# --- Pools from a subscription (domain.md 3.1-3.2) -------------------------------------------

VDC = Product(10, "VDC", attributes={"virt_limit": "unlimited"})
RHEL_G = Product(11, "RHEL-G")
RHEL_4G = Product(12, "RHEL-4G", attributes={"virt_limit": "4"})
TWICE = Product(1, "P", attributes={"instance_multiplier": "2"})


@pytest.mark.parametrize("why, subscription, expected", [
    ("no virt_limit: only a NORMAL pool", Subscription(Product(1, "P"), 3), [(NORMAL, "P", 3)]),
    ("instance_multiplier multiplies", Subscription(TWICE, 3), [(NORMAL, "P", 6)]),
    ("a manifest's quantity was multiplied upstream", Subscription(TWICE, 3, managed=True),
     [(NORMAL, "P", 3)]),
    ("unlimited quantity", Subscription(Product(1, "P"), UNLIMITED), [(NORMAL, "P", UNLIMITED)]),
    ("virt_limit 4 × 2: an UNMAPPED_GUEST pool of 8", Subscription(RHEL_4G, 2),
     [(NORMAL, "RHEL-4G", 2), (UNMAPPED_GUEST, "RHEL-4G", 8)]),
    ("unlimited virt_limit, derived product for guests", Subscription(VDC, 2, derived_product=RHEL_G),
     [(NORMAL, "VDC", 2), (UNMAPPED_GUEST, "RHEL-G", UNLIMITED)]),
    ("virt_limit with unlimited quantity", Subscription(RHEL_4G, UNLIMITED),
     [(NORMAL, "RHEL-4G", UNLIMITED), (UNMAPPED_GUEST, "RHEL-4G", UNLIMITED)]),
])
def test_pools_for_subscription(why, subscription, expected):
    specs = engine.pools_for_subscription(subscription)
    assert [(s.type, s.product.sku, s.quantity) for s in specs] == expected
    if len(specs) == 2:
        guest = specs[1]
        assert guest.virt_only and guest.unmapped_guests_only
        assert guest.attributes == {"virt_only": "true", "pool_derived": "true",
                                    "unmapped_guests_only": "true"}


@pytest.mark.parametrize("attributes, flags", [
    ({}, (False, False, False)),
    ({"virt_only": "true"}, (True, False, False)),
    ({"physical_only": "1"}, (False, True, False)),
    ({"multi-entitlement": "yes"}, (False, False, True)),
])
def test_normal_pool_flags_come_from_the_product(attributes, flags):
    normal = engine.pools_for_subscription(Subscription(Product(1, "P", attributes=attributes)))[0]
    assert (normal.virt_only, normal.physical_only, normal.multi_entitlement) == flags


@pytest.mark.parametrize("why, pool, system, derived", [
    ("physical system, host subscription", Pool(product=RHEL_4G), PHYSICAL, True),
    ("BONUS pool of a host subscription", Pool(product=RHEL_4G, type=BONUS), PHYSICAL, True),
    ("a guest never makes a derived pool", Pool(product=RHEL_4G), GUEST, False),
    ("no virt_limit", Pool(product=Product(1, "P")), PHYSICAL, False),
    ("a temporary pool", Pool(product=RHEL_4G, type=UNMAPPED_GUEST), PHYSICAL, False),
])
def test_makes_derived_pool(why, pool, system, derived):
    assert engine.makes_derived_pool(pool, system) is derived


@pytest.mark.parametrize("pool, host_subscription", [
    (Pool(product=VDC), True), (Pool(product=VDC, type=UNMAPPED_GUEST), False), (Pool(), False),
])
def test_is_host_subscription(pool, host_subscription):
    assert engine.is_host_subscription(pool) is host_subscription


def test_derived_pool_product_is_the_derived_product_if_any():
    vdc = Pool(product=VDC, subscription=Subscription(VDC, derived_product=RHEL_G))
    assert engine.derived_pool_product(vdc) is RHEL_G
    assert engine.derived_pool_product(Pool(product=RHEL_4G)) is RHEL_4G


# --- Catalog ---------------------------------------------------------------------------------

CATALOG = engine.Catalog([
    engine.CatalogProduct(10, "VDC", "Virtual Datacenter"),
    engine.CatalogProduct(11, "RHEL-G", "RHEL for guests", frozenset({"479"})),
    engine.CatalogProduct(12, "RHEL-4G", "RHEL 4 guests", frozenset({"479"})),
    engine.CatalogProduct(479, "479", "Red Hat Enterprise Linux Server"),
])


def test_catalog_what_a_pool_provides():
    assert CATALOG.pool_provides(Pool(product=RHEL_4G)) == {"RHEL-4G", "479"}
    assert CATALOG.pool_provides(Pool(product=VDC)) == {"VDC"}
    assert CATALOG.pool_provides(Pool(product=Product(99, "UNKNOWN"))) == {"UNKNOWN"}


def test_catalog_what_guests_get_from_a_host_pool():
    vdc = Pool(product=VDC, subscription=Subscription(VDC, derived_product=RHEL_G))
    assert CATALOG.host_pool_provides_for_guests(vdc) == {"RHEL-G", "479"}
    assert CATALOG.host_pool_provides_for_guests(Pool(product=RHEL_4G)) == {"RHEL-4G", "479"}


def test_catalog_names():
    assert CATALOG.name("479") == "Red Hat Enterprise Linux Server"
    assert CATALOG.name("nope") == "nope"


# --- Order of candidates (domain.md 5, step 5) -----------------------------------------------

def test_candidates_best_first():
    """Pools requiring the guest's host, then other virt-only pools, then normal pools; among
    equals the fewest units, then the soonest end."""
    host_pool = Pool(id=1, requires_host_id=HOST_ID, virt_only=True)
    other_host = Pool(id=2, requires_host_id=8, virt_only=True)
    virt = Pool(id=3, virt_only=True)
    normal_late = Pool(id=4, end=NOW + timedelta(days=60))
    normal_soon = Pool(id=5, end=NOW + timedelta(days=10))
    units = {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    pools = [normal_late, virt, normal_soon, other_host, host_pool]
    ordered = sorted(pools, key=lambda p: engine.candidate_order(p, units[p.id], HOST_ID))
    assert [p.id for p in ordered] == [1, 2, 3, 5, 4]
    assert engine.guest_rank(other_host, HOST_ID) == engine.guest_rank(virt, HOST_ID) == 1
    fewer = sorted([normal_soon, normal_late], key=lambda p: engine.candidate_order(p, 3 if p.id == 5 else 1))
    assert [p.id for p in fewer] == [4, 5]


@pytest.mark.parametrize("sockets_per_unit, system_sockets, covered, units", [
    (None, 8, 0, 1), (2, 8, 0, 4), (2, 7, 0, 4), (2, 8, 6, 1), (2, 8, 8, 1), (4, 2, 0, 1),
])
def test_units_for_stack(sockets_per_unit, system_sockets, covered, units):
    attributes = {} if sockets_per_unit is None else {"sockets": str(sockets_per_unit)}
    product = Product(1, "S", attributes=attributes)
    assert engine.units_for_stack(System(sockets=system_sockets), product, covered) == units


def test_within_unmapped_window():
    org = Org()
    assert engine.within_unmapped_window(System(registered_at=NOW - timedelta(hours=23)), org, NOW)
    assert not engine.within_unmapped_window(System(registered_at=NOW - timedelta(hours=24)), org, NOW)


# --- Compliance (domain.md 7) ----------------------------------------------------------------

STACKED = Product(20, "STACK", attributes={"stacking_id": "s1", "sockets": "2"})
PLAIN = Product(21, "PLAIN")
CATALOG_7 = engine.Catalog([engine.CatalogProduct(20, "STACK", "Stacked", frozenset({"479"})),
                            engine.CatalogProduct(21, "PLAIN", "Plain", frozenset({"479"}))])


def ent(product=PLAIN, quantity=1, pool_type=NORMAL, **kw):
    temporary = pool_type == UNMAPPED_GUEST
    return Entitlement(Pool(product=product, type=pool_type, unmapped_guests_only=temporary), quantity, **kw)


@pytest.mark.parametrize("why, system, entitlements, status, product_status, keys", [
    ("nothing installed, nothing held", System(), [], "valid", None, []),
    ("installed, not covered", System(installed_product_ids=("479",)), [], "invalid", "invalid",
     ["NOTCOVERED"]),
    ("covered", System(installed_product_ids=("479",)), [ent()], "valid", "valid", []),
    ("only a temporary entitlement", System(is_guest=True, installed_product_ids=("479",)),
     [ent(pool_type=UNMAPPED_GUEST)], "partial", "partial", ["UNMAPPEDGUEST"]),
    ("a stack short of sockets", System(sockets=8, installed_product_ids=("479",)),
     [ent(STACKED, 2)], "partial", "partial", ["SOCKETS"]),
    ("a stack covering the sockets", System(sockets=8, installed_product_ids=("479",)),
     [ent(STACKED, 2), ent(STACKED, 2)], "valid", "valid", []),
    ("guests are exempt from sockets", System(is_guest=True, sockets=8, installed_product_ids=("479",)),
     [ent(STACKED, 1)], "valid", "valid", []),
    ("an entitlement not yet in force", System(installed_product_ids=("479",)),
     [ent(start=NOW + timedelta(hours=1))], "invalid", "invalid", ["NOTCOVERED"]),
    ("an entitlement that ended", System(installed_product_ids=("479",)),
     [ent(end=NOW)], "invalid", "invalid", ["NOTCOVERED"]),
])
def test_compliance(why, system, entitlements, status, product_status, keys):
    result = engine.compliance(system, entitlements, CATALOG_7, Org(), NOW)
    assert result.status == status
    assert result.compliant is (status == "valid")
    if product_status is not None:
        assert result.products["479"].status == product_status
        assert result.products["479"].reasons == keys
    assert sorted({r["key"] for r in result.reasons}) == sorted(set(keys))


def test_compliance_reasons_say_what_is_missing():
    system = System(sockets=8, installed_product_ids=("479", "999"))
    result = engine.compliance(system, [ent(STACKED, 2)], CATALOG_7, Org(), NOW)
    assert result.status == "invalid"  # 999 not covered at all
    sockets = next(r for r in result.reasons if r["key"] == "SOCKETS")
    assert sockets["message"] == "Only supports 4 of 8 sockets."
    assert sockets["attributes"] == {"stack_id": "s1", "has": "8", "covered": "4"}
    assert list(result.partial_stacks) == ["s1"]
    missing = next(r for r in result.reasons if r["key"] == "NOTCOVERED")
    assert missing["attributes"] == {"product_id": "999", "name": "999"}


@pytest.mark.parametrize("why, entitlement, in_force", [
    ("within both periods", ent(), True),
    ("before its own start", ent(start=NOW + timedelta(seconds=1)), False),
    ("at its own end", ent(end=NOW), False),
    ("pool ended", Entitlement(Pool(end=NOW)), False),
    ("pool not started", Entitlement(Pool(start=NOW + timedelta(seconds=1))), False),
])
def test_active(why, entitlement, in_force):
    assert engine.active(entitlement, NOW) is in_force


def test_stack_coverage_sums_sockets_per_stack():
    ents = [ent(STACKED, 2), ent(STACKED, 1), ent(PLAIN)]
    stacks = engine.stack_coverage(System(sockets=8), ents)
    assert {k: v[0] for k, v in stacks.items()} == {"s1": 6}
    assert len(stacks["s1"][1]) == 2


@pytest.mark.parametrize("product, system, short", [
    (STACKED, System(sockets=8), True),
    (STACKED, System(sockets=6), False),
    (STACKED, System(sockets=8, is_guest=True), False),
    (PLAIN, System(sockets=8), False),
    (Product(22, "UNSTACKED", attributes={"sockets": "2"}), System(sockets=4), True),
    (Product(22, "UNSTACKED", attributes={"sockets": "4"}), System(sockets=4), False),
])
def test_stack_short(product, system, short):
    stacks = {"s1": (6, [])}
    assert engine.stack_short(system, product, stacks) is short


# --- The engine is plain data in, decisions out ------------------------------------------------

def test_engine_constants_are_the_models_values():
    from subscriptions.models import UNLIMITED as MODELS_UNLIMITED
    from subscriptions.models import Pool as PoolModel

    assert (engine.NORMAL, engine.UNMAPPED_GUEST, engine.BONUS) == (
        PoolModel.Type.NORMAL, PoolModel.Type.UNMAPPED_GUEST, PoolModel.Type.BONUS)
    assert MODELS_UNLIMITED == UNLIMITED


def test_a_pool_spec_is_a_value():
    spec = engine.pools_for_subscription(Subscription(Product(1, "P"), 2))[0]
    assert replace(spec, quantity=3).quantity == 3 and spec.quantity == 2


def test_the_engine_imports_neither_django_nor_the_models():
    """Plain data in, decisions out: only the standard library (no ORM, so no hidden query)."""
    import ast
    import sys

    tree = ast.parse(Path(engine.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
