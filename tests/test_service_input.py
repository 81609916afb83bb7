"""Bad input to the services: a clear validation error, and nothing written."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.utils import timezone

from hypervisors import services as mapping
from hypervisors.models import GuestId
from orgs import services as orgs
from orgs.models import Organization, System
from subscriptions import services as subs
from subscriptions.models import Entitlement, Pool, Product, Subscription
from tests.factories import OrganizationFactory
from tests.scenario import acme, guest, physical, report, subscribe

pytestmark = pytest.mark.django_db


def _counts():
    return {model.__name__: model.objects.count() for model in (
        Organization, System, Product, Subscription, Pool, Entitlement, GuestId, get_user_model())}


@pytest.fixture
def org():
    return acme()


def _refused(match: str, call, *args, **kwargs):
    before = _counts()
    with pytest.raises(ValidationError, match=match):
        call(*args, **kwargs)
    assert _counts() == before


def test_unknown_org_is_refused():
    ghost = Organization(key="ghost", name="Ghost")  # never saved
    _refused("Unknown organization", subs.create_subscription, ghost, "VDC", 1)
    _refused("Unknown organization", mapping.register_system, ghost, "box")
    _refused("Unknown organization", orgs.set_member_role, ghost, "ann", "admin")
    _refused("does not exist", orgs.get_org, "ghost")
    saved = OrganizationFactory(key="gone")
    saved.delete()
    _refused("does not exist|Unknown", subs.create_product, saved, "X", "X")


def test_negative_or_zero_quantity_is_refused(org):
    _refused("quantity must be between 1", subs.create_subscription, org, "VDC", -5)
    _refused("quantity must be between 1", subs.create_subscription, org, "VDC", 0)
    _refused("whole number", subs.create_subscription, org, "VDC", "3")
    _refused("whole number", subs.create_subscription, org, "VDC", True)


def test_end_before_start_is_refused(org):
    now = timezone.now()
    _refused("end must be after start", subs.create_subscription, org, "VDC", 1,
             start=now, end=now - timedelta(days=1))
    _refused("time zone", subs.create_subscription, org, "VDC", 1,
             start=now.replace(tzinfo=None), end=(now + timedelta(days=3)).replace(tzinfo=None))
    sub = subscribe(org, "VDC", 1)
    _refused("end must be after start", subs.update_subscription, org, sub.uuid,
             end=sub.start - timedelta(seconds=1))
    assert Subscription.objects.get(pk=sub.pk).end == sub.end


def test_malformed_uuid_is_refused(org):
    _refused("not a valid UUID", mapping.register_system, org, "box", uuid="not-a-uuid")
    _refused("not a valid UUID", mapping.update_system, org, "1234", name="x")
    _refused("not a valid UUID", mapping.delete_system, org, "zzz")
    _refused("not a valid UUID", subs.attach, org, "nope", "also-nope")
    _refused("not a valid UUID", subs.remove_entitlement, org, "nope")
    _refused("not a valid UUID", subs.update_subscription, org, "nope", quantity=2)


def test_unknown_role_is_refused(org):
    _refused("Unknown role 'owner'", orgs.set_member_role, org, "ann", "owner")


def test_unknown_objects_in_org_are_not_found(org):
    other = acme_like("OTHER")
    box = physical(other, "box")
    _refused("does not exist in organization ACME", mapping.update_system, org, box.uuid, name="x")
    _refused("does not exist in organization ACME", subs.update_subscription, org,
             subscribe(other, "VDC", 1).uuid, quantity=3)


def acme_like(key: str):
    org = orgs.create_org(key, key)
    subs.create_product(org, "479", "RHEL")
    subs.create_product(org, "VDC", "VDC", attributes={"virt_limit": "unlimited"})
    return org


def test_bad_product_and_system_fields(org):
    _refused("virt_limit must be", subs.create_product, org, "BAD", "Bad", attributes={"virt_limit": "x"})
    _refused("product 'NOPE' does not exist", subs.create_subscription, org, "NOPE", 1)
    _refused("name must not be empty", mapping.register_system, org, "  ")
    _refused("facts must be an object", mapping.register_system, org, "box", facts=["a"])
    _refused("productId", mapping.register_system, org, "box", installed_products=[{"x": 1}])
    _refused("Unknown system type", mapping.register_system, org, "box", type="toaster")
    _refused("Organization key", orgs.create_org, "bad key!", "Bad")
    _refused("already exists", orgs.create_org, "ACME", "again")
    _refused("unmapped_lifetime", orgs.create_org, "NEW", "New", unmapped_lifetime=timedelta(0))


def test_bad_guest_lists(org):
    esx1 = report(org, "esx1", ["g1"])
    _refused("guestIds must be a list", mapping.set_guest_list, org, esx1, "g1")
    _refused("each guest must be", mapping.set_guest_list, org, esx1, [42])
    _refused("hypervisor id must not be empty", mapping.report_hypervisor, org, " ")
    assert list(GuestId.objects.values_list("guest_uuid", flat=True)) == ["g1"]


def test_attach_refusals_carry_reason_keys(org, django_db_blocker):
    subscribe(org, "VDC", 1)
    box = physical(org, "box")
    g = guest(org, "g-unmapped")
    normal = Pool.objects.get(type=Pool.Type.NORMAL)
    unmapped = Pool.objects.get(type=Pool.Type.UNMAPPED_GUEST)
    with pytest.raises(subs.EntitlementRefused) as refused:
        subs.attach(org, box.uuid, unmapped.uuid)
    assert refused.value.reason == "virt_only"
    subs.attach(org, box.uuid, normal.uuid)
    with pytest.raises(subs.EntitlementRefused) as refused:
        subs.attach(org, box.uuid, normal.uuid)
    assert refused.value.reason in {"already_entitled", "pool_exhausted"}
    other = physical(org, "box2")
    with pytest.raises(subs.EntitlementRefused) as refused:
        subs.attach(org, other.uuid, normal.uuid)
    assert refused.value.reason == "pool_exhausted"
    assert "1 of 1 used" in refused.value.message
    with pytest.raises(subs.EntitlementRefused) as refused:
        subs.attach(org, g.uuid, normal.uuid, quantity=2)
    assert refused.value.reason == "multi_entitlement_unsupported"
