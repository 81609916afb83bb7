"""Pools follow their product (domain.md 3.6, issue 17): changed attributes regenerate every
pool built from the product — NORMAL, UNMAPPED_GUEST, entitlement- and stack-derived —,
entitlements beyond a reduced quantity are revoked newest first, and the systems concerned are
re-resolved; through the API, the admin and the import alike (``regenerate_product_pools``).
"""

from __future__ import annotations

import json

import pytest
from django.db.models import F
from django.urls import reverse

from subscriptions import services as subs
from subscriptions.models import Entitlement, EntitlementEvent, Pool, Product
from tests import workers
from tests.api_actors import make_actors
from tests.scenario import acme, ents, guest, physical, reload, report, status, subscribe

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _pools(sku: str) -> dict[str, Pool]:
    return {p.type: p for p in Pool.objects.filter(subscription__product__sku=sku)}


def _over_consumed() -> list[Pool]:
    return list(Pool.objects.exclude(quantity=-1).filter(consumed__gt=F("quantity")))


def _four_guests_on_esx1(org):
    """RHEL-4G x1; esx1 reports g1..g4, all registered and inheriting from esx1's pool."""
    subscribe(org, "RHEL-4G", 1)
    report(org, "esx1", ["g1", "g2", "g3", "g4"])
    return [guest(org, f"g{i}") for i in range(1, 5)]


def _derived_entitlements() -> list[Entitlement]:
    return list(Entitlement.objects.filter(pool__type=Pool.Type.ENTITLEMENT_DERIVED)
                .order_by("created", "id"))


@pytest.mark.worker
def test_virt_limit_reduced_through_the_api_with_a_worker(transactional_db):
    """Acceptance: virt_limit 4 -> 2, derived pool of 4 used by 4 guests."""
    workers.require_services()
    workers.flush_broker()
    org = acme()
    admin = make_actors(org).clients["admin"]
    worker = workers.start_worker()
    try:
        with workers.tasks_to_broker():
            guests = _four_guests_on_esx1(org)
            workers.wait_until(lambda: len(_derived_entitlements()) == 4, "4 guests inherit")
            pools = _pools("RHEL-4G")
            derived = pools[Pool.Type.ENTITLEMENT_DERIVED]
            assert (derived.quantity, derived.consumed) == (4, 4)
            assert pools[Pool.Type.UNMAPPED_GUEST].quantity == 4
            before = _derived_entitlements()
            newest = {e.system_id for e in before[2:]}
            oldest = {e.id for e in before[:2]}

            response = admin.patch("/api/v1/orgs/ACME/products/RHEL-4G/",
                                   {"attributes": {"virt_limit": "2"}}, format="json")
            assert response.status_code == 200, response.json()
            # Regenerated in the request's transaction: no window where the pool is over-used.
            pools = _pools("RHEL-4G")
            derived = pools[Pool.Type.ENTITLEMENT_DERIVED]
            assert (derived.quantity, derived.consumed) == (2, 2)
            assert pools[Pool.Type.UNMAPPED_GUEST].quantity == 2
            assert pools[Pool.Type.NORMAL].quantity == 1
            assert {e.id for e in _derived_entitlements()} == oldest
            revoked = EntitlementEvent.objects.filter(action="revoked", reason="product_changed")
            assert {e.system_id for e in revoked} == newest
            assert _over_consumed() == []

            # The worker re-resolves the two guests: nothing left for them, nothing over-used.
            workers.wait_until(lambda: all(status(g) == "invalid" for g in guests
                                           if g.id in newest), "revoked guests re-resolved")
            workers.wait_idle()  # every re-resolution has run
            assert _over_consumed() == []
            assert {e.id for e in _derived_entitlements()} == oldest
            assert all(status(g) == "valid" for g in guests if g.id not in newest)
    finally:
        worker.kill()
    workers.assert_clean(worker)


def test_virt_limit_raised_lets_more_guests_in():
    org = acme()
    subscribe(org, "RHEL-4G", 1)
    report(org, "esx1", [f"g{i}" for i in range(1, 7)])
    guests = [guest(org, f"g{i}") for i in range(1, 7)]
    assert sorted(status(g) for g in guests) == ["invalid"] * 2 + ["valid"] * 4
    subs.create_product(org, "RHEL-4G", "RHEL with 4 guests", attributes={"virt_limit": "8"},
                        provided=["479"])
    pools = _pools("RHEL-4G")
    assert pools[Pool.Type.ENTITLEMENT_DERIVED].quantity == 8
    assert pools[Pool.Type.UNMAPPED_GUEST].quantity == 8
    assert all(status(g) == "valid" for g in guests)  # re-resolved (eager tasks here)


def test_virt_limit_removed_drops_guest_pools_and_added_brings_them_back():
    org = acme()
    guests = _four_guests_on_esx1(org)
    subs.create_product(org, "RHEL-4G", "RHEL with 4 guests", attributes={}, provided=["479"])
    assert set(_pools("RHEL-4G")) == {Pool.Type.NORMAL}
    revoked = EntitlementEvent.objects.filter(action="revoked", pool_type="ENTITLEMENT_DERIVED")
    assert revoked.count() == 4
    assert _over_consumed() == []
    # Without virt_limit the guests are ordinary systems: the one NORMAL unit is the host's.
    assert sum(status(g) == "valid" for g in guests) == 0

    subs.create_product(org, "RHEL-4G", "RHEL with 4 guests", attributes={"virt_limit": "4"},
                        provided=["479"])
    pools = _pools("RHEL-4G")
    assert set(pools) == {Pool.Type.NORMAL, Pool.Type.UNMAPPED_GUEST, Pool.Type.ENTITLEMENT_DERIVED}
    assert all(status(g) == "valid" for g in guests)


def test_stacking_change_turns_the_derived_pool_into_a_stack_pool():
    org = acme()
    guests = _four_guests_on_esx1(org)
    subs.create_product(org, "RHEL-4G", "RHEL with 4 guests",
                        attributes={"virt_limit": "4", "stacking_id": "rh"}, provided=["479"])
    pools = _pools("RHEL-4G")
    assert Pool.Type.ENTITLEMENT_DERIVED not in pools
    assert pools[Pool.Type.STACK_DERIVED].quantity == 4
    assert pools[Pool.Type.STACK_DERIVED].source_stack_id == "rh"
    assert all(status(g) == "valid" for g in guests)
    assert _over_consumed() == []


def test_instance_multiplier_reduces_the_normal_pool_newest_first():
    org = acme()
    subs.create_product(org, "PHYS", "Physical", attributes={"instance_multiplier": "3"},
                        provided=["479"])
    subscribe(org, "PHYS", 1)
    boxes = [physical(org, f"p{i}") for i in range(3)]
    assert all(status(b) == "valid" for b in boxes)
    subs.create_product(org, "PHYS", "Physical", attributes={"instance_multiplier": "1"},
                        provided=["479"])
    normal = _pools("PHYS")[Pool.Type.NORMAL]
    assert (normal.quantity, normal.consumed) == (1, 1)
    assert [b.name for b in boxes if ents(b)] == ["p0"]


def test_unchanged_attributes_do_not_regenerate():
    org = acme()
    subscribe(org, "RHEL-4G", 1)
    before = {p.pk: p.updated for p in Pool.objects.all()}
    subs.create_product(org, "RHEL-4G", "Renamed", attributes={"virt_limit": "4"}, provided=["479"])
    assert {p.pk: p.updated for p in Pool.objects.all()} == before


def test_admin_change_regenerates(admin_client):
    org = acme()
    _four_guests_on_esx1(org)
    product = Product.objects.get(org=org, sku="RHEL-4G")
    page = reverse("admin:subscriptions_product_change", args=[product.pk])
    form = {"name": product.name, "attributes": json.dumps({"virt_limit": "3"}),
            "derived_product": "", "provided_products": [Product.objects.get(sku="479").pk]}
    response = admin_client.post(page, form)
    assert response.status_code == 302, response.context["adminform"].form.errors
    derived = _pools("RHEL-4G")[Pool.Type.ENTITLEMENT_DERIVED]
    assert (derived.quantity, derived.consumed) == (3, 3)
    assert _pools("RHEL-4G")[Pool.Type.UNMAPPED_GUEST].quantity == 3


def test_import_regenerates():
    org = acme()
    _four_guests_on_esx1(org)
    admin = make_actors(org).clients["admin"]
    body = {"products": [{"sku": "RHEL-4G", "name": "RHEL with 4 guests",
                          "attributes": {"virt_limit": "1"}, "provided": ["479"]}]}
    response = admin.post("/api/v1/orgs/ACME/import/", body, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["products"]["updated"] == 1
    derived = _pools("RHEL-4G")[Pool.Type.ENTITLEMENT_DERIVED]
    assert (derived.quantity, derived.consumed) == (1, 1)
    assert len(_derived_entitlements()) == 1
    assert _over_consumed() == []


def test_regenerate_is_idempotent_and_callable_directly():
    """What the manifest import calls after writing products itself."""
    org = acme()
    guests = _four_guests_on_esx1(org)
    Product.objects.filter(org=org, sku="RHEL-4G").update(attributes={"virt_limit": "3"})
    revoked = subs.regenerate_product_pools(org, [Product.objects.get(org=org, sku="RHEL-4G")])
    assert len(revoked) == 1
    assert subs.regenerate_product_pools(org, [Product.objects.get(sku="RHEL-4G").pk]) == set()
    derived = _pools("RHEL-4G")[Pool.Type.ENTITLEMENT_DERIVED]
    assert (derived.quantity, derived.consumed) == (3, 3)
    assert sum(status(reload(g)) == "valid" for g in guests) == 3
